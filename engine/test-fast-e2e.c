/* SPDX-License-Identifier: Apache-2.0 */
/*
 * End-to-end quality of the fast CPU backend on the reference fixtures of
 * tests/data (tiny-w4g32, -partial, -fused, tiny-bf16):
 *   - "cpu-exact" (the fast backend's fp32-activation variant) against the
 *     transformers goldens, like the reference backend: relative L2 of the
 *     logits per position <= 1e-4 for prompts of 1, 7, 64 and 320 tokens,
 *     and every step of the golden 40-token greedy decode;
 *   - "cpu" (int8 activations into W4, bf16 into dense bf16, f16 KV cache) against
 *     "cpu-exact" on the same prompts: mean KL(exact || fast) of the
 *     next-token distributions <= 1e-3 and top-1 agreement >= 99 %;
 *   - "cpu" is deterministic: logits bit-identical with 1, 2, 3 and 4
 *     threads (prefill of 64 tokens, every position), and a sequence decoded
 *     alone bit-identical to the same sequence decoded inside batches of
 *     other sequences (residentd batches whoever is decoding, so a request's
 *     output must not depend on its neighbours or on the thread count).
 * The quality check runs once per kernel level this CPU has (AVX-512 VNNI,
 * AVX2 + FMA, and the scalar fallback that delegates to cpu-ref), selected
 * through RESIDENT_CPU_ISA as a user would. The AVX2 + AVX-VNNI level
 * differs from AVX2 + FMA only in the W4 x int8 product and must give the
 * same bits, so instead of the whole suite again (the ASan stage has no
 * time for a fourth level) it is checked to equal the avx2 level's "cpu"
 * logits bit for bit on every fixture and prompt: then every quality
 * number above holds for it too. Measured numbers are printed.
 * Exits 77 when tests/data has no fixtures.
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
#include <sys/stat.h>
#include <cmocka.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/test-goldens.h"
#include "kernels/cpu/fast.h"

#define TOL_GOLDEN 1e-4
#define TOL_KL     1e-3
#define MIN_TOP1   0.99

static struct model *open_model_threads(const char *name, const char *backend, int32_t threads)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/models/%s", data_dir, name);
    struct model_params p = MODEL_PARAMS_DEFAULT;
    p.backend = backend;
    p.n_threads = threads;
    p.max_context = 512;
    struct model *m = NULL;
    struct engine_error err = { 0 };
    if (model_load(path, &p, &m, &err))
        fail_msg("cannot load %s with %s: %s", path, backend, err.msg);
    return m;
}

static struct model *open_model(const char *name, const char *backend)
{
    return open_model_threads(name, backend, 2);
}

/* KL(softmax(p) || softmax(q)) in double. */
static double kl_logits(const float *p, const float *q, int32_t n)
{
    double mp = -INFINITY, mq = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        mp = p[i] > mp ? p[i] : mp;
        mq = q[i] > mq ? q[i] : mq;
    }
    double sp = 0, sq = 0;
    for (int32_t i = 0; i < n; i++) {
        sp += exp(p[i] - mp);
        sq += exp(q[i] - mq);
    }
    const double lp = mp + log(sp), lq = mq + log(sq);
    double kl = 0;
    for (int32_t i = 0; i < n; i++) {
        double a = p[i] - lp, b = q[i] - lq;
        kl += exp(a) * (a - b);
    }
    return kl;
}

static float *prefill_all(struct model *m, const int32_t *ids, int64_t n)
{
    const int32_t V = model_vocab(m);
    float *out = malloc(sizeof(float) * (size_t)n * (size_t)V);
    assert_non_null(out);
    struct model_seq *s;
    struct engine_error err = { 0 };
    assert_int_equal(model_seq_new(m, n, &s, &err), 0);
    struct model_prefill_params pp = { .logits = out, .all_logits = true };
    if (model_prefill(m, s, ids, n, &pp, &err))
        fail_msg("prefill: %s", err.msg);
    model_seq_free(s);
    return out;
}

