/* SPDX-License-Identifier: Apache-2.0 */
/* SPSC record rings: see shm/ring.h for the protocol and safety argument. */
#include <errno.h>
#include <string.h>

#include "shm/ring.h"

static inline uint64_t load_acq(_Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_acquire);
}

static inline void store_rel(_Atomic uint64_t *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_release);
}

static uint64_t align8(uint64_t n)
{
    return (n + (SHM_REC_ALIGN - 1)) & ~(uint64_t)(SHM_REC_ALIGN - 1);
}

void shm_ring_ctl_init(struct shm_ring_ctl *ctl)
{
    memset(ctl, 0, sizeof(*ctl));
    ctl->magic = SHM_RING_MAGIC;
    ctl->version = SHM_ABI_VERSION;
    ctl->size = sizeof(*ctl);
}

void shm_ring_prod_init(struct shm_ring_prod *p, struct shm_ring_ctl *ctl, uint8_t *data, uint64_t cap)
{
    memset(p, 0, sizeof(*p));
    p->ctl = ctl;
    p->data = data;
    p->cap = cap;
}

void shm_ring_cons_init(struct shm_ring_cons *c, struct shm_ring_ctl *ctl, const uint8_t *data, uint64_t cap)
{
    memset(c, 0, sizeof(*c));
    c->ctl = ctl;
    c->data = data;
    c->cap = cap;
}

/* Load the consumer's head once and validate it against our private tail.
 * A head behind an earlier one only shrinks our view of free space, which
 * harms nobody but the peer, so monotonicity is not required; a head ahead
 * of our tail or more than cap behind it is impossible. */
static int prod_refresh_head(struct shm_ring_prod *p)
{
    uint64_t h = load_acq(&p->ctl->head.v);
    if (p->tail - h > p->cap)
        return -EPROTO;
    p->head_cache = h;
    return 0;
}

static void put_hdr(uint8_t *at, uint32_t len, uint16_t type)
{
    struct shm_rec_hdr h = { .len = len, .type = type, .flags = 0 };
    memcpy(at, &h, sizeof(h));
}

int shm_ring_prod_alloc(struct shm_ring_prod *p, uint16_t type, size_t body_len, void **body)
{
    if (type == SHM_REC_PAD || body_len > shm_ring_max_record(p->cap) - SHM_REC_HDR)
        return -EMSGSIZE;
    uint64_t len = align8(SHM_REC_HDR + body_len);
    uint64_t mask = p->cap - 1;
    uint64_t to_end = p->cap - (p->tail & mask);
    uint64_t need = len <= to_end ? len : to_end + len;

    if (p->tail + need - p->head_cache > p->cap) {
        int r = prod_refresh_head(p);
        if (r < 0)
            return r;
        if (p->tail + need - p->head_cache > p->cap)
            return -EAGAIN;
    }
    if (len > to_end) {
        put_hdr(p->data + (p->tail & mask), (uint32_t)to_end, SHM_REC_PAD);
        p->tail += to_end;
    }
    uint8_t *at = p->data + (p->tail & mask);
    put_hdr(at, (uint32_t)len, type);
    /* Zero the alignment tail so no stale bytes leak to the peer. */
    if (len > SHM_REC_HDR + body_len)
        memset(at + SHM_REC_HDR + body_len, 0, len - SHM_REC_HDR - body_len);
    p->tail += len;
    *body = at + SHM_REC_HDR;
    return 0;
}

int64_t shm_ring_prod_space(struct shm_ring_prod *p)
{
    int r = prod_refresh_head(p);
    if (r < 0)
        return r;
    uint64_t mask = p->cap - 1;
    uint64_t free_b = p->cap - (p->tail - p->head_cache);
    uint64_t to_end = p->cap - (p->tail & mask);
    /* Contiguous room: either before the end, or after a PAD at the start. */
    uint64_t room = to_end;
    if (free_b > to_end && free_b - to_end > room)
        room = free_b - to_end;
    if (room > free_b)
        room = free_b;
    uint64_t maxr = shm_ring_max_record(p->cap);
    if (room > maxr)
        room = maxr;
    return room >= SHM_REC_HDR ? (int64_t)(room - SHM_REC_HDR) : 0;
}

