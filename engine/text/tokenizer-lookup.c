/* SPDX-License-Identifier: Apache-2.0 */
/* Read-only queries on a loaded tokenizer (thread-safe). */
#include "engine/text/tokenizer-internal.h"

#include <string.h>

size_t tokenizer_token_count(const struct tokenizer *tok)
{
    return tok->n_ids;
}

static const struct tok_entry *entry(const struct tokenizer *tok, int32_t id)
{
    if (id < 0 || (size_t)id >= tok->n_ids ||
        !(tok->entries[id].flags & TOK_F_PRESENT))
        return NULL;
    return &tok->entries[id];
}

bool tokenizer_id_is_special(const struct tokenizer *tok, int32_t id)
{
    const struct tok_entry *e = entry(tok, id);
    return e && (e->flags & TOK_F_SPECIAL);
}

bool tokenizer_id_is_added(const struct tokenizer *tok, int32_t id)
{
    const struct tok_entry *e = entry(tok, id);
    return e && (e->flags & TOK_F_ADDED);
}

const char *tokenizer_id_to_bytes(const struct tokenizer *tok, int32_t id,
                                  size_t *len)
{
    const struct tok_entry *e = entry(tok, id);
    if (!e)
        return NULL;
    *len = e->len;
    return tok->blob + e->off;
}

size_t tokenizer_max_token_bytes(const struct tokenizer *tok)
{
    return tok->max_token_bytes;
}

const char *tokenizer_pretokenizer_name(const struct tokenizer *tok)
{
    return tok->pretok_name;
}

int32_t tokenizer_token_to_id(const struct tokenizer *tok, const char *token)
{
    size_t len = strlen(token);
    /* Added tokens first, as HF does (by their content as written). */
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == len &&
            memcmp(tok->added[i].content, token, len) == 0)
            return tok->added[i].id;
    if (len > TOK_MAX_TOKEN_BYTES * 4)
        return -1;
    char tmp[TOK_MAX_TOKEN_BYTES * 4];
    ssize_t n = tok_key_to_bytes(token, len, tmp);
    if (n >= 0)
        return tok_vocab_find(tok, tmp, (size_t)n);
    /* A key outside the byte alphabet is stored as its UTF-8. */
    for (size_t id = 0; id < tok->n_ids; id++) {
        const struct tok_entry *e = &tok->entries[id];
        if ((e->flags & (TOK_F_PRESENT | TOK_F_BPE | TOK_F_ADDED)) ==
                TOK_F_PRESENT &&
            e->len == len && memcmp(tok->blob + e->off, token, len) == 0)
            return (int32_t)id;
    }
    return -1;
}
