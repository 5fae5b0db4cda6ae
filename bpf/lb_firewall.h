/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_firewall.h - the firewall: FirewallRules classified by bitmap intersection, before
 * conntrack and the service lookup, on every packet with an IP header.
 *
 * Each match field is one lookup that yields the set of rules admitting the packet's
 * value (CIDRs: one LPM trie lookup per address; ports: port -> interval -> set;
 * protocol and interface: direct).  Bits are ranks in evaluation order, so the first
 * bit set in the AND of the sets is the rule that applies.  Fields no rule restricts
 * are not looked up; a missing entry means no rule matches; every set carries the
 * range of its non-zero words, so the AND runs only over the words all sets share
 * (usually one).  Cost grows with the number of fields in use, not with the rules.
 */
#ifndef __LB_FIREWALL_H
#define __LB_FIREWALL_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

enum fw_verdict { FW_CONTINUE, FW_DROP, FW_TRAP };

/* Narrow [lo, hi) to the words of set s; 0 when the intersection is empty. */
static __always_inline int fw_narrow(const struct lb_fw_set *s, __u32 *lo, __u32 *hi)
{
	if (s->lo > *lo)
		*lo = s->lo;
	if (s->hi < *hi)
		*hi = s->hi;
	return *lo < *hi;
}

static __always_inline __u32 fw_lowbit(__u64 x)
{
	__u32 n = 0;

	if (!(x & 0xffffffffULL)) {
		n += 32;
		x >>= 32;
	}
	if (!(x & 0xffff)) {
		n += 16;
		x >>= 16;
	}
	if (!(x & 0xff)) {
		n += 8;
		x >>= 8;
	}
	if (!(x & 0xf)) {
		n += 4;
		x >>= 4;
	}
	if (!(x & 0x3)) {
		n += 2;
		x >>= 2;
	}
	if (!(x & 0x1))
		n += 1;
	return n;
}

static __always_inline const struct lb_fw_set *fw_cidr(__u32 slot, __u32 field, __u8 family,
							const __u32 *addr)
{
	struct lb_fw_cidr_key k = {};

	k.prefixlen = 24 + (family == 4 ? 32 : 128);
	k.slot = slot;
	k.field = field;
	k.family = family;
	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&lb_fw_cidr, &k);
}

static __always_inline const struct lb_fw_set *fw_port(__u32 slot, __u32 field, __u16 port)
{
	__u32 base = slot * 2 + field;
	__u32 k = (base << 11) + (port >> 5);
	struct lb_fw_port_chunk *c = bpf_map_lookup_elem(&lb_fw_port, &k);

	if (!c)
		return 0;
	k = base * LB_FW_MAX_INTERVALS + (c->id[port & (LB_FW_PORT_CHUNK - 1)] & (LB_FW_MAX_INTERVALS - 1));
	return bpf_map_lookup_elem(&lb_fw_portset, &k);
}

/*
 * The key in lb_fw_rules of the first rule matching tuple t (ports when has_ports)
 * arriving on ifindex; -1 when none does.  A global function: the verifier checks
 * it once, not once per path of its caller.
 */
