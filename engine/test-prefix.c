/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prefix cache (engine/prefix-cache.c) and the state snapshot API
 * (engine/state.h) on the tiny-w4g32 fixture, reference backend:
 *   - every restore is invisible: the last-token logits after restoring a
 *     prefix and prefilling the rest equal a full recompute bit for bit
 *     (tolerance 0: the reference backend computes every row and every GDN
 *     step the same way whatever the split; the measured maximum absolute
 *     difference is printed), for many (prefix, suffix) splits, on, between
 *     and off snapshot positions, across sequences, after eviction, under
 *     concurrency and after a generation-time insert;
 *   - the restored length equals what the snapshot policy promises (an
 *     oracle replays the policy), and peek agrees;
 *   - the defaults (budget, interval 512); per-uid isolation and the
 *     share option; the byte budget, LRU order
 *     and the counters; refusal of bad input before the sequence is
 *     touched;
 *   - failures: a snapshot copy that fails at any point (first byte, inside
 *     the GDN image, inside the KV rows, while splitting an edge) leaves the
 *     cache exactly as it was; a forward pass failing or being cancelled
 *     midway keeps only complete snapshots of earlier positions.
 * Failures are injected through a pass-through wrapper of the reference
 * backend handed to model_load as backend_instance. The state API also
 * runs on the fast backend, whose KV cache is f16: images stay byte-exact.
 * Exits 77 when tests/data has no fixtures.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "engine/model.h"
#include "engine/prefix-cache.h"
#include "engine/state.h"
#include "kernels/backend.h"

#define TOL 0.0                     /* same backend, same per-row arithmetic */
#define MAX_IDS 1016                /* the fixture's prompts stay below the vision ids */

static char model_dir[1200];
static struct model *model;
static int32_t V;
static struct model_state_geom geom;

/* ---- failure-injecting wrapper around the reference backend ---- */

static struct kb_backend *inner;
static struct kb_backend_ops wrap_ops;
static struct kb_backend wrap_be;
static atomic_long dl_count;        /* downloads so far                     */
static atomic_long dl_fail_at;      /* fail download number N (1-based), 0 off */
static atomic_long gdn_count;
static atomic_long gdn_fail_at;     /* fail gdn call N, 0 off               */
static atomic_long gdn_cancel_at;   /* set `cancel` at gdn call N, 0 off    */
static atomic_bool cancel;

static int wrap_download(struct kb_backend *be, void *dst, const void *src, size_t bytes)
{
    long k = atomic_fetch_add(&dl_count, 1) + 1;
    long at = atomic_load(&dl_fail_at);
    if (at && k >= at)
        return -EIO;
    return inner->ops->download(inner, dst, src, bytes);
}

static int wrap_gdn(struct kb_backend *be, const struct kb_gdn *g, struct kb_gdn_state *st,
                    const float *qkv, const float *z, const float *b, const float *a,
                    int32_t n, float *y)
{
    long k = atomic_fetch_add(&gdn_count, 1) + 1;
    if (atomic_load(&gdn_fail_at) && k == atomic_load(&gdn_fail_at))
        return -EIO;
    if (atomic_load(&gdn_cancel_at) && k == atomic_load(&gdn_cancel_at))
        atomic_store(&cancel, true);
    return inner->ops->gdn(inner, g, st, qkv, z, b, a, n, y);
}

static void injections_off(void)
{
    atomic_store(&dl_fail_at, 0);
    atomic_store(&gdn_fail_at, 0);
    atomic_store(&gdn_cancel_at, 0);
    atomic_store(&cancel, false);
    atomic_store(&dl_count, 0);
    atomic_store(&gdn_count, 0);
}

/* ---- helpers ---- */

static void ids_fill(int32_t *ids, int64_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids[i] = (int32_t)(x % MAX_IDS);
    }
}

static struct model_seq *seq_new(int64_t capacity)
{
    struct model_seq *s = NULL;
    struct engine_error err = { 0 };
    if (model_seq_new(model, capacity, &s, &err))
        fail_msg("model_seq_new: %s", err.msg);
    return s;
}

/* Last-token logits of ids[0..n) computed from scratch. */
static void recompute(const int32_t *ids, int64_t n, float *logits)
{
    struct model_seq *s = seq_new(1024);
    struct engine_error err = { 0 };
    struct model_prefill_params p = { .logits = logits };
    if (model_prefill(model, s, ids, n, &p, &err))
        fail_msg("model_prefill: %s", err.msg);
    model_seq_free(s);
}

static double max_diff(const float *a, const float *b)
{
    double d = 0;
    for (int32_t i = 0; i < V; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (e > d || e != e)
            d = e;
    }
    return d;
}

static double worst;                 /* largest difference seen in a test   */
static int compared;

/* Compare the cache's logits with a recompute; the tolerance is 0. */
static void expect_exact(const int32_t *ids, int64_t n, const float *got, const char *what)
{
    float *want = malloc((size_t)V * sizeof(float));
    assert_non_null(want);
    recompute(ids, n, want);
    double d = max_diff(want, got);
    if (d > worst)
        worst = d;
    compared++;
    if (d > TOL || memcmp(want, got, (size_t)V * sizeof(float)))
        fail_msg("%s: n=%lld max |diff| %.3g > tolerance %.1g", what, (long long)n, d, TOL);
    free(want);
}

static void report(const char *test)
{
    printf("%s: %d restores compared with a full recompute, max |logit diff| = %.3g "
           "(tolerance %.1g)\n", test, compared, worst, TOL);
    worst = 0;
    compared = 0;
}

