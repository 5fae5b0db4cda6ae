// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * lb_kern.c - the lbctl L4 load balancer datapath.
 *
 * One body of code (lb_process) with two thin entry points: tc clsact ingress
 * (lb_tc, the default) and XDP (lb_xdp).  For IPv4 and IPv6, TCP, UDP and ICMP
 * echo it: parses with bounds checks and passes anything it does not own;
 * finds the flow in conntrack or the service by (VIP, port, protocol), port
 * ranges included; picks an endpoint (rr, hash, persist, lc, maglev,
 * priority); translates as the service's mode says (DNAT, hairpin and onearm/
 * fullnat source NAT, NAT64, L2 and IP-in-IP DSR) with incremental checksum
 * updates; reverse-NATs replies;
 * forwards with bpf_fib_lookup + bpf_redirect_neigh (tc) or bpf_redirect (XDP)
 * and leaves the packet to the kernel when the route or neighbour is unknown.
 *
 * All maps are pinned by name so flows and counters outlive the control plane.
 *
 * The concerns live in headers, included in dependency order: lb_maps.h (every
 * map), lb_parse.h (struct pkt, bounds-checked parsing), lb_counters.h,
 * lb_select.h (service lookup and endpoint selection), lb_conntrack.h and
 * lb_nat.h (rewrite, reply path, forwarding; lb_mtu.h: over the egress MTU),
 * lb_frag.h and lb_icmp.h (fragments and ICMP errors, reached only through
 * parse()'s LB_PARSE_SLOW), lb_addrset.h (the early exit for what is not ours).  This file holds only the flow of
 * a packet: conntrack first, else a new flow (where the service's mode is
 * dispatched), and the two entry points.
 */
#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"
#include "lb_firewall.h"
#include "lb_addrset.h"
#include "lb_select.h"
#include "lb_conntrack.h"
#include "lb_sctp.h"
#include "lb_nat.h"
#include "lb_expire.h"
#include "lb_frag.h"
#include "lb_icmp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A packet of no known flow: find its service, pick an endpoint, forward. */
static __always_inline enum verdict do_new(void *ctx, const int xdp, struct pkt *p, __u64 now)
{
	struct lb_backend be;
	struct ct_plan plan = {};
	struct lb_service *s;
	__u32 svc_id;
	__u16 nat_port;
	int sel;

	/* An echo reply to a VIP answers a ping of the box, not a client's flow. */
	if (p->echo_reply || !find_service(p, &svc_id)) {
		stat_inc(LB_STAT_PASS_NOT_OURS);
		return V_PASS;
	}
	s = bpf_map_lookup_elem(&lb_conf, &svc_id);
	if (!s || !(s->flags & LB_F_HAS_SERVICE)) {
		stat_inc(LB_STAT_PASS_NOT_OURS);
		return V_PASS;
	}
	/* A service that requires a firewall mark balances only packets a mark rule marked so. */
	if (s->fw_mark && p->mark != s->fw_mark) {
		stat_inc(LB_STAT_PASS_NOT_OURS);
		return V_PASS;
	}
	if (!source_allowed(s, p)) {
		stat_inc(LB_STAT_DROP_SOURCE);
		count(&lb_svc_stats, svc_id, p->len, 0, 0, 1);
		return V_DROP;
	}
	/* SCTP: only an INIT starts an association; other chunks may open a path of one. */
	if (p->t.proto == IPPROTO_SCTP && p->chunk != SCTP_CID_INIT)
		return sctp_join(ctx, xdp, p, now);
	/* Mid-stream TCP of no live flow: never balanced; the kernel answers RST (lb_expire.h). */
	if (!tcp_opens(p)) {
		stat_inc(LB_STAT_PASS_NO_FLOW);
		return V_PASS;
	}
	sel = select_backend(svc_id, s, p, &be);
	if (sel < 0 || (be.family != p->t.family && s->mode != LB_MODE_FULLNAT))
		return no_backend(svc_id, p, s->no_backend);
	if (sel == 1)
		persist_put(svc_id, p, &be);
	nat_port = be.port && p->dport_p ? be.port : p->t.dport;
	p->timeout = s->session_timeout;
	plan.nat_port = nat_port;
	/* The one place a service's forwarding mode is dispatched: nat_plan
	 * (lb_nat.h) decides the source the endpoint sees (onearm, fullnat,
	 * hairpin) or direct server return, ct_create records it with a source
	 * port no other flow to that endpoint holds, and established flows
	 * follow what their conntrack entry recorded here. */
	switch (s->mode) {
	case LB_MODE_DEFAULT:
	case LB_MODE_ONEARM:
	case LB_MODE_FULLNAT:
	case LB_MODE_DSR:
	default:
		if (nat_plan(ctx, p, s, &be, &plan) || ct_create(p, &be, svc_id, now, &plan)) {
			stat_inc(LB_STAT_DROP_NO_SNAT);
			count(&lb_svc_stats, svc_id, p->len, 0, 0, 1);
			return V_DROP;
		}
	}
	stat_inc(LB_STAT_NEW_FLOW);
	stat_inc(LB_STAT_FORWARD);
	count(&lb_svc_stats, svc_id, p->len, 0, 1, 0);
	count(&lb_be_stats, be.stat_id, p->len, 0, 1, 0);
	return new_fwd(ctx, xdp, p, &plan, be.addr, nat_port);
}

static __noinline enum verdict do_new_tc(void *ctx, struct pkt *p, __u64 now)
{
	return do_new(ctx, 0, p, now);
}

static __noinline enum verdict do_new_xdp(void *ctx, struct pkt *p, __u64 now)
{
	return do_new(ctx, 1, p, now);
}

/* The one body of both hooks. */
static __always_inline enum verdict lb_process(void *ctx, const int xdp, __u32 len, __u32 ifindex,
					       __u32 *mark)
{
	struct pkt p = {};
	struct lb_ct *ct;
	__u64 now;
	int why;

	stat_inc(LB_STAT_PACKETS);
	why = parse(ctx, xdp, &p);
	p.len = len;
	p.ifindex = ifindex;
	LB_STOP(1, V_PASS);
	now = ct_now();
	/* The firewall sees every packet with an IP header as received (before any NAT). */
	if (p.t.family) {
		int fv = xdp ? firewall_xdp(ctx, &p, now) : firewall_tc(ctx, &p, now);

		*mark = p.mark;
		if (fv == FW_DROP)
			return V_DROP;
		if (fv == FW_TRAP)
			return V_PASS;
	}
	LB_STOP(2, V_PASS);
	if (why) {
		if (why != LB_PARSE_SLOW) {
			stat_inc(why);
			return V_PASS;
		}
		/* ICMP errors (lb_icmp.h), off the fast path. */
		if (p.icmp_err)
			return xdp ? icmp_error_xdp(ctx, &p, now) : icmp_error_tc(ctx, &p, now);
	}
	/* Neither to a VIP nor from an endpoint: the kernel's (lb_addrset.h). */
	if (addrset_miss(&p)) {
		stat_inc(LB_STAT_PASS_NOT_OURS);
		return V_PASS;
	}
	/* Fragments (lb_frag.h), off the fast path too. */
	if (why && frag_follow(&p, now))
		return V_PASS;

	ct = bpf_map_lookup_elem(&lb_ct, &p.t);
	LB_STOP(3, V_PASS);
	if (ct && ct_stale(ct, now)) {
		/* Stale: forget it so it never captures an unrelated flow (pitfall 13).
		 * Its connection count goes once: the entry stays in the map (and is
		 * met again) when no new flow replaces it, e.g. a source now refused. */
		if (ct->dir == LB_CT_FORWARD && ct_open(ct->state)) {
			conns_add(ct->stat_id, -1);
			ct->state = LB_CT_CLOSED;
		}
		ct = 0;
	}
	if (ct && p.ttl <= 1) {
		stat_inc(LB_STAT_PASS_TTL);
		return V_PASS;
	}
	if (ct && ct->dir == LB_CT_REPLY) {
		ct_seq_note(ctx, xdp, ct, &p);
		return sctp_done(ctx, xdp, &p, do_reply(ctx, xdp, &p, ct, now));
	}
	if (ct && p.t.proto == IPPROTO_TCP && ct->state >= LB_CT_FIN_WAIT &&
	    (p.tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
		ct = 0;	/* a new connection reusing the tuple: select again */
	if (ct && p.t.proto == IPPROTO_SCTP && p.chunk == SCTP_CID_INIT && (ct_closing(ct->state) || ct->dir == LB_CT_PATH))
		ct = 0;	/* a new association (or a restart) on the tuple: select again */
	if (ct) {
		if (now - ct->seen_ns > NSEC_PER_SEC / 4)
			ct->seen_ns = now;
		ct_track(ct, &p);
		ct_seq_note(ctx, xdp, ct, &p);
		stat_inc(LB_STAT_FORWARD);
		count(&lb_svc_stats, ct->svc_id, len, 0, 0, 0);
		count(&lb_be_stats, ct->stat_id, len, 0, 0, 0);
		LB_STOP(4, V_PASS);
		return sctp_done(ctx, xdp, &p, ct_fwd(ctx, xdp, &p, ct));
	}
	if (p.frag == LB_FRAG_LATER) {
		/* No ports: a later fragment never starts a flow. */
		stat_inc(LB_STAT_PASS_FRAGMENT);
		return V_PASS;
	}
	if (p.ttl <= 1) {
		/* Leave it to the kernel (it owns ICMP time exceeded). */
		stat_inc(LB_STAT_PASS_TTL);
		return V_PASS;
	}
	if (xdp)
		return sctp_done(ctx, xdp, &p, do_new_xdp(ctx, &p, now));
	return sctp_done(ctx, xdp, &p, do_new_tc(ctx, &p, now));
}

SEC("tc")
int lb_tc(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;
	enum verdict v;

	/* Make the headers we parse linear (they nearly always are). */
	if (linear < 128 && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
	__u32 mark = 0;

	v = lb_process(skb, 0, skb->len, skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex, &mark);
	if (v == V_REDIRECT)
		return TC_ACT_REDIRECT;
	if (v == V_TOO_BIG)
		return too_big_tc(skb);
	return v == V_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("xdp")
int lb_xdp(struct xdp_md *xdp)
{
	__u32 mark = 0;
	enum verdict v;

	v = lb_process(xdp, 1, xdp->data_end - xdp->data, xdp->ingress_ifindex, &mark);
	/* A firewall mark travels as 4 bytes of metadata (a tc program can copy it to skb->mark). */
	if (mark && v != V_DROP && bpf_xdp_adjust_meta(xdp, -(int)sizeof(mark)) == 0) {
		void *meta = (void *)(long)xdp->data_meta;

		if (meta + sizeof(mark) <= (void *)(long)xdp->data)
			*(__u32 *)meta = mark;
	}
	if (v == V_REDIRECT)
		return XDP_REDIRECT;
	return v == V_DROP ? XDP_DROP : XDP_PASS;
}
