/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fast backend's embed, RMSNorm, RoPE, add and sigmoid gate
 * (fast-elem.c and the row kernels) against the cpu-ref oracle, at every
 * kernel level the CPU has, on ragged shapes: dims that are no multiple of
 * 16 (or 8), 1 and 37 rows, row strides larger than the dim, y aliasing
 * x, and calls large enough to be split across the pool. Tolerances
 * (each test prints its measured maximum):
 *   embed (bf16 / f16 / f32 / W4 tables), add:  bit-identical
 *   RoPE: bit-identical expected (same float expressions and libm calls,
 *     products kept unfused); asserted <= 1e-6 of the row's largest
 *     magnitude, so that a reference built with FMA contraction passes
 *   RMSNorm: relative 1e-6 per element (the double sum of squares adds in
 *     another order; in practice 0 or 1 ulp)
 *   sigmoid gate: 4 ulp. The fast gate takes expf(-g) correctly rounded
 *     (a double exp rounded to float); glibc's expf (0.502 ulp) differs
 *     from that by 1 ulp for ~0.06 % of arguments, and 1 ulp of the exp
 *     becomes up to 2 ulp of 1 / (1 + e) and 3 of x * sigmoid. Everywhere
 *     else the result is bit-identical; the count of differing floats is
 *     printed.
 * The AVX-512 and AVX2 levels must give the same bits for every op (one
 * exp polynomial, same operation order). Exits 77 on a CPU without AVX2.
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
#include "kernels/cpu/ref.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

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

static float *rnd_vec(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float) + 64);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = scale * rnd_f();
    return v;
}

static float *dup_vec(const float *v, size_t n)
{
    float *d = malloc(n * sizeof(float) + 64);
    assert_non_null(d);
    memcpy(d, v, n * sizeof(float));
    return d;
}

static int32_t test_isa = KB_CPU_ISA_AVX512;   /* the level under test */

static struct kb_backend *ref_new(void)
{
    struct kb_cpu_params p = { .n_threads = 1 };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_ref_create(&p, &be), 0);
    return be;
}

static struct kb_backend *fast_new(int32_t isa, int32_t threads)
{
    struct kb_cpu_fast_params p = { .n_threads = threads, .isa = isa };
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_fast_create(&p, &be), 0);
    assert_int_equal(kb_cpu_fast_isa(be), isa);
    return be;
}

static int64_t ulp_dist(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t la = ia < 0 ? (int64_t)INT32_MIN - ia : ia, lb = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return la > lb ? la - lb : lb - la;
}

/* A dense vector weight of `type` holding rounded random values. */
struct dvec {
    struct kb_weight w;
    void *data;
};

static struct dvec dvec_new(enum kb_wtype type, int64_t rows, int64_t cols, float scale)
{
    struct dvec d = { 0 };
    size_t n = (size_t)(rows * cols);
    d.data = malloc(n * 4);
    assert_non_null(d.data);
    for (size_t i = 0; i < n; i++) {
        float v = scale * rnd_f();
        if (type == KB_WTYPE_F32) {
            ((float *)d.data)[i] = v;
        } else if (type == KB_WTYPE_BF16) {
            ((uint16_t *)d.data)[i] = kb_f32_to_bf16(v);
        } else {
            /* f16 bits built directly: every exponent incl. subnormals */
            uint16_t h = (uint16_t)(rnd_u32() & 0xffff);
            if (((h >> 10) & 0x1f) == 31)
                h &= 0xbfff;                               /* no Inf / NaN */
            ((uint16_t *)d.data)[i] = h;
        }
    }
    d.w = (struct kb_weight){ .type = type, .rows = rows, .cols = cols, .data = d.data };
    return d;
}

static const enum kb_wtype dense_types[3] = { KB_WTYPE_BF16, KB_WTYPE_F16, KB_WTYPE_F32 };

/* ------------------------------------------------------------------ */

