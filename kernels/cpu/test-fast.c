/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fast CPU backend against the cpu-ref oracle on random inputs. Every
 * kernel runs on shapes with ragged tails (columns not a multiple of the
 * 128-column chunk, rows not a multiple of the 16-row thread split, token
 * counts not a multiple of the 4-token tile) and reports its relative L2
 * error:
 *   exact mode ("cpu-exact", fp32 activations):  <= 2e-6 (fp32 vs double
 *     accumulation order only; the dequantised weights are bit-identical)
 *   fast mode, W4 x two-plane int8 activations:   <= 5e-5 (~15-bit
 *     activations per group of 32; measured 1.3e-5 .. 1.7e-5)
 *   dense f32 / f16 / bf16 weights (fp32 activations, both modes, and the
 *     one-token bf16 kernel of the lm_head): <= 2e-6
 *   MoE (fast mode) whole block:                  <= 1e-4
 *   attention, fp32 KV cache ("cpu-exact"):        <= 1e-5 (row by row and
 *     in blocks of rows sharing a KV head; a token's output is bit-identical
 *     however its rows were grouped, with either cache)
 *   attention, f16 KV cache ("cpu"):  stored bytes = round to nearest even
 *     (checked element by element); <= 1e-5 against cpu-ref run on the
 *     f16-rounded K and V, <= 4 * 2^-11 against cpu-ref's fp32 cache
 *     (derivation at ATTN_F16_TOL)
 *   Gated DeltaNet output and state over 6 calls: <= 1e-5 (conv state exact),
 *     also from a state of denormals (which the fast path flushes)
 * Every test runs once per kernel level the CPU has (AVX-512 VNNI, AVX2 +
 * AVX-VNNI, AVX2 + FMA), forced through kb_cpu_fast_params.isa;
 * test_isa_agree checks that the AVX-512 and AVX2 levels build the same
 * int8 activation bytes and that their W4 x int8 products agree to fp32
 * reduction order (<= 1e-6; the integer sums are the same), and
 * test_vnni_exact that the avx2-vnni product equals the avx2 one bit for
 * bit (skipped, with the reason, on a CPU without AVX-VNNI).
 * RESIDENT_CPU_ISA is checked to select each level, to refuse a bad name,
 * and forcing a level is checked to fail with -ENOTSUP exactly where
 * the CPU lacks it. Exits 77 (skipped) on a CPU without AVX2 + FMA.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kernels/backend.h"
#include "kernels/cpu/fast.h"
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/ref.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static float rnd_f(void)                         /* uniform [-1, 1)       */
{
    return (float)(rnd_u32() & 0xffffff) / 8388608.0f - 1.0f;
}

static float *rnd_vec(size_t n)
{
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = rnd_f();
    return v;
}

static struct kb_backend *ref_new(void)
{
    struct kb_cpu_params p = { .n_threads = 2 };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_ref_create(&p, &be), 0);
    return be;
}

static int32_t test_isa = KB_CPU_ISA_AVX512;   /* the level under test */

static struct kb_backend *fast_new(bool exact, int32_t threads)
{
    struct kb_cpu_fast_params p = { .n_threads = threads, .exact = exact, .isa = test_isa };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    assert_int_equal(kb_cpu_fast_isa(be), test_isa);
    assert_string_equal(be->ops->name, exact ? "cpu-exact" : "cpu");
    return be;
}

static double rel_l2(const float *a, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Random W4 g32 weight with bf16 (or f16 / f32) scales. */
struct q4w {
    struct kb_weight w;
    int32_t *packed;
    void *scales;
    int32_t *g_idx;
};

static struct q4w q4_new(int64_t rows, int64_t cols, enum kb_wtype st, bool g_idx)
{
    struct q4w q = { 0 };
    q.packed = malloc((size_t)(rows * cols / 8) * sizeof(int32_t));
    int64_t ns = rows * cols / 32;
    q.scales = malloc((size_t)ns * 4);
    assert_non_null(q.packed);
    assert_non_null(q.scales);
    for (int64_t i = 0; i < rows * cols / 8; i++)
        q.packed[i] = (int32_t)rnd_u32() ^ (int32_t)(rnd_u32() << 16);
    for (int64_t i = 0; i < ns; i++) {
        float s = 0.01f + 0.02f * fabsf(rnd_f());
        if (st == KB_WTYPE_BF16)
            ((uint16_t *)q.scales)[i] = kb_f32_to_bf16(s);
        else if (st == KB_WTYPE_F32)
            ((float *)q.scales)[i] = s;
        else
            ((uint16_t *)q.scales)[i] = 0x2000 | (uint16_t)(rnd_u32() & 0x3ff); /* ~0.008..0.016 */
    }
    if (g_idx) {
        q.g_idx = malloc((size_t)cols * sizeof(int32_t));
        for (int64_t c = 0; c < cols; c++)
            q.g_idx[c] = (int32_t)((c * 7) % cols / 32);
    }
    q.w = (struct kb_weight){ .type = KB_WTYPE_Q4G32, .rows = rows, .cols = cols,
                              .data = q.packed, .scales = q.scales, .scale_type = st,
                              .g_idx = q.g_idx };
    return q;
}

static void q4_free(struct q4w *q)
{
    free(q->packed);
    free(q->scales);
    free(q->g_idx);
}

static double check_matmul(struct kb_backend *ref, struct kb_backend *fast,
                           const struct kb_weight *w, int32_t n, const char *what)
{
    float *x = rnd_vec((size_t)n * (size_t)w->cols);
    float *y0 = calloc((size_t)n * (size_t)w->rows, sizeof(float));
    float *y1 = calloc((size_t)n * (size_t)w->rows, sizeof(float));
    assert_int_equal(ref->ops->matmul(ref, w, x, n, y0), 0);
    assert_int_equal(fast->ops->matmul(fast, w, x, n, y1), 0);
    double e = rel_l2(y1, y0, (size_t)n * (size_t)w->rows);
    printf("  %-9s %-28s rows %5lld cols %5lld n %2d  rel L2 %.3g\n", fast->ops->name, what,
           (long long)w->rows, (long long)w->cols, n, e);
    free(x);
    free(y0);
    free(y1);
    return e;
}

static void test_q4_matmul(void **state)
{
    struct kb_backend *ref = ref_new(), *ex = fast_new(true, 2), *fa = fast_new(false, 2);
    const int64_t shapes[][2] = { { 300, 2048 }, { 37, 96 }, { 64, 4096 }, { 17, 160 } };
    const int32_t ns[] = { 1, 3, 4, 7, 64 };
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        struct q4w q = q4_new(shapes[s][0], shapes[s][1], KB_WTYPE_BF16, false);
        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
            assert_true(check_matmul(ref, ex, &q.w, ns[i], "w4 bf16-scale exact") <= 2e-6);
            assert_true(check_matmul(ref, fa, &q.w, ns[i], "w4 x int8 x2") <= 5e-5);
        }
        q4_free(&q);
    }
    /* f16 / f32 scales and act-order g_idx: exact dequantisation in both modes */
    struct q4w a = q4_new(45, 256, KB_WTYPE_F16, false), b = q4_new(45, 256, KB_WTYPE_F32, true);
    assert_true(check_matmul(ref, fa, &a.w, 5, "w4 f16-scale") <= 2e-6);
    assert_true(check_matmul(ref, fa, &b.w, 5, "w4 f32-scale g_idx") <= 2e-6);
    q4_free(&a);
    q4_free(&b);
    ref->ops->destroy(ref);
    ex->ops->destroy(ex);
    fa->ops->destroy(fa);
}

