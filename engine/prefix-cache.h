/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prefix cache: token-exact reuse of a sequence's state across requests on
 * the hybrid model (attention KV cache + Gated DeltaNet conv/recurrent
 * state). The design essay is at the top of prefix-cache.c and in
 * docs/prefix-cache.md; in short:
 *
 *   - keyed by token ids in a radix tree (full comparison, no hashes), one
 *     tree per uid unless sharing across uids is configured;
 *   - KV rows are stored once per tree edge and are valid at any length, but
 *     the GDN state cannot be rolled back, so a request can only resume at a
 *     position where a GDN snapshot was taken: message boundaries the caller
 *     passes, every `interval` tokens inside long messages, the end of each
 *     prompt, and wherever the caller inserts one after generation;
 *   - a byte budget with LRU eviction of snapshots;
 *   - restoring is invisible: the logits equal those of a full recompute
 *     (bit for bit on the reference backend, see the tests).
 *
 * Calling pattern for a scheduler (one cache per loaded model):
 *
 *   prefix_cache_new(model, &params, &cache)                   at start-up
 *   per request: ids = tokenized prompt;
 *       nb = prefix_cache_boundaries_find(ids, n, im_start_id, b, cap)
 *       prefix_cache_prefill(cache, seq, &req, ids, n, logits, &reused)
 *           (instead of model_seq_reset + model_prefill)
 *       ... decode with model_decode as usual ...
 *       optionally prefix_cache_insert(cache, seq, uid, all_ids, len)
 *           when the answer will come back verbatim in the next prompt
 *   prefix_cache_stats_get(cache, &st)                          any time
 *   prefix_cache_free(cache)                   before model_free(model)
 *
 * Thread safety: every function may be called from any thread at any time;
 * one mutex guards the tree, the LRU list and the counters. It is held while
 * state moves between the cache and a sequence (restore, snapshot), which
 * also takes the model lock (order: cache, then model); the forward passes
 * in prefix_cache_prefill run without the cache mutex. As with model.h, one
 * sequence must not be used by two calls at once.
 */
#ifndef RESIDENT_ENGINE_PREFIX_CACHE_H
#define RESIDENT_ENGINE_PREFIX_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/error.h"
#include "engine/model.h"

struct prefix_cache;

/* Default distance between snapshots inside one long message (tokens).
 * On the 35B model a snapshot is 62.8 MiB (GDN state) while 512 tokens of
 * KV are 20 MiB (fp32; 10 MiB where the backend stores f16, KB_CAP_KV_F16):
 * at 512 the snapshots of a long message weigh 3x (6x) its KV,
 * and only pay off when two prompts diverge inside that message (turns
 * resume at boundaries); a prompt that does re-prefills at most 512 tokens
 * more than needed. docs/prefix-cache.md has the reasoning. */
#define PREFIX_CACHE_INTERVAL_DEFAULT 512

/* Default budget cap: min(25% of MemAvailable, this). */
#define PREFIX_CACHE_BUDGET_CAP (8ull << 30)

struct prefix_cache_params {
    uint64_t budget_bytes;               /* host memory held, 0 = default     */
    int32_t  interval;                   /* snapshot every N tokens inside a
                                            message; 0 = default, < 0 = only
                                            at boundaries and prompt ends     */
    bool     share_across_uids;          /* false: a uid reuses only its own
                                            prefixes (true leaks, by timing,
                                            whether another uid sent a prompt) */
};
#define PREFIX_CACHE_PARAMS_DEFAULT { .budget_bytes = 0, .interval = 0, \
                                      .share_across_uids = false }

enum prefix_cache_flags {
    PREFIX_CACHE_NO_LOOKUP = 1u << 0,    /* do not restore: prefill from 0    */
    PREFIX_CACHE_NO_STORE  = 1u << 1,    /* store nothing from this request   */
    PREFIX_CACHE_BYPASS    = PREFIX_CACHE_NO_LOOKUP | PREFIX_CACHE_NO_STORE,
};

struct prefix_cache_request {
    uint32_t           uid;              /* owner of the prompt               */
    uint32_t           flags;            /* enum prefix_cache_flags           */
    const int64_t     *boundaries;       /* ascending positions in 0..n where a
                                            message starts (0 is ignored);
                                            NULL when n_boundaries is 0       */
    int32_t            n_boundaries;
    const atomic_bool *cancel;           /* optional: polled before every
                                            chunk of MODEL_CHUNK_ROWS tokens  */
};

struct prefix_cache_stats {
    uint64_t lookups;                    /* prefill calls that looked up      */
    uint64_t hits;                       /* ... and restored >= 1 token       */
    uint64_t misses;
    uint64_t tokens_reused;              /* restored instead of prefilled     */
    uint64_t tokens_prefilled;           /* prefilled by prefix_cache_prefill */
    uint64_t snapshots_stored;           /* inserted (prefill + insert)       */
    uint64_t snapshots_rejected;         /* larger than the budget allows, or
                                            out of memory, or a failed copy   */
    uint64_t evictions;                  /* snapshots dropped for the budget  */
    uint64_t bytes_held;                 /* snapshots + KV rows + nodes       */
    uint64_t budget_bytes;
    uint64_t snapshots;                  /* held now                          */
    uint64_t nodes;                      /* radix tree nodes held now         */
    uint64_t kv_tokens;                  /* KV rows held now                  */
};

