/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_expire.h - honest idle timeouts (issue 14).
 *
 * Three parts:
 * - tcp_opens(): a TCP segment of no live flow is balanced only when it is a
 *   connection-opening SYN; anything else goes to the kernel, where the VIP is a
 *   local address without a socket, so the kernel answers RST (seq = the segment's
 *   ack: exactly what the client accepts).  No mid-stream segment reaches an
 *   endpoint that never saw the handshake.
 * - ct_seq_note(): each conntrack entry keeps its sender's next sequence number and
 *   last acknowledgement (written only when they move forward), so the daemon can
 *   reset an idle flow with the sequence number each side expects (RFC 5961).
 * - lb_ct_expire: a BPF_PROG_TYPE_SYSCALL program the daemon runs (BPF_PROG_TEST_RUN)
 *   for each idle entry it finds: it decides with the datapath's own clock, closes
 *   the connection count atomically, removes both entries of the flow and hands
 *   them back (the daemon then sends the resets).
 */
#ifndef __LB_EXPIRE_H
#define __LB_EXPIRE_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"
#include "lb_conntrack.h"
#include "lb_nat.h"	/* addr_eq */

/* A packet that may open a flow: not TCP, or a SYN without ACK, RST or FIN. */
static __always_inline int tcp_opens(const struct pkt *p)
{
	return p->t.proto != IPPROTO_TCP ||
	       (p->tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST | TCPF_FIN)) == TCPF_SYN;
}

/* Note the TCP sender's next sequence number and acknowledgement in its entry. */
static __always_inline void ct_seq_note(void *ctx, const int xdp, struct lb_ct *ct, const struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *end = ctx_end(ctx, xdp);
	struct tcphdr *th;
	__u32 len, next, hl;
	__u8 f = p->tcp_flags, known;

	if (p->t.proto != IPPROTO_TCP || (f & TCPF_RST))
		return;
	if (p->t.family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end)
			return;
		hl = (ip->ihl & 0xf) * 4;
		th = (void *)ip + hl;
		len = bpf_ntohs(ip->tot_len);
		if (!len)	/* BIG TCP */
			len = p->len - ETH_HLEN;
		len = len > hl ? len - hl : 0;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end)
			return;
		th = (void *)(ip6 + 1);
		len = bpf_ntohs(ip6->payload_len);
		if (!len)
			len = p->len - ETH_HLEN - sizeof(*ip6);
	}
	if ((void *)(th + 1) > end)
		return;
	hl = th->doff * 4;
	len = len > hl ? len - hl : 0;
	next = bpf_ntohl(th->seq) + len + !!(f & TCPF_SYN) + !!(f & TCPF_FIN);
	known = ct->seq_known;
	if (!(known & LB_CT_SEQ_NEXT) || (__s32)(next - ct->seq_next) > 0) {
		ct->seq_next = next;
		known |= LB_CT_SEQ_NEXT;
	}
	if (f & TCPF_ACK) {
		__u32 ack = bpf_ntohl(th->ack_seq);

		if (!(known & LB_CT_SEQ_ACK) || (__s32)(ack - ct->ack_seq) > 0) {
			ct->ack_seq = ack;
			known |= LB_CT_SEQ_ACK;
		}
	}
	if (known != ct->seq_known)
		ct->seq_known = known;
}

/* The key of the other direction's entry of a flow (mirrors ct_create and ct_close_reply). */
static __always_inline void ct_other_key(const struct lb_ct_key *k, const struct lb_ct *ct, struct lb_ct_key *o)
{
	int snat = !!(ct->snat_addr[0] | ct->snat_addr[1] | ct->snat_addr[2] | ct->snat_addr[3]);

	if (ct->dir == LB_CT_FORWARD) {
		/* reply: endpoint -> the source the endpoint sees */
		__builtin_memcpy(o->saddr, ct->nat_addr, 16);
		__builtin_memcpy(o->daddr, snat ? ct->snat_addr : k->saddr, 16);
		o->sport = ct->nat_port;
		o->dport = snat ? ct->snat_port : k->sport;
	} else {
		/* forward: client -> VIP */
		__builtin_memcpy(o->saddr, snat ? ct->snat_addr : k->daddr, 16);
		__builtin_memcpy(o->daddr, ct->nat_addr, 16);
		o->sport = snat ? ct->snat_port : k->dport;
		o->dport = ct->nat_port;
	}
	o->proto = k->proto;
	o->family = ct->nat_family ? ct->nat_family : k->family;
}

/* The other entry found is this flow's (a reply key may be reused by another flow). */
static __always_inline int ct_pair(const struct lb_ct_key *k, const struct lb_ct *ct, const struct lb_ct_key *ok,
				   const struct lb_ct *o)
{
	if (o->dir == ct->dir)
		return 0;
	if (ct->dir == LB_CT_FORWARD)	/* the reply entry restores this flow's VIP and client */
		return o->nat_port == k->dport && o->snat_port == k->sport &&
		       addr_eq(o->nat_addr, k->daddr) && addr_eq(o->snat_addr, k->saddr);
	return ct->nat_port == ok->dport && ct->snat_port == ok->sport &&
	       addr_eq(ct->nat_addr, ok->daddr) && addr_eq(ct->snat_addr, ok->saddr);
}

SEC("syscall")
int lb_ct_expire(struct lb_ct_expire *x)
{
	/* Syscall programs may not read the coarse clock conntrack stamps with; the fine one
	 * is ahead of it by less than a tick, nothing next to timeouts of whole seconds. */
	__u64 now = bpf_ktime_get_ns();
	struct lb_ct_key k = {}, ok = {};
	struct lb_ct *ct, *o;

	__builtin_memcpy(&k, &x->key, sizeof(k));
	x->result = LB_EXPIRE_GONE;
	x->has_other = 0;
	ct = bpf_map_lookup_elem(&lb_ct, &k);
	if (!ct)
		return 0;
	x->result = LB_EXPIRE_KEPT;
	if (!ct_stale(ct, now))
		return 0;
	o = 0;
	if (ct->mode != LB_MODE_DSR || ct->dir == LB_CT_REPLY) {
		ct_other_key(&k, ct, &ok);
		o = bpf_map_lookup_elem(&lb_ct, &ok);
		if (o && !ct_pair(&k, ct, &ok, o))
			o = 0;
	}
	if (o && !ct_stale(o, now))
		return 0;	/* the flow's other direction is live */
	__builtin_memcpy(&x->entry, ct, sizeof(*ct));
	if (o) {
		__builtin_memcpy(&x->other, o, sizeof(*o));
		x->has_other = 1;
	}
	/* The flow's connection count closes once, as when the datapath meets a stale entry. */
	if (ct->dir == LB_CT_FORWARD && ct_open(ct->state)) {
		conns_add(ct->stat_id, -1);
		ct->state = LB_CT_CLOSED;
	} else if (o && o->dir == LB_CT_FORWARD && ct_open(o->state)) {
		conns_add(o->stat_id, -1);
		o->state = LB_CT_CLOSED;
	}
	if (o)
		bpf_map_delete_elem(&lb_ct, &ok);
	bpf_map_delete_elem(&lb_ct, &k);
	x->result = LB_EXPIRE_DONE;
	stat_inc(LB_STAT_CT_EXPIRED);
	return 0;
}

#endif /* __LB_EXPIRE_H */
