/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unit tests for shm/: ring wrap/pad/backpressure, a two-thread stream that
 * checks order and content, forged positions and record lengths, region
 * create/attach, wire and record codecs (round trips and rejections).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shm/proto.h"
#include "shm/region.h"
#include "shm/ring.h"
#include "shm/wire.h"

static int failures;

#define CHECK(cond) do { \
    if (!(cond)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); failures++; } \
} while (0)

#define CAP 4096u

struct ring_mem {
    struct shm_ring_ctl ctl;
    _Alignas(64) uint8_t data[CAP];
};

static void test_ring_basic(void)
{
    static struct ring_mem m;
    struct shm_ring_prod p;
    struct shm_ring_cons c;
    shm_ring_ctl_init(&m.ctl);
    shm_ring_prod_init(&p, &m.ctl, m.data, CAP);
    shm_ring_cons_init(&c, &m.ctl, m.data, CAP);

    uint8_t buf[CAP];
    struct shm_rec_hdr h;
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == 0);

    /* Fill until full, records invisible until published. */
    int n = 0;
    void *body;
    while (shm_ring_prod_alloc(&p, 7, 96, &body) == 0) {
        memset(body, n & 0xff, 96);
        n++;
    }
    CHECK(n == CAP / 104);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == 0);
    CHECK(shm_ring_prod_publish(&p) == false);
    for (int i = 0; i < n; i++) {
        CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == 1);
        CHECK(h.type == 7 && h.len == 104 && buf[0] == (i & 0xff) && buf[95] == (i & 0xff));
    }
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == 0);
    /* Not released yet: still full for the producer. */
    CHECK(shm_ring_prod_alloc(&p, 7, 96, &body) == -EAGAIN);
    shm_ring_cons_release(&c);
    /* Next record straddles the end: a PAD is inserted transparently. */
    CHECK(shm_ring_prod_alloc(&p, 9, 200, &body) == 0);
    memset(body, 0xab, 200);
    shm_ring_prod_publish(&p);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == 1);
    CHECK(h.type == 9 && buf[199] == 0xab);
    CHECK(shm_ring_prod_alloc(&p, 9, CAP, &body) == -EMSGSIZE);
    CHECK(shm_ring_prod_alloc(&p, SHM_REC_PAD, 8, &body) == -EMSGSIZE);

    /* Sleep flag handshake. */
    CHECK(shm_ring_cons_arm_sleep(&c) == true);
    CHECK(shm_ring_prod_alloc(&p, 1, 8, &body) == 0);
    CHECK(shm_ring_prod_publish(&p) == true);
    shm_ring_cons_disarm_sleep(&c);
    CHECK(shm_ring_cons_arm_sleep(&c) == false);   /* data pending */
}

