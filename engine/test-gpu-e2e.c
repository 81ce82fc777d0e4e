/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The GPU backend end to end through the engine (engine/model.c), against
 * the transformers goldens of tests/data and against the cpu-ref backend
 * (itself proven against the goldens to 1e-4 by engine/test-forward.c):
 *
 *   test-gpu-e2e [KERNEL_DIR [SYNTH_MODEL_DIR]]
 *   test-gpu-e2e --drift SYNTH_MODEL_DIR   (CPU only: the drift calibration)
 *   test-gpu-e2e --stand-in cpu [SYNTH_MODEL_DIR]
 *                          the whole test with the fast CPU backend in the
 *                          GPU's place: proves the harness (fixtures,
 *                          goldens, bounds, batch check) without a GPU
 *   env RESIDENT_GPU_KERNEL_DIR the kernel folder when no argument is given
 *   env RESIDENT_E2E_DATA  tests/data folder (default
 *                          $RESIDENT_SOURCE_ROOT/tests/data, else tests/data)
 *   env RESIDENT_E2E_SYNTH a model made by tools/gpu/make-e2e-model (optional;
 *                          the second argument wins)
 *   env RESIDENT_E2E_DIAG_ONLY=1  only the drift diagnostic (see below)
 * Built twice: test-gpu-e2e (kb_cuda_create, sm_90 cubins) and, with
 * -DE2E_HIP, test-gpu-e2e-hip (kb_hip_create, gfx1151 code objects).
 *
 * Per fixture:
 *   prefill   prompts of 1, 7, 64, 320 tokens, all logits: relative L2 per
 *             position vs the goldens and vs cpu-ref, max printed; greedy
 *             argmax equal wherever the golden top-2 margin >= TOL * |logits|;
 *   decode    the golden 16-token prompt, then 40 steps feeding the golden
 *             tokens (teacher forcing): each step's logits and the final ones
 *             vs the goldens and vs cpu-ref, argmax as above;
 *   batch     three sequences (prompts 1, 7, 64) decoded 8 steps together
 *             in one model_decode call vs each decoded alone on the GPU:
 *             max |diff| / max |logit| <= TOL_BATCH;
 *   speed     prefill tok/s (320 tokens) and decode tok/s (40 steps), GPU and
 *             cpu-ref (informational, tiny model: launch-bound on the GPU).
 *
 * Bounds on the relative L2 error per position (prefill: every position of
 * a prompt; decode: the 41 teacher-forced rows), vs goldens and vs cpu-ref,
 * per prompt: median over positions <= max(TOL_MED = 3e-2, TWIN_K x the
 * twin's median), max <= max(TOL_MAX = 5e-1, min(TOL_MAX_CAP, TWIN_K x the
 * twin's max)), TWIN_K = 2, TOL_MAX_CAP = 1 (unrelated logits: ~1.4).
 * The twin (test-gpu-e2e-pert.c, PERT_GPU) is cpu-ref with the GPU
 * backend's designed rounding put in: W4 weights as q * s without the
 * checkpoint's bf16 rounding, and for products of more than 8 rows (MMQ)
 * int8 per-32 activations exactly as quantize_q8g32 makes them, also inside
 * the MoE block. Why bounds relative to a twin, not fixed ones. On random-
 * weight models the router's top-k has near-ties: the int8 rounding alone
 * flips an expert for a few token x layer pairs, which moves that token's
 * residual by O(10 %), and GDN / attention carry it to later positions, so
 * how far correct int8 numerics land from the goldens depends on the
 * fixture and the prompt: 1.6e-2 median at 64 tokens on the synthetic model
 * (H200, 2026-11-26), 1.2e-1 on tiny-w4g32 (hidden 128, 8 experts top 3;
 * the emulated GPU, docs/gpu.md, 2026-11-27). A fixed bound either fails
 * correct numerics there or passes bugs elsewhere. The twin measures what
 * the designed numerics give on exactly these positions, on the CPU; the GPU
 * sums in another order, so its near-ties may flip elsewhere, and TWIN_K = 2
 * leaves room for that second sample of the same amplification (on
 * tiny-w4g32 at 64 tokens the emulated GPU and the twin measure 1.18e-1 and
 * 1.20e-1). A bug in a multi-token path (conv / recurrence over tokens,
 * causal mask, KV writes, MoE with several tokens) moves most positions by
 * O(1) and fails the median; a bug confined to a few positions fails the max
 * (below the twin's) unless the twin itself is near garbage there. The
 * argmax must agree wherever the reference top-2 margin >= TOL_MED x |logits|
 * and the position's own error is within TOL_MED (a routing flip may
 * legitimately move an argmax; those positions are counted as outliers and
 * printed). The GPU's distance to the twin is printed too (informational:
 * the same rounding with another sum order).
 * TOL_BATCH = 1e-5: batching only changes which rows share a launch, never
 * an fp32 reduction order in the design, so the measured value is expected
 * to be 0.
 *
 * Fixtures: tiny-w4g32, tiny-w4g32-partial, tiny-bf16, tiny-w4g32-fused (the
 * tiny-w4g32 goldens), and the synthetic model of RESIDENT_E2E_SYNTH (no
 * goldens: cpu-ref is the reference). The GPU kernels take every fixture's
 * shapes (GDN head dim 32 by gdn_recurrent_any, W4 in_features 64 / 96 by
 * the GEMV and the MMQ K tail), so every fixture with goldens must PASS: a
 * fixture folder that did not travel, or a backend shape refusal
 * (UNSUPPORTED, "... kernels need ..."), fails the test. Only the synthetic
 * model may be absent (a note). Exits 77 (skip) without a driver or device,
 * 1 on any failure.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/test-gpu-e2e-pert.h"
#include "kernels/backend.h"
#include "kernels/cuda/gpu-backend.h"

#define TOL_MED   3e-2
#define TOL_MAX   5e-1
#define TOL       TOL_MED                /* argmax margin threshold          */
#define TOL_BATCH 1e-5
#define TWIN_K    2.0                    /* bound = TWIN_K x the twin's error */
#define TOL_MAX_CAP 1.0                  /* unrelated logits: rel L2 ~1.4     */
#define N_STEPS_BATCH 8

struct fixture {
    const char *name;
    const char *goldens;                 /* NULL: synthetic, no goldens      */
};

