/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The null generator: deterministic synthetic output for exercising the
 * daemon, the IPC and clients without a model. It is NOT a model.
 *
 *   prompt tokens  TEXT/RAW/CHAT: ceil(bytes / 4); IDS: bytes / 4
 *   token i        1 + splitmix64(prompt_hash ^ seed * K ^ i) % 63
 *   text of a token  a fixed table of printable pieces; ids 60 and 61 are the
 *                  two bytes of U+00E9 so streams also contain split (and, in
 *                  random order, invalid) UTF-8 that the daemon must repair
 *   EOS            id 0, never produced: requests end by max_tokens, stop
 *                  ids or stop strings
 *   sampling       only the seed counts; temperature, top-k/p, min-p, the
 *                  penalties and model_defaults (SUBMIT extension) are
 *                  validated by the decoder and otherwise ignored
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gen.h"

struct null_seq {
    uint64_t hash;
    uint64_t seed;
    uint32_t prompt_left;
    uint32_t generated;
};

static const char *const pieces[GEN_NULL_VOCAB] = {
    "",       "the ",   "a ",     "of ",    "to ",    "and ",   "in ",    "is ",
    "it ",    "that ",  "for ",   "on ",    "with ",  "as ",    "was ",   "at ",
    "by ",    "be ",    "this ",  "from ",  "or ",    "an ",    "not ",   "but ",
    "all ",   "we ",    "can ",   "one ",   "two ",   "red ",   "blue ",  "cat ",
    "dog ",   "sun ",   "moon ",  "sea ",   "tree ",  "road ",  "home ",  "time ",
    "day ",   "word ",  "line ",  "code ",  "data ",  "ring ",  "byte ",  "fast ",
    "slow ",  "up ",    "down ",  "left ",  "right ", ", ",     ". ",     "\n",
    "? ",     "! ",     "-",      "42 ",    "\xc3",   "\xa9",   "\xe2\x86\x92 ", "\xe6\x97\xa5 ",
};

uint64_t gen_null_prompt_hash(uint32_t kind, const uint8_t *bytes, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ kind;
    for (size_t i = 0; i < len; i++) {
        h ^= bytes[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint32_t gen_null_token(uint64_t prompt_hash, uint64_t seed, uint32_t i)
{
    return 1 + (uint32_t)(splitmix64(prompt_hash ^ (seed * 0x2545f4914f6cdd1dull) ^ i) % (GEN_NULL_VOCAB - 1));
}

const char *gen_null_piece(uint32_t token, uint32_t *len)
{
    const char *p = token < GEN_NULL_VOCAB ? pieces[token] : "";
    *len = (uint32_t)strlen(p);
    return p;
}

static int null_create(const char *model_dir, const struct st_image *shards, uint32_t n_shards,
                       struct gen_tokenizer_cache *tc, void **ctx, char *err, size_t errlen)
{
    (void)tc;           /* no tokenizer cache kept for this generator */
    /* No state: the ctx pointer only has to be non-NULL and unique. */
    static int token;
    (void)model_dir;
    (void)shards;       /* synthetic: never reads the model */
    (void)n_shards;
    (void)err;
    (void)errlen;
    *ctx = &token;
    return 0;
}

static void null_destroy(void *ctx)
{
    (void)ctx;
}

static uint32_t null_vocab_size(void *ctx)
{
    (void)ctx;
    return GEN_NULL_VOCAB;
}

static int null_seq_new(void *ctx, const struct gen_prompt *p, void **seq, uint32_t *prompt_tokens,
                        char *err, size_t errlen)
{
    (void)ctx;
    uint64_t n = p->kind == 3 ? p->len / 4 : (p->len + 3) / 4;
    if (n == 0 || n > UINT32_MAX) {
        snprintf(err, errlen, "prompt has %llu tokens; 1..%u allowed", (unsigned long long)n, UINT32_MAX);
        return -EINVAL;
    }
    struct null_seq *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory for a sequence");
        return -ENOMEM;
    }
    s->hash = gen_null_prompt_hash(p->kind, p->bytes, p->len);
    s->seed = p->seed;
    s->prompt_left = (uint32_t)n;
    *prompt_tokens = (uint32_t)n;
    *seq = s;
    return 0;
}

static void null_seq_free(void *ctx, void *seq)
{
    (void)ctx;
    free(seq);
}

static int null_step(void *ctx, struct gen_item *items, size_t n)
{
    (void)ctx;
    for (size_t k = 0; k < n; k++) {
        struct gen_item *it = &items[k];
        struct null_seq *s = it->seq;
        it->error = 0;
        if (it->n_prefill > s->prompt_left) {
            it->error = -EINVAL;    /* scheduler bug: more prefill than prompt */
            continue;
        }
        s->prompt_left -= it->n_prefill;
        if (!it->sample)
            continue;
        if (s->prompt_left) {
            it->error = -EINVAL;    /* sampling before the prompt is consumed */
            continue;
        }
        it->token = gen_null_token(s->hash, s->seed, s->generated++);
        it->eos = 0;
        const char *p = gen_null_piece(it->token, &it->piece_len);
        memcpy(it->piece, p, it->piece_len);
    }
    return 0;
}

const struct gen_ops gen_null_ops = {
    .name = "null",
    .synthetic = 1,
    .create = null_create,
    .destroy = null_destroy,
    .vocab_size = null_vocab_size,
    .seq_new = null_seq_new,
    .seq_free = null_seq_free,
    .step = null_step,
};

/* The engine generator (daemon/gen-engine.c) exists only in builds that
 * link the engine; a weak reference keeps this file independent of it. */
extern const struct gen_ops gen_engine_ops __attribute__((weak));
/* The "script" test generator (daemon/gen-script.c), linked only into the
 * test daemon residentd-script. */
extern const struct gen_ops gen_script_ops __attribute__((weak));

const struct gen_ops *gen_lookup(const char *name)
{
    if (strcmp(name, gen_null_ops.name) == 0)
        return &gen_null_ops;
    if (&gen_engine_ops != NULL && strcmp(name, gen_engine_ops.name) == 0)
        return &gen_engine_ops;
    if (&gen_script_ops != NULL && strcmp(name, gen_script_ops.name) == 0)
        return &gen_script_ops;
    return NULL;
}
