/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The GDN kernels of gdn.cu and the gated RMSNorm of norm.cu EXECUTED on the
 * CPU, without a GPU: the kernel sources are compiled as C against a small
 * emulation of compat.h (one pthread per GPU thread, blocks one after
 * another, __shared__ as static storage shared by the block's threads, a
 * block-wide barrier for gpu_sync and for the shuffles / block sums, which
 * every thread of these kernels reaches convergently) and compared with the
 * scalar CPU reference backend (kernels/cpu/ref.c) through kb_backend_ops.
 *
 * What this proves: the index arithmetic, the per-token order, state
 * layout and barriers of gdn_conv, gdn_recurrent (d_k = d_v = 128), the
 * chunked form gdn_chunk_prep / scan / out (d = 128, n >= 64: one chunk, a
 * partial last chunk, several chunks; its scratch poisoned with NaN) and
 * gdn_recurrent_any (the tiny models' 32, and d_k != d_v, d_k or d_v larger
 * than the block) as written. What it cannot: the vendor intrinsics of
 * compat.h (exp / rsqrt / shuffles are libm and plain memory here), code
 * generation, timing. The GPU run (tools/gpu/check run-all) does those.
 * Tolerances as gpu-check: output |d| <= 1e-4 + 1e-3 |ref|, state |d| <=
 * 1e-5 + 1e-4 |ref|, conv state exact; worst error / bound printed.
 * Exit 0 pass, 1 fail.
 */
#include "kernels/backend.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the compat.h emulation (the real header is then a no-op) ---- */
#define RESIDENT_KERNELS_GPU_COMPAT_H 1
#define GPU_WARP 32
#define GPU_RESTRICT
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define GPU_KERNEL(name, threads) static __attribute__((unused)) void name

#define EMU_MAX_THREADS 1024
static _Thread_local int emu_tid;
static int emu_bid, emu_threads;
static pthread_barrier_t emu_bar;
static float emu_slot[EMU_MAX_THREADS];

static int gpu_tid_x(void) { return emu_tid; }
static int emu_bid_y;
static int gpu_bid_x(void) { return emu_bid; }
static int gpu_bid_y(void) { return emu_bid_y; }
static void gpu_sync(void) { pthread_barrier_wait(&emu_bar); }
static float gpu_exp(float x) { return expf(x); }
static float gpu_log(float x) { return logf(x); }
static float gpu_rsqrt(float x) { return 1.0f / sqrtf(x); }
static float gpu_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static float gpu_silu(float x) { return x / (1.0f + expf(-x)); }
static __attribute__((unused)) void gpu_sincos(float x, float *s, float *c)
{
    *s = sinf(x);
    *c = cosf(x);
}

/* every thread of the block takes part (true for the kernels tested) */
static float gpu_shfl_xor_f(float v, int m)
{
    emu_slot[emu_tid] = v;
    gpu_sync();
    float r = emu_slot[emu_tid ^ m];
    gpu_sync();
    return r;
}

static float gpu_block_sum(float v, float *scratch, int nwarps)
{
    (void)scratch;
    (void)nwarps;
    emu_slot[emu_tid] = v;
    gpu_sync();
    float s = 0.0f;
    for (int i = 0; i < emu_threads; i++)
        s += emu_slot[i];
    gpu_sync();
    return s;
}

#include "kernels/gpu/gdn.cu"
#include "kernels/gpu/norm.cu"

/* ---- launching: a kernel call per thread through a closure ---- */

struct emu_launch {
    void (*body)(const void *args);
    const void *args;
};

struct emu_thread {
    const struct emu_launch *l;
    int tid;
};

static void *emu_trampoline(void *p)
{
    const struct emu_thread *t = p;
    emu_tid = t->tid;
    t->l->body(t->l->args);
    return NULL;
}

