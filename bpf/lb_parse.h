/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_parse.h - parsing: the packet as the datapath sees it (struct pkt), with a bounds
 * check before every header access; what is not ours is passed to the kernel.
 */
#ifndef __LB_PARSE_H
#define __LB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb_shared.h"
#include "lb_profile.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define NEXTHDR_FRAGMENT 44
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/*
 * The ICMPv4 header, declared here: <linux/icmp.h> pulls in <linux/if.h> and
 * through it glibc's <sys/socket.h>, which a -target bpf build cannot use
 * (gnu/stubs-32.h).  The datapath builds from UAPI and libbpf headers only.
 */
struct lb_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 echo_id;
	__be16 echo_seq;
};
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* The IPv6 fragment extension header. */
struct lb_frag6hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;	/* offset in 8-byte units << 3, M flag in bit 0 */
	__be32 id;
};

/* SCTP's common header and the header of its first chunk (RFC 9260 3.1, 3.2). */
struct lb_sctphdr {
	__be16 source;
	__be16 dest;
	__be32 vtag;
	__le32 crc;
	__u8 chunk_type;
	__u8 chunk_flags;
	__be16 chunk_len;
};
#define ICMPV6_ECHO_REQ 128
#define ICMPV6_ECHO_REP 129

enum verdict { V_PASS, V_DROP, V_REDIRECT, V_TOO_BIG };	/* V_TOO_BIG: lb_mtu.h (tc) */

/* parse(): not a counter but "take the slow path" (fragments, ICMP errors: lb_frag.h, lb_icmp.h). */
#define LB_PARSE_SLOW 0x100

/* struct pkt.frag */
enum { LB_FRAG_NONE = 0, LB_FRAG_FIRST = 1, LB_FRAG_LATER = 2 };

/* A parsed packet: tuple plus where its headers are. */
struct pkt {
	struct lb_ct_key t;
	/* Pointers, then 4-, 2- and 1-byte fields: no holes (this lives on the BPF stack). */
	void *l3;
	__u16 *csum;		/* L4 checksum field, NULL for ICMPv4 */
	__u16 *sport_p;		/* port fields, NULL for ICMP */
	__u16 *dport_p;
	__u32 len;
	__u32 ifindex;
	__u32 timeout;		/* session timeout of a new flow */
	__u32 mark;		/* set by a firewall mark rule */
	__u32 frag_id;		/* a fragment's datagram id (IPv4: 16 bits; IPv6: 32), network order */
	__u32 vtag;		/* SCTP: verification tag (as on the wire) */
	__u32 itag;		/* SCTP INIT / INIT-ACK: the initiate tag */
	__u32 sctp_svc;		/* SCTP reply: 1 + its service id (INIT-ACK rewrite), else 0 */
	__u16 csum_off;		/* the L4 checksum's offset from the start of the packet */
	__u16 chunk_len;	/* SCTP: length of the first chunk */
	__u8 tcp_flags;
	__u8 chunk;		/* SCTP: type of the first chunk */
	__u8 ttl;
	/* Bit fields: struct pkt lives in the entry points' frames, and the BPF stack of a
	 * call chain (512 bytes) is what bounds the datapath's depth. */
	__u8 echo_reply : 1;	/* ICMP echo reply: only ever a reply, never a new flow */
	__u8 icmp_err : 1;	/* an ICMP/ICMPv6 error (its offending packet follows the header) */
	__u8 frag : 2;		/* LB_FRAG_*: a later fragment has no L4 header (no ports, no checksum) */
};

enum { TCPF_FIN = 0x01, TCPF_SYN = 0x02, TCPF_RST = 0x04, TCPF_ACK = 0x10 };

