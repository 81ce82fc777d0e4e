/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The chunked Gated DeltaNet of the fast CPU backend (kernels/cpu/fast-gdn.c)
 * against the cpu-ref oracle's recurrence, at every kernel level the CPU
 * has (AVX-512 VNNI, AVX2 + FMA; forced through kb_cpu_fast_params.isa).
 *
 * - chunked vs ref: n = 1, 17, 64, 65, 130, 200 tokens in one call (one
 *   partial chunk, exactly one, one plus one token, several), head shapes
 *   16 k / 32 v heads of 128 (the real model), 2 / 4 heads of 32 (the tiny
 *   fixtures) and 1 / 2 heads of dk 48, dv 80 (odd tiles), from a random
 *   non-zero state (ssm and conv), decays from ~1 to ~e^-30 per token.
 *   The backend is created with gdn_chunk_min 1 so every n takes the
 *   chunked form. Tolerance: relative L2 <= 1e-5 on the outputs and on the
 *   final state (fp32 in a different order than the reference's double
 *   sums; the recurrent fast path meets the same bound in test-fast.c).
 * - one call vs two: the same n tokens in one call and split in two (state
 *   carried, chunks aligned differently): relative L2 <= 1e-5.
 * - the threshold: with gdn_chunk_min FAST_GDN_CHUNK_MIN a call of that
 *   many tokens takes the chunked form and one token fewer the recurrence,
 *   both within the same tolerance of ref; by default (chunked form off) a
 *   split prefill equals one call bit for bit.
 * Exits 77 (skipped) on a CPU without AVX2 + FMA.
 */
#include <math.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "kernels/backend.h"
#include "kernels/cpu/fast-gdn.h"
#include "kernels/cpu/fast.h"
#include "kernels/cpu/ref.h"

#define TOL 1e-5

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static float rnd_f(void)                         /* uniform [-1, 1)       */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((uint32_t)(rng_state >> 16) & 0xffffff) / 8388608.0f - 1.0f;
}

static float *rnd_vec(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float));
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = rnd_f() * scale;
    return v;
}

static double rel_l2(const float *got, const float *want, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int32_t test_isa = KB_CPU_ISA_AVX512;

static struct kb_backend *fast_new(int32_t chunk_min)
{
    struct kb_cpu_fast_params p = { .n_threads = 2, .isa = test_isa, .gdn_chunk_min = chunk_min };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    return be;
}

static struct kb_backend *ref_new(void)
{
    struct kb_cpu_params p = { .n_threads = 2 };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_ref_create(&p, &be), 0);
    return be;
}

/* One GDN layer's constants (bf16) with A_log spread over [-6, 2], so the
 * heads range from a decay near 1 (state carried across many chunks) to a
 * strong one. */
struct fix {
    int32_t nk, nv, dk, dv, K;
    int64_t conv_dim, val, ns;
    uint16_t *conv, *alog, *dtb, *nw;
    struct kb_weight cw, aw, dw, nwt;
    struct kb_gdn g;
};

static void fix_init(struct fix *f, int32_t nk, int32_t nv, int32_t dk, int32_t dv)
{
    *f = (struct fix){ .nk = nk, .nv = nv, .dk = dk, .dv = dv, .K = 4 };
    f->conv_dim = 2 * (int64_t)nk * dk + (int64_t)nv * dv;
    f->val = (int64_t)nv * dv;
    f->ns = (int64_t)nv * dk * dv;
    f->conv = malloc((size_t)(f->conv_dim * f->K) * 2);
    f->alog = malloc((size_t)nv * 2);
    f->dtb = malloc((size_t)nv * 2);
    f->nw = malloc((size_t)dv * 2);
    assert_true(f->conv && f->alog && f->dtb && f->nw);
    for (int64_t i = 0; i < f->conv_dim * f->K; i++)
        f->conv[i] = kb_f32_to_bf16(rnd_f() * 0.5f);
    for (int i = 0; i < nv; i++) {
        f->alog[i] = kb_f32_to_bf16(nv > 1 ? -6.0f + 8.0f * (float)i / (float)(nv - 1) : 0.0f);
        f->dtb[i] = kb_f32_to_bf16(rnd_f());
    }
    for (int i = 0; i < dv; i++)
        f->nw[i] = kb_f32_to_bf16(1.0f + 0.3f * rnd_f());
    f->cw = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = f->conv_dim, .cols = f->K,
                                .data = f->conv };
    f->aw = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = 1, .cols = nv, .data = f->alog };
    f->dw = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = 1, .cols = nv, .data = f->dtb };
    f->nwt = (struct kb_weight){ .type = KB_WTYPE_BF16, .rows = 1, .cols = dv, .data = f->nw };
    f->g = (struct kb_gdn){ .n_k_heads = nk, .n_v_heads = nv, .d_k = dk, .d_v = dv,
                            .conv_kernel = f->K, .norm_eps = 1e-6f, .conv1d = &f->cw,
                            .A_log = &f->aw, .dt_bias = &f->dw, .norm = &f->nwt };
}