static void check_fixture(const struct fixture *fx)
{
    static const int lens[] = { 1, 7, 64, 320 };
    struct model *ex = open_model(fx->model, "cpu-exact");
    struct model *fa = open_model(fx->model, "cpu");
    struct st_set *g = open_golden(fx->goldens, "logits.safetensors");
    const int32_t V = model_vocab(ex);
    double worst = 0, kl_sum = 0, kl_max = 0;
    int64_t positions = 0, agree = 0;
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        char name[64];
        uint64_t n, nl;
        snprintf(name, sizeof(name), "len%d.input_ids", lens[k]);
        int32_t *ids = golden(g, name, ST_DTYPE_I32, &n);
        snprintf(name, sizeof(name), "len%d.logits", lens[k]);
        float *ref = golden(g, name, ST_DTYPE_F32, &nl);
        assert_int_equal(nl, n * (uint64_t)V);
        float *le = prefill_all(ex, ids, (int64_t)n), *lf = prefill_all(fa, ids, (int64_t)n);
        for (uint64_t t = 0; t < n; t++) {
            const float *e = le + t * (uint64_t)V, *f = lf + t * (uint64_t)V;
            double r = rel_l2(e, ref + t * (uint64_t)V, V);
            worst = r > worst ? r : worst;
            double kl = kl_logits(e, f, V);
            kl_sum += kl;
            kl_max = kl > kl_max ? kl : kl_max;
            agree += argmax(e, V) == argmax(f, V);
            positions++;
        }
        free(ids);
        free(ref);
        free(le);
        free(lf);
    }
    const double kl_mean = kl_sum / (double)positions, top1 = (double)agree / (double)positions;
    print_message("%-20s cpu-exact vs goldens: max rel L2 %.3g (tolerance %.0e)\n", fx->model,
                  worst, TOL_GOLDEN);
    print_message("%-20s cpu vs cpu-exact over %lld positions: mean KL %.3g (max %.3g, tolerance "
                  "%.0e), top-1 agreement %.2f %% (minimum %.0f %%)\n", fx->model,
                  (long long)positions, kl_mean, kl_max, TOL_KL, 100 * top1, 100 * MIN_TOP1);
    st_set_free(g);
    model_free(ex);
    model_free(fa);
    assert_true(worst <= TOL_GOLDEN);
    assert_true(kl_mean <= TOL_KL);
    assert_true(top1 >= MIN_TOP1);
}

/* Incremental greedy decode with cpu-exact follows the golden tokens and
 * logits step by step (the decode path: 1-row matmuls, 1-token attention). */
static void check_decode(const struct fixture *fx)
{
    struct model *m = open_model(fx->model, "cpu-exact");
    struct st_set *g = open_golden(fx->goldens, "decode.safetensors");
    const int32_t V = model_vocab(m);
    uint64_t np, nt;
    int32_t *prompt = golden(g, "prompt_ids", ST_DTYPE_I32, &np);
    int32_t *toks = golden(g, "tokens", ST_DTYPE_I32, &nt);
    float *steps = golden(g, "step_logits", ST_DTYPE_F32, NULL);
    struct model_seq *s;
    struct engine_error err = { 0 };
    assert_int_equal(model_seq_new(m, (int64_t)(np + nt), &s, &err), 0);
    float *cur = malloc(sizeof(float) * (uint64_t)V);
    struct model_prefill_params pp = { .logits = cur };
    if (model_prefill(m, s, prompt, (int64_t)np, &pp, &err))
        fail_msg("prefill: %s", err.msg);
    double worst = 0;
    int mismatched = -1;
    for (uint64_t k = 0; k < nt; k++) {
        double e = rel_l2(cur, steps + k * (uint64_t)V, V);
        worst = e > worst ? e : worst;
        if (argmax(cur, V) != toks[k] && mismatched < 0)
            mismatched = (int)k;
        if (model_decode(m, &s, &toks[k], 1, cur, &err))
            fail_msg("decode step %d: %s", (int)k, err.msg);
    }
    print_message("%-20s cpu-exact decode: %d steps, first token mismatch %d (-1 = none), "
                  "max rel L2 %.3g (tolerance %.0e)\n", fx->model, (int)nt, mismatched, worst,
                  TOL_GOLDEN);
    model_seq_free(s);
    st_set_free(g);
    free(prompt);
    free(toks);
    free(steps);
    free(cur);
    model_free(m);
    assert_int_equal(mismatched, -1);
    assert_true(worst <= TOL_GOLDEN);
}

/* Why this holds by construction (kernels/cpu/fast.c): every output row of
 * a product is computed whole by one thread, with one accumulator per token
 * that sees the same operations in the same order whatever the other tokens
 * of its 4-token tile; MoE items are whole (expert, row block) products and
 * the per-token combine runs its experts in a fixed order; attention and
 * GDN give each (token, head) or head to one thread. Nothing is reduced
 * across threads, so the split cannot change a bit. This test checks it. */
