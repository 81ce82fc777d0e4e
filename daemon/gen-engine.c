/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The "engine" generator: the real model behind the scheduler's generator
 * interface (daemon/gen.h).
 *
 * One model (weights mapped once, shared) and one tokenizer serve every
 * sequence; each sequence owns its engine state (KV cache, GDN conv and
 * recurrent state), a sampler (seeded per request, so a request's output is
 * exactly reproducible) and its prompt ids.
 *
 * Prompts are turned into ids in seq_new(), because the scheduler needs the
 * prompt length up front to apply its quotas: TEXT is wrapped in the chat
 * template as one user message, CHAT is the client's JSON rendered by the
 * Qwen3.6 template in C, RAW is tokenized as given, IDS are checked against
 * the tokenizer's real size. Rendering and tokenizing a 30K-token prompt
 * costs a few milliseconds; the forward pass is what step() is for.
 *
 * step() runs on the compute worker: prefill items advance their sequence
 * by their chunk (logits only for the last position, and only when the
 * scheduler wants a token), decode items are advanced together in one
 * batched model_decode() call, so the weights are read once per step for
 * every decoding sequence. Text pieces are the raw bytes of each token
 * (special tokens such as <|im_end|> contribute none); the scheduler's
 * text stream holds back split UTF-8 sequences.
 *
 * PREFIX CACHE (engine/prefix-cache.h, docs/prefix-cache.md): one cache
 * per model, configured by the scheduler (configure: prefix_cache,
 * prefix_cache_bytes). The scheduler's chunked prefill stays: seq_new
 * peeks how many leading prompt tokens the requester's (uid's) tree can
 * restore and reports it through seq_cached, so the scheduler hands out
 * only the rest as prefill chunks. The first prefill step restores that
 * prefix (prefix_cache_restore, capped at the peeked length so the
 * scheduler's count holds; if the snapshot was evicted in between, the
 * missing tokens are computed in that step, so the result stays exact)
 * and reports the restored count in gen_item.cached. Chunks are split
 * inside the step at the cache's snapshot positions (the first and last
 * message start, every `interval` tokens after them, the prompt end) and a
 * snapshot is inserted right after each, so the next request can resume
 * there. A turn that ends in a tool call (a `<tool_call>` token in the
 * output, then an end-of-turn token) stores one more snapshot of prompt +
 * output: the next request renders that call verbatim. Requests with
 * GEN_PROMPT_F_NO_CACHE neither restore nor store.
 *
 * FORCED TOOL CALLS (daemon/force.c): a CHAT request whose tool_choice is
 * "required" or names a function gets a constraint at seq_new. Both
 * sampling points (the last prefill chunk, the batched decode) go through
 * pick(), which narrows the sequence's own logits row while the call's
 * opening is forced; emit() advances the constraint. A forced token is
 * otherwise a sampled token: fed at the next decode, counted, streamed,
 * and kept in the output ids the tool-call snapshot above stores.
 *
 * Threading (gen.h): create/destroy/seq_new/seq_free on the event loop,
 * step on the worker, never concurrently for a sequence in the batch. The
 * tokenizer is safe for concurrent use; the model serialises its calls.
 * The cache has its own lock; seq_new's peek takes it briefly (it can wait
 * for a snapshot copy on the worker, never for a forward pass).
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/daemon.h"
#include "daemon/force.h"
#include "daemon/gen.h"
#include "engine/backend-open.h"
#include "engine/model.h"
#include "engine/prefix-cache.h"
#include "engine/sample.h"
#include "engine/text/template.h"
#include "engine/text/tokenizer.h"
#include "shm/proto.h"

/* Sequences are sized for prompt + output, at most this many tokens or the
 * model's max_position_embeddings, whichever is smaller. */
#define GEN_ENGINE_MAX_CONTEXT 32768

