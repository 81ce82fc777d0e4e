/* SPDX-License-Identifier: Apache-2.0 */
/*
 * SPSC record rings in shared memory, and why they are safe against a
 * hostile peer.
 *
 * PROTOCOL
 *
 * A ring is `cap` bytes (a power of two) plus a control block
 * (shm/layout.h). Positions are free-running 64-bit byte counts; the byte at
 * position p lives at data[p & (cap - 1)]. The producer owns `tail`, the
 * consumer owns `head`; `tail - head` bytes are published and unconsumed.
 *
 * A record is an 8-byte header {u32 len, u16 type, u16 flags} followed by
 * its body; `len` counts the header and is a multiple of 8. Records never
 * straddle the end of the buffer: when the next record does not fit in the
 * bytes left before the end, the producer first writes a PAD record
 * (type SHM_REC_PAD) covering exactly those bytes. Since every length is a
 * multiple of 8 and cap is a power of two >= 8, the gap is always >= 8 and
 * has room for a PAD header.
 *
 * Producer: reserve space (checking the consumer's head, see below), write
 * the record(s) into the buffer, then store tail with release ordering. A
 * reader that load-acquires tail sees every byte written before it. Many
 * records can be written before one publish; one tail store makes them all
 * visible at once ("batching tokens per wakeup").
 *
 * Consumer: load-acquire tail, read records in [head, tail), then
 * store-release head so the producer may reuse the space.
 *
 * Wakeups (the io_uring SQ_NEED_WAKEUP / virtio event-suppression idea): a
 * consumer that finds the ring empty spins briefly, then stores
 * consumer_sleeping = 1, issues a full fence, and re-checks tail; only if it
 * is still empty does it block on its eventfd. The producer publishes tail,
 * issues a full fence, and writes the eventfd only if consumer_sleeping is
 * set. The two fences order "publish, then check flag" against "set flag,
 * then check ring" so at least one side sees the other: no lost wakeup. A
 * busy stream never makes a syscall. The mirror-image flag producer_waiting
 * lets a producer that found the ring full ask to be told when space frees.
 *
 * SAFETY ARGUMENT (the daemon side; the client uses the same checks)
 *
 * The peer can write any byte of the mapping at any time, including while
 * we read. We therefore:
 *  1. Keep our own position (head for a consumer, tail for a producer) in
 *     private memory and never read it back from the mapping; the shared
 *     copy is publication only.
 *  2. Load each peer-owned index exactly once per pass into a local and
 *     validate the local: a consumer requires tail - head <= cap (unsigned,
 *     so tail < head also fails); a producer requires tail - head <= cap for
 *     the head it loaded. A violation is a protocol error: the session ends.
 *  3. Copy each record header into private memory before looking at it, and
 *     check len >= 8, len % 8 == 0, len <= max_record, len <= tail - pos and
 *     len <= cap - (pos & mask) (no straddling). Only then is the body copied
 *     (again into private memory) and handed to a parser, which works on the
 *     copy; the peer rewriting the slot afterwards cannot change what we
 *     parse (no double fetch, Xen XSA-155).
 *  4. Never follow a pointer from the mapping; offsets into the data area
 *     are checked as `len <= size - off` after `off <= size`.
 *  5. The mapping is sealed (F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) before it
 *     is shared and every access is inside the size fixed at creation, so no
 *     access can SIGBUS.
 * A producer that dies mid-write leaves at most unpublished bytes past tail:
 * invisible by construction. A consumer that never consumes only fills the
 * ring: the producer sees -EAGAIN, never blocks.
 *
 * Errors: functions return 0 or a positive count as documented, -EAGAIN for
 * "no room / nothing yet", -EPROTO when the peer broke the protocol,
 * -EMSGSIZE for records larger than the ring allows.
 *
 * Thread safety: one ring end per thread; the producer and consumer ends of
 * a ring may be used concurrently from different threads or processes.
 */
#ifndef RESIDENT_SHM_RING_H
#define RESIDENT_SHM_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shm/layout.h"

#define SHM_REC_ALIGN   8u
#define SHM_REC_PAD     0xffffu
#define SHM_REC_HDR     8u

struct shm_rec_hdr {
    uint32_t len;     /* total bytes including this header, multiple of 8 */
    uint16_t type;
    uint16_t flags;   /* 0 */
};
_Static_assert(sizeof(struct shm_rec_hdr) == SHM_REC_HDR, "record header layout");

/* Largest record a ring of `cap` bytes carries: a quarter of the ring, so a
 * full ring always holds several and a PAD never starves a writer. */
static inline uint64_t shm_ring_max_record(uint64_t cap) { return cap / 4; }

struct shm_ring_prod {
    struct shm_ring_ctl *ctl;
    uint8_t  *data;
    uint64_t  cap;
    uint64_t  tail;        /* private: end of written records */
    uint64_t  published;   /* private: last tail stored to the mapping */
    uint64_t  head_cache;  /* private: last valid head seen */
};