static struct prefix_cache *cache_new(uint64_t budget, int32_t interval, bool share)
{
    struct prefix_cache_params p = { .budget_bytes = budget, .interval = interval,
                                     .share_across_uids = share };
    struct prefix_cache *c = NULL;
    struct engine_error err = { 0 };
    if (prefix_cache_new(model, &p, &c, &err))
        fail_msg("prefix_cache_new: %s", err.msg);
    return c;
}

/* prefix_cache_prefill that must succeed; returns the restored length. */
static int64_t run(struct prefix_cache *c, struct model_seq *s, uint32_t uid, const int32_t *ids,
                   int64_t n, const int64_t *b, int32_t nb, uint32_t flags, float *logits)
{
    struct prefix_cache_request req = { .uid = uid, .flags = flags, .boundaries = b,
                                        .n_boundaries = nb };
    struct engine_error err = { 0 };
    int64_t reused = -1;
    if (prefix_cache_prefill(c, s, &req, ids, n, logits, &reused, &err))
        fail_msg("prefix_cache_prefill: %s", err.msg);
    assert_int_equal(model_seq_len(s), n);
    return reused;
}

/* ---- an oracle of the snapshot policy (prefix-cache.h) ---- */

#define ORACLE_MAX 4096
static struct { int32_t *ids; int64_t n; } oracle[ORACLE_MAX];
static int oracle_n;

static void oracle_add(const int32_t *ids, int64_t p)
{
    for (int i = 0; i < oracle_n; i++)
        if (oracle[i].n == p && !memcmp(oracle[i].ids, ids, (size_t)p * sizeof(int32_t)))
            return;
    assert_true(oracle_n < ORACLE_MAX);
    oracle[oracle_n].ids = malloc((size_t)p * sizeof(int32_t));
    assert_non_null(oracle[oracle_n].ids);
    memcpy(oracle[oracle_n].ids, ids, (size_t)p * sizeof(int32_t));
    oracle[oracle_n++].n = p;
}

/* Longest stored snapshot that is a prefix of ids and shorter than n. */
static int64_t oracle_expect(const int32_t *ids, int64_t n)
{
    int64_t best = 0;
    for (int i = 0; i < oracle_n; i++)
        if (oracle[i].n < n && oracle[i].n > best &&
            !memcmp(oracle[i].ids, ids, (size_t)oracle[i].n * sizeof(int32_t)))
            best = oracle[i].n;
    return best;
}

/* Record the snapshots a prefill from `from` stores: boundaries, every
 * `interval` after a boundary, the end. */
static void oracle_prefill(const int32_t *ids, int64_t n, const int64_t *b, int32_t nb,
                           int32_t interval, int64_t from)
{
    int64_t prev = 0;
    for (int32_t i = 0; i <= nb; i++) {
        int64_t a = i < nb ? b[i] : n;
        if (a == 0)
            continue;
        for (int64_t q = prev + interval; interval > 0 && q < a; q += interval)
            if (q > from)
                oracle_add(ids, q);
        if (a > from)
            oracle_add(ids, a);
        prev = a;
    }
}

static void oracle_clear(void)
{
    for (int i = 0; i < oracle_n; i++)
        free(oracle[i].ids);
    oracle_n = 0;
}

/* ---- tests ---- */

/* The state API: a host image restores a sequence exactly; copy forks. */
static void test_state_api(void **unused)
{
    (void)unused;
    struct engine_error err = { 0 };
    int32_t ids[101];
    ids_fill(ids, 101, 1);
    struct model_seq *a = seq_new(256), *b = seq_new(128), *c = seq_new(128), *tiny = seq_new(50);
    assert_int_equal(model_prefill(model, a, ids, 100, NULL, &err), 0);

    void *gdn = malloc(geom.gdn_bytes);
    unsigned char *kv = malloc(100 * geom.kv_token_bytes);
    assert_true(gdn && kv);
    assert_int_equal(model_seq_gdn_save(a, gdn, &err), 0);
    assert_int_equal(model_seq_kv_save(a, 0, 60, kv, &err), 0);
    assert_int_equal(model_seq_kv_save(a, 60, 40, kv + 60 * geom.kv_token_bytes, &err), 0);
    assert_int_equal(model_seq_kv_save(a, 90, 11, kv, &err), -EINVAL);     /* past len */

    /* restore in two KV pieces with a different split than the save; the
     * image is the backend's bytes (rows of kv_dim elements) */
    const size_t rb = (size_t)geom.kv_dim * geom.kv_elem_bytes;
    const unsigned char *k0 = kv;
    unsigned char *piece = malloc(100 * geom.kv_token_bytes);
    assert_non_null(piece);
    /* re-slice [0,100) image (per-layer blocks) into [0,30) and [30,100) */
    for (int part = 0; part < 2; part++) {
        const int64_t p0 = part ? 30 : 0, pn = part ? 70 : 30;
        unsigned char *dst = piece;
        for (int32_t blk = 0; blk < 2 * geom.n_attn_layers; blk++) {
            /* the saved image came in two calls: rows [0,60) then [60,100) */
            for (int64_t r = p0; r < p0 + pn; r++) {
                const unsigned char *src = r < 60
                    ? k0 + (size_t)((int64_t)blk * 60 + r) * rb
                    : k0 + 60 * geom.kv_token_bytes + (size_t)((int64_t)blk * 40 + (r - 60)) * rb;
                memcpy(dst, src, rb);
                dst += rb;
            }
        }
        assert_int_equal(model_seq_kv_load(b, p0, pn, piece, &err), 0);
    }
    assert_int_equal(model_seq_gdn_load(b, gdn, 100, &err), 0);
    assert_int_equal(model_seq_len(b), 100);
    assert_int_equal(model_seq_kv_load(b, 99, 1, piece, &err), -EINVAL);  /* row in use */
    assert_int_equal(model_seq_gdn_load(b, gdn, 100, &err), -EINVAL);    /* not empty */

    assert_int_equal(model_seq_copy(c, a, &err), 0);
    assert_int_equal(model_seq_len(c), 100);
    assert_int_equal(model_seq_copy(tiny, a, &err), -ENOSPC);
    assert_int_equal(model_seq_copy(a, a, &err), -EINVAL);

    /* the next token's logits agree on all three */
    float *la = malloc((size_t)V * 3 * sizeof(float));
    assert_non_null(la);
    struct model_seq *seqs[3] = { a, b, c };
    for (int i = 0; i < 3; i++)
        assert_int_equal(model_decode(model, &seqs[i], &ids[100], 1, la + (size_t)i * V, &err), 0);
    double d1 = max_diff(la, la + V), d2 = max_diff(la, la + 2 * (size_t)V);
    printf("state API: restored / copied sequence vs original, next-token max |diff| = %.3g / %.3g "
           "(tolerance 0)\n", d1, d2);
    assert_memory_equal(la, la + V, (size_t)V * sizeof(float));
    assert_memory_equal(la, la + 2 * (size_t)V, (size_t)V * sizeof(float));
    expect_exact(ids, 101, la, "state API");
    free(la);
    free(piece);
    free(gdn);
    free(kv);
    model_seq_free(a);
    model_seq_free(b);
    model_seq_free(c);
    model_seq_free(tiny);
    report("state API");
}

