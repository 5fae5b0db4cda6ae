// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * lb_kern.c - the lbctl L4 load balancer datapath.
 *
 * One body of code (lb_process) with two thin entry points: tc clsact ingress
 * (lb_tc, the default) and XDP (lb_xdp).  For IPv4 and IPv6, TCP, UDP and ICMP
 * echo it: parses with bounds checks and passes anything it does not own;
 * finds the flow in conntrack or the service by (VIP, port, protocol), port
 * ranges included; picks an endpoint (rr, hash, persist, lc, maglev,
 * priority); DNATs with incremental checksum updates; reverse-NATs replies;
 * forwards with bpf_fib_lookup + bpf_redirect_neigh (tc) or bpf_redirect (XDP)
 * and leaves the packet to the kernel when the route or neighbour is unknown.
 *
 * All maps are pinned by name so flows and counters outlive the control plane.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb_shared.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define NSEC_PER_SEC 1000000000ULL
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define NEXTHDR_FRAGMENT 44
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/*
 * The ICMPv4 header, declared here: <linux/icmp.h> pulls in <linux/if.h> and
 * through it glibc's <sys/socket.h>, which a -target bpf build cannot use
 * (gnu/stubs-32.h).  The datapath builds from UAPI and libbpf headers only.
 */
struct lb_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 echo_id;
	__be16 echo_seq;
};
#define ICMPV6_ECHO_REQ 128
#define ICMPV6_ECHO_REP 129

/* Service lookup: (VIP, port, protocol) -> service id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_svc_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_svc SEC(".maps");

/* Port-range services per (VIP, protocol), searched when lb_svc misses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_range_key);
	__type(value, struct lb_range_list);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_range SEC(".maps");

/* Service configuration by id; replaced whole (RCU) so readers never see a torn value. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_conf SEC(".maps");

/* Endpoint lists, two slots per service; lb_service.active names the live one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * LB_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_be_key);
	__type(value, struct lb_backend_list);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_backends SEC(".maps");

/* Selection tables (weighted or Maglev) in chunks, per service and slot. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SEL_CHUNKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_sel_key);
	__type(value, struct lb_sel_chunk);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_sel SEC(".maps");

/* Conntrack: one entry per direction of every flow, least recently used evicted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_FLOWS);
	__type(key, struct lb_ct_key);
	__type(value, struct lb_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_ct SEC(".maps");

/* Source affinity of persist services. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_PERSIST);
	__type(key, struct lb_persist_key);
	__type(value, struct lb_persist);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_persist SEC(".maps");

/* Per-CPU counters per service id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct lb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_svc_stats SEC(".maps");

/* Per-CPU counters per endpoint stat id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_BACKEND_STATS);
	__type(key, __u32);
	__type(value, struct lb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_be_stats SEC(".maps");

/* Open connections per endpoint stat id, for least-connection selection. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKEND_STATS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_be_conns SEC(".maps");

/* Round-robin position per service, shared by all CPUs (atomic add), so
 * consecutive new flows go to consecutive endpoints whichever CPU they hit
 * (a per-CPU position gave runs like a,a,b,b,c,c on two CPUs). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_rr SEC(".maps");

/* Global per-CPU counters indexed by enum lb_stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_stats SEC(".maps");

/* Attachments made by the driver (never read by the datapath). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_ATTACH);
	__type(key, struct lb_attach_key);
	__type(value, struct lb_attach);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_attach SEC(".maps");

enum verdict { V_PASS, V_DROP, V_REDIRECT };

/* A parsed packet: tuple plus where its headers are. */
struct pkt {
	struct lb_ct_key t;
	void *l3;
	__u16 *csum;		/* L4 checksum field, NULL for ICMPv4 */
	__u32 csum_off;		/* its offset from the start of the packet */
	__u16 *sport_p;		/* port fields, NULL for ICMP */
	__u16 *dport_p;
	__u32 len;
	__u32 ifindex;
	__u32 timeout;		/* session timeout of a new flow */
	__u8 tcp_flags;
	__u8 ttl;
	__u8 echo_reply;	/* ICMP echo reply: only ever a reply, never a new flow */
};

