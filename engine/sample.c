/* SPDX-License-Identifier: Apache-2.0 */
/* Sampling (see sample.h for the order of operations and the PRNG). */
#include "engine/sample.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cand {
    float   logit;
    int32_t id;
};

struct sampler {
    struct sample_params p;
    int32_t              n_vocab;        /* row width                        */
    int32_t              limit;          /* ids < limit are eligible         */
    uint32_t            *gen_count;      /* [limit] generated occurrences    */
    uint8_t             *seen;           /* [limit] in prompt or generated   */
    struct cand         *cand;           /* [limit]                          */
    double              *prob;           /* [limit]                          */
    struct sample_rng    rng;
};

/* splitmix64 (Vigna) expands the seed into the xoshiro state; xoshiro256**
 * then gives a 2^256-1 period generator with a published reference. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void sample_rng_seed(struct sample_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sample_rng_next(struct sample_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sample_rng_uniform(struct sample_rng *r)
{
    return (double)(sample_rng_next(r) >> 11) * 0x1.0p-53;
}

int sampler_new(const struct sample_params *params, int32_t n_vocab, struct sampler **out,
                struct engine_error *err)
{
    struct sample_params p = SAMPLE_PARAMS_DEFAULT;
    if (params)
        p = *params;
    if (n_vocab <= 0)
        return engine_error_set(err, -EINVAL, "sampler: vocabulary size %d must be positive", n_vocab);
    if (p.vocab_limit < 0 || p.vocab_limit > n_vocab)
        return engine_error_set(err, -EINVAL, "sampler: vocab_limit %d outside 0..%d",
                                p.vocab_limit, n_vocab);
    if (!(p.temperature >= 0.0f) || !isfinite(p.temperature))
        return engine_error_set(err, -EINVAL, "sampler: temperature %g must be >= 0", (double)p.temperature);
    if (p.top_k < 0)
        return engine_error_set(err, -EINVAL, "sampler: top_k %d must be >= 0", p.top_k);
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
        return engine_error_set(err, -EINVAL, "sampler: top_p %g must be in (0, 1]", (double)p.top_p);
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
        return engine_error_set(err, -EINVAL, "sampler: min_p %g must be in [0, 1]", (double)p.min_p);
    if (!(p.repetition_penalty > 0.0f) || !isfinite(p.repetition_penalty))
        return engine_error_set(err, -EINVAL, "sampler: repetition_penalty %g must be > 0",
                                (double)p.repetition_penalty);
    if (!isfinite(p.presence_penalty) || !isfinite(p.frequency_penalty))
        return engine_error_set(err, -EINVAL, "sampler: presence/frequency penalties must be finite");
    struct sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return engine_error_set(err, -ENOMEM, "sampler: out of memory");
    s->p = p;
    s->n_vocab = n_vocab;
    s->limit = p.vocab_limit ? p.vocab_limit : n_vocab;
    s->gen_count = calloc((size_t)s->limit, sizeof(*s->gen_count));
    s->seen = calloc((size_t)s->limit, 1);
    s->cand = calloc((size_t)s->limit, sizeof(*s->cand));
    s->prob = calloc((size_t)s->limit, sizeof(*s->prob));
    if (!s->gen_count || !s->seen || !s->cand || !s->prob) {
        int32_t limit = s->limit;
        sampler_free(s);
        return engine_error_set(err, -ENOMEM, "sampler: out of memory for %d ids", limit);
    }
    sample_rng_seed(&s->rng, p.seed);
    *out = s;
    return 0;
}

void sampler_free(struct sampler *s)
{
    if (!s)
        return;
    free(s->gen_count);
    free(s->seen);
    free(s->cand);
    free(s->prob);
    free(s);
}

void sampler_accept_prompt(struct sampler *s, const int32_t *ids, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->limit)
            s->seen[ids[i]] = 1;
}

void sampler_accept(struct sampler *s, int32_t id)
{
    if (id >= 0 && id < s->limit) {
        s->seen[id] = 1;
        if (s->gen_count[id] < UINT32_MAX)
            s->gen_count[id]++;
    }
}

/* Descending logit, then ascending id: a total order, so the result does
 * not depend on qsort's (unstable) algorithm. */
static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit > y->logit)
        return -1;
    if (x->logit < y->logit)
        return 1;
    return (x->id > y->id) - (x->id < y->id);
}