static void test_embed(void **state)
{
    (void)state;
    struct kb_backend *ref = ref_new(), *fast = fast_new(test_isa, 2);
    const int64_t vocab = 300;
    const int64_t cols_list[3] = { 37, 2048, 2053 };
    const int32_t n_list[3] = { 1, 37, 64 };       /* 64 x 2053: split across the pool */
    int32_t ids[64];
    for (int ti = 0; ti < 3; ti++)
        for (int ci = 0; ci < 3; ci++) {
            struct dvec d = dvec_new(dense_types[ti], vocab, cols_list[ci], 2.0f);
            for (int ni = 0; ni < 3; ni++) {
                const int32_t n = n_list[ni];
                for (int32_t t = 0; t < n; t++)
                    ids[t] = t == 0 ? (int32_t)vocab - 1 : (int32_t)(rnd_u32() % vocab);
                size_t sz = (size_t)n * (size_t)cols_list[ci];
                float *a = calloc(sz, sizeof(float)), *b = calloc(sz, sizeof(float));
                assert_int_equal(ref->ops->embed(ref, &d.w, ids, n, a), 0);
                assert_int_equal(fast->ops->embed(fast, &d.w, ids, n, b), 0);
                assert_memory_equal(a, b, sz * sizeof(float));
                free(a);
                free(b);
            }
            free(d.data);
        }
    /* a W4 table: the reference's rows */
    int32_t *packed = malloc(40 * 64 / 8 * sizeof(int32_t));
    uint16_t *scales = malloc(40 * 2 * sizeof(uint16_t));
    for (int i = 0; i < 40 * 64 / 8; i++)
        packed[i] = (int32_t)rnd_u32();
    for (int i = 0; i < 80; i++)
        scales[i] = kb_f32_to_bf16(0.01f + 0.02f * fabsf(rnd_f()));
    struct kb_weight q = { .type = KB_WTYPE_Q4G32, .rows = 40, .cols = 64, .data = packed,
                           .scales = scales, .scale_type = KB_WTYPE_BF16 };
    for (int32_t t = 0; t < 37; t++)
        ids[t] = (int32_t)(rnd_u32() % 40);
    float a[37 * 64], b[37 * 64];
    assert_int_equal(ref->ops->embed(ref, &q, ids, 37, a), 0);
    assert_int_equal(fast->ops->embed(fast, &q, ids, 37, b), 0);
    assert_memory_equal(a, b, sizeof(a));
    /* bad ids: refused as the reference does, and nothing written */
    struct dvec d = dvec_new(KB_WTYPE_BF16, vocab, 37, 1.0f);
    int32_t bad[3] = { 1, (int32_t)vocab, 2 };
    memset(b, 0x7f, sizeof(b));
    assert_int_equal(ref->ops->embed(ref, &d.w, bad, 3, a), -EINVAL);
    assert_int_equal(fast->ops->embed(fast, &d.w, bad, 3, b), -EINVAL);
    assert_true(b[0] == b[1] && b[0] > 3e38f);
    bad[1] = -1;
    assert_int_equal(fast->ops->embed(fast, &d.w, bad, 3, b), -EINVAL);
    assert_int_equal(fast->ops->embed(fast, &d.w, bad, -1, b), -EINVAL);
    free(d.data);
    free(packed);
    free(scales);
    printf("    embed (bf16 / f16 / f32 / W4 tables): bit-identical\n");
    fast->ops->destroy(fast);
    ref->ops->destroy(ref);
}

/* ------------------------------------------------------------------ */

