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
 * Threading (gen.h): create/destroy/seq_new/seq_free on the event loop,
 * step on the worker, never concurrently for a sequence in the batch. The
 * tokenizer is safe for concurrent use; the model serialises its calls.
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gen.h"
#include "engine/model.h"
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
};

struct gen_engine_seq {
    struct model_seq *seq;
    struct sampler   *sampler;
    int32_t          *prompt;
    uint32_t          n_prompt;
    uint32_t          done;      /* prompt ids consumed                     */
    int32_t           last;      /* last sampled id (next decode input)     */
    int               has_last;
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
    model_free(g->model);
    tokenizer_free(g->tok);
    free(g->logits);
    free(g->batch_seqs);
    free(g->batch_ids);
    free(g->batch_items);
    free(g);
}

static int engine_create(const char *model_dir, void **ctx, char *err, size_t errlen)
{
    struct engine_error e = { 0 };
    if (!model_dir || !model_dir[0]) {
        snprintf(err, errlen, "the engine generator needs --model DIR (a Qwen3.6 checkpoint directory)");
        return -EINVAL;
    }
    struct gen_engine *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    int r = tokenizer_load(model_dir, &g->tok, &e);
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
    struct model_params mp = MODEL_PARAMS_DEFAULT;
    mp.max_context = g->max_context;
    mp.real_vocab = (int32_t)tokenizer_token_count(g->tok);
    r = model_load(model_dir, &mp, &g->model, &e);
    if (r < 0) {
        fail(err, errlen, r, &e, "model");
        engine_destroy(g);
        return r;
    }
    g->vocab = model_vocab(g->model);
    g->real_vocab = model_real_vocab(g->model);
    sample_stop_init(&g->stop, model_get_config(g->model));
    /* Qwen chat turns end with <|im_end|>; generation_config names it too,
     * but a directory without one must still stop at the end of a turn. */
    int32_t im_end = tokenizer_token_to_id(g->tok, "<|im_end|>");
    if (im_end >= 0 && !sample_stop_hit(&g->stop, im_end))
        sample_stop_add(&g->stop, im_end);
    *ctx = g;
    return 0;
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

    struct sample_params sp = SAMPLE_PARAMS_DEFAULT;
    sp.temperature = p->temperature;
    sp.top_p = p->top_p > 0 ? p->top_p : 1.0f;
    sp.top_k = (int32_t)p->top_k;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repeat_penalty > 0 ? p->repeat_penalty : 1.0f;
    sp.seed = p->seed;
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

static void emit(struct gen_engine *g, struct gen_engine_seq *s, struct gen_item *it, int32_t id)
{
    sampler_accept(s->sampler, id);
    s->last = id;
    s->has_last = 1;
    it->token = (uint32_t)id;
    it->eos = sample_stop_hit(&g->stop, id);
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
        if (it->n_prefill > s->n_prompt - s->done) {
            it->error = -EPROTO;
            continue;
        }
        engine_error_clear(&e);
        struct model_prefill_params pp = { 0 };
        int last_chunk = s->done + it->n_prefill == s->n_prompt;
        if (it->sample && last_chunk)
            pp.logits = g->logits;
        r = model_prefill(g->model, s->seq, s->prompt + s->done, it->n_prefill, &pp, &e);
        if (r < 0) {
            it->error = r;
            continue;
        }
        s->done += it->n_prefill;
        if (it->sample && last_chunk) {
            int32_t id;
            r = sampler_sample(s->sampler, g->logits, &id);
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
        int rs = sampler_sample(s->sampler, g->logits + k * (size_t)g->vocab, &id);
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
    .create = engine_create,
    .destroy = engine_destroy,
    .vocab_size = engine_vocab_size,
    .seq_new = engine_seq_new,
    .seq_free = engine_seq_free,
    .step = engine_step,
};
