/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz the ring consumer and the record decoders against a hostile producer.
 * Input layout: u8 log2(cap) selector, u8 number of "publish" steps, then a
 * list of u16 tail increments (one per step), then the ring bytes. Each
 * step stores a new tail (possibly mid-record, past capacity or backwards)
 * and drains the ring the way residentd and libresident do, decoding every
 * record with the decoder for its type. Partial reads happen whenever a tail
 * lands inside a record. Any return is fine; crashes, sanitizer reports and
 * reads outside the buffer are not.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm/proto.h"
#include "shm/ring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode(const struct shm_rec_hdr *h, const uint8_t *body, size_t len)
{
    const char *why = NULL, *msg;
    switch (h->type) {
    case SHM_REQ_SUBMIT: {
        struct shm_submit_view v;
        if (shm_proto_decode_submit(body, len, 1u << 16, &v, &why) == 0) {
            uint32_t pos = 0, n;
            const uint8_t *s;
            volatile uint8_t sink = 0;
            while (shm_stop_str_next(&v, &pos, &s, &n) == 1)
                for (uint32_t i = 0; i < n; i++)
                    sink ^= s[i];
            for (uint32_t i = 0; i < v.fixed.n_stop_ids; i++)
                sink ^= (uint8_t)v.stop_ids[i];
            if (v.payload)
                for (uint32_t i = 0; i < v.fixed.payload_len; i++)
                    sink ^= v.payload[i];
            /* The extension as the daemon reads it. */
            sink ^= (uint8_t)v.ext.model_defaults;
            sink ^= (uint8_t)(v.ext.presence_penalty * 8.0f) ^ (uint8_t)(v.ext.frequency_penalty * 8.0f);
        }
        break;
    }
    case SHM_REQ_CANCEL: {
        struct shm_req_cancel c;
        (void)shm_proto_decode_cancel(body, len, &c, &why);
        break;
    }
    case SHM_EVT_TOKENS: {
        struct shm_tokens_view v;
        if (shm_proto_decode_tokens(body, len, &v, &why) == 0) {
            volatile uint8_t sink = 0;
            for (uint32_t i = 0; i < v.fixed.text_len; i++)
                sink ^= (uint8_t)v.text[i];
            for (uint32_t i = 0; i < v.fixed.n_tokens; i++)
                sink ^= (uint8_t)v.ids[i];
        }
        break;
    }
    case SHM_EVT_QUEUED: {
        struct shm_evt_queued q;
        (void)shm_proto_decode_queued(body, len, &q, &why);
        break;
    }
    case SHM_EVT_DONE: {
        struct shm_evt_done d;
        if (shm_proto_decode_done(body, len, &d, &msg, &why) == 0) {
            volatile uint8_t sink = 0;
            for (uint32_t i = 0; i < d.msg_len; i++)
                sink ^= (uint8_t)msg[i];
        }
        break;
    }
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint64_t cap = 64u << (data[0] % 7);          /* 64 .. 4096 bytes */
    size_t steps = data[1] % 16;
    data += 2;
    size -= 2;
    if (size < steps * 2)
        return 0;
    const uint8_t *incs = data;
    data += steps * 2;
    size -= steps * 2;

    struct shm_ring_ctl *ctl = aligned_alloc(128, sizeof(*ctl));
    uint8_t *ring = malloc(cap);
    uint8_t *buf = aligned_alloc(8, cap);
    if (!ctl || !ring || !buf)
        abort();
    shm_ring_ctl_init(ctl);
    memset(ring, 0, cap);
    memcpy(ring, data, size < cap ? size : cap);
    struct shm_ring_cons c;
    shm_ring_cons_init(&c, ctl, ring, cap);

    uint64_t tail = 0;
    for (size_t s = 0; s < steps; s++) {
        uint16_t inc;
        memcpy(&inc, incs + 2 * s, 2);
        /* Top bit: forge an absolute (possibly backwards) tail. */
        tail = inc & 0x8000 ? (uint64_t)(inc & 0x7fff) - 64 : tail + inc;
        atomic_store_explicit(&ctl->tail.v, tail, memory_order_release);
        for (;;) {
            struct shm_rec_hdr h;
            int r = shm_ring_cons_next(&c, &h, buf, cap);
            if (r <= 0)
                break;
            decode(&h, buf, h.len - SHM_REC_HDR);
        }
        shm_ring_cons_release(&c);
    }
    free(ctl);
    free(ring);
    free(buf);
    return 0;
}
