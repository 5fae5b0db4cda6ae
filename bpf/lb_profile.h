/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_profile.h - stage switches for bench/datapath_profile.py, which finds where the
 * time of a packet goes by building the datapath with one stage cut off or compiled
 * out and timing each build under BPF_PROG_TEST_RUN.  The shipped object defines
 * none of these, so every macro below is empty there.
 *
 *   -DLB_PROFILE_STOP=N  return (pass) at stop point N of the established path:
 *                        1 after parse, 2 after the firewall, 3 after the conntrack
 *                        lookup, 4 after conntrack bookkeeping and counters
 *   -DLB_PROFILE_NO_COUNTERS  every counter update compiled out
 *   -DLB_PROFILE_NO_FIB       forwarding without the next-hop lookup (cache or fib)
 *   -DLB_PROFILE_NO_CSUM      NAT without the checksum updates
 */
#ifndef __LB_PROFILE_H
#define __LB_PROFILE_H

#ifdef LB_PROFILE_STOP
#define LB_STOP(n, ret)                 \
	do {                            \
		if (LB_PROFILE_STOP == (n)) \
			return ret;     \
	} while (0)
#else
#define LB_STOP(n, ret) do { } while (0)
#endif

#endif /* __LB_PROFILE_H */