static void test_dense_matmul(void **state)
{
    struct kb_backend *ref = ref_new(), *ex = fast_new(true, 2), *fa = fast_new(false, 2);
    const int64_t rows = 333, cols = 2000;
    uint16_t *bf = malloc((size_t)(rows * cols) * 2), *hf = malloc((size_t)(rows * cols) * 2);
    float *f32 = rnd_vec((size_t)(rows * cols));
    for (int64_t i = 0; i < rows * cols; i++) {
        bf[i] = kb_f32_to_bf16(f32[i]);
        hf[i] = (uint16_t)(0x3000 | (rnd_u32() & 0x83ff));       /* +-0.125..0.25 */
    }
    struct kb_weight wb = { .type = KB_WTYPE_BF16, .rows = rows, .cols = cols, .data = bf };
    struct kb_weight wh = { .type = KB_WTYPE_F16, .rows = rows, .cols = cols, .data = hf };
    struct kb_weight wf = { .type = KB_WTYPE_F32, .rows = rows, .cols = cols, .data = f32 };
    const int32_t ns[] = { 1, 2, 5, 64 };
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
        assert_true(check_matmul(ref, ex, &wb, ns[i], "bf16 exact") <= 2e-6);
        assert_true(check_matmul(ref, fa, &wb, ns[i], "bf16") <= 2e-6);
        assert_true(check_matmul(ref, fa, &wh, ns[i], "f16") <= 2e-6);
        assert_true(check_matmul(ref, fa, &wf, ns[i], "f32") <= 2e-6);
    }
    /* the one-token bf16 kernel (cols % 32 == 0, 4-row blocks, split x),
     * with a row count that leaves a ragged tail for the plain path */
    const int64_t cols2 = 2048, rows2 = 1021;
    uint16_t *bf2 = malloc((size_t)(rows2 * cols2) * 2);
    assert_non_null(bf2);
    for (int64_t i = 0; i < rows2 * cols2; i++)
        bf2[i] = kb_f32_to_bf16(rnd_f());
    struct kb_weight wb2 = { .type = KB_WTYPE_BF16, .rows = rows2, .cols = cols2, .data = bf2 };
    assert_true(check_matmul(ref, fa, &wb2, 1, "bf16 one-token kernel") <= 2e-6);
    assert_true(check_matmul(ref, ex, &wb2, 1, "bf16 one-token kernel") <= 2e-6);
    free(bf2);
    free(bf);
    free(hf);
    free(f32);
    ref->ops->destroy(ref);
    ex->ops->destroy(ex);
    fa->ops->destroy(fa);
}

/* A small MoE block with the real structure (top-k of E, shared expert with
 * a sigmoid gate) and odd sizes. */