/* The same snapshot / restore / copy on the fast backend ("cpu"), whose KV
 * cache holds f16 (KB_CAP_KV_F16): the geometry counts 2 bytes per
 * element, a saved image loads back byte for byte, and the next token's
 * logits of the restored and the copied sequence equal the original's bit
 * for bit (tolerance 0: same backend, same bytes, same one-token step). */
static void test_state_api_f16_kv(void **unused)
{
    (void)unused;
    struct model_params mp = MODEL_PARAMS_DEFAULT;
    mp.backend = "cpu";
    mp.n_threads = 2;
    struct model *fm = NULL;
    struct engine_error err = { 0 };
    if (model_load(model_dir, &mp, &fm, &err))
        fail_msg("model_load (cpu): %s", err.msg);
    struct model_state_geom g;
    model_state_geom_get(fm, &g);
    if (g.kv_elem_bytes != 2) {
        print_message("  skip: the cpu backend keeps an fp32 KV cache here (no SIMD level)\n");
        model_free(fm);
        skip();
    }
    printf("state API (cpu, f16 KV): KV %llu bytes/token vs %llu on cpu-ref\n",
           (unsigned long long)g.kv_token_bytes, (unsigned long long)geom.kv_token_bytes);
    assert_int_equal(g.kv_dim, geom.kv_dim);
    assert_int_equal(2 * g.kv_token_bytes, geom.kv_token_bytes);
    int32_t ids[101];
    ids_fill(ids, 101, 3);
    struct model_seq *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(model_seq_new(fm, 128, &a, &err), 0);
    assert_int_equal(model_seq_new(fm, 128, &b, &err), 0);
    assert_int_equal(model_seq_new(fm, 128, &c, &err), 0);
    assert_int_equal(model_prefill(fm, a, ids, 100, NULL, &err), 0);
    void *gdn = malloc(g.gdn_bytes);
    unsigned char *kv = malloc(100 * g.kv_token_bytes), *back = malloc(100 * g.kv_token_bytes);
    assert_true(gdn && kv && back);
    assert_int_equal(model_seq_gdn_save(a, gdn, &err), 0);
    assert_int_equal(model_seq_kv_save(a, 0, 100, kv, &err), 0);
    assert_int_equal(model_seq_kv_load(b, 0, 100, kv, &err), 0);
    assert_int_equal(model_seq_gdn_load(b, gdn, 100, &err), 0);
    assert_int_equal(model_seq_kv_save(b, 0, 100, back, &err), 0);
    assert_memory_equal(kv, back, 100 * g.kv_token_bytes);
    assert_int_equal(model_seq_copy(c, a, &err), 0);
    assert_int_equal(model_seq_kv_save(c, 0, 100, back, &err), 0);
    assert_memory_equal(kv, back, 100 * g.kv_token_bytes);
    float *la = malloc((size_t)V * 3 * sizeof(float));
    assert_non_null(la);
    struct model_seq *seqs[3] = { a, b, c };
    for (int i = 0; i < 3; i++)
        assert_int_equal(model_decode(fm, &seqs[i], &ids[100], 1, la + (size_t)i * V, &err), 0);
    printf("state API (cpu, f16 KV): restored / copied vs original, next-token max |diff| = "
           "%.3g / %.3g (tolerance 0)\n", max_diff(la, la + V), max_diff(la, la + 2 * (size_t)V));
    assert_memory_equal(la, la + V, (size_t)V * sizeof(float));
    assert_memory_equal(la, la + 2 * (size_t)V, (size_t)V * sizeof(float));
    free(la);
    free(gdn);
    free(kv);
    free(back);
    model_seq_free(a);
    model_seq_free(b);
    model_seq_free(c);
    model_free(fm);
}

