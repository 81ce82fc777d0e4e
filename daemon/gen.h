/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Generator interface: the seam between the scheduler and whatever turns
 * prompts into tokens. The engine's forward pass will implement it; until
 * then residentd runs the "null" generator (daemon/gen-null.c), which makes
 * deterministic synthetic tokens and is announced as such in the startup
 * log and in WELCOME (SHM_WELCOME_F_NULL_GENERATOR): it is never presented
 * as a model.
 *
 * Threading: create/destroy/seq_new/seq_free run on the event-loop thread;
 * step() runs on the compute worker thread, never concurrently with itself
 * or with seq_new/seq_free of a sequence that is in the batch. seq_new
 * blocks the event loop while it runs: it must report the prompt's token
 * count (the scheduler applies max_prompt_tokens and chunks the prefill by
 * it), so it may render and tokenize, but must stay in the milliseconds;
 * every forward pass belongs in step().
 *
 * Errors: 0 or -errno; messages go to the caller's buffer.
 */
#ifndef RESIDENT_DAEMON_GEN_H
#define RESIDENT_DAEMON_GEN_H

#include <stddef.h>
#include <stdint.h>

struct st_image;                        /* engine/safetensors.h */
struct force_choice;

#define GEN_PIECE_MAX 128   /* longest token of the Qwen3 vocab; a TOKENS record of one token stays far below the smallest ring's cap/4 (1 KiB) */

struct gen_prompt {
    uint32_t       kind;        /* enum shm_prompt_kind */
    const uint8_t *bytes;       /* private copy owned by the caller for the call only */
    size_t         len;
    uint64_t       seed;
    float          temperature, top_p, min_p, repeat_penalty;
    uint32_t       top_k;
    float          presence_penalty, frequency_penalty;  /* OpenAI/vLLM semantics; 0 = off */
    uint32_t       model_defaults;  /* SHM_DEF_*: fields above to take from the model's
                                       generation_config.json (the field itself is 0) */
    uint32_t       max_new_tokens;  /* the request's output limit (sizes the sequence state) */
    uint32_t       uid;         /* requester (SO_PEERCRED): prefix-cache isolation */
    uint32_t       flags;       /* GEN_PROMPT_F_* */
    /* CHAT "tool_choice" required/named (daemon/force.h), NULL = free
     * generation; only passed to generators with gen_ops.tool_choice. */
    const struct force_choice *tool_choice;
};

#define GEN_PROMPT_F_NO_CACHE 0x1u   /* no prefix-cache reuse or store (SHM_REQ_F_NO_PREFIX_CACHE) */

/* How a generator that runs a model runs it (gen_ops.create; the null
 * generator ignores it). residentd resolves the config keys `backend`,
 * `kernel_dir`, `gpu_device` and `threads` into this. */
struct gen_create_params {
    const char *backend;            /* "auto", "cpu", "cpu-ref", "cuda" or "hip"
                                       (engine/backend-open.h) */
    const char *kernel_dir;         /* GPU code objects; NULL/"" = installed */
    int32_t     gpu_device;         /* GPU ordinal */
    int32_t     n_threads;          /* compute threads, >= 1 */
    /* NULL/0, or the model's *.safetensors files already in memory
     * (residentd's fd-store container, see engine/safetensors.h st_image;
     * valid until destroy): a generator that runs the model loads from
     * them instead of opening the files. */
    const struct st_image *shards;
    uint32_t    n_shards;
    /* NULL, or the tokenizer cache to load from and to report into
     * (struct gen_tokenizer_cache below). */
    struct gen_tokenizer_cache *tokenizer_cache;
};

/* Daemon configuration a generator may use (gen_ops.configure). */
struct gen_options {
    uint32_t prefix_cache;          /* 0 = off, 1 = on */
    uint64_t prefix_cache_bytes;    /* budget; 0 = the cache's default */
};

/* The tokenizer's binary cache (engine/text/tokenizer.h), which residentd
 * keeps in systemd's fd store ("resident-tokenizer") so that a restart
 * does not parse tokenizer.json again. In/out for create(); generators
 * without a tokenizer ignore it. */
struct gen_tokenizer_cache {
    const void *image;          /* in: stored cache image, NULL = none      */
    size_t      image_len;
    const char *cache_dir;      /* in: directory for the cache file, NULL = none */
    int         image_used;     /* out: 1 = the tokenizer came from image   */
    int         file_used;      /* out: 1 = it came from cache_dir's file    */
    char        image_refused[256]; /* out: why image was refused, "" = it was not */
    void       *fresh;          /* out: malloc'd image of the loaded tokenizer when
                                   image was not used (to store); caller free()s */
    size_t      fresh_len;
};