static void run_moe(int32_t n, bool exact, double tol, int32_t H)
{
    struct kb_backend *ref = ref_new(), *fa = fast_new(exact, 2);
    enum { E = 12, K = 3, I = 96, SI = 64 };
    struct q4w g[E], u[E], d[E], sg, su, sd;
    struct kb_weight gw[E], uw[E], dw[E];
    for (int e = 0; e < E; e++) {
        g[e] = q4_new(I, H, KB_WTYPE_BF16, false);
        u[e] = q4_new(I, H, KB_WTYPE_BF16, false);
        d[e] = q4_new(H, I, KB_WTYPE_BF16, false);
        gw[e] = g[e].w;
        uw[e] = u[e].w;
        dw[e] = d[e].w;
    }
    sg = q4_new(SI, H, KB_WTYPE_BF16, false);
    su = q4_new(SI, H, KB_WTYPE_BF16, false);
    sd = q4_new(H, SI, KB_WTYPE_BF16, false);
    uint16_t *router = malloc((size_t)(E * H) * 2), *seg = malloc((size_t)H * 2);
    assert_non_null(router);
    assert_non_null(seg);
    for (int i = 0; i < E * H; i++)
        router[i] = kb_f32_to_bf16(rnd_f() * 0.2f);
    for (int i = 0; i < H; i++)
        seg[i] = kb_f32_to_bf16(rnd_f() * 0.1f);
    struct kb_weight rw = { .type = KB_WTYPE_BF16, .rows = E, .cols = H, .data = router };
    struct kb_weight segw = { .type = KB_WTYPE_BF16, .rows = 1, .cols = H, .data = seg };
    struct kb_moe m = { .n_experts = E, .top_k = K, .hidden = H, .inter = I, .shared_inter = SI,
                        .norm_topk = true, .router = &rw, .gate = gw, .up = uw, .down = dw,
                        .shared_gate = &sg.w, .shared_up = &su.w, .shared_down = &sd.w,
                        .shared_expert_gate = &segw };
    float *x = rnd_vec((size_t)n * H);
    float *y0 = calloc((size_t)n * H, sizeof(float)), *y1 = calloc((size_t)n * H, sizeof(float));
    assert_int_equal(ref->ops->moe(ref, &m, x, n, y0), 0);
    assert_int_equal(fa->ops->moe(fa, &m, x, n, y1), 0);
    double e = rel_l2(y1, y0, (size_t)n * H);
    printf("  %-9s moe E %d top %d H %d I %d shared %d  n %2d  rel L2 %.3g\n", fa->ops->name,
           E, K, H, I, SI, n, e);
    assert_true(e <= tol);
    /* run again: reused scratch gives the same answer */
    assert_int_equal(fa->ops->moe(fa, &m, x, n, y0), 0);
    assert_true(memcmp(y0, y1, (size_t)n * H * sizeof(float)) == 0);
    /* batch invariance: each token alone (a decode step) gives the bits it
     * got in the batch (a prefill), so routing never depends on how the
     * tokens were grouped (the prefix cache relies on it) */
    for (int32_t t = 0; t < n; t++) {
        assert_int_equal(fa->ops->moe(fa, &m, x + (size_t)t * H, 1, y0), 0);
        assert_true(memcmp(y0, y1 + (size_t)t * H, (size_t)H * sizeof(float)) == 0);
    }
    free(router);
    free(seg);
    for (int i = 0; i < E; i++) {
        q4_free(&g[i]);
        q4_free(&u[i]);
        q4_free(&d[i]);
    }
    q4_free(&sg);
    q4_free(&su);
    q4_free(&sd);
    free(x);
    free(y0);
    free(y1);
    ref->ops->destroy(ref);
    fa->ops->destroy(fa);
}

static void test_moe(void **state)
{
    const int32_t ns[] = { 1, 2, 9, 64 };
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
        run_moe(ns[i], true, 2e-6, 224);
        run_moe(ns[i], false, 1e-4, 224);
    }
    /* hidden % 32 == 0: the shape on which the one-token bf16 kernel could
     * take the router (it must not: batch invariance above) */
    run_moe(5, false, 1e-4, 256);
    run_moe(5, true, 2e-6, 256);
}

/* f16 bits of x rounded to nearest even: the oracle of the cache's stored
 * bytes, in plain C (independent of the F16C instructions the backend
 * uses). */
static uint16_t f16_bits(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    const uint32_t sign = b >> 16 & 0x8000u, ab = b & 0x7fffffffu;
    if (ab > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);              /* NaN: quiet       */
    if (ab >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);              /* >= 65520: inf    */
    if (ab < 0x38800000u) {                             /* below 2^-14      */
        float a;
        memcpy(&a, &ab, sizeof(a));
        return (uint16_t)(sign | (uint32_t)nearbyint((double)a * 16777216.0)); /* units of 2^-24 */
    }
    uint32_t h = ((ab >> 23) - 112) << 10 | (ab >> 13 & 0x3ffu);
    const uint32_t rest = ab & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1)))
        h++;                                            /* may carry into e */
    return (uint16_t)(sign | h);
}

/* The cache rows [past, past + n) of kv hold k and v: as f16 bits
 * (f16_bits) or as the fp32 bytes. */
static void check_stored(const struct kb_kv *kv, size_t eb, int64_t past, int64_t count,
                         const float *k, const float *v)
{
    if (eb == 4) {
        assert_memory_equal((const float *)kv->k + past, k, (size_t)count * 4);
        assert_memory_equal((const float *)kv->v + past, v, (size_t)count * 4);
        return;
    }
    const uint16_t *hk = (const uint16_t *)kv->k + past, *hv = (const uint16_t *)kv->v + past;
    for (int64_t i = 0; i < count; i++) {
        if (hk[i] != f16_bits(k[i]) || hv[i] != f16_bits(v[i]))
            fail_msg("stored f16 element %lld: k %04x want %04x, v %04x want %04x", (long long)i,
                     hk[i], f16_bits(k[i]), hv[i], f16_bits(v[i]));
    }
}

/* Tolerance of the f16 cache against cpu-ref's fp32 one. Every stored
 * element is within 2^-11 relative of its fp32 value (round to nearest
 * even, 11-bit significand): V's rounding moves the output by ~2^-11 /
 * sqrt(3) relative (RMS of uniform rounding errors), K's moves each score
 * by at most 2^-11 * scale * sum |q_i k_i| (<= 2^-11 * 0.11 * 3 * hd / 2
 * here, ~1.5e-2 at hd 96, typically 30x less), which changes the softmax
 * weights by about as much relatively; 4 * 2^-11 covers both with a
 * margin. The kernels' own error is checked separately, against cpu-ref
 * run on the f16-rounded K and V, with the fp32 tolerance. */
#define ATTN_F16_TOL (4.0 / 2048.0)

