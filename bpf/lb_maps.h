/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_maps.h - every map of the datapath, one comment each; pinned by name so flows and counters outlive the control plane.
 */
#ifndef __LB_MAPS_H
#define __LB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lb_shared.h"

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

/* Conntrack: one entry per direction of every flow; sized by the Datapath's capacities.conntrackFlows
 * (two entries a flow); when full the least recently used entry is evicted (the flow's next TCP
 * segment then finds no entry and is handed to the kernel: LB_STAT_PASS_NO_FLOW). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_FLOWS);
	__type(key, struct lb_ct_key);
	__type(value, struct lb_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_ct SEC(".maps");

/* SCTP associations by (verification tag, ports) -> forward conntrack key (multihoming). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_SCTP_ASSOCS);
	__type(key, struct lb_sctp_key);
	__type(value, struct lb_ct_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_sctp SEC(".maps");

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

/* Firewall: the active slot and, per slot, which match fields are in use. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_fw_conf);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_conf SEC(".maps");

/* Firewall: source and destination CIDRs -> the rules admitting every address under them. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LB_FW_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_fw_cidr_key);
	__type(value, struct lb_fw_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_cidr SEC(".maps");

/* Firewall: (slot, family, protocol) -> the rules admitting it; key slot * 512 + (v6) * 256 + proto. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct lb_fw_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_proto SEC(".maps");

/* Firewall: port -> interval id, LB_FW_PORT_CHUNK ports an entry; key ((slot * 2 + field) << 11) + port / 32. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * 65536 / LB_FW_PORT_CHUNK);
	__type(key, __u32);
	__type(value, struct lb_fw_port_chunk);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_port SEC(".maps");

/* Firewall: port interval -> the rules admitting it; key (slot * 2 + field) * LB_FW_MAX_INTERVALS + id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * LB_FW_MAX_INTERVALS);
	__type(key, __u32);
	__type(value, struct lb_fw_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_portset SEC(".maps");

/* Firewall: ingress interface -> the rules admitting it (ifindex 0: rules for any interface). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_FW_MAX_IFACES);
	__type(key, struct lb_fw_iface_key);
	__type(value, struct lb_fw_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_iface SEC(".maps");

/* Firewall: the rules of both slots by rank; key slot * LB_FW_MAX_RULES + rank. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * LB_FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_fw_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_rules SEC(".maps");

/* Firewall: per-CPU counters per rule stat id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_fw_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_stats SEC(".maps");

/* Firewall: policer state per rule stat id, shared by all CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_FW_MAX_RULES);
	__type(key, __u32);
	__type(value, struct lb_fw_rate);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_fw_rate SEC(".maps");

/* Next-hop generation (one entry): a flow's cached next hop is used only while it matches. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_nh_gen);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_nh_gen SEC(".maps");

/* Bit set of every VIP and endpoint address (lb_addrset.h); the last word arms it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_ADDRSET_WORDS + 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_addrset SEC(".maps");

/* Per-CPU scratch space where ct_create builds a conntrack value (it no longer fits the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_ct_scratch SEC(".maps");

/* Fragmented datagrams: (addresses, protocol, fragment id) -> the first fragment's ports (layout v4). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_FRAGS);
	__type(key, struct lb_frag_key);
	__type(value, struct lb_frag);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_frag SEC(".maps");

#endif /* __LB_MAPS_H */