static void test_ring_forged(void)
{
    static struct ring_mem m;
    struct shm_ring_prod p;
    struct shm_ring_cons c;
    uint8_t buf[CAP];
    struct shm_rec_hdr h;
    void *body;

    shm_ring_ctl_init(&m.ctl);
    shm_ring_cons_init(&c, &m.ctl, m.data, CAP);
    /* tail beyond capacity */
    atomic_store(&m.ctl.tail.v, CAP + 8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    /* tail behind head (wraps to a huge distance) */
    atomic_store(&m.ctl.tail.v, (uint64_t)-8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    /* record length larger than published bytes */
    atomic_store(&m.ctl.tail.v, 16);
    struct shm_rec_hdr bad = { .len = 64, .type = 1 };
    memcpy(m.data, &bad, 8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    /* unaligned, zero and oversized lengths */
    bad.len = 12;
    memcpy(m.data, &bad, 8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    bad.len = 0;
    memcpy(m.data, &bad, 8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    atomic_store(&m.ctl.tail.v, CAP);
    bad.len = CAP;
    memcpy(m.data, &bad, 8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    /* PAD not reaching the end */
    bad.len = 16;
    bad.type = SHM_REC_PAD;
    memcpy(m.data, &bad, 8);
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == -EPROTO);
    /* a small buffer is reported, not overrun */
    bad.len = 64;
    bad.type = 1;
    memcpy(m.data, &bad, 8);
    shm_ring_cons_init(&c, &m.ctl, m.data, CAP);   /* drop the cached tail */
    CHECK(shm_ring_cons_next(&c, &h, buf, 16) == -ENOBUFS);

    /* Producer: a forged head ahead of our tail. */
    shm_ring_ctl_init(&m.ctl);
    shm_ring_prod_init(&p, &m.ctl, m.data, CAP);
    for (int i = 0; i < 40; i++)
        (void)shm_ring_prod_alloc(&p, 1, 100, &body);
    atomic_store(&m.ctl.head.v, 1u << 20);
    CHECK(shm_ring_prod_alloc(&p, 1, 100, &body) == -EPROTO);
    CHECK(shm_ring_prod_space(&p) == -EPROTO);
}

#define STREAM_N 100000

static struct ring_mem stream_mem;
static _Atomic int stream_stop;

static void *stream_producer(void *arg)
{
    struct shm_ring_prod *p = arg;
    uint32_t seed = 1;
    for (uint32_t i = 0; i < STREAM_N; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t len = 4 + (seed >> 16) % 700;
        void *body;
        int r;
        while ((r = shm_ring_prod_alloc(p, 3, len, &body)) == -EAGAIN) {
            shm_ring_prod_publish(p);
            sched_yield();      /* 2 shared CPUs: let the consumer run */
            if (atomic_load(&stream_stop))
                return (void *)2;
        }
        if (r < 0)
            return (void *)1;
        memcpy(body, &i, 4);
        memset((uint8_t *)body + 4, (int)(i & 0xff), len - 4);
        if (i % 7 == 0)
            shm_ring_prod_publish(p);
    }
    shm_ring_prod_publish(p);
    return NULL;
}

static void test_ring_stream(void)
{
    struct shm_ring_prod p;
    struct shm_ring_cons c;
    shm_ring_ctl_init(&stream_mem.ctl);
    shm_ring_prod_init(&p, &stream_mem.ctl, stream_mem.data, CAP);
    shm_ring_cons_init(&c, &stream_mem.ctl, stream_mem.data, CAP);
    pthread_t t;
    pthread_create(&t, NULL, stream_producer, &p);
    uint8_t buf[CAP];
    struct shm_rec_hdr h;
    uint32_t seed = 1, expect = 0;
    int bad = 0;
    while (expect < STREAM_N && !bad) {
        int r = shm_ring_cons_next(&c, &h, buf, sizeof(buf));
        if (r < 0) {
            fprintf(stderr, "stream: consumer error %d at record %u\n", r, expect);
            bad = 1;
            break;
        }
        if (r == 0) {
            shm_ring_cons_release(&c);
            sched_yield();
            continue;
        }
        seed = seed * 1103515245u + 12345u;
        size_t len = 4 + (seed >> 16) % 700;
        uint32_t got;
        memcpy(&got, buf, 4);
        if (got != expect || h.len != ((8 + len + 7) & ~7u) || (len > 4 && buf[len - 1] != (uint8_t)(expect & 0xff)) ||
            (len > 4 && buf[4] != (uint8_t)(expect & 0xff))) {
            fprintf(stderr, "stream: record %u wrong (got id %u len %u)\n", expect, got, h.len);
            bad = 1;
        }
        expect++;
        if (expect % 5 == 0)
            shm_ring_cons_release(&c);
    }
    shm_ring_cons_release(&c);
    atomic_store(&stream_stop, 1);
    void *ret;
    pthread_join(t, &ret);
    CHECK(!bad);
    CHECK(ret == NULL);
    CHECK(expect == STREAM_N);
}

static void test_region(void)
{
    struct shm_region r, a;
    CHECK(shm_region_create(&r, 42, 4096, 8192, 3 * 4096) == 0);
    CHECK(shm_region_create(&a, 42, 5000, 8192, 0) == -EINVAL);
    CHECK(ftruncate(r.fd, 1 << 20) < 0 && errno == EPERM);
    int fd2 = dup(r.fd);
    const char *why = NULL;
    CHECK(shm_region_attach(&a, fd2, &why) == 0);
    CHECK(a.layout.region_size == r.layout.region_size && a.layout.data_size == 3 * 4096);
    /* Both mappings see the same ring. */
    struct shm_ring_prod p;
    struct shm_ring_cons c;
    shm_ring_prod_init(&p, shm_region_req_ctl(&a), a.base + a.layout.req_data_off, a.layout.req_cap);
    shm_ring_cons_init(&c, shm_region_req_ctl(&r), r.base + r.layout.req_data_off, r.layout.req_cap);
    void *body;
    CHECK(shm_ring_prod_alloc(&p, 5, 16, &body) == 0);
    memcpy(body, "0123456789abcdef", 16);
    shm_ring_prod_publish(&p);
    uint8_t buf[4096];
    struct shm_rec_hdr h;
    CHECK(shm_ring_cons_next(&c, &h, buf, sizeof(buf)) == 1 && memcmp(buf, "0123456789abcdef", 16) == 0);
    shm_region_destroy(&a);

    /* Corrupt header copies are refused. */
    struct shm_region_hdr hh;
    struct shm_layout l;
    memcpy(&hh, r.base, sizeof(hh));
    CHECK(shm_region_hdr_validate(&hh, r.layout.region_size, &l, NULL) == 0);
    CHECK(shm_region_hdr_validate(&hh, r.layout.region_size - 1, &l, NULL) == -EPROTO);
    hh.evt_cap = 3000;
    CHECK(shm_region_hdr_validate(&hh, r.layout.region_size, &l, NULL) == -EPROTO);
    memcpy(&hh, r.base, sizeof(hh));
    hh.abi_version = 2;
    CHECK(shm_region_hdr_validate(&hh, r.layout.region_size, &l, &why) == -EPROTO && why);
    shm_region_destroy(&r);

    /* An unsealed memfd is refused at attach. */
    int fd = memfd_create("x", MFD_CLOEXEC);
    CHECK(fd >= 0 && ftruncate(fd, 65536) == 0);
    CHECK(shm_region_attach(&a, fd, &why) == -EPROTO);
    close(fd);
}

static void test_wire(void)
{
    uint8_t buf[SHM_WIRE_MAX];
    struct shm_wire_msg m;
    const char *why;
    struct shm_wire_hello hello = { .proto_version = 1, .req_ring_bytes = 4096 };
    strcpy(hello.client_name, "test");
    int n = shm_wire_encode(buf, SHM_WIRE_HELLO, 0, &hello, sizeof(hello));
    CHECK(n == 16 + 56);
    CHECK(shm_wire_decode(buf, (size_t)n, 0, &m, &why) == 0 && m.type == SHM_WIRE_HELLO &&
          m.u.hello.req_ring_bytes == 4096);
    CHECK(shm_wire_decode(buf, (size_t)n, 1, &m, &why) == -EPROTO);       /* unexpected fd */
    CHECK(shm_wire_decode(buf, (size_t)n - 1, 0, &m, &why) == -EPROTO);   /* length mismatch */
    buf[4] = 2;                                                           /* version */
    CHECK(shm_wire_decode(buf, (size_t)n, 0, &m, &why) == -EPROTO);
    buf[4] = 1;
    memset(buf + 16 + 24, 'x', 32);                                       /* unterminated name */
    CHECK(shm_wire_decode(buf, (size_t)n, 0, &m, &why) == -EPROTO);
    n = shm_wire_encode(buf, 99, 0, NULL, 0);
    CHECK(shm_wire_decode(buf, (size_t)n, 0, &m, &why) == -EBADMSG);
    n = shm_wire_encode_error(buf, -EPERM, "uid 65534 is not allowed");
    CHECK(shm_wire_decode(buf, (size_t)n, 0, &m, &why) == 0 && m.u.error.code == -EPERM &&
          strcmp(m.u.error.msg, "uid 65534 is not allowed") == 0);
    char big[5000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    n = shm_wire_encode_error(buf, -E2BIG, big);
    CHECK(n == SHM_WIRE_MAX && shm_wire_decode(buf, (size_t)n, 0, &m, &why) == 0);
}

static void test_proto(void)
{
    _Alignas(8) uint8_t b[512];
    struct shm_req_submit s = { .req_id = 7, .kind = SHM_PROMPT_RAW, .max_tokens = 5, .top_p = 1,
                                .repeat_penalty = 1, .n_stop_ids = 2, .n_stop_strs = 2,
                                .stop_strs_len = 2 + 3 + 2 + 1, .payload_len = 5 };
    size_t n = shm_proto_submit_size(0, 2, s.stop_strs_len, 5);
    memcpy(b, &s, sizeof(s));
    uint32_t ids[2] = { 11, 12 };
    memcpy(b + 80, ids, 8);
    uint8_t blob[] = { 3, 0, 'e', 'n', 'd', 1, 0, '\n' };
    memcpy(b + 88, blob, sizeof(blob));
    memcpy(b + 96, "hello", 5);
    struct shm_submit_view v;
    const char *why = NULL;
    CHECK(shm_proto_decode_submit(b, n, 0, &v, &why) == 0);
    CHECK(shm_proto_decode_submit(b, (n + 7) & ~7u, 0, &v, &why) == 0);
    CHECK(memcmp(v.payload, "hello", 5) == 0 && v.stop_ids[1] == 12);
    uint32_t pos = 0, sl;
    const uint8_t *sp;
    CHECK(shm_stop_str_next(&v, &pos, &sp, &sl) == 1 && sl == 3 && memcmp(sp, "end", 3) == 0);
    CHECK(shm_stop_str_next(&v, &pos, &sp, &sl) == 1 && sl == 1 && sp[0] == '\n');
    CHECK(shm_stop_str_next(&v, &pos, &sp, &sl) == 0);
    CHECK(shm_proto_decode_submit(b, n - 1, 0, &v, &why) == -EPROTO);
    CHECK(shm_proto_decode_submit(b, n + 8, 0, &v, &why) == -EPROTO);
    b[88] = 200;   /* stop string runs past the blob */
    CHECK(shm_proto_decode_submit(b, n, 0, &v, &why) == -EPROTO);
    b[88] = 3;
    /* Data-area payload bounds. */
    s.payload_loc = SHM_LOC_DATA;
    s.data_off = 4096 - 4;
    memcpy(b, &s, sizeof(s));
    n = shm_proto_submit_size(0, 2, s.stop_strs_len, 0);
    CHECK(shm_proto_decode_submit(b, n, 4096, &v, &why) == -EPROTO);
    s.data_off = 4096 - 5;
    memcpy(b, &s, sizeof(s));
    CHECK(shm_proto_decode_submit(b, n, 4096, &v, &why) == 0 && v.payload == NULL);
    s.data_off = UINT64_MAX - 2;
    memcpy(b, &s, sizeof(s));
    CHECK(shm_proto_decode_submit(b, n, 4096, &v, &why) == -EPROTO);

    struct shm_evt_tokens t = { .req_id = 1, .n_tokens = 2, .text_len = 3 };
    memcpy(b, &t, sizeof(t));
    uint32_t tids[4] = { 5, 6, 1, 2 };
    memcpy(b + 24, tids, 16);
    memcpy(b + 40, "abc", 3);
    struct shm_tokens_view tv;
    CHECK(shm_proto_decode_tokens(b, shm_proto_tokens_size(2, 3), &tv, &why) == 0);
    CHECK(tv.ids[1] == 6 && tv.text[2] == 'c');
    tids[3] = 3;
    memcpy(b + 24, tids, 16);
    CHECK(shm_proto_decode_tokens(b, shm_proto_tokens_size(2, 3), &tv, &why) == -EPROTO);

    struct shm_evt_done d = { .req_id = 1, .finish = SHM_FINISH_ERROR, .error = -EINVAL, .msg_len = 4 };
    memcpy(b, &d, sizeof(d));
    memcpy(b + 64, "oops", 4);
    const char *msg;
    struct shm_evt_done dd;
    CHECK(shm_proto_decode_done(b, 68, &dd, &msg, &why) == 0 && memcmp(msg, "oops", 4) == 0);
    CHECK(shm_proto_decode_done(b, 80, &dd, &msg, &why) == -EPROTO);
}

/* Build a SUBMIT with the extension: fixed part, ext, one stop id, "hi". */
static size_t ext_record(uint8_t *b, const struct shm_req_submit *s, const struct shm_req_submit_ext *x)
{
    size_t n = shm_proto_submit_size(s->flags, s->n_stop_ids, 0, s->payload_len);
    memset(b, 0, 256);
    memcpy(b, s, sizeof(*s));
    memcpy(b + 80, x, sizeof(*x));
    uint32_t id = 42;
    memcpy(b + 96, &id, 4);
    memcpy(b + 100, "hi", 2);
    return n;
}

/* The extension: accepted when well-formed, every malformed field refused
 * with a message naming it; a record without SHM_REQ_F_EXT decodes to an
 * all-zero extension (old clients keep their meaning). */
static void test_proto_ext(void)
{
    _Alignas(8) uint8_t b[256];
    const struct shm_req_submit base = { .req_id = 9, .kind = SHM_PROMPT_RAW, .flags = SHM_REQ_F_EXT,
                                         .temperature = 0.5f, .top_p = 1, .repeat_penalty = 1,
                                         .n_stop_ids = 1, .payload_len = 2 };
    const struct shm_req_submit_ext xbase = { .size = sizeof(struct shm_req_submit_ext),
                                              .presence_penalty = 1.5f, .frequency_penalty = -0.25f };
    struct shm_req_submit s = base;
    struct shm_req_submit_ext x = xbase;
    struct shm_submit_view v;
    const char *why = NULL;
    size_t n = ext_record(b, &s, &x);
    CHECK(n == 102);
    CHECK(shm_proto_decode_submit(b, n, 0, &v, &why) == 0);
    CHECK(v.ext.size == 16 && v.ext.presence_penalty == 1.5f && v.ext.frequency_penalty == -0.25f);
    CHECK(v.stop_ids[0] == 42 && memcmp(v.payload, "hi", 2) == 0);
    CHECK(shm_proto_decode_submit(b, 104, 0, &v, &why) == 0);        /* padded to 8 */
    CHECK(shm_proto_decode_submit(b, n - 1, 0, &v, &why) == -EPROTO);
    /* Without the flag the same bytes are 16 too many. */
    s.flags = 0;
    ext_record(b, &s, &x);
    CHECK(shm_proto_decode_submit(b, n, 0, &v, &why) == -EPROTO);
    s.flags = 0;
    s.n_stop_ids = 0;
    memcpy(b, &s, sizeof(s));
    memcpy(b + 80, "hi", 2);
    CHECK(shm_proto_decode_submit(b, 82, 0, &v, &why) == 0);
    CHECK(v.ext.size == 0 && v.ext.model_defaults == 0 && v.ext.presence_penalty == 0.0f);

    /* Every model-default bit, with the fields it names zeroed. */
    s = base;
    s.temperature = s.top_p = s.min_p = s.repeat_penalty = 0.0f;
    s.top_k = 0;
    x = xbase;
    x.model_defaults = SHM_DEF_ALL;
    x.presence_penalty = 0.0f;
    n = ext_record(b, &s, &x);
    CHECK(shm_proto_decode_submit(b, n, 0, &v, &why) == 0 && v.ext.model_defaults == SHM_DEF_ALL);

    /* Each case breaks one thing; the message must name the field. */
    static const char *const needle[] = {
        "ext.size", "ext.size", "ext.model_defaults", "ext.presence_penalty", "ext.presence_penalty",
        "ext.presence_penalty", "ext.frequency_penalty", "ext.frequency_penalty", "SUBMIT temperature",
        "SUBMIT top_k", "SUBMIT top_p", "SUBMIT min_p", "SUBMIT repeat_penalty", "ext.presence_penalty must be 0",
        "flags",
    };
    for (int i = 0; i < (int)(sizeof(needle) / sizeof(needle[0])); i++) {
        s = base;
        x = xbase;
        switch (i) {
        case 0: x.size = 0; break;
        case 1: x.size = 24; break;
        case 2: x.model_defaults = 0x40; break;
        case 3: x.presence_penalty = __builtin_nanf(""); break;
        case 4: x.presence_penalty = __builtin_inff(); break;
        case 5: x.presence_penalty = 2.5f; break;
        case 6: x.frequency_penalty = -3.0f; break;
        case 7: x.frequency_penalty = -__builtin_inff(); break;
        case 8: x.model_defaults = SHM_DEF_TEMPERATURE; s.temperature = 0.7f; break;
        case 9: x.model_defaults = SHM_DEF_TOP_K; s.top_k = 20; break;
        case 10: x.model_defaults = SHM_DEF_TOP_P; s.top_p = 0.9f; break;
        case 11: x.model_defaults = SHM_DEF_MIN_P; s.min_p = 0.1f; break;
        case 12: x.model_defaults = SHM_DEF_REPEAT_PENALTY; break;   /* base has 1 */
        case 13: x.model_defaults = SHM_DEF_PRESENCE_PENALTY; break; /* xbase has 1.5 */
        case 14: s.flags |= 0x8; break;
        }
        n = ext_record(b, &s, &x);
        why = NULL;
        int rc = shm_proto_decode_submit(b, n, 0, &v, &why);
        if (rc != -EPROTO || !why || !strstr(why, needle[i])) {
            fprintf(stderr, "ext case %d: rc %d, why '%s' (want -EPROTO naming %s)\n", i, rc, why ? why : "(none)",
                    needle[i]);
            failures++;
        }
    }
}

int main(void)
{
    test_ring_basic();
    test_ring_forged();
    test_ring_stream();
    test_region();
    test_wire();
    test_proto();
    test_proto_ext();
    if (failures) {
        fprintf(stderr, "test-shm: %d failures\n", failures);
        return 1;
    }
    printf("test-shm: ok\n");
    return 0;
}
