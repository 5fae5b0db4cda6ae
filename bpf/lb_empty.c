// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lb_empty.c - empty tc and XDP programs: the floor for bench/datapath_bench.py. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int empty_xdp(struct xdp_md *xdp)
{
	return XDP_PASS;
}
