/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sampling: greedy, penalties, top-k / top-p / min-p filtering, the vocab
 * limit, seeded reproducibility, the PRNG against its published reference
 * values, and stop ids.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine/sample.h"

static struct sampler *mk(struct sample_params p, int32_t V)
{
    struct sampler *s = NULL;
    struct engine_error err = { 0 };
    assert_int_equal(sampler_new(&p, V, &s, &err), 0);
    return s;
}

/* splitmix64 from seed 1234567 (Vigna's reference: first output
 * 6457827717110365317), and xoshiro256** is deterministic across runs. */
static void test_rng(void **state)
{
    struct sample_rng r, r2;
    sample_rng_seed(&r, 1234567);
    /* the first state word is splitmix64's first output */
    assert_true(r.s[0] == 6457827717110365317ULL);
    sample_rng_seed(&r2, 1234567);
    for (int i = 0; i < 1000; i++)
        assert_true(sample_rng_next(&r) == sample_rng_next(&r2));
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = sample_rng_uniform(&r);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_float_equal(sum / 100000, 0.5, 0.01);
}

static void test_greedy_and_limit(void **state)
{
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    float l[6] = { 0.5f, 2.0f, 2.0f, -1.0f, 1.0f, 9.0f };
    struct sampler *s = mk(p, 6);
    int32_t t;
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 5);
    sampler_free(s);
    /* id 5 lies beyond the real vocabulary: never chosen; tie -> lowest id */
    p.vocab_limit = 5;
    s = mk(p, 6);
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 1);
    sampler_free(s);
    /* sampling also never returns ids >= limit */
    p.temperature = 5.0f;
    p.seed = 7;
    s = mk(p, 6);
    for (int i = 0; i < 2000; i++) {
        assert_int_equal(sampler_sample(s, l, &t), 0);
        assert_true(t >= 0 && t < 5);
    }
    sampler_free(s);
}

static void test_penalties(void **state)
{
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    float l[3] = { 3.0f, 2.5f, -1.0f };
    int32_t t;
    p.repetition_penalty = 2.0f;                 /* 3.0 -> 1.5 < 2.5 */
    struct sampler *s = mk(p, 3);
    int32_t prompt[1] = { 0 };
    sampler_accept_prompt(s, prompt, 1);
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 1);
    sampler_free(s);

    p = (struct sample_params)SAMPLE_PARAMS_DEFAULT;
    p.frequency_penalty = 0.3f;                  /* 3.0 - 2*0.3 = 2.4 < 2.5 */
    s = mk(p, 3);
    sampler_accept(s, 0);
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 0);                      /* one use: 2.7 still wins */
    sampler_accept(s, 0);
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 1);
    sampler_free(s);

    p = (struct sample_params)SAMPLE_PARAMS_DEFAULT;
    p.presence_penalty = 0.6f;                   /* 3.0 - 0.6 = 2.4 */
    s = mk(p, 3);
    sampler_accept_prompt(s, prompt, 1);         /* prompt does not count */
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 0);
    sampler_accept(s, 0);
    assert_int_equal(sampler_sample(s, l, &t), 0);
    assert_int_equal(t, 1);
    sampler_free(s);
}

static void count_draws(struct sample_params p, const float *l, int32_t V, int n, int *hist)
{
    struct sampler *s = mk(p, V);
    memset(hist, 0, sizeof(int) * (size_t)V);
    for (int i = 0; i < n; i++) {
        int32_t t;
        assert_int_equal(sampler_sample(s, l, &t), 0);
        hist[t]++;
    }
    sampler_free(s);
}

static void test_filters(void **state)
{
    /* probabilities at T=1: softmax(log(0.5, 0.3, 0.15, 0.05)) */
    float l[4] = { logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f) };
    int h[4];
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    p.temperature = 1.0f;
    p.seed = 42;
    count_draws(p, l, 4, 20000, h);
    assert_true(h[3] > 600 && h[3] < 1400);      /* ~1000 */
    assert_true(h[0] > 9400 && h[0] < 10600);    /* ~10000 */

    p.top_k = 2;
    count_draws(p, l, 4, 20000, h);
    assert_true(h[2] == 0 && h[3] == 0);
    assert_true(h[0] > 12000 && h[0] < 13000);   /* 0.5/0.8 = 62.5% */

    p.top_k = 0;
    p.top_p = 0.75f;                             /* keeps 0.5 + 0.3 */
    count_draws(p, l, 4, 20000, h);
    assert_true(h[2] == 0 && h[3] == 0 && h[1] > 0);

    p.top_p = 1.0f;
    p.min_p = 0.35f;                             /* cut 0.175: keeps 0, 1 */
    count_draws(p, l, 4, 20000, h);
    assert_true(h[2] == 0 && h[3] == 0 && h[1] > 0);

    /* low temperature sharpens towards the argmax */
    p.min_p = 0.0f;
    p.temperature = 0.05f;
    count_draws(p, l, 4, 2000, h);
    assert_int_equal(h[0], 2000);
}