bool shm_ring_prod_publish(struct shm_ring_prod *p)
{
    if (p->tail != p->published) {
        store_rel(&p->ctl->tail.v, p->tail);
        p->published = p->tail;
    }
    /* Order the tail store before the flag load (pairs with the fence in
     * shm_ring_cons_arm_sleep()). */
    atomic_thread_fence(memory_order_seq_cst);
    return atomic_load_explicit(&p->ctl->consumer_sleeping.v, memory_order_relaxed) != 0;
}

void shm_ring_prod_set_waiting(struct shm_ring_prod *p, bool waiting)
{
    atomic_store_explicit(&p->ctl->producer_waiting.v, waiting ? 1 : 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
}

static int cons_refresh_tail(struct shm_ring_cons *c)
{
    uint64_t t = load_acq(&c->ctl->tail.v);
    if (t - c->head > c->cap)
        return -EPROTO;
    c->tail_cache = t;
    return 0;
}

int shm_ring_cons_next(struct shm_ring_cons *c, struct shm_rec_hdr *hdr, void *buf, size_t buf_size)
{
    uint64_t mask = c->cap - 1;
    uint64_t maxr = shm_ring_max_record(c->cap);
    for (;;) {
        if (c->head == c->tail_cache) {
            int r = cons_refresh_tail(c);
            if (r < 0)
                return r;
            if (c->head == c->tail_cache)
                return 0;
        }
        uint64_t avail = c->tail_cache - c->head;
        uint64_t off = c->head & mask;
        uint64_t to_end = c->cap - off;
        if (avail < SHM_REC_HDR)
            return -EPROTO;
        struct shm_rec_hdr h;
        memcpy(&h, c->data + off, sizeof(h));   /* private copy, fetched once */
        if (h.len < SHM_REC_HDR || h.len % SHM_REC_ALIGN || h.len > avail || h.len > to_end)
            return -EPROTO;
        if (h.type == SHM_REC_PAD) {
            /* A PAD must run exactly to the end of the buffer. */
            if (h.len != to_end)
                return -EPROTO;
            c->head += h.len;
            continue;
        }
        if (h.len > maxr || h.flags != 0)
            return -EPROTO;
        size_t body = h.len - SHM_REC_HDR;
        if (body > buf_size)
            return -ENOBUFS;
        memcpy(buf, c->data + off + SHM_REC_HDR, body);
        c->head += h.len;
        *hdr = h;
        return 1;
    }
}

bool shm_ring_cons_release(struct shm_ring_cons *c)
{
    if (c->head != c->released) {
        store_rel(&c->ctl->head.v, c->head);
        c->released = c->head;
    }
    atomic_thread_fence(memory_order_seq_cst);
    return atomic_load_explicit(&c->ctl->producer_waiting.v, memory_order_relaxed) != 0;
}

int shm_ring_cons_pending(struct shm_ring_cons *c)
{
    if (c->head != c->tail_cache)
        return 1;
    int r = cons_refresh_tail(c);
    if (r < 0)
        return r;
    return c->head != c->tail_cache;
}

bool shm_ring_cons_arm_sleep(struct shm_ring_cons *c)
{
    atomic_store_explicit(&c->ctl->consumer_sleeping.v, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (shm_ring_cons_pending(c) != 0) {
        /* Data (or a protocol error the next read will report) arrived. */
        atomic_store_explicit(&c->ctl->consumer_sleeping.v, 0, memory_order_relaxed);
        return false;
    }
    return true;
}

void shm_ring_cons_disarm_sleep(struct shm_ring_cons *c)
{
    atomic_store_explicit(&c->ctl->consumer_sleeping.v, 0, memory_order_relaxed);
}