static void test_boundaries_find(void **unused)
{
    (void)unused;
    const int32_t ids[] = { 7, 1, 2, 7, 3, 7, 7, 4 };
    int64_t out[8];
    assert_int_equal(prefix_cache_boundaries_find(ids, 8, 7, out, 8), 3);
    assert_int_equal(out[0], 3);
    assert_int_equal(out[1], 5);
    assert_int_equal(out[2], 6);
    assert_int_equal(prefix_cache_boundaries_find(ids, 8, 7, out, 1), 3);   /* count beyond cap */
    assert_int_equal(prefix_cache_boundaries_find(ids, 8, 9, out, 8), 0);
    assert_int_equal(prefix_cache_boundaries_find(NULL, 8, 7, out, 8), 0);
}

/* The defaults: budget min(25% MemAvailable, 8 GiB), interval 512. */
static void test_defaults(void **unused)
{
    (void)unused;
    const uint64_t d = prefix_cache_budget_default();
    printf("default budget here: %.1f MiB\n", (double)d / (1024.0 * 1024.0));
    assert_true(d > 0 && d <= PREFIX_CACHE_BUDGET_CAP);
    struct prefix_cache *c = NULL;
    struct engine_error err = { 0 };
    assert_int_equal(prefix_cache_new(model, NULL, &c, &err), 0);
    struct prefix_cache_stats st;
    prefix_cache_stats_get(c, &st);
    assert_true(st.budget_bytes > 0 && st.budget_bytes <= PREFIX_CACHE_BUDGET_CAP);
    static int32_t p[PREFIX_CACHE_INTERVAL_DEFAULT + 40];
    const int64_t n = PREFIX_CACHE_INTERVAL_DEFAULT + 20;
    ids_fill(p, n + 20, 11);
    struct model_seq *s = seq_new(n + 20);
    assert_int_equal(run(c, s, 1, p, n, NULL, 0, 0, NULL), 0);
    prefix_cache_stats_get(c, &st);
    assert_int_equal(st.snapshots, 2);                       /* 512 and the end */
    assert_int_equal(prefix_cache_peek(c, 1, p, n), PREFIX_CACHE_INTERVAL_DEFAULT);
    assert_int_equal(prefix_cache_peek(c, 1, p, n + 20), n);
    model_seq_free(s);
    prefix_cache_free(c);
}

/* Many (prefix, suffix) splits of one cached prompt: on, between and off
 * the snapshot positions, with several suffix lengths. */
static void test_splits(void **unused)
{
    (void)unused;
    const int32_t interval = 16;
    struct prefix_cache *c = cache_new(1ull << 30, interval, false);
    struct model_seq *s = seq_new(512);
    float *lg = malloc((size_t)V * sizeof(float));
    assert_non_null(lg);
    int32_t a[110], p[200];
    ids_fill(a, 110, 2);
    const int64_t b[] = { 30, 61, 90 };
    assert_int_equal(run(c, s, 1, a, 110, b, 3, 0, lg), 0);
    oracle_prefill(a, 110, b, 3, interval, 0);
    expect_exact(a, 110, lg, "first prompt");

    /* split points on, next to and between the snapshots 16 30 46 61 77 90
     * 106 110; the suffix lengths cycle (the 70-token one crosses a 64-row
     * chunk) */
    const int64_t splits[] = { 1, 15, 16, 17, 30, 31, 46, 50, 61, 62, 89, 90, 105, 106,
                               109, 110 };
    const int64_t suffixes[] = { 1, 3, 70 };
    for (size_t i = 0; i < sizeof(splits) / sizeof(splits[0]); i++)
        for (size_t j = i % 3; j == i % 3; j++) {
            const int64_t L = splits[i], n = L + suffixes[j];
            memcpy(p, a, (size_t)L * sizeof(int32_t));
            ids_fill(p + L, suffixes[j], 1000 + i * 10 + j);
            if (L < 110 && p[L] == a[L])      /* keep the divergence at L */
                p[L] = (p[L] + 1) % MAX_IDS;
            const int64_t want = oracle_expect(p, n);
            assert_int_equal(prefix_cache_peek(c, 1, p, n), want);
            const int64_t got = run(c, s, 1, p, n, NULL, 0, 0, lg);
            if (got != want)
                fail_msg("split %lld + %lld: restored %lld, the policy promises %lld",
                         (long long)L, (long long)suffixes[j], (long long)got, (long long)want);
            oracle_prefill(p, n, NULL, 0, interval, got);
            expect_exact(p, n, lg, "split");
        }
    /* the same prompt again: restores the last snapshot before its end */
    const int64_t again = run(c, s, 1, a, 110, b, 3, 0, lg);
    assert_int_equal(again, oracle_expect(a, 110));
    assert_int_equal(again, 106);           /* the first prompt's interval point */
    expect_exact(a, 110, lg, "same prompt");
    /* opt-out: nothing restored, nothing stored */
    struct prefix_cache_stats st0, st1;
    prefix_cache_stats_get(c, &st0);
    assert_int_equal(run(c, s, 1, a, 100, NULL, 0, PREFIX_CACHE_BYPASS, lg), 0);
    prefix_cache_stats_get(c, &st1);
    assert_int_equal(st1.snapshots_stored, st0.snapshots_stored);
    assert_int_equal(st1.lookups, st0.lookups);
    expect_exact(a, 100, lg, "bypass");
    printf("splits: %llu lookups, %llu hits, %llu tokens reused, %llu prefilled, %llu snapshots, "
           "%llu nodes, %.1f KiB held\n", (unsigned long long)st1.lookups,
           (unsigned long long)st1.hits, (unsigned long long)st1.tokens_reused,
           (unsigned long long)st1.tokens_prefilled, (unsigned long long)st1.snapshots,
           (unsigned long long)st1.nodes, (double)st1.bytes_held / 1024);
    assert_true(st1.hits > 0 && st1.misses > 0);
    oracle_clear();
    free(lg);
    model_seq_free(s);
    prefix_cache_free(c);
    report("splits");
}