static void check_deterministic(const struct fixture *fx)
{
    struct model *m[4];
    for (int k = 0; k < 4; k++)
        m[k] = open_model_threads(fx->model, "cpu", k + 1);
    struct st_set *g = open_golden(fx->goldens, "logits.safetensors");
    const int32_t V = model_vocab(m[0]);
    uint64_t n;
    int32_t *ids = golden(g, "len64.input_ids", ST_DTYPE_I32, &n);
    float *base = prefill_all(m[0], ids, (int64_t)n);
    int thread_diffs = 0;
    for (int k = 1; k < 4; k++) {
        float *l = prefill_all(m[k], ids, (int64_t)n);
        thread_diffs += memcmp(base, l, sizeof(float) * n * (size_t)V) != 0;
        free(l);
    }
    free(ids);
    free(base);

    /* Batch composition: A, B, C (prompts of 1, 7 and 64 tokens) decoded
     * greedily alone on 1 thread, and together as [A B C], then [C A] with B
     * alone, on 3 threads; every logits row must be the same bits. */
    static const char *names[3] = { "len1.input_ids", "len7.input_ids", "len64.input_ids" };
    struct model_seq *solo[3], *bat[3];
    int32_t next[3];
    float *ls = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * 3 * (size_t)V);
    float *l2 = malloc(sizeof(float) * 2 * (size_t)V);
    assert_non_null(ls);
    assert_non_null(lb);
    assert_non_null(l2);
    struct engine_error err = { 0 };
    for (int i = 0; i < 3; i++) {
        int32_t *p = golden(g, names[i], ST_DTYPE_I32, &n);
        assert_int_equal(model_seq_new(m[0], 80, &solo[i], &err), 0);
        assert_int_equal(model_seq_new(m[2], 80, &bat[i], &err), 0);
        struct model_prefill_params pp = { .logits = ls };
        assert_int_equal(model_prefill(m[2], bat[i], p, (int64_t)n, NULL, &err), 0);
        assert_int_equal(model_prefill(m[0], solo[i], p, (int64_t)n, &pp, &err), 0);
        next[i] = argmax(ls, V);
        free(p);
    }
    int batch_diffs = 0, steps = 0;
    for (int step = 0; step < 6; step++) {
        int32_t in[3];
        memcpy(in, next, sizeof(in));
        if (step % 2 == 0) {
            assert_int_equal(model_decode(m[2], bat, in, 3, lb, &err), 0);
        } else {
            struct model_seq *ca[2] = { bat[2], bat[0] };
            int32_t ica[2] = { in[2], in[0] };
            assert_int_equal(model_decode(m[2], ca, ica, 2, l2, &err), 0);
            memcpy(lb, l2 + (size_t)V, sizeof(float) * (size_t)V);               /* A */
            memcpy(lb + 2 * (size_t)V, l2, sizeof(float) * (size_t)V);           /* C */
            assert_int_equal(model_decode(m[2], &bat[1], &in[1], 1, lb + (size_t)V, &err), 0);
        }
        for (int i = 0; i < 3; i++) {
            assert_int_equal(model_decode(m[0], &solo[i], &in[i], 1, ls, &err), 0);
            batch_diffs += memcmp(lb + (size_t)i * (size_t)V, ls, sizeof(float) * (size_t)V) != 0;
            next[i] = argmax(ls, V);
            steps++;
        }
    }
    print_message("%-20s cpu (%s): prefill 64 tokens with 1/2/3/4 threads: %d of 3 differ from 1 thread; "
                  "decode alone (1 thread) vs in batches [A B C] / [C A] (3 threads): %d of %d rows differ "
                  "(required: 0, bit-identical)\n", fx->model, kb_cpu_isa_name(kb_cpu_fast_best_isa()),
                  thread_diffs, batch_diffs, steps);
    for (int i = 0; i < 3; i++) {
        model_seq_free(solo[i]);
        model_seq_free(bat[i]);
    }
    free(ls);
    free(lb);
    free(l2);
    st_set_free(g);
    for (int k = 0; k < 4; k++)
        model_free(m[k]);
    assert_int_equal(thread_diffs, 0);
    assert_int_equal(batch_diffs, 0);
}

static void test_deterministic(void **state)
{
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++)
        check_deterministic(&fixtures[i]);
}

static void test_prefill(void **state)
{
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++)
        check_fixture(&fixtures[i]);
}

static void test_decode(void **state)
{
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++)
        check_decode(&fixtures[i]);
}