static const struct fixture fixtures[] = {
    { "tiny-w4g32", "tiny-w4g32" },
    { "tiny-w4g32-partial", "tiny-w4g32-partial" },
    { "tiny-bf16", "tiny-bf16" },
    { "tiny-w4g32-fused", "tiny-w4g32" },
    { "synthetic-gpu-shapes", NULL },
};
#define N_FIXTURES (sizeof(fixtures) / sizeof(fixtures[0]))

enum status { ST_PASS, ST_FAIL, ST_UNSUP, ST_ABSENT };
static const char *const status_name[] = { "PASS", "FAIL", "UNSUPPORTED", "absent" };

struct result {
    enum status st;
    char   why[640];
    double pre_gold, pre_cpu;            /* max rel L2 over all prompts       */
    double pre_gold_med, pre_cpu_med;    /* worst per-prompt median           */
    double dec_gold_med, dec_cpu_med;
    int    outliers;                     /* positions with TOL_MED < err      */
    int    argmax_checked, argmax_bad;   /* where the margin >= TOL          */
    int    argmax_rows, argmax_diff;     /* all rows (informational)         */
    double dec_gold, dec_cpu;
    double batch;
    double gpu_pre_tps, cpu_pre_tps, gpu_dec_tps, cpu_dec_tps;
};

static char data_dir[1024];
static const char *synth_dir;
static struct kb_backend *gpu;
static const char *stand_in;             /* --stand-in: a CPU backend name   */
#ifdef E2E_HIP
#define gpu_create kb_hip_create
#define gpu_create_error kb_hip_create_error
#define GPU_KIND "HIP"
#else
#define gpu_create kb_cuda_create
#define gpu_create_error kb_cuda_create_error
#define GPU_KIND "CUDA"
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double rel_l2(const float *a, const float *b, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)a[i] - b[i];
        d += e * e;
        r += (double)b[i] * b[i];
    }
    double v = sqrt(d / (r > 0 ? r : 1e-30));
    return isnan(v) ? INFINITY : v;
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* top-1 minus top-2 over the L2 norm of the row */
static double margin_rel(const float *x, int32_t n)
{
    double a = -INFINITY, b = -INFINITY, r = 0;
    for (int32_t i = 0; i < n; i++) {
        r += (double)x[i] * x[i];
        if (x[i] > a) {
            b = a;
            a = x[i];
        } else if (x[i] > b) {
            b = x[i];
        }
    }
    return (a - b) / sqrt(r > 0 ? r : 1e-30);
}

static double dmax(double a, double b)
{
    return a > b ? a : b;
}

/* ---- errors: fail the fixture, or mark it unsupported ---- */

static bool shape_limit(const char *msg)
{
    /* gpu-backend.c reports its documented shape limits as "... kernels
     * need ..."; model.c a missing capability as "cannot run this checkpoint" */
    return strstr(msg, "kernels need") || strstr(msg, "cannot run this checkpoint");
}

static int set_err(struct result *r, const char *what, const struct engine_error *err, bool gpu_side)
{
    if (r->st == ST_PASS) {
        r->st = gpu_side && shape_limit(err->msg) ? ST_UNSUP : ST_FAIL;
        snprintf(r->why, sizeof(r->why), "%s: %s", what, err->msg);
    }
    return -1;
}

static void fail(struct result *r, const char *fmt, double v, double tol)
{
    printf("    FAIL: ");
    printf(fmt, v, tol);
    printf("\n");
    if (r->st == ST_PASS) {
        r->st = ST_FAIL;
        snprintf(r->why, sizeof(r->why), fmt, v, tol);
    }
}

/* ---- goldens ---- */

static void *golden(struct st_set *g, const char *name, enum st_dtype dt, uint64_t *numel)
{
    const struct st_tensor *t = st_set_find(g, name);
    if (!t || t->dtype != dt)
        return NULL;
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    if (p)
        memcpy(p, t->data, t->nbytes);
    if (numel)
        *numel = t->numel;
    return p;
}

static struct st_set *open_golden(const char *gold, const char *file)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/goldens/%s/%s", data_dir, gold, file);
    struct st_set *s = NULL;
    struct engine_error err = { 0 };
    if (st_set_open_file(path, &s, &err)) {
        fprintf(stderr, "cannot open %s: %s\n", path, err.msg);
        return NULL;
    }
    return s;
}

/* deterministic prompts for the synthetic model (ids < 1000, no specials) */
static int32_t *synth_ids(int64_t n, uint32_t seed)
{
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    uint32_t x = seed * 2654435761u + 1;
    for (int64_t i = 0; ids && i < n; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = (int32_t)((x >> 8) % 1000);
    }
    return ids;
}

/* ---- the checks ---- */

static int prefill_all(struct model *m, const int32_t *ids, int64_t n, float *out, double *secs,
                       struct result *r, bool gpu_side)
{
    struct model_seq *s = NULL;
    struct engine_error err = { 0 };
    if (model_seq_new(m, n, &s, &err))
        return set_err(r, "seq_new", &err, gpu_side);
    double t0 = now_s();
    struct model_prefill_params pp = { .logits = out, .all_logits = true };
    int rc = model_prefill(m, s, ids, n, &pp, &err);
    if (secs)
        *secs = now_s() - t0;
    model_seq_free(s);
    return rc ? set_err(r, gpu_side ? "GPU prefill" : "cpu-ref prefill", &err, gpu_side) : 0;
}

/* the median / max bounds of one set of positions, and the GPU twin's
 * measured errors they come from */
struct bound {
    double med, max;
    double twin_med, twin_max;
};

/* median and max of n per-position errors (NaN counts as infinite) */
static void med_max(const double *e, int64_t n, double *med, double *mx)
{
    double *c = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!c) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    *mx = 0;
    for (int64_t i = 0; i < n; i++) {
        c[i] = isnan(e[i]) ? INFINITY : e[i];
        *mx = dmax(*mx, c[i]);
    }
    for (int64_t i = 1; i < n; i++)          /* insertion sort: n <= 320 */
        for (int64_t j = i; j > 0 && c[j - 1] > c[j]; j--) {
            double t = c[j];
            c[j] = c[j - 1];
            c[j - 1] = t;
        }
    *med = n ? (n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2])) : 0;
    free(c);
}

/* the median / max bound of one set of positions; what names it */
static void check_drift(struct result *r, const char *what, const double *e, int64_t n,
                        const struct bound *b, double *med_out, double *max_out)
{
    double med, mx;
    med_max(e, n, &med, &mx);
    *med_out = dmax(*med_out, med);
    *max_out = dmax(*max_out, mx);
    char fmt[160];
    if (!(med <= b->med)) {
        snprintf(fmt, sizeof(fmt), "%s: median rel L2 %%.3e > %%.2e", what);
        fail(r, fmt, med, b->med);
    }
    if (!(mx <= b->max)) {
        snprintf(fmt, sizeof(fmt), "%s: max rel L2 %%.3e > %%.2e", what);
        fail(r, fmt, mx, b->max);
    }
}

