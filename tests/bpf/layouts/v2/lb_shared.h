/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_shared.h - every map key and value of the lbctl datapath.
 *
 * This file is read by clang (bpf/lb_kern.c) and by cffi (reconciler/drivers/
 * _libbpf.py, which strips the '#' lines and prepends typedefs for __u8..__u64).
 * Rules (DESIGN pitfalls 1-3): plain structs, no attributes, no #define for
 * anything Python needs (use enums), explicit pad fields that are always zero,
 * no implicit padding anywhere (a key with holes misses lookups silently).
 * Python checks sizes and member offsets against the object's BTF at load.
 *
 * Byte order: addresses and the ports in lookup keys / NAT fields are in
 * network order (as on the wire); counts, weights, timeouts and port ranges
 * are host order.  IPv4 addresses live in addr[0], addr[1..3] are zero.
 */
#ifndef LB_SHARED_H
#define LB_SHARED_H

#include <linux/types.h>

/* Map sizes and other limits (reconciler/limits.py must agree; a test checks). */
enum lb_limits {
	LB_MAX_SERVICES = 65536,
	LB_MAX_ENDPOINTS = 256,
	LB_MAX_BACKEND_STATS = 131072,
	LB_MAX_FLOWS = 262144,
	LB_MAX_PERSIST = 65536,
	LB_MAX_RANGES = 8,
	LB_MAX_ALLOWED_SOURCES = 16,
	LB_MAX_ATTACH = 64,
	LB_NAME_LEN = 64,
	LB_IFNAME_LEN = 16,
	LB_SEL_CHUNK = 512,
	LB_MAX_SEL_CHUNKS = 262144,
	LB_MAGLEV_MAX = 65521,
	LB_CT_CLOSING_TIMEOUT = 10,
};

/*
 * Layout version of the maps below: bump it with every change of a key or value
 * struct or of a map definition.  The driver compares the pinned maps' own BTF
 * with the object's field by field and migrates them live (reconciler/drivers/
 * bpf_migrate.py): add fields (old entries get zeros), never change the meaning
 * of one in place -- rename it, so the converter refuses instead of misreading.
 * v1: before this enum; v2: lb_ct keeps a source-NAT side (fullnat/onearm).
 */
enum lb_layout {
	LB_LAYOUT_VERSION = 2,
};

/* Endpoint selection algorithm of a service. */
enum lb_selection {
	LB_SEL_RR = 0,
	LB_SEL_HASH = 1,
	LB_SEL_PERSIST = 2,
	LB_SEL_LC = 3,
	LB_SEL_MAGLEV = 4,
	LB_SEL_PRIORITY = 5,
};

/* Forwarding mode of a service (only DEFAULT, i.e. DNAT, is implemented). */
enum lb_mode {
	LB_MODE_DEFAULT = 0,
	LB_MODE_ONEARM = 1,
	LB_MODE_FULLNAT = 2,
	LB_MODE_DSR = 3,
};

/* lb_service.flags */
enum lb_service_flags {
	LB_F_HAS_SERVICE = 1,
	LB_F_HAS_ENDPOINTS = 2,
};

/* What the selection table of a backend list holds. */
enum lb_sel_kind {
	LB_SELTAB_WEIGHTED = 0,
	LB_SELTAB_MAGLEV = 1,
};

/* Conntrack direction and state. */
enum lb_ct_dir {
	LB_CT_FORWARD = 0,
	LB_CT_REPLY = 1,
};

enum lb_ct_state {
	LB_CT_ACTIVE = 0,	/* non-TCP flow */
	LB_CT_SYN_SENT = 1,
	LB_CT_ESTABLISHED = 2,
	LB_CT_FIN_WAIT = 3,
	LB_CT_CLOSED = 4,
};

/* Hook of an attachment. */
enum lb_hook {
	LB_HOOK_TC = 1,
	LB_HOOK_XDP = 2,
};

/* Index of the global per-CPU counters (lb_stats). */
enum lb_stat {
	LB_STAT_PACKETS = 0,
	LB_STAT_PASS_NOT_IP = 1,
	LB_STAT_PASS_NOT_OURS = 2,
	LB_STAT_PASS_FRAGMENT = 3,
	LB_STAT_PASS_TRUNCATED = 4,
	LB_STAT_PASS_TTL = 5,
	LB_STAT_PASS_EXTHDR = 6,
	LB_STAT_FORWARD = 7,
	LB_STAT_REPLY = 8,
	LB_STAT_NEW_FLOW = 9,
	LB_STAT_REDIRECT = 10,
	LB_STAT_FIB_PASS = 11,
	LB_STAT_DROP_NO_BACKEND = 12,
	LB_STAT_DROP_SOURCE = 13,
	LB_STAT_MAX = 14,
};