__noinline long fw_classify(const struct lb_ct_key *t, __u32 ifindex, __u32 has_ports)
{
	const struct lb_fw_set *s[6] = {};
	struct lb_fw_conf *c;
	__u32 zero = 0, slot, fields, lo = 0, hi, n = 0;
	__u16 sport = 0, dport = 0;
	__u8 proto;

	if (!t)
		return -1;
	c = bpf_map_lookup_elem(&lb_fw_conf, &zero);
	if (!c)
		return -1;
	slot = c->active & 1;
	hi = c->slot[slot].words;
	if (!hi)
		return -1;
	if (hi > LB_FW_WORDS)
		hi = LB_FW_WORDS;
	fields = c->slot[slot].fields;
	if (has_ports) {
		sport = bpf_ntohs(t->sport);
		dport = bpf_ntohs(t->dport);
	}
	/* Cheap array lookups first: a set that empties the range ends the search. */
	if (fields & LB_FW_USES_PROTO) {
		__u32 k;

		proto = t->proto == IPPROTO_ICMPV6 ? IPPROTO_ICMP : t->proto;
		k = slot * 512 + (t->family == 6 ? 256 : 0) + proto;
		s[n] = bpf_map_lookup_elem(&lb_fw_proto, &k);
		if (!s[n] || !fw_narrow(s[n], &lo, &hi))
			return -1;
		n++;
	}
	if (fields & LB_FW_USES_DPORT) {
		s[n] = fw_port(slot, LB_FW_DPORT, dport);
		if (!s[n] || !fw_narrow(s[n], &lo, &hi))
			return -1;
		n++;
	}
	if (fields & LB_FW_USES_SPORT) {
		s[n] = fw_port(slot, LB_FW_SPORT, sport);
		if (!s[n] || !fw_narrow(s[n], &lo, &hi))
			return -1;
		n++;
	}
	if (fields & LB_FW_USES_IFACE) {
		struct lb_fw_iface_key k = { .ifindex = ifindex, .slot = slot };

		s[n] = bpf_map_lookup_elem(&lb_fw_iface, &k);
		if (!s[n]) {
			k.ifindex = 0;
			s[n] = bpf_map_lookup_elem(&lb_fw_iface, &k);
		}
		if (!s[n] || !fw_narrow(s[n], &lo, &hi))
			return -1;
		n++;
	}
	if (fields & LB_FW_USES_DST) {
		s[n] = fw_cidr(slot, LB_FW_DST, t->family, t->daddr);
		if (!s[n] || !fw_narrow(s[n], &lo, &hi))
			return -1;
		n++;
	}
	if (fields & LB_FW_USES_SRC) {
		s[n] = fw_cidr(slot, LB_FW_SRC, t->family, t->saddr);
		if (!s[n] || !fw_narrow(s[n], &lo, &hi))
			return -1;
		n++;
	}
	for (int i = 0; i < LB_FW_WORDS; i++) {
		__u32 w = (lo + i) & (LB_FW_WORDS - 1);
		__u64 acc = ~0ULL;

		if (lo + i >= hi)
			break;
		for (int f = 0; f < 6; f++) {
			if (f >= n)
				break;
			if (s[f])
				acc &= s[f]->bits[w];
		}
		if (acc)
			return slot * LB_FW_MAX_RULES + w * 64 + fw_lowbit(acc);
	}
	return -1;
}

/* Count a matched packet; 1 when its rateLimit rule lets it through. */
static __always_inline int fw_police(const struct lb_fw_rule *r, struct lb_fw_counters *c, __u64 now)
{
	struct lb_fw_rate *st = bpf_map_lookup_elem(&lb_fw_rate, &r->stat_id);
	__u64 tat;

	if (!st)
		return 1;
	now = bpf_ktime_get_ns();	/* the caller's clock is conntrack's coarse one */
	/* GCRA: a packet conforms unless the theoretical arrival time is more than
	 * the burst ahead of now.  Lock-free: concurrent CPUs may admit a packet or
	 * two beyond the burst, never fewer than the rate. */
	tat = st->tat_ns;
	if (tat < now) {
		tat = now;
		st->tat_ns = now;
	}
	if (tat - now > r->burst_ns) {
		if (c)
			c->limited += 1;
		stat_inc(LB_STAT_FW_RATE_DROP);
		return 0;
	}
	__sync_fetch_and_add(&st->tat_ns, r->interval_ns);
	return 1;
}

/* Run the firewall on p: what to do with it.  A mark rule sets p->mark (and skb->mark on tc). */
static __always_inline enum fw_verdict firewall(void *ctx, const int xdp, struct pkt *p, __u64 now)
{
	struct lb_fw_counters *c;
	struct lb_fw_rule *r;
	long key;
	__u32 k;

	key = fw_classify(&p->t, p->ifindex, p->sport_p != 0);
	if (key < 0)
		return FW_CONTINUE;
	k = key;
	r = bpf_map_lookup_elem(&lb_fw_rules, &k);
	if (!r)
		return FW_CONTINUE;
	c = bpf_map_lookup_elem(&lb_fw_stats, &r->stat_id);
	if (c) {
		c->packets += 1;
		c->bytes += p->len;
	}
	switch (r->action) {
	case LB_FW_DROP:
		stat_inc(LB_STAT_FW_DROP);
		return FW_DROP;
	case LB_FW_TRAP:
		stat_inc(LB_STAT_FW_TRAP);
		return FW_TRAP;
	case LB_FW_MARK:
		p->mark = r->mark;
		if (!xdp)
			((struct __sk_buff *)ctx)->mark = r->mark;
		return FW_CONTINUE;
	case LB_FW_RATELIMIT:
		return fw_police(r, c, now) ? FW_CONTINUE : FW_DROP;
	default:
		return FW_CONTINUE;
	}
}

/* Out of line, one copy per hook: keeps the verifier's state count of lb_process flat. */
static __noinline int firewall_tc(void *ctx, struct pkt *p, __u64 now)
{
	return firewall(ctx, 0, p, now);
}

static __noinline int firewall_xdp(void *ctx, struct pkt *p, __u64 now)
{
	return firewall(ctx, 1, p, now);
}

#endif /* __LB_FIREWALL_H */