/* exact: the "cpu-exact" instance (fp32 cache); else "cpu" (f16 cache). */
static void attention_case(int32_t nh, int32_t hd, bool exact)
{
    struct kb_backend *ref = ref_new(), *fa = fast_new(exact, 2);
    const uint32_t caps = fa->ops->caps(fa);
    assert_int_equal(!!(caps & KB_CAP_KV_F16), !exact);
    assert_int_equal(ref->ops->caps(ref) & KB_CAP_KV_F16, 0);
    const size_t eb = kb_kv_elem_bytes(caps);
    struct kb_attn a = { .n_heads = nh, .n_kv_heads = 2, .head_dim = hd, .scale = 0.11f };
    const int64_t cap = 300, row = 2 * (int64_t)hd;
    struct kb_kv kv0 = { calloc((size_t)(cap * row), 4), calloc((size_t)(cap * row), 4), cap };
    struct kb_kv kv1 = { calloc((size_t)(cap * row), eb), calloc((size_t)(cap * row), eb), cap };
    struct kb_kv kv2 = { calloc((size_t)(cap * row), 4), calloc((size_t)(cap * row), 4), cap };
    int64_t past = 0;
    double worst = 0.0, worst_kern = 0.0;
    const int32_t steps[] = { 37, 1, 1, 200, 1 };
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        int32_t n = steps[s];
        int64_t qs = 2 * (int64_t)hd;                              /* q with a gate half */
        float *q = rnd_vec((size_t)n * nh * (size_t)qs), *k = rnd_vec((size_t)(n * row));
        float *v = rnd_vec((size_t)(n * row));
        for (int64_t i = 0; i < n * nh * qs; i++)
            q[i] *= 3.0f;
        /* K and V as the f16 cache holds them (cpu-ref run on these is
         * what the kernels must match to fp32 accumulation order) */
        float *kr = malloc((size_t)(n * row) * 4), *vr = malloc((size_t)(n * row) * 4);
        assert_true(kr && vr);
        for (int64_t i = 0; i < n * row; i++) {
            kr[i] = eb == 2 ? kb_f16_to_f32(f16_bits(k[i])) : k[i];
            vr[i] = eb == 2 ? kb_f16_to_f32(f16_bits(v[i])) : v[i];
        }
        float *o0 = calloc((size_t)n * nh * hd, 4), *o1 = calloc((size_t)n * nh * hd, 4);
        float *o2 = calloc((size_t)n * nh * hd, 4);
        assert_int_equal(ref->ops->attention(ref, &a, &kv0, past, q, qs, k, v, n, o0), 0);
        assert_int_equal(fa->ops->attention(fa, &a, &kv1, past, q, qs, k, v, n, o1), 0);
        assert_int_equal(ref->ops->attention(ref, &a, &kv2, past, q, qs, kr, vr, n, o2), 0);
        check_stored(&kv1, eb, past * row, n * row, k, v);
        const double e = rel_l2(o1, o0, (size_t)n * nh * hd);
        const double ek = rel_l2(o1, o2, (size_t)n * nh * hd);
        printf("  %-9s attention %s KV heads %2d/2 d %3d past %4lld n %3d  rel L2 %.3g "
               "(vs cpu-ref on the stored K, V: %.3g)\n", fa->ops->name, eb == 2 ? "f16" : "f32",
               nh, hd, (long long)past, n, e, ek);
        assert_true(ek <= 1e-5);
        assert_true(e <= (eb == 2 ? ATTN_F16_TOL : 1e-5));
        worst = e > worst ? e : worst;
        worst_kern = ek > worst_kern ? ek : worst_kern;
        past += n;
        free(q);
        free(k);
        free(v);
        free(kr);
        free(vr);
        free(o0);
        free(o1);
        free(o2);
    }
    printf("  %-9s attention %s KV heads %2d/2 d %3d: max rel L2 %.3g vs cpu-ref (tolerance %.3g), "
           "%.3g vs cpu-ref on the stored values (tolerance 1e-5)\n", fa->ops->name,
           eb == 2 ? "f16" : "f32", nh, hd, worst, eb == 2 ? ATTN_F16_TOL : 1e-5, worst_kern);
    float dummy[4096] = { 0 };
    assert_int_equal(fa->ops->attention(fa, &a, &kv1, past, dummy, hd, dummy, dummy, 1000, dummy),
                     -EINVAL);
    free(kv0.k); free(kv0.v); free(kv1.k); free(kv1.v); free(kv2.k); free(kv2.v);
    ref->ops->destroy(ref);
    fa->ops->destroy(fa);
}

/* head dim 80 and 36: row by row (36: ragged 16- and 8-element tails of
 * the K and V loads); 64 and 96 (multiples of 32): blocks of rows sharing
 * a KV head (GQA groups of 4 and 8). Each with the f16 cache ("cpu") and
 * the fp32 one ("cpu-exact"). */
static void test_attention(void **state)
{
    for (int exact = 0; exact < 2; exact++) {
        attention_case(6, 80, exact);
        attention_case(4, 36, exact);
        attention_case(8, 64, exact);
        attention_case(16, 96, exact);
    }
}

/* A token's attention output does not depend on how its rows were grouped:
 * one 45-token prefill gives, bit for bit, what 45 single-token calls give
 * (rows grouped 4 tokens x 8 heads vs one head per item), with the f16
 * cache and with the fp32 one. */
static void test_attention_grouping(void **state)
{
    for (int exact = 0; exact < 2; exact++) {
        struct kb_backend *fa = fast_new(exact, 2);
        const size_t eb = kb_kv_elem_bytes(fa->ops->caps(fa));
        enum { NH = 16, HD = 64, N = 45 };
        struct kb_attn a = { .n_heads = NH, .n_kv_heads = 2, .head_dim = HD, .scale = 0.125f };
        const int64_t row = 2 * HD;
        struct kb_kv kv0 = { calloc((size_t)(N * row), eb), calloc((size_t)(N * row), eb), N };
        struct kb_kv kv1 = { calloc((size_t)(N * row), eb), calloc((size_t)(N * row), eb), N };
        float *q = rnd_vec((size_t)N * NH * HD), *k = rnd_vec((size_t)(N * row));
        float *v = rnd_vec((size_t)(N * row));
        float *o0 = calloc((size_t)N * NH * HD, 4), *o1 = calloc((size_t)N * NH * HD, 4);
        assert_int_equal(fa->ops->attention(fa, &a, &kv0, 0, q, HD, k, v, N, o0), 0);
        for (int32_t t = 0; t < N; t++)
            assert_int_equal(fa->ops->attention(fa, &a, &kv1, t, q + (int64_t)t * NH * HD, HD,
                                                k + t * row, v + t * row, 1,
                                                o1 + (int64_t)t * NH * HD), 0);
        size_t diff = 0;
        for (size_t i = 0; i < (size_t)N * NH * HD; i++)
            diff += memcmp(&o0[i], &o1[i], 4) != 0;
        printf("  %-9s attention %s KV prefill of %d vs %d single tokens: %zu of %d values "
               "differ\n", fa->ops->name, eb == 2 ? "f16" : "f32", N, N, diff, N * NH * HD);
        assert_true(diff == 0);
        assert_memory_equal(kv0.k, kv1.k, (size_t)(N * row) * eb);
        assert_memory_equal(kv0.v, kv1.v, (size_t)(N * row) * eb);
        free(q); free(k); free(v); free(o0); free(o1);
        free(kv0.k); free(kv0.v); free(kv1.k); free(kv1.v);
        fa->ops->destroy(fa);
    }
}

