/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Loading a byte-level BPE tokenizer from a model directory.
 *
 * Two layouts are accepted, as HF transformers accepts them:
 *   tokenizer.json                         (preferred: it states the
 *                                           normalizer and the split regex)
 *   vocab.json + merges.txt + tokenizer_config.json (added_tokens_decoder;
 *                                           NFC and the Qwen2 regex, or the
 *                                           config's "pretokenize_regex")
 *
 * Everything in these files is hostile input: ids are range-checked, token
 * lengths bounded, merges must name vocabulary tokens (HF refuses the file
 * otherwise, so do we), and components we do not implement exactly
 * (normalizers other than NFC, non-byte-level pre-tokenizers, dropout, ...)
 * are refused with a message naming the field instead of being ignored,
 * because ignoring them would silently produce different ids.
 *
 * Vocabulary keys are stored as the raw bytes they stand for (GPT-2 byte
 * alphabet undone), so BPE runs on bytes and decoding is a memcpy. Keys with
 * a character outside that alphabet can never come out of BPE; they stay
 * decodable (as their UTF-8, HF's ByteLevel decoder fallback) but are left
 * out of the byte-keyed hash.
 */
#include "engine/text/tokenizer-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

/* ------------------------------------------------------------------ */
/* building                                                             */

struct builder {
    struct tokenizer *tok;
    size_t            entries_cap;
    size_t            blob_cap;
    size_t            n_vocab;          /* vocabulary entries read        */
    struct {
        int32_t l, r, m;
    }                *merges;
    size_t            n_merges, merges_cap;
    const char       *what;             /* file being read                */
    struct engine_error *err;
    char             *pattern;          /* split regex (tokenizer.json)   */
    bool              have_pretok;
    bool              split_none;       /* ByteLevel(use_regex=false)     */
};

static int grow(void **p, size_t *cap, size_t need, size_t elem,
                struct engine_error *err)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / elem)
        return engine_error_set(err, -ENOMEM, "tokenizer: table too large");
    void *q = realloc(*p, n * elem);
    if (!q)
        return engine_error_set(err, -ENOMEM,
                                "tokenizer: out of memory (%zu bytes)",
                                n * elem);
    *p = q;
    *cap = n;
    return 0;
}

static int entry_set(struct builder *b, int64_t id, const char *bytes,
                     size_t len, uint8_t flags)
{
    struct tokenizer *tok = b->tok;
    if (id < 0 || id >= (int64_t)TOK_MAX_IDS)
        return engine_error_set(b->err, -EINVAL,
                                "%s: token id %lld is outside [0, %u)",
                                b->what, (long long)id, TOK_MAX_IDS);
    if (len > TOK_MAX_TOKEN_BYTES)
        return engine_error_set(b->err, -EINVAL,
                                "%s: token id %lld is %zu bytes long, over "
                                "the limit of %u", b->what, (long long)id,
                                len, TOK_MAX_TOKEN_BYTES);
    size_t need = (size_t)id + 1;
    if (need > b->entries_cap) {
        size_t old = b->entries_cap;
        if (grow((void **)&tok->entries, &b->entries_cap, need,
                 sizeof(*tok->entries), b->err) < 0)
            return -ENOMEM;
        memset(tok->entries + old, 0,
               (b->entries_cap - old) * sizeof(*tok->entries));
    }
    if (need > tok->n_ids)
        tok->n_ids = need;
    if (tok->blob_len + len > UINT32_MAX)
        return engine_error_set(b->err, -EINVAL,
                                "%s: vocabulary text over 4 GiB", b->what);
    if (grow((void **)&tok->blob, &b->blob_cap, tok->blob_len + len + 1, 1,
             b->err) < 0)
        return -ENOMEM;
    memcpy(tok->blob + tok->blob_len, bytes, len);
    struct tok_entry *e = &tok->entries[id];
    e->off = (uint32_t)tok->blob_len;
    e->len = (uint16_t)len;
    e->flags = flags | TOK_F_PRESENT;
    tok->blob_len += len;
    if (len > tok->max_token_bytes)
        tok->max_token_bytes = len;
    return 0;
}

/* One vocabulary entry: key as written in the file. */
static int vocab_add(struct builder *b, const char *key, size_t klen,
                     int64_t id)
{
    if (id >= 0 && id < (int64_t)b->tok->n_ids &&
        (b->tok->entries[id].flags & TOK_F_PRESENT))
        return engine_error_set(b->err, -EINVAL,
                                "%s: id %lld is given to two vocabulary "
                                "entries", b->what, (long long)id);
    char tmp[TOK_MAX_TOKEN_BYTES * 4];
    if (klen > sizeof(tmp))
        return engine_error_set(b->err, -EINVAL,
                                "%s: vocabulary key of %zu bytes for id %lld "
                                "is over the limit", b->what, klen,
                                (long long)id);
    ssize_t n = tok_key_to_bytes(key, klen, tmp);
    b->n_vocab++;
    if (n >= 0)
        return entry_set(b, id, tmp, (size_t)n, TOK_F_BPE);
    /* Not byte-level text: decodes to its own UTF-8 (HF ByteLevel decoder
     * fallback), never produced by BPE. */
    return entry_set(b, id, key, klen, 0);
}