enum { TCPF_FIN = 0x01, TCPF_SYN = 0x02, TCPF_RST = 0x04, TCPF_ACK = 0x10 };

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&lb_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline void count(void *map, __u32 id, __u32 len, int reply, int new_flow, int drop)
{
	struct lb_counters *c = bpf_map_lookup_elem(map, &id);

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

/* Ones' complement arithmetic on raw (network order) memory words. */
static __always_inline __u32 csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u32)s;
}

/* Sum of (~old + new) over n 32-bit words, folded to 16 bits. */
static __always_inline __u32 csum_diff_words(const __u32 *old, const __u32 *new, int n)
{
	__u64 s = 0;

	for (int i = 0; i < n; i++)
		s += (__u32)~old[i] + (__u64)new[i];
	return csum_fold64(s);
}

static __always_inline __u32 csum_diff16(__u16 old, __u16 new)
{
	return csum_fold64((__u16)~old + (__u64)new);
}

/* Apply a precomputed diff to a stored checksum (RFC 1624). */
static __always_inline __u16 csum_apply(__u16 sum, __u32 diff)
{
	return (__u16)~csum_fold64((__u16)~sum + (__u64)diff);
}

static __always_inline void *ctx_data(void *ctx, const int xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data;
	return (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *ctx_end(void *ctx, const int xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

/*
 * Parse Ethernet, IPv4/IPv6 and the L4 header.  Returns 0 when the packet is
 * one we may own, or the lb_stat index explaining why it is passed.
 */
static __always_inline int parse(void *ctx, const int xdp, struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *end = ctx_end(ctx, xdp);
	struct ethhdr *eth = data;
	__u32 l4off;
	void *l4;
	__u8 proto;

	if ((void *)(eth + 1) > end)
		return LB_STAT_PASS_TRUNCATED;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 hl;

		if ((void *)(ip + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		if (ip->version != 4 || ip->ihl < 5)
			return LB_STAT_PASS_NOT_IP;
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return LB_STAT_PASS_FRAGMENT;
		hl = ip->ihl * 4;
		l4 = (void *)ip + hl;
		l4off = ETH_HLEN + hl;
		proto = ip->protocol;
		p->t.family = 4;
		p->t.saddr[0] = ip->saddr;
		p->t.daddr[0] = ip->daddr;
		p->ttl = ip->ttl;
		p->l3 = ip;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		proto = ip6->nexthdr;
		if (proto == NEXTHDR_FRAGMENT)
			return LB_STAT_PASS_FRAGMENT;
		l4 = ip6 + 1;
		l4off = ETH_HLEN + sizeof(*ip6);
		p->t.family = 6;
		__builtin_memcpy(p->t.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->t.daddr, &ip6->daddr, 16);
		p->ttl = ip6->hop_limit;
		p->l3 = ip6;
	} else {
		return LB_STAT_PASS_NOT_IP;
	}

	p->t.proto = proto;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		p->t.sport = th->source;
		p->t.dport = th->dest;
		p->sport_p = &th->source;
		p->dport_p = &th->dest;
		p->csum = &th->check;
		p->csum_off = l4off + 16;
		p->tcp_flags = ((__u8 *)th)[13];
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		p->t.sport = uh->source;
		p->t.dport = uh->dest;
		p->sport_p = &uh->source;
		p->dport_p = &uh->dest;
		p->csum = &uh->check;
		p->csum_off = l4off + 6;
	} else if (proto == IPPROTO_ICMP && p->t.family == 4) {
		struct lb_icmphdr *ih = l4;

		if ((void *)(ih + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		if (ih->type == ICMP_ECHO)
			p->t.sport = ih->echo_id;
		else if (ih->type == ICMP_ECHOREPLY) {
			p->t.dport = ih->echo_id;
			p->echo_reply = 1;
		} else
			return LB_STAT_PASS_NOT_OURS;
		p->csum = 0;	/* the ICMPv4 checksum has no pseudo header */
	} else if (proto == IPPROTO_ICMPV6 && p->t.family == 6) {
		struct icmp6hdr *ih = l4;

		if ((void *)(ih + 1) > end)
			return LB_STAT_PASS_TRUNCATED;
		if (ih->icmp6_type == ICMPV6_ECHO_REQ)
			p->t.sport = ih->icmp6_dataun.u_echo.identifier;
		else if (ih->icmp6_type == ICMPV6_ECHO_REP) {
			p->t.dport = ih->icmp6_dataun.u_echo.identifier;
			p->echo_reply = 1;
		} else
			return LB_STAT_PASS_NOT_OURS;	/* NDP, errors, ... */
		p->t.proto = IPPROTO_ICMP;	/* one protocol number for echo services */
		p->csum = &ih->icmp6_cksum;
		p->csum_off = l4off + 2;
	} else if (p->t.family == 6) {
		return LB_STAT_PASS_EXTHDR;
	} else {
		return LB_STAT_PASS_NOT_OURS;
	}
	return 0;
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

static __noinline void persist_put(__u32 svc_id, const struct pkt *p, const struct lb_backend *be)
{
	struct lb_persist_key pk = { .svc_id = svc_id, .family = p->t.family };
	struct lb_persist nv = { .be = *be, .seen_ns = bpf_ktime_get_ns() };

	__builtin_memcpy(pk.saddr, p->t.saddr, 16);
	bpf_map_update_elem(&lb_persist, &pk, &nv, BPF_ANY);
}

/* Pick an endpoint for a new flow of service s; 0 on success. */
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
	if (s->selection == LB_SEL_PERSIST && persist_get(svc_id, s->persist_timeout, p, out) == 0)
		return 0;
	if (s->selection == LB_SEL_LC) {
		bi = select_lc(l, count);
		if (bi < 0)
			return -1;
		goto found;
	}
	if (l->sel_len == 0)
		return -1;
	if (s->selection == LB_SEL_RR) {
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
	if (s->selection == LB_SEL_PERSIST)
		persist_put(svc_id, p, out);
	return 0;
}

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

/*
 * Rewrite destination (forward) or source (reply) address and port, decrement
 * the TTL when we redirect, fix checksums, and forward.
 */
static __always_inline enum verdict nat_forward(void *ctx, const int xdp, struct pkt *p, int dst,
						const __u32 *addr, __u16 port)
{
	struct bpf_fib_lookup f = {};
	__u32 adiff, pdiff = 0, l3diff;
	__u16 oldport, ttlw_old, ttlw_new;
	int rc, redirect;

	f.family = p->t.family == 4 ? AF_INET : AF_INET6;
	f.l4_protocol = p->t.family == 6 && p->t.proto == IPPROTO_ICMP ? IPPROTO_ICMPV6 : p->t.proto;
	f.sport = p->t.sport;
	f.dport = p->t.dport;
	f.tot_len = 0;		/* pitfall 15: GSO packets would fail the MTU check */
	f.ifindex = p->ifindex;
	if (dst) {
		oldport = p->t.dport;
		if (p->dport_p)
			f.dport = port;
		adiff = csum_diff_words(p->t.daddr, addr, p->t.family == 4 ? 1 : 4);
	} else {
		oldport = p->t.sport;
		if (p->sport_p)
			f.sport = port;
		adiff = csum_diff_words(p->t.saddr, addr, p->t.family == 4 ? 1 : 4);
	}
	if (p->t.family == 4) {
		f.ipv4_src = dst ? p->t.saddr[0] : addr[0];
		f.ipv4_dst = dst ? addr[0] : p->t.daddr[0];
	} else {
		__builtin_memcpy(f.ipv6_src, dst ? p->t.saddr : addr, 16);
		__builtin_memcpy(f.ipv6_dst, dst ? addr : p->t.daddr, 16);
	}
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	if (xdp)
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS;
	else
		redirect = rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;

	/* Direct packet writes first; tc checksum helpers invalidate pointers. */
	if (p->t.family == 4) {
		struct iphdr *ip = p->l3;
		void *end = ctx_end(ctx, xdp);

		if ((void *)(ip + 1) > end)
			return V_PASS;
		if (dst)
			ip->daddr = addr[0];
		else
			ip->saddr = addr[0];
		l3diff = adiff;
		if (redirect) {
			ttlw_old = *(__u16 *)&ip->ttl;
			ip->ttl -= 1;
			ttlw_new = *(__u16 *)&ip->ttl;
			l3diff = csum_fold64((__u64)l3diff + csum_diff16(ttlw_old, ttlw_new));
		}
		if (xdp)
			ip->check = csum_apply(ip->check, l3diff);
	} else {
		struct ipv6hdr *ip6 = p->l3;
		void *end = ctx_end(ctx, xdp);

		if ((void *)(ip6 + 1) > end)
			return V_PASS;
		if (dst)
			__builtin_memcpy(&ip6->daddr, addr, 16);
		else
			__builtin_memcpy(&ip6->saddr, addr, 16);
		l3diff = 0;
		if (redirect)
			ip6->hop_limit -= 1;
	}
	/* An unchanged port costs nothing (no write, no second checksum helper call). */
	if (dst && p->dport_p && oldport != port) {
		void *end = ctx_end(ctx, xdp);

		if ((void *)(p->dport_p + 1) > end)
			return V_PASS;
		*p->dport_p = port;
		pdiff = csum_diff16(oldport, port);
	} else if (!dst && p->sport_p && oldport != port) {
		void *end = ctx_end(ctx, xdp);

		if ((void *)(p->sport_p + 1) > end)
			return V_PASS;
		*p->sport_p = port;
		pdiff = csum_diff16(oldport, port);
	}

	if (xdp) {
		if (p->csum) {
			void *end = ctx_end(ctx, xdp);
			__u16 *cs = p->csum;

			if ((void *)(cs + 1) > end)
				return V_PASS;
			if (!(p->t.proto == IPPROTO_UDP && *cs == 0)) {
				__u16 n = csum_apply(*cs, csum_fold64((__u64)adiff + pdiff));

				if (p->t.proto == IPPROTO_UDP && n == 0)
					n = 0xffff;
				*cs = n;
			}
		}
		if (redirect) {
			struct ethhdr *eth = ctx_data(ctx, xdp);

			if ((void *)(eth + 1) > ctx_end(ctx, xdp))
				return V_PASS;
			__builtin_memcpy(eth->h_dest, f.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, f.smac, ETH_ALEN);
			if (bpf_redirect(f.ifindex, 0) == XDP_REDIRECT) {
				stat_inc(LB_STAT_REDIRECT);
				return V_REDIRECT;
			}
		}
	} else {
		struct __sk_buff *skb = ctx;
		__u32 csum_off = p->csum ? p->csum_off : 0;
		__u64 mflag = p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

		if (p->t.family == 4)
			bpf_l3_csum_replace(skb, ETH_HLEN + 10, 0, l3diff, 0);
		if (csum_off) {
			bpf_l4_csum_replace(skb, csum_off, 0, adiff, BPF_F_PSEUDO_HDR | mflag);
			if (pdiff)
				bpf_l4_csum_replace(skb, csum_off, 0, pdiff, mflag);
		}
		if (redirect) {
			struct bpf_redir_neigh nh = {};

			if (p->t.family == 4) {
				nh.nh_family = AF_INET;
				nh.ipv4_nh = f.ipv4_dst;
			} else {
				nh.nh_family = AF_INET6;
				__builtin_memcpy(nh.ipv6_nh, f.ipv6_dst, 16);
			}
			if (bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0) == TC_ACT_REDIRECT) {
				stat_inc(LB_STAT_REDIRECT);
				return V_REDIRECT;
			}
		}
	}
	stat_inc(LB_STAT_FIB_PASS);
	return V_PASS;
}

/* Per-hook out-of-line copies keep each BPF stack frame small. */
static __noinline enum verdict nat_forward_tc(void *ctx, struct pkt *p, int dst, const __u32 *addr,
					      __u16 port)
{
	return nat_forward(ctx, 0, p, dst, addr, port);
}

static __noinline enum verdict nat_forward_xdp(void *ctx, struct pkt *p, int dst, const __u32 *addr,
					       __u16 port)
{
	return nat_forward(ctx, 1, p, dst, addr, port);
}

static __always_inline enum verdict nat_fwd(void *ctx, const int xdp, struct pkt *p, int dst,
					    const __u32 *addr, __u16 port)
{
	if (xdp)
		return nat_forward_xdp(ctx, p, dst, addr, port);
	return nat_forward_tc(ctx, p, dst, addr, port);
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

/* A reply from an endpoint: source back to the VIP. */
static __always_inline enum verdict do_reply(void *ctx, const int xdp, struct pkt *p, struct lb_ct *ct,
					     __u64 now)
{
	ct_close_reply(ct, p, now);
	stat_inc(LB_STAT_REPLY);
	count(&lb_svc_stats, ct->svc_id, p->len, 1, 0, 0);
	count(&lb_be_stats, ct->stat_id, p->len, 1, 0, 0);
	return nat_fwd(ctx, xdp, p, 0, ct->nat_addr, ct->nat_port);
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

/* A packet of no known flow: find its service, pick an endpoint, forward. */
static __always_inline enum verdict do_new(void *ctx, const int xdp, struct pkt *p, __u64 now)
{
	struct lb_backend be;
	struct lb_service *s;
	__u32 svc_id;
	__u16 nat_port;

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
	if (!source_allowed(s, p)) {
		stat_inc(LB_STAT_DROP_SOURCE);
		count(&lb_svc_stats, svc_id, p->len, 0, 0, 1);
		return V_DROP;
	}
	if (select_backend(svc_id, s, p, &be) || be.family != p->t.family) {
		stat_inc(LB_STAT_DROP_NO_BACKEND);
		count(&lb_svc_stats, svc_id, p->len, 0, 0, 1);
		return V_DROP;
	}
	nat_port = be.port && p->dport_p ? be.port : p->t.dport;
	p->timeout = s->session_timeout;
	ct_create(p, &be, nat_port, svc_id, now);
	stat_inc(LB_STAT_NEW_FLOW);
	stat_inc(LB_STAT_FORWARD);
	count(&lb_svc_stats, svc_id, p->len, 0, 1, 0);
	count(&lb_be_stats, be.stat_id, p->len, 0, 1, 0);
	return nat_fwd(ctx, xdp, p, 1, be.addr, nat_port);
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
static __always_inline enum verdict lb_process(void *ctx, const int xdp, __u32 len, __u32 ifindex)
{
	struct pkt p = {};
	struct lb_ct *ct;
	__u64 now;
	int why;

	stat_inc(LB_STAT_PACKETS);
	why = parse(ctx, xdp, &p);
	if (why) {
		stat_inc(why);
		return V_PASS;
	}
	p.len = len;
	p.ifindex = ifindex;
	now = bpf_ktime_get_ns();

	ct = bpf_map_lookup_elem(&lb_ct, &p.t);
	if (ct && now - ct->seen_ns > ct_timeout_ns(ct)) {
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
	if (ct && ct->dir == LB_CT_REPLY)
		return do_reply(ctx, xdp, &p, ct, now);
	if (ct && p.t.proto == IPPROTO_TCP && ct->state >= LB_CT_FIN_WAIT &&
	    (p.tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
		ct = 0;	/* a new connection reusing the tuple: select again */
	if (ct) {
		if (now - ct->seen_ns > NSEC_PER_SEC / 4)
			ct->seen_ns = now;
		ct_track(ct, &p);
		stat_inc(LB_STAT_FORWARD);
		count(&lb_svc_stats, ct->svc_id, len, 0, 0, 0);
		count(&lb_be_stats, ct->stat_id, len, 0, 0, 0);
		return nat_fwd(ctx, xdp, &p, 1, ct->nat_addr, ct->nat_port);
	}
	if (p.ttl <= 1) {
		/* Leave it to the kernel (it owns ICMP time exceeded). */
		stat_inc(LB_STAT_PASS_TTL);
		return V_PASS;
	}
	if (xdp)
		return do_new_xdp(ctx, &p, now);
	return do_new_tc(ctx, &p, now);
}

SEC("tc")
int lb_tc(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;
	enum verdict v;

	/* Make the headers we parse linear (they nearly always are). */
	if (linear < 128 && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
	v = lb_process(skb, 0, skb->len, skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex);
	if (v == V_REDIRECT)
		return TC_ACT_REDIRECT;
	return v == V_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("xdp")
int lb_xdp(struct xdp_md *xdp)
{
	enum verdict v;

	v = lb_process(xdp, 1, xdp->data_end - xdp->data, xdp->ingress_ifindex);
	if (v == V_REDIRECT)
		return XDP_REDIRECT;
	return v == V_DROP ? XDP_DROP : XDP_PASS;
}