static void test_reproducible(void **state)
{
    float l[64];
    for (int i = 0; i < 64; i++)
        l[i] = sinf((float)i);
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.top_k = 40;
    p.seed = 1234;
    struct sampler *a = mk(p, 64), *b = mk(p, 64);
    int differs = 0;
    p.seed = 1235;
    struct sampler *c = mk(p, 64);
    for (int i = 0; i < 200; i++) {
        int32_t ta, tb, tc;
        assert_int_equal(sampler_sample(a, l, &ta), 0);
        assert_int_equal(sampler_sample(b, l, &tb), 0);
        assert_int_equal(sampler_sample(c, l, &tc), 0);
        assert_int_equal(ta, tb);
        differs += ta != tc;
    }
    assert_true(differs > 0);
    sampler_free(a);
    sampler_free(b);
    sampler_free(c);
}

static void test_bad_params_and_stop(void **state)
{
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    struct sampler *s = NULL;
    struct engine_error err = { 0 };
    p.top_p = 0.0f;
    assert_int_equal(sampler_new(&p, 10, &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "top_p"));
    p = (struct sample_params)SAMPLE_PARAMS_DEFAULT;
    p.vocab_limit = 11;
    engine_error_clear(&err);
    assert_int_equal(sampler_new(&p, 10, &s, &err), -EINVAL);
    p.vocab_limit = 0;
    p.temperature = -1.0f;
    assert_int_equal(sampler_new(&p, 10, &s, NULL), -EINVAL);
    p.temperature = NAN;
    assert_int_equal(sampler_new(&p, 10, &s, NULL), -EINVAL);

    struct model_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.n_eos = 2;
    cfg.eos_token_ids[0] = 7;
    cfg.eos_token_ids[1] = 9;
    struct sample_stop st;
    sample_stop_init(&st, &cfg);
    assert_true(sample_stop_hit(&st, 7) && sample_stop_hit(&st, 9) && !sample_stop_hit(&st, 8));
    assert_int_equal(sample_stop_add(&st, 8), 0);
    assert_true(sample_stop_hit(&st, 8));

    /* all-NaN logits: nothing eligible, an error not a crash */
    float l[2] = { NAN, NAN };
    int32_t t;
    s = mk((struct sample_params)SAMPLE_PARAMS_DEFAULT, 2);
    assert_int_equal(sampler_sample(s, l, &t), -EINVAL);
    sampler_free(s);
}

/* Unset request fields from generation_config.json: the file's values,
 * do_sample false = greedy, neutral values where the file is silent, and
 * only the fields named by the bits change. */
static void test_model_defaults(void **state)
{
    (void)state;
    struct model_config cfg;
    struct engine_error e = { 0 };
    model_config_init(&cfg);
    cfg.vocab_size = 100;
    static const char full[] = "{\"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.95, \"top_k\": 20, "
                               "\"min_p\": 0.05, \"repetition_penalty\": 1.1, \"presence_penalty\": 1.5}";
    assert_int_equal(model_config_parse_generation(full, sizeof(full) - 1, NULL, &cfg, &e), 0);
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    p.frequency_penalty = 0.25f;
    sample_params_model_defaults(&p, &cfg, SAMPLE_DEF_ALL);
    assert_true(p.temperature == 0.6f && p.top_p == 0.95f && p.top_k == 20 && p.min_p == 0.05f);
    assert_true(p.repetition_penalty == 1.1f && p.presence_penalty == 1.5f);
    assert_true(p.frequency_penalty == 0.25f);          /* never a model default */

    p = (struct sample_params)SAMPLE_PARAMS_DEFAULT;
    p.temperature = 0.3f;
    p.top_k = 5;
    sample_params_model_defaults(&p, &cfg, SAMPLE_DEF_TOP_P);
    assert_true(p.temperature == 0.3f && p.top_k == 5 && p.top_p == 0.95f && p.repetition_penalty == 1.0f);

    /* The bundled fixture's shape: do_sample false, no sampling values. */
    model_config_init(&cfg);
    cfg.vocab_size = 100;
    static const char greedy[] = "{\"do_sample\": false, \"max_new_tokens\": 64}";
    assert_int_equal(model_config_parse_generation(greedy, sizeof(greedy) - 1, NULL, &cfg, &e), 0);
    p = (struct sample_params)SAMPLE_PARAMS_DEFAULT;
    p.temperature = 0.7f;
    p.top_p = 0.5f;
    p.top_k = 3;
    p.min_p = 0.2f;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 1.0f;
    sample_params_model_defaults(&p, &cfg, SAMPLE_DEF_ALL);
    assert_true(p.temperature == 0.0f && p.top_p == 1.0f && p.top_k == 0 && p.min_p == 0.0f);
    assert_true(p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f);

    /* No do_sample at all: OpenAI's temperature 1. */
    model_config_init(&cfg);
    p.temperature = 0.0f;
    sample_params_model_defaults(&p, &cfg, SAMPLE_DEF_TEMPERATURE);
    assert_true(p.temperature == 1.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_greedy_and_limit),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_bad_params_and_stop),
        cmocka_unit_test(test_model_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