struct gen_engine {
    struct model     *model;
    struct tokenizer *tok;
    struct sample_stop stop;     /* eos ids from generation_config          */
    int32_t           vocab;     /* logits row width                        */
    int32_t           real_vocab;/* ids the tokenizer knows; never sampled above */
    int64_t           max_context;/* tokens per sequence (prompt + output)  */
    float            *logits;    /* [max_batch][vocab] scratch for decode   */
    size_t            logits_rows;
    struct model_seq **batch_seqs;
    int32_t          *batch_ids;
    size_t           *batch_items;
    size_t            batch_cap;
    struct prefix_cache *pc;     /* NULL = prefix cache off                 */
    int32_t           im_start;  /* message boundary marker, -1 = none     */
    int32_t           tool_call; /* `<tool_call>` id, -1 = none            */
    struct engine_backend be;    /* what runs the model; a GPU backend is
                                    closed after the model                 */
};

struct gen_engine_seq {
    struct model_seq *seq;
    struct sampler   *sampler;
    int32_t          *prompt;    /* prompt ids, then the sampled ids        */
    uint32_t          n_prompt;
    uint32_t          n_ids, cap_ids; /* ids held in prompt[] / its room    */
    uint32_t          done;      /* prompt ids consumed                     */
    int32_t           last;      /* last sampled id (next decode input)     */
    int               has_last;
    /* prefix cache */
    int               use_cache; /* restore and store for this sequence     */
    int               started;   /* first prefill step done                 */
    uint32_t          uid;
    uint32_t          planned;   /* tokens to restore (peeked at seq_new)   */
    int64_t           bnd[2];    /* first and last message start           */
    int32_t           n_bnd;
    int64_t          *pts;       /* snapshot positions (prefix_cache_points) */
    int64_t           n_pts, k_pts;
    int               saw_tool;  /* a <tool_call> token was sampled         */
    int               tool_stored; /* its snapshot is stored (once)         */
    struct force     *force;     /* tool_choice constraint, NULL = none     */
};

static int fail(char *err, size_t errlen, int code, const struct engine_error *e, const char *what)
{
    snprintf(err, errlen, "%s: %s", what, e && e->msg[0] ? e->msg : strerror(-code));
    return code;
}

static void engine_destroy(void *ctx)
{
    struct gen_engine *g = ctx;
    if (!g)
        return;
    prefix_cache_free(g->pc);
    model_free(g->model);
    engine_backend_close(&g->be);
    tokenizer_free(g->tok);
    free(g->logits);
    free(g->batch_seqs);
    free(g->batch_ids);
    free(g->batch_items);
    free(g);
}

/* Load the tokenizer through the caller's cache (tc may be NULL): the
 * stored image first, else the files; a tokenizer not taken from the image
 * is handed back serialised for the caller to store. An image that cannot
 * be made costs only the next start's parse. */
static int tokenizer_from_cache(const char *model_dir, struct gen_tokenizer_cache *tc,
                                struct tokenizer **tok, struct engine_error *e)
{
    struct tokenizer_load_params lp = TOKENIZER_LOAD_PARAMS_DEFAULT;
    enum tokenizer_source src = TOKENIZER_SOURCE_FILES;
    struct engine_error ie = { 0 };
    if (tc) {
        lp.cache_image = tc->image;
        lp.cache_image_len = tc->image_len;
        lp.cache_dir = tc->cache_dir;
        lp.source = &src;
        lp.image_error = &ie;
        tc->image_used = 0;
        tc->file_used = 0;
        tc->image_refused[0] = '\0';
        tc->fresh = NULL;
        tc->fresh_len = 0;
    }
    int r = tokenizer_load_ex(model_dir, &lp, tok, e);
    if (r < 0 || !tc)
        return r;
    tc->image_used = src == TOKENIZER_SOURCE_IMAGE;
    tc->file_used = src == TOKENIZER_SOURCE_CACHE_FILE;
    snprintf(tc->image_refused, sizeof(tc->image_refused), "%.255s", ie.msg);
    if (!tc->image_used) {
        struct engine_error ce = { 0 };
        if (tokenizer_cache_image(*tok, &tc->fresh, &tc->fresh_len, &ce) < 0)
            daemon_log("tokenizer: no cache image to store (%s); the next start parses the files again", ce.msg);
    }
    return 0;
}

