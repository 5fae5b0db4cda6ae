/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_frag.h - IP fragments (IPv4, and IPv6's fragment header): only the first
 * fragment of a datagram carries the L4 header, so it records its ports in lb_frag
 * under (addresses, protocol, fragment id); every later fragment takes them from
 * there and then follows the flow's conntrack entry like any packet of the flow:
 * the same endpoint, the same address translation (ports and the L4 checksum,
 * which covers the whole datagram, live in the first fragment only).  Reply
 * fragments from the endpoint are reverse-NATed the same way.
 *
 * A later fragment whose first fragment was not seen (reordered ahead of it, or
 * its record evicted or older than LB_FRAG_TIMEOUT) goes to the kernel untouched
 * and is counted in LB_STAT_PASS_FRAGMENT: without ports it cannot be told from
 * the box's own or routed traffic, which must reach the kernel.  For a VIP the
 * kernel then holds it until its reassembly timeout and drops it, so such a
 * datagram is lost (the sender's retransmission recovers, as after any loss).
 * Kept off the fast path: only packets parse() marked LB_PARSE_SLOW come here.
 */
#ifndef __LB_FRAG_H
#define __LB_FRAG_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"
#include "lb_select.h"

/* A first fragment records its ports; a later one gets them.  0: carry on with the
 * flow lookup; -1: a later fragment of no recorded datagram (pass it). */
static __noinline int frag_follow(struct pkt *p, __u64 now)
{
	struct lb_frag_key k = {};
	struct lb_frag *f;

	__builtin_memcpy(k.saddr, p->t.saddr, 16);
	__builtin_memcpy(k.daddr, p->t.daddr, 16);
	k.id = p->frag_id;
	k.proto = p->t.proto;
	k.family = p->t.family;
	if (p->frag == LB_FRAG_FIRST) {
		struct lb_frag v = {};

		v.sport = p->t.sport;
		v.dport = p->t.dport;
		v.seen_ns = now;
		bpf_map_update_elem(&lb_frag, &k, &v, BPF_ANY);
		stat_inc(LB_STAT_FRAG_FIRST);
		return 0;
	}
	f = bpf_map_lookup_elem(&lb_frag, &k);
	if (!f || now - f->seen_ns > (__u64)LB_FRAG_TIMEOUT * NSEC_PER_SEC) {
		stat_inc(LB_STAT_PASS_FRAGMENT);
		return -1;
	}
	p->t.sport = f->sport;
	p->t.dport = f->dport;
	stat_inc(LB_STAT_FRAG_FOLLOW);
	return 0;
}

#endif /* __LB_FRAG_H */
