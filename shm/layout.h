/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared-memory session region: the exact byte layout both processes map.
 *
 * One region per session. residentd creates it (memfd, MFD_ALLOW_SEALING),
 * sizes it, writes the header below, seals it against shrinking and growing
 * and hands the fd to the client over SCM_RIGHTS. The client maps it
 * read-write; both sides then talk through two SPSC rings:
 *
 *   offset 0      struct shm_region_hdr     written once by the daemon
 *   req_ctl_off   struct shm_ring_ctl       request ring control (client -> daemon)
 *   evt_ctl_off   struct shm_ring_ctl       event ring control   (daemon -> client)
 *   req_data_off  req_cap bytes             request ring records
 *   evt_data_off  evt_cap bytes             event ring records
 *   data_off      data_size bytes           bulk area for large prompts (client-written)
 *
 * Every word that one side writes sits alone on a 128-byte line (two cache
 * lines: the adjacent-line prefetcher pairs lines, Aeron does the same), so a
 * busy producer and consumer never false-share.
 *
 * All fields are fixed-width little-endian (host order; both peers are on the
 * same machine) and every struct is _Static_assert-ed below: changing the
 * layout without bumping SHM_ABI_VERSION fails the build.
 *
 * The protocol and its safety argument are in shm/ring.h; the record formats
 * in shm/proto.h; the control-socket frames in shm/wire.h; the whole wire
 * format for implementers in docs/protocol.md.
 */
#ifndef RESIDENT_SHM_LAYOUT_H
#define RESIDENT_SHM_LAYOUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Only lock-free atomics are address-free, i.e. work between processes that
 * map the same page at different addresses. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free for shared memory");

#define SHM_REGION_MAGIC   0x52445352u /* "RSDR" little-endian */
#define SHM_ABI_VERSION    1u
#define SHM_LINE           128u
#define SHM_PAGE           4096u

/* One single-writer word on its own 128-byte line. */
struct shm_line {
    _Atomic uint64_t v;
    uint8_t          pad[SHM_LINE - sizeof(uint64_t)];
};
_Static_assert(sizeof(struct shm_line) == SHM_LINE, "shm_line is one 128-byte slot");

/*
 * Ring control block. Positions are free-running byte counts (never wrap in
 * practice: 2^64 bytes), the slot of position p is p & (cap - 1).
 *
 *   tail               written by the producer only: end of published records
 *   head               written by the consumer only: end of consumed records
 *   consumer_sleeping  written by the consumer: 1 = "I am about to block on my
 *                      eventfd, ring it when you publish"
 *   producer_waiting   written by the producer: 1 = "I found the ring full,
 *                      ring the other doorbell when you free space"
 */
struct shm_ring_ctl {
    uint32_t        magic;      /* SHM_RING_MAGIC, written once by the daemon */
    uint32_t        version;    /* SHM_ABI_VERSION */
    uint32_t        size;       /* sizeof(struct shm_ring_ctl) */
    uint32_t        reserved0;  /* 0 */
    uint8_t         pad0[SHM_LINE - 16];
    struct shm_line tail;
    struct shm_line head;
    struct shm_line consumer_sleeping;
    struct shm_line producer_waiting;
};
#define SHM_RING_MAGIC 0x474e4952u /* "RING" */
_Static_assert(sizeof(struct shm_ring_ctl) == 5 * SHM_LINE, "ring control block layout");
_Static_assert(offsetof(struct shm_ring_ctl, tail) == SHM_LINE, "tail on its own line");
_Static_assert(offsetof(struct shm_ring_ctl, head) == 2 * SHM_LINE, "head on its own line");

/* Region header at offset 0. Written by the daemon before the fd is sent;
 * never read back by the daemon (it keeps its own copy of the layout). */
struct shm_region_hdr {
    uint32_t magic;         /* SHM_REGION_MAGIC */
    uint32_t abi_version;   /* SHM_ABI_VERSION */
    uint32_t hdr_size;      /* sizeof(struct shm_region_hdr) */
    uint32_t flags;         /* 0 */
    uint64_t region_size;   /* total bytes of the memfd */
    uint64_t session_id;
    uint64_t req_ctl_off;
    uint64_t req_data_off;
    uint64_t req_cap;       /* power of two */
    uint64_t evt_ctl_off;
    uint64_t evt_data_off;
    uint64_t evt_cap;       /* power of two */
    uint64_t data_off;
    uint64_t data_size;
    uint64_t reserved[4];   /* must be 0 */
};
_Static_assert(sizeof(struct shm_region_hdr) == 128, "region header layout");
_Static_assert(offsetof(struct shm_region_hdr, region_size) == 16, "region header layout");
_Static_assert(offsetof(struct shm_region_hdr, data_size) == 88, "region header layout");

/* Bounds on ring and data sizes (bytes). A client asks for sizes in HELLO;
 * the daemon rounds up to a power of two and clamps to these and to the
 * per-uid ring-bytes quota. */
#define SHM_RING_MIN        (4u * 1024)
#define SHM_RING_MAX        (16u * 1024 * 1024)
#define SHM_DATA_MAX        (256u * 1024 * 1024)
#define SHM_REQ_RING_DEFAULT (64u * 1024)
#define SHM_EVT_RING_DEFAULT (256u * 1024)
#define SHM_DATA_DEFAULT     (1024u * 1024)

/* Offsets of the two control blocks: fixed, right after the header line. */
#define SHM_REQ_CTL_OFF     SHM_LINE
#define SHM_EVT_CTL_OFF     (SHM_LINE + sizeof(struct shm_ring_ctl))
#define SHM_RINGS_OFF       SHM_PAGE
_Static_assert(SHM_EVT_CTL_OFF + sizeof(struct shm_ring_ctl) <= SHM_RINGS_OFF, "control blocks fit the first page");

struct shm_layout {
    uint64_t region_size;
    uint64_t req_cap, evt_cap, data_size;
    uint64_t req_data_off, evt_data_off, data_off;
};

/**
 * shm_layout_compute() - place rings and data area in a region
 * @req_cap: request ring bytes (power of two, SHM_RING_MIN..SHM_RING_MAX)
 * @evt_cap: event ring bytes (same rules)
 * @data_size: bulk data bytes (0..SHM_DATA_MAX, multiple of SHM_PAGE)
 * @out: resulting offsets and total size
 *
 * Return: 0, or -EINVAL naming nothing (the caller validated) when a size
 * breaks the rules above.
 */
int shm_layout_compute(uint64_t req_cap, uint64_t evt_cap, uint64_t data_size, struct shm_layout *out);

/**
 * shm_layout_round_ring() - round a requested ring size to the legal range
 * @want: requested bytes, 0 = default @dflt
 * @dflt: default when @want is 0
 *
 * Return: the next power of two >= @want, clamped to SHM_RING_MIN..SHM_RING_MAX.
 */
uint64_t shm_layout_round_ring(uint64_t want, uint64_t dflt);

/**
 * shm_region_hdr_validate() - check a region header read from a mapping
 * @hdr: a private copy of the header (never the live mapping)
 * @map_size: bytes actually mapped (from fstat)
 * @out: the layout the header describes, filled on success
 * @why: set to a static message naming the bad field on failure (may be NULL)
 *
 * Used by the client to attach. Every offset and size is checked against
 * @map_size with overflow-free arithmetic.
 *
 * Return: 0, or -EPROTO when the header is not one this ABI understands.
 */
int shm_region_hdr_validate(const struct shm_region_hdr *hdr, uint64_t map_size,
                            struct shm_layout *out, const char **why);

#endif
