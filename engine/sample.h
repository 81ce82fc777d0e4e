/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sampling and stop conditions.
 *
 * Order of operations on one logits row (as HF's logits processors, with
 * OpenAI-style presence/frequency penalties as in vLLM):
 *   1. only ids < vocab_limit take part (the real tokenizer size; padded
 *      embedding rows above it are never sampled);
 *   2. repetition penalty on every id seen (prompt + generated):
 *      logit > 0 ? logit / r : logit * r;
 *   3. frequency / presence penalties on generated ids:
 *      logit -= f * count + p * (count > 0);
 *   4. temperature <= 0 (or top_k == 1): greedy argmax, lowest id on ties;
 *   5. else logits / T, top-k, softmax, top-p (smallest prefix with mass
 *      >= p), min-p (drop p_i < min_p * p_max), renormalise, draw.
 * The draw uses xoshiro256** seeded through splitmix64 from `seed`, so one
 * seed gives exactly the same tokens on every run and machine.
 */
#ifndef RESIDENT_ENGINE_SAMPLE_H
#define RESIDENT_ENGINE_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/error.h"

struct sample_params {
    float    temperature;                /* 0 = greedy                       */
    int32_t  top_k;                      /* 0 = off                          */
    float    top_p;                      /* 1 = off                          */
    float    min_p;                      /* 0 = off                          */
    float    repetition_penalty;         /* 1 = off                          */
    float    presence_penalty;           /* 0 = off                          */
    float    frequency_penalty;          /* 0 = off                          */
    uint64_t seed;
    int32_t  vocab_limit;                /* real vocab size; 0 = whole row   */
};
#define SAMPLE_PARAMS_DEFAULT { .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, \
    .min_p = 0.0f, .repetition_penalty = 1.0f, .presence_penalty = 0.0f,       \
    .frequency_penalty = 0.0f, .seed = 0, .vocab_limit = 0 }

/*
 * Fields a request may leave to the model (sample_params_model_defaults()).
 * The values equal the wire's SHM_DEF_* bits (shm/proto.h).
 */
#define SAMPLE_DEF_TEMPERATURE      0x01u
#define SAMPLE_DEF_TOP_P            0x02u
#define SAMPLE_DEF_TOP_K            0x04u
#define SAMPLE_DEF_MIN_P            0x08u
#define SAMPLE_DEF_REPEAT_PENALTY   0x10u
#define SAMPLE_DEF_PRESENCE_PENALTY 0x20u
#define SAMPLE_DEF_ALL              0x3fu

/**
 * sample_params_model_defaults() - fill unset fields from generation_config.json
 * @p: parameters; only the fields named in @which change
 * @cfg: the loaded model's configuration (its gen_* fields)
 * @which: SAMPLE_DEF_* bits
 *
 * Each field takes the file's value, or when the file has none the value a
 * request without it gets from vLLM and OpenAI: temperature 1 (but 0, greedy,
 * when the file says "do_sample": false, as transformers does), top_p 1,
 * top_k 0 (off), min_p 0, repetition penalty 1, presence penalty 0.
 */
void sample_params_model_defaults(struct sample_params *p, const struct model_config *cfg, uint32_t which);

struct sampler;

/* n_vocab = logits row width (model_vocab). Parameters are range-checked. */
int  sampler_new(const struct sample_params *p, int32_t n_vocab, struct sampler **out,
                 struct engine_error *err);
void sampler_free(struct sampler *s);

/* Record prompt ids (repetition penalty only) / a generated id (all). */
void sampler_accept_prompt(struct sampler *s, const int32_t *ids, int64_t n);
void sampler_accept(struct sampler *s, int32_t id);

/* Choose the next id from logits[n_vocab] (not modified). Does not call
 * sampler_accept. Returns 0 or -EINVAL when no id is eligible (all NaN). */
int  sampler_sample(struct sampler *s, const float *logits, int32_t *out);

/* Stop conditions: eos ids (generation_config) plus caller stop ids. */
#define SAMPLE_MAX_STOP 64
struct sample_stop {
    int32_t ids[SAMPLE_MAX_STOP];
    int32_t n;
};
void sample_stop_init(struct sample_stop *st, const struct model_config *cfg);
int  sample_stop_add(struct sample_stop *st, int32_t id);        /* -ENOSPC  */
bool sample_stop_hit(const struct sample_stop *st, int32_t id);

/* The PRNG, exposed for tests: xoshiro256** seeded with splitmix64. */
struct sample_rng {
    uint64_t s[4];
};
void     sample_rng_seed(struct sample_rng *r, uint64_t seed);
uint64_t sample_rng_next(struct sample_rng *r);
double   sample_rng_uniform(struct sample_rng *r);               /* [0, 1)  */

#endif