/* The f16 store against the plain-C rounding on the values where rounding
 * is delicate: ties to even, the carry into the exponent, f16 subnormals
 * and their ties, the overflow threshold 65520, signed zero, inf and NaN,
 * at every length 1..40 (the kernels' vector bodies and ragged tails). */
static void test_f16_store(void **state)
{
    float x[40];
    const float special[] = { 1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f, 2047.0f / 1024.0f + 1.0f / 2048.0f,
                              65504.0f, 65519.0f, 65520.0f, -70000.0f, 6.1035156e-05f, 6.0e-05f,
                              5.9604645e-08f, 2.9802322e-08f, 8.940697e-08f, 1e-9f, -0.0f, 0.0f,
                              INFINITY, -INFINITY, NAN, 0.33333334f, -123.456f };
    const size_t ns = sizeof(special) / sizeof(special[0]);
    for (int i = 0; i < 40; i++)
        x[i] = i < (int)ns ? special[i] : rnd_f() * (float)(1 << (i % 20));
    const struct { const char *name; int32_t isa;
        void (*fn)(uint16_t *, const float *, int64_t); } kk[] = {
        { "avx512", KB_CPU_ISA_AVX512, fast_f32_to_f16_avx512 },
        { "avx2", KB_CPU_ISA_AVX2, fast_f32_to_f16_avx2 },
    };
    for (size_t e = 0; e < sizeof(kk) / sizeof(kk[0]); e++) {
        if (!kb_cpu_isa_supported(kk[e].isa))
            continue;
        int bad = 0;
        for (int64_t len = 1; len <= 40; len++) {
            uint16_t h[41];
            h[len] = 0xabcd;                              /* must survive   */
            kk[e].fn(h, x, len);
            assert_int_equal(h[len], 0xabcd);
            for (int64_t i = 0; i < len; i++)
                bad += h[i] != f16_bits(x[i]);
        }
        print_message("  %s f32 -> f16 store: %d of 820 elements differ from round to nearest "
                      "even\n", kk[e].name, bad);
        assert_int_equal(bad, 0);
    }
}

/* A Gated DeltaNet block's constant tensors (bf16, random unless alog is
 * given: A_log = alog and dt_bias = 1 for every head, norm weight 1). */
struct gdn_fix {
    uint16_t *conv, *alog, *dtb, *nw;
    struct kb_weight cw, aw, dw, nwt;
    struct kb_gdn g;
    int64_t conv_dim;
};

static void gdn_fix_init(struct gdn_fix *f, int32_t nk, int32_t nv, int32_t dk, int32_t dv,
                         int32_t K, const float *alog)
{
    f->conv_dim = 2 * (int64_t)nk * dk + (int64_t)nv * dv;
    f->conv = malloc((size_t)(f->conv_dim * K) * 2);
    f->alog = malloc((size_t)nv * 2);
    f->dtb = malloc((size_t)nv * 2);
    f->nw = malloc((size_t)dv * 2);
    assert_true(f->conv && f->alog && f->dtb && f->nw);
    for (int64_t i = 0; i < f->conv_dim * K; i++)
        f->conv[i] = kb_f32_to_bf16(rnd_f() * 0.5f);
    for (int i = 0; i < nv; i++) {
        f->alog[i] = kb_f32_to_bf16(alog ? *alog : logf(1.0f + 4.0f * fabsf(rnd_f())));
        f->dtb[i] = kb_f32_to_bf16(alog ? 1.0f : rnd_f());
    }
    for (int i = 0; i < dv; i++)
        f->nw[i] = kb_f32_to_bf16(alog ? 1.0f : 1.0f + 0.3f * rnd_f());
    f->cw = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = f->conv_dim, .cols = K, .data = f->conv };
    f->aw = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = 1, .cols = nv, .data = f->alog };
    f->dw = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = 1, .cols = nv, .data = f->dtb };
    f->nwt = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = 1, .cols = dv, .data = f->nw };
    f->g = (struct kb_gdn){ .n_k_heads = nk, .n_v_heads = nv, .d_k = dk, .d_v = dv,
                            .conv_kernel = K, .norm_eps = 1e-6f, .conv1d = &f->cw,
                            .A_log = &f->aw, .dt_bias = &f->dw, .norm = &f->nwt };
}

static void gdn_fix_free(struct gdn_fix *f)
{
    free(f->conv);
    free(f->alog);
    free(f->dtb);
    free(f->nw);
}

/* Gated DeltaNet: conv + recurrence + gated norm with the state carried
 * over calls of different lengths (shorter than the conv window too). */