/* The bounds for one set of positions from the GPU twin's errors on the
 * same positions against the same reference (see the top of the file). */
static struct bound twin_bound(const double *et, int64_t n)
{
    double med, mx;
    med_max(et, n, &med, &mx);
    return (struct bound){ .twin_med = med, .twin_max = mx, .med = dmax(TOL_MED, TWIN_K * med),
                           .max = dmax(TOL_MAX, fmin(TOL_MAX_CAP, TWIN_K * mx)) };
}

/* err: this position's rel L2 vs the same reference */
static void check_argmax(const float *got, const float *ref, int32_t V, double err, struct result *r,
                         int *bad)
{
    r->argmax_rows++;
    r->argmax_diff += argmax(got, V) != argmax(ref, V);
    if (!(err <= TOL_MED)) {
        r->outliers++;
        return;
    }
    if (margin_rel(ref, V) >= TOL) {
        r->argmax_checked++;
        if (argmax(got, V) != argmax(ref, V)) {
            r->argmax_bad++;
            (*bad)++;
        }
    }
}

static int check_prefill(const struct fixture *fx, struct model *mg, struct model *mc, struct model *mt,
                         struct result *r)
{
    static const int lens[] = { 1, 7, 64, 320 };
    const int32_t V = model_vocab(mg);
    struct st_set *g = fx->goldens ? open_golden(fx->goldens, "logits.safetensors") : NULL;
    if (fx->goldens && !g) {
        r->st = ST_FAIL;
        snprintf(r->why, sizeof(r->why), "goldens missing");
        return -1;
    }
    int rc = 0;
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]) && !rc; k++) {
        const int64_t n = lens[k];
        char name[64];
        int32_t *ids;
        float *gold = NULL;
        if (g) {
            uint64_t ni, nl;
            snprintf(name, sizeof(name), "len%d.input_ids", lens[k]);
            ids = golden(g, name, ST_DTYPE_I32, &ni);
            snprintf(name, sizeof(name), "len%d.logits", lens[k]);
            gold = golden(g, name, ST_DTYPE_F32, &nl);
            if (!ids || !gold || ni != (uint64_t)n || nl != (uint64_t)n * (uint64_t)V) {
                free(ids);
                free(gold);
                r->st = ST_FAIL;
                snprintf(r->why, sizeof(r->why), "golden len%d malformed", lens[k]);
                rc = -1;
                break;
            }
        } else {
            ids = synth_ids(n, (uint32_t)k + 1);
        }
        float *lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
        float *lc = malloc(sizeof(float) * (size_t)n * (size_t)V);
        float *lt = malloc(sizeof(float) * (size_t)n * (size_t)V);
        double tg = 0, tc = 0;
        if (!ids || !lg || !lc || !lt) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
        if ((rc = prefill_all(mg, ids, n, lg, &tg, r, true)) ||
            (rc = prefill_all(mc, ids, n, lc, &tc, r, false)) ||
            (rc = prefill_all(mt, ids, n, lt, NULL, r, false)))
            goto next;
        double eg[320], ec[320], tg_[320], tc_[320], et[320], mg_ = 0, xg = 0, mc_ = 0, xc = 0, mt_, xt;
        int bad = 0, out0 = r->outliers;
        for (int64_t t = 0; t < n; t++) {
            const float *row = lg + t * V;
            eg[t] = gold ? rel_l2(row, gold + t * V, V) : 0;
            ec[t] = rel_l2(row, lc + t * V, V);
            tg_[t] = gold ? rel_l2(lt + t * V, gold + t * V, V) : 0;
            tc_[t] = rel_l2(lt + t * V, lc + t * V, V);
            et[t] = rel_l2(row, lt + t * V, V);
            check_argmax(row, gold ? gold + t * V : lc + t * V, V, gold ? eg[t] : ec[t], r, &bad);
        }
        med_max(eg, n, &mg_, &xg);
        med_max(ec, n, &mc_, &xc);
        const struct bound bg = twin_bound(tg_, n), bc = twin_bound(tc_, n);
        med_max(et, n, &mt_, &xt);
        printf("  prefill len %3d: rel L2 vs the GPU twin median %.3e max %.3e (informational)\n", lens[k],
               mt_, xt);
        if (gold)
            printf("  prefill len %3d: rel L2 vs goldens median %.3e max %.3e (twin %.2e / %.2e, bounds "
                   "%.2e / %.2e), vs cpu-ref median %.3e max %.3e (twin %.2e / %.2e, bounds %.2e / "
                   "%.2e); argmax mismatches %d, drift outliers %d\n", lens[k], mg_, xg, bg.twin_med,
                   bg.twin_max, bg.med, bg.max, mc_, xc, bc.twin_med, bc.twin_max, bc.med, bc.max, bad,
                   r->outliers - out0);
        else
            printf("  prefill len %3d: rel L2 vs cpu-ref median %.3e max %.3e (twin %.2e / %.2e, bounds "
                   "%.2e / %.2e); argmax mismatches %d, drift outliers %d\n", lens[k], mc_, xc,
                   bc.twin_med, bc.twin_max, bc.med, bc.max, bad, r->outliers - out0);
        if (gold)
            check_drift(r, "prefill vs goldens", eg, n, &bg, &r->pre_gold_med, &r->pre_gold);
        check_drift(r, "prefill vs cpu-ref", ec, n, &bc, &r->pre_cpu_med, &r->pre_cpu);
        if (n == 320) {
            r->gpu_pre_tps = tg > 0 ? n / tg : 0;
            r->cpu_pre_tps = tc > 0 ? n / tc : 0;
        }
        if (bad)
            fail(r, "prefill: %.0f argmax mismatches where the margin >= %.0e", bad, TOL);
next:
        free(ids);
        free(gold);
        free(lg);
        free(lc);
        free(lt);
    }
    if (g)
        st_set_free(g);
    return rc;
}

/* prefill prompt, then feed toks[0..nt) one by one; out [(nt + 1)][V]:
 * row 0 = last prefill logits, row k = logits after feeding toks[k-1]. */