static int vocab_index(struct builder *b)
{
    struct tokenizer *tok = b->tok;
    size_t cap = 1024;
    while (cap < b->n_vocab * 2)
        cap *= 2;
    tok->vocab_slots = calloc(cap, sizeof(*tok->vocab_slots));
    if (!tok->vocab_slots)
        return engine_error_set(b->err, -ENOMEM,
                                "tokenizer: out of memory for the vocabulary "
                                "index");
    tok->vocab_mask = cap - 1;
    for (size_t id = 0; id < tok->n_ids; id++) {
        const struct tok_entry *e = &tok->entries[id];
        if (!(e->flags & TOK_F_BPE))
            continue;
        const char *s = tok->blob + e->off;
        uint64_t hv = tok_hash_bytes(s, e->len);
        uint64_t slot = (hv & 0xffffffff00000000ull) | ((uint64_t)id + 1);
        size_t h = (size_t)hv & tok->vocab_mask;
        for (;;) {
            uint64_t v = tok->vocab_slots[h];
            if (v == 0) {
                tok->vocab_slots[h] = slot;
                break;
            }
            const struct tok_entry *o = &tok->entries[(uint32_t)v - 1];
            if ((v >> 32) == (hv >> 32) && o->len == e->len &&
                memcmp(tok->blob + o->off, s, e->len) == 0)
                return engine_error_set(b->err, -EINVAL,
                                        "%s: ids %u and %zu are the same "
                                        "token", b->what, (uint32_t)v - 1,
                                        id);
            h = (h + 1) & tok->vocab_mask;
        }
    }
    return 0;
}

int32_t tok_vocab_find(const struct tokenizer *tok, const void *data,
                       size_t len)
{
    uint64_t hv = tok_hash_bytes(data, len);
    size_t h = (size_t)hv & tok->vocab_mask;
    for (;;) {
        uint64_t v = tok->vocab_slots[h];
        if (v == 0)
            return -1;
        /* the slot's upper half is the key's hash: most misses end here
         * without touching the entry or the text */
        if ((v >> 32) == (hv >> 32)) {
            const struct tok_entry *e = &tok->entries[(uint32_t)v - 1];
            if (e->len == len && (e->flags & TOK_F_BPE) &&
                memcmp(tok->blob + e->off, data, len) == 0)
                return (int32_t)((uint32_t)v - 1);
        }
        h = (h + 1) & tok->vocab_mask;
    }
}

/* A merge as written: two vocabulary keys. Rank = order of arrival. */
static int merge_add(struct builder *b, const char *l, size_t ll,
                     const char *r, size_t rl)
{
    struct tokenizer *tok = b->tok;
    char lb[TOK_MAX_TOKEN_BYTES * 2 + 8];
    size_t rank = b->n_merges + 1;
    if (ll > TOK_MAX_TOKEN_BYTES * 4 || rl > TOK_MAX_TOKEN_BYTES * 4)
        return engine_error_set(b->err, -EINVAL, "%s: merge %zu is too long",
                                b->what, rank);
    char tl[TOK_MAX_TOKEN_BYTES * 4], tr[TOK_MAX_TOKEN_BYTES * 4];
    ssize_t nl = tok_key_to_bytes(l, ll, tl);
    ssize_t nr = tok_key_to_bytes(r, rl, tr);
    int32_t il = nl >= 0 ? tok_vocab_find(tok, tl, (size_t)nl) : -1;
    int32_t ir = nr >= 0 ? tok_vocab_find(tok, tr, (size_t)nr) : -1;
    if (grow((void **)&b->merges, &b->merges_cap, b->n_merges + 1,
             sizeof(*b->merges), b->err) < 0)
        return -ENOMEM;
    if (nl < 0 || nr < 0) {
        /* A merge of non-byte-level keys can never fire; HF only needs the
         * keys to exist, which matters for nothing we compute. It keeps its
         * rank slot so later ranks stay in file order. */
        b->merges[b->n_merges].l = -1;
        b->n_merges++;
        return 0;
    }
    if (il < 0 || ir < 0)
        return engine_error_set(b->err, -EINVAL,
                                "%s: merge %zu (\"%.*s\" \"%.*s\") names a "
                                "token that is not in the vocabulary",
                                b->what, rank, (int)(ll > 64 ? 64 : ll), l,
                                (int)(rl > 64 ? 64 : rl), r);
    if ((size_t)nl + (size_t)nr > TOK_MAX_TOKEN_BYTES)
        return engine_error_set(b->err, -EINVAL,
                                "%s: merge %zu makes a token over %u bytes",
                                b->what, rank, TOK_MAX_TOKEN_BYTES);
    memcpy(lb, tl, (size_t)nl);
    memcpy(lb + nl, tr, (size_t)nr);
    int32_t im = tok_vocab_find(tok, lb, (size_t)(nl + nr));
    if (im < 0)
        return engine_error_set(b->err, -EINVAL,
                                "%s: merge %zu (\"%.*s\" \"%.*s\") makes a "
                                "token that is not in the vocabulary",
                                b->what, rank, (int)(ll > 64 ? 64 : ll), l,
                                (int)(rl > 64 ? 64 : rl), r);
    b->merges[b->n_merges].l = il;
    b->merges[b->n_merges].r = ir;
    b->merges[b->n_merges].m = im;
    b->n_merges++;
    return 0;
}

static int merges_index(struct builder *b)
{
    struct tokenizer *tok = b->tok;
    size_t cap = 1024;
    while (cap < b->n_merges * 2)
        cap *= 2;
    tok->merge_slots = malloc(cap * sizeof(*tok->merge_slots));
    if (!tok->merge_slots)
        return engine_error_set(b->err, -ENOMEM,
                                "tokenizer: out of memory for the merges");
    memset(tok->merge_slots, 0xff, cap * sizeof(*tok->merge_slots));
    tok->merge_mask = cap - 1;
    for (size_t i = 0; i < b->n_merges; i++) {
        if (b->merges[i].l < 0)
            continue;
        uint64_t key = (uint64_t)(uint32_t)b->merges[i].l << 32 |
                       (uint32_t)b->merges[i].r;
        size_t h = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) &
                   tok->merge_mask;
        for (;;) {
            struct tok_merge_slot *s = &tok->merge_slots[h];
            if (s->key == UINT64_MAX || s->key == key) {
                /* A repeated pair keeps the later rank, as HF's HashMap
                 * collect does. */
                s->key = key;
                s->rank = (uint32_t)i;
                s->merged = b->merges[i].m;
                break;
            }
            h = (h + 1) & tok->merge_mask;
        }
    }
    tok->n_merges = b->n_merges;
    return 0;
}

