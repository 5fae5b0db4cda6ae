/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_conntrack.h - conntrack: one LRU entry per direction of a flow, TCP state, idle
 * timeouts, and the open-connection counts least-connection selection reads.
 */
#ifndef __LB_CONNTRACK_H
#define __LB_CONNTRACK_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"
#include "lb_select.h"

static __always_inline __u64 ct_timeout_ns(const struct lb_ct *ct)
{
	__u32 t = ct->timeout;

	if (ct->state >= LB_CT_FIN_WAIT && t > LB_CT_CLOSING_TIMEOUT)
		t = LB_CT_CLOSING_TIMEOUT;
	return (__u64)t * NSEC_PER_SEC;
}

static __always_inline int ct_open(__u8 state)
{
	return state < LB_CT_FIN_WAIT;
}

static __always_inline void conns_add(__u32 stat_id, __s64 delta)
{
	__u64 *c = bpf_map_lookup_elem(&lb_be_conns, &stat_id);

	if (!c)
		return;
	if (delta < 0 && *c == 0)
		return;
	__sync_fetch_and_add(c, delta);
}

/* Follow TCP flags; closes the flow's connection count once. */
static __always_inline void ct_track(struct lb_ct *ct, const struct pkt *p)
{
	__u8 f = p->tcp_flags;

	if (p->t.proto != IPPROTO_TCP)
		return;
	if (f & TCPF_RST) {
		if (ct_open(ct->state) && ct->dir == LB_CT_FORWARD)
			conns_add(ct->stat_id, -1);
		ct->state = LB_CT_CLOSED;
	} else if (f & TCPF_FIN) {
		if (ct_open(ct->state) && ct->dir == LB_CT_FORWARD)
			conns_add(ct->stat_id, -1);
		if (ct->state != LB_CT_CLOSED)
			ct->state = LB_CT_FIN_WAIT;
	} else if (ct->state == LB_CT_SYN_SENT && (f & TCPF_ACK)) {
		ct->state = LB_CT_ESTABLISHED;
	}
}

/* Reply-side bookkeeping: refresh, and follow FIN/RST on both entries. */
static __noinline void ct_close_reply(struct lb_ct *ct, struct pkt *p, __u64 now)
{
	if (now - ct->seen_ns > NSEC_PER_SEC / 4)
		ct->seen_ns = now;
	if (p->tcp_flags & (TCPF_FIN | TCPF_RST)) {
		/* Close the forward entry too, so it stops capturing the tuple. */
		struct lb_ct_key fk = {};
		struct lb_ct *fwd;

		__builtin_memcpy(fk.saddr, p->t.daddr, 16);
		__builtin_memcpy(fk.daddr, ct->nat_addr, 16);
		fk.sport = p->t.dport;
		fk.dport = ct->nat_port;
		fk.proto = p->t.proto;
		fk.family = p->t.family;
		fwd = bpf_map_lookup_elem(&lb_ct, &fk);
		if (fwd)
			ct_track(fwd, p);
		ct_track(ct, p);
	}
}

/* Create both conntrack entries of a new flow; reply entry first. */
static __noinline void ct_create(const struct pkt *p, const struct lb_backend *be, __u16 nat_port,
				 __u32 svc_id, __u64 now)
{
	struct lb_ct v = {};
	struct lb_ct_key rk = {};

	__builtin_memcpy(v.nat_addr, p->t.daddr, 16);
	v.nat_port = p->t.dport;
	v.dir = LB_CT_REPLY;
	v.state = LB_CT_ACTIVE;
	if (p->t.proto == IPPROTO_TCP) {
		/* A stray RST/FIN of an unknown flow is forwarded but opens nothing. */
		if (p->tcp_flags & TCPF_RST)
			v.state = LB_CT_CLOSED;
		else if (p->tcp_flags & TCPF_FIN)
			v.state = LB_CT_FIN_WAIT;
		else if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			v.state = LB_CT_SYN_SENT;
		else
			v.state = LB_CT_ESTABLISHED;
	}
	v.svc_id = svc_id;
	v.stat_id = be->stat_id;
	v.timeout = p->timeout;
	v.created_ns = now;
	v.seen_ns = now;
	__builtin_memcpy(rk.saddr, be->addr, 16);
	__builtin_memcpy(rk.daddr, p->t.saddr, 16);
	rk.sport = nat_port;
	rk.dport = p->t.sport;
	rk.proto = p->t.proto;
	rk.family = p->t.family;
	bpf_map_update_elem(&lb_ct, &rk, &v, BPF_ANY);

	__builtin_memcpy(v.nat_addr, be->addr, 16);
	v.nat_port = nat_port;
	v.dir = LB_CT_FORWARD;
	bpf_map_update_elem(&lb_ct, &p->t, &v, BPF_ANY);
	if (ct_open(v.state))
		conns_add(be->stat_id, 1);
}

#endif /* __LB_CONNTRACK_H */