static void fix_free(struct fix *f)
{
    free(f->conv);
    free(f->alog);
    free(f->dtb);
    free(f->nw);
}

/* n tokens of layer inputs; a spans [-4, 4) so some tokens decay hard. */
struct inputs {
    float *qkv, *z, *b, *a;
};

static void inputs_init(struct inputs *in, const struct fix *f, int32_t n)
{
    in->qkv = rnd_vec((size_t)(n * f->conv_dim), 1.0f);
    in->z = rnd_vec((size_t)(n * f->val), 1.0f);
    in->b = rnd_vec((size_t)n * (size_t)f->nv, 2.0f);
    in->a = rnd_vec((size_t)n * (size_t)f->nv, 4.0f);
}

static void inputs_free(struct inputs *in)
{
    free(in->qkv); free(in->z); free(in->b); free(in->a);
}

static void state_init(struct kb_gdn_state *s, const struct fix *f, const float *conv,
                       const float *ssm)
{
    const size_t nc = (size_t)((f->K - 1) * f->conv_dim);
    s->conv = malloc(nc * sizeof(float));
    s->ssm = malloc((size_t)f->ns * sizeof(float));
    assert_true(s->conv && s->ssm);
    memcpy(s->conv, conv, nc * sizeof(float));
    memcpy(s->ssm, ssm, (size_t)f->ns * sizeof(float));
}

static void state_free(struct kb_gdn_state *s)
{
    free(s->conv);
    free(s->ssm);
}

static const int32_t shapes[][4] = { { 16, 32, 128, 128 }, { 2, 4, 32, 32 }, { 1, 2, 48, 80 } };
#define N_SHAPES (sizeof(shapes) / sizeof(shapes[0]))

/* One call of n tokens from a random state on the backend `fa` and on ref. */
static void check_one(struct kb_backend *ref, struct kb_backend *fa, const struct fix *f,
                      int32_t n, const char *what)
{
    float *conv0 = rnd_vec((size_t)((f->K - 1) * f->conv_dim), 1.0f);
    float *ssm0 = rnd_vec((size_t)f->ns, 0.5f);
    struct kb_gdn_state s0, s1;
    state_init(&s0, f, conv0, ssm0);
    state_init(&s1, f, conv0, ssm0);
    struct inputs in;
    inputs_init(&in, f, n);
    float *y0 = calloc((size_t)(n * f->val), 4), *y1 = calloc((size_t)(n * f->val), 4);
    assert_true(y0 && y1);
    assert_int_equal(ref->ops->gdn(ref, &f->g, &s0, in.qkv, in.z, in.b, in.a, n, y0), 0);
    assert_int_equal(fa->ops->gdn(fa, &f->g, &s1, in.qkv, in.z, in.b, in.a, n, y1), 0);
    const double e = rel_l2(y1, y0, (size_t)(n * f->val));
    const double es = rel_l2(s1.ssm, s0.ssm, (size_t)f->ns);
    printf("  %-9s nk %2d nv %2d dk %3d dv %3d  n %3d  out rel L2 %.3g  state %.3g (<= %.0e)\n",
           what, f->nk, f->nv, f->dk, f->dv, n, e, es, TOL);
    assert_true(e <= TOL && es <= TOL);
    assert_memory_equal(s1.conv, s0.conv, (size_t)((f->K - 1) * f->conv_dim) * sizeof(float));
    free(y0); free(y1); free(conv0); free(ssm0);
    inputs_free(&in);
    state_free(&s0); state_free(&s1);
}

static void test_chunked_vs_ref(void **state)
{
    (void)state;
    const int32_t ns[] = { 1, 17, 64, 65, 130, 200 };
    for (size_t sh = 0; sh < N_SHAPES; sh++) {
        /* backends per fixture: the fast one caches the small constant
         * tensors by address, and a freed fixture's address comes back */
        struct kb_backend *ref = ref_new(), *fa = fast_new(1);
        struct fix f;
        fix_init(&f, shapes[sh][0], shapes[sh][1], shapes[sh][2], shapes[sh][3]);
        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
            check_one(ref, fa, &f, ns[i], "chunked");
        fix_free(&f);
        ref->ops->destroy(ref);
        fa->ops->destroy(fa);
    }
}