/* Different sequences (sessions) share the cache; one sequence is reused
 * for unrelated prompts; a decode-time insert is restored exactly. */
static void test_sessions_and_insert(void **unused)
{
    (void)unused;
    struct engine_error err = { 0 };
    struct prefix_cache *c = cache_new(1ull << 30, -1, false);
    struct model_seq *s1 = seq_new(400), *s2 = seq_new(300), *small = seq_new(100);
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t p[200];
    assert_non_null(lg);
    ids_fill(p, 200, 3);
    const int64_t b[] = { 30, 70 };
    assert_int_equal(run(c, s1, 5, p, 90, b, 2, 0, lg), 0);
    assert_int_equal(run(c, s2, 5, p, 120, NULL, 0, 0, lg), 90);    /* end of s1's prompt */
    expect_exact(p, 120, lg, "other session");
    int32_t q[80];
    memcpy(q, p, 80 * sizeof(int32_t));
    q[75] = (q[75] + 7) % MAX_IDS;
    assert_int_equal(run(c, s1, 5, q, 80, NULL, 0, 0, lg), 70);     /* a boundary */
    expect_exact(q, 80, lg, "reused sequence");
    /* too long for the sequence: refused before anything is touched */
    struct prefix_cache_request req = { .uid = 5 };
    assert_int_equal(prefix_cache_prefill(c, small, &req, p, 150, lg, NULL, &err), -ENOSPC);

    /* generation: greedy decode 12 tokens, insert, the next prompt hits */
    int64_t n = 120;
    assert_int_equal(run(c, s2, 5, p, n, NULL, 0, 0, lg), 90);
    int32_t all[200];
    memcpy(all, p, (size_t)n * sizeof(int32_t));
    for (int i = 0; i < 12; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < MAX_IDS; v++)
            if (lg[v] > lg[best])
                best = v;
        all[n++] = best;
        assert_int_equal(model_decode(model, &s2, &best, 1, lg, &err), 0);
    }
    assert_int_equal(prefix_cache_insert(c, s2, 5, all, n - 1, &err), -EINVAL);  /* wrong n */
    assert_int_equal(prefix_cache_insert(c, s2, 5, all, n, &err), 0);
    ids_fill(all + n, 20, 33);
    assert_int_equal(run(c, s1, 5, all, n + 20, NULL, 0, 0, lg), n);
    expect_exact(all, n + 20, lg, "after a generation-time insert");
    free(lg);
    model_seq_free(s1);
    model_seq_free(s2);
    model_seq_free(small);
    prefix_cache_free(c);
    report("sessions + insert");
}

static void test_isolation(void **unused)
{
    (void)unused;
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t p[80];
    assert_non_null(lg);
    ids_fill(p, 80, 4);
    struct model_seq *s = seq_new(200);
    for (int share = 0; share < 2; share++) {
        struct prefix_cache *c = cache_new(1ull << 30, 32, share);
        assert_int_equal(run(c, s, 1000, p, 50, NULL, 0, 0, lg), 0);
        assert_int_equal(prefix_cache_peek(c, 1000, p, 70), 50);
        assert_int_equal(prefix_cache_peek(c, 1001, p, 70), share ? 50 : 0);
        assert_int_equal(run(c, s, 1001, p, 70, NULL, 0, 0, lg), share ? 50 : 0);
        expect_exact(p, 70, lg, "other uid");
        /* uid 1001 stored a snapshot at 70: uid 1000 reaches it only when shared */
        assert_int_equal(run(c, s, 1000, p, 80, NULL, 0, 0, lg), share ? 70 : 50);
        expect_exact(p, 80, lg, "own uid");
        prefix_cache_free(c);
    }
    free(lg);
    model_seq_free(s);
    report("isolation");
}

/* Budget: never exceeded, LRU order, counters; a budget below one snapshot
 * stores nothing and changes no result. */