static void test_rmsnorm(void **state)
{
    (void)state;
    struct kb_backend *ref = ref_new(), *fast = fast_new(test_isa, 2);
    const int32_t dims[5] = { 1, 7, 37, 256, 2053 };
    const int64_t rows_list[3] = { 1, 37, 64 };    /* 64 x 2053: split across the pool */
    double max_rel = 0.0;
    int64_t max_ulp = 0, n_diff = 0, n_all = 0;
    for (int di = 0; di < 5; di++)
        for (int ti = 0; ti < 3; ti++)
            for (int ri = 0; ri < 3; ri++)
                for (int mode = 0; mode < 3; mode++) {  /* strided, aliased, contiguous */
                    const int32_t dim = dims[di];
                    const int64_t rows = rows_list[ri];
                    const bool plus_one = (mode + ti) % 2 == 0;
                    struct dvec w = dvec_new(dense_types[ti], 1, dim, 0.5f);
                    const int64_t xs = mode == 0 ? dim + 5 : dim, ys = mode == 0 ? dim + 3 : dim;
                    float *x = rnd_vec((size_t)(rows * xs), 3.0f);
                    float *x2 = dup_vec(x, (size_t)(rows * xs));
                    float *ya = rnd_vec((size_t)(rows * ys), 1.0f);
                    float *yb = mode == 1 ? x2 : dup_vec(ya, (size_t)(rows * ys));
                    float *yr = mode == 1 ? x : ya;
                    assert_int_equal(ref->ops->rmsnorm(ref, yr, ys, x, xs, rows, dim, &w.w, 1e-6f,
                                                       plus_one), 0);
                    assert_int_equal(fast->ops->rmsnorm(fast, yb, ys, x2, xs, rows, dim, &w.w,
                                                        1e-6f, plus_one), 0);
                    /* every float of the buffers, padding between rows included */
                    for (int64_t i = 0; i < rows * ys; i++) {
                        float r = yr[i], f = yb[i];
                        double rel = fabs((double)f - r) / (fabs(r) > 1e-30 ? fabs(r) : 1e-30);
                        if (rel > max_rel)
                            max_rel = rel;
                        int64_t u = ulp_dist(f, r);
                        max_ulp = u > max_ulp ? u : max_ulp;
                        n_diff += u != 0;
                        n_all++;
                        if (rel > 1e-6)
                            fail_msg("rmsnorm dim %d rows %lld type %d: %g vs %g (rel %.2e)", dim,
                                     (long long)rows, ti, f, r, rel);
                    }
                    free(x);
                    free(x2);
                    free(ya);
                    if (mode != 1)
                        free(yb);
                    free(w.data);
                }
    /* a weight of another size is refused */
    struct dvec w = dvec_new(KB_WTYPE_BF16, 1, 36, 1.0f);
    float v[37] = { 0 };
    assert_int_equal(fast->ops->rmsnorm(fast, v, 37, v, 37, 1, 37, &w.w, 1e-6f, true), -EINVAL);
    free(w.data);
    printf("    rmsnorm: max relative error %.3e (tolerance 1e-6), max %lld ulp, "
           "%lld of %lld floats differ\n", max_rel, (long long)max_ulp, (long long)n_diff,
           (long long)n_all);
    fast->ops->destroy(fast);
    ref->ops->destroy(ref);
}

/* ------------------------------------------------------------------ */

static void test_rope(void **state)
{
    (void)state;
    struct kb_backend *ref = ref_new(), *fast = fast_new(test_isa, 2);
    struct { int32_t rot, heads; int64_t stride; double theta; } shapes[6] = {
        { 64, 16, 256, 1e7 },                    /* the model's q (partial rotary) */
        { 64, 40, 64, 1e7 },                     /* 64 tokens: split across the pool */
        { 64, 2, 256, 1e7 },                     /* its k                          */
        { 18, 3, 37, 1e4 },                      /* half 9: masked tails           */
        { 2, 1, 2, 1e4 },
        { 128, 1, 128, 1e6 },                    /* full rotary                    */
    };
    const int32_t n_list[3] = { 1, 37, 64 };
    double max_err = 0.0;
    int64_t max_ulp = 0;
    int32_t pos[64];
    for (int si = 0; si < 6; si++)
        for (int ni = 0; ni < 3; ni++)
            for (int rep = 0; rep < 3; rep++) {
                const int32_t n = n_list[ni], nh = shapes[si].heads, rot = shapes[si].rot;
                const int64_t stride = shapes[si].stride;
                /* rep 1 repeats rep 0's positions (the cached table), rep 2
                 * keeps n and moves every position by one */
                for (int32_t t = 0; t < n; t++)
                    if (rep == 0)
                        pos[t] = t == 1 ? 262143 : (int32_t)(rnd_u32() % 40000);
                    else if (rep == 2)
                        pos[t]++;
                size_t sz = (size_t)n * (size_t)nh * (size_t)stride;
                float *a = rnd_vec(sz, 2.0f), *b = dup_vec(a, sz);
                assert_int_equal(ref->ops->rope(ref, a, n, nh, stride, rot, pos, shapes[si].theta), 0);
                assert_int_equal(fast->ops->rope(fast, b, n, nh, stride, rot, pos, shapes[si].theta), 0);
                for (size_t row = 0; row < sz / (size_t)stride; row++) {
                    float mx = 0.0f;
                    for (int64_t i = 0; i < stride; i++)
                        mx = fmaxf(mx, fabsf(a[row * (size_t)stride + (size_t)i]));
                    for (int64_t i = 0; i < stride; i++) {
                        size_t k = row * (size_t)stride + (size_t)i;
                        double e = fabs((double)a[k] - b[k]) / (mx > 0 ? mx : 1.0f);
                        max_err = e > max_err ? e : max_err;
                        int64_t u = ulp_dist(a[k], b[k]);
                        max_ulp = u > max_ulp ? u : max_ulp;
                        if (e > 1e-6)
                            fail_msg("rope rot %d n %d row %zu i %lld: %g vs %g", rot, n, row,
                                     (long long)i, b[k], a[k]);
                    }
                }
                free(a);
                free(b);
            }
    float v[4] = { 0 };
    assert_int_equal(fast->ops->rope(fast, v, 1, 1, 4, 3, pos, 1e4), -EINVAL);
    assert_int_equal(fast->ops->rope(fast, v, 1, 1, 4, 6, pos, 1e4), -EINVAL);
    printf("    rope: max error %.3e of the row's largest magnitude (tolerance 1e-6), max %lld ulp\n",
           max_err, (long long)max_ulp);
    fast->ops->destroy(fast);
    ref->ops->destroy(ref);
}