struct shm_ring_cons {
    struct shm_ring_ctl *ctl;
    const uint8_t *data;
    uint64_t  cap;
    uint64_t  head;        /* private: next record to read */
    uint64_t  tail_cache;  /* private: last valid tail seen */
    uint64_t  released;    /* private: last head stored to the mapping */
};

/**
 * shm_ring_ctl_init() - initialise a control block (creator only, before sharing)
 * @ctl: control block inside the region
 */
void shm_ring_ctl_init(struct shm_ring_ctl *ctl);

/**
 * shm_ring_prod_init() - attach a producer end
 * @p: producer state (private memory)
 * @ctl: control block in the mapping
 * @data: ring buffer in the mapping
 * @cap: ring bytes, a power of two
 *
 * Starts at position 0; the region is fresh for every session.
 */
void shm_ring_prod_init(struct shm_ring_prod *p, struct shm_ring_ctl *ctl, uint8_t *data, uint64_t cap);

/**
 * shm_ring_cons_init() - attach a consumer end; see shm_ring_prod_init()
 */
void shm_ring_cons_init(struct shm_ring_cons *c, struct shm_ring_ctl *ctl, const uint8_t *data, uint64_t cap);

/**
 * shm_ring_prod_alloc() - reserve room for one record and write its header
 * @p: producer
 * @type: record type (not SHM_REC_PAD)
 * @body_len: body bytes after the 8-byte header
 * @body: set to where the body goes (inside the mapping); valid until
 *        shm_ring_prod_alloc() is called again
 *
 * Writes a PAD record first if the record would straddle the end. The record
 * is invisible to the consumer until shm_ring_prod_publish().
 *
 * Return: 0; -EAGAIN when the ring is full (try later, nothing was written);
 * -EMSGSIZE when the record can never fit (> shm_ring_max_record());
 * -EPROTO when the consumer published an impossible head.
 */
int shm_ring_prod_alloc(struct shm_ring_prod *p, uint16_t type, size_t body_len, void **body);

/**
 * shm_ring_prod_space() - bytes a record body could use right now
 * @p: producer
 *
 * Return: >= 0 bytes (already minus the header and any PAD), or -EPROTO.
 */
int64_t shm_ring_prod_space(struct shm_ring_prod *p);

/**
 * shm_ring_prod_publish() - make all allocated records visible
 * @p: producer
 *
 * Return: true when the consumer asked to be woken (consumer_sleeping set):
 * the caller should then write the consumer's eventfd.
 */
bool shm_ring_prod_publish(struct shm_ring_prod *p);

/**
 * shm_ring_prod_set_waiting() - ask the consumer to ring our doorbell when it frees space
 * @p: producer
 * @waiting: flag value
 */
void shm_ring_prod_set_waiting(struct shm_ring_prod *p, bool waiting);

/**
 * shm_ring_cons_next() - copy the next published record out of the ring
 * @c: consumer
 * @hdr: receives a private copy of the record header
 * @buf: receives a private copy of the body
 * @buf_size: bytes available at @buf; at least shm_ring_max_record() - 8
 *
 * PAD records are skipped. Consumed space is not given back until
 * shm_ring_cons_release().
 *
 * Return: 1 with a record; 0 when the ring is empty; -EPROTO when the
 * producer published an impossible tail or record; -ENOBUFS when @buf is too
 * small for a well-formed record (the record stays unread).
 */
int shm_ring_cons_next(struct shm_ring_cons *c, struct shm_rec_hdr *hdr, void *buf, size_t buf_size);

/**
 * shm_ring_cons_release() - give consumed space back to the producer
 * @c: consumer
 *
 * Return: true when the producer asked to be told (producer_waiting set).
 */
bool shm_ring_cons_release(struct shm_ring_cons *c);

/**
 * shm_ring_cons_arm_sleep() - announce "about to block" and re-check
 * @c: consumer
 *
 * Sets consumer_sleeping, issues a full fence, and re-checks the ring.
 *
 * Return: true when the ring is still empty and the caller may block on its
 * eventfd; false when data arrived meanwhile (the flag is cleared again).
 */
bool shm_ring_cons_arm_sleep(struct shm_ring_cons *c);

/**
 * shm_ring_cons_disarm_sleep() - clear consumer_sleeping after waking
 * @c: consumer
 */
void shm_ring_cons_disarm_sleep(struct shm_ring_cons *c);

/**
 * shm_ring_cons_pending() - whether published records are waiting
 * @c: consumer
 *
 * Return: 1 when the ring holds unread records, 0 when empty, -EPROTO on an
 * impossible tail.
 */
int shm_ring_cons_pending(struct shm_ring_cons *c);

#endif