/* ------------------------------------------------------------------ */
/* files                                                                */

static int read_file_at(int dirfd, const char *dir, const char *name,
                        char **out, size_t *out_len, struct engine_error *err)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s/%s: cannot open: %s", dir, name,
                                strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return engine_error_set(err, -EINVAL, "%s/%s: not a regular file",
                                dir, name);
    }
    if ((uint64_t)st.st_size > TOK_MAX_FILE_BYTES) {
        close(fd);
        return engine_error_set(err, -EFBIG,
                                "%s/%s: %lld bytes, over the %zu MiB limit "
                                "for tokenizer files", dir, name,
                                (long long)st.st_size,
                                TOK_MAX_FILE_BYTES >> 20);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return engine_error_set(err, -ENOMEM, "%s/%s: out of memory", dir,
                                name);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return engine_error_set(err, -e, "%s/%s: read failed: %s", dir,
                                    name, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

static int parse_small_json(const char *text, size_t len, const char *what,
                            struct json_object **out,
                            struct engine_error *err)
{
    struct json_tokener *t = json_tokener_new_ex(64);
    if (!t)
        return engine_error_set(err, -ENOMEM, "%s: out of memory", what);
    json_tokener_set_flags(t, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    if (len > INT32_MAX) {
        json_tokener_free(t);
        return engine_error_set(err, -EFBIG, "%s: too large", what);
    }
    struct json_object *o = json_tokener_parse_ex(t, text, (int)len);
    enum json_tokener_error je = json_tokener_get_error(t);
    size_t used = json_tokener_get_parse_end(t);
    json_tokener_free(t);
    if (!o || je != json_tokener_success || used != len) {
        json_object_put(o);
        return engine_error_set(err, -EINVAL, "%s: invalid JSON (%s)", what,
                                je != json_tokener_success
                                    ? json_tokener_error_desc(je)
                                    : "trailing data");
    }
    *out = o;
    return 0;
}

static struct json_object *jget(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, key, &v))
        return NULL;
    return json_object_is_type(v, json_type_null) ? NULL : v;
}

static const char *jstr(struct json_object *o, const char *key)
{
    struct json_object *v = jget(o, key);
    return v && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v) : NULL;
}

/* Reads a boolean field; absent means `def`. -EINVAL for another type. */
static int jbool(struct json_object *o, const char *key, bool def, bool *out,
                 const char *what, const char *path,
                 struct engine_error *err)
{
    struct json_object *v = jget(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_object_is_type(v, json_type_boolean))
        return engine_error_set(err, -EINVAL,
                                "%s: %s.%s must be true or false", what,
                                path, key);
    *out = json_object_get_boolean(v);
    return 0;
}

static int added_token_add(struct builder *b, int64_t id, const char *content,
                           struct json_object *spec, const char *path)
{
    struct tokenizer *tok = b->tok;
    if (!content || !*content)
        return engine_error_set(b->err, -EINVAL,
                                "%s: %s.content must be a non-empty string",
                                b->what, path);
    if (b->tok->n_added >= TOK_MAX_ADDED)
        return engine_error_set(b->err, -EINVAL,
                                "%s: more than %u added tokens", b->what,
                                TOK_MAX_ADDED);
    struct tok_added a = { .id = (int32_t)id };
    /* HF defaults when a flag is missing: normalized = !special. */
    if (jbool(spec, "special", false, &a.special, b->what, path, b->err) < 0 ||
        jbool(spec, "single_word", false, &a.single_word, b->what, path,
              b->err) < 0 ||
        jbool(spec, "lstrip", false, &a.lstrip, b->what, path, b->err) < 0 ||
        jbool(spec, "rstrip", false, &a.rstrip, b->what, path, b->err) < 0 ||
        jbool(spec, "normalized", !a.special, &a.normalized, b->what, path,
              b->err) < 0)
        return -EINVAL;
    size_t clen = strlen(content);
    if (clen > TOK_MAX_TOKEN_BYTES)
        return engine_error_set(b->err, -EINVAL,
                                "%s: %s.content is %zu bytes, over %u",
                                b->what, path, clen, TOK_MAX_TOKEN_BYTES);
    if (id >= 0 && id < (int64_t)tok->n_ids &&
        (tok->entries[id].flags & TOK_F_PRESENT)) {
        const struct tok_entry *e = &tok->entries[id];
        if (e->flags & TOK_F_ADDED)
            return engine_error_set(b->err, -EINVAL,
                                    "%s: %s: id %lld is given to two added "
                                    "tokens", b->what, path, (long long)id);
        /* An added token may mark an existing vocabulary token; its bytes
         * must then be that token's. */
        char tmp[TOK_MAX_TOKEN_BYTES];
        ssize_t n = tok_key_to_bytes(content, clen, tmp);
        if (n < 0 || (size_t)n != e->len ||
            memcmp(tok->blob + e->off, tmp, (size_t)n) != 0)
            return engine_error_set(b->err, -EINVAL,
                                    "%s: %s: added token \"%.64s\" reuses id "
                                    "%lld of a different vocabulary token",
                                    b->what, path, content, (long long)id);
        tok->entries[id].flags |= TOK_F_ADDED |
                                  (a.special ? TOK_F_SPECIAL : 0);
    } else {
        /* HF's ByteLevel decoder maps each char through the byte alphabet
         * when all of them are in it, otherwise keeps the UTF-8. */
        char tmp[TOK_MAX_TOKEN_BYTES];
        ssize_t n = tok_key_to_bytes(content, clen, tmp);
        int32_t vid = n >= 0 ? tok_vocab_find(tok, tmp, (size_t)n) : -1;
        if (vid >= 0)
            /* HF would give the token the vocabulary's id instead and
             * renumber the added tokens after it: the file contradicts
             * itself, and guessing which id the model was trained with is
             * not safe. */
            return engine_error_set(b->err, -EINVAL,
                                    "%s: %s: added token \"%.64s\" has id "
                                    "%lld but the vocabulary gives it id %d; "
                                    "fix the file so both agree", b->what,
                                    path, content, (long long)id, vid);
        int r = n >= 0 ? entry_set(b, id, tmp, (size_t)n, 0)
                       : entry_set(b, id, content, clen, 0);
        if (r < 0)
            return r;
        tok->entries[id].flags |= TOK_F_ADDED |
                                  (a.special ? TOK_F_SPECIAL : 0);
    }
    a.content = strdup(content);
    if (!a.content)
        return engine_error_set(b->err, -ENOMEM, "tokenizer: out of memory");
    a.len = clen;
    void *arr = tok->added;
    size_t cap = tok->n_added;
    if (grow(&arr, &cap, tok->n_added + 1, sizeof(a), b->err) < 0) {
        free(a.content);
        return -ENOMEM;
    }
    tok->added = arr;
    tok->added[tok->n_added++] = a;
    return 0;
}