int sampler_sample(struct sampler *s, const float *logits, int32_t *out)
{
    const struct sample_params *p = &s->p;
    int32_t n = 0;
    for (int32_t i = 0; i < s->limit; i++) {
        float l = logits[i];
        if (isnan(l))
            continue;
        if (s->seen[i] && p->repetition_penalty != 1.0f)
            l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        if (s->gen_count[i])
            l -= p->frequency_penalty * (float)s->gen_count[i] + p->presence_penalty;
        s->cand[n++] = (struct cand){ l, i };
    }
    if (n == 0)
        return -EINVAL;
    if (p->temperature <= 0.0f || p->top_k == 1) {
        int32_t best = 0;
        for (int32_t i = 1; i < n; i++)
            if (s->cand[i].logit > s->cand[best].logit)
                best = i;
        *out = s->cand[best].id;
        return 0;
    }
    for (int32_t i = 0; i < n; i++)
        s->cand[i].logit /= p->temperature;
    qsort(s->cand, (size_t)n, sizeof(*s->cand), cand_cmp);
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    /* softmax in double over the kept candidates (sorted: cand[0] is max) */
    const double mx = s->cand[0].logit;
    if (!isfinite(mx)) {
        *out = s->cand[0].id;                /* +inf dominates; -inf: all equal */
        return 0;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        s->prob[i] = exp((double)s->cand[i].logit - mx);
        sum += s->prob[i];
    }
    for (int32_t i = 0; i < n; i++)
        s->prob[i] /= sum;
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += s->prob[i];
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        const double cut = (double)p->min_p * s->prob[0];
        int32_t keep = 1;
        while (keep < n && s->prob[keep] >= cut)
            keep++;
        n = keep;
    }
    double mass = 0.0;
    for (int32_t i = 0; i < n; i++)
        mass += s->prob[i];
    const double u = sample_rng_uniform(&s->rng) * mass;
    double cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum) {
            *out = s->cand[i].id;
            return 0;
        }
    }
    *out = s->cand[n - 1].id;                /* rounding: u at the very top  */
    return 0;
}

void sample_stop_init(struct sample_stop *st, const struct model_config *cfg)
{
    st->n = 0;
    for (int i = 0; cfg && i < cfg->n_eos && i < MODEL_MAX_EOS; i++)
        if (cfg->eos_token_ids[i] >= 0)
            sample_stop_add(st, cfg->eos_token_ids[i]);
}

int sample_stop_add(struct sample_stop *st, int32_t id)
{
    if (sample_stop_hit(st, id))
        return 0;
    if (st->n >= SAMPLE_MAX_STOP)
        return -ENOSPC;
    st->ids[st->n++] = id;
    return 0;
}

bool sample_stop_hit(const struct sample_stop *st, int32_t id)
{
    for (int32_t i = 0; i < st->n; i++)
        if (st->ids[i] == id)
            return true;
    return false;
}

void sample_params_model_defaults(struct sample_params *p, const struct model_config *cfg, uint32_t which)
{
    /* The config reader marks an absent value by a negative one and has
     * range-checked the rest; top_p 0 and repetition penalty 0 would be
     * refused by sampler_new(), so they count as absent as well. */
    if (which & SAMPLE_DEF_TEMPERATURE) {
        if (cfg->gen_do_sample_set && !cfg->gen_do_sample)
            p->temperature = 0.0f;
        else
            p->temperature = cfg->gen_temperature >= 0.0f ? cfg->gen_temperature : 1.0f;
    }
    if (which & SAMPLE_DEF_TOP_P)
        p->top_p = cfg->gen_top_p > 0.0f ? cfg->gen_top_p : 1.0f;
    if (which & SAMPLE_DEF_TOP_K)
        p->top_k = cfg->gen_top_k >= 0 ? cfg->gen_top_k : 0;
    if (which & SAMPLE_DEF_MIN_P)
        p->min_p = cfg->gen_min_p >= 0.0f ? cfg->gen_min_p : 0.0f;
    if (which & SAMPLE_DEF_REPEAT_PENALTY)
        p->repetition_penalty = cfg->gen_repetition_penalty > 0.0f ? cfg->gen_repetition_penalty : 1.0f;
    if (which & SAMPLE_DEF_PRESENCE_PENALTY)
        p->presence_penalty = cfg->gen_presence_penalty >= 0.0f ? cfg->gen_presence_penalty : 0.0f;
}