/* min(25% of MemAvailable, PREFIX_CACHE_BUDGET_CAP); 1 GiB when
 * /proc/meminfo cannot be read. */
uint64_t prefix_cache_budget_default(void);

/* A cache for sequences of `m` (which must outlive it). params may be NULL
 * (defaults). */
int  prefix_cache_new(struct model *m, const struct prefix_cache_params *params,
                      struct prefix_cache **out, struct engine_error *err);
void prefix_cache_free(struct prefix_cache *c);

/*
 * Replace the contents of `seq` with ids[0..n): restore the longest cached
 * prefix of at most n-1 tokens that ends at a snapshot (same uid unless
 * shared), prefill the rest in pieces that end at each snapshot position
 * (boundaries, every `interval` tokens after a boundary, n) and store a
 * snapshot at each. `logits` (NULL or [V]) receives the last token's logits;
 * `reused` (may be NULL) the number of restored tokens.
 *
 * Errors: -EINVAL (ids, boundaries, sequence of another model), -ENOSPC
 * (n exceeds the sequence capacity), checked before the sequence is touched;
 * -ECANCELED when req->cancel was set: seq then holds a valid prefix of ids
 * (model_seq_len) and snapshots before it are kept; a backend error from a
 * restore or forward pass leaves seq broken (model_seq_reset). Failing to
 * store a snapshot (budget, memory) is not an error: it is counted in
 * snapshots_rejected and the cache is left as it was.
 */
int prefix_cache_prefill(struct prefix_cache *c, struct model_seq *seq,
                         const struct prefix_cache_request *req, const int32_t *ids, int64_t n,
                         float *logits, int64_t *reused, struct engine_error *err);

/* Store a snapshot of `seq` at its current length n = model_seq_len(seq),
 * whose tokens are ids[0..n) (prompt + the generated tokens fed back). Use
 * it at the end of generation when the next prompt will contain the answer
 * verbatim (tool-call turns). Returns 0 also when the budget refused it
 * (counted in the stats); -EINVAL when n does not match the sequence. */
int prefix_cache_insert(struct prefix_cache *c, struct model_seq *seq, uint32_t uid,
                        const int32_t *ids, int64_t n, struct engine_error *err);

/*
 * Restore-only, for callers that prefill in their own chunks (residentd's
 * scheduler): reset `seq` and restore the longest cached prefix of at most
 * n-1 tokens of ids[0..n) that ends at a snapshot (uid's tree unless
 * shared); *restored (may be NULL) gets its length, 0 on a miss. Counted
 * as a lookup (hit / miss / tokens_reused) like prefix_cache_prefill. The
 * caller then prefills ids[restored..n) itself and stores snapshots with
 * prefix_cache_insert right after the chunks that end at the positions
 * prefix_cache_points lists; the logits equal a full recompute's under
 * the same conditions as prefix_cache_prefill (see the header essay).
 * Errors: -EINVAL, -ENOSPC (checked before seq is touched); a backend
 * error from the copy leaves seq broken (model_seq_reset).
 */
int prefix_cache_restore(struct prefix_cache *c, struct model_seq *seq, uint32_t uid,
                         const int32_t *ids, int64_t n, int64_t *restored, struct engine_error *err);

/* The snapshot positions prefix_cache_prefill would use for a prompt of n
 * tokens resumed at `from`: ascending positions in (from, n] (message
 * boundaries of req, every `interval` tokens after one, and n). *out is
 * malloc'd (free it); req->uid and flags are ignored. 0, -EINVAL, -ENOMEM. */
int prefix_cache_points(struct prefix_cache *c, const struct prefix_cache_request *req,
                        int64_t from, int64_t n, int64_t **out, int64_t *count);

/* Add tokens a caller prefilled itself (after prefix_cache_restore) to the
 * tokens_prefilled counter. */
void prefix_cache_note_prefilled(struct prefix_cache *c, int64_t tokens);

/* Tokens prefix_cache_prefill would restore for ids[0..n) now (no effect on
 * the cache, its LRU order or its counters). */
int64_t prefix_cache_peek(struct prefix_cache *c, uint32_t uid, const int32_t *ids, int64_t n);

/* Positions p in 1..n-1 with ids[p] == marker (the `<|im_start|>` id,
 * tokenizer_token_to_id(tok, "<|im_start|>")), ascending: the message
 * boundaries the chat template produced. Writes at most `cap` to out and
 * returns how many there are. */
int64_t prefix_cache_boundaries_find(const int32_t *ids, int64_t n, int32_t marker,
                                     int64_t *out, int64_t cap);

void prefix_cache_stats_get(struct prefix_cache *c, struct prefix_cache_stats *out);

/* Drop every entry (counters are kept). */
void prefix_cache_clear(struct prefix_cache *c);

#endif