/* tokenizer.json "added_tokens": [{"id":..,"content":..,flags}] */
static int parse_added_tokens(struct builder *b, struct json_object *arr)
{
    if (!arr)
        return 0;
    if (!json_object_is_type(arr, json_type_array))
        return engine_error_set(b->err, -EINVAL,
                                "%s: added_tokens must be an array", b->what);
    size_t n = json_object_array_length(arr);
    for (size_t i = 0; i < n; i++) {
        char path[48];
        snprintf(path, sizeof(path), "added_tokens[%zu]", i);
        struct json_object *t = json_object_array_get_idx(arr, i);
        struct json_object *jid = jget(t, "id");
        if (!jid || !json_object_is_type(jid, json_type_int))
            return engine_error_set(b->err, -EINVAL,
                                    "%s: %s.id must be an integer", b->what,
                                    path);
        int r = added_token_add(b, json_object_get_int64(jid),
                                jstr(t, "content"), t, path);
        if (r < 0)
            return r;
    }
    return 0;
}

/* "normalizer": null | NFC | Sequence of NFC */
static int parse_normalizer(struct builder *b, struct json_object *n)
{
    if (!n)
        return 0;
    const char *type = jstr(n, "type");
    if (type && strcmp(type, "NFC") == 0) {
        b->tok->nfc = true;
        return 0;
    }
    if (type && strcmp(type, "Sequence") == 0) {
        struct json_object *list = jget(n, "normalizers");
        if (list && json_object_is_type(list, json_type_array)) {
            size_t k = json_object_array_length(list);
            for (size_t i = 0; i < k; i++) {
                int r = parse_normalizer(b, json_object_array_get_idx(list,
                                                                      i));
                if (r < 0)
                    return r;
            }
            return 0;
        }
    }
    return engine_error_set(b->err, -ENOTSUP,
                            "%s: normalizer type \"%s\" is not supported "
                            "(only NFC is implemented; this is not a Qwen "
                            "byte-level tokenizer)", b->what,
                            type ? type : "?");
}

static int parse_bytelevel(struct builder *b, struct json_object *p,
                           bool *use_regex)
{
    bool aps;
    if (jbool(p, "add_prefix_space", false, &aps, b->what, "pre_tokenizer",
              b->err) < 0 ||
        jbool(p, "use_regex", true, use_regex, b->what, "pre_tokenizer",
              b->err) < 0)
        return -EINVAL;
    if (aps)
        return engine_error_set(b->err, -ENOTSUP,
                                "%s: ByteLevel add_prefix_space=true is not "
                                "supported", b->what);
    return 0;
}

static int parse_pretokenizer(struct builder *b, struct json_object *p)
{
    const char *type = jstr(p, "type");
    bool use_regex;
    b->have_pretok = true;
    if (type && strcmp(type, "ByteLevel") == 0) {
        if (parse_bytelevel(b, p, &use_regex) < 0)
            return -EINVAL;
        if (use_regex)
            b->pattern = strdup(tok_pat_gpt2);
        else
            b->split_none = true;
        return use_regex && !b->pattern
                   ? engine_error_set(b->err, -ENOMEM, "out of memory") : 0;
    }
    struct json_object *list = jget(p, "pretokenizers");
    if (type && strcmp(type, "Sequence") == 0 && list &&
        json_object_is_type(list, json_type_array) &&
        json_object_array_length(list) == 2) {
        struct json_object *split = json_object_array_get_idx(list, 0);
        struct json_object *bl = json_object_array_get_idx(list, 1);
        const char *st = jstr(split, "type"), *bt = jstr(bl, "type");
        struct json_object *pat = jget(split, "pattern");
        const char *re = jstr(pat, "Regex");
        const char *behavior = jstr(split, "behavior");
        bool invert;
        if (st && bt && strcmp(st, "Split") == 0 &&
            strcmp(bt, "ByteLevel") == 0 && re && behavior &&
            strcmp(behavior, "Isolated") == 0 &&
            jbool(split, "invert", false, &invert, b->what,
                  "pre_tokenizer.pretokenizers[0]", b->err) == 0 &&
            !invert && parse_bytelevel(b, bl, &use_regex) == 0 &&
            !use_regex) {
            b->pattern = strdup(re);
            return b->pattern ? 0 : engine_error_set(b->err, -ENOMEM,
                                                     "out of memory");
        }
    }
    return engine_error_set(b->err, -ENOTSUP,
                            "%s: pre_tokenizer is not one of the supported "
                            "forms: ByteLevel, or Sequence[Split(Regex, "
                            "Isolated, invert=false), ByteLevel(use_regex="
                            "false)]", b->what);
}