/* One sequence's part of a compute step. */
struct gen_item {
    void    *seq;
    uint32_t n_prefill;     /* in: prompt tokens to consume this step (0 = decode) */
    uint32_t sample;        /* in: produce a token at the end of this step */
    /* out, on the first prefill step of a sequence whose seq_cached() was
     * > 0 or which looked up a cache: prompt tokens restored instead of
     * computed (reported as cached_tokens) */
    uint32_t cached;
    /* out (when sample): */
    uint32_t token;
    uint32_t eos;           /* token is end-of-sequence */
    uint32_t piece_len;
    uint8_t  piece[GEN_PIECE_MAX];  /* raw bytes; may split UTF-8 code points */
    int      error;         /* 0 or -errno: this sequence failed */
};

struct gen_ops {
    const char *name;
    uint32_t    synthetic;  /* 1 = not a model (null generator) */
    /* 1 = the output is Qwen3.6 chat text: TEXT/CHAT requests get the
     * reasoning / tool-call parsers (daemon/channels.h). 0 = all content. */
    uint32_t    parse_output;
    /* 1 = honours gen_prompt.tool_choice (forced tool calls by constrained
     * decoding; WELCOME flag SHM_WELCOME_F_TOOL_CHOICE). 0 = the scheduler
     * refuses tool_choice "required" and named. */
    uint32_t    tool_choice;
    int  (*create)(const char *model_dir, const struct gen_create_params *p, void **ctx, char *err,
                   size_t errlen);
    void (*destroy)(void *ctx);
    uint32_t (*vocab_size)(void *ctx);
    /* Start a sequence; reports how many prompt tokens it has. */
    int  (*seq_new)(void *ctx, const struct gen_prompt *p, void **seq, uint32_t *prompt_tokens,
                    char *err, size_t errlen);
    void (*seq_free)(void *ctx, void *seq);
    /* Advance every item by one step (batched). */
    int  (*step)(void *ctx, struct gen_item *items, size_t n);
    /* Optional (NULL = none). configure: called once by the scheduler
     * before the first request, on the event loop; an error is logged and
     * the generator runs without what it configures. */
    int  (*configure)(void *ctx, const struct gen_options *o, char *err, size_t errlen);
    /* seq_cached: right after seq_new, the number of leading prompt tokens
     * (< prompt_tokens) the sequence will restore from a cache instead of
     * computing, at its first prefill step. The scheduler hands out only
     * the remaining prompt_tokens - seq_cached tokens as n_prefill. */
    uint32_t (*seq_cached)(void *ctx, void *seq);
    /* stats: one line for STATUS= and the log ("" when nothing to say). */
    void (*stats)(void *ctx, char *buf, size_t len);
    /* Optional: shard files the model load opened from the file system
     * (0 when it used create()'s shards), for the log and the tests. */
    uint32_t (*files_opened)(void *ctx);
    /* describe: what computes, for the startup log (e.g. the backend). */
    void (*describe)(void *ctx, char *buf, size_t len);
};

/**
 * gen_lookup() - find a generator by name
 * @name: "null", or "engine" when daemon/gen-engine.c is linked in
 *
 * Return: the ops table, or NULL.
 */
const struct gen_ops *gen_lookup(const char *name);

/* The null generator, exposed for tests that recompute its output. */
extern const struct gen_ops gen_null_ops;

/**
 * gen_null_token() - the null generator's token at position @i
 * @prompt_hash: gen_null_prompt_hash() of the prompt
 * @seed: request seed
 * @i: 0-based index of the generated token
 *
 * Return: token id in 1..GEN_NULL_VOCAB-1 (0 is the unused EOS id).
 */
uint32_t gen_null_token(uint64_t prompt_hash, uint64_t seed, uint32_t i);

/**
 * gen_null_prompt_hash() - FNV-1a of the prompt kind and bytes
 */
uint64_t gen_null_prompt_hash(uint32_t kind, const uint8_t *bytes, size_t len);

/**
 * gen_null_piece() - the text bytes of a null token
 * @token: id
 * @len: set to the byte count
 *
 * Return: pointer to static bytes (not NUL-terminated).
 */
const char *gen_null_piece(uint32_t token, uint32_t *len);

#define GEN_NULL_VOCAB 64u

#endif