/* ------------------------------------------------------------------ */

static void test_add(void **state)
{
    (void)state;
    struct kb_backend *ref = ref_new(), *fast = fast_new(test_isa, 2);
    const int64_t counts[5] = { 1, 37, 2053, 64 * 2048, 64 * 2048 + 13 };
    for (int ci = 0; ci < 5; ci++)
        for (int alias = 0; alias < 3; alias++) {       /* none, y = a, y = b */
            const size_t n = (size_t)counts[ci];
            float *a = rnd_vec(n, 10.0f), *b = rnd_vec(n, 1.0f);
            float *a2 = dup_vec(a, n), *b2 = dup_vec(b, n);
            float *y = rnd_vec(n, 1.0f), *y2 = dup_vec(y, n);
            float *yr = alias == 1 ? a : alias == 2 ? b : y;
            float *yf = alias == 1 ? a2 : alias == 2 ? b2 : y2;
            assert_int_equal(ref->ops->add(ref, yr, a, b, (int64_t)n), 0);
            assert_int_equal(fast->ops->add(fast, yf, a2, b2, (int64_t)n), 0);
            assert_memory_equal(yr, yf, n * sizeof(float));
            free(a);
            free(b);
            free(a2);
            free(b2);
            free(y);
            free(y2);
        }
    printf("    add: bit-identical\n");
    fast->ops->destroy(fast);
    ref->ops->destroy(ref);
}

/* ------------------------------------------------------------------ */

static void test_mul_sigmoid(void **state)
{
    (void)state;
    struct kb_backend *ref = ref_new(), *fast = fast_new(test_isa, 2);
    const int32_t dims[4] = { 1, 37, 256, 2053 };
    const int64_t rows_list[3] = { 1, 37, 1024 };  /* 1024 x 256: the pool */
    int64_t max_ulp = 0, n_diff = 0, n_all = 0;
    for (int di = 0; di < 4; di++)
        for (int ri = 0; ri < 3; ri++)
            for (int mode = 0; mode < 2; mode++) {
                const int32_t dim = dims[di];
                const int64_t rows = rows_list[ri];
                if (rows * dim > 1 << 20)
                    continue;
                /* mode 0: separate x, gate and y with strides > dim;
                 * mode 1: the attention gate's layout: y = x, stride dim,
                 * the gate the second half of rows of 2 * dim */
                const int64_t xs = mode ? dim : dim + 3, ys = mode ? dim : dim + 7, gs = 2 * dim;
                const size_t nx = (size_t)(rows * xs), ny = (size_t)(rows * ys);
                const size_t ng = (size_t)(rows * gs);
                float *x = rnd_vec(nx, 4.0f), *g = rnd_vec(ng, 12.0f);
                for (size_t i = 0; i < ng; i += 97)      /* expf overflows and underflows */
                    g[i] = i % 2 ? 120.0f : -150.0f;
                float *x2 = dup_vec(x, nx), *y = rnd_vec(ny, 1.0f), *y2 = dup_vec(y, ny);
                float *yr = mode ? x : y, *yf = mode ? x2 : y2;
                const size_t n_out = mode ? nx : ny;
                assert_int_equal(ref->ops->mul_sigmoid(ref, yr, ys, x, xs, g + dim, gs, rows,
                                                       dim), 0);
                assert_int_equal(fast->ops->mul_sigmoid(fast, yf, ys, x2, xs, g + dim, gs, rows,
                                                        dim), 0);
                for (size_t i = 0; i < n_out; i++) {
                    int64_t u = ulp_dist(yf[i], yr[i]);
                    max_ulp = u > max_ulp ? u : max_ulp;
                    n_diff += u != 0;
                    n_all++;
                    if (u > 4)
                        fail_msg("mul_sigmoid dim %d rows %lld: %.9g vs %.9g (%lld ulp)", dim,
                                 (long long)rows, yf[i], yr[i], (long long)u);
                }
                free(x);
                free(g);
                free(x2);
                free(y);
                free(y2);
            }
    printf("    mul_sigmoid: max %lld ulp (tolerance 4), %lld of %lld floats differ\n",
           (long long)max_ulp, (long long)n_diff, (long long)n_all);
    fast->ops->destroy(fast);
    ref->ops->destroy(ref);
}