static int check_component(struct builder *b, struct json_object *o,
                           const char *field)
{
    if (!o)
        return 0;
    const char *type = jstr(o, "type");
    if (type && strcmp(type, "ByteLevel") == 0)
        return 0;
    return engine_error_set(b->err, -ENOTSUP,
                            "%s: %s type \"%s\" is not supported (only "
                            "ByteLevel)", b->what, field, type ? type : "?");
}

/* tokenizer.json "model": type BPE, vocab, merges, flags */
static int parse_model(struct builder *b, struct tokjson *js,
                       const char **merges_span, size_t *merges_len)
{
    const char *key;
    size_t klen;
    int r;
    bool saw_vocab = false;
    if (tokjson_object_begin(js) < 0)
        return -EINVAL;
    while ((r = tokjson_object_next(js, &key, &klen)) == 1) {
        if (strcmp(key, "vocab") == 0) {
            saw_vocab = true;
            if (tokjson_object_begin(js) < 0)
                return -EINVAL;
            while ((r = tokjson_object_next(js, &key, &klen)) == 1) {
                int64_t id;
                /* key lives in the scratch buffer until the next string;
                 * the id is a number, so it is still valid after. */
                const char *k = key;
                size_t kl = klen;
                if (tokjson_int(js, &id) < 0)
                    return -EINVAL;
                if ((r = vocab_add(b, k, kl, id)) < 0)
                    return r;
            }
            if (r < 0)
                return r;
        } else if (strcmp(key, "merges") == 0) {
            if (tokjson_skip(js, merges_span, merges_len) < 0)
                return -EINVAL;
        } else if (strcmp(key, "type") == 0) {
            const char *s;
            size_t n;
            if (tokjson_string(js, &s, &n) < 0)
                return -EINVAL;
            if (strcmp(s, "BPE") != 0)
                return engine_error_set(b->err, -ENOTSUP,
                                        "%s: model.type \"%.32s\" is not "
                                        "supported (only BPE)", b->what, s);
        } else if (strcmp(key, "ignore_merges") == 0) {
            if (tokjson_bool(js, &b->tok->ignore_merges) < 0)
                return -EINVAL;
        } else if (strcmp(key, "byte_fallback") == 0 ||
                   strcmp(key, "fuse_unk") == 0) {
            bool v;
            if (tokjson_bool(js, &v) < 0)
                return -EINVAL;
            if (v && key[0] == 'b')
                return engine_error_set(b->err, -ENOTSUP,
                                        "%s: model.byte_fallback=true is "
                                        "not supported", b->what);
        } else if (strcmp(key, "dropout") == 0 ||
                   strcmp(key, "continuing_subword_prefix") == 0 ||
                   strcmp(key, "end_of_word_suffix") == 0) {
            char field[32];
            snprintf(field, sizeof(field), "%s", key);
            if (tokjson_peek_null(js)) {
                if (tokjson_skip(js, NULL, NULL) < 0)
                    return -EINVAL;
                continue;
            }
            const char *s = NULL;
            size_t n = 1;
            if (tokjson_peek_string(js)) {
                if (tokjson_string(js, &s, &n) < 0)
                    return -EINVAL;
            } else if (tokjson_skip(js, NULL, NULL) < 0) {
                return -EINVAL;
            }
            if (n != 0)
                return engine_error_set(b->err, -ENOTSUP,
                                        "%s: model.%s must be null or empty "
                                        "for a byte-level BPE", b->what,
                                        field);
        } else if (tokjson_skip(js, NULL, NULL) < 0) {
            return -EINVAL;
        }
    }
    if (r < 0)
        return r;
    if (!saw_vocab)
        return engine_error_set(b->err, -EINVAL, "%s: model.vocab missing",
                                b->what);
    return 0;
}

/* merges: ["a b", ...] or [["a","b"], ...] */
static int parse_merges_json(struct builder *b, const char *span, size_t len)
{
    struct tokjson js;
    tokjson_init(&js, span, len, b->what, b->err);
    int r = tokjson_array_begin(&js);
    char *left = NULL;
    size_t left_cap = 0;
    while (r == 0 && (r = tokjson_array_next(&js)) == 1) {
        const char *s;
        size_t n;
        r = 0;
        if (tokjson_peek_array(&js)) {
            if ((r = tokjson_array_begin(&js)) < 0 ||
                (r = tokjson_array_next(&js)) != 1 ||
                (r = tokjson_string(&js, &s, &n)) < 0)
                break;
            if ((r = grow((void **)&left, &left_cap, n + 1, 1, b->err)) < 0)
                break;
            memcpy(left, s, n);
            size_t ln = n;
            if ((r = tokjson_array_next(&js)) != 1 ||
                (r = tokjson_string(&js, &s, &n)) < 0 ||
                (r = tokjson_array_next(&js)) != 0) {
                r = tokjson_fail(&js, "a merge pair must be two strings");
                break;
            }
            r = merge_add(b, left, ln, s, n);
        } else {
            if ((r = tokjson_string(&js, &s, &n)) < 0)
                break;
            const char *sp = memchr(s, ' ', n);
            if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) {
                r = engine_error_set(b->err, -EINVAL,
                                     "%s: merge %zu \"%.64s\" is not two "
                                     "tokens separated by one space",
                                     b->what, b->n_merges + 1, s);
                break;
            }
            r = merge_add(b, s, (size_t)(sp - s), sp + 1,
                          n - (size_t)(sp + 1 - s));
        }
    }
    free(left);
    tokjson_fini(&js);
    return r < 0 ? r : 0;
}