static int run_decode(struct model *m, const int32_t *prompt, int64_t np, const int32_t *toks,
                      int64_t nt, float *out, double *dec_secs, struct result *r, bool gpu_side)
{
    const int32_t V = model_vocab(m);
    struct model_seq *s = NULL;
    struct engine_error err = { 0 };
    if (model_seq_new(m, np + nt, &s, &err))
        return set_err(r, "seq_new", &err, gpu_side);
    struct model_prefill_params pp = { .logits = out };
    int rc = model_prefill(m, s, prompt, np, &pp, &err);
    if (rc) {
        model_seq_free(s);
        return set_err(r, gpu_side ? "GPU prefill" : "cpu-ref prefill", &err, gpu_side);
    }
    double t0 = now_s();
    for (int64_t k = 0; k < nt; k++) {
        if ((rc = model_decode(m, &s, &toks[k], 1, out + (k + 1) * V, &err))) {
            model_seq_free(s);
            return set_err(r, gpu_side ? "GPU decode" : "cpu-ref decode", &err, gpu_side);
        }
    }
    if (dec_secs)
        *dec_secs = now_s() - t0;
    model_seq_free(s);
    return 0;
}

static int check_decode(const struct fixture *fx, struct model *mg, struct model *mc, struct model *mt,
                        struct result *r)
{
    const int32_t V = model_vocab(mg);
    int64_t np = 16, nt = 40;
    int32_t *prompt = NULL, *toks = NULL;
    float *steps = NULL, *fin = NULL, *gold = NULL;
    struct st_set *g = NULL;
    float *lg = malloc(sizeof(float) * (size_t)(nt + 1) * (size_t)V);
    float *lc = malloc(sizeof(float) * (size_t)(nt + 1) * (size_t)V);
    float *lt = NULL;
    int rc = -1;
    if (!lg || !lc)
        goto out;
    if (fx->goldens) {
        uint64_t a = 0, b = 0, c = 0;
        g = open_golden(fx->goldens, "decode.safetensors");
        prompt = g ? golden(g, "prompt_ids", ST_DTYPE_I32, &a) : NULL;
        toks = g ? golden(g, "tokens", ST_DTYPE_I32, &b) : NULL;
        steps = g ? golden(g, "step_logits", ST_DTYPE_F32, &c) : NULL;
        fin = g ? golden(g, "final_logits", ST_DTYPE_F32, NULL) : NULL;
        if (!prompt || !toks || !steps || !fin || c != b * (uint64_t)V) {
            r->st = ST_FAIL;
            snprintf(r->why, sizeof(r->why), "decode goldens missing or malformed");
            goto out;
        }
        np = (int64_t)a;
        nt = (int64_t)b;
        /* golden rows: step_logits[0..nt) then final_logits */
        gold = malloc(sizeof(float) * (size_t)(nt + 1) * (size_t)V);
        if (!gold)
            goto out;
        memcpy(gold, steps, sizeof(float) * (size_t)nt * (size_t)V);
        memcpy(gold + nt * V, fin, sizeof(float) * (size_t)V);
    } else {
        /* cpu-ref greedy decides the tokens */
        prompt = synth_ids(np, 99);
        toks = malloc(sizeof(int32_t) * (size_t)nt);
        struct model_seq *s = NULL;
        struct engine_error err = { 0 };
        if (!prompt || !toks || model_seq_new(mc, np + nt, &s, &err) ||
            model_prefill(mc, s, prompt, np, &(struct model_prefill_params){ .logits = lc }, &err)) {
            model_seq_free(s);
            set_err(r, "cpu-ref greedy", &err, false);
            goto out;
        }
        for (int64_t k = 0; k < nt; k++) {
            toks[k] = argmax(lc, V);
            if (model_decode(mc, &s, &toks[k], 1, lc, &err)) {
                model_seq_free(s);
                set_err(r, "cpu-ref greedy", &err, false);
                goto out;
            }
        }
        model_seq_free(s);
    }
    double tg = 0, tc = 0;
    lt = malloc(sizeof(float) * (size_t)(nt + 1) * (size_t)V);
    if (!lt || run_decode(mg, prompt, np, toks, nt, lg, &tg, r, true) ||
        run_decode(mc, prompt, np, toks, nt, lc, &tc, r, false) ||
        run_decode(mt, prompt, np, toks, nt, lt, NULL, r, false))
        goto out;
    double *eg = calloc((size_t)nt + 1, sizeof(double)), *ec = calloc((size_t)nt + 1, sizeof(double));
    double *teg = calloc((size_t)nt + 1, sizeof(double)), *tec = calloc((size_t)nt + 1, sizeof(double));
    double mg_ = 0, xg = 0, mc_ = 0, xc = 0;
    int bad = 0, out0 = r->outliers;
    if (!eg || !ec || !teg || !tec) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t k = 0; k <= nt; k++) {
        const float *row = lg + k * V;
        eg[k] = gold ? rel_l2(row, gold + k * V, V) : 0;
        ec[k] = rel_l2(row, lc + k * V, V);
        teg[k] = gold ? rel_l2(lt + k * V, gold + k * V, V) : 0;
        tec[k] = rel_l2(lt + k * V, lc + k * V, V);
        check_argmax(row, gold ? gold + k * V : lc + k * V, V, gold ? eg[k] : ec[k], r, &bad);
    }
    med_max(eg, nt + 1, &mg_, &xg);
    med_max(ec, nt + 1, &mc_, &xc);
    const struct bound bg = twin_bound(teg, nt + 1), bc = twin_bound(tec, nt + 1);
    if (gold)
        printf("  decode %d+%d steps (teacher forced): rel L2 vs goldens median %.3e max %.3e (twin %.2e / "
               "%.2e, bounds %.2e / %.2e), vs cpu-ref median %.3e max %.3e (twin %.2e / %.2e, bounds "
               "%.2e / %.2e); argmax mismatches %d, drift outliers %d\n", (int)np, (int)nt, mg_, xg,
               bg.twin_med, bg.twin_max, bg.med, bg.max, mc_, xc, bc.twin_med, bc.twin_max, bc.med,
               bc.max, bad, r->outliers - out0);
    else
        printf("  decode %d+%d steps (teacher forced): rel L2 vs cpu-ref median %.3e max %.3e (twin %.2e / "
               "%.2e, bounds %.2e / %.2e); argmax mismatches %d, drift outliers %d\n", (int)np, (int)nt,
               mc_, xc, bc.twin_med, bc.twin_max, bc.med, bc.max, bad, r->outliers - out0);
    if (gold)
        check_drift(r, "decode vs goldens", eg, nt + 1, &bg, &r->dec_gold_med, &r->dec_gold);
    check_drift(r, "decode vs cpu-ref", ec, nt + 1, &bc, &r->dec_cpu_med, &r->dec_cpu);
    free(eg);
    free(ec);
    free(teg);
    free(tec);
    r->gpu_dec_tps = tg > 0 ? nt / tg : 0;
    r->cpu_dec_tps = tc > 0 ? nt / tc : 0;
    if (bad)
        fail(r, "decode: %.0f argmax mismatches where the margin >= %.0e", bad, TOL);
    rc = 0;