static void test_budget_lru(void **unused)
{
    (void)unused;
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t p[12][50];
    assert_non_null(lg);
    for (int i = 0; i < 12; i++) {
        ids_fill(p[i], 50, 50 + i);
        p[i][0] = i;                         /* distinct first tokens */
    }
    struct model_seq *s = seq_new(200);
    /* bytes of one 40-token entry, measured */
    struct prefix_cache *probe = cache_new(1ull << 30, -1, false);
    run(probe, s, 1, p[0], 40, NULL, 0, 0, lg);
    struct prefix_cache_stats st;
    prefix_cache_stats_get(probe, &st);
    const uint64_t entry = st.bytes_held;
    assert_true(entry > geom.gdn_bytes + 40 * geom.kv_token_bytes);
    prefix_cache_free(probe);

    struct prefix_cache *c = cache_new(3 * entry + entry / 2, -1, false);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(run(c, s, 1, p[i], 40, NULL, 0, 0, lg), 0);
        prefix_cache_stats_get(c, &st);
        assert_true(st.bytes_held <= st.budget_bytes);
    }
    assert_int_equal(st.snapshots, 3);
    assert_int_equal(st.evictions, 7);
    for (int i = 0; i < 10; i++)
        assert_int_equal(prefix_cache_peek(c, 1, p[i], 50), i >= 7 ? 40 : 0);
    /* use entry 7: it becomes the most recent; entry 8 is the oldest now */
    assert_int_equal(run(c, s, 1, p[7], 50, NULL, 0, PREFIX_CACHE_NO_STORE, lg), 40);
    expect_exact(p[7], 50, lg, "after eviction");
    assert_int_equal(run(c, s, 1, p[10], 40, NULL, 0, 0, lg), 0);
    assert_int_equal(prefix_cache_peek(c, 1, p[8], 50), 0);
    assert_int_equal(prefix_cache_peek(c, 1, p[7], 50), 40);
    assert_int_equal(prefix_cache_peek(c, 1, p[9], 50), 40);
    prefix_cache_stats_get(c, &st);
    printf("budget %llu bytes (3.5 entries of %llu): %llu held, %llu snapshots, %llu evictions\n",
           (unsigned long long)st.budget_bytes, (unsigned long long)entry,
           (unsigned long long)st.bytes_held, (unsigned long long)st.snapshots,
           (unsigned long long)st.evictions);
    assert_int_equal(st.evictions, 8);
    assert_int_equal(st.nodes, 3);
    assert_int_equal(st.kv_tokens, 120);
    prefix_cache_clear(c);
    prefix_cache_stats_get(c, &st);
    assert_int_equal(st.bytes_held, 0);
    assert_int_equal(st.nodes, 0);
    prefix_cache_free(c);

    /* room for one entry: storing q, which leaves p's edge midway, evicts
     * p's snapshot and splits p's edge; the lower half, now useless, goes */
    c = cache_new(entry + entry / 4, -1, false);
    int32_t q[50];
    memcpy(q, p[0], 20 * sizeof(int32_t));
    ids_fill(q + 20, 30, 77);
    q[20] = p[0][20] == 1 ? 2 : 1;
    assert_int_equal(run(c, s, 1, p[0], 40, NULL, 0, 0, lg), 0);
    assert_int_equal(run(c, s, 1, q, 40, NULL, 0, 0, lg), 0);
    prefix_cache_stats_get(c, &st);
    assert_int_equal(st.snapshots, 1);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.nodes, 2);
    assert_int_equal(st.kv_tokens, 40);
    assert_true(st.bytes_held <= st.budget_bytes);
    assert_int_equal(run(c, s, 1, q, 50, NULL, 0, 0, lg), 40);
    expect_exact(q, 50, lg, "after a split under eviction");
    prefix_cache_free(c);

    /* a budget smaller than one snapshot */
    c = cache_new(geom.gdn_bytes - 1, 16, false);
    assert_int_equal(run(c, s, 1, p[11], 50, NULL, 0, 0, lg), 0);
    assert_int_equal(run(c, s, 1, p[11], 50, NULL, 0, 0, lg), 0);
    expect_exact(p[11], 50, lg, "nothing stored");
    prefix_cache_stats_get(c, &st);
    assert_int_equal(st.bytes_held, 0);
    assert_int_equal(st.snapshots_stored, 0);
    assert_int_equal(st.snapshots_rejected, 8);         /* 16 32 48 50, twice */
    prefix_cache_free(c);
    free(lg);
    model_seq_free(s);
    report("budget + LRU");
}

/* Copy failures at every stage leave the cache as it was. */
static void test_failed_copy(void **unused)
{
    (void)unused;
    struct engine_error err = { 0 };
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t p[100], q[100];
    assert_non_null(lg);
    ids_fill(p, 100, 6);
    memcpy(q, p, sizeof(q));
    q[30] = (q[30] + 1) % MAX_IDS;           /* q diverges inside p's edge */
    struct model_seq *s = seq_new(200);
    struct prefix_cache *c = cache_new(1ull << 30, -1, false);
    assert_int_equal(run(c, s, 1, p, 60, NULL, 0, 0, lg), 0);
    struct prefix_cache_stats before, after;
    prefix_cache_stats_get(c, &before);

    assert_int_equal(run(c, s, 1, q, 80, NULL, 0, PREFIX_CACHE_NO_STORE, NULL), 0);
    /* 2 downloads per GDN layer, then K and V per attention layer */
    const long stages[] = { 1, 2, 3, 2L * geom.n_gdn_layers, 2L * geom.n_gdn_layers + 1,
                            2L * geom.n_gdn_layers + 2, 2L * geom.n_gdn_layers + 4 };
    for (size_t i = 0; i < sizeof(stages) / sizeof(stages[0]); i++) {
        injections_off();
        atomic_store(&dl_fail_at, stages[i]);
        assert_int_equal(prefix_cache_insert(c, s, 1, q, 80, &err), -EIO);
        injections_off();
        prefix_cache_stats_get(c, &after);
        assert_int_equal(after.bytes_held, before.bytes_held);
        assert_int_equal(after.nodes, before.nodes);
        assert_int_equal(after.snapshots, before.snapshots);
        assert_int_equal(after.kv_tokens, before.kv_tokens);
        assert_int_equal(prefix_cache_peek(c, 1, q, 100), 0);
        assert_int_equal(prefix_cache_peek(c, 1, p, 100), 60);
    }
    assert_int_equal(after.snapshots_rejected, sizeof(stages) / sizeof(stages[0]));
    /* snapshots of a prefill whose copies fail are refused, the prefill is not */
    atomic_store(&dl_fail_at, 1);
    assert_int_equal(run(c, s, 1, q, 90, NULL, 0, 0, NULL), 0);
    injections_off();
    prefix_cache_stats_get(c, &after);
    assert_int_equal(after.snapshots, before.snapshots);
    assert_int_equal(after.bytes_held, before.bytes_held);
    /* and the cache still works */
    assert_int_equal(prefix_cache_insert(c, s, 1, q, 90, &err), 0);
    assert_int_equal(run(c, s, 1, q, 100, NULL, 0, 0, lg), 90);
    expect_exact(q, 100, lg, "after failed copies");
    assert_int_equal(run(c, s, 1, p, 100, NULL, 0, 0, lg), 60);
    expect_exact(p, 100, lg, "split edge");
    free(lg);
    model_seq_free(s);
    prefix_cache_free(c);
    report("failed copies");
}