static int engine_create(const char *model_dir, const struct gen_create_params *cp, void **ctx, char *err,
                         size_t errlen)
{
    struct gen_tokenizer_cache *tc = cp ? cp->tokenizer_cache : NULL;
    struct engine_error e = { 0 };
    if (!model_dir || !model_dir[0]) {
        snprintf(err, errlen, "the engine generator needs --model DIR (a Qwen3.6 checkpoint directory)");
        return -EINVAL;
    }
    struct gen_engine *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    uint64_t t0 = daemon_now_us();
    int r = tokenizer_from_cache(model_dir, tc, &g->tok, &e);
    uint64_t t_tok = daemon_now_us();
    if (r < 0) {
        fail(err, errlen, r, &e, "tokenizer");
        engine_destroy(g);
        return r;
    }
    if (tokenizer_max_token_bytes(g->tok) > GEN_PIECE_MAX) {
        snprintf(err, errlen, "tokenizer: a token of %zu bytes exceeds the event piece limit GEN_PIECE_MAX (%d)",
                 tokenizer_max_token_bytes(g->tok), GEN_PIECE_MAX);
        engine_destroy(g);
        return -E2BIG;
    }
    struct model_config cfg;
    model_config_init(&cfg);
    r = model_config_load(model_dir, &cfg, &e);
    if (r < 0) {
        fail(err, errlen, r, &e, "model config");
        engine_destroy(g);
        return r;
    }
    g->max_context = GEN_ENGINE_MAX_CONTEXT;
    if (cfg.max_position_embeddings > 1 && cfg.max_position_embeddings < g->max_context)
        g->max_context = cfg.max_position_embeddings;
    /* The backend by name (engine/backend-open.c, shared with
     * resident-engine); a GPU one is opened here, in the thread and signal
     * mask the daemon prepared for the generator. */
    const struct engine_backend_params bp = {
        .name = cp && cp->backend ? cp->backend : "auto",
        .kernel_dir = cp ? cp->kernel_dir : NULL,
        .device = cp ? cp->gpu_device : 0,
    };
    r = engine_backend_open(&bp, &g->be, &e);
    if (r < 0) {
        snprintf(err, errlen, "backend = %s (config key backend, --backend): %s; or choose backend = "
                 "auto or cpu", bp.name, e.msg);
        engine_destroy(g);
        return r;
    }
    if (g->be.fallback[0])
        daemon_log("backend auto: no usable GPU, using the fast CPU backend: %s", g->be.fallback);
    struct model_params mp = MODEL_PARAMS_DEFAULT;
    mp.backend = g->be.name;
    mp.backend_instance = g->be.gpu;
    if (cp && cp->n_threads > 0)
        mp.n_threads = cp->n_threads;
    mp.max_context = g->max_context;
    mp.real_vocab = (int32_t)tokenizer_token_count(g->tok);
    if (cp) {
        mp.shard_images = cp->shards;
        mp.n_shard_images = cp->n_shards;
    }
    r = model_load(model_dir, &mp, &g->model, &e);
    if (r < 0) {
        fail(err, errlen, r, &e, "model");
        engine_destroy(g);
        return r;
    }
    uint64_t t_model = daemon_now_us();
    daemon_log("engine: tokenizer %" PRIu64 " ms (%s), config + model load %" PRIu64 " ms",
               (t_tok - t0) / 1000, tc && tc->image_used ? "from the stored cache image"
               : tc && tc->file_used ? "from the cache file" : "parsed from its files", (t_model - t_tok) / 1000);
    g->vocab = model_vocab(g->model);
    g->real_vocab = model_real_vocab(g->model);
    sample_stop_init(&g->stop, model_get_config(g->model));
    /* Qwen chat turns end with <|im_end|>; generation_config names it too,
     * but a directory without one must still stop at the end of a turn. */
    int32_t im_end = tokenizer_token_to_id(g->tok, "<|im_end|>");
    if (im_end >= 0 && !sample_stop_hit(&g->stop, im_end))
        sample_stop_add(&g->stop, im_end);
    g->im_start = tokenizer_token_to_id(g->tok, "<|im_start|>");
    g->tool_call = tokenizer_token_to_id(g->tok, "<tool_call>");
    *ctx = g;
    return 0;
}