out:
    free(prompt);
    free(toks);
    free(steps);
    free(fin);
    free(gold);
    free(lg);
    free(lc);
    free(lt);
    if (g)
        st_set_free(g);
    return rc;
}

/* three sequences decoded together vs alone, all on the GPU */
static int check_batch(const struct fixture *fx, struct model *mg, struct result *r)
{
    static const int lens[3] = { 1, 7, 64 };
    const int32_t V = model_vocab(mg);
    const int T = N_STEPS_BATCH;
    int32_t *ids[3] = { 0 };
    int32_t toks[3][N_STEPS_BATCH];
    float *alone = malloc(sizeof(float) * 3 * (size_t)(T + 1) * (size_t)V);
    float *tog = malloc(sizeof(float) * 3 * (size_t)V);
    struct model_seq *s[3] = { 0 };
    struct st_set *g = fx->goldens ? open_golden(fx->goldens, "logits.safetensors") : NULL;
    struct engine_error err = { 0 };
    int rc = -1;
    if (!alone || !tog)
        goto out;
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof(name), "len%d.input_ids", lens[i]);
        ids[i] = g ? golden(g, name, ST_DTYPE_I32, NULL) : synth_ids(lens[i], 7u + (uint32_t)i);
        if (!ids[i])
            goto out;
        /* alone: greedy on the GPU's own logits fixes the tokens */
        float *o = alone + (size_t)i * (size_t)(T + 1) * (size_t)V;
        struct model_seq *one = NULL;
        if (model_seq_new(mg, lens[i] + T, &one, &err) ||
            model_prefill(mg, one, ids[i], lens[i], &(struct model_prefill_params){ .logits = o }, &err)) {
            model_seq_free(one);
            set_err(r, "GPU batch (alone)", &err, true);
            goto out;
        }
        for (int k = 0; k < T; k++) {
            toks[i][k] = argmax(o + k * V, V);
            if (model_decode(mg, &one, &toks[i][k], 1, o + (k + 1) * V, &err)) {
                model_seq_free(one);
                set_err(r, "GPU batch (alone)", &err, true);
                goto out;
            }
        }
        model_seq_free(one);
    }
    double worst = 0;
    for (int i = 0; i < 3; i++)
        if (model_seq_new(mg, lens[i] + T, &s[i], &err) ||
            model_prefill(mg, s[i], ids[i], lens[i], &(struct model_prefill_params){ .logits = tog }, &err)) {
            set_err(r, "GPU batch (together)", &err, true);
            goto out;
        }
    for (int k = 0; k < T; k++) {
        int32_t step[3] = { toks[0][k], toks[1][k], toks[2][k] };
        if (model_decode(mg, s, step, 3, tog, &err)) {
            set_err(r, "GPU batch (together)", &err, true);
            goto out;
        }
        for (int i = 0; i < 3; i++) {
            const float *a = alone + ((size_t)i * (size_t)(T + 1) + (size_t)(k + 1)) * (size_t)V;
            double md = 0, mx = 0;
            for (int32_t j = 0; j < V; j++) {
                md = dmax(md, fabs((double)tog[(size_t)i * V + j] - a[j]));
                mx = dmax(mx, fabs((double)a[j]));
            }
            double e = md / (mx > 0 ? mx : 1e-30);
            worst = dmax(worst, isnan(e) ? INFINITY : e);
        }
    }
    printf("  batch of 3 (prompts 1, 7, 64; %d steps) vs alone: max |diff| / max |logit| %.3e "
           "(tolerance %.0e)\n", T, worst, TOL_BATCH);
    r->batch = worst;
    if (worst > TOL_BATCH)
        fail(r, "batched decode differs from alone: %.3e > %.0e", worst, TOL_BATCH);
    rc = 0;
out:
    for (int i = 0; i < 3; i++) {
        model_seq_free(s[i]);
        free(ids[i]);
    }
    free(alone);
    free(tog);
    if (g)
        st_set_free(g);
    return rc;
}

/* ---- drift diagnostic (synthetic model; informational, never fails) ----
 *
 * Where does prefill drift vs cpu-ref come from: per-op rounding amplified
 * by a random-weight model, or a multi-token path? Printed per prompt
 * length: rel L2 per layer of the residual stream (row 0 = embeddings) for
 *   gpu-pre   GPU prefill of the whole prompt      vs cpu-ref prefill
 *   gpu-tbt   GPU one token per model_prefill call vs cpu-ref prefill
 *   pre/tbt   GPU prefill vs GPU token by token
 *   cpu-tbt   cpu-ref token by token vs cpu-ref prefill (sanity: ~1e-6)
 * and per position for the last layer. Then the calibration: cpu-ref itself
 * behind a wrapper that perturbs matmul like the GPU does (matmul inputs
 * rounded to bf16; int8 per-32 absmax like quantize_q8g32; W4 weights used
 * unrounded as the GEMV does; int8 inputs + unrounded weights as MMQ),
 * logits and last-layer drift vs plain cpu-ref for the same prompts. If the
 * CPU-only perturbations drift as much as the GPU, the drift is
 * amplification of rounding, not a bug. `test-gpu-e2e --drift MODEL_DIR`
 * runs the calibration alone, without a GPU. */

/* logits [n][V] and hidden [L+1][n][H]; tbt: one token per prefill call */
static int diag_run(struct model *m, const int32_t *ids, int64_t n, bool tbt, float *lg, float *hid)
{
    const int64_t V = model_vocab(m), H = model_hidden(m), L = model_n_layers(m);
    struct model_seq *s = NULL;
    struct engine_error err = { 0 };
    float *h1 = malloc(sizeof(float) * (size_t)(L + 1) * (size_t)H);
    int rc = !h1 || model_seq_new(m, n, &s, &err);
    if (!rc && !tbt) {
        struct model_prefill_params pp = { .logits = lg, .all_logits = true, .hidden = hid };
        rc = model_prefill(m, s, ids, n, &pp, &err);
    }
    for (int64_t t = 0; !rc && tbt && t < n; t++) {
        struct model_prefill_params pp = { .logits = lg + t * V, .hidden = h1 };
        rc = model_prefill(m, s, ids + t, 1, &pp, &err);
        for (int64_t l = 0; !rc && l <= L; l++)
            memcpy(hid + (l * n + t) * H, h1 + l * H, sizeof(float) * (size_t)H);
    }
    if (rc)
        printf("    diag: run failed: %s\n", err.msg);
    model_seq_free(s);
    free(h1);
    return rc;
}