/* The switch-on threshold: FAST_GDN_CHUNK_MIN tokens chunked, one fewer
 * recurrent, both vs ref. */
static void test_default_threshold(void **state)
{
    (void)state;
    struct kb_backend *ref = ref_new(), *fa = fast_new(FAST_GDN_CHUNK_MIN);
    struct fix f;
    fix_init(&f, 2, 4, 32, 32);
    check_one(ref, fa, &f, FAST_GDN_CHUNK_MIN, "threshold");
    check_one(ref, fa, &f, FAST_GDN_CHUNK_MIN - 1, "threshold");
    fix_free(&f);
    ref->ops->destroy(ref);
    fa->ops->destroy(fa);
}

/* n tokens in one call vs the same tokens in two calls (n1 + n - n1):
 * chunked form on (gdn_chunk_min 1), within TOL; by default (off), bit for
 * bit, which residentd's split invariance rests on (fast-gdn.h). */
static void test_split(void **state)
{
    (void)state;
    const int32_t splits[][2] = { { 130, 64 }, { 130, 37 }, { 200, 150 }, { 65, 1 } };
    for (size_t m = 0; m < 2 * N_SHAPES; m++) {
        const size_t sh = m % N_SHAPES;
        const bool chunked = m < N_SHAPES;
        struct kb_backend *fa = fast_new(chunked ? 1 : 0);  /* per fixture: see above */
        struct fix f;
        fix_init(&f, shapes[sh][0], shapes[sh][1], shapes[sh][2], shapes[sh][3]);
        for (size_t i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
            const int32_t n = splits[i][0], n1 = splits[i][1];
            float *conv0 = rnd_vec((size_t)((f.K - 1) * f.conv_dim), 1.0f);
            float *ssm0 = rnd_vec((size_t)f.ns, 0.5f);
            struct kb_gdn_state s0, s1;
            state_init(&s0, &f, conv0, ssm0);
            state_init(&s1, &f, conv0, ssm0);
            struct inputs in;
            inputs_init(&in, &f, n);
            float *y0 = calloc((size_t)(n * f.val), 4), *y1 = calloc((size_t)(n * f.val), 4);
            assert_true(y0 && y1);
            assert_int_equal(fa->ops->gdn(fa, &f.g, &s0, in.qkv, in.z, in.b, in.a, n, y0), 0);
            assert_int_equal(fa->ops->gdn(fa, &f.g, &s1, in.qkv, in.z, in.b, in.a, n1, y1), 0);
            assert_int_equal(fa->ops->gdn(fa, &f.g, &s1, in.qkv + (int64_t)n1 * f.conv_dim,
                                          in.z + (int64_t)n1 * f.val, in.b + (int64_t)n1 * f.nv,
                                          in.a + (int64_t)n1 * f.nv, n - n1,
                                          y1 + (int64_t)n1 * f.val), 0);
            const double e = rel_l2(y1, y0, (size_t)(n * f.val));
            const double es = rel_l2(s1.ssm, s0.ssm, (size_t)f.ns);
            printf("  split %-7s nk %2d nv %2d dk %3d dv %3d  %3d vs %3d + %3d  out rel L2 %.3g  "
                   "state %.3g (<= %.0e)\n", chunked ? "chunked" : "default", f.nk, f.nv, f.dk, f.dv, n,
                   n1, n - n1, e, es, chunked ? TOL : 0.0);
            if (chunked)
                assert_true(e <= TOL && es <= TOL);
            else
                assert_true(!memcmp(y0, y1, sizeof(float) * (size_t)(n * f.val)) &&
                            !memcmp(s0.ssm, s1.ssm, sizeof(float) * (size_t)f.ns));
            free(y0); free(y1); free(conv0); free(ssm0);
            inputs_free(&in);
            state_free(&s0); state_free(&s1);
        }
        fix_free(&f);
        fa->ops->destroy(fa);
    }
}

int main(void)
{
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX2)) {
        printf("skip: this CPU lacks AVX2 + FMA, which the lowest fast kernel level needs\n");
        return 77;
    }
    unsetenv("RESIDENT_CPU_ISA");
    unsetenv("RESIDENT_GDN_CHUNK_MIN");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked_vs_ref),
        cmocka_unit_test(test_default_threshold),
        cmocka_unit_test(test_split),
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
    return failed ? 1 : 0;
}