static int load_tokenizer_json(struct builder *b, const char *text,
                               size_t len)
{
    struct tokjson js;
    const char *key;
    size_t klen;
    const char *merges = NULL, *added = NULL, *norm = NULL, *pre = NULL,
               *dec = NULL, *post = NULL;
    size_t merges_len = 0, added_len = 0, norm_len = 0, pre_len = 0,
           dec_len = 0, post_len = 0;
    bool saw_model = false;
    int r;
    tokjson_init(&js, text, len, b->what, b->err);
    r = tokjson_object_begin(&js);
    while (r == 0 && (r = tokjson_object_next(&js, &key, &klen)) == 1) {
        r = 0;
        if (strcmp(key, "model") == 0) {
            saw_model = true;
            r = parse_model(b, &js, &merges, &merges_len);
        } else if (strcmp(key, "added_tokens") == 0) {
            r = tokjson_skip(&js, &added, &added_len);
        } else if (strcmp(key, "normalizer") == 0) {
            r = tokjson_skip(&js, &norm, &norm_len);
        } else if (strcmp(key, "pre_tokenizer") == 0) {
            r = tokjson_skip(&js, &pre, &pre_len);
        } else if (strcmp(key, "decoder") == 0) {
            r = tokjson_skip(&js, &dec, &dec_len);
        } else if (strcmp(key, "post_processor") == 0) {
            r = tokjson_skip(&js, &post, &post_len);
        } else {
            r = tokjson_skip(&js, NULL, NULL);
        }
    }
    if (r == 0)
        r = tokjson_end(&js);
    tokjson_fini(&js);
    if (r < 0)
        return r;
    if (!saw_model)
        return engine_error_set(b->err, -EINVAL, "%s: no \"model\" object",
                                b->what);
    if ((r = vocab_index(b)) < 0)
        return r;
    if (merges && (r = parse_merges_json(b, merges, merges_len)) < 0)
        return r;

    struct {
        const char *span;
        size_t len;
        const char *name;
        struct json_object *obj;
    } parts[] = {
        { added, added_len, "added_tokens", NULL },
        { norm, norm_len, "normalizer", NULL },
        { pre, pre_len, "pre_tokenizer", NULL },
        { dec, dec_len, "decoder", NULL },
        { post, post_len, "post_processor", NULL },
    };
    const size_t n_parts = sizeof(parts) / sizeof(parts[0]);
    for (size_t i = 0; i < n_parts && r == 0; i++) {
        if (!parts[i].span ||
            (parts[i].len == 4 && memcmp(parts[i].span, "null", 4) == 0))
            continue;   /* absent; json-c would wait for more after "null" */
        if (parts[i].span[0] != '{' && parts[i].span[0] != '[')
            r = engine_error_set(b->err, -EINVAL, "%s: \"%s\" must be an "
                                 "object, an array or null", b->what,
                                 parts[i].name);
        else
            r = parse_small_json(parts[i].span, parts[i].len, b->what,
                                 &parts[i].obj, b->err);
    }
    if (r == 0)
        r = parse_added_tokens(b, parts[0].obj);
    if (r == 0)
        r = parse_normalizer(b, parts[1].obj);
    if (r == 0) {
        if (!parts[2].obj)
            r = engine_error_set(b->err, -ENOTSUP,
                                 "%s: no pre_tokenizer: not a byte-level "
                                 "tokenizer", b->what);
        else
            r = parse_pretokenizer(b, parts[2].obj);
    }
    if (r == 0) {
        if (!parts[3].obj)
            r = engine_error_set(b->err, -ENOTSUP,
                                 "%s: no decoder: only ByteLevel is "
                                 "supported", b->what);
        else
            r = check_component(b, parts[3].obj, "decoder");
    }
    if (r == 0)
        r = check_component(b, parts[4].obj, "post_processor");
    for (size_t i = 0; i < n_parts; i++)
        json_object_put(parts[i].obj);
    return r;
}

