/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_nat.h - NAT and forwarding: address and port rewrite with incremental checksums,
 * the reply path back to the VIP, and the hand-off (bpf_fib_lookup, then redirect).
 */
#ifndef __LB_NAT_H
#define __LB_NAT_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"
#include "lb_conntrack.h"

/* Ones' complement arithmetic on raw (network order) memory words. */
static __always_inline __u32 csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u32)s;
}

/* Sum of (~old + new) over n 32-bit words, folded to 16 bits. */
static __always_inline __u32 csum_diff_words(const __u32 *old, const __u32 *new, int n)
{
	__u64 s = 0;

	for (int i = 0; i < n; i++)
		s += (__u32)~old[i] + (__u64)new[i];
	return csum_fold64(s);
}

static __always_inline __u32 csum_diff16(__u16 old, __u16 new)
{
	return csum_fold64((__u16)~old + (__u64)new);
}

/* Apply a precomputed diff to a stored checksum (RFC 1624). */
static __always_inline __u16 csum_apply(__u16 sum, __u32 diff)
{
	return (__u16)~csum_fold64((__u16)~sum + (__u64)diff);
}

/*
 * Rewrite destination (forward) or source (reply) address and port, decrement
 * the TTL when we redirect, fix checksums, and forward.
 */
static __always_inline enum verdict nat_forward(void *ctx, const int xdp, struct pkt *p, int dst,
						const __u32 *addr, __u16 port)
{
	struct bpf_fib_lookup f = {};
	__u32 adiff, pdiff = 0, l3diff;
	__u16 oldport, ttlw_old, ttlw_new;
	int rc, redirect;

	f.family = p->t.family == 4 ? AF_INET : AF_INET6;
	f.l4_protocol = p->t.family == 6 && p->t.proto == IPPROTO_ICMP ? IPPROTO_ICMPV6 : p->t.proto;
	f.sport = p->t.sport;
	f.dport = p->t.dport;
	f.tot_len = 0;		/* pitfall 15: GSO packets would fail the MTU check */
	f.ifindex = p->ifindex;
	if (dst) {
		oldport = p->t.dport;
		if (p->dport_p)
			f.dport = port;
		adiff = csum_diff_words(p->t.daddr, addr, p->t.family == 4 ? 1 : 4);
	} else {
		oldport = p->t.sport;
		if (p->sport_p)
			f.sport = port;
		adiff = csum_diff_words(p->t.saddr, addr, p->t.family == 4 ? 1 : 4);
	}
	if (p->t.family == 4) {
		f.ipv4_src = dst ? p->t.saddr[0] : addr[0];
		f.ipv4_dst = dst ? addr[0] : p->t.daddr[0];
	} else {
		__builtin_memcpy(f.ipv6_src, dst ? p->t.saddr : addr, 16);
		__builtin_memcpy(f.ipv6_dst, dst ? addr : p->t.daddr, 16);
	}
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	if (xdp)
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS;
	else
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;

	/* Direct packet writes first; tc checksum helpers invalidate pointers. */
	if (p->t.family == 4) {
		struct iphdr *ip = p->l3;
		void *end = ctx_end(ctx, xdp);

		if ((void *)(ip + 1) > end)
			return V_PASS;
		if (dst)
			ip->daddr = addr[0];
		else
			ip->saddr = addr[0];
		l3diff = adiff;
		if (redirect) {
			ttlw_old = *(__u16 *)&ip->ttl;
			ip->ttl -= 1;
			ttlw_new = *(__u16 *)&ip->ttl;
			l3diff = csum_fold64((__u64)l3diff + csum_diff16(ttlw_old, ttlw_new));
		}
		if (xdp)
			ip->check = csum_apply(ip->check, l3diff);
	} else {
		struct ipv6hdr *ip6 = p->l3;
		void *end = ctx_end(ctx, xdp);

		if ((void *)(ip6 + 1) > end)
			return V_PASS;
		if (dst)
			__builtin_memcpy(&ip6->daddr, addr, 16);
		else
			__builtin_memcpy(&ip6->saddr, addr, 16);
		l3diff = 0;
		if (redirect)
			ip6->hop_limit -= 1;
	}
	/* An unchanged port costs nothing (no write, no second checksum helper call). */
	if (dst && p->dport_p && oldport != port) {
		void *end = ctx_end(ctx, xdp);

		if ((void *)(p->dport_p + 1) > end)
			return V_PASS;
		*p->dport_p = port;
		pdiff = csum_diff16(oldport, port);
	} else if (!dst && p->sport_p && oldport != port) {
		void *end = ctx_end(ctx, xdp);

		if ((void *)(p->sport_p + 1) > end)
			return V_PASS;
		*p->sport_p = port;
		pdiff = csum_diff16(oldport, port);
	}

	if (xdp) {
		if (p->csum) {
			void *end = ctx_end(ctx, xdp);
			__u16 *cs = p->csum;

			if ((void *)(cs + 1) > end)
				return V_PASS;
			if (!(p->t.proto == IPPROTO_UDP && *cs == 0)) {
				__u16 n = csum_apply(*cs, csum_fold64((__u64)adiff + pdiff));

				if (p->t.proto == IPPROTO_UDP && n == 0)
					n = 0xffff;
				*cs = n;
			}
		}
		if (redirect) {
			struct ethhdr *eth = ctx_data(ctx, xdp);

			if ((void *)(eth + 1) > ctx_end(ctx, xdp))
				return V_PASS;
			__builtin_memcpy(eth->h_dest, f.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, f.smac, ETH_ALEN);
			if (bpf_redirect(f.ifindex, 0) == XDP_REDIRECT) {
				stat_inc(LB_STAT_REDIRECT);
				return V_REDIRECT;
			}
		}
	} else {
		struct __sk_buff *skb = ctx;
		__u32 csum_off = p->csum ? p->csum_off : 0;
		__u64 mflag = p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

		if (p->t.family == 4)
			bpf_l3_csum_replace(skb, ETH_HLEN + 10, 0, l3diff, 0);
		if (csum_off) {
			bpf_l4_csum_replace(skb, csum_off, 0, adiff, BPF_F_PSEUDO_HDR | mflag);
			if (pdiff)
				bpf_l4_csum_replace(skb, csum_off, 0, pdiff, mflag);
		}
		if (redirect) {
			struct bpf_redir_neigh nh = {};

			if (p->t.family == 4) {
				nh.nh_family = AF_INET;
				nh.ipv4_nh = f.ipv4_dst;
			} else {
				nh.nh_family = AF_INET6;
				__builtin_memcpy(nh.ipv6_nh, f.ipv6_dst, 16);
			}
			if (bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0) == TC_ACT_REDIRECT) {
				stat_inc(LB_STAT_REDIRECT);
				return V_REDIRECT;
			}
		}
	}
	stat_inc(LB_STAT_FIB_PASS);
	return V_PASS;
}

