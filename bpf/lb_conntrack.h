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
#include "lb_sctp.h"

/* A closing state (TCP after FIN or RST, SCTP from SHUTDOWN on): short timeout, not open. */
static __always_inline int ct_closing(__u8 state)
{
	return (LB_CT_CLOSING_STATES >> (state & 31)) & 1;
}

static __always_inline __u64 ct_timeout_ns(const struct lb_ct *ct)
{
	__u32 t = ct->timeout;

	if (ct_closing(ct->state) && t > LB_CT_CLOSING_TIMEOUT)
		t = LB_CT_CLOSING_TIMEOUT;
	return (__u64)t * NSEC_PER_SEC;
}

/*
 * The clock of conntrack: the coarse monotonic clock (CLOCK_MONOTONIC_COARSE, one
 * tick behind at most), a few ns where bpf_ktime_get_ns costs ~20 on a VM; timeouts
 * are whole seconds.  The firewall's policer reads the fine clock itself.
 */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Idle for its timeout or longer (>=: a timeout of 0, used by benches, is always stale). */
static __always_inline int ct_stale(const struct lb_ct *ct, __u64 now)
{
	return now - ct->seen_ns >= ct_timeout_ns(ct);
}

static __always_inline int ct_open(__u8 state)
{
	return !ct_closing(state);
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

/* Follow an SCTP association's chunks; closes its connection count once. */
static __noinline void sctp_track(struct lb_ct *ct, __u8 chunk)
{
	__u8 n = sctp_next_state(ct->state, chunk);

	if (n == ct->state)
		return;
	if (ct_open(ct->state) && !ct_open(n) && ct->dir == LB_CT_FORWARD)
		conns_add(ct->stat_id, -1);
	ct->state = n;
}

/* Follow TCP flags; closes the flow's connection count once. */
static __always_inline void ct_track(struct lb_ct *ct, const struct pkt *p)
{
	__u8 f = p->tcp_flags;

	if (p->t.proto != IPPROTO_TCP) {
		if (p->t.proto == IPPROTO_SCTP)
			sctp_track(ct, p->chunk);
		return;
	}
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
	if (p->tcp_flags & (TCPF_FIN | TCPF_RST) || p->t.proto == IPPROTO_SCTP) {
		/* Close the forward entry too, so it stops capturing the tuple. */
		struct lb_ct_key fk = {};
		struct lb_ct *fwd;

		/* The client's own tuple: the reply's destination unless it was translated. */
		if (ct->snat_addr[0] | ct->snat_addr[1] | ct->snat_addr[2] | ct->snat_addr[3]) {
			__builtin_memcpy(fk.saddr, ct->snat_addr, 16);
			fk.sport = ct->snat_port;
		} else {
			__builtin_memcpy(fk.saddr, p->t.daddr, 16);
			fk.sport = p->t.dport;
		}
		__builtin_memcpy(fk.daddr, ct->nat_addr, 16);
		fk.dport = ct->nat_port;
		fk.proto = p->t.proto;
		fk.family = ct->nat_family ? ct->nat_family : p->t.family;
		fwd = bpf_map_lookup_elem(&lb_ct, &fk);
		if (fwd)
			ct_track(fwd, p);
		ct_track(ct, p);
		if (p->t.proto == IPPROTO_SCTP && p->chunk == SCTP_CID_INIT_ACK && fwd) {
			/* The tag the client will put in every packet of this association, on
			 * every path: a path conntrack does not know yet is found by it. */
			struct lb_sctp_key sk = {};

			sk.vtag = p->itag;
			sk.sport = fk.sport;
			sk.dport = fk.dport;
			sk.family = fk.family;
			bpf_map_update_elem(&lb_sctp, &sk, &fk, BPF_ANY);
		}
	}
}

/*
 * Source ports a flow is moved to when its own is taken towards the endpoint: below
 * the kernel's ephemeral range (32768-60999), so the box's own connections to an
 * endpoint never meet a translated flow.
 */
#define LB_SNAT_PORT_MIN 1024
#define LB_SNAT_PORT_SPAN 31744
#define LB_SNAT_TRIES 16

/* How a new flow leaves the box: the source the endpoint sees, and the mode. */
struct ct_plan {
	__u32 saddr[4];		/* the source the endpoint sees (the client's without SNAT) */
	__u16 sport;		/* out: the source port the endpoint sees */
	__u16 nat_port;		/* the endpoint's port */
	__u8 snat;		/* rewrite the source address (onearm, fullnat, hairpin) */
	__u8 mode;		/* enum lb_mode */
	__u8 family;		/* the endpoint's (fullnat may translate between IPv4 and IPv6) */
	__u8 pad[3];
};


/* The reply entry in the way is this same flow again (a reconnect with the same tuple). */
static __always_inline int ct_same_flow(const struct lb_ct *old, const struct lb_ct *v)
{
	__u32 d = 0;

	for (int i = 0; i < 4; i++)
		d |= (old->nat_addr[i] ^ v->nat_addr[i]) | (old->snat_addr[i] ^ v->snat_addr[i]);
	return old->dir == LB_CT_REPLY && old->nat_port == v->nat_port &&
	       old->snat_port == v->snat_port && !d;
}

/*
 * Claim the reply key (endpoint -> plan source) for this flow: the client's own
 * port when no source NAT is asked for and it is free, else a free port of the
 * SNAT range.  A key is free when absent, stale, or held by this same flow; the
 * BPF_NOEXIST insert makes two CPUs racing for one port pick different ones.
 * Returns 0 with the port in rk->dport, or -1 when none was free.
 */
static __always_inline int ct_claim(struct lb_ct_key *rk, struct lb_ct *v, const struct pkt *p,
				      __u8 snat, __u64 now)
{
	__u32 start = bpf_get_prandom_u32();

	for (int i = 0; i < LB_SNAT_TRIES; i++) {
		struct lb_ct *old;

		if (i == 0 && (!snat || !p->sport_p))
			rk->dport = p->t.sport;
		else if (!p->sport_p)
			return -1;	/* ICMP: the echo id is not translated */
		else
			rk->dport = bpf_htons(LB_SNAT_PORT_MIN + (start + i) % LB_SNAT_PORT_SPAN);
		if (!bpf_map_update_elem(&lb_ct, rk, v, BPF_NOEXIST))
			return 0;
		old = bpf_map_lookup_elem(&lb_ct, rk);
		if (old && (ct_stale(old, now) || ct_same_flow(old, v))) {
			bpf_map_update_elem(&lb_ct, rk, v, BPF_ANY);
			return 0;
		}
	}
	return -1;
}

/*
 * Create both conntrack entries of a new flow, reply entry first (none for dsr:
 * replies bypass the box).  plan->sport gets the source port the endpoint sees.
 * Returns 0, or -1 when no source port was free (the packet is dropped).
 */
static __noinline int ct_create(const struct pkt *p, const struct lb_backend *be, __u32 svc_id, __u64 now,
				struct ct_plan *plan)
{
	__u16 nat_port = plan->nat_port;
	struct lb_ct_key rk = {};
	__u16 sport = p->t.sport;
	__u32 zero = 0;
	struct lb_ct *vp = bpf_map_lookup_elem(&lb_ct_scratch, &zero);
	int moved;

	if (!vp)
		return -1;
	__builtin_memset(vp, 0, sizeof(*vp));

	__builtin_memcpy(vp->nat_addr, p->t.daddr, 16);
	vp->nat_port = p->t.dport;
	vp->dir = LB_CT_REPLY;
	vp->state = LB_CT_ACTIVE;
	vp->mode = plan->mode;
	if (p->t.proto == IPPROTO_TCP) {
		/* A stray RST/FIN of an unknown flow is forwarded but opens nothing. */
		if (p->tcp_flags & TCPF_RST)
			vp->state = LB_CT_CLOSED;
		else if (p->tcp_flags & TCPF_FIN)
			vp->state = LB_CT_FIN_WAIT;
		else if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			vp->state = LB_CT_SYN_SENT;
		else
			vp->state = LB_CT_ESTABLISHED;
	} else if (p->t.proto == IPPROTO_SCTP) {
		vp->state = LB_CT_SCTP_INIT;	/* only an INIT opens an association */
	}
	vp->svc_id = svc_id;
	vp->stat_id = be->stat_id;
	vp->timeout = p->timeout;
	vp->created_ns = now;
	vp->seen_ns = now;
	if (plan->mode != LB_MODE_DSR) {
		/* The reply entry translates back to the client's own address and port. */
		__builtin_memcpy(vp->snat_addr, p->t.saddr, 16);
		vp->snat_port = p->t.sport;
		__builtin_memcpy(rk.saddr, be->addr, 16);
		__builtin_memcpy(rk.daddr, plan->snat ? plan->saddr : p->t.saddr, 16);
		rk.sport = nat_port;
		rk.proto = p->t.proto;
		rk.family = plan->family;
		if (plan->family != p->t.family)
			vp->nat_family = p->t.family;
		if (ct_claim(&rk, vp, p, plan->snat, now))
			return -1;
		sport = rk.dport;
	}
	moved = plan->snat || sport != p->t.sport;
	plan->sport = sport;

	__builtin_memcpy(vp->nat_addr, be->addr, 16);
	vp->nat_port = nat_port;
	vp->dir = LB_CT_FORWARD;
	vp->nat_family = plan->family != p->t.family ? plan->family : 0;
	__builtin_memset(vp->snat_addr, 0, 16);
	vp->snat_port = 0;
	if (moved) {
		__builtin_memcpy(vp->snat_addr, plan->snat ? plan->saddr : p->t.saddr, 16);
		vp->snat_port = sport;
	}
	bpf_map_update_elem(&lb_ct, &p->t, vp, BPF_ANY);
	if (ct_open(vp->state))
		conns_add(be->stat_id, 1);
	return 0;
}

/*
 * SCTP multihoming: a packet of a path conntrack does not know (another client address,
 * or another VIP of the service) that carries the verification tag of a live
 * association gets an LB_CT_PATH entry to the association's endpoint, with the
 * association's source NAT, and -- when the endpoint sees the client's own addresses
 * (no source NAT) -- a reply entry for this client address, so the endpoint's packets to
 * it are translated back too.  The packet's VIP must be one of the association's
 * service.  Returns 0 or 1 (sctp_path_reply must add the reply entry) once the path's
 * entry is in lb_ct, -1 when no association matches.
 */
static __noinline int sctp_path(const struct pkt *p, __u64 now)
{
	struct lb_sctp_key sk = {};
	struct lb_ct_key *fk;
	struct lb_service *s;
	struct lb_ct *fwd, *v;
	__u32 svc_id, ok, other_client, zero = 0;

	sk.vtag = p->vtag;
	sk.sport = p->t.sport;
	sk.dport = p->t.dport;
	sk.family = p->t.family;
	fk = bpf_map_lookup_elem(&lb_sctp, &sk);
	if (!fk)
		return -1;
	other_client = (fk->saddr[0] ^ p->t.saddr[0]) | (fk->saddr[1] ^ p->t.saddr[1]) |
		       (fk->saddr[2] ^ p->t.saddr[2]) | (fk->saddr[3] ^ p->t.saddr[3]);
	fwd = bpf_map_lookup_elem(&lb_ct, fk);
	if (!fwd || fwd->dir == LB_CT_REPLY || ct_stale(fwd, now) || !ct_open(fwd->state))
		return -1;
	svc_id = fwd->svc_id;
	s = bpf_map_lookup_elem(&lb_conf, &svc_id);
	if (!s)
		return -1;
	ok = (s->key.addr[0] ^ p->t.daddr[0]) | (s->key.addr[1] ^ p->t.daddr[1]) |
	     (s->key.addr[2] ^ p->t.daddr[2]) | (s->key.addr[3] ^ p->t.daddr[3]);
	for (int i = 0; i < LB_MAX_SCTP_PEER_VIPS && ok; i++) {
		if (i < s->n_sctp_peer_vips && s->sctp_peer_family[i] == p->t.family)
			ok = (s->sctp_peer_vips[i][0] ^ p->t.daddr[0]) | (s->sctp_peer_vips[i][1] ^ p->t.daddr[1]) |
			     (s->sctp_peer_vips[i][2] ^ p->t.daddr[2]) | (s->sctp_peer_vips[i][3] ^ p->t.daddr[3]);
	}
	if (ok)
		return -1;	/* not a VIP of the association's service */
	/* The new entry is built in the per-CPU scratch value: struct lb_ct is too big for the stack. */
	v = bpf_map_lookup_elem(&lb_ct_scratch, &zero);
	if (!v)
		return -1;
	__builtin_memcpy(v, fwd, sizeof(*v));
	v->dir = LB_CT_PATH;
	v->created_ns = now;
	v->seen_ns = now;
	if (bpf_map_update_elem(&lb_ct, &p->t, v, BPF_ANY))
		return -1;
	stat_inc(LB_STAT_SCTP_PATH);
	/* 1: the endpoint sees this new client address itself (no source NAT) */
	return !(v->snat_addr[0] | v->snat_addr[1] | v->snat_addr[2] | v->snat_addr[3]) && other_client;
}

/* The reply entry of a path sctp_path made for another client address (a frame of its own). */
static __noinline void sctp_path_reply(const struct pkt *p)
{
	struct lb_ct_key rk = {};
	struct lb_ct *fwd, *v;
	__u32 zero = 0;

	fwd = bpf_map_lookup_elem(&lb_ct, &p->t);
	v = bpf_map_lookup_elem(&lb_ct_scratch, &zero);
	if (!fwd || !v)
		return;
	__builtin_memcpy(v, fwd, sizeof(*v));
	__builtin_memcpy(rk.saddr, v->nat_addr, 16);
	__builtin_memcpy(rk.daddr, p->t.saddr, 16);
	rk.sport = v->nat_port;
	rk.dport = p->t.sport;
	rk.proto = p->t.proto;
	rk.family = p->t.family;
	__builtin_memcpy(v->nat_addr, p->t.daddr, 16);
	v->nat_port = p->t.dport;
	v->dir = LB_CT_REPLY;
	__builtin_memcpy(v->snat_addr, p->t.saddr, 16);
	v->snat_port = p->t.sport;
	v->nat_family = 0;
	bpf_map_update_elem(&lb_ct, &rk, v, BPF_NOEXIST);
}

#endif /* __LB_CONNTRACK_H */
