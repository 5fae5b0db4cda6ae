/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_addrset.h - the early exit for packets that are nothing of ours.
 *
 * A packet concerns the balancer only when it goes to a VIP (a new or forward
 * flow, a fragment, a path of an SCTP association) or comes from an endpoint
 * (a reply to translate back).  lb_addrset holds one bit per hashed address of
 * every VIP (the secondary SCTP VIPs too) and every endpoint; a packet whose
 * destination and source bits are both clear skips the conntrack lookup and
 * the service lookups (~40 ns on this kind of machine) and goes to the kernel.
 *
 * The set is a superset: a hash collision only sends a packet down the full
 * path.  The control plane sets bits before the entries they cover are
 * written and leaves them set when a service or endpoint goes (its flows are
 * ended by the same apply); it arms the set (the word after the bits) only
 * once every address of the maps is in it, so a datapath that has never been
 * given the set (fresh maps, or maps migrated from before it) takes the full
 * path for every packet.  Parsing and the firewall come first and are not
 * skipped; ICMP errors never reach the check (lb_icmp.h).
 */
#ifndef __LB_ADDRSET_H
#define __LB_ADDRSET_H

#include "lb_maps.h"
#include "lb_parse.h"

/* The bit of an address (lb_ct_key words, IPv4 in the first): reconciler/drivers/bpf_addrset.py. */
static __always_inline __u32 addrset_bit(const __u32 a[4])
{
	__u32 x = a[0] ^ a[1] ^ a[2] ^ a[3];

	return (x * (__u32)LB_ADDRSET_MULT) >> (32 - LB_ADDRSET_LOG2);
}

static __always_inline int addrset_has(const __u32 a[4])
{
	__u32 bit = addrset_bit(a);
	__u32 k = bit >> 6;
	__u64 *w = bpf_map_lookup_elem(&lb_addrset, &k);

	return !w || ((*w >> (bit & 63)) & 1);
}

/* 1: the set is armed and holds neither the destination nor the source.  A function
 * of its own: lb_process's stack frame is at the 512-byte limit already. */
static __noinline int addrset_miss(const struct pkt *p)
{
	__u32 k = LB_ADDRSET_ARMED;
	__u64 *armed = bpf_map_lookup_elem(&lb_addrset, &k);

	if (!armed || !*armed)
		return 0;
	return !addrset_has(p->t.daddr) && !addrset_has(p->t.saddr);
}

#endif /* __LB_ADDRSET_H */