static int load_vocab_merges(struct builder *b, int dirfd, const char *dir)
{
    char *text = NULL;
    size_t len;
    int r;
    const char *key;
    size_t klen;

    b->what = "vocab.json";
    if ((r = read_file_at(dirfd, dir, "vocab.json", &text, &len, b->err)) < 0)
        return r;
    struct tokjson js;
    tokjson_init(&js, text, len, b->what, b->err);
    r = tokjson_object_begin(&js);
    while (r == 0 && (r = tokjson_object_next(&js, &key, &klen)) == 1) {
        int64_t id;
        const char *k = key;
        if ((r = tokjson_int(&js, &id)) == 0)
            r = vocab_add(b, k, klen, id);
    }
    if (r == 0)
        r = tokjson_end(&js);
    tokjson_fini(&js);
    free(text);
    if (r < 0)
        return r;
    if ((r = vocab_index(b)) < 0)
        return r;

    b->what = "merges.txt";
    if ((r = read_file_at(dirfd, dir, "merges.txt", &text, &len, b->err)) < 0)
        return r;
    size_t line_no = 0;
    for (size_t i = 0; i < len && r == 0;) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        i += ll + (nl ? 1 : 0);
        line_no++;
        if (ll && line[ll - 1] == '\r')
            ll--;
        if (ll == 0 || (ll >= 8 && memcmp(line, "#version", 8) == 0))
            continue;
        const char *sp = memchr(line, ' ', ll);
        if (!sp || memchr(sp + 1, ' ', ll - (size_t)(sp + 1 - line)) ||
            sp == line || sp + 1 == line + ll) {
            r = engine_error_set(b->err, -EINVAL,
                                 "%s/merges.txt: line %zu is not two tokens "
                                 "separated by one space", dir, line_no);
            break;
        }
        r = merge_add(b, line, (size_t)(sp - line), sp + 1,
                      ll - (size_t)(sp + 1 - line));
    }
    free(text);
    if (r < 0)
        return r;

    /* Added tokens and the split regex from tokenizer_config.json (absent:
     * none, and the Qwen2 regex, which is what Qwen2Tokenizer hard-codes). */
    b->what = "tokenizer_config.json";
    b->tok->nfc = true;
    struct json_object *cfg = NULL;
    r = read_file_at(dirfd, dir, "tokenizer_config.json", &text, &len,
                     b->err);
    if (r == -ENOENT) {
        engine_error_clear(b->err);
        r = 0;
        text = NULL;
    } else if (r < 0) {
        return r;
    }
    if (text) {
        r = parse_small_json(text, len, b->what, &cfg, b->err);
        free(text);
        if (r < 0)
            return r;
    }
    struct json_object *dec = jget(cfg, "added_tokens_decoder");
    if (dec && !json_object_is_type(dec, json_type_object))
        r = engine_error_set(b->err, -EINVAL,
                             "%s: added_tokens_decoder must be an object",
                             b->what);
    if (dec && r == 0) {
        json_object_object_foreach(dec, k, v) {
            char *end;
            errno = 0;
            long long id = strtoll(k, &end, 10);
            char path[64];
            snprintf(path, sizeof(path), "added_tokens_decoder[\"%.20s\"]",
                     k);
            if (errno || end == k || *end) {
                r = engine_error_set(b->err, -EINVAL,
                                     "%s: %s: key is not an id", b->what,
                                     path);
                break;
            }
            if ((r = added_token_add(b, id, jstr(v, "content"), v, path)) < 0)
                break;
        }
    }
    const char *re = jstr(cfg, "pretokenize_regex");
    if (r == 0) {
        b->pattern = strdup(re ? re : tok_pat_qwen2);
        if (!b->pattern)
            r = engine_error_set(b->err, -ENOMEM, "out of memory");
    }
    json_object_put(cfg);
    return r;
}

/* ------------------------------------------------------------------ */
/* added-token matchers                                                 */

/* Normalized added tokens match the NFC form of their content. */
static int added_normalize(struct builder *b)
{
    struct tokenizer *tok = b->tok;
    if (!tok->nfc)
        return 0;
    for (size_t i = 0; i < tok->n_added; i++) {
        struct tok_added *a = &tok->added[i];
        if (!a->normalized)
            continue;
        utf8proc_uint8_t *nf = NULL;
        utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)a->content,
                                          (utf8proc_ssize_t)a->len, &nf,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (n <= 0) {
            free(nf);
            return engine_error_set(b->err, -EINVAL,
                                    "%s: added token id %d is not valid "
                                    "UTF-8 or normalises to nothing",
                                    b->what, a->id);
        }
        free(a->content);
        a->content = (char *)nf;
        a->len = (size_t)n;
    }
    return 0;
}

/* ------------------------------------------------------------------ */

/* The parts of a tokenizer that are rebuilt on every load, from the tables
 * (also after reading them from the binary cache). */
int tok_finish_runtime(struct tokenizer *tok, const char *what,
                       struct engine_error *err)
{
    int r;
    if ((r = tok_matcher_build(tok, &tok->match_raw, false, err)) < 0 ||
        (r = tok_matcher_build(tok, &tok->match_norm, true, err)) < 0 ||
        (r = tok_split_compile(tok, what, err)) < 0)
        return r;
    tok->cache = calloc(TOK_CACHE_SHARDS, sizeof(*tok->cache));
    if (!tok->cache)
        return engine_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < TOK_CACHE_SHARDS; i++)
        pthread_mutex_init(&tok->cache[i].lock, NULL);
    return 0;
}

static int finish(struct builder *b)
{
    struct tokenizer *tok = b->tok;
    int r;
    tok->pattern = b->split_none ? NULL : b->pattern;
    if (!b->split_none)
        b->pattern = NULL;
    if (!tok->pattern && !b->split_none)
        return engine_error_set(b->err, -EINVAL, "%s: no split regex",
                                b->what);
    for (int c = 0; c < 256; c++) {
        char byte = (char)c;
        tok->byte_id[c] = tok_vocab_find(tok, &byte, 1);
        if (tok->byte_id[c] < 0)
            return engine_error_set(b->err, -EINVAL,
                                    "%s: the vocabulary has no token for "
                                    "byte 0x%02x (U+%04X): not a byte-level "
                                    "BPE vocabulary", b->what, c,
                                    tok_byte_to_cp[c]);
    }
    if ((r = merges_index(b)) < 0 || (r = added_normalize(b)) < 0)
        return r;
    return tok_finish_runtime(tok, b->what, b->err);
}

/* Identity of the source files for the binary cache: which files exist,
 * and each one's device, inode, size and modification time. Content is not
 * hashed (that would cost as much as parsing); replacing a file through
 * any normal means changes its inode or mtime. */
static uint64_t source_fingerprint(int dirfd)
{
    static const char *names[] = { "tokenizer.json", "vocab.json",
                                   "merges.txt", "tokenizer_config.json" };
    uint64_t acc[4 * 5];
    memset(acc, 0, sizeof(acc));
    for (size_t i = 0; i < 4; i++) {
        struct stat st;
        if (fstatat(dirfd, names[i], &st, 0) != 0)
            continue;
        acc[i * 5 + 0] = (uint64_t)st.st_dev;
        acc[i * 5 + 1] = (uint64_t)st.st_ino;
        acc[i * 5 + 2] = (uint64_t)st.st_size;
        acc[i * 5 + 3] = (uint64_t)st.st_mtim.tv_sec;
        acc[i * 5 + 4] = (uint64_t)st.st_mtim.tv_nsec | 1;
    }
    return tok_hash_bytes(acc, sizeof(acc));
}

