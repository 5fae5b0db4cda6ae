/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_mtu.h - the datapath's own redirect exceeds the egress MTU (tc).  With
 * tot_len = 0 (pitfall 15) the tc bpf_fib_lookup checks the skb against the egress
 * device (GSO packets by their segments) and answers FRAG_NEEDED with the MTU.
 * A TCP or UDP packet that may not be fragmented (IPv4 with DF, every IPv6 one)
 * then gets, instead of being forwarded, an ICMP "fragmentation needed" / ICMPv6
 * "packet too big" built here from the packet as received (not yet translated):
 * it quotes the sender's own packet and comes from the address that packet was
 * sent to (the VIP for a client, the client's address for an endpoint), so the
 * sender's PMTU discovery matches it to its socket.  It leaves by the interface
 * the packet came in on.  Other packets (IPv4 without DF, fragments, ICMP) are
 * left to the kernel translated, as before (it fragments IPv4 itself).
 *
 * Limit: a packet with a partial checksum (a local sender on a veth, never a NIC's
 * receive) keeps its checksum offsets in the skb; a NIC that computed them on
 * the way out would spoil the error.  XDP does not check the MTU yet.
 */
#ifndef __LB_MTU_H
#define __LB_MTU_H

#include "lb_parse.h"
#include "lb_counters.h"

/* Included by lb_nat.h after its checksum helpers (csum_fold64). */

#define IP_DF 0x4000
#define LB_QUOTE4 28	/* the quoted IPv4 header (no options) and 8 bytes of L4: RFC 792 */
#define LB_QUOTE6 48	/* the quoted IPv6 header and 8 bytes of L4 */

/* Whether a packet the egress MTU refused (the MTU is in cb[0]) gets an error from here. */
static __noinline int too_big_wanted(void *ctx, const struct pkt *p)
{
	if (!p->sport_p || p->frag)
		return 0;
	if (p->t.family == 4) {
		struct iphdr *ip = p->l3;

		if ((void *)(ip + 1) > ctx_end(ctx, 0) || ip->ihl != 5 || !(ip->frag_off & bpf_htons(IP_DF)))
			return 0;
	}
	return 1;
}

struct too_big4 {
	struct ethhdr eth;
	struct iphdr ip;
	__u8 type, code;
	__u16 csum;
	__u16 unused;
	__u16 mtu;
	__u8 quote[LB_QUOTE4];
} __attribute__((packed));

struct too_big6 {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	__u8 type, code;
	__u16 csum;
	__u32 mtu;
	__u8 quote[LB_QUOTE6];
} __attribute__((packed));

/* Turn the (untouched) packet into the error and send it back out; a TC_ACT_* verdict. */
static __noinline int too_big_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u32 ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	struct ethhdr *eth = data;
	__u32 mtu = skb->cb[0];
	__u64 sum;

	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct too_big4 h = {};
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)ip + LB_QUOTE4 > end)
			return TC_ACT_SHOT;
		__builtin_memcpy(h.quote, ip, LB_QUOTE4);
		__builtin_memcpy(h.eth.h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(h.eth.h_source, eth->h_dest, ETH_ALEN);
		h.eth.h_proto = eth->h_proto;
		h.ip.version = 4;
		h.ip.ihl = 5;
		h.ip.tos = 0xc0;
		h.ip.tot_len = bpf_htons(sizeof(h) - ETH_HLEN);
		h.ip.ttl = 64;
		h.ip.protocol = IPPROTO_ICMP;
		h.ip.saddr = ip->daddr;
		h.ip.daddr = ip->saddr;
		h.ip.check = (__u16)~csum_fold64(bpf_csum_diff(0, 0, (__be32 *)((__u8 *)&h + ETH_HLEN), sizeof(h.ip), 0));
		h.type = ICMP_DEST_UNREACH;
		h.code = 4;	/* fragmentation needed and DF set */
		h.mtu = bpf_htons(mtu);
		sum = bpf_csum_diff(0, 0, (__be32 *)((__u8 *)&h + ETH_HLEN + sizeof(h.ip)), sizeof(h) - ETH_HLEN - sizeof(h.ip), 0);
		h.csum = (__u16)~csum_fold64(sum);
		if (bpf_skb_change_tail(skb, sizeof(h), 0) || bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0))
			return TC_ACT_SHOT;
	} else {
		struct too_big6 h = {};
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		__u32 tail[2];

		if ((void *)ip6 + LB_QUOTE6 > end)
			return TC_ACT_SHOT;
		__builtin_memcpy(h.quote, ip6, LB_QUOTE6);
		__builtin_memcpy(h.eth.h_dest, eth->h_source, ETH_ALEN);
		__builtin_memcpy(h.eth.h_source, eth->h_dest, ETH_ALEN);
		h.eth.h_proto = eth->h_proto;
		h.ip6.version = 6;
		h.ip6.payload_len = bpf_htons(sizeof(h) - ETH_HLEN - sizeof(h.ip6));
		h.ip6.nexthdr = IPPROTO_ICMPV6;
		h.ip6.hop_limit = 64;
		__builtin_memcpy(&h.ip6.saddr, &ip6->daddr, 16);
		__builtin_memcpy(&h.ip6.daddr, &ip6->saddr, 16);
		h.type = 2;	/* packet too big */
		h.mtu = bpf_htonl(mtu);
		/* The pseudo header: addresses, upper-layer length, next header. */
		tail[0] = bpf_htonl(sizeof(h) - ETH_HLEN - sizeof(h.ip6));
		tail[1] = bpf_htonl(IPPROTO_ICMPV6);
		sum = bpf_csum_diff(0, 0, (__be32 *)((__u8 *)&h + ETH_HLEN + 8), 32, 0);
		sum = bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
		sum = bpf_csum_diff(0, 0, (__be32 *)((__u8 *)&h + ETH_HLEN + sizeof(h.ip6)), sizeof(h) - ETH_HLEN - sizeof(h.ip6),
				   sum);
		h.csum = (__u16)~csum_fold64(sum);
		if (bpf_skb_change_tail(skb, sizeof(h), 0) || bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0))
			return TC_ACT_SHOT;
	}
	stat_inc(LB_STAT_TOO_BIG);
	return bpf_redirect(ifindex, 0);
}

#endif /* __LB_MTU_H */