static void test_gdn(void **state)
{
    struct kb_backend *ref = ref_new(), *fa = fast_new(false, 2);
    enum { NK = 2, NV = 4, DK = 32, DV = 48, K = 4 };
    struct gdn_fix fx;
    gdn_fix_init(&fx, NK, NV, DK, DV, K, NULL);
    const struct kb_gdn g = fx.g;
    const int64_t conv_dim = fx.conv_dim, val = NV * DV;
    struct kb_gdn_state s0 = { calloc((size_t)((K - 1) * conv_dim), 4), calloc((size_t)(NV * DK * DV), 4) };
    struct kb_gdn_state s1 = { calloc((size_t)((K - 1) * conv_dim), 4), calloc((size_t)(NV * DK * DV), 4) };
    const int32_t steps[] = { 5, 1, 2, 1, 64, 1 };
    for (size_t st = 0; st < sizeof(steps) / sizeof(steps[0]); st++) {
        int32_t n = steps[st];
        float *qkv = rnd_vec((size_t)(n * conv_dim)), *z = rnd_vec((size_t)(n * val));
        float *b = rnd_vec((size_t)(n * NV)), *a = rnd_vec((size_t)(n * NV));
        float *y0 = calloc((size_t)(n * val), 4), *y1 = calloc((size_t)(n * val), 4);
        assert_int_equal(ref->ops->gdn(ref, &g, &s0, qkv, z, b, a, n, y0), 0);
        assert_int_equal(fa->ops->gdn(fa, &g, &s1, qkv, z, b, a, n, y1), 0);
        double e = rel_l2(y1, y0, (size_t)(n * val));
        double es = rel_l2(s1.ssm, s0.ssm, (size_t)(NV * DK * DV));
        double ec = rel_l2(s1.conv, s0.conv, (size_t)((K - 1) * conv_dim));
        printf("  cpu       gdn n %2d  out rel L2 %.3g  state %.3g  conv state %.3g\n", n, e, es, ec);
        assert_true(e <= 1e-5 && es <= 1e-5 && ec == 0.0);
        free(qkv); free(z); free(b); free(a); free(y0); free(y1);
    }
    free(s0.conv); free(s0.ssm); free(s1.conv); free(s1.ssm);
    gdn_fix_free(&fx);
    ref->ops->destroy(ref);
    fa->ops->destroy(fa);
}

/* A state full of denormals (a head with a small decay drives its state
 * there): the fast recurrence flushes them to zero for speed (fast.c,
 * gdn_job), which must not move the output beyond the GDN tolerance, and
 * must leave the calling thread's floating-point mode as it found it. */
static void test_gdn_denormal(void **state)
{
    struct kb_backend *ref = ref_new(), *fa = fast_new(false, 2);
    enum { NK = 1, NV = 2, DK = 16, DV = 32, K = 2 };
    const float alog = 4.0f;                     /* decay ~ e^-38 per token */
    struct gdn_fix fx;
    gdn_fix_init(&fx, NK, NV, DK, DV, K, &alog);
    const struct kb_gdn g = fx.g;
    const int64_t conv_dim = fx.conv_dim, val = NV * DV;
    const size_t ns = (size_t)(NV * DK * DV);
    struct kb_gdn_state s0 = { calloc((size_t)((K - 1) * conv_dim), 4), calloc(ns, 4) };
    struct kb_gdn_state s1 = { calloc((size_t)((K - 1) * conv_dim), 4), calloc(ns, 4) };
    for (size_t i = 0; i < ns; i++)
        s0.ssm[i] = s1.ssm[i] = rnd_f() * 1e-39f;    /* denormal */
    const int32_t n = 7;
    float *qkv = rnd_vec((size_t)(n * conv_dim)), *z = rnd_vec((size_t)(n * val));
    float *b = rnd_vec((size_t)(n * NV)), *a = rnd_vec((size_t)(n * NV));
    float *y0 = calloc((size_t)(n * val), 4), *y1 = calloc((size_t)(n * val), 4);
    volatile float tiny = 1e-38f, half = 0.5f;
    assert_true(tiny * half > 0.0f);                 /* denormals live here */
    assert_int_equal(ref->ops->gdn(ref, &g, &s0, qkv, z, b, a, n, y0), 0);
    assert_int_equal(fa->ops->gdn(fa, &g, &s1, qkv, z, b, a, n, y1), 0);
    assert_true(tiny * half > 0.0f);                 /* ... and still do */
    double e = rel_l2(y1, y0, (size_t)(n * val));
    printf("  cpu       gdn denormal state  out rel L2 %.3g (<= 1e-5)\n", e);
    assert_true(e <= 1e-5);
    free(qkv); free(z); free(b); free(a); free(y0); free(y1);
    free(s0.conv); free(s0.ssm); free(s1.conv); free(s1.ssm);
    gdn_fix_free(&fx);
    ref->ops->destroy(ref);
    fa->ops->destroy(fa);
}

static void test_bad_args(void **state)
{
    struct kb_backend *fa = fast_new(false, 1);
    struct kb_weight w = { .type = KB_WTYPE_Q4G32, .rows = 4, .cols = 40 };   /* cols % 32 */
    float x[40] = { 0 }, y[4];
    assert_int_equal(fa->ops->matmul(fa, &w, x, 1, y), -EINVAL);
    assert_non_null(fa->ops->last_error(fa));
    fa->ops->destroy(fa);
    struct kb_cpu_fast_params p = { .n_threads = -1 };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_fast_create(&p, &be), -EINVAL);
    /* the scalar fallback delegates to the oracle and gives its answers */
    struct kb_cpu_fast_params ps = { .n_threads = 1, .isa = KB_CPU_ISA_SCALAR };
    assert_int_equal(kb_cpu_fast_create(&ps, &be), 0);
    struct kb_backend *ref = ref_new();
    struct q4w q = q4_new(20, 64, KB_WTYPE_BF16, false);
    assert_true(check_matmul(ref, be, &q.w, 3, "scalar fallback") == 0.0);
    q4_free(&q);
    ref->ops->destroy(ref);
    be->ops->destroy(be);
}

/* The two SIMD levels against each other: same q8 bytes, same integer
 * sums, so the products differ only by fp32 reduction order. */