int tokenizer_load_ex(const char *model_dir,
                      const struct tokenizer_load_params *params,
                      struct tokenizer **out, struct engine_error *err)
{
    *out = NULL;
    int dirfd = open(model_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s: cannot open model directory: "
                                "%s", model_dir, strerror(e));
    }
    if (params && params->source)
        *params->source = TOKENIZER_SOURCE_FILES;
    if (params && params->image_error)
        engine_error_clear(params->image_error);
    /* The identity is taken before anything is read: a file replaced
     * while we parse makes the cache stale (rebuilt), never wrong. */
    uint64_t fp = source_fingerprint(dirfd);
    if (params && params->cache_image) {
        struct engine_error ierr = { 0 };
        int ir = tok_cache_parse(params->cache_image, params->cache_image_len, fp,
                                 "tokenizer cache image", out, &ierr);
        if (ir == 0) {
            close(dirfd);
            if (params->source)
                *params->source = TOKENIZER_SOURCE_IMAGE;
            return 0;
        }
        if (ir == -ENOENT) {    /* the parser's "stale cache": say which identity */
            engine_error_clear(&ierr);
            engine_error_set(&ierr, -ESTALE, "tokenizer cache image was built from other tokenizer "
                             "files (identity %016llx, now %016llx differs); it will be rebuilt",
                             (unsigned long long)tok_cache_image_fingerprint(params->cache_image,
                                                                             params->cache_image_len),
                             (unsigned long long)fp);
        }
        if (params->image_error)
            *params->image_error = ierr;
    }
    char cache_path[4096];
    const char *cache_dir = params ? params->cache_dir : NULL;
    if (cache_dir) {
        int n = snprintf(cache_path, sizeof(cache_path),
                         "%s/tokenizer-%016llx.bin", cache_dir,
                         (unsigned long long)fp);
        if (n < 0 || (size_t)n >= sizeof(cache_path))
            cache_dir = NULL;
    }
    if (cache_dir) {
        struct engine_error cerr = { 0 };
        if (tok_cache_read(cache_path, fp, out, &cerr) == 0) {
            close(dirfd);
            if (params->source)
                *params->source = TOKENIZER_SOURCE_CACHE_FILE;
            return 0;
        }
    }
    struct tokenizer *tok = calloc(1, sizeof(*tok));
    if (!tok) {
        close(dirfd);
        return engine_error_set(err, -ENOMEM, "out of memory");
    }
    struct builder b = { .tok = tok, .err = err, .what = "tokenizer.json" };
    char *text = NULL;
    size_t len = 0;
    int r = read_file_at(dirfd, model_dir, "tokenizer.json", &text, &len, err);
    if (r == 0) {
        r = load_tokenizer_json(&b, text, len);
        free(text);
    } else if (r == -ENOENT) {
        engine_error_clear(err);
        r = load_vocab_merges(&b, dirfd, model_dir);
    }
    close(dirfd);
    if (r == 0)
        r = finish(&b);
    free(b.merges);
    free(b.pattern);
    if (r < 0) {
        tokenizer_free(tok);
        return r;
    }
    tok->source_fp = fp;
    if (cache_dir) {
        /* A cache that cannot be written only costs the next load time. */
        struct engine_error cerr = { 0 };
        (void)tok_cache_write(cache_path, fp, tok, &cerr);
    }
    *out = tok;
    return 0;
}

int tokenizer_cache_image(const struct tokenizer *tok, void **image, size_t *len,
                          struct engine_error *err)
{
    *image = NULL;
    *len = 0;
    if (!tok->source_fp)
        return engine_error_set(err, -EINVAL, "tokenizer cache image: the tokenizer was not loaded "
                                "from a model directory, so no source identity binds it");
    char *p = NULL;
    int r = tok_cache_serialize(tok->source_fp, tok, &p, len, err);
    if (r == 0)
        *image = p;
    return r;
}

int tokenizer_load(const char *model_dir, struct tokenizer **out,
                   struct engine_error *err)
{
    return tokenizer_load_ex(model_dir, NULL, out, err);
}

int tok_load_json_buffer(const char *text, size_t len, struct tokenizer **out,
                         struct engine_error *err)
{
    *out = NULL;
    struct tokenizer *tok = calloc(1, sizeof(*tok));
    if (!tok)
        return engine_error_set(err, -ENOMEM, "out of memory");
    struct builder b = { .tok = tok, .err = err, .what = "tokenizer.json" };
    int r = load_tokenizer_json(&b, text, len);
    if (r == 0)
        r = finish(&b);
    free(b.merges);
    free(b.pattern);
    if (r < 0) {
        tokenizer_free(tok);
        return r;
    }
    *out = tok;
    return 0;
}

void tokenizer_free(struct tokenizer *tok)
{
    if (!tok)
        return;
    if (tok->cache) {
        for (size_t i = 0; i < TOK_CACHE_SHARDS; i++)
            pthread_mutex_destroy(&tok->cache[i].lock);
        free(tok->cache);
    }
    pcre2_code_free(tok->split_re);
    pcre2_code_free(tok->split_fast);
    free(tok->pattern);
    free(tok->match_raw.cand);
    free(tok->match_norm.cand);
    for (size_t i = 0; i < tok->n_added; i++)
        free(tok->added[i].content);
    free(tok->added);
    free(tok->merge_slots);
    free(tok->vocab_slots);
    free(tok->blob);
    free(tok->entries);
    free(tok);
}