/* ------------------------------------------------------------------ */

/* AVX-512 and AVX2 give the same bits; one thread and two give the same
 * bits (rows are split, never a row's sum). */
static void test_levels_agree(void **state)
{
    (void)state;
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX512)) {
        printf("    (no AVX-512 on this CPU: levels not compared)\n");
        skip();
    }
    struct kb_backend *be[3] = { fast_new(KB_CPU_ISA_AVX512, 2), fast_new(KB_CPU_ISA_AVX2, 2),
                                 fast_new(KB_CPU_ISA_AVX512, 1) };
    const int64_t rows = 64, dim = 2053;
    const size_t n = (size_t)(rows * dim);
    struct dvec w = dvec_new(KB_WTYPE_BF16, 1, dim, 0.5f);
    struct dvec tab = dvec_new(KB_WTYPE_F16, 100, dim, 1.0f);
    float *x = rnd_vec(n, 3.0f), *g = rnd_vec(n, 30.0f), *out[3];
    int32_t ids[64], pos[64];
    for (int i = 0; i < 64; i++) {
        ids[i] = (int32_t)(rnd_u32() % 100);
        pos[i] = (int32_t)(rnd_u32() % 100000);
    }
    for (int k = 0; k < 3; k++) {
        struct kb_backend *b = be[k];
        out[k] = malloc(6 * n * sizeof(float));
        float *o = out[k];
        assert_int_equal(b->ops->embed(b, &tab.w, ids, (int32_t)rows, o), 0);
        assert_int_equal(b->ops->rmsnorm(b, o + n, dim, x, dim, rows, (int32_t)dim, &w.w, 1e-6f,
                                         true), 0);
        memcpy(o + 2 * n, x, n * sizeof(float));
        assert_int_equal(b->ops->rope(b, o + 2 * n, (int32_t)rows, 1, dim, 2048, pos, 1e7), 0);
        assert_int_equal(b->ops->add(b, o + 3 * n, x, g, (int64_t)n), 0);
        assert_int_equal(b->ops->mul_sigmoid(b, o + 4 * n, dim, x, dim, g, dim, rows,
                                             (int32_t)dim), 0);
        assert_int_equal(b->ops->mul_sigmoid(b, o + 5 * n, 37, x, 37, g, 37, 37, 37), 0);
    }
    const char *what[6] = { "embed", "rmsnorm", "rope", "add", "mul_sigmoid", "mul_sigmoid 37" };
    for (int op = 0; op < 6; op++) {
        size_t len = op == 5 ? 37 * 37 : n;
        if (memcmp(out[0] + op * n, out[1] + op * n, len * sizeof(float)))
            fail_msg("%s: AVX-512 and AVX2 differ", what[op]);
        if (memcmp(out[0] + op * n, out[2] + op * n, len * sizeof(float)))
            fail_msg("%s: one and two threads differ", what[op]);
    }
    printf("    avx512 == avx2 == one thread, bit for bit, for all five ops\n");
    for (int k = 0; k < 3; k++) {
        free(out[k]);
        be[k]->ops->destroy(be[k]);
    }
    free(x);
    free(g);
    free(w.data);
    free(tab.data);
}

int main(void)
{
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX2)) {
        printf("no AVX2 + FMA on this CPU: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_mul_sigmoid),
    };
    const struct CMUnitTest once[] = {
        cmocka_unit_test(test_levels_agree),
    };
    const int32_t levels[3] = { KB_CPU_ISA_AVX512, KB_CPU_ISA_AVX2_VNNI, KB_CPU_ISA_AVX2 };
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        if (!kb_cpu_isa_supported(levels[i])) {
            printf("level %s: not on this CPU, not tested here\n", kb_cpu_isa_name(levels[i]));
            continue;
        }
        test_isa = levels[i];
        printf("level %s:\n", kb_cpu_isa_name(test_isa));
        failed += _cmocka_run_group_tests(kb_cpu_isa_name(test_isa), tests,
                                          sizeof(tests) / sizeof(tests[0]), NULL, NULL);
    }
    failed += cmocka_run_group_tests_name("levels", once, NULL, NULL);
    return failed ? 1 : 0;
}
