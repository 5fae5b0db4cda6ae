/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_icmp.h - ICMP and ICMPv6 errors about a translated flow (destination
 * unreachable, fragmentation needed, packet too big, time exceeded, parameter
 * problem).  The error quotes the offending packet; that packet, reversed, is a
 * conntrack key of the flow (an error travelling to the client quotes the
 * endpoint-bound packet and finds the reply entry; one travelling to the
 * endpoint quotes a reply and finds the forward entry).  The entry's translation
 * is applied to the quoted packet (addresses, ports, its IPv4 header checksum
 * and its L4 checksum where quoted) and to the outer header (destination; the
 * source too when the error comes from the quoted packet's destination itself),
 * with the ICMP checksum updated for all of it (ICMPv6: the pseudo header too),
 * then the error is forwarded as a packet of the flow.  So path-MTU discovery
 * works through the VIP.  Errors about DSR flows (the box sees one direction) and
 * about flows translated between IPv4 and IPv6 go to the kernel as before.
 */
#ifndef __LB_ICMP_H
#define __LB_ICMP_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"
#include "lb_conntrack.h"
#include "lb_nat.h"

/*
 * Translate the error in place and set *out to where it goes now (the outer
 * addresses); 0, or -1 when it is about no flow of ours (nothing changed) or too
 * short to translate.  Out of line so the forwarding that follows (nat_fwd) does
 * not stack on its frame.
 */
static __always_inline int icmp_xlate(void *ctx, const int xdp, struct pkt *p, __u64 now, struct nat_to *out)
{
	void *end = ctx_end(ctx, xdp);
	struct lb_ct_key k = {};
	struct nat_to t;
	int from_dst;
	struct lb_ct *ct;
	__u16 *icsum, *l4csum = 0, *ports;
	struct iphdr *in4 = 0;
	struct ipv6hdr *in6 = 0;
	__u32 adiff, pdiff, sdiff;
	int n = p->t.family == 4 ? 1 : 4;

	if (p->t.family == 4) {
		struct iphdr *ip = p->l3, *in;
		void *icmp;

		if ((void *)(ip + 1) > end)
			return V_PASS;
		icmp = (void *)ip + ip->ihl * 4;
		in = icmp + 8;
		if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
			goto pass;
		ports = (void *)in + in->ihl * 4;
		if ((void *)(ports + 4) > end)
			goto pass;
		icsum = icmp + 2;
		k.proto = in->protocol;
		in4 = in;
		k.saddr[0] = in->daddr;
		k.daddr[0] = in->saddr;
	} else {
		struct ipv6hdr *ip6 = p->l3, *in;
		void *icmp;

		if ((void *)(ip6 + 1) > end)
			return V_PASS;
		icmp = ip6 + 1;
		in = icmp + 8;
		if ((void *)(in + 1) > end)
			goto pass;
		ports = (void *)(in + 1);
		if ((void *)(ports + 4) > end)
			goto pass;
		icsum = icmp + 2;
		k.proto = in->nexthdr;
		in6 = in;
		__builtin_memcpy(k.saddr, &in->daddr, 16);
		__builtin_memcpy(k.daddr, &in->saddr, 16);
	}
	if (k.proto == IPPROTO_UDP)
		l4csum = ports + 3;
	else if (k.proto == IPPROTO_TCP)
		l4csum = ports + 8;
	else
		goto pass;
	k.family = p->t.family;
	k.sport = ports[1];
	k.dport = ports[0];
	ct = bpf_map_lookup_elem(&lb_ct, &k);
	if (!ct || ct_stale(ct, now) || ct->mode == LB_MODE_DSR || ct->nat_family)
		goto pass;

	from_dst = addr_eq(p->t.saddr, k.saddr);
	/* t: the flow's translation of a packet with tuple k (as ct_fwd / do_reply do it). */
	if (ct->dir == LB_CT_FORWARD) {
		__builtin_memcpy(t.daddr, ct->nat_addr, 16);
		t.dport = ct->nat_port;
		__builtin_memcpy(t.saddr, addr_set(ct->snat_addr) ? ct->snat_addr : k.saddr, 16);
		t.sport = addr_set(ct->snat_addr) ? ct->snat_port : k.sport;
	} else {
		__builtin_memcpy(t.saddr, ct->nat_addr, 16);
		t.sport = ct->nat_port;
		__builtin_memcpy(t.daddr, addr_set(ct->snat_addr) ? ct->snat_addr : k.daddr, 16);
		t.dport = addr_set(ct->snat_addr) ? ct->snat_port : k.dport;
	}

	/* The quoted packet is k reversed: its source becomes t.daddr, its destination t.saddr. */
	adiff = csum_fold64((__u64)csum_diff_words(k.daddr, t.daddr, n) + csum_diff_words(k.saddr, t.saddr, n));
	pdiff = csum_fold64((__u64)csum_diff16(k.dport, t.dport) + csum_diff16(k.sport, t.sport));
	sdiff = csum_fold64((__u64)adiff + pdiff);	/* what the ICMP checksum sees change */
	if (in4) {
		__u16 old, new;

		if ((void *)(in4 + 1) > end)
			goto pass;
		old = in4->check;
		new = csum_apply(old, adiff);
		in4->check = new;
		sdiff = csum_fold64((__u64)sdiff + csum_diff16(old, new));
		in4->saddr = t.daddr[0];
		in4->daddr = t.saddr[0];
	} else if (in6) {
		if ((void *)(in6 + 1) > end)
			goto pass;
		__builtin_memcpy(&in6->saddr, t.daddr, 16);
		__builtin_memcpy(&in6->daddr, t.saddr, 16);
	}
	if ((void *)(ports + 2) > end)
		goto pass;
	ports[0] = t.dport;
	ports[1] = t.sport;
	/* The quoted L4 checksum, when the error quotes it (a zero UDP checksum stays zero). */
	if ((void *)(l4csum + 1) <= end && !(k.proto == IPPROTO_UDP && *l4csum == 0)) {
		__u16 old = *l4csum, new = csum_apply(old, csum_fold64((__u64)adiff + pdiff));

		if (k.proto == IPPROTO_UDP && new == 0)
			new = 0xffff;
		*l4csum = new;
		sdiff = csum_fold64((__u64)sdiff + csum_diff16(old, new));
	}
	if ((void *)(icsum + 1) > end)
		goto pass;
	*icsum = csum_apply(*icsum, sdiff);

	/* The outer header: to the quoted packet's (new) source; from the flow's side when
	 * the error comes from the quoted packet's destination itself, else unchanged. */
	__builtin_memcpy(out->daddr, t.daddr, 16);
	__builtin_memcpy(out->saddr, from_dst ? t.saddr : p->t.saddr, 16);
	out->sport = 0;
	out->dport = 0;
	out->pad = 0;
	return 0;
pass:
	return -1;
}

static __noinline int icmp_xlate_tc(void *ctx, struct pkt *p, __u64 now, struct nat_to *out)
{
	return icmp_xlate(ctx, 0, p, now, out);
}

static __noinline int icmp_xlate_xdp(void *ctx, struct pkt *p, __u64 now, struct nat_to *out)
{
	return icmp_xlate(ctx, 1, p, now, out);
}

/* An ICMP error: translated and forwarded as a packet of its flow, else to the kernel. */
static __always_inline enum verdict icmp_error(void *ctx, const int xdp, struct pkt *p, __u64 now)
{
	struct nat_to to;

	if (xdp ? icmp_xlate_xdp(ctx, p, now, &to) : icmp_xlate_tc(ctx, p, now, &to)) {
		stat_inc(LB_STAT_PASS_NOT_OURS);
		return V_PASS;
	}
	stat_inc(LB_STAT_ICMP_ERROR);
	return nat_fwd(ctx, xdp, p, &to, 0);
}

static __noinline enum verdict icmp_error_tc(void *ctx, struct pkt *p, __u64 now)
{
	return icmp_error(ctx, 0, p, now);
}

static __noinline enum verdict icmp_error_xdp(void *ctx, struct pkt *p, __u64 now)
{
	return icmp_error(ctx, 1, p, now);
}

#endif /* __LB_ICMP_H */
