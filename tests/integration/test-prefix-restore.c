/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The restore-only prefix-cache API residentd's engine generator uses
 * (prefix_cache_restore / prefix_cache_points / prefix_cache_insert at
 * chunk-split positions), on tests/data/default-model, reference backend:
 *   - prefix_cache_points lists boundaries, interval points and n, from a
 *     resume position on;
 *   - a prompt prefilled in scheduler-sized chunks split at those points,
 *     with a snapshot after each, gives the logits of one whole prefill
 *     (memcmp, tolerance 0), and so does a second prompt that restores a
 *     shared prefix and prefills the rest in other chunk sizes;
 *   - the restore is capped by n (at most n-1 tokens) and per uid.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "engine/prefix-cache.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

#define N_A 90
#define N_B 75
#define SHARED 48

static struct model *model;
static int32_t V;

static struct model_seq *seq_new(void)
{
    struct model_seq *s = NULL;
    struct engine_error e = { 0 };
    if (model_seq_new(model, 256, &s, &e) < 0) {
        fprintf(stderr, "model_seq_new: %s\n", e.msg);
        exit(1);
    }
    return s;
}

/* One prefill of ids[0..n) on a fresh sequence: the reference logits. */
static void full(const int32_t *ids, int64_t n, float *logits)
{
    struct model_seq *s = seq_new();
    struct engine_error e = { 0 };
    struct model_prefill_params pp = { .logits = logits };
    CHECK(model_prefill(model, s, ids, n, &pp, &e) == 0);
    model_seq_free(s);
}

/* What the generator does: restore, then chunks of `chunk`, split at the
 * cache's points with an insert after each. Returns the restored count. */
static int64_t chunked(struct prefix_cache *c, uint32_t uid, const int32_t *ids, int64_t n,
                       const int64_t *bnd, int32_t nb, int64_t chunk, float *logits)
{
    struct model_seq *s = seq_new();
    struct engine_error e = { 0 };
    int64_t got = -1;
    CHECK(prefix_cache_restore(c, s, uid, ids, n, &got, &e) == 0);
    CHECK(got >= 0 && got < n && model_seq_len(s) == got);
    struct prefix_cache_request req = { .boundaries = bnd, .n_boundaries = nb };
    int64_t *pts = NULL, np = 0, k = 0;
    CHECK(prefix_cache_points(c, &req, got, n, &pts, &np) == 0);
    int64_t done = got;
    while (done < n) {
        int64_t to = done + chunk < n ? done + chunk : n;
        while (done < to) {
            while (k < np && pts[k] <= done)
                k++;
            int64_t end = k < np && pts[k] <= to ? pts[k] : to;
            struct model_prefill_params pp = { .logits = end == n ? logits : NULL };
            CHECK(model_prefill(model, s, ids + done, end - done, &pp, &e) == 0);
            done = end;
            if (k < np && pts[k] == done)
                CHECK(prefix_cache_insert(c, s, uid, ids, done, &e) == 0);
        }
    }
    free(pts);
    model_seq_free(s);
    return got;
}

int main(void)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/tests/data/default-model", src ? src : ".");
    struct engine_error e = { 0 };
    struct model_params mp = MODEL_PARAMS_DEFAULT;
    /* the reference backend, as documented above: its logits do not depend
     * on how a prefill is split, so chunked and whole prefills compare bit
     * for bit (the default fast backend's chunked GDN prefill rounds by
     * where a call's chunks start) */
    mp.backend = "cpu-ref";
    mp.max_context = 512;
    if (model_load(dir, &mp, &model, &e) < 0) {
        printf("SKIP: no bundled model at %s: %s\n", dir, e.msg);
        return 77;
    }
    V = model_vocab(model);
    struct prefix_cache_params p = PREFIX_CACHE_PARAMS_DEFAULT;
    p.interval = 16;
    p.budget_bytes = 256ull << 20;
    struct prefix_cache *c = NULL;
    CHECK(prefix_cache_new(model, &p, &c, &e) == 0);
    if (!c)
        return 1;

    /* points: boundaries 10 and 30, interval 16, n 50 */
    const int64_t b0[] = { 10, 30 };
    struct prefix_cache_request rq = { .boundaries = b0, .n_boundaries = 2 };
    int64_t *pts = NULL, np = 0;
    CHECK(prefix_cache_points(c, &rq, 0, 50, &pts, &np) == 0);
    const int64_t want[] = { 10, 26, 30, 46, 50 };
    CHECK(np == 5 && pts && memcmp(pts, want, sizeof(want)) == 0);
    free(pts);
    CHECK(prefix_cache_points(c, &rq, 26, 50, &pts, &np) == 0);
    CHECK(np == 3 && pts && pts[0] == 30 && pts[1] == 46 && pts[2] == 50);
    free(pts);
    const int64_t bad[] = { 30, 10 };
    rq.boundaries = bad;
    CHECK(prefix_cache_points(c, &rq, 0, 50, &pts, &np) == -EINVAL);

    int32_t a[N_A], b[N_B];
    for (int i = 0; i < N_A; i++)
        a[i] = (int32_t)((i * 7919u + 13u) % (uint32_t)(V - 1)) + 1;
    memcpy(b, a, SHARED * sizeof(int32_t));
    for (int i = SHARED; i < N_B; i++)
        b[i] = (int32_t)((i * 104729u + 5u) % (uint32_t)(V - 1)) + 1;
    const int64_t bnd[] = { 20, 40 };
    float *ref = malloc((size_t)V * sizeof(float)), *got = malloc((size_t)V * sizeof(float));
    if (!ref || !got)
        return 1;

    /* A: nothing to restore; chunks of 7 split at 16, 20, 36, 40, 56, 72, 88, 90. */
    full(a, N_A, ref);
    CHECK(chunked(c, 1000, a, N_A, bnd, 2, 7, got) == 0);
    CHECK(memcmp(ref, got, (size_t)V * sizeof(float)) == 0);
    /* B shares 48 tokens: resumes at 40 (the last point <= 48), chunks of 5. */
    full(b, N_B, ref);
    CHECK(chunked(c, 1000, b, N_B, bnd, 2, 5, got) == 40);
    CHECK(memcmp(ref, got, (size_t)V * sizeof(float)) == 0);
    /* A again: resumes at 88 (its last interval point), the logits again exact. */
    full(a, N_A, ref);
    CHECK(chunked(c, 1000, a, N_A, bnd, 2, 512, got) == 88);
    CHECK(memcmp(ref, got, (size_t)V * sizeof(float)) == 0);
    /* The cap: n = 41 restores at most 40; n = 40 at most 36. */
    struct model_seq *s = seq_new();
    int64_t r = -1;
    CHECK(prefix_cache_restore(c, s, 1000, a, 41, &r, &e) == 0 && r == 40 && model_seq_len(s) == 40);
    CHECK(prefix_cache_restore(c, s, 1000, a, 40, &r, &e) == 0 && r == 36 && model_seq_len(s) == 36);
    /* Another uid reaches nothing. */
    CHECK(prefix_cache_restore(c, s, 1001, a, N_A, &r, &e) == 0 && r == 0 && model_seq_len(s) == 0);
    model_seq_free(s);
    struct prefix_cache_stats st;
    prefix_cache_stats_get(c, &st);
    CHECK(st.lookups == 6 && st.hits == 4 && st.misses == 2);
    CHECK(st.tokens_reused == 40 + 88 + 40 + 36);

    free(ref);
    free(got);
    prefix_cache_free(c);
    model_free(model);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("prefix_cache_restore/points/insert at chunk splits: logits bit-identical to a full prefill\n");
    return 0;
}
