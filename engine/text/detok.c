/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decoding: ids -> bytes (tokenizer_decode), and the streaming UTF-8
 * assembler behind struct detok_stream (see detok.h for the contract).
 *
 * The assembler is a byte-at-a-time UTF-8 validator with the table of
 * Unicode 15 §3.9 (Table 3-7, well-formed byte sequences): after a lead
 * byte the next byte's allowed range depends on the lead (E0 needs A0..BF,
 * ED 80..9F, F0 90..BF, F4 80..8F), so overlongs and surrogates are caught
 * on the earliest byte that proves them, which is exactly where a maximal
 * ill-formed subpart ends.
 */
#include "engine/text/detok.h"

#include "engine/text/tokenizer-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct detok_stream {
    const struct tokenizer *tok;
    struct detok_params     params;
    uint8_t                 pend[4];
    uint8_t                 n_pend;     /* bytes held back                */
    uint8_t                 need;       /* total length of that sequence  */
    char                   *out;
    size_t                  n_out, cap_out;
};

static const char REPL[3] = { (char)0xef, (char)0xbf, (char)0xbd };

int detok_stream_new(const struct tokenizer *tok,
                     const struct detok_params *params,
                     struct detok_stream **out, struct engine_error *err)
{
    struct detok_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return engine_error_set(err, -ENOMEM, "detok: out of memory");
    s->tok = tok;
    s->params = params ? *params : DETOK_PARAMS_DEFAULT;
    /* Worst case per token: every byte replaced (3 bytes each), plus the
     * bytes held back from before. */
    s->cap_out = tokenizer_max_token_bytes(tok) * 3 + 16;
    s->out = malloc(s->cap_out);
    if (!s->out) {
        free(s);
        return engine_error_set(err, -ENOMEM, "detok: out of memory");
    }
    *out = s;
    return 0;
}

void detok_stream_free(struct detok_stream *s)
{
    if (!s)
        return;
    free(s->out);
    free(s);
}

size_t detok_stream_pending(const struct detok_stream *s)
{
    return s->n_pend;
}

void detok_stream_reset(struct detok_stream *s)
{
    s->n_pend = 0;
    s->need = 0;
}

static inline void emit(struct detok_stream *s, const void *p, size_t n)
{
    memcpy(s->out + s->n_out, p, n);
    s->n_out += n;
}

/* Length of the sequence a lead byte starts, 0 when it cannot start one. */
static inline uint8_t lead_len(uint8_t b)
{
    if (b >= 0xc2 && b <= 0xdf)
        return 2;
    if (b >= 0xe0 && b <= 0xef)
        return 3;
    if (b >= 0xf0 && b <= 0xf4)
        return 4;
    return 0;
}

/* May `b` follow the held-back bytes? */
static inline bool cont_ok(const struct detok_stream *s, uint8_t b)
{
    if (s->n_pend == 1) {
        switch (s->pend[0]) {
        case 0xe0: return b >= 0xa0 && b <= 0xbf;
        case 0xed: return b >= 0x80 && b <= 0x9f;
        case 0xf0: return b >= 0x90 && b <= 0xbf;
        case 0xf4: return b >= 0x80 && b <= 0x8f;
        default: break;
        }
    }
    return (b & 0xc0) == 0x80;
}

static void put_byte(struct detok_stream *s, uint8_t b)
{
    if (s->n_pend) {
        if (cont_ok(s, b)) {
            s->pend[s->n_pend++] = b;
            if (s->n_pend == s->need) {
                emit(s, s->pend, s->n_pend);
                s->n_pend = 0;
            }
            return;
        }
        /* The held-back bytes are a maximal ill-formed subpart; `b` starts
         * afresh. */
        emit(s, REPL, sizeof(REPL));
        s->n_pend = 0;
    }
    if (b < 0x80) {
        s->out[s->n_out++] = (char)b;
        return;
    }
    uint8_t n = lead_len(b);
    if (!n) {
        emit(s, REPL, sizeof(REPL));
        return;
    }
    s->pend[0] = b;
    s->n_pend = 1;
    s->need = n;
}

int detok_stream_feed(struct detok_stream *s, int32_t id, const char **text,
                      size_t *len, struct engine_error *err)
{
    size_t n;
    const char *bytes = tokenizer_id_to_bytes(s->tok, id, &n);
    s->n_out = 0;
    *text = s->out;
    *len = 0;
    if (!bytes)
        return engine_error_set(err, -ERANGE,
                                "detok: id %d names no token (the vocabulary "
                                "has %zu ids; mask ids past it when "
                                "sampling)", id,
                                tokenizer_token_count(s->tok));
    if (s->params.skip_special_tokens && tokenizer_id_is_special(s->tok, id))
        return 0;
    /* ASCII-only tokens with nothing held back are the common case. */
    if (!s->n_pend) {
        size_t i = 0;
        while (i < n && !((uint8_t)bytes[i] & 0x80))
            i++;
        if (i == n) {
            emit(s, bytes, n);
            *len = s->n_out;
            return 0;
        }
    }
    for (size_t i = 0; i < n; i++)
        put_byte(s, (uint8_t)bytes[i]);
    *len = s->n_out;
    return 0;
}

int detok_stream_flush(struct detok_stream *s, const char **text,
                       size_t *len, struct engine_error *err)
{
    (void)err;
    s->n_out = 0;
    if (s->n_pend) {
        emit(s, REPL, sizeof(REPL));
        s->n_pend = 0;
    }
    *text = s->out;
    *len = s->n_out;
    return 0;
}

int tokenizer_decode(const struct tokenizer *tok, const int32_t *ids,
                     size_t n_ids, bool skip_special_tokens, char **out,
                     size_t *out_len, struct engine_error *err)
{
    size_t total = 0;
    *out = NULL;
    *out_len = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t n;
        if (!tokenizer_id_to_bytes(tok, ids[i], &n))
            return engine_error_set(err, -ERANGE,
                                    "tokenizer: id %d at position %zu names "
                                    "no token (valid ids are below %zu)",
                                    ids[i], i, tok->n_ids);
        if (skip_special_tokens && tokenizer_id_is_special(tok, ids[i]))
            continue;
        total += n;     /* n <= TOK_MAX_TOKEN_BYTES: cannot overflow for
                         * any array that fits in memory */
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return engine_error_set(err, -ENOMEM,
                                "tokenizer: out of memory for %zu bytes",
                                total);
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        size_t n;
        const char *b = tokenizer_id_to_bytes(tok, ids[i], &n);
        if (skip_special_tokens && tokenizer_id_is_special(tok, ids[i]))
            continue;
        memcpy(buf + o, b, n);
        o += n;
    }
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return 0;
}
