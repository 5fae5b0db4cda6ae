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
	LB_FW_MAX_RULES = 1024,
	LB_FW_WORDS = 16,		/* LB_FW_MAX_RULES / 64 */
	LB_FW_MAX_INTERVALS = 4096,	/* port intervals per (slot, field): at most 2 * rules + 1 */
	LB_FW_PORT_CHUNK = 32,		/* ports per lb_fw_port entry */
	LB_FW_MAX_PREFIXES = 8192,	/* lb_fw_cidr entries, both slots and fields */
	LB_FW_MAX_IFACES = 256,		/* lb_fw_iface entries, both slots */
	LB_MAX_FRAGS = 16384,		/* lb_frag: fragmented datagrams in flight (layout v4) */
	LB_FRAG_TIMEOUT = 30,		/* seconds a first fragment's decision is followed */
	LB_MAX_SCTP_PEER_VIPS = 3,	/* the other VIPs of a multihomed SCTP service (layout v4: sctp) */
	LB_MAX_SCTP_ASSOCS = 65536,	/* lb_sctp entries (layout v4: sctp) */
	/* lb_addrset (layout v4: addrset): a 2^LB_ADDRSET_LOG2-bit set of the VIPs and endpoint
	 * addresses, LB_ADDRSET_WORDS 64-bit words, then one more: LB_ADDRSET_ARMED */
	LB_ADDRSET_LOG2 = 20,
	LB_ADDRSET_WORDS = 16384,	/* 2^LB_ADDRSET_LOG2 / 64 */
	LB_ADDRSET_ARMED = 16384,	/* index of the word that is non-zero once the set is whole */
	LB_ADDRSET_MULT = 0x61C88647,	/* multiplicative hash of the folded address (2^32 / phi) */
	/* bit s set: state s is closing (short timeout, no longer counted as open; layout v4: sctp):
	 * FIN_WAIT, CLOSED, SCTP_SHUTDOWN, SCTP_SHUTDOWN_ACK, SCTP_SHUTDOWN_COMPLETE */
	LB_CT_CLOSING_STATES = 0xe18,
};

/*
 * Layout version of the maps below: bump it with every change of a key or value
 * struct or of a map definition.  The driver compares the pinned maps' own BTF
 * with the object's field by field and migrates them live (reconciler/drivers/
 * bpf_migrate.py): add fields (old entries get zeros), never change the meaning
 * of one in place -- rename it, so the converter refuses instead of misreading.
 * v1: before this enum; v2: lb_ct keeps a source-NAT side (fullnat/onearm);
 * v3: the firewall maps (lb_fw_*) and their global counters;
 * lb_service.snat_addr (fullnat source) and fw_mark, lb_ct.mode (dsr flows) and
 * lb_ct.nat_family (fullnat between IPv4 and IPv6);
 * v4: lb_ct keeps each direction's TCP sequence numbers (idle expiry resets);
 * lb_ct's next-hop cache (nh_*) and lb_nh_gen; the sizes of the maps whose
 * max_entries is a Datapath capacity (reconciler/drivers/bpf_capacity.py) are set by
 * the loader; the values in enum lb_limits are their defaults;
 * lb_frag (the endpoint decision of a fragmented datagram);
 * SCTP (lb_service.sctp_peer_vips, the lb_sctp map, the SCTP conntrack states);
 * lb_addrset (the early exit for packets neither to a VIP nor from an endpoint).
 */
