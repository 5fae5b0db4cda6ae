/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_select.h - selection: the service of a new packet, allowed sources, and the endpoint
 * each algorithm (rr, hash, persist, lc, maglev, priority) picks, and what a new flow
 * meets when its service has no endpoint left.
 *
 * priority is loxilb's: the weights are shares of new flows, spread deterministically
 * (the weighted table walked by the service's round-robin position, as rr), so 80/20
 * over 32 new flows is 26/6 whatever the clients' ports.  Active/standby is not a
 * selection: backup endpoints (control plane) enter the list only while no primary is
 * healthy.
 */
#ifndef __LB_SELECT_H
#define __LB_SELECT_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"

#define NSEC_PER_SEC 1000000000ULL

static __always_inline __u32 rotl(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	v *= 0xcc9e2d51;
	v = rotl(v, 15);
	v *= 0x1b873593;
	h ^= v;
	h = rotl(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 hash_src(const struct lb_ct_key *t)
{
	__u32 h = 0x4c42;

	h = mix(h, t->saddr[0]);
	h = mix(h, t->saddr[1]);
	h = mix(h, t->saddr[2]);
	h = mix(h, t->saddr[3]);
	return fmix(h);
}

static __always_inline __u32 hash_tuple(const struct lb_ct_key *t)
{
	__u32 h = 0x4c42;

	h = mix(h, t->saddr[0]);
	h = mix(h, t->saddr[1]);
	h = mix(h, t->saddr[2]);
	h = mix(h, t->saddr[3]);
	h = mix(h, t->daddr[0]);
	h = mix(h, t->daddr[1]);
	h = mix(h, t->daddr[2]);
	h = mix(h, t->daddr[3]);
	h = mix(h, ((__u32)t->sport << 16) | t->dport);
	h = mix(h, t->proto);
	return fmix(h);
}

/* The service a new packet belongs to: exact port first, then port ranges. */
static __noinline int find_service(const struct pkt *p, __u32 *svc_id)
{
	struct lb_svc_key sk = {};
	struct lb_range_key rk = {};
	struct lb_range_list *rl;
	__u32 *id;
	__u16 port;

	__builtin_memcpy(sk.addr, p->t.daddr, 16);
	sk.port = p->t.dport;
	sk.proto = p->t.proto;
	sk.family = p->t.family;
	if (p->t.proto == IPPROTO_ICMP)
		sk.port = 0;
	id = bpf_map_lookup_elem(&lb_svc, &sk);
	if (id) {
		*svc_id = *id;
		return 1;
	}
	if (p->t.proto == IPPROTO_ICMP)
		return 0;
	__builtin_memcpy(rk.addr, p->t.daddr, 16);
	rk.proto = p->t.proto;
	rk.family = p->t.family;
	rl = bpf_map_lookup_elem(&lb_range, &rk);
	if (!rl)
		return 0;
	port = bpf_ntohs(p->t.dport);
	for (int i = 0; i < LB_MAX_RANGES; i++) {
		if (i >= rl->count)
			break;
		if (port >= rl->r[i].start && port <= rl->r[i].end) {
			*svc_id = rl->r[i].svc_id;
			return 1;
		}
	}
	return 0;
}

static __always_inline int source_allowed(const struct lb_service *s, const struct pkt *p)
{
	if (s->n_allowed == 0)
		return 1;
	for (int i = 0; i < LB_MAX_ALLOWED_SOURCES; i++) {
		const struct lb_cidr *c = &s->allowed[i];

		if (i >= s->n_allowed)
			break;
		if (c->family != p->t.family)
			continue;
		if ((p->t.saddr[0] & c->mask[0]) == c->addr[0] &&
		    (p->t.saddr[1] & c->mask[1]) == c->addr[1] &&
		    (p->t.saddr[2] & c->mask[2]) == c->addr[2] &&
		    (p->t.saddr[3] & c->mask[3]) == c->addr[3])
			return 1;
	}
	return 0;
}

/* Least connections, honouring weights: minimise conns / weight (bpf_loop body). */
struct lc_ctx {
	const struct lb_backend_list *l;
	__u64 best_c;
	__u64 best_w;
	int best;
};

static long lc_step(__u32 i, void *data)
{
	struct lc_ctx *c = data;
	const struct lb_backend *b;
	__u64 *conns, n;
	__u32 sid, w;

	if (i >= LB_MAX_ENDPOINTS)
		return 1;
	b = &c->l->be[i];
	w = b->weight;
	if (w == 0)
		return 0;
	sid = b->stat_id;
	conns = bpf_map_lookup_elem(&lb_be_conns, &sid);
	n = conns ? *conns : 0;
	if (c->best < 0 || n * c->best_w < c->best_c * w) {
		c->best = i;
		c->best_c = n;
		c->best_w = w;
	}
	return 0;
}

static __noinline int select_lc(const struct lb_backend_list *l, __u32 count)
{
	struct lc_ctx c = { .l = l, .best = -1 };

	bpf_loop(count, lc_step, &c, 0);
	return c.best;
}

/* Persist: the endpoint this source used recently, if any. */
static __noinline int persist_get(__u32 svc_id, __u32 timeout, const struct pkt *p, struct lb_backend *out)
{
	struct lb_persist_key pk = { .svc_id = svc_id, .family = p->t.family };
	struct lb_persist *pv;
	__u64 now;

	__builtin_memcpy(pk.saddr, p->t.saddr, 16);
	pv = bpf_map_lookup_elem(&lb_persist, &pk);
	if (!pv)
		return -1;
	now = bpf_ktime_get_ns();
	if (now - pv->seen_ns >= (__u64)timeout * NSEC_PER_SEC)
		return -1;
	pv->seen_ns = now;
	*out = pv->be;
	return 0;
}

/* Is the endpoint a source is bound to still taking new flows (in the list, weight > 0)?
 * An endpoint drained, down (health probes) or a backup on standby keeps weight 0. */
struct usable_ctx {
	const struct lb_backend_list *l;
	const struct lb_backend *be;
	int ok;
};

static long usable_step(__u32 i, void *data)
{
	struct usable_ctx *c = data;
	const struct lb_backend *b;

	if (i >= LB_MAX_ENDPOINTS)
		return 1;
	b = &c->l->be[i];
	if (b->stat_id != c->be->stat_id || b->port != c->be->port || b->addr[0] != c->be->addr[0] ||
	    b->addr[1] != c->be->addr[1] || b->addr[2] != c->be->addr[2] || b->addr[3] != c->be->addr[3])
		return 0;
	c->ok = b->weight > 0;
	return 1;
}

static __noinline int persist_usable(const struct lb_backend_list *l, __u32 count, const struct lb_backend *be)
{
	struct usable_ctx c = { .l = l, .be = be, .ok = 0 };

	bpf_loop(count, usable_step, &c, 0);
	return c.ok;
}

static __noinline void persist_put(__u32 svc_id, const struct pkt *p, const struct lb_backend *be)
{
	struct lb_persist_key pk = { .svc_id = svc_id, .family = p->t.family };
	struct lb_persist nv = { .be = *be, .seen_ns = bpf_ktime_get_ns() };

	__builtin_memcpy(pk.saddr, p->t.saddr, 16);
	bpf_map_update_elem(&lb_persist, &pk, &nv, BPF_ANY);
}

/* Pick an endpoint for a new flow of service s: 0, or 1 when persist chose anew (the caller
 * records it with persist_put); negative when there is none. */
static __noinline int select_backend(__u32 svc_id, const struct lb_service *s,
				     const struct pkt *p, struct lb_backend *out)
{
	struct lb_be_key bk = { .svc_id = svc_id, .slot = s->active & 1 };
	struct lb_backend_list *l;
	struct lb_sel_chunk *ch;
	struct lb_sel_key ck;
	__u32 count, idx, h;
	int bi;

	l = bpf_map_lookup_elem(&lb_backends, &bk);
	if (!l)
		return -1;
	count = l->count;
	if (count == 0 || count > LB_MAX_ENDPOINTS)
		return -1;
	if (s->selection == LB_SEL_PERSIST && persist_get(svc_id, s->persist_timeout, p, out) == 0 &&
	    persist_usable(l, count, out))
		return 0;
	if (s->selection == LB_SEL_LC) {
		bi = select_lc(l, count);
		if (bi < 0)
			return -1;
		goto found;
	}
	if (l->sel_len == 0)
		return -1;
	if (s->selection == LB_SEL_RR || s->selection == LB_SEL_PRIORITY) {
		__u32 *pos = bpf_map_lookup_elem(&lb_rr, &svc_id);

		if (!pos)
			return -1;
		/* Atomic add (BPF_XADD; its fetching form needs -mcpu=v3, whose
		 * codegen this program does not pass the verifier with), then read:
		 * two new flows racing on two CPUs may share a pick, nothing worse. */
		__sync_fetch_and_add(pos, 1);
		h = *pos - 1;
	} else if (s->selection == LB_SEL_PERSIST) {
		h = hash_src(&p->t);
	} else {
		h = hash_tuple(&p->t);
	}
	idx = h % l->sel_len;
	ck.svc_id = svc_id;
	ck.slot = bk.slot;
	ck.chunk = idx / LB_SEL_CHUNK;
	ch = bpf_map_lookup_elem(&lb_sel, &ck);
	if (!ch)
		return -1;
	bi = ch->idx[idx % LB_SEL_CHUNK];
	if (bi >= count)
		return -1;
found:
	bi &= LB_MAX_ENDPOINTS - 1;
	*out = l->be[bi];
	/* The caller records a new persist choice (persist_put): one call frame less deep
	 * here, where the BPF stack (512 bytes over all frames) is tightest. */
	return s->selection == LB_SEL_PERSIST ? 1 : 0;
}

/*
 * A new flow of a service with no endpoint to take it (none configured, or every one
 * down after its health probes): refused at once rather than black-holed.  The VIP is a
 * local address of the box (lbctl's VIP interface), so the packet is passed to the
 * kernel, which answers a TCP SYN with a RST and a UDP datagram with ICMP port
 * unreachable, as for any closed port (a local listener on the VIP's port would take it).
 * A service with noEndpoints: drop (lb_service.no_backend) drops it instead.
 */
static __always_inline enum verdict no_backend(__u32 svc_id, const struct pkt *p, __u8 how)
{
	stat_inc(LB_STAT_DROP_NO_BACKEND);
	count(&lb_svc_stats, svc_id, p->len, 0, 0, 1);
	return how == LB_NB_DROP ? V_DROP : V_PASS;
}

#endif /* __LB_SELECT_H */