static void test_isa_agree(void **state)
{
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX512)) {
        print_message("  (no AVX-512 level on this CPU: nothing to compare)\n");
        return;
    }
    fast_q4_eps_init();
    const int64_t colss[] = { 2048, 512, 96, 160, 32 };
    double worst = 0.0;
    for (size_t ci = 0; ci < sizeof(colss) / sizeof(colss[0]); ci++) {
        const int64_t cols = colss[ci], rows = 37;
        const int32_t n = 5;
        const size_t rb = fast_q8_row_bytes(cols);
        float *x = rnd_vec((size_t)n * (size_t)cols);
        x[3] = 0.0f;                               /* a tie and an exact zero */
        x[1] = 0.5f * x[0];
        uint8_t *a512 = calloc((size_t)n, rb), *a2 = calloc((size_t)n, rb);
        assert_non_null(a512);
        assert_non_null(a2);
        for (int32_t t = 0; t < n; t++) {
            fast_q8_quantize_avx512(x + t * cols, cols, a512 + t * rb);
            fast_q8_quantize_avx2(x + t * cols, cols, a2 + t * rb);
        }
        assert_memory_equal(a512, a2, (size_t)n * rb);
        struct q4w q = q4_new(rows, cols, KB_WTYPE_BF16, false);
        float *y0 = calloc((size_t)(n * rows), sizeof(float)), *y1 = calloc((size_t)(n * rows), sizeof(float));
        fast_q4_q8_avx512(&q.w, 0, rows, a512, rb, NULL, n, y0, rows);
        fast_q4_q8_avx2(&q.w, 0, rows, a2, rb, NULL, n, y1, rows);
        double e = rel_l2(y1, y0, (size_t)(n * rows));
        worst = e > worst ? e : worst;
        q4_free(&q);
        free(x); free(a512); free(a2); free(y0); free(y1);
    }
    print_message("  avx2 vs avx512 W4 x int8: same q8 bytes, max rel L2 %.3g (tolerance 1e-6)\n",
                  worst);
    assert_true(worst <= 1e-6);
}

/* The avx2-vnni level's W4 x int8 product (real vpdpbusd) against the avx2
 * one (vpmaddubsw + vpmaddwd): the same int32 sums and the same fp32 code
 * after them, so every output must be equal bit for bit, on random weights
 * and activations, column counts with tails (not a multiple of the
 * 128-column chunk, an odd group count), row ranges not starting at 0,
 * 1..9 tokens (full and partial 4-token tiles), and a token index list. */
static void test_vnni_exact(void **state)
{
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX2_VNNI)) {
        print_message("  skip: this CPU lacks AVX-VNNI (CPUID.7.1:EAX[4]), the avx2-vnni level "
                      "cannot run here\n");
        skip();
    }
    fast_q4_eps_init();
    const int64_t colss[] = { 2048, 2080, 160, 96, 32, 4096 + 224 };
    size_t values = 0, diff = 0;
    for (size_t ci = 0; ci < sizeof(colss) / sizeof(colss[0]); ci++) {
        const int64_t cols = colss[ci], rows = 29;
        const size_t rb = fast_q8_row_bytes(cols);
        struct q4w q = q4_new(rows, cols, KB_WTYPE_BF16, false);
        for (int32_t n = 1; n <= 9; n++) {
            float *x = rnd_vec((size_t)n * (size_t)cols);
            for (int64_t i = 0; i < n * cols; i += 7)
                x[i] *= 40.0f;                     /* wide per-group ranges */
            x[0] = 0.0f;
            uint8_t *a = calloc((size_t)n, rb);
            assert_non_null(a);
            for (int32_t t = 0; t < n; t++)
                fast_q8_quantize_avx2(x + (int64_t)t * cols, cols, a + t * rb);
            float *y0 = calloc((size_t)(n * rows), sizeof(float));
            float *y1 = calloc((size_t)(n * rows), sizeof(float));
            assert_non_null(y0);
            assert_non_null(y1);
            /* rows 3..rows-1 of all tokens, then the tokens in reverse
             * through the index list for rows 0..2 */
            int32_t tok[9];
            for (int32_t t = 0; t < n; t++)
                tok[t] = n - 1 - t;
            fast_q4_q8_avx2(&q.w, 3, rows, a, rb, NULL, n, y0, rows);
            fast_q4_q8_avx2vnni(&q.w, 3, rows, a, rb, NULL, n, y1, rows);
            fast_q4_q8_avx2(&q.w, 0, 3, a, rb, tok, n, y0, rows);
            fast_q4_q8_avx2vnni(&q.w, 0, 3, a, rb, tok, n, y1, rows);
            for (int64_t i = 0; i < n * rows; i++)
                diff += memcmp(&y0[i], &y1[i], sizeof(float)) != 0;
            values += (size_t)(n * rows);
            free(x); free(a); free(y0); free(y1);
        }
        q4_free(&q);
    }
    print_message("  avx2-vnni vs avx2 W4 x int8: %zu of %zu values differ (required: 0, "
                  "bit-identical)\n", diff, values);
    assert_true(diff == 0);
}

/* Non-finite activations (a corrupted model makes them): each level
 * quantises a block holding Inf or NaN to zero bytes with NaN scales, so
 * the product of that row is NaN like the exact path's, and no lane is
 * converted to INT_MIN and summed (UBSan caught that overflow). Blocks
 * without them are untouched. */
static void test_q8_nonfinite(void **state)
{
    const int64_t cols = 128;
    const size_t rb = fast_q8_row_bytes(cols);
    const float bad[] = { INFINITY, -INFINITY, NAN };
    for (size_t bi = 0; bi < sizeof(bad) / sizeof(bad[0]); bi++) {
        float *x = rnd_vec((size_t)cols);
        uint8_t *clean = calloc(1, rb), *q = calloc(1, rb);
        assert_non_null(clean);
        assert_non_null(q);
        int32_t levels = kb_cpu_isa_supported(KB_CPU_ISA_AVX512) ? 2 : 1;
        for (int32_t l = 0; l < levels; l++) {
            void (*quant)(const float *, int64_t, uint8_t *) = l == 0 ? fast_q8_quantize_avx2
                                                                      : fast_q8_quantize_avx512;
            quant(x, cols, clean);
            x[37] = bad[bi];                           /* block 1 of the chunk */
            quant(x, cols, q);
            x[37] = 0.5f;
            const float *d = (const float *)(q + 256), *dc = (const float *)(clean + 256);
            for (int j = 0; j < 16; j++) {
                if (j / 4 == 1)
                    assert_true(isnan(d[j]));
                else
                    assert_true(d[j] == dc[j]);
            }
            for (int pl = 0; pl < 4; pl++)
                for (int k = 0; k < 16; k++)
                    assert_int_equal(q[64 * pl + 16 + k], 0);
        }
        free(x); free(clean); free(q);
    }
    print_message("  Inf, -Inf and NaN activations: zero bytes and NaN scales in their block only\n");
}

