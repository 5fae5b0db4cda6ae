/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_counters.h - counters: the global per-CPU stats and the per-service and per-endpoint records.
 */
#ifndef __LB_COUNTERS_H
#define __LB_COUNTERS_H

#include "lb_maps.h"

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v;

#ifdef LB_PROFILE_NO_COUNTERS
	return;
#endif
	v = bpf_map_lookup_elem(&lb_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void count(void *map, __u32 id, __u32 len, int reply, int new_flow, int drop)
{
	struct lb_counters *c;

#ifdef LB_PROFILE_NO_COUNTERS
	return;
#endif
	c = bpf_map_lookup_elem(map, &id);
	if (!c)
		return;
	if (reply) {
		c->reply_packets += 1;
		c->reply_bytes += len;
	} else {
		c->packets += 1;
		c->bytes += len;
	}
	c->new_flows += new_flow;
	c->drops += drop;
}

#endif /* __LB_COUNTERS_H */