static void emu_run(unsigned grid, int threads, void (*body)(const void *), const void *args)
{
    struct emu_launch l = { body, args };
    if (threads <= 0 || threads > EMU_MAX_THREADS) {
        fprintf(stderr, "test-gpu-emu: %d threads per block, the emulation takes 1..%d\n", threads,
                EMU_MAX_THREADS);
        exit(2);
    }
    struct emu_thread th[EMU_MAX_THREADS];
    pthread_t pt[EMU_MAX_THREADS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    emu_threads = threads;
    for (unsigned b = 0; b < grid; b++) {
        emu_bid = (int)b;
        pthread_barrier_init(&emu_bar, NULL, (unsigned)threads);
        for (int i = 0; i < threads; i++) {
            th[i] = (struct emu_thread){ &l, i };
            if (pthread_create(&pt[i], &attr, emu_trampoline, &th[i])) {
                fprintf(stderr, "test-gpu-emu: pthread_create failed\n");
                exit(2);
            }
        }
        for (int i = 0; i < threads; i++)
            pthread_join(pt[i], NULL);
        pthread_barrier_destroy(&emu_bar);
    }
    pthread_attr_destroy(&attr);
}

/* a gx x gy grid: the rows of blocks one after another */
static void emu_run_2d(unsigned gx, unsigned gy, int threads, void (*body)(const void *), const void *args)
{
    for (unsigned y = 0; y < gy; y++) {
        emu_bid_y = (int)y;
        emu_run(gx, threads, body, args);
    }
    emu_bid_y = 0;
}

struct gdn_args {
    const float *qkv, *b, *a, *A_log, *dt_bias, *convw, *normw, *z;
    float *conv_state, *ssm, *u, *o, *y;
    float *W, *U, *Qd, *Kd, *P, *S0, *eGl;   /* the chunked form's scratch */
    int n, nk, nv, dk, dv, K, conv_dim;
};

static void body_conv(const void *p)
{
    const struct gdn_args *g = p;
    gdn_conv(g->qkv, g->n, g->conv_dim, g->K, g->conv_state, g->convw, g->u);
}

static void body_rec(const void *p)
{
    const struct gdn_args *g = p;
    gdn_recurrent(g->u, g->n, g->nk, g->nv, g->b, g->a, g->A_log, g->dt_bias, g->ssm, g->o);
}

static void body_rec_any(const void *p)
{
    const struct gdn_args *g = p;
    gdn_recurrent_any(g->u, g->n, g->nk, g->nv, g->dk, g->dv, g->b, g->a, g->A_log, g->dt_bias, g->ssm,
                      g->o);
}

static void body_prep(const void *p)
{
    const struct gdn_args *g = p;
    gdn_chunk_prep(g->u, g->n, g->nk, g->nv, g->b, g->a, g->A_log, g->dt_bias, g->W, g->U, g->Qd, g->Kd,
                   g->P, g->eGl);
}

static void body_scan(const void *p)
{
    const struct gdn_args *g = p;
    gdn_chunk_scan(g->n, g->W, g->U, g->Kd, g->eGl, g->ssm, g->S0);
}

static void body_out(const void *p)
{
    const struct gdn_args *g = p;
    gdn_chunk_out(g->n, g->nv, g->Qd, g->P, g->U, g->S0, g->o);
}

static void body_norm(const void *p)
{
    const struct gdn_args *g = p;
    rmsnorm_gated(g->y, g->o, g->z, g->dv, g->normw, 1e-6f);
}

/* ---- the checks ---- */

static int failures, checks;
static uint64_t rng = 0x243f6a8885a308d3ull;

static float rnd(void)                   /* [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static float *rnd_vec(size_t n, float scale, float offset)
{
    float *v = malloc((n ? n : 1) * sizeof(float));
    if (!v) {
        fprintf(stderr, "test-gpu-emu: out of memory\n");
        exit(2);
    }
    for (size_t i = 0; i < n; i++)
        v[i] = offset + scale * rnd();
    return v;
}

static void compare(const char *what, const float *got, const float *ref, size_t n, double atol,
                    double rtol)
{
    double worst = 0;
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]), bound = atol + rtol * fabs((double)ref[i]);
        if (!(d <= bound))
            bad++;
        worst = isnan(d) ? INFINITY : fmax(worst, bound > 0 ? d / bound : (d > 0 ? INFINITY : 0));
    }
    checks++;
    failures += bad != 0;
    printf("%s %-62s worst err/bound %.3f, %ld of %zu out of bounds\n", bad ? "FAIL" : "ok  ", what, worst,
           bad, n);
}

/* A_log = alog_off + [-1, 1), a + dt_bias in [-3, 3): 1.2 gives per-token
 * decays e^g from about 0 to 0.94, -5 from 0.945 to 0.9999 (a long memory:
 * the state carried over many chunks matters, T is far from I) */
static void check_gdn(struct kb_backend *ref, int n, int nk, int nv, int dk, int dv, int K, float alog_off)
{
    const int cd = 2 * nk * dk + nv * dv, vd = nv * dv;
    const bool fast = dk == 128 && dv == 128, chunked = fast && n >= GDN_C;
    struct gdn_args g = { .n = n, .nk = nk, .nv = nv, .dk = dk, .dv = dv, .K = K, .conv_dim = cd };
    float *qkv = rnd_vec((size_t)n * cd, 1.0f, 0), *z = rnd_vec((size_t)n * vd, 1.0f, 0);
    float *b = rnd_vec((size_t)n * nv, 2.0f, 0), *a = rnd_vec((size_t)n * nv, 2.0f, 0);
    float *convw = rnd_vec((size_t)cd * K, 0.5f, 0), *alog = rnd_vec((size_t)nv, 1.0f, alog_off);
    float *dtb = rnd_vec((size_t)nv, 1.0f, 0), *nw = rnd_vec((size_t)dv, 0.2f, 1.0f);
    float *cst = rnd_vec((size_t)(K - 1) * cd + 1, 1.0f, 0), *ssm = rnd_vec((size_t)nv * dk * dv, 0.05f, 0);
    float *cst_ref = malloc(((size_t)(K - 1) * cd + 1) * 4), *ssm_ref = malloc((size_t)nv * dk * dv * 4);
    float *want = malloc((size_t)n * vd * 4), *u = malloc((size_t)n * cd * 4);
    float *o = malloc((size_t)n * vd * 4), *y = malloc((size_t)n * vd * 4);
    if (!cst_ref || !ssm_ref || !want || !u || !o || !y) {
        fprintf(stderr, "test-gpu-emu: out of memory\n");
        exit(2);
    }
    memcpy(cst_ref, cst, ((size_t)(K - 1) * cd + 1) * 4);
    memcpy(ssm_ref, ssm, (size_t)nv * dk * dv * 4);
    for (size_t i = 0; i < (size_t)n * vd; i++)
        y[i] = NAN;                      /* poisoned */

    struct kb_weight wc = { .type = KB_WTYPE_F32, .rows = cd, .cols = K, .data = convw };
    struct kb_weight wa = { .type = KB_WTYPE_F32, .rows = 1, .cols = nv, .data = alog };
    struct kb_weight wd = { .type = KB_WTYPE_F32, .rows = 1, .cols = nv, .data = dtb };
    struct kb_weight wn = { .type = KB_WTYPE_F32, .rows = 1, .cols = dv, .data = nw };
    struct kb_gdn kg = { .n_k_heads = nk, .n_v_heads = nv, .d_k = dk, .d_v = dv, .conv_kernel = K,
                         .norm_eps = 1e-6f, .conv1d = &wc, .A_log = &wa, .dt_bias = &wd, .norm = &wn };
    struct kb_gdn_state st = { .conv = cst_ref, .ssm = ssm_ref };
    if (ref->ops->gdn(ref, &kg, &st, qkv, z, b, a, n, want)) {
        fprintf(stderr, "test-gpu-emu: reference gdn failed: %s\n", ref->ops->last_error(ref));
        exit(2);
    }

    g.qkv = qkv, g.b = b, g.a = a, g.A_log = alog, g.dt_bias = dtb, g.convw = convw, g.normw = nw;
    g.z = z, g.conv_state = cst, g.ssm = ssm, g.u = u, g.o = o, g.y = y;
    emu_run((unsigned)((cd + 255) / 256), 256, body_conv, &g);
    /* the chunked form's scratch starts as NaN: an element the kernels
     * read before writing shows */
    const size_t nc = (size_t)(n + GDN_C - 1) / GDN_C, hc = (size_t)nv * nc;
    float *scr = NULL;
    if (chunked) {
        const size_t floats = hc * (4 * GDN_C * GDN_D + GDN_C * GDN_C + GDN_D * GDN_D + 1);
        scr = malloc(floats * 4);
        if (!scr) {
            fprintf(stderr, "test-gpu-emu: out of memory\n");
            exit(2);
        }
        for (size_t i = 0; i < floats; i++)
            scr[i] = NAN;
        g.W = scr, g.U = g.W + hc * GDN_C * GDN_D, g.Qd = g.U + hc * GDN_C * GDN_D;
        g.Kd = g.Qd + hc * GDN_C * GDN_D, g.P = g.Kd + hc * GDN_C * GDN_D;
        g.S0 = g.P + hc * GDN_C * GDN_C, g.eGl = g.S0 + hc * GDN_D * GDN_D;
        emu_run_2d((unsigned)nc, (unsigned)nv, 256, body_prep, &g);
        emu_run_2d((unsigned)nv, 2, 256, body_scan, &g);
        emu_run_2d((unsigned)nc, (unsigned)nv, 256, body_out, &g);
    } else if (fast)
        emu_run((unsigned)nv, 512, body_rec, &g);   /* gdn.cu GDN_REC_THREADS */
    else
        emu_run((unsigned)nv, 128, body_rec_any, &g);
    emu_run((unsigned)(n * nv), 128, body_norm, &g);

    char what[160];
    snprintf(what, sizeof(what), "%s, %d token%s, d_k %d d_v %d, heads %d/%d, kernel %d%s: output",
             chunked ? "gdn_chunk_*" : fast ? "gdn_recurrent" : "gdn_recurrent_any", n, n > 1 ? "s" : "", dk, dv,
             nk, nv, K, alog_off < 0 ? ", slow decay" : "");
    compare(what, y, want, (size_t)n * vd, 1e-4, 1e-3);
    snprintf(what, sizeof(what), "  the same: recurrent state");
    compare(what, ssm, ssm_ref, (size_t)nv * dk * dv, 1e-5, 1e-4);
    snprintf(what, sizeof(what), "  the same: conv state");
    compare(what, cst, cst_ref, (size_t)(K - 1) * cd, 0, 0);
    void *all[] = { qkv, z, b, a, convw, alog, dtb, nw, cst, ssm, cst_ref, ssm_ref, want, u, o, y, scr };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        free(all[i]);
}

int main(void)
{
    struct kb_backend *ref = NULL;
    struct kb_cpu_params cp = { .n_threads = 1 };
    if (kb_cpu_ref_create(&cp, &ref)) {
        fprintf(stderr, "test-gpu-emu: cannot create the CPU reference backend\n");
        return 2;
    }
    check_gdn(ref, 1, 2, 4, 32, 32, 4, 1.2f);       /* the tiny models' GDN */
    check_gdn(ref, 9, 2, 4, 32, 32, 4, 1.2f);
    check_gdn(ref, 5, 1, 3, 200, 40, 2, 1.2f);      /* d_k != d_v, d_k > the block */
    check_gdn(ref, 3, 2, 2, 64, 160, 3, 1.2f);      /* d_v > the block */
    check_gdn(ref, 4, 1, 2, 128, 128, 4, 1.2f);     /* the fast kernel (real model shape) */
    check_gdn(ref, 64, 1, 2, 128, 128, 4, 1.2f);    /* the chunked form: one chunk */
    check_gdn(ref, 100, 2, 4, 128, 128, 4, 1.2f);   /* a partial last chunk, 2 v heads per k head */
    check_gdn(ref, 300, 1, 2, 128, 128, 4, 1.2f);
    check_gdn(ref, 300, 1, 2, 128, 128, 4, -5.0f);
    check_gdn(ref, 4, 1, 2, 128, 128, 4, -5.0f);
    ref->ops->destroy(ref);
    printf("RESULT: %d/%d checks passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