/* RESIDENT_CPU_ISA picks the level when the params say "auto"; a level
 * the CPU lacks is refused with -ENOTSUP, through the environment and the
 * params alike. */
static void test_isa_env(void **state)
{
    struct kb_cpu_fast_params p = { .n_threads = 1, .isa = KB_CPU_ISA_AUTO };
    struct kb_backend *be = NULL;
    static const struct { int32_t isa; const char *env; } named[] = {
        { KB_CPU_ISA_AVX512, "avx512" }, { KB_CPU_ISA_AVX2_VNNI, "avx2vnni" },
        { KB_CPU_ISA_AVX2_VNNI, "avx2-vnni" }, { KB_CPU_ISA_AVX2, "avx2" },
    };
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        const bool has = kb_cpu_isa_supported(named[i].isa);
        int32_t parsed = -1;
        assert_int_equal(kb_cpu_isa_parse(named[i].env, &parsed), 0);
        assert_int_equal(parsed, named[i].isa);
        assert_int_equal(setenv("RESIDENT_CPU_ISA", named[i].env, 1), 0);
        be = NULL;
        int rc = kb_cpu_fast_create(&p, &be);
        print_message("  RESIDENT_CPU_ISA=%-9s -> %s (%s on this CPU)\n", named[i].env,
                      rc ? strerror(-rc) : kb_cpu_isa_name(kb_cpu_fast_isa(be)),
                      has ? "present" : "absent");
        if (has) {
            assert_int_equal(rc, 0);
            assert_int_equal(kb_cpu_fast_isa(be), named[i].isa);
            be->ops->destroy(be);
        } else {
            assert_int_equal(rc, -ENOTSUP);
            assert_null(be);
        }
        struct kb_cpu_fast_params pf = { .n_threads = 1, .isa = named[i].isa };
        be = NULL;
        assert_int_equal(unsetenv("RESIDENT_CPU_ISA"), 0);
        assert_int_equal(kb_cpu_fast_create(&pf, &be), has ? 0 : -ENOTSUP);
        if (be)
            be->ops->destroy(be);
    }
    assert_string_equal(kb_cpu_isa_name(KB_CPU_ISA_AVX2_VNNI), "avx2-vnni");
    /* the best level is one the CPU has, and every better one is absent */
    const int32_t best = kb_cpu_fast_best_isa();
    assert_true(kb_cpu_isa_supported(best));
    for (int32_t l = best + 1; l <= KB_CPU_ISA_AVX512; l++)
        assert_false(kb_cpu_isa_supported(l));
    assert_false(kb_cpu_isa_supported(KB_CPU_ISA_AVX512 + 1));
    assert_int_equal(setenv("RESIDENT_CPU_ISA", "avx2", 1), 0);
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    assert_int_equal(kb_cpu_fast_isa(be), KB_CPU_ISA_AVX2);
    be->ops->destroy(be);
    assert_int_equal(setenv("RESIDENT_CPU_ISA", "scalar", 1), 0);
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    assert_int_equal(kb_cpu_fast_isa(be), KB_CPU_ISA_SCALAR);
    be->ops->destroy(be);
    assert_int_equal(setenv("RESIDENT_CPU_ISA", "sse9", 1), 0);
    assert_int_equal(kb_cpu_fast_create(&p, &be), -EINVAL);
    /* explicit params win over the environment */
    p.isa = KB_CPU_ISA_AVX2;
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    assert_int_equal(kb_cpu_fast_isa(be), KB_CPU_ISA_AVX2);
    be->ops->destroy(be);
    assert_int_equal(unsetenv("RESIDENT_CPU_ISA"), 0);
    p.isa = KB_CPU_ISA_AUTO;
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    assert_int_equal(kb_cpu_fast_isa(be), kb_cpu_fast_best_isa());
    be->ops->destroy(be);
}

int main(void)
{
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX2)) {
        printf("skip: this CPU lacks AVX2 + FMA, which the lowest fast kernel level needs\n");
        return 77;
    }
    unsetenv("RESIDENT_CPU_ISA");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q4_matmul),
        cmocka_unit_test(test_dense_matmul),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_grouping),
        cmocka_unit_test(test_gdn),
        cmocka_unit_test(test_gdn_denormal),
        cmocka_unit_test(test_bad_args),
    };
    const struct CMUnitTest once[] = {
        cmocka_unit_test(test_isa_agree),
        cmocka_unit_test(test_vnni_exact),
        cmocka_unit_test(test_q8_nonfinite),
        cmocka_unit_test(test_isa_env),
        cmocka_unit_test(test_f16_store),
    };
    int failed = 0;
    const int32_t levels[] = { KB_CPU_ISA_AVX512, KB_CPU_ISA_AVX2_VNNI, KB_CPU_ISA_AVX2 };
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        if (!kb_cpu_isa_supported(levels[i])) {
            printf("level %s: not on this CPU, not tested here\n", kb_cpu_isa_name(levels[i]));
            continue;
        }
        test_isa = levels[i];
        printf("level %s:\n", kb_cpu_isa_name(test_isa));
        failed += _cmocka_run_group_tests(kb_cpu_isa_name(test_isa), tests,
                                          sizeof(tests) / sizeof(tests[0]), NULL, NULL);
    }
    failed += cmocka_run_group_tests_name("isa", once, NULL, NULL);
    return failed ? 1 : 0;
}