/* A forward pass that fails or is cancelled midway keeps only complete
 * snapshots of earlier positions; the sequence state stays coherent. */
static void test_failed_prefill(void **unused)
{
    (void)unused;
    struct engine_error err = { 0 };
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t p[160];
    assert_non_null(lg);
    ids_fill(p, 160, 7);
    struct model_seq *s = seq_new(400);
    struct prefix_cache *c = cache_new(1ull << 30, 20, false);
    const int64_t gdn_per_chunk = geom.n_gdn_layers;

    /* fail inside the 4th forward call: the pieces [0,20) [20,40) ... are
     * one call each; every call runs the gdn op once per GDN layer */
    injections_off();
    atomic_store(&gdn_fail_at, 3 * gdn_per_chunk + 2);
    struct prefix_cache_request req = { .uid = 1 };
    int64_t reused = -1;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 160, lg, &reused, &err), -EIO);
    injections_off();
    printf("injected failure: %s\n", err.msg);
    assert_int_equal(reused, 0);
    assert_int_equal(model_prefill(model, s, p, 1, NULL, &err), -EBADFD);  /* broken */
    assert_int_equal(prefix_cache_peek(c, 1, p, 160), 60);
    struct prefix_cache_stats st;
    prefix_cache_stats_get(c, &st);
    assert_int_equal(st.snapshots, 3);
    assert_int_equal(run(c, s, 1, p, 160, NULL, 0, 0, lg), 60);
    expect_exact(p, 160, lg, "after a failed prefill");

    /* cancelled in the middle of a piece */
    int32_t q[160];
    ids_fill(q, 160, 8);
    injections_off();
    atomic_store(&gdn_cancel_at, 2 * gdn_per_chunk + 1);
    req.cancel = &cancel;
    assert_int_equal(prefix_cache_prefill(c, s, &req, q, 160, lg, &reused, &err), -ECANCELED);
    injections_off();
    /* the call in flight completed, and with it the piece ending at 60 */
    assert_int_equal(model_seq_len(s), 60);
    assert_int_equal(prefix_cache_peek(c, 1, q, 160), 60);
    struct model_prefill_params pp = { .logits = lg };
    assert_int_equal(model_prefill(model, s, q + 60, 100, &pp, &err), 0);
    expect_exact(q, 160, lg, "continued after cancel");
    free(lg);
    model_seq_free(s);
    prefix_cache_free(c);
    report("failed prefill");
}

static void test_bad_input(void **unused)
{
    (void)unused;
    struct engine_error err = { 0 };
    struct prefix_cache *c = cache_new(1ull << 30, 0, false);
    struct model_seq *s = seq_new(100);
    int32_t p[60];
    ids_fill(p, 60, 9);
    run(c, s, 1, p, 20, NULL, 0, 0, NULL);
    struct prefix_cache_request req = { .uid = 1 };
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 0, NULL, NULL, &err), -EINVAL);
    assert_int_equal(prefix_cache_prefill(c, s, &req, NULL, 5, NULL, NULL, &err), -EINVAL);
    p[30] = V;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), -EINVAL);
    p[30] = -1;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), -EINVAL);
    p[30] = 5;
    const int64_t unsorted[] = { 10, 10 }, beyond[] = { 61 }, negative[] = { -1 };
    req.boundaries = unsorted;
    req.n_boundaries = 2;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), -EINVAL);
    req.boundaries = beyond;
    req.n_boundaries = 1;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), -EINVAL);
    req.boundaries = negative;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), -EINVAL);
    req.boundaries = NULL;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), -EINVAL);
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 101, NULL, NULL, &err), -ENOSPC);
    assert_int_equal(model_seq_len(s), 20);                /* untouched */
    assert_int_equal(prefix_cache_insert(c, s, 1, p, 21, &err), -EINVAL);
    assert_int_equal(prefix_cache_insert(c, s, 1, p, 0, &err), -EINVAL);
    assert_int_equal(prefix_cache_peek(c, 1, p, 0), 0);
    assert_int_equal(prefix_cache_peek(c, 1, NULL, 10), 0);
    const int64_t zero[] = { 0, 20 };                        /* 0 is ignored */
    req.boundaries = zero;
    req.n_boundaries = 2;
    assert_int_equal(prefix_cache_prefill(c, s, &req, p, 60, NULL, NULL, &err), 0);
    prefix_cache_free(c);
    model_seq_free(s);
}

/* Threads with their own sequences share one cache (small budget, so
 * eviction runs while others restore). */