static __always_inline void *ctx_data(void *ctx, const int xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data;
	return (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *ctx_end(void *ctx, const int xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

/*
 * Parse Ethernet, IPv4/IPv6 and the L4 header.  Returns 0 when the packet is
 * one we may own, or the lb_stat index explaining why it is passed.
 */
static __always_inline int parse(void *ctx, const int xdp, struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *end = ctx_end(ctx, xdp);
	struct ethhdr *eth = data;
	__u32 l4off;
	void *l4;
	__u8 proto;

	if ((void *)(eth + 1) > end)
		return LB_STAT_PASS_TRUNCATED;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 hl;

		if ((void *)(ip + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		if (ip->version != 4 || ip->ihl < 5)
			return LB_STAT_PASS_NOT_IP;
		hl = ip->ihl * 4;
		l4 = (void *)ip + hl;
		l4off = ETH_HLEN + hl;
		proto = ip->protocol;
		p->t.family = 4;
		p->t.proto = proto;	/* addresses and protocol first: the firewall sees fragments too */
		p->t.saddr[0] = ip->saddr;
		p->t.daddr[0] = ip->daddr;
		p->ttl = ip->ttl;
		p->l3 = ip;
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
			p->frag_id = ip->id;
			if (ip->frag_off & bpf_htons(IP_OFFSET)) {
				p->frag = LB_FRAG_LATER;
				return LB_PARSE_SLOW;
			}
			p->frag = LB_FRAG_FIRST;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
		l4off = ETH_HLEN + sizeof(*ip6);
		p->t.family = 6;
		p->t.proto = proto;
		__builtin_memcpy(p->t.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->t.daddr, &ip6->daddr, 16);
		p->ttl = ip6->hop_limit;
		p->l3 = ip6;
		if (proto == NEXTHDR_FRAGMENT) {
			struct lb_frag6hdr *fh = l4;

			if ((void *)(fh + 1) > end)
				return LB_STAT_PASS_TRUNCATED;
			proto = fh->nexthdr;
			p->t.proto = proto == IPPROTO_ICMPV6 ? IPPROTO_ICMP : proto;
			p->frag_id = fh->id;
			if (fh->frag_off & bpf_htons(0xfff8)) {
				p->frag = LB_FRAG_LATER;
				return LB_PARSE_SLOW;
			}
			p->frag = LB_FRAG_FIRST;
			l4 = fh + 1;
			l4off += sizeof(*fh);
		}
	} else {
		return LB_STAT_PASS_NOT_IP;
	}

	p->t.proto = proto;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		p->t.sport = th->source;
		p->t.dport = th->dest;
		p->sport_p = &th->source;
		p->dport_p = &th->dest;
		p->csum = &th->check;
		p->csum_off = l4off + 16;
		p->tcp_flags = ((__u8 *)th)[13];
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		p->t.sport = uh->source;
		p->t.dport = uh->dest;
		p->sport_p = &uh->source;
		p->dport_p = &uh->dest;
		p->csum = &uh->check;
		p->csum_off = l4off + 6;
	} else if (proto == IPPROTO_ICMP && p->t.family == 4) {
		struct lb_icmphdr *ih = l4;

		if ((void *)(ih + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		if (ih->type == ICMP_ECHO)
			p->t.sport = ih->echo_id;
		else if (ih->type == ICMP_ECHOREPLY) {
			p->t.dport = ih->echo_id;
			p->echo_reply = 1;
		} else if (!p->frag && (ih->type == ICMP_DEST_UNREACH || ih->type == ICMP_TIME_EXCEEDED ||
					ih->type == ICMP_PARAMETERPROB)) {
			p->icmp_err = 1;
			return LB_PARSE_SLOW;
		} else
			return LB_STAT_PASS_NOT_OURS;
		p->csum = 0;	/* the ICMPv4 checksum has no pseudo header */
	} else if (proto == IPPROTO_ICMPV6 && p->t.family == 6) {
		struct icmp6hdr *ih = l4;

		if ((void *)(ih + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		if (ih->icmp6_type == ICMPV6_ECHO_REQ)
			p->t.sport = ih->icmp6_dataun.u_echo.identifier;
		else if (ih->icmp6_type == ICMPV6_ECHO_REP) {
			p->t.dport = ih->icmp6_dataun.u_echo.identifier;
			p->echo_reply = 1;
		} else if (!p->frag && ih->icmp6_type >= ICMPV6_DEST_UNREACH && ih->icmp6_type <= ICMPV6_PARAMPROB) {
			p->icmp_err = 1;	/* unreachable, packet too big, time exceeded, parameter problem */
		} else
			return LB_STAT_PASS_NOT_OURS;	/* NDP, ... */
		p->t.proto = IPPROTO_ICMP;	/* one protocol number for echo services */
		p->csum = &ih->icmp6_cksum;
		p->csum_off = l4off + 2;
		if (p->icmp_err)
			return LB_PARSE_SLOW;
	} else if (proto == IPPROTO_SCTP) {
		/* The common header (ports, verification tag, CRC32c) and the first chunk's header. */
		struct lb_sctphdr *sh = l4;

		if ((void *)(sh + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		p->t.sport = sh->source;
		p->t.dport = sh->dest;
		p->sport_p = &sh->source;
		p->dport_p = &sh->dest;
		p->vtag = sh->vtag;
		p->chunk = sh->chunk_type;
		p->chunk_len = bpf_ntohs(sh->chunk_len);
		if (p->chunk_len < 4)
			return LB_STAT_PASS_TRUNCATED;	/* a malformed chunk: the kernel's to refuse */
		if (p->chunk == 1 || p->chunk == 2) {	/* INIT, INIT-ACK */
			__be32 *itag = (void *)(sh + 1);

			if ((void *)(itag + 1) > end || p->chunk_len < 20)
				return LB_STAT_PASS_TRUNCATED;
			p->itag = *itag;
		}
		p->csum = 0;	/* CRC32c, no pseudo header: lb_sctp.h updates it where ports or chunks change */
		p->csum_off = l4off + 8;
	} else if (p->t.family == 6) {
		return LB_STAT_PASS_EXTHDR;
	} else {
		return LB_STAT_PASS_NOT_OURS;
	}
	return p->frag ? LB_PARSE_SLOW : 0;
}

#endif /* __LB_PARSE_H */
