/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TEST GENERATOR "script": not a model. Every request gets the same fixed
 * text, read at startup from the file named by $RESIDENT_GEN_SCRIPT, as the
 * token ids the real tokenizer of --model DIR gives it, then <|im_end|>
 * (end of sequence). It exists so tests can drive scripted model output
 * (reasoning, tool calls) through the real scheduler, text stream, output
 * parsers, event ring, libresident and the OpenAI gateway; random weights
 * never produce such text.
 *
 * Linked only into the test daemon residentd-script (never installed) and
 * announced as synthetic (WELCOME flags, startup log), like the null
 * generator. Prompt token counts are the tokenizer's count of the payload
 * bytes (IDS: the ids), without the chat template. Sampling fields,
 * penalties and model_defaults are ignored: the text is fixed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gen.h"
#include "engine/error.h"
#include "engine/text/tokenizer.h"
#include "shm/proto.h"

struct gen_script {
    struct tokenizer *tok;
    int32_t          *ids;
    size_t            n_ids;
    int32_t           eos;
};

struct gen_script_seq {
    uint32_t n_prompt, done, next;
};

static void script_destroy(void *ctx)
{
    struct gen_script *g = ctx;
    if (!g)
        return;
    tokenizer_free(g->tok);
    free(g->ids);
    free(g);
}

static int script_create(const char *model_dir, const struct gen_create_params *p, void **ctx, char *err,
                         size_t errlen)
{
    (void)p;            /* scripted tokens: only the tokenizer is read (no
                         * tokenizer cache kept for this generator) */
    const char *path = getenv("RESIDENT_GEN_SCRIPT");
    if (!path || !path[0] || !model_dir || !model_dir[0]) {
        snprintf(err, errlen, "the script test generator needs --model DIR (tokenizer) and $RESIDENT_GEN_SCRIPT (text file)");
        return -EINVAL;
    }
    struct gen_script *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    struct engine_error e = { 0 };
    char *text = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    int r = 0;
    if (!f) {
        r = -errno;
        snprintf(err, errlen, "script %s: %s", path, strerror(errno));
    } else {
        char buf[4096];
        size_t k;
        while (r == 0 && (k = fread(buf, 1, sizeof(buf), f)) > 0) {
            char *t = len + k <= (1u << 20) ? realloc(text, len + k) : NULL;
            if (!t) {
                r = -E2BIG;
                snprintf(err, errlen, "script %s: more than 1 MiB or out of memory", path);
                break;
            }
            text = t;
            memcpy(text + len, buf, k);
            len += k;
        }
        fclose(f);
    }
    if (r == 0 && (r = tokenizer_load(model_dir, &g->tok, &e)) < 0)
        snprintf(err, errlen, "tokenizer: %s", e.msg);
    if (r == 0 && tokenizer_max_token_bytes(g->tok) > GEN_PIECE_MAX) {
        snprintf(err, errlen, "tokenizer: a token exceeds GEN_PIECE_MAX (%d)", GEN_PIECE_MAX);
        r = -E2BIG;
    }
    if (r == 0 && (r = tokenizer_encode(g->tok, text ? text : "", len, &g->ids, &g->n_ids, &e)) < 0)
        snprintf(err, errlen, "script: %s", e.msg);
    if (r == 0 && (g->eos = tokenizer_token_to_id(g->tok, "<|im_end|>")) < 0) {
        snprintf(err, errlen, "tokenizer has no <|im_end|>");
        r = -EINVAL;
    }
    free(text);
    if (r < 0) {
        script_destroy(g);
        return r;
    }
    *ctx = g;
    return 0;
}

static uint32_t script_vocab_size(void *ctx)
{
    const struct gen_script *g = ctx;
    return (uint32_t)tokenizer_token_count(g->tok);
}

static int script_seq_new(void *ctx, const struct gen_prompt *p, void **seq, uint32_t *prompt_tokens,
                          char *err, size_t errlen)
{
    struct gen_script *g = ctx;
    size_t n = p->len / 4;
    if (p->kind != SHM_PROMPT_IDS) {
        int32_t *ids = NULL;
        struct engine_error e = { 0 };
        int r = tokenizer_encode(g->tok, (const char *)p->bytes, p->len, &ids, &n, &e);
        free(ids);
        if (r < 0) {
            snprintf(err, errlen, "prompt: %s", e.msg);
            return r;
        }
    }
    struct gen_script_seq *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->n_prompt = n ? (uint32_t)n : 1;
    *prompt_tokens = s->n_prompt;
    *seq = s;
    return 0;
}

static void script_seq_free(void *ctx, void *seq)
{
    (void)ctx;
    free(seq);
}

static int script_step(void *ctx, struct gen_item *items, size_t n)
{
    struct gen_script *g = ctx;
    for (size_t i = 0; i < n; i++) {
        struct gen_item *it = &items[i];
        struct gen_script_seq *s = it->seq;
        it->error = 0;
        it->eos = 0;
        it->piece_len = 0;
        if (it->n_prefill > s->n_prompt - s->done) {
            it->error = -EPROTO;
            continue;
        }
        s->done += it->n_prefill;
        if (!it->sample)
            continue;
        int32_t id = s->next < g->n_ids ? g->ids[s->next] : g->eos;
        s->next++;
        it->token = (uint32_t)id;
        it->eos = id == g->eos;
        if (!tokenizer_id_is_special(g->tok, id)) {
            size_t len = 0;
            const char *b = tokenizer_id_to_bytes(g->tok, id, &len);
            if (b && len <= GEN_PIECE_MAX) {
                memcpy(it->piece, b, len);
                it->piece_len = (uint32_t)len;
            }
        }
    }
    return 0;
}

const struct gen_ops gen_script_ops = {
    .name = "script",
    .synthetic = 1,
    .parse_output = 1,
    .create = script_create,
    .destroy = script_destroy,
    .vocab_size = script_vocab_size,
    .seq_new = script_seq_new,
    .seq_free = script_seq_free,
    .step = script_step,
};