enum lb_layout {
	LB_LAYOUT_VERSION = 4,
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

/* Forwarding mode of a service (lb_nat.h carries each one out). */
enum lb_mode {
	LB_MODE_DEFAULT = 0,
	LB_MODE_ONEARM = 1,
	LB_MODE_FULLNAT = 2,
	LB_MODE_DSR = 3,
};

/* lb_service.no_backend: what a new flow gets while the service has no endpoint up. */
enum lb_no_backend {
	LB_NB_REJECT = 0,	/* to the kernel: the closed port on the local VIP answers RST / unreachable */
	LB_NB_DROP = 1,		/* dropped: the client retries until it times out */
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
	LB_CT_PATH = 2,		/* forward entry of another path of an SCTP association (layout v4: sctp):
				 * forwards as LB_CT_FORWARD; the association is counted once, by its first */
};

enum lb_ct_state {
	LB_CT_ACTIVE = 0,	/* non-TCP flow */
	LB_CT_SYN_SENT = 1,
	LB_CT_ESTABLISHED = 2,
	LB_CT_FIN_WAIT = 3,
	LB_CT_CLOSED = 4,	/* also SCTP after an ABORT */
	/* SCTP associations (layout v4: sctp); closing ones are in LB_CT_CLOSING_STATES */
	LB_CT_SCTP_INIT = 5,
	LB_CT_SCTP_INIT_ACK = 6,
	LB_CT_SCTP_COOKIE_ECHO = 7,
	LB_CT_SCTP_ESTABLISHED = 8,	/* COOKIE-ACK seen */
	LB_CT_SCTP_SHUTDOWN = 9,
	LB_CT_SCTP_SHUTDOWN_ACK = 10,
	LB_CT_SCTP_SHUTDOWN_COMPLETE = 11,
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
	LB_STAT_PASS_FRAGMENT = 3,	/* a later fragment whose first fragment was not seen */
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
	LB_STAT_FW_DROP = 14,		/* firewall: action drop */
	LB_STAT_FW_TRAP = 15,		/* firewall: action trap (handed to the kernel) */
	LB_STAT_FW_RATE_DROP = 16,	/* firewall: over a rateLimit rule's rate */
	LB_STAT_DROP_NO_SNAT = 17,	/* source NAT without an address or a free port */
	LB_STAT_PASS_NO_FLOW = 18,	/* TCP segment other than an opening SYN of no live flow: the kernel answers RST */
	LB_STAT_CT_EXPIRED = 19,	/* conntrack entries past their idle timeout removed by lb_ct_expire */
	/* layout v4: fragments and ICMP errors */
	LB_STAT_FRAG_FIRST = 20,	/* first fragments of a datagram (decision recorded) */
	LB_STAT_FRAG_FOLLOW = 21,	/* later fragments that followed their first fragment */
	LB_STAT_ICMP_ERROR = 22,	/* ICMP/ICMPv6 errors about a flow, translated */
	LB_STAT_TOO_BIG = 23,		/* over the egress MTU: fragmentation needed / packet too big sent */
	LB_STAT_SCTP_ADDR_REWRITE = 24,	/* INIT/INIT-ACK address parameters rewritten (layout v4: sctp) */
	LB_STAT_SCTP_PATH = 25,		/* a new path of a known SCTP association mapped to it (layout v4) */
	LB_STAT_MAX = 26,
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
	__u32 snat_addr[4];	/* fullnat source; zero: the egress address (layout v3) */
	__u32 fw_mark;		/* balance only packets a firewall mark rule marked so; 0: all (v3) */
	__u8 no_backend;	/* enum lb_no_backend: a new flow while no endpoint is up (v3) */
	__u8 pad[3];
	/* layout v4: sctp */
	__u32 sctp_peer_vips[LB_MAX_SCTP_PEER_VIPS][4];	/* the service's other VIPs (SCTP multihoming) */
	__u8 sctp_peer_family[LB_MAX_SCTP_PEER_VIPS];	/* 4 or 6; 0: unused slot */
	__u8 n_sctp_peer_vips;
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

/*
 * Forward entries rewrite the destination to nat_* and, when snat_addr is set, the
 * source to snat_* (onearm, fullnat, hairpin, or a default-mode flow whose client
 * port was taken towards that endpoint).  Reply entries rewrite the source back to
 * nat_* (the VIP) and, when snat_addr is set, the destination back to snat_* (the
 * client).  The reply key (endpoint -> source seen by the endpoint) is unique per
 * flow: lb_conntrack.h allocates the source port so no two flows share it.
 */
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
	__u8 mode;		/* enum lb_mode of the flow (layout v3) */
	__u8 nat_family;	/* 4 or 6: nat_* and snat_* are of that family (NAT64/46); 0: the packet's */
	__u8 pad2[6];
	/* layout v4: idle expiry -- the TCP sequence numbers of this direction's sender (host
	 * order), written only when they move forward, so the daemon can reset an idle flow
	 * with the exact sequence number each side expects (RFC 5961) */
	__u32 seq_next;		/* the next sequence number it will send */
	__u32 ack_seq;		/* the last it acknowledged: its receive next */
	__u8 seq_known;		/* enum lb_ct_seq */
	__u8 pad3[7];
	/* layout v4: next-hop cache (lb_nexthop.h): where this direction's packets went last */
	__u32 nh_addr[4];	/* the next hop (gateway or the destination itself) */
	__u64 nh_at_ns;		/* when it was looked up (conntrack's clock); 0: never */
	__u32 nh_gen;		/* lb_nh_gen's generation then */
	__u32 nh_ifindex;	/* the interface it leaves by */
	__u8 nh_dmac[6];	/* MACs, valid when nh_flags has LB_NH_MACS */
	__u8 nh_smac[6];
	__u8 nh_flags;		/* enum lb_nh_flags */
	__u8 nh_pad[3];
};

/* lb_ct.seq_known: which of seq_next / ack_seq the datapath has seen (layout v4). */
enum lb_ct_seq {
	LB_CT_SEQ_NEXT = 1,
	LB_CT_SEQ_ACK = 2,
};

/* What lb_ct_expire did with the key it was given (layout v4: idle expiry). */
enum lb_expire_result {
	LB_EXPIRE_GONE = 0,	/* no such entry */
	LB_EXPIRE_KEPT = 1,	/* live: the entry, or the other direction of its flow, is not idle */
	LB_EXPIRE_DONE = 2,	/* removed (with its flow's other entry), connection count closed */
};

/*
 * The context of lb_ct_expire, a BPF_PROG_TYPE_SYSCALL program the daemon runs per
 * idle entry (layout v4: idle expiry): it decides with the datapath's own clock,
 * closes the connection count atomically and removes both entries of the flow.
 */
struct lb_ct_expire {
	struct lb_ct_key key;	/* in: a conntrack key */
	__u32 result;		/* out: enum lb_expire_result */
	__u32 has_other;	/* out: other holds the flow's other entry (removed too) */
	struct lb_ct entry;	/* out: the entry as it was */
	struct lb_ct other;	/* out */
};

/* lb_ct.nh_flags */
enum lb_nh_flags {
	LB_NH_MACS = 1,		/* nh_dmac/nh_smac hold the neighbour's and the interface's MAC */
};

/* lb_nh_gen (one entry): bumped by the control plane when routes or neighbours change. */
struct lb_nh_gen {
	__u32 gen;
	__u32 pad;
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

/*
 * lb_frag key: one fragmented datagram (layout v4: fragments).  Later fragments
 * carry no ports; the first fragment records its ports here and later ones look
 * their flow up in lb_ct with them, so every fragment gets the same translation.
 */
struct lb_frag_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 id;		/* IPv4: the 16-bit identification (network order); IPv6: the fragment header's */
	__u8 proto;		/* as in lb_ct_key (ICMPv6 echo: 1) */
	__u8 family;
	__u8 pad[2];
};

struct lb_frag {
	__u16 sport;		/* the first fragment's ports (lb_ct_key order and byte order) */
	__u16 dport;
	__u32 pad;
	__u64 seen_ns;		/* when the first fragment passed */
};

/*
 * lb_sctp (layout v4: sctp): the SCTP associations by the verification tag the client
 * puts in its packets (the endpoint's initiate tag, seen in the INIT-ACK) and the
 * ports; the value is the key of the association's forward conntrack entry.  A
 * packet of a path the conntrack does not know yet (client address x VIP) finds its
 * association here and gets an LB_CT_PATH entry to the same endpoint.
 */
struct lb_sctp_key {
	__u32 vtag;		/* as on the wire */
	__u16 sport;		/* the client's port, network order */
	__u16 dport;		/* the VIP's port, network order */
	__u8 family;
	__u8 pad[3];
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

/*
 * Firewall.  Rules are classified by bitmap intersection: every rule has a bit
 * (its rank in evaluation order: priority, then name), each match field maps a
 * packet's value to the set of rules that field admits, and the first bit set
 * in the AND of those sets is the rule that applies.  Every table exists twice
 * (slot 0 and 1); the control plane writes the inactive slot whole and then
 * flips lb_fw_conf.active, so a packet never sees a partial rule set.
 */
enum lb_fw_field {
	LB_FW_SRC = 0,		/* lb_fw_cidr.field */
	LB_FW_DST = 1,
	LB_FW_SPORT = 0,	/* lb_fw_port / lb_fw_portset field */
	LB_FW_DPORT = 1,
};

/* lb_fw_slot.fields: the match fields some rule of the slot restricts. */
enum lb_fw_uses {
	LB_FW_USES_SRC = 1,
	LB_FW_USES_DST = 2,
	LB_FW_USES_SPORT = 4,
	LB_FW_USES_DPORT = 8,
	LB_FW_USES_PROTO = 16,
	LB_FW_USES_IFACE = 32,
};

enum lb_fw_action {
	LB_FW_ALLOW = 0,
	LB_FW_DROP = 1,
	LB_FW_TRAP = 2,
	LB_FW_MARK = 3,
	LB_FW_RATELIMIT = 4,
};

/* A set of rules, bit i = rank i; words outside [lo, hi) are zero. */
struct lb_fw_set {
	__u32 lo;
	__u32 hi;
	__u64 bits[LB_FW_WORDS];
};

struct lb_fw_slot {
	__u32 words;		/* 64-bit words of the sets in use; 0: no rules */
	__u32 fields;		/* enum lb_fw_uses */
	__u32 count;		/* rules (ranks 0 .. count-1 of lb_fw_rules) */
	__u32 pad;
};

/* lb_fw_conf value (key 0). */
struct lb_fw_conf {
	__u32 active;		/* slot the datapath reads, 0 or 1 */
	__u32 gen;		/* flips so far (lets a writer trust what it wrote to a slot) */
	struct lb_fw_slot slot[2];
};

/* lb_fw_cidr key: an LPM trie over (slot, field, family, address). */
struct lb_fw_cidr_key {
	__u32 prefixlen;	/* 24 + the CIDR's prefix length */
	__u8 slot;
	__u8 field;		/* LB_FW_SRC or LB_FW_DST */
	__u8 family;		/* 4 or 6 */
	__u8 addr[16];		/* network order; IPv4 in the first 4 bytes */
	__u8 pad[1];
};

/* lb_fw_port value: the interval id of LB_FW_PORT_CHUNK consecutive ports. */
struct lb_fw_port_chunk {
	__u16 id[LB_FW_PORT_CHUNK];
};

/* lb_fw_iface key: ifindex 0 holds the rules without an interface match. */
struct lb_fw_iface_key {
	__u32 ifindex;
	__u32 slot;
};

/* lb_fw_rules value (key: slot * LB_FW_MAX_RULES + rank): what a rule does, and
 * its match as configured (for the control plane's read back). */
struct lb_fw_rule {
	__u8 action;		/* enum lb_fw_action */
	__u8 proto;		/* IPPROTO_*, 0: any (ICMP: 1, also for ICMPv6) */
	__u8 has_sport;
	__u8 has_dport;
	__u32 mark;
	__u32 stat_id;		/* index of lb_fw_stats / lb_fw_rate, kept across edits */
	__u32 priority;
	__u64 interval_ns;	/* rateLimit: 1e9 / packets per second */
	__u64 burst_ns;		/* rateLimit: burst * interval_ns */
	__u32 rate_pps;
	__u32 rate_burst;
	__u16 sport_lo;		/* host order, inclusive */
	__u16 sport_hi;
	__u16 dport_lo;
	__u16 dport_hi;
	struct lb_cidr src;	/* prefixlen 0 and family 0: any */
	struct lb_cidr dst;
	char ifname[LB_IFNAME_LEN];	/* empty: any */
	char name[LB_NAME_LEN];	/* FirewallRule resource name */
};

/* Per-CPU counters per rule (lb_fw_stats). */
struct lb_fw_counters {
	__u64 packets;
	__u64 bytes;
	__u64 limited;		/* rateLimit: packets over the rate, dropped */
};

/* lb_fw_rate value: the rule's policer (GCRA theoretical arrival time). */
struct lb_fw_rate {
	__u64 tat_ns;
};

#endif /* LB_SHARED_H */