static double max_rows(const float *a, const float *b, int64_t rows, int64_t w)
{
    double x = 0;
    for (int64_t t = 0; t < rows; t++)
        x = dmax(x, rel_l2(a + t * w, b + t * w, w));
    return x;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* median over rows of the per-row rel L2 (a bug moves most rows; a rare
 * amplified rounding event only the max) */
static double median_rows(const float *a, const float *b, int64_t rows, int64_t w)
{
    double *v = malloc(sizeof(double) * (size_t)rows);
    if (!v)
        return NAN;
    for (int64_t t = 0; t < rows; t++)
        v[t] = rel_l2(a + t * w, b + t * w, w);
    qsort(v, (size_t)rows, sizeof(double), cmp_double);
    double m = v[rows / 2];
    free(v);
    return m;
}

struct diag_set {
    float *lg, *hid;
};

static int diag_alloc(struct diag_set *d, int64_t n, int64_t V, int64_t H, int64_t L)
{
    d->lg = malloc(sizeof(float) * (size_t)n * (size_t)V);
    d->hid = malloc(sizeof(float) * (size_t)(L + 1) * (size_t)n * (size_t)H);
    return d->lg && d->hid ? 0 : -1;
}

static void diag_free(struct diag_set *d)
{
    free(d->lg);
    free(d->hid);
}

static void diag_print_layers(const char *const *names, struct diag_set *const *a, struct diag_set *const *b,
                              int k, int64_t n, int64_t V, int64_t H, int64_t L)
{
    printf("    %-6s", "layer");
    for (int i = 0; i < k; i++)
        printf(" %19s", names[i]);
    printf("   (rel L2 over positions: max / median)\n");
    for (int64_t l = 0; l <= L + 1; l++) {
        if (l == 0)
            printf("    %-6s", "embed");
        else if (l <= L)
            printf("    %-6d", (int)(l - 1));
        else
            printf("    %-6s", "logits");
        for (int i = 0; i < k; i++) {
            double v = l <= L ? max_rows(a[i]->hid + l * n * H, b[i]->hid + l * n * H, n, H)
                              : max_rows(a[i]->lg, b[i]->lg, n, V);
            double md = l <= L ? median_rows(a[i]->hid + l * n * H, b[i]->hid + l * n * H, n, H)
                               : median_rows(a[i]->lg, b[i]->lg, n, V);
            printf(" %9.2e/%9.2e", v, md);
        }
        printf("\n");
    }
}

static void diag_print_positions(const char *what, const struct diag_set *a, const struct diag_set *b,
                                 int64_t n, int64_t H, int64_t L)
{
    printf("    %s, last layer, rel L2 per position:", what);
    for (int64_t t = 0; t < n; t++) {
        if (t % 16 == 0)
            printf("\n     %4d:", (int)t);
        printf(" %.1e", rel_l2(a->hid + (L * n + t) * H, b->hid + (L * n + t) * H, H));
    }
    printf("\n");
}

/* the CPU-only calibration; mc = plain cpu-ref model */
static void diag_calibrate(const char *dir, struct model *mc, const int *lens, int nlens)
{
    const int64_t V = model_vocab(mc), H = model_hidden(mc), L = model_n_layers(mc);
    struct kb_cpu_params cp = KB_CPU_PARAMS_DEFAULT;
    struct kb_backend *inner = NULL;
    struct pert_be pb[N_PERT];
    struct model *mp[N_PERT] = { 0 };
    if (kb_cpu_ref_create(&cp, &inner)) {
        printf("  drift calibration: cannot create cpu-ref\n");
        return;
    }
    for (int i = 0; i < N_PERT; i++) {
        struct model_params pp = MODEL_PARAMS_DEFAULT;
        struct engine_error err = { 0 };
        pert_be_init(&pb[i], inner, (enum pert)i);
        pp.backend_instance = &pb[i].be;
        pp.max_context = 512;
        if (model_load(dir, &pp, &mp[i], &err))
            printf("  drift calibration: load (%s): %s\n", pert_name[i], err.msg);
    }
    printf("  drift calibration: cpu-ref with perturbed matmuls vs plain cpu-ref, max rel L2 over positions\n");
    printf("    (rows: max over positions of the residual after layer 0, the last layer, the logits; "
           "median of the logits)\n    %-5s %-7s", "len", "what");
    for (int i = 0; i < N_PERT; i++)
        printf(" %12s", pert_name[i]);
    printf("\n");
    for (int k = 0; k < nlens; k++) {
        const int64_t n = lens[k];
        int32_t *ids = synth_ids(n, 1000u + (uint32_t)n);
        struct diag_set ref = { 0 }, d[N_PERT] = { 0 };
        bool ok = ids && !diag_alloc(&ref, n, V, H, L) && !diag_run(mc, ids, n, false, ref.lg, ref.hid);
        for (int i = 0; i < N_PERT; i++)
            pb[i].flips = 0;
        for (int i = 0; i < N_PERT && ok; i++)
            ok = mp[i] && !diag_alloc(&d[i], n, V, H, L) && !diag_run(mp[i], ids, n, false, d[i].lg, d[i].hid);
        if (ok) {
            printf("    %-5d %-7s", (int)n, "layer 0");
            for (int i = 0; i < N_PERT; i++)
                printf(" %12.3e", max_rows(d[i].hid + 1 * n * H, ref.hid + 1 * n * H, n, H));
            printf("\n    %-5s %-7s", "", "last");
            for (int i = 0; i < N_PERT; i++)
                printf(" %12.3e", max_rows(d[i].hid + L * n * H, ref.hid + L * n * H, n, H));
            printf("\n    %-5s %-7s", "", "logits");
            for (int i = 0; i < N_PERT; i++)
                printf(" %12.3e", max_rows(d[i].lg, ref.lg, n, V));
            printf("\n    %-5s %-7s", "", "median");
            for (int i = 0; i < N_PERT; i++)
                printf(" %12.3e", median_rows(d[i].lg, ref.lg, n, V));
            printf("\n    %-5s %-7s", "", "flips");
            for (int i = 0; i < N_PERT; i++)
                printf(" %12ld", pb[i].flips);
            printf("   (MoE calls whose top-k set the input rounding changed, of %d tokens x %d layers)\n",
                   (int)n, (int)L);
            if (n == lens[nlens - 1])
                diag_print_positions("int8+W unrounded vs cpu-ref", &d[PERT_Q8_W_EXACT], &ref, n, H, L);
        } else {
            printf("    len %d: failed\n", (int)n);
        }
        for (int i = 0; i < N_PERT; i++)
            diag_free(&d[i]);
        diag_free(&ref);
        free(ids);
    }
    for (int i = 0; i < N_PERT; i++) {
        model_free(mp[i]);
        pert_be_fini(&pb[i]);
    }
    inner->ops->destroy(inner);
}

/* GPU prefill vs token by token vs cpu-ref, per layer */
static void diag_gpu(const char *dir, struct model *mg, struct model *mc)
{
    static const int lens[] = { 7, 64, 130 };
    const int64_t V = model_vocab(mg), H = model_hidden(mg), L = model_n_layers(mg);
    printf("  drift diagnostic (informational): residual stream per layer\n");
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        const int64_t n = lens[k];
        int32_t *ids = synth_ids(n, 1000u + (uint32_t)n);
        struct diag_set gp = { 0 }, gt = { 0 }, cp = { 0 }, ct = { 0 };
        if (!ids || diag_alloc(&gp, n, V, H, L) || diag_alloc(&gt, n, V, H, L) ||
            diag_alloc(&cp, n, V, H, L) || diag_alloc(&ct, n, V, H, L) ||
            diag_run(mg, ids, n, false, gp.lg, gp.hid) || diag_run(mg, ids, n, true, gt.lg, gt.hid) ||
            diag_run(mc, ids, n, false, cp.lg, cp.hid) || diag_run(mc, ids, n, true, ct.lg, ct.hid)) {
            printf("    len %d: failed\n", (int)n);
        } else {
            static const char *const names[4] = { "gpu-pre", "gpu-tbt", "pre/tbt", "cpu-tbt" };
            struct diag_set *a[4] = { &gp, &gt, &gp, &ct }, *b[4] = { &cp, &cp, &gt, &cp };
            printf("   prompt %d tokens\n", (int)n);
            diag_print_layers(names, a, b, 4, n, V, H, L);
            diag_print_positions("gpu-pre vs cpu-ref", &gp, &cp, n, H, L);
            diag_print_positions("gpu-tbt vs cpu-ref", &gt, &cp, n, H, L);
        }
        diag_free(&gp);
        diag_free(&gt);
        diag_free(&cp);
        diag_free(&ct);
        free(ids);
    }
    (void)dir;                           /* calibration: --drift, CPU only */
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void run_fixture(const struct fixture *fx, struct result *r)
{
    char path[1200], gdir[1200];
    const char *synth = synth_dir;
    if (fx->goldens)
        snprintf(path, sizeof(path), "%s/models/%s", data_dir, fx->name);
    else
        snprintf(path, sizeof(path), "%s", synth ? synth : "");
    snprintf(gdir, sizeof(gdir), "%s/goldens/%s", data_dir, fx->goldens ? fx->goldens : "");
    memset(r, 0, sizeof(*r));
    if (!path[0] || !is_dir(path) || (fx->goldens && !is_dir(gdir))) {
        r->st = ST_ABSENT;
        snprintf(r->why, sizeof(r->why), "%s", fx->goldens
                 ? "model or goldens folder not found: carry tests/data/models and tests/data/goldens "
                   "(tools/gpu/device-tree hide keeps them) or set RESIDENT_E2E_DATA"
                 : "no synthetic model given (tools/gpu/make-e2e-model makes it)");
        printf("%s: skipped, %s\n", fx->name, r->why);
        return;
    }
    printf("%s (%s)\n", fx->name, path);
    struct model *mg = NULL, *mc = NULL, *mt = NULL;
    struct engine_error err = { 0 };
    struct model_params pg = MODEL_PARAMS_DEFAULT, pc = MODEL_PARAMS_DEFAULT, pt = MODEL_PARAMS_DEFAULT;
    struct kb_cpu_params cp = KB_CPU_PARAMS_DEFAULT;
    struct kb_backend *twin_inner = NULL;
    struct pert_be twin;
    pg.backend_instance = gpu;
    if (stand_in)
        pg.backend = stand_in;
    pg.max_context = 512;
    pc.backend = "cpu-ref";
    pc.max_context = 512;
    /* the GPU twin: cpu-ref with the GPU's rounding, whose errors set the bounds */
    if (kb_cpu_ref_create(&cp, &twin_inner)) {
        r->st = ST_FAIL;
        snprintf(r->why, sizeof(r->why), "cannot create the cpu-ref backend of the GPU twin");
        printf("  FAIL: %s\n", r->why);
        return;
    }
    pert_be_init(&twin, twin_inner, PERT_GPU);
    pt.backend_instance = &twin.be;
    pt.max_context = 512;
    if (model_load(path, &pg, &mg, &err)) {
        set_err(r, "GPU load", &err, true);
    } else if (model_load(path, &pc, &mc, &err)) {
        set_err(r, "cpu-ref load", &err, false);
    } else if (model_load(path, &pt, &mt, &err)) {
        set_err(r, "GPU twin load", &err, false);
    } else {
        /* RESIDENT_E2E_DIAG_ONLY=1: the drift diagnostic alone (no checks) */
        const char *diag_only = getenv("RESIDENT_E2E_DIAG_ONLY");
        if (diag_only && *diag_only && strcmp(diag_only, "0")) {
            r->st = ST_ABSENT;           /* not a pass: exits 1 */
            snprintf(r->why, sizeof(r->why), "RESIDENT_E2E_DIAG_ONLY: checks not run");
            printf("  checks not run (RESIDENT_E2E_DIAG_ONLY)\n");
        } else if (!check_prefill(fx, mg, mc, mt, r) && !check_decode(fx, mg, mc, mt, r)) {
            check_batch(fx, mg, r);
        }
        if (!fx->goldens)
            diag_gpu(path, mg, mc);
    }
    if (r->st != ST_PASS)
        printf("  %s: %s\n", status_name[r->st], r->why);
    model_free(mg);
    model_free(mc);
    model_free(mt);
    pert_be_fini(&twin);
    twin_inner->ops->destroy(twin_inner);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *kdir = argc > 1 ? argv[1] : getenv("RESIDENT_GPU_KERNEL_DIR");
    const char *e;
    if (argc == 3 && !strcmp(argv[1], "--drift")) {
        /* the CPU-only calibration of the drift diagnostic */
        static const int lens[] = { 1, 7, 64, 320 };
        struct model *mc = NULL;
        struct model_params pc = MODEL_PARAMS_DEFAULT;
        struct engine_error err = { 0 };
        pc.backend = "cpu-ref";
        pc.max_context = 512;
        if (model_load(argv[2], &pc, &mc, &err)) {
            fprintf(stderr, "test-gpu-e2e --drift: %s\n", err.msg);
            return 1;
        }
        diag_calibrate(argv[2], mc, lens, 4);
        printf("  self-check of the diagnostic with cpu-ref in the GPU's place (all ~0 expected):\n");
        diag_gpu(argv[2], mc, mc);
        model_free(mc);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "--stand-in")) {
        if (strcmp(argv[2], "cpu") && strcmp(argv[2], "cpu-exact")) {
            fprintf(stderr, "test-gpu-e2e --stand-in: cpu or cpu-exact, not '%s'\n", argv[2]);
            return 2;
        }
        stand_in = argv[2];
        argv += 1;                       /* argv[2] is now the synthetic dir */
        argc -= 1;
        kdir = "(stand-in)";
    }
    synth_dir = argc > 2 ? argv[2] : getenv("RESIDENT_E2E_SYNTH");
    if ((e = getenv("RESIDENT_E2E_DATA")) && *e)
        snprintf(data_dir, sizeof(data_dir), "%s", e);
    else if ((e = getenv("RESIDENT_SOURCE_ROOT")) && *e)
        snprintf(data_dir, sizeof(data_dir), "%s/tests/data", e);
    else
        snprintf(data_dir, sizeof(data_dir), "tests/data");
    if (!kdir || !*kdir) {
        fprintf(stderr, "usage: test-gpu-e2e KERNEL_DIR (or RESIDENT_GPU_KERNEL_DIR): the folder "
                "with the NAME.sm_90.cubin / NAME.gfx1151.hsaco files\n");
        return 2;
    }
    struct kb_gpu_params gp = { .device = 0, .kernel_dir = kdir };
    int rc = stand_in ? 0 : gpu_create(&gp, &gpu);
    if (rc) {
        const char *why = gpu_create_error();
        if (rc == -ENODEV) {
            printf("SKIP: no " GPU_KIND " driver or device: %s\n", why);
            return 77;
        }
        fprintf(stderr, "test-gpu-e2e: cannot create the " GPU_KIND " backend (kernels from %s): %s\n",
                kdir, why);
        return 1;
    }
    printf("backend %s, kernels %s, data %s; bounds on the rel L2 per position (goldens and cpu-ref), per "
           "prompt: median max(%.0e, %.0f x the GPU twin's), max max(%.0e, min(%.0f, %.0f x the twin's)); "
           "%.0e batch vs alone\n", stand_in ? stand_in : gpu->ops->name, kdir, data_dir, TOL_MED, TWIN_K,
           TOL_MAX, TOL_MAX_CAP, TWIN_K, TOL_BATCH);
    struct result res[N_FIXTURES];
    for (size_t i = 0; i < N_FIXTURES; i++)
        run_fixture(&fixtures[i], &res[i]);
    if (gpu)
        gpu->ops->destroy(gpu);

    int n_pass = 0, n_fail = 0;
    printf("\nrel L2: worst per-prompt median / max over positions; argmax: mismatches / rows whose "
           "reference top-2 margin >= %.0e x |logits| and error <= %.0e (must be 0), then / all rows "
           "(informational); outl.: rows with error > %.0e\n", TOL, TOL_MED, TOL_MED);
    printf("%-22s %-6s %17s %17s %17s %17s %9s %7s %8s %5s %8s %8s %8s %8s\n", "fixture", "status",
           "pre/gold", "pre/cpu", "dec/gold", "dec/cpu", "batch", "argmax", "argmax", "outl.", "gpu pre",
           "cpu pre", "gpu dec", "cpu dec");
    printf("%-22s %-6s %17s %17s %17s %17s %9s %7s %8s %5s %8s %8s %8s %8s\n", "", "", "med/max rel L2",
           "med/max rel L2", "med/max rel L2", "med/max rel L2", "rel max", "big", "all", "", "tok/s",
           "tok/s", "tok/s", "tok/s");
    for (size_t i = 0; i < N_FIXTURES; i++) {
        const struct result *r = &res[i];
        n_pass += r->st == ST_PASS;
        /* every fixture with goldens must run: absent or UNSUPPORTED fail */
        n_fail += r->st == ST_FAIL || r->st == ST_UNSUP || (r->st == ST_ABSENT && fixtures[i].goldens);
        if (r->st != ST_PASS) {
            printf("%-22s %-6s %s\n", fixtures[i].name, status_name[r->st], r->why);
            continue;
        }
        char gp_[24] = "-", gd_[24] = "-", cp_[24], cd_[24], am[24], aa[24];
        if (fixtures[i].goldens) {
            snprintf(gp_, sizeof(gp_), "%.1e/%.1e", r->pre_gold_med, r->pre_gold);
            snprintf(gd_, sizeof(gd_), "%.1e/%.1e", r->dec_gold_med, r->dec_gold);
        }
        snprintf(cp_, sizeof(cp_), "%.1e/%.1e", r->pre_cpu_med, r->pre_cpu);
        snprintf(cd_, sizeof(cd_), "%.1e/%.1e", r->dec_cpu_med, r->dec_cpu);
        snprintf(am, sizeof(am), "%d/%d", r->argmax_bad, r->argmax_checked);
        snprintf(aa, sizeof(aa), "%d/%d", r->argmax_diff, r->argmax_rows);
        printf("%-22s %-6s %17s %17s %17s %17s %9.2e %7s %8s %5d %8.0f %8.0f %8.0f %8.0f\n",
               fixtures[i].name, status_name[r->st], gp_, cp_, gd_, cd_, r->batch, am, aa, r->outliers,
               r->gpu_pre_tps, r->cpu_pre_tps, r->gpu_dec_tps, r->cpu_dec_tps);
    }
    printf("test-gpu-e2e: %d passed, %d failed, %zu other; %s\n", n_pass, n_fail,
           N_FIXTURES - (size_t)n_pass - (size_t)n_fail,
           n_fail ? "FAIL" : n_pass ? "PASS" : "FAIL (no fixture ran every check)");
    return n_fail || !n_pass ? 1 : 0;
}
