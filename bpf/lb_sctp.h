/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_sctp.h - SCTP: the CRC32c update when ports or chunk bytes change, the rewrite of
 * the address parameters of INIT (source NAT hides the client) and INIT-ACK (the client
 * learns the VIPs, not the endpoint's addresses), and the association states.
 *
 * The CRC32c (RFC 9260 6.8) has no pseudo header: changing IP addresses leaves it
 * alone.  Where bytes of the SCTP packet change, it is updated incrementally: the CRC
 * is linear over GF(2), so for two packets of equal length crc(A) ^ crc(B) is the
 * zero-init CRC of A ^ B, and a block of changed bytes followed by r unchanged ones
 * contributes crc0(block) * x^(8r) mod P.  x^(8r) comes from 4 lookups of a table of
 * x^(8 * j * 16^k) (one per hexadecimal digit of r), so an update costs at most 4
 * carry-less multiplications, whatever the packet length; a packet that arrived with
 * a bad CRC leaves with a bad one.  Every access is a direct, bounds-checked packet
 * access at an offset masked to 14 bits, so no packet pointer is invalidated.
 */
#ifndef __LB_SCTP_H
#define __LB_SCTP_H

#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_counters.h"

enum {
	SCTP_CID_DATA = 0,
	SCTP_CID_INIT = 1,
	SCTP_CID_INIT_ACK = 2,
	SCTP_CID_ABORT = 6,
	SCTP_CID_SHUTDOWN = 7,
	SCTP_CID_SHUTDOWN_ACK = 8,
	SCTP_CID_COOKIE_ECHO = 10,
	SCTP_CID_COOKIE_ACK = 11,
	SCTP_CID_SHUTDOWN_COMPLETE = 14,
	SCTP_PARAM_IPV4 = 5,
	SCTP_PARAM_IPV6 = 6,
	/* An address parameter of the other family than the VIP's becomes this one: its two
	 * high bits 10 tell the peer to skip it silently (RFC 9260 3.2.1). */
	SCTP_PARAM_HIDDEN = 0xbffe,
	SCTP_MAX_PARAMS = 16,	/* INIT/INIT-ACK parameters looked at */
	SCTP_INIT_FIXED = 20,	/* chunk header + tag, a_rwnd, streams, TSN */
};

#define LB_CRC32C_POLY 0x82f63b78

static const __u32 lb_crc32c_tab[256] = {
	0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
	0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
	0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
	0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
	0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
	0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
	0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
	0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
	0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
	0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
	0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
	0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
	0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
	0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
	0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
	0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
	0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
	0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
	0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
	0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
	0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
	0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
	0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
	0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
	0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
	0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
	0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
	0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
	0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
	0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
	0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
	0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
	0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
	0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
	0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
	0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
	0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
	0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
	0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
	0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
	0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
	0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
	0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

static const __u32 lb_crc32c_shift[64] = {
	0x80000000, 0x00800000, 0x00008000, 0x00000080, 0x82f63b78, 0xfbc3faf9,
	0x8b277743, 0x52a0c93f, 0x6ea2d55c, 0x1c08b7d6, 0xf56e0ef4, 0x34019664,
	0xa66805eb, 0x7a1f6b24, 0xe75d06aa, 0xc94ec098, 0x80000000, 0x18b8ea18,
	0x510ac59a, 0xb2dea967, 0xb82be955, 0x36c41f1c, 0x19b29a35, 0xc9e90b9e,
	0xb8fdb1e7, 0xe55ef1f3, 0x1fe0b5c3, 0xe0553f1e, 0x18e4a304, 0x2b830011,
	0x56993a31, 0x0246e2e6, 0x80000000, 0x88e56f72, 0x74c360a4, 0x631bb273,
	0xe4172b16, 0x71892b1b, 0x835305c9, 0x196b1eae, 0x0d65762a, 0xafc81338,
	0xb5a50ab7, 0xf373c3ac, 0x5f60970f, 0xd46d3063, 0x3a5275ea, 0x02331c01,
	0x80000000, 0x35d73a62, 0x28461564, 0x43eefc9f, 0xbf455269, 0x5edcdeb9,
	0x65059450, 0x4e6f41a4, 0xe2ea32dc, 0xf5b95b32, 0x695a4c87, 0xf204502c,
	0x9a4f01b6, 0x941a0916, 0x4303cb97, 0x4c3d3d65,
};

/* a * b mod P, both reflected (bit 31 is x^0).  A global function: verified once, alone. */
__noinline __u32 lb_crc32c_mul(__u32 a, __u32 b)
{
	__u32 p = 0;

	for (int i = 0; i < 32; i++) {
		p ^= b & -((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (LB_CRC32C_POLY & -(b & 1));
	}
	return p;
}

/* A zero-init CRC c followed by n zero bytes (n < 65536).  Global: verified once. */
__noinline __u32 lb_crc32c_shift_by(__u32 c, __u32 n)
{
	for (int k = 0; k < 4; k++) {
		__u32 nib = (n >> (4 * k)) & 15;

		if (nib)
			c = lb_crc32c_mul(lb_crc32c_shift[(k * 16 + nib) & 63], c);
	}
	return c;
}

/* A 16-bit ones' complement checksum after one 16-bit word changed (RFC 1624). */
static __always_inline __u16 lb_csum16_update(__u16 sum, __u16 old, __u16 new)
{
	__u32 s = (__u16)~sum + (__u32)(__u16)~old + new;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Feed 4 bytes (as read from memory, little-endian host) to a CRC state. */
static __always_inline __u32 crc32c_word(__u32 crc, __u32 w)
{
	crc ^= w;
	for (int i = 0; i < 4; i++)
		crc = lb_crc32c_tab[crc & 0xff] ^ (crc >> 8);
	return crc;
}

/* The next association state after a chunk of type `chunk` (either direction). */
static __always_inline __u8 sctp_next_state(__u8 s, __u8 chunk)
{
	__u8 n;

	switch (chunk) {
	case SCTP_CID_ABORT:
		return LB_CT_CLOSED;
	case SCTP_CID_INIT:
		n = LB_CT_SCTP_INIT;
		break;
	case SCTP_CID_INIT_ACK:
		n = LB_CT_SCTP_INIT_ACK;
		break;
	case SCTP_CID_COOKIE_ECHO:
		n = LB_CT_SCTP_COOKIE_ECHO;
		break;
	case SCTP_CID_COOKIE_ACK:
		n = LB_CT_SCTP_ESTABLISHED;
		break;
	case SCTP_CID_SHUTDOWN:
		n = LB_CT_SCTP_SHUTDOWN;
		break;
	case SCTP_CID_SHUTDOWN_ACK:
		n = LB_CT_SCTP_SHUTDOWN_ACK;
		break;
	case SCTP_CID_SHUTDOWN_COMPLETE:
		n = LB_CT_SCTP_SHUTDOWN_COMPLETE;
		break;
	default:
		return s;
	}
	/* Forward only (retransmissions and reordering never move an association back);
	 * an aborted one stays closed. */
	if (s == LB_CT_CLOSED || (s >= LB_CT_SCTP_INIT && n <= s))
		return s;
	return n;
}

/* Where the walk over an INIT / INIT-ACK's parameters is (offsets from the SCTP header). */
struct sctp_walk {
	__u32 fallback[4];	/* the packet's new source: for addresses past the VIPs */
	__u32 svc;		/* INIT-ACK: 1 + the service id, whose other VIPs the client learns */
	__u32 family;
	__u32 l4off;		/* the SCTP header's offset in the packet */
	__u32 sctp_len;		/* bytes of SCTP (header and chunks) */
	__u32 cend;		/* end of the chunk */
	__u32 off;		/* the next parameter */
	__u32 used;		/* replacement addresses used */
	__u32 delta;		/* CRC32c change so far */
	__u32 rewritten;
	__u32 chunk_len;	/* of the INIT / INIT-ACK chunk, as received */
	__u32 pad;
};

/*
 * One parameter of the walk: an address parameter of the VIP's family gets the service's
 * next other VIP (then w->fallback), one of the other family becomes SCTP_PARAM_HIDDEN.
 * Returns 1 when the walk is over (end of chunk, or a parameter that does not fit).
 */
static __always_inline int sctp_param(void *ctx, const int xdp, struct sctp_walk *w)
{
	void *end = ctx_end(ctx, xdp);
	__u32 off = w->off & 0x3fff, words, c = 0, want = 0;
	const __u32 *src;
	__u16 type, plen;
	__u8 *q;

	if (off + 4 > w->cend)
		return 1;
	q = ctx_data(ctx, xdp) + ((w->l4off & 0xff) + off);
	if ((void *)(q + 4) > end)
		return 1;
	type = ((__u16)q[0] << 8) | q[1];
	plen = ((__u16)q[2] << 8) | q[3];
	if (plen < 4 || off + plen > w->cend)
		return 1;
	w->off = off + ((plen + 3) & ~3);
	if (!((type == SCTP_PARAM_IPV4 && plen == 8) || (type == SCTP_PARAM_IPV6 && plen == 20)))
		return 0;
	if ((type == SCTP_PARAM_IPV4) != (w->family == 4)) {
		/* the other family: hide it (type and length are one word) */
		__u32 old = *(__u32 *)q, new;

		q[0] = SCTP_PARAM_HIDDEN >> 8;
		q[1] = SCTP_PARAM_HIDDEN & 0xff;
		new = *(__u32 *)q;
		w->delta ^= lb_crc32c_shift_by(crc32c_word(0, old ^ new), w->sctp_len - off - 4);
		w->rewritten = 1;
		return 0;
	}
	words = type == SCTP_PARAM_IPV4 ? 1 : 4;
	if ((void *)(q + 4 + 16) > end && words == 4)
		return 1;
	if ((void *)(q + 8) > end)
		return 1;
	src = w->fallback;
	if (w->svc && w->used < LB_MAX_SCTP_PEER_VIPS) {
		__u32 id = w->svc - 1, u = w->used;
		struct lb_service *s = bpf_map_lookup_elem(&lb_conf, &id);

		if (s && u < s->n_sctp_peer_vips && s->sctp_peer_family[u] == w->family)
			src = s->sctp_peer_vips[u];
	}
	w->used++;
	for (int i = 0; i < 4; i++) {
		__u32 *f = (__u32 *)(q + 4 + 4 * i);

		if (i >= words || (void *)(f + 1) > end)
			break;
		want |= *f ^ src[i];
		c = crc32c_word(c, *f ^ src[i]);
		*f = src[i];
	}
	if (want) {
		w->delta ^= lb_crc32c_shift_by(c, w->sctp_len - off - 4 - 4 * words);
		w->rewritten = 1;
	}
	return 0;
}

/* Global functions: one parameter step is verified once per hook, not per iteration and call site. */
__noinline int lb_sctp_param_tc(struct __sk_buff *skb, struct sctp_walk *w)
{
	return w ? sctp_param(skb, 0, w) : 1;
}

__noinline int lb_sctp_param_xdp(struct xdp_md *xdp, struct sctp_walk *w)
{
	return w ? sctp_param(xdp, 1, w) : 1;
}

/*
 * An INIT-ACK that named fewer addresses than the service has other VIPs: append the
 * rest as address parameters (the chunk must end the packet, as RFC 9260 wants of an
 * INIT-ACK), fix the chunk and IP lengths and extend the CRC32c (stored CRC in w->delta
 * on entry: the packet's CRC after the in-place rewrite).  Returns 1 when it grew.
 */
static __always_inline int sctp_grow(void *ctx, const int xdp, struct sctp_walk *w)
{
	__u32 id = w->svc - 1, plen = w->family == 4 ? 8 : 20, cpad = (w->chunk_len + 3) & ~3;
	__u32 l4off = w->l4off & 0xff, len = w->sctp_len & 0x3fff, add = 0, crc, old_len;
	struct lb_service *s = bpf_map_lookup_elem(&lb_conf, &id);
	__u16 old_clen, new_clen;
	void *data, *end;
	__u8 *q;

	if (!s || !w->svc || 12 + cpad != len || w->used >= LB_MAX_SCTP_PEER_VIPS)
		return 0;
	for (int i = 0; i < LB_MAX_SCTP_PEER_VIPS; i++)
		if (i >= w->used && i < s->n_sctp_peer_vips && s->sctp_peer_family[i] == w->family)
			add += plen;
	if (!add)
		return 0;
	old_len = xdp ? (__u32)(((struct xdp_md *)ctx)->data_end - ((struct xdp_md *)ctx)->data)
		      : ((struct __sk_buff *)ctx)->len;
	if (old_len != l4off + len)
		return 0;	/* bytes after the SCTP packet (padding): leave it */
	if (xdp ? bpf_xdp_adjust_tail(ctx, add) : bpf_skb_change_tail(ctx, old_len + add, 0))
		return 0;
	data = ctx_data(ctx, xdp);
	end = ctx_end(ctx, xdp);
	/* The chunk length, then the CRC of the packet so far with it (same length). */
	q = data + l4off;
	if ((void *)(q + 16) > end)
		return 0;
	old_clen = *(__u16 *)(q + 14);
	new_clen = bpf_htons(cpad + add);
	*(__u16 *)(q + 14) = new_clen;
	crc = w->delta ^ lb_crc32c_shift_by(crc32c_word(0, (__u32)(__u16)(old_clen ^ new_clen) << 16), len - 16);
	crc = ~crc;
	/* The new parameters, fed to the CRC as they are written. */
	q = data + ((l4off + len) & 0x3fff);
	for (int i = 0; i < LB_MAX_SCTP_PEER_VIPS; i++) {
		if (!(i >= w->used && i < s->n_sctp_peer_vips && s->sctp_peer_family[i] == w->family))
			continue;
		if ((void *)(q + 20) > end && plen == 20)
			return 0;
		if ((void *)(q + 8) > end)
			return 0;
		*(__u32 *)q = bpf_htons(plen == 8 ? SCTP_PARAM_IPV4 : SCTP_PARAM_IPV6) | (__u32)bpf_htons(plen) << 16;
		crc = crc32c_word(crc, *(__u32 *)q);
		for (int k = 0; k < 4; k++) {
			__u32 *f = (__u32 *)(q + 4 + 4 * k);

			if (k * 4 + 4 >= plen || (void *)(f + 1) > end)
				break;
			*f = s->sctp_peer_vips[i][k];
			crc = crc32c_word(crc, *f);
		}
		q += plen;
	}
	w->delta = ~crc;
	/* The IP length. */
	if (w->family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end)
			return 0;
		old_clen = ip->tot_len;
		ip->tot_len = bpf_htons(bpf_ntohs(old_clen) + add);
		ip->check = lb_csum16_update(ip->check, old_clen, ip->tot_len);
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end)
			return 0;
		ip6->payload_len = bpf_htons(bpf_ntohs(ip6->payload_len) + add);
	}
	return 1;
}

__noinline int lb_sctp_grow_tc(struct __sk_buff *skb, struct sctp_walk *w)
{
	return w ? sctp_grow(skb, 0, w) : 0;
}

__noinline int lb_sctp_grow_xdp(struct xdp_md *xdp, struct sctp_walk *w)
{
	return w ? sctp_grow(xdp, 1, w) : 0;
}

/*
 * Rewrite the address parameters of the INIT / INIT-ACK chunk (w->l4off, w->sctp_len and
 * w->a set) and return the CRC32c delta.  Chunk and parameter lengths are checked against
 * the chunk, the chunk against the packet; a malformed list stops the walk where it goes wrong.
 */
static __always_inline __u32 sctp_rewrite_addrs(void *ctx, const int xdp, struct sctp_walk *w, __u32 chunk_len)
{
	w->off = 12 + SCTP_INIT_FIXED;
	w->cend = 12 + chunk_len;
	if (w->cend > w->sctp_len)
		w->cend = w->sctp_len;
	for (int i = 0; i < SCTP_MAX_PARAMS; i++) {
		if (xdp ? lb_sctp_param_xdp(ctx, w) : lb_sctp_param_tc(ctx, w))
			break;
	}
	if (w->rewritten)
		stat_inc(LB_STAT_SCTP_ADDR_REWRITE);
	return w->delta;
}

/*
 * An SCTP packet after its translation (p->t is still the packet as received): rewrite
 * the address parameters of an INIT whose source was translated (the endpoint must not
 * learn the client's addresses) and of an INIT-ACK of a reply (the client learns the
 * service's other VIPs: p->sctp_svc is 1 + the reply's service id), and update the
 * CRC32c for those and for changed ports.  Reads the packet as it is now, so it runs
 * once, after every rewrite (and after the tc checksum helpers moved the packet).
 */
static __always_inline void sctp_fix(void *ctx, const int xdp, const struct pkt *p)
{
	void *data, *end;
	__u32 l4off = (p->csum_off - 8) & 0xff;
	__u32 sctp_len, delta = 0, snat;
	struct lb_sctphdr *sh;
	__u32 saddr[4] = {};

	/* tc: an INIT / INIT-ACK's parameters may lie past the linear part (lb_tc pulls 128
	 * bytes): make the whole packet linear, it is the first of an association. */
	if (!xdp && (p->chunk == SCTP_CID_INIT || p->chunk == SCTP_CID_INIT_ACK)) {
		struct __sk_buff *skb = ctx;

		if (skb->data_end - skb->data < skb->len)
			bpf_skb_pull_data(skb, skb->len);
	}
	data = ctx_data(ctx, xdp);
	end = ctx_end(ctx, xdp);
	sh = data + l4off;
	if ((void *)(sh + 1) > end)
		return;
	if (p->t.family == 4) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_SCTP)
			return;	/* e.g. IP-in-IP (dsr): the SCTP packet inside is unchanged */
		sctp_len = bpf_ntohs(ip->tot_len) - (l4off - ETH_HLEN);
		saddr[0] = ip->saddr;
		snat = saddr[0] != p->t.saddr[0];
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_SCTP)
			return;
		sctp_len = bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(saddr, &ip6->saddr, 16);
		snat = (saddr[0] ^ p->t.saddr[0]) | (saddr[1] ^ p->t.saddr[1]) | (saddr[2] ^ p->t.saddr[2]) |
		       (saddr[3] ^ p->t.saddr[3]);
	}
	if (sctp_len < sizeof(*sh) || sctp_len > 0xffff)
		return;
	if (sh->source != p->t.sport || sh->dest != p->t.dport)
		delta = lb_crc32c_shift_by(crc32c_word(0, (__u32)(__u16)(sh->source ^ p->t.sport) |
							  ((__u32)(__u16)(sh->dest ^ p->t.dport) << 16)),
					   sctp_len - 4);
	if ((p->chunk == SCTP_CID_INIT && !p->sctp_svc && snat) ||
	    (p->chunk == SCTP_CID_INIT_ACK && p->sctp_svc)) {
		struct sctp_walk w = {};

		w.family = p->t.family;
		w.l4off = l4off;
		w.sctp_len = sctp_len;
		w.svc = p->sctp_svc;
		__builtin_memcpy(w.fallback, saddr, 16);
		w.chunk_len = p->chunk_len;
		delta ^= sctp_rewrite_addrs(ctx, xdp, &w, p->chunk_len);
		if (p->chunk == SCTP_CID_INIT_ACK) {
			sh = ctx_data(ctx, xdp) + l4off;
			if ((void *)(sh + 1) > ctx_end(ctx, xdp))
				return;
			w.delta = sh->crc ^ delta;
			if (xdp ? lb_sctp_grow_xdp(ctx, &w) : lb_sctp_grow_tc(ctx, &w)) {
				sh = ctx_data(ctx, xdp) + l4off;
				if ((void *)(sh + 1) > ctx_end(ctx, xdp))
					return;
				sh->crc = w.delta;
				return;
			}
		}
	}
	if (!delta)
		return;
	sh = ctx_data(ctx, xdp) + l4off;
	if ((void *)(sh + 1) > ctx_end(ctx, xdp))
		return;
	sh->crc ^= delta;
}

static __noinline void sctp_fix_tc(void *ctx, const struct pkt *p)
{
	sctp_fix(ctx, 0, p);
}

static __noinline void sctp_fix_xdp(void *ctx, const struct pkt *p)
{
	sctp_fix(ctx, 1, p);
}

/* The verdict of an SCTP packet, once its CRC32c and INIT / INIT-ACK match its translation. */
static __always_inline enum verdict sctp_done(void *ctx, const int xdp, const struct pkt *p, enum verdict v)
{
	if (p->t.proto == IPPROTO_SCTP && v != V_DROP) {
		if (xdp)
			sctp_fix_xdp(ctx, p);
		else
			sctp_fix_tc(ctx, p);
	}
	return v;
}

#endif /* __LB_SCTP_H */