#define N_THREADS 4
#define N_PROMPTS 6
#define ROUNDS 2
static int32_t cc_ids[N_PROMPTS][100];
static int64_t cc_len[N_PROMPTS];
static float *cc_ref;
static struct prefix_cache *cc_cache;
static atomic_int cc_bad, cc_hits;

static void *cc_worker(void *arg)
{
    const int t = (int)(intptr_t)arg;
    struct model_seq *s = NULL;
    struct engine_error err = { 0 };
    float *lg = malloc((size_t)V * sizeof(float));
    if (!lg || model_seq_new(model, 200, &s, &err)) {
        atomic_fetch_add(&cc_bad, 1);
        free(lg);
        return NULL;
    }
    for (int r = 0; r < ROUNDS; r++)
        for (int k = 0; k < N_PROMPTS; k++) {
            const int i = (k * (t + 1) + r + t) % N_PROMPTS;
            const int64_t b[] = { 12, 30 };
            struct prefix_cache_request req = { .uid = (uint32_t)(t % 2), .boundaries = b,
                                                .n_boundaries = cc_len[i] >= 30 ? 2 : 1 };
            int64_t reused = 0;
            if (prefix_cache_prefill(cc_cache, s, &req, cc_ids[i], cc_len[i], lg, &reused, &err) ||
                memcmp(lg, cc_ref + (size_t)i * V, (size_t)V * sizeof(float)))
                atomic_fetch_add(&cc_bad, 1);
            if (reused)
                atomic_fetch_add(&cc_hits, 1);
        }
    model_seq_free(s);
    free(lg);
    return NULL;
}

static void test_concurrency(void **unused)
{
    (void)unused;
    cc_ref = malloc((size_t)V * N_PROMPTS * sizeof(float));
    assert_non_null(cc_ref);
    int32_t base[100];
    ids_fill(base, 100, 10);
    for (int i = 0; i < N_PROMPTS; i++) {
        const int64_t keep = 14 + 7 * i;     /* shared part, then its own tail */
        cc_len[i] = keep + 6 + 3 * (i % 3);
        memcpy(cc_ids[i], base, (size_t)keep * sizeof(int32_t));
        ids_fill(cc_ids[i] + keep, cc_len[i] - keep, 100 + i);
        recompute(cc_ids[i], cc_len[i], cc_ref + (size_t)i * V);
    }
    cc_cache = cache_new(8 * geom.gdn_bytes, 16, false);
    pthread_t th[N_THREADS];
    for (int t = 0; t < N_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, cc_worker, (void *)(intptr_t)t), 0);
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(th[t], NULL);
    struct prefix_cache_stats st;
    prefix_cache_stats_get(cc_cache, &st);
    printf("concurrency: %d threads x %d prefills, %d with a restore, %d wrong logits "
           "(tolerance 0); %llu evictions, %llu of %llu bytes held\n", N_THREADS,
           ROUNDS * N_PROMPTS, atomic_load(&cc_hits), atomic_load(&cc_bad),
           (unsigned long long)st.evictions, (unsigned long long)st.bytes_held,
           (unsigned long long)st.budget_bytes);
    assert_int_equal(atomic_load(&cc_bad), 0);
    assert_true(atomic_load(&cc_hits) > 0);
    assert_true(st.evictions > 0);
    assert_true(st.bytes_held <= st.budget_bytes);
    assert_int_equal(st.lookups, N_THREADS * ROUNDS * N_PROMPTS);
    prefix_cache_free(cc_cache);
    free(cc_ref);
}

int main(void)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    snprintf(model_dir, sizeof(model_dir), "%s/tests/data/models/tiny-w4g32", root ? root : ".");
    char cfg[1300];
    snprintf(cfg, sizeof(cfg), "%s/config.json", model_dir);
    struct stat stt;
    if (stat(cfg, &stt)) {
        printf("skip: fixture %s not found (run tools/refgen to create tests/data)\n", cfg);
        return 77;
    }
    struct kb_cpu_params cp = KB_CPU_PARAMS_DEFAULT;
    if (kb_cpu_ref_create(&cp, &inner)) {
        fprintf(stderr, "cannot create the reference backend\n");
        return 1;
    }
    wrap_ops = *inner->ops;
    wrap_ops.download = wrap_download;
    wrap_ops.gdn = wrap_gdn;
    wrap_be.ops = &wrap_ops;
    wrap_be.impl = inner->impl;
    struct model_params mp = MODEL_PARAMS_DEFAULT;
    mp.backend_instance = &wrap_be;
    struct engine_error err = { 0 };
    if (model_load(model_dir, &mp, &model, &err)) {
        fprintf(stderr, "model_load %s: %s\n", model_dir, err.msg);
        return 1;
    }
    V = model_vocab(model);
    model_state_geom_get(model, &geom);
    printf("tiny-w4g32 state: GDN image %llu bytes (%d layers), KV %llu bytes/token (%d layers)\n",
           (unsigned long long)geom.gdn_bytes, geom.n_gdn_layers,
           (unsigned long long)geom.kv_token_bytes, geom.n_attn_layers);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_api),
        cmocka_unit_test(test_state_api_f16_kv),
        cmocka_unit_test(test_boundaries_find),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_splits),
        cmocka_unit_test(test_sessions_and_insert),
        cmocka_unit_test(test_isolation),
        cmocka_unit_test(test_budget_lru),
        cmocka_unit_test(test_failed_copy),
        cmocka_unit_test(test_failed_prefill),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_concurrency),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    model_free(model);
    inner->ops->destroy(inner);
    return rc;
}
