/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_nexthop.h - the next-hop cache: each conntrack entry remembers where its
 * direction's packets went (interface, next-hop address, MACs), so an established
 * flow skips bpf_fib_lookup.  A cached hop is used while lb_nh_gen's generation is
 * the one it was looked up at (the control plane bumps it on every apply and on
 * route and neighbour changes) and for at most LB_NH_MAX_AGE_NS, so a box whose
 * routes change without anyone bumping the generation still converges.
 */
#ifndef __LB_NEXTHOP_H
#define __LB_NEXTHOP_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_conntrack.h"

#define LB_NH_MAX_AGE_NS (2ULL * NSEC_PER_SEC)

static __always_inline __u32 nh_generation(void)
{
	__u32 zero = 0;
	struct lb_nh_gen *g = bpf_map_lookup_elem(&lb_nh_gen, &zero);

	return g ? g->gen : 0;
}

/*
 * Fill f (ifindex, next hop, MACs) from ct's cache: 1 when the cache is valid
 * for this hook (XDP needs the MACs; tc resolves the neighbour itself).
 */
static __always_inline int nh_get(const struct lb_ct *ct, const int xdp, struct bpf_fib_lookup *f,
				  __u8 family, __u64 now)
{
	if (!ct || !ct->nh_ifindex || now - ct->nh_at_ns >= LB_NH_MAX_AGE_NS)
		return 0;
	if (xdp && !(ct->nh_flags & LB_NH_MACS))
		return 0;
	if (ct->nh_gen != nh_generation())
		return 0;
	f->ifindex = ct->nh_ifindex;
	if (family == 4)
		f->ipv4_dst = ct->nh_addr[0];
	else
		__builtin_memcpy(f->ipv6_dst, ct->nh_addr, 16);
	__builtin_memcpy(f->dmac, ct->nh_dmac, ETH_ALEN);
	__builtin_memcpy(f->smac, ct->nh_smac, ETH_ALEN);
	return 1;
}

/* Remember the result rc of a bpf_fib_lookup f in ct (nothing when it found no way out). */
static __always_inline void nh_put(struct lb_ct *ct, const struct bpf_fib_lookup *f, int rc, __u8 family,
				   __u64 now)
{
	if (!ct)
		return;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		ct->nh_ifindex = 0;
		return;
	}
	ct->nh_gen = nh_generation();
	if (family == 4) {
		ct->nh_addr[0] = f->ipv4_dst;
		ct->nh_addr[1] = 0;
		ct->nh_addr[2] = 0;
		ct->nh_addr[3] = 0;
	} else {
		__builtin_memcpy(ct->nh_addr, f->ipv6_dst, 16);
	}
	__builtin_memcpy(ct->nh_dmac, f->dmac, ETH_ALEN);
	__builtin_memcpy(ct->nh_smac, f->smac, ETH_ALEN);
	ct->nh_flags = rc == BPF_FIB_LKUP_RET_SUCCESS ? LB_NH_MACS : 0;
	ct->nh_ifindex = f->ifindex;
	ct->nh_at_ns = now;
}

#endif /* __LB_NEXTHOP_H */
