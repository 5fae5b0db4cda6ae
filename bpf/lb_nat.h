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
#include "lb_nexthop.h"
#include "lb_sctp.h"

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

#include "lb_mtu.h"	/* needs the checksum helpers above */

/* Where a packet goes: both ends after translation (unchanged ends keep the packet's). */
struct nat_to {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u32 pad;
};

/*
 * Rewrite source and destination address and port to *to, decrement the TTL when
 * we redirect, fix checksums, and forward.
 */
static __always_inline enum verdict nat_forward(void *ctx, const int xdp, struct pkt *p,
						const struct nat_to *to, struct lb_ct *ct)
{
	struct bpf_fib_lookup f = {};
	__u32 adiff, pdiff = 0, l3diff;
	__u16 ttlw_old, ttlw_new;
	int rc, redirect, n = p->t.family == 4 ? 1 : 4;
	__u64 now = ct ? ct_now() : 0;

	adiff = csum_fold64((__u64)csum_diff_words(p->t.daddr, to->daddr, n) +
			    csum_diff_words(p->t.saddr, to->saddr, n));
#ifdef LB_PROFILE_NO_FIB
	rc = BPF_FIB_LKUP_RET_SUCCESS;
	f.ifindex = p->ifindex;
	(void)now;
#else
	if (nh_get(ct, xdp, &f, p->t.family, now)) {
		__u32 mtu_len = 0;

		/* tc: the cached hop skips the FIB lookup's MTU check, so make it here (a GSO
		 * packet by its segments); over the MTU, the lookup below answers FRAG_NEEDED
		 * and lb_mtu.h tells the sender. */
		if (xdp || bpf_check_mtu(ctx, f.ifindex, &mtu_len, 0, BPF_MTU_CHK_SEGS) == BPF_MTU_CHK_RET_SUCCESS) {
			rc = BPF_FIB_LKUP_RET_SUCCESS;
			goto routed;
		}
	}
#endif
	f.family = p->t.family == 4 ? AF_INET : AF_INET6;
	f.l4_protocol = p->t.family == 6 && p->t.proto == IPPROTO_ICMP ? IPPROTO_ICMPV6 : p->t.proto;
	f.sport = p->sport_p ? to->sport : p->t.sport;
	f.dport = p->dport_p ? to->dport : p->t.dport;
	f.tot_len = 0;		/* pitfall 15: GSO packets would fail the MTU check */
	f.ifindex = p->ifindex;
	if (p->t.family == 4) {
		f.ipv4_src = to->saddr[0];
		f.ipv4_dst = to->daddr[0];
	} else {
		__builtin_memcpy(f.ipv6_src, to->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, to->daddr, 16);
	}
#ifndef LB_PROFILE_NO_FIB
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	nh_put(ct, &f, rc, p->t.family, now);
routed:
#endif
	if (xdp)
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS;
	else
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
	if (!xdp && rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		((struct __sk_buff *)ctx)->cb[0] = f.mtu_result;
		if (too_big_wanted(ctx, p))
			return V_TOO_BIG;	/* over the egress MTU: lb_mtu.h answers the sender */
	}

	/* Direct packet writes first; tc checksum helpers invalidate pointers. */
	if (p->t.family == 4) {
		struct iphdr *ip = p->l3;
		void *end = ctx_end(ctx, xdp);

		if ((void *)(ip + 1) > end)
			return V_PASS;
		ip->saddr = to->saddr[0];
		ip->daddr = to->daddr[0];
		l3diff = adiff;
		if (redirect) {
			ttlw_old = *(__u16 *)&ip->ttl;
			ip->ttl -= 1;
			ttlw_new = *(__u16 *)&ip->ttl;
			l3diff = csum_fold64((__u64)l3diff + csum_diff16(ttlw_old, ttlw_new));
		}
		/* Both hooks: the IPv4 header checksum is always complete, so a direct
		 * write does what bpf_l3_csum_replace would, without the helper call. */
#ifndef LB_PROFILE_NO_CSUM
		ip->check = csum_apply(ip->check, l3diff);
#endif
	} else {
		struct ipv6hdr *ip6 = p->l3;
		void *end = ctx_end(ctx, xdp);

		if ((void *)(ip6 + 1) > end)
			return V_PASS;
		__builtin_memcpy(&ip6->saddr, to->saddr, 16);
		__builtin_memcpy(&ip6->daddr, to->daddr, 16);
		l3diff = 0;
		if (redirect)
			ip6->hop_limit -= 1;
	}
	/* An unchanged port costs nothing (no write, no second checksum helper call). */
	if (p->dport_p && p->t.dport != to->dport) {
		void *end = ctx_end(ctx, xdp);

		if ((void *)(p->dport_p + 1) > end)
			return V_PASS;
		*p->dport_p = to->dport;
		pdiff = csum_diff16(p->t.dport, to->dport);
	}
	if (p->sport_p && p->t.sport != to->sport) {
		void *end = ctx_end(ctx, xdp);

		if ((void *)(p->sport_p + 1) > end)
			return V_PASS;
		*p->sport_p = to->sport;
		pdiff = csum_fold64((__u64)pdiff + csum_diff16(p->t.sport, to->sport));
	}

	if (xdp) {
#ifndef LB_PROFILE_NO_CSUM
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
#endif
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

#ifdef LB_PROFILE_NO_CSUM
		csum_off = 0;
#endif
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
static __noinline enum verdict nat_forward_tc(void *ctx, struct pkt *p, const struct nat_to *to,
					      struct lb_ct *ct)
{
	return nat_forward(ctx, 0, p, to, ct);
}

static __noinline enum verdict nat_forward_xdp(void *ctx, struct pkt *p, const struct nat_to *to,
					       struct lb_ct *ct)
{
	return nat_forward(ctx, 1, p, to, ct);
}

static __always_inline enum verdict nat_fwd(void *ctx, const int xdp, struct pkt *p, const struct nat_to *to,
					    struct lb_ct *ct)
{
	if (xdp)
		return nat_forward_xdp(ctx, p, to, ct);
	return nat_forward_tc(ctx, p, to, ct);
}

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif

/*
 * NAT64/NAT46 (fullnat only): rewrite a TCP or UDP packet into the other IP family,
 * addresses and ports to *to (addresses of family `fam`), with the new IP header
 * written whole and the L4 checksum moved from one pseudo header to the other
 * (length and protocol add the same to both, so only the addresses and ports
 * count).  IPv4 options and UDP without a checksum (IPv6 requires one) are
 * dropped.  Then forwarded as nat_forward does, or left to the kernel translated.
 */
static __always_inline enum verdict xlat_forward(void *ctx, const int xdp, struct pkt *p,
						 const struct nat_to *to, __u8 fam)
{
	struct bpf_fib_lookup f = {};
	union {
		struct iphdr h4;
		struct ipv6hdr h6;
	} h = {};
	__u32 adiff, pdiff = 0, hl = fam == 4 ? sizeof(h.h4) : sizeof(h.h6);
	__u32 l4csum = p->t.proto == IPPROTO_TCP ? 16 : 6;
	__u16 plen;
	__u8 ttl, tos;
	__u64 sum = 0;
	int rc, redirect;

	/* A fragment would need a fragment header built or dropped: not translated. */
	if ((p->t.proto != IPPROTO_TCP && p->t.proto != IPPROTO_UDP) || p->frag)
		return V_DROP;
	if (p->t.family == 6) {
		struct ipv6hdr *ip6 = p->l3;

		if ((void *)(ip6 + 1) > ctx_end(ctx, xdp))
			return V_PASS;
		plen = bpf_ntohs(ip6->payload_len);
		ttl = ip6->hop_limit;
		tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	} else {
		struct iphdr *ip = p->l3;

		if ((void *)(ip + 1) > ctx_end(ctx, xdp))
			return V_PASS;
		if (ip->ihl != 5)
			return V_DROP;
		plen = bpf_ntohs(ip->tot_len) - sizeof(*ip);
		ttl = ip->ttl;
		tos = ip->tos;
	}
	if (p->csum) {
		__u16 *cs = p->csum;

		if ((void *)(cs + 1) > ctx_end(ctx, xdp))
			return V_PASS;
		if (p->t.proto == IPPROTO_UDP && *cs == 0)
			return V_DROP;
	}
	for (int i = 0; i < 4; i++) {
		if (i < (p->t.family == 4 ? 1 : 4))
			sum += (__u32)~p->t.saddr[i] + (__u64)(__u32)~p->t.daddr[i];
		if (i < (fam == 4 ? 1 : 4))
			sum += (__u64)to->saddr[i] + to->daddr[i];
	}
	adiff = csum_fold64(sum);

	f.family = fam == 4 ? AF_INET : AF_INET6;
	f.l4_protocol = p->t.proto;
	f.sport = to->sport;
	f.dport = to->dport;
	f.ifindex = p->ifindex;
	if (fam == 4) {
		f.ipv4_src = to->saddr[0];
		f.ipv4_dst = to->daddr[0];
	} else {
		__builtin_memcpy(f.ipv6_src, to->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, to->daddr, 16);
	}
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	if (xdp)
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS;
	else
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
	if (redirect)
		ttl -= 1;

	/* Ports first, in place (the L4 header does not move with the IP header). */
	if (!p->dport_p || !p->sport_p)
		return V_DROP;
	if (p->t.dport != to->dport) {
		if ((void *)(p->dport_p + 1) > ctx_end(ctx, xdp))
			return V_PASS;
		*p->dport_p = to->dport;
		pdiff = csum_diff16(p->t.dport, to->dport);
	}
	if (p->t.sport != to->sport) {
		if ((void *)(p->sport_p + 1) > ctx_end(ctx, xdp))
			return V_PASS;
		*p->sport_p = to->sport;
		pdiff = csum_fold64((__u64)pdiff + csum_diff16(p->t.sport, to->sport));
	}

	if (fam == 4) {
		h.h4.version = 4;
		h.h4.ihl = 5;
		h.h4.tos = tos;
		h.h4.tot_len = bpf_htons(plen + sizeof(h.h4));
		h.h4.frag_off = bpf_htons(0x4000);	/* DF: IPv6 does not fragment on the way */
		h.h4.ttl = ttl;
		h.h4.protocol = p->t.proto;
		h.h4.saddr = to->saddr[0];
		h.h4.daddr = to->daddr[0];
		h.h4.check = (__u16)~csum_fold64(bpf_csum_diff(0, 0, (__be32 *)&h.h4, sizeof(h.h4), 0));
	} else {
		h.h6.version = 6;
		h.h6.priority = tos >> 4;
		h.h6.flow_lbl[0] = (tos & 0xf) << 4;
		h.h6.payload_len = bpf_htons(plen);
		h.h6.nexthdr = p->t.proto;
		h.h6.hop_limit = ttl;
		__builtin_memcpy(&h.h6.saddr, to->saddr, 16);
		__builtin_memcpy(&h.h6.daddr, to->daddr, 16);
	}

	if (xdp) {
		struct ethhdr eth, *e;
		__u16 *cs;
		void *data = ctx_data(ctx, xdp);

		if (data + sizeof(eth) > ctx_end(ctx, xdp))
			return V_PASS;
		__builtin_memcpy(&eth, data, sizeof(eth));
		if (bpf_xdp_adjust_head(ctx, fam == 4 ? (int)sizeof(h.h6) - (int)sizeof(h.h4)
						      : (int)sizeof(h.h4) - (int)sizeof(h.h6)))
			return V_DROP;
		e = ctx_data(ctx, xdp);
		if ((void *)e + ETH_HLEN + sizeof(h.h4) > ctx_end(ctx, xdp))
			return V_DROP;
		if (redirect) {
			__builtin_memcpy(eth.h_dest, f.dmac, ETH_ALEN);
			__builtin_memcpy(eth.h_source, f.smac, ETH_ALEN);
		}
		eth.h_proto = bpf_htons(fam == 4 ? ETH_P_IP : ETH_P_IPV6);
		__builtin_memcpy(e, &eth, sizeof(eth));
		if (fam == 4) {
			__builtin_memcpy((void *)e + ETH_HLEN, &h.h4, sizeof(h.h4));
		} else {
			if ((void *)e + ETH_HLEN + sizeof(h.h6) > ctx_end(ctx, xdp))
				return V_DROP;
			__builtin_memcpy((void *)e + ETH_HLEN, &h.h6, sizeof(h.h6));
		}
		cs = (void *)e + ETH_HLEN + (fam == 4 ? sizeof(h.h4) : sizeof(h.h6)) +
		     (p->t.proto == IPPROTO_TCP ? 16 : 6);
		if ((void *)(cs + 1) > ctx_end(ctx, xdp))
			return V_DROP;
		{
			__u16 n = csum_apply(*cs, csum_fold64((__u64)adiff + pdiff));

			if (p->t.proto == IPPROTO_UDP && n == 0)
				n = 0xffff;
			*cs = n;
		}
		if (redirect && bpf_redirect(f.ifindex, 0) == XDP_REDIRECT) {
			stat_inc(LB_STAT_REDIRECT);
			return V_REDIRECT;
		}
	} else {
		struct __sk_buff *skb = ctx;
		__u16 proto = bpf_htons(fam == 4 ? ETH_P_IP : ETH_P_IPV6);
		__u32 csum_off = ETH_HLEN + hl + l4csum;
		__u64 mflag = p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

		if (bpf_skb_change_proto(skb, proto, 0))
			return V_DROP;
		if (bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
			return V_DROP;
		if (fam == 4 ? bpf_skb_store_bytes(skb, ETH_HLEN, &h.h4, sizeof(h.h4), 0)
			     : bpf_skb_store_bytes(skb, ETH_HLEN, &h.h6, sizeof(h.h6), 0))
			return V_DROP;
		bpf_l4_csum_replace(skb, csum_off, 0, adiff, BPF_F_PSEUDO_HDR | mflag);
		if (pdiff)
			bpf_l4_csum_replace(skb, csum_off, 0, pdiff, mflag);
		if (redirect) {
			struct bpf_redir_neigh nh = {};

			if (fam == 4) {
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

static __noinline enum verdict xlat_forward_tc(void *ctx, struct pkt *p, const struct nat_to *to, __u8 fam)
{
	return xlat_forward(ctx, 0, p, to, fam);
}

static __noinline enum verdict xlat_forward_xdp(void *ctx, struct pkt *p, const struct nat_to *to, __u8 fam)
{
	return xlat_forward(ctx, 1, p, to, fam);
}

/* Forward to *to, translating into family `fam` when it is not the packet's. */
static __always_inline enum verdict nat_go(void *ctx, const int xdp, struct pkt *p, const struct nat_to *to,
					   __u8 fam, struct lb_ct *ct)
{
	if (fam && fam != p->t.family)
		return xdp ? xlat_forward_xdp(ctx, p, to, fam) : xlat_forward_tc(ctx, p, to, fam);
	return nat_fwd(ctx, xdp, p, to, ct);
}

static __always_inline int addr_set(const __u32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) != 0;
}

static __always_inline int addr_eq(const __u32 *a, const __u32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/*
 * The box's own address towards daddr and the interface it leaves by
 * (BPF_FIB_LOOKUP_SRC: the route's preferred source).  0 on success.
 */
static __noinline int fib_source(void *ctx, const struct pkt *p, const struct lb_backend *be, __u32 *src,
				 __u32 *ifindex)
{
	struct bpf_fib_lookup f = {};
	const __u32 *daddr = be->addr;
	int rc;

	f.family = be->family == 4 ? AF_INET : AF_INET6;
	f.ifindex = p->ifindex;
	if (be->family == 4)
		f.ipv4_dst = daddr[0];
	else
		__builtin_memcpy(f.ipv6_dst, daddr, 16);
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	__builtin_memset(src, 0, 16);
	if (be->family == 4)
		src[0] = f.ipv4_src;
	else
		__builtin_memcpy(src, f.ipv6_src, 16);
	*ifindex = f.ifindex;
	return addr_set(src) ? 0 : -1;
}

/*
 * How a new flow of a service in mode `mode` leaves the box (the dispatch in
 * lb_kern.c's do_new calls this): onearm and fullnat without a configured
 * source take the box's address towards the endpoint; default mode does too
 * when the endpoint is behind the interface the client came in by (hairpin:
 * the endpoint would answer the client directly, or is the client).  An
 * endpoint of the other family (fullnat only) gets the flow translated between
 * IPv4 and IPv6 (the control plane sets a source of the endpoints' family).  0
 * on success, -1 when a source NAT has no address (no route to the endpoint).
 */
static __always_inline int nat_plan(void *ctx, const struct pkt *p, const struct lb_service *s,
				    const struct lb_backend *be, struct ct_plan *plan)
{
	__u32 ifindex = 0;

	plan->mode = s->mode;
	plan->family = be->family;
	if (s->mode == LB_MODE_DSR)
		return 0;
	if (s->mode == LB_MODE_FULLNAT && addr_set(s->snat_addr)) {
		__builtin_memcpy(plan->saddr, s->snat_addr, 16);
		plan->snat = 1;
		return 0;
	}
	if (fib_source(ctx, p, be, plan->saddr, &ifindex))
		return s->mode == LB_MODE_ONEARM || s->mode == LB_MODE_FULLNAT ? -1 : 0;
	plan->snat = s->mode != LB_MODE_DEFAULT || ifindex == p->ifindex;
	return 0;
}

/* Encapsulate in IPv4 (IP-in-IP, L3 DSR): an outer header from src to dst after Ethernet. */
static __always_inline int ipip_push(void *ctx, const int xdp, __u32 src, __u32 dst, __u16 inner_len,
				     const __u8 *dmac, const __u8 *smac)
{
	struct iphdr o = {};
	__u64 sum;

	o.version = 4;
	o.ihl = 5;
	o.ttl = 64;
	o.protocol = IPPROTO_IPIP;
	o.tot_len = bpf_htons(inner_len + sizeof(o));
	o.saddr = src;
	o.daddr = dst;
	sum = bpf_csum_diff(0, 0, (__be32 *)&o, sizeof(o), 0);
	o.check = (__u16)~csum_fold64(sum);
	if (xdp) {
		struct ethhdr *eth;
		struct iphdr *ip;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(o)))
			return -1;
		eth = ctx_data(ctx, xdp);
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > ctx_end(ctx, xdp))
			return -1;
		__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
		eth->h_proto = bpf_htons(ETH_P_IP);
		*ip = o;
		return 0;
	}
	if (bpf_skb_adjust_room(ctx, sizeof(o), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return -1;
	return bpf_skb_store_bytes(ctx, ETH_HLEN, &o, sizeof(o), 0) ? -1 : 0;
}

/* Encapsulate in IPv6 (IPv6-in-IPv6, L3 DSR of IPv6 VIPs): an outer header from src to dst. */
static __always_inline int ip6ip6_push(void *ctx, const int xdp, const __u32 *src, const __u32 *dst,
				       __u16 inner_len, const __u8 *dmac, const __u8 *smac)
{
	struct ipv6hdr o = {};

	o.version = 6;
	o.payload_len = bpf_htons(inner_len);
	o.nexthdr = IPPROTO_IPV6;
	o.hop_limit = 64;
	__builtin_memcpy(&o.saddr, src, 16);
	__builtin_memcpy(&o.daddr, dst, 16);
	if (xdp) {
		struct ethhdr *eth;
		struct ipv6hdr *ip6;

		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(o)))
			return -1;
		eth = ctx_data(ctx, xdp);
		ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > ctx_end(ctx, xdp))
			return -1;
		__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*ip6 = o;
		return 0;
	}
	if (bpf_skb_adjust_room(ctx, sizeof(o), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6))
		return -1;
	return bpf_skb_store_bytes(ctx, ETH_HLEN, &o, sizeof(o), 0) ? -1 : 0;
}

/*
 * Direct server return: the packet keeps the VIP as its destination.  An endpoint
 * on a connected subnet gets it with only the Ethernet destination changed (L2
 * DSR; it holds the VIP on a loopback); one behind a router gets it inside an
 * IP-in-IP (IPv4) or IPv6-in-IPv6 header from the box to the endpoint (L3 DSR;
 * decapsulation is the endpoint's job).  Replies go from the endpoint straight to the client.
 */
static __always_inline enum verdict dsr_forward(void *ctx, const int xdp, struct pkt *p, const __u32 *be)
{
	struct bpf_fib_lookup f = {};
	__u32 flags = BPF_FIB_LOOKUP_SRC;
	int rc, routed;

	f.family = p->t.family == 4 ? AF_INET : AF_INET6;
	f.l4_protocol = p->t.family == 6 && p->t.proto == IPPROTO_ICMP ? IPPROTO_ICMPV6 : p->t.proto;
	f.sport = p->t.sport;
	f.dport = p->t.dport;
	f.ifindex = p->ifindex;
	if (p->t.family == 4)
		f.ipv4_dst = be[0];
	else
		__builtin_memcpy(f.ipv6_dst, be, 16);
	if (!xdp)
		flags |= BPF_FIB_LOOKUP_SKIP_NEIGH;
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), flags);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		goto pass;
	if (p->t.family == 4)
		routed = f.ipv4_dst != be[0];
	else
		routed = !addr_eq(f.ipv6_dst, be);
	if (routed && p->t.family == 4) {
		struct iphdr *ip = p->l3;

		if ((void *)(ip + 1) > ctx_end(ctx, xdp))
			goto pass;
		if (ipip_push(ctx, xdp, f.ipv4_src, be[0], bpf_ntohs(ip->tot_len), f.dmac, f.smac))
			return V_DROP;	/* the packet may be half changed */
	} else if (routed) {
		struct ipv6hdr *ip6 = p->l3;

		if ((void *)(ip6 + 1) > ctx_end(ctx, xdp))
			goto pass;
		if (ip6ip6_push(ctx, xdp, f.ipv6_src, be, bpf_ntohs(ip6->payload_len) + sizeof(*ip6),
				f.dmac, f.smac))
			return V_DROP;
	}
	if (xdp) {
		struct ethhdr *eth = ctx_data(ctx, xdp);

		if ((void *)(eth + 1) > ctx_end(ctx, xdp))
			return V_DROP;
		__builtin_memcpy(eth->h_dest, f.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, f.smac, ETH_ALEN);
		if (bpf_redirect(f.ifindex, 0) == XDP_REDIRECT) {
			stat_inc(LB_STAT_REDIRECT);
			return V_REDIRECT;
		}
	} else {
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
pass:
	stat_inc(LB_STAT_FIB_PASS);
	return V_PASS;
}

static __noinline enum verdict dsr_forward_tc(void *ctx, struct pkt *p, const __u32 *be)
{
	return dsr_forward(ctx, 0, p, be);
}

static __noinline enum verdict dsr_forward_xdp(void *ctx, struct pkt *p, const __u32 *be)
{
	return dsr_forward(ctx, 1, p, be);
}

/* A packet of a flow towards its endpoint: as its conntrack entry (or plan) says. */
static __always_inline enum verdict fwd_to(void *ctx, const int xdp, struct pkt *p, __u16 mode_fam,
					   const __u32 *be, __u16 port, const __u32 *saddr, __u16 sport,
					   struct lb_ct *ct)
{
	struct nat_to to;

	if ((mode_fam & 0xff) == LB_MODE_DSR)
		return xdp ? dsr_forward_xdp(ctx, p, be) : dsr_forward_tc(ctx, p, be);
	__builtin_memcpy(to.daddr, be, 16);
	to.dport = port;
	__builtin_memcpy(to.saddr, saddr, 16);
	to.sport = sport;
	return nat_go(ctx, xdp, p, &to, mode_fam >> 8, ct);
}

/* An established flow's packet from the client. */
static __always_inline enum verdict ct_fwd(void *ctx, const int xdp, struct pkt *p, struct lb_ct *ct)
{
	__u16 mode_fam = ct->mode | (__u16)ct->nat_family << 8;

	if (addr_set(ct->snat_addr))
		return fwd_to(ctx, xdp, p, mode_fam, ct->nat_addr, ct->nat_port, ct->snat_addr, ct->snat_port, ct);
	return fwd_to(ctx, xdp, p, mode_fam, ct->nat_addr, ct->nat_port, p->t.saddr, p->t.sport, ct);
}

/* A new flow's first packet, after ct_create settled its source. */
static __always_inline enum verdict new_fwd(void *ctx, const int xdp, struct pkt *p,
					    const struct ct_plan *plan, const __u32 *be, __u16 port)
{
	return fwd_to(ctx, xdp, p, plan->mode | (__u16)plan->family << 8, be, port,
		      plan->snat ? plan->saddr : p->t.saddr, plan->sport, 0);
}

/* A reply from an endpoint: source back to the VIP, destination back to the client. */
static __always_inline enum verdict do_reply(void *ctx, const int xdp, struct pkt *p, struct lb_ct *ct,
					     __u64 now)
{
	struct nat_to to;

	ct_close_reply(ct, p, now);
	if (p->t.proto == IPPROTO_SCTP)
		p->sctp_svc = ct->svc_id + 1;
	stat_inc(LB_STAT_REPLY);
	count(&lb_svc_stats, ct->svc_id, p->len, 1, 0, 0);
	count(&lb_be_stats, ct->stat_id, p->len, 1, 0, 0);
	__builtin_memcpy(to.saddr, ct->nat_addr, 16);
	to.sport = ct->nat_port;
	if (addr_set(ct->snat_addr)) {
		__builtin_memcpy(to.daddr, ct->snat_addr, 16);
		to.dport = ct->snat_port;
	} else {
		__builtin_memcpy(to.daddr, p->t.daddr, 16);
		to.dport = p->t.dport;
	}
	return nat_go(ctx, xdp, p, &to, ct->nat_family, ct);
}

/* An SCTP packet of no known path: forwarded on its association's new entry (sctp_path), else passed. */
static __always_inline enum verdict sctp_join(void *ctx, const int xdp, struct pkt *p, __u64 now)
{
	struct lb_ct *ct;
	int rc = sctp_path(p, now);

	if (rc > 0)
		sctp_path_reply(p);
	if (rc < 0 || !(ct = bpf_map_lookup_elem(&lb_ct, &p->t))) {
		stat_inc(LB_STAT_PASS_NOT_OURS);
		return V_PASS;
	}
	stat_inc(LB_STAT_FORWARD);
	count(&lb_svc_stats, ct->svc_id, p->len, 0, 0, 0);
	count(&lb_be_stats, ct->stat_id, p->len, 0, 0, 0);
	return ct_fwd(ctx, xdp, p, ct);
}

#endif /* __LB_NAT_H */