/* avx2-vnni == avx2, bit for bit, end to end (see the top of the file). */
static void test_vnni_same_as_avx2(void **state)
{
    if (!kb_cpu_isa_supported(KB_CPU_ISA_AVX2_VNNI)) {
        print_message("skip: this CPU lacks AVX-VNNI, the avx2-vnni level cannot run here\n");
        skip();
    }
    static const int lens[] = { 1, 7, 64, 320 };
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
        const struct fixture *fx = &fixtures[i];
        assert_int_equal(setenv("RESIDENT_CPU_ISA", "avx2", 1), 0);
        struct model *a = open_model(fx->model, "cpu");
        assert_int_equal(setenv("RESIDENT_CPU_ISA", "avx2vnni", 1), 0);
        struct model *b = open_model(fx->model, "cpu");
        assert_int_equal(unsetenv("RESIDENT_CPU_ISA"), 0);
        struct st_set *g = open_golden(fx->goldens, "logits.safetensors");
        const int32_t V = model_vocab(a);
        int64_t positions = 0, differ = 0;
        for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
            char name[64];
            uint64_t n;
            snprintf(name, sizeof(name), "len%d.input_ids", lens[k]);
            int32_t *ids = golden(g, name, ST_DTYPE_I32, &n);
            float *la = prefill_all(a, ids, (int64_t)n), *lb = prefill_all(b, ids, (int64_t)n);
            for (uint64_t t = 0; t < n; t++)
                differ += memcmp(la + t * (uint64_t)V, lb + t * (uint64_t)V, sizeof(float) * (size_t)V) != 0;
            positions += (int64_t)n;
            free(ids);
            free(la);
            free(lb);
        }
        print_message("%-20s cpu avx2-vnni vs avx2: %lld of %lld positions' logits differ "
                      "(required: 0, bit-identical)\n", fx->model, (long long)differ,
                      (long long)positions);
        st_set_free(g);
        model_free(a);
        model_free(b);
        assert_int_equal(differ, 0);
    }
}

/* A bad RESIDENT_CPU_ISA is refused with an error that names it. */
static void test_bad_isa_env(void **state)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/models/%s", data_dir, fixtures[0].model);
    struct model_params p = MODEL_PARAMS_DEFAULT;
    p.backend = "cpu";
    p.n_threads = 1;
    p.max_context = 64;
    struct model *m = NULL;
    struct engine_error err = { 0 };
    assert_int_equal(setenv("RESIDENT_CPU_ISA", "avx9000", 1), 0);
    int rc = model_load(path, &p, &m, &err);
    assert_int_equal(unsetenv("RESIDENT_CPU_ISA"), 0);
    print_message("RESIDENT_CPU_ISA=avx9000: %s\n", err.msg);
    assert_int_equal(rc, -EINVAL);
    assert_null(m);
    assert_non_null(strstr(err.msg, "RESIDENT_CPU_ISA=avx9000"));
}

int main(void)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    snprintf(data_dir, sizeof(data_dir), "%s/tests/data", root ? root : ".");
    struct stat st;
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
        char p[1200];
        snprintf(p, sizeof(p), "%s/models/%s/config.json", data_dir, fixtures[i].model);
        if (stat(p, &st)) {
            printf("skip: fixture %s not found (run tools/refgen to create tests/data)\n", p);
            return 77;
        }
    }
    const int32_t best = kb_cpu_fast_best_isa();
    printf("fast CPU backend kernels: best %s\n", kb_cpu_isa_name(best));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_deterministic),
    };
    static const struct { int32_t isa; const char *env; } levels[] = {
        { KB_CPU_ISA_AVX512, "avx512" }, { KB_CPU_ISA_AVX2, "avx2" }, { KB_CPU_ISA_SCALAR, "scalar" },
    };
    int failed = 0;
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        if (!kb_cpu_isa_supported(levels[i].isa)) {
            printf("level %s: not on this CPU, not tested here\n", kb_cpu_isa_name(levels[i].isa));
            continue;
        }
        if (setenv("RESIDENT_CPU_ISA", levels[i].env, 1))
            return 1;
        printf("level %s (RESIDENT_CPU_ISA=%s):\n", kb_cpu_isa_name(levels[i].isa), levels[i].env);
        failed += _cmocka_run_group_tests(levels[i].env, tests, sizeof(tests) / sizeof(tests[0]),
                                          NULL, NULL);
    }
    const struct CMUnitTest env_tests[] = { cmocka_unit_test(test_vnni_same_as_avx2),
                                            cmocka_unit_test(test_bad_isa_env) };
    failed += cmocka_run_group_tests_name("isa-env", env_tests, NULL, NULL);
    return failed ? 1 : 0;
}