/* Per-hook out-of-line copies keep each BPF stack frame small. */
static __noinline enum verdict nat_forward_tc(void *ctx, struct pkt *p, int dst, const __u32 *addr,
					      __u16 port)
{
	return nat_forward(ctx, 0, p, dst, addr, port);
}

static __noinline enum verdict nat_forward_xdp(void *ctx, struct pkt *p, int dst, const __u32 *addr,
					       __u16 port)
{
	return nat_forward(ctx, 1, p, dst, addr, port);
}

static __always_inline enum verdict nat_fwd(void *ctx, const int xdp, struct pkt *p, int dst,
					    const __u32 *addr, __u16 port)
{
	if (xdp)
		return nat_forward_xdp(ctx, p, dst, addr, port);
	return nat_forward_tc(ctx, p, dst, addr, port);
}

/* A reply from an endpoint: source back to the VIP. */
static __always_inline enum verdict do_reply(void *ctx, const int xdp, struct pkt *p, struct lb_ct *ct,
					     __u64 now)
{
	ct_close_reply(ct, p, now);
	stat_inc(LB_STAT_REPLY);
	count(&lb_svc_stats, ct->svc_id, p->len, 1, 0, 0);
	count(&lb_be_stats, ct->stat_id, p->len, 1, 0, 0);
	return nat_fwd(ctx, xdp, p, 0, ct->nat_addr, ct->nat_port);
}

#endif /* __LB_NAT_H */