static uint32_t engine_files_opened(void *ctx)
{
    return model_files_opened(((struct gen_engine *)ctx)->model);
}

static int engine_configure(void *ctx, const struct gen_options *o, char *err, size_t errlen)
{
    struct gen_engine *g = ctx;
    struct engine_error e = { 0 };
    if (!o->prefix_cache || g->pc)
        return 0;
    struct prefix_cache_params p = PREFIX_CACHE_PARAMS_DEFAULT;
    p.budget_bytes = o->prefix_cache_bytes;
    int r = prefix_cache_new(g->model, &p, &g->pc, &e);
    if (r < 0)
        return fail(err, errlen, r, &e, "prefix cache");
    return 0;
}

static void engine_stats(void *ctx, char *buf, size_t len)
{
    struct gen_engine *g = ctx;
    if (!len)
        return;
    buf[0] = '\0';
    if (!g->pc) {
        snprintf(buf, len, "prefix cache off");
        return;
    }
    struct prefix_cache_stats st;
    prefix_cache_stats_get(g->pc, &st);
    snprintf(buf, len, "prefix cache: %" PRIu64 " hits, %" PRIu64 " misses, %" PRIu64 " tokens reused, %"
             PRIu64 " prefilled, %" PRIu64 " of %" PRIu64 " bytes held (%" PRIu64 " snapshots), %"
             PRIu64 " evictions, %" PRIu64 " rejected", st.hits, st.misses, st.tokens_reused,
             st.tokens_prefilled, st.bytes_held, st.budget_bytes, st.snapshots, st.evictions,
             st.snapshots_rejected);
}

static void engine_describe(void *ctx, char *buf, size_t len)
{
    const struct gen_engine *g = ctx;
    char be[128];
    model_backend_describe(g->model, be, sizeof(be));
    if (g->be.gpu)
        snprintf(buf, len, "backend %s on %s (device code from %s)", be, g->be.device, g->be.kernel_dir);
    else
        snprintf(buf, len, "backend %s", be);
}

static uint32_t engine_vocab_size(void *ctx)
{
    const struct gen_engine *g = ctx;
    return (uint32_t)g->real_vocab;
}

/* Render a prompt to text for the tokenizer (TEXT and CHAT kinds). */
static int render_prompt(const struct gen_prompt *p, char **out, size_t *out_len,
                         struct engine_error *e)
{
    if (p->kind == SHM_PROMPT_CHAT) {
        /* The template reads "chat_template_kwargs" (vLLM's name); the
         * protocol's name is "template_kwargs". The first wins when both
         * are there; a request with only "template_kwargs" is rendered
         * with it under the template's name. Other requests go to the
         * renderer as bytes (its own parser keeps big integers exact). */
        struct json_tokener *tk = json_tokener_new_ex(64);
        if (!tk)
            return -ENOMEM;
        struct json_object *req = p->len <= INT32_MAX ? json_tokener_parse_ex(tk, (const char *)p->bytes, (int)p->len) : NULL;
        json_tokener_free(tk);
        struct json_object *kw = NULL;
        int r;
        if (req && json_object_is_type(req, json_type_object) &&
            !json_object_object_get_ex(req, "chat_template_kwargs", NULL) &&
            json_object_object_get_ex(req, "template_kwargs", &kw)) {
            json_object_object_add(req, "chat_template_kwargs", json_object_get(kw));
            r = chat_render_object(req, NULL, out, out_len, e);
        } else {
            r = chat_render((const char *)p->bytes, p->len, NULL, out, out_len, e);
        }
        json_object_put(req);
        return r;
    }