/* lb_svc key: one (VIP, port, protocol); value: __u32 service id. */
struct lb_svc_key {
	__u32 addr[4];
	__u16 port;		/* network order; 0 for ICMP */
	__u8 proto;		/* IPPROTO_* (ICMP services use 1 for v4 and v6) */
	__u8 family;		/* 4 or 6 */
};

/* lb_range key: (VIP, protocol) of port-range services. */
struct lb_range_key {
	__u32 addr[4];
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct lb_range {
	__u16 start;		/* host order, inclusive */
	__u16 end;		/* host order, inclusive */
	__u32 svc_id;
};

struct lb_range_list {
	__u32 count;
	__u32 pad;
	struct lb_range r[LB_MAX_RANGES];
};

/* An allowed-source CIDR with its precomputed mask. */
struct lb_cidr {
	__u32 addr[4];		/* already masked */
	__u32 mask[4];
	__u8 prefixlen;
	__u8 family;
	__u8 pad[2];
};

/* lb_conf value (key: __u32 service id): a service and its bookkeeping. */
struct lb_service {
	struct lb_svc_key key;	/* port = first port of the range */
	__u16 port_end;		/* host order, inclusive */
	__u8 selection;		/* enum lb_selection */
	__u8 mode;		/* enum lb_mode */
	__u32 flags;		/* enum lb_service_flags */
	__u32 session_timeout;	/* seconds idle */
	__u32 persist_timeout;	/* seconds */
	__u32 active;		/* active backend slot, 0 or 1 */
	__u32 n_allowed;
	struct lb_cidr allowed[LB_MAX_ALLOWED_SOURCES];
	char name[LB_NAME_LEN];	/* Service resource name, NUL padded */
};

/* One endpoint. */
struct lb_backend {
	__u32 addr[4];
	__u16 port;		/* network order; 0 keeps the original port */
	__u8 family;
	__u8 pad;
	__u32 weight;
	__u32 stat_id;		/* index into lb_be_stats / lb_be_conns */
};

/* lb_backends key: (service id, slot); the inactive slot is written first. */
struct lb_be_key {
	__u32 svc_id;
	__u32 slot;
};

struct lb_backend_list {
	__u32 count;
	__u32 sel_len;		/* entries in the selection table */
	__u32 sel_kind;		/* enum lb_sel_kind */
	__u32 pad;
	struct lb_backend be[LB_MAX_ENDPOINTS];
};

/* lb_sel key: one chunk of a selection table (weighted or Maglev). */
struct lb_sel_key {
	__u32 svc_id;
	__u16 slot;
	__u16 chunk;
};

struct lb_sel_chunk {
	__u16 idx[LB_SEL_CHUNK];	/* indexes into lb_backend_list.be */
};

/* lb_ct key: the packet's own tuple (forward: client->VIP, reply: backend->client). */
struct lb_ct_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;		/* network order; ICMP echo request: id */
	__u16 dport;		/* network order; ICMP echo reply: id */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct lb_ct {
	__u32 nat_addr[4];	/* forward: backend; reply: VIP */
	__u16 nat_port;		/* forward: backend port; reply: VIP port */
	__u8 dir;		/* enum lb_ct_dir */
	__u8 state;		/* enum lb_ct_state */
	__u32 svc_id;
	__u32 stat_id;
	__u32 timeout;		/* seconds idle */
	__u64 created_ns;	/* CLOCK_MONOTONIC */
	__u64 seen_ns;
	__u32 snat_addr[4];	/* source NAT (fullnat/onearm); zero: none (layout v2) */
	__u16 snat_port;	/* network order */
	__u16 pad[3];
};

/* lb_persist key: (service, source address) for the persist selection. */
struct lb_persist_key {
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
	__u32 saddr[4];
};

struct lb_persist {
	struct lb_backend be;
	__u32 pad;
	__u64 seen_ns;
};

/* Per-CPU counters per service (lb_svc_stats) and per endpoint (lb_be_stats). */
struct lb_counters {
	__u64 packets;
	__u64 bytes;
	__u64 reply_packets;
	__u64 reply_bytes;
	__u64 new_flows;
	__u64 drops;
};

/* lb_attach: where the program is attached (bookkeeping for the driver). */
struct lb_attach_key {
	char ifname[LB_IFNAME_LEN];
};

struct lb_attach {
	__u32 ifindex;
	__u32 hook;		/* enum lb_hook */
	__u32 prog_id;
	__u32 pad;
};

#endif /* LB_SHARED_H */