    /* TEXT: one user message. Build the request with json-c-free string
     * escaping so any bytes the client sent stay exactly what they were. */
    size_t cap = p->len * 6 + 96;
    if (cap < p->len)
        return -EOVERFLOW;
    char *json = malloc(cap), *w = json;
    if (!json)
        return -ENOMEM;
    w += sprintf(w, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    for (size_t i = 0; i < p->len; i++) {
        unsigned char c = p->bytes[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c < 0x20) {
            w += sprintf(w, "\\u%04x", c);
        } else {
            *w++ = (char)c;
        }
    }
    w += sprintf(w, "\"}],\"add_generation_prompt\":true}");
    int r = chat_render(json, (size_t)(w - json), NULL, out, out_len, e);
    free(json);
    return r;
}

static int prompt_ids(const struct gen_engine *g, const struct gen_prompt *p, int32_t **ids,
                      size_t *n, struct engine_error *e)
{
    if (p->kind == SHM_PROMPT_IDS) {
        if (p->len % 4 != 0)
            return engine_error_set(e, -EINVAL, "token-id prompt of %zu bytes is not a whole number of u32 ids", p->len);
        size_t cnt = p->len / 4;
        *ids = malloc((cnt ? cnt : 1) * sizeof(int32_t));
        if (!*ids)
            return -ENOMEM;
        for (size_t i = 0; i < cnt; i++) {
            uint32_t v;
            memcpy(&v, p->bytes + 4 * i, 4);
            if (v >= (uint32_t)g->real_vocab) {
                free(*ids);
                *ids = NULL;
                return engine_error_set(e, -ERANGE, "prompt id %" PRIu32 " at position %zu is outside the tokenizer's %d ids",
                                        v, i, g->real_vocab);
            }
            (*ids)[i] = (int32_t)v;
        }
        *n = cnt;
        return 0;
    }
    if (p->kind == SHM_PROMPT_RAW)
        return tokenizer_encode(g->tok, (const char *)p->bytes, p->len, ids, n, e);
    if (p->kind != SHM_PROMPT_TEXT && p->kind != SHM_PROMPT_CHAT)
        return engine_error_set(e, -EINVAL, "prompt kind %u is unknown", p->kind);
    char *text = NULL;
    size_t len = 0;
    int r = render_prompt(p, &text, &len, e);
    if (r < 0)
        return r;
    r = tokenizer_encode(g->tok, text, len, ids, n, e);
    free(text);
    return r;
}

static void engine_seq_free(void *ctx, void *seq)
{
    struct gen_engine_seq *s = seq;
    (void)ctx;
    if (!s)
        return;
    model_seq_free(s->seq);
    sampler_free(s->sampler);
    free(s->prompt);
    free(s->pts);
    force_free(s->force);
    free(s);
}

static int engine_seq_new(void *ctx, const struct gen_prompt *p, void **seq, uint32_t *prompt_tokens,
                          char *err, size_t errlen)
{
    struct gen_engine *g = ctx;
    struct engine_error e = { 0 };
    struct gen_engine_seq *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    size_t n = 0;
    int r = prompt_ids(g, p, &s->prompt, &n, &e);
    if (r < 0) {
        engine_seq_free(g, s);
        return fail(err, errlen, r, &e, "prompt");
    }
    if (n == 0 || n >= (size_t)g->max_context) {
        engine_seq_free(g, s);
        snprintf(err, errlen, "prompt has %zu tokens; the engine accepts 1..%" PRId64 " (its context)", n,
                 g->max_context - 1);
        return n == 0 ? -EINVAL : -E2BIG;
    }
    s->n_prompt = (uint32_t)n;
    s->n_ids = s->cap_ids = (uint32_t)n;
    if (p->tool_choice && p->tool_choice->kind != FORCE_NONE) {
        r = force_new(g->tok, p->tool_choice, s->prompt, n, &s->force, err, errlen);
        if (r < 0) {
            engine_seq_free(g, s);
            return r;
        }
    }
    s->uid = p->uid;
    if (g->pc && !(p->flags & GEN_PROMPT_F_NO_CACHE)) {
        s->use_cache = 1;
        /* The first and the last message start: new conversations share
         * the system message, the next turn the previous generation
         * prompt (docs/prefix-cache.md, "Which boundaries to pass"). */
        for (size_t i = 1; g->im_start >= 0 && i < n; i++) {
            if (s->prompt[i] != g->im_start)
                continue;
            if (s->n_bnd == 0)
                s->bnd[s->n_bnd++] = (int64_t)i;
            else
                s->bnd[s->n_bnd == 1 ? s->n_bnd++ : 1] = (int64_t)i;
        }
        s->planned = (uint32_t)prefix_cache_peek(g->pc, s->uid, s->prompt, (int64_t)n);
    }

    struct sample_params sp = SAMPLE_PARAMS_DEFAULT;
    sp.temperature = p->temperature;
    sp.top_p = p->top_p > 0 ? p->top_p : 1.0f;
    sp.top_k = (int32_t)p->top_k;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repeat_penalty > 0 ? p->repeat_penalty : 1.0f;
    sp.seed = p->seed;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    /* Fields the request left unset: the model's generation_config.json. */
    _Static_assert(SAMPLE_DEF_ALL == SHM_DEF_ALL && SAMPLE_DEF_PRESENCE_PENALTY == SHM_DEF_PRESENCE_PENALTY &&
                   SAMPLE_DEF_TOP_K == SHM_DEF_TOP_K, "engine default bits are the wire's");
    sample_params_model_defaults(&sp, model_get_config(g->model), p->model_defaults);
    sp.vocab_limit = g->real_vocab;
    r = sampler_new(&sp, g->vocab, &s->sampler, &e);
    if (r == 0) {
        sampler_accept_prompt(s->sampler, s->prompt, (int64_t)n);
        /* State for the prompt and the request's output, not the model's
         * whole context: the KV cache is allocated at its capacity. */
        uint64_t cap = (uint64_t)n + (p->max_new_tokens ? p->max_new_tokens : (uint64_t)g->max_context) + 1;
        if (cap > (uint64_t)g->max_context)
            cap = (uint64_t)g->max_context;
        r = model_seq_new(g->model, (int64_t)cap, &s->seq, &e);
    }
    if (r < 0) {
        engine_seq_free(g, s);
        return fail(err, errlen, r, &e, "sequence");
    }
    *prompt_tokens = s->n_prompt;
    *seq = s;
    return 0;
}

static uint32_t engine_seq_cached(void *ctx, void *seq)
{
    (void)ctx;
    return ((const struct gen_engine_seq *)seq)->planned;
}

/* Snapshot the sequence at its current length (ids prompt[0..len)). A
 * snapshot that is not stored costs reuse, never correctness: failures
 * are counted by the cache (rejected) or dropped. */
static void cache_store(struct gen_engine *g, struct gen_engine_seq *s)
{
    struct engine_error e = { 0 };
    int64_t len = model_seq_len(s->seq);
    if (len > 0 && len <= (int64_t)s->n_ids)
        (void)prefix_cache_insert(g->pc, s->seq, s->uid, s->prompt, len, &e);
}

/* Prefill prompt ids [done, to), split at the snapshot positions with a
 * snapshot after each; `logits` (or NULL) gets the last position's. */
static int advance(struct gen_engine *g, struct gen_engine_seq *s, uint32_t to, float *logits,
                   struct engine_error *e)
{
    uint32_t from = s->done;
    while (s->done < to) {
        while (s->k_pts < s->n_pts && s->pts[s->k_pts] <= (int64_t)s->done)
            s->k_pts++;
        uint32_t end = to;
        int snap = 0;
        if (s->k_pts < s->n_pts && s->pts[s->k_pts] <= (int64_t)to) {
            end = (uint32_t)s->pts[s->k_pts];
            snap = 1;
        }
        struct model_prefill_params pp = { 0 };
        if (end == to)
            pp.logits = logits;
        int r = model_prefill(g->model, s->seq, s->prompt + s->done, (int64_t)(end - s->done), &pp, e);
        if (r < 0)
            return r;
        s->done = end;
        if (snap) {
            cache_store(g, s);
            s->k_pts++;
        }
    }
    if (g->pc && s->use_cache)
        prefix_cache_note_prefilled(g->pc, (int64_t)(s->done - from));
    return 0;
}

/* First prefill step of a cached sequence: restore the planned prefix. */
static int cache_start(struct gen_engine *g, struct gen_engine_seq *s, struct gen_item *it,
                       struct engine_error *e)
{
    int64_t got = 0;
    int r = prefix_cache_restore(g->pc, s->seq, s->uid, s->prompt, (int64_t)s->planned + 1, &got, e);
    if (r < 0)
        return r;
    s->done = (uint32_t)got;
    it->cached = (uint32_t)got;
    struct prefix_cache_request req = { .boundaries = s->bnd, .n_boundaries = s->n_bnd };
    if (prefix_cache_points(g->pc, &req, got, (int64_t)s->n_prompt, &s->pts, &s->n_pts) < 0)
        s->n_pts = 0;   /* no memory for the plan: no snapshots */
    s->k_pts = 0;
    /* Evicted since seq_new: compute the difference (exact, only slower). */
    return advance(g, s, s->planned, NULL, e);
}

/* Sample the next id from this sequence's logits row (changed in place
 * when a forced tool call narrows it). */
static int pick(struct gen_engine *g, struct gen_engine_seq *s, float *row, int32_t *id)
{
    force_mask(s->force, row, g->vocab);
    return sampler_sample(s->sampler, row, id);
}

static void emit(struct gen_engine *g, struct gen_engine_seq *s, struct gen_item *it, int32_t id)
{
    force_accept(s->force, id);
    sampler_accept(s->sampler, id);
    s->last = id;
    s->has_last = 1;
    it->token = (uint32_t)id;
    it->eos = sample_stop_hit(&g->stop, id);
    if (g->pc && s->use_cache) {
        if (id == g->tool_call)
            s->saw_tool = 1;
        /* Keep the output ids after the prompt: a tool-call turn stores a
         * snapshot of prompt + output (everything but this end token,
         * which was not fed yet) for the request that renders it back. */
        if (s->n_ids == s->cap_ids) {
            uint32_t nc = s->cap_ids < 64 ? 128 : s->cap_ids * 2;
            int32_t *np = nc > s->cap_ids ? realloc(s->prompt, (size_t)nc * sizeof(int32_t)) : NULL;
            if (np) {
                s->prompt = np;
                s->cap_ids = nc;
            }
        }
        if (s->n_ids < s->cap_ids)
            s->prompt[s->n_ids++] = id;
        else
            s->use_cache = 0;   /* out of memory: stop storing, output unaffected */
        if (s->use_cache && it->eos && s->saw_tool && !s->tool_stored &&
            model_seq_len(s->seq) == (int64_t)s->n_ids - 1) {
            cache_store(g, s);
            s->tool_stored = 1;
        }
    }
    it->piece_len = 0;
    if (tokenizer_id_is_special(g->tok, id))
        return;
    size_t len = 0;
    const char *bytes = tokenizer_id_to_bytes(g->tok, id, &len);
    if (bytes && len <= GEN_PIECE_MAX) {
        memcpy(it->piece, bytes, len);
        it->piece_len = (uint32_t)len;
    } else if (bytes) {
        it->error = -EMSGSIZE;   /* refused at create; kept as a guard */
    }
}

static int grow_batch(struct gen_engine *g, size_t n)
{
    if (n <= g->batch_cap)
        return 0;
    size_t rows = 0;
    if (__builtin_mul_overflow(n, (size_t)g->vocab, &rows))
        return -EOVERFLOW;
    float *l = realloc(g->logits, rows * sizeof(float));
    if (!l)
        return -ENOMEM;
    g->logits = l;
    struct model_seq **ss = realloc(g->batch_seqs, n * sizeof(*ss));
    if (ss)
        g->batch_seqs = ss;
    int32_t *ids = realloc(g->batch_ids, n * sizeof(*ids));
    if (ids)
        g->batch_ids = ids;
    size_t *its = realloc(g->batch_items, n * sizeof(*its));
    if (its)
        g->batch_items = its;
    if (!ss || !ids || !its)
        return -ENOMEM;
    g->batch_cap = n;
    return 0;
}

static int engine_step(void *ctx, struct gen_item *items, size_t n)
{
    struct gen_engine *g = ctx;
    struct engine_error e;
    int r = grow_batch(g, n ? n : 1);
    if (r < 0) {
        for (size_t i = 0; i < n; i++)
            items[i].error = r;
        return 0;
    }
    size_t nb = 0;
    for (size_t i = 0; i < n; i++) {
        struct gen_item *it = &items[i];
        struct gen_engine_seq *s = it->seq;
        it->error = 0;
        it->piece_len = 0;
        it->eos = 0;
        if (it->n_prefill == 0) {
            if (!it->sample)
                continue;
            if (!s->has_last || s->done < s->n_prompt) {
                it->error = -EPROTO;   /* decode before the prompt was consumed */
                continue;
            }
            g->batch_seqs[nb] = s->seq;
            g->batch_ids[nb] = s->last;
            g->batch_items[nb] = i;
            nb++;
            continue;
        }
        engine_error_clear(&e);
        if (!s->started) {
            s->started = 1;
            if (s->use_cache) {
                r = cache_start(g, s, it, &e);
                if (r < 0) {
                    it->error = r;
                    continue;
                }
            }
        }
        if (it->n_prefill > s->n_prompt - s->done) {
            it->error = -EPROTO;
            continue;
        }
        int last_chunk = s->done + it->n_prefill == s->n_prompt;
        r = advance(g, s, s->done + it->n_prefill, it->sample && last_chunk ? g->logits : NULL, &e);
        if (r < 0) {
            it->error = r;
            continue;
        }
        if (it->sample && last_chunk) {
            int32_t id;
            r = pick(g, s, g->logits, &id);
            if (r < 0)
                it->error = r;
            else
                emit(g, s, it, id);
        }
    }
    if (nb == 0)
        return 0;
    engine_error_clear(&e);
    r = model_decode(g->model, g->batch_seqs, g->batch_ids, (int32_t)nb, g->logits, &e);
    for (size_t k = 0; k < nb; k++) {
        struct gen_item *it = &items[g->batch_items[k]];
        struct gen_engine_seq *s = it->seq;
        int32_t id;
        if (r < 0) {
            it->error = r;
            continue;
        }
        int rs = pick(g, s, g->logits + k * (size_t)g->vocab, &id);
        if (rs < 0)
            it->error = rs;
        else
            emit(g, s, it, id);
    }
    return 0;
}

const struct gen_ops gen_engine_ops = {
    .name = "engine",
    .synthetic = 0,
    .parse_output = 1,
    .tool_choice = 1,
    .create = engine_create,
    .files_opened = engine_files_opened,
    .destroy = engine_destroy,
    .vocab_size = engine_vocab_size,
    .seq_new = engine_seq_new,
    .seq_free = engine_seq_free,
    .step = engine_step,
    .configure = engine_configure,
    .seq_cached = engine_seq_cached,
    .stats = engine_stats,
    .describe = engine_describe,
};
