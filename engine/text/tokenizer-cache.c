/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Binary cache of a loaded tokenizer's tables, so that a daemon restart does
 * not re-parse a 20 MB tokenizer.json (measured in docs/performance.md).
 *
 * Layout (host byte order; the header records it and refuses another):
 *
 *   struct cache_hdr            magic, format version, source fingerprint,
 *                               counts, payload length and hash
 *   int32   byte_id[256]
 *   struct  tok_entry[n_ids]
 *   char    blob[blob_len]                      (padded to 8)
 *   uint64  vocab_slots[vocab_cap]
 *   struct  tok_merge_slot[merge_cap]
 *   struct  cache_added[n_added]
 *   char    added text, then the split pattern  (padded to 8)
 *
 * The cache is input like any other file: it could be stale, truncated or
 * written by someone else. Reading checks the payload hash, every count
 * against the file length with overflow-checked arithmetic, every id and
 * offset against its table, and that both hash tables keep at least one
 * empty slot (a full table would make a lookup of an absent key spin
 * forever). A table that passes these checks can at worst give wrong ids,
 * never read outside memory; the hash guards against accidents.
 */
#include "engine/text/tokenizer-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CACHE_MAGIC   "RSDTOK\r\n"
#define CACHE_VERSION 1u
#define CACHE_ENDIAN  0x01020304u

struct cache_hdr {
    char     magic[8];
    uint32_t version;
    uint32_t endian;
    uint64_t fingerprint;
    uint64_t payload_len;
    uint64_t payload_hash;
    uint64_t n_ids;
    uint64_t blob_len;
    uint64_t max_token_bytes;
    uint64_t vocab_cap;
    uint64_t merge_cap;
    uint64_t n_merges;
    uint64_t n_added;
    uint64_t added_text_len;
    uint64_t pattern_len;       /* UINT64_MAX: no split regex             */
    uint32_t flags;             /* 1 nfc, 2 ignore_merges                 */
    uint32_t sizes;             /* sizeof entry | merge slot << 8 | added << 16 */
};

struct cache_added {
    int32_t  id;
    uint32_t len;
    uint32_t flags;             /* 1 single_word 2 lstrip 4 rstrip 8 normalized 16 special */
    uint32_t pad;
};

#define STRUCT_SIZES ((uint32_t)sizeof(struct tok_entry) |                 \
                      (uint32_t)sizeof(struct tok_merge_slot) << 8 |       \
                      (uint32_t)sizeof(struct cache_added) << 16)

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* ---- writing ---- */

struct wbuf {
    char  *p;
    size_t n, cap;
    bool   oom;
};

static void put(struct wbuf *w, const void *data, size_t n)
{
    if (w->oom)
        return;
    if (w->n + n + 8 > w->cap) {
        size_t cap = w->cap ? w->cap : 1 << 20;
        while (cap < w->n + n + 8)
            cap *= 2;
        char *q = realloc(w->p, cap);
        if (!q) {
            w->oom = true;
            return;
        }
        w->p = q;
        w->cap = cap;
    }
    memcpy(w->p + w->n, data, n);
    w->n += n;
}

static void put_pad(struct wbuf *w)
{
    static const char zero[8];
    put(w, zero, pad8(w->n) - w->n);
}

int tok_cache_serialize(uint64_t fingerprint, const struct tokenizer *tok,
                        char **out, size_t *out_len, struct engine_error *err)
{
    struct wbuf w = { 0 };
    struct cache_hdr h;
    memset(&h, 0, sizeof(h));
    put(&w, &h, sizeof(h));     /* placeholder, rewritten below */
    size_t start = w.n;
    put(&w, tok->byte_id, sizeof(tok->byte_id));
    put(&w, tok->entries, tok->n_ids * sizeof(*tok->entries));
    put(&w, tok->blob, tok->blob_len);
    put_pad(&w);
    put(&w, tok->vocab_slots, (tok->vocab_mask + 1) * sizeof(uint64_t));
    put(&w, tok->merge_slots,
        (tok->merge_mask + 1) * sizeof(*tok->merge_slots));
    size_t text_len = 0;
    for (size_t i = 0; i < tok->n_added; i++) {
        const struct tok_added *a = &tok->added[i];
        struct cache_added ca = {
            .id = a->id, .len = (uint32_t)a->len,
            .flags = (a->single_word ? 1u : 0) | (a->lstrip ? 2u : 0) |
                     (a->rstrip ? 4u : 0) | (a->normalized ? 8u : 0) |
                     (a->special ? 16u : 0),
        };
        put(&w, &ca, sizeof(ca));
        text_len += a->len;
    }
    for (size_t i = 0; i < tok->n_added; i++)
        put(&w, tok->added[i].content, tok->added[i].len);
    size_t pat_len = tok->pattern ? strlen(tok->pattern) : 0;
    if (tok->pattern)
        put(&w, tok->pattern, pat_len);
    put_pad(&w);
    if (w.oom) {
        free(w.p);
        return engine_error_set(err, -ENOMEM, "tokenizer cache: out of "
                                "memory");
    }
    memcpy(h.magic, CACHE_MAGIC, 8);
    h.version = CACHE_VERSION;
    h.endian = CACHE_ENDIAN;
    h.fingerprint = fingerprint;
    h.payload_len = w.n - start;
    h.payload_hash = tok_hash_bytes(w.p + start, w.n - start);
    h.n_ids = tok->n_ids;
    h.blob_len = tok->blob_len;
    h.max_token_bytes = tok->max_token_bytes;
    h.vocab_cap = tok->vocab_mask + 1;
    h.merge_cap = tok->merge_mask + 1;
    h.n_merges = tok->n_merges;
    h.n_added = tok->n_added;
    h.added_text_len = text_len;
    h.pattern_len = tok->pattern ? pat_len : UINT64_MAX;
    h.flags = (tok->nfc ? 1u : 0) | (tok->ignore_merges ? 2u : 0);
    h.sizes = STRUCT_SIZES;
    memcpy(w.p, &h, sizeof(h));
    *out = w.p;
    *out_len = w.n;
    return 0;
}

int tok_cache_write(const char *path, uint64_t fingerprint,
                    const struct tokenizer *tok, struct engine_error *err)
{
    struct wbuf w = { 0 };
    int rc = tok_cache_serialize(fingerprint, tok, &w.p, &w.n, err);
    if (rc < 0)
        return rc;

    char tmp[4200];
    int n = snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        free(w.p);
        return engine_error_set(err, -ENAMETOOLONG, "%s: path too long",
                                path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(w.p);
        return engine_error_set(err, -e, "%s: cannot create: %s", tmp,
                                strerror(e));
    }
    size_t done = 0;
    while (done < w.n) {
        ssize_t r = write(fd, w.p + done, w.n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    free(w.p);
    if (done != w.n || fsync(fd) != 0 || close(fd) != 0 ||
        rename(tmp, path) != 0) {
        int e = errno ? errno : EIO;
        unlink(tmp);
        return engine_error_set(err, -e, "%s: cannot write the tokenizer "
                                "cache: %s", path, strerror(e));
    }
    return 0;
}

/* ---- reading ---- */

struct rbuf {
    const char *p;
    size_t      n, at;
    bool        bad;
};

/* Next `count * size` bytes, or NULL (and bad) when they are not there. */
static const void *take(struct rbuf *r, uint64_t count, size_t size)
{
    if (r->bad || (size && count > (uint64_t)SIZE_MAX / size) ||
        count * size > r->n - r->at) {
        r->bad = true;
        return NULL;
    }
    const void *q = r->p + r->at;
    r->at += (size_t)(count * size);
    return q;
}

static void skip_pad(struct rbuf *r)
{
    size_t to = pad8(r->at);
    if (to > r->n)
        r->bad = true;
    else
        r->at = to;
}

static bool pow2(uint64_t x)
{
    return x >= 2 && (x & (x - 1)) == 0;
}

static int bad(struct engine_error *err, const char *path, const char *why)
{
    return engine_error_set(err, -EINVAL, "%s: tokenizer cache is invalid "
                            "(%s); it will be rebuilt", path, why);
}

static int validate(const struct tokenizer *tok, const char *path,
                    struct engine_error *err)
{
    for (size_t i = 0; i < tok->n_ids; i++) {
        const struct tok_entry *e = &tok->entries[i];
        if ((e->flags & TOK_F_PRESENT) &&
            ((uint64_t)e->off + e->len > tok->blob_len ||
             e->len > tok->max_token_bytes))
            return bad(err, path, "token outside the text");
    }
    for (int c = 0; c < 256; c++)
        if (tok->byte_id[c] < 0 || (size_t)tok->byte_id[c] >= tok->n_ids ||
            !(tok->entries[tok->byte_id[c]].flags & TOK_F_PRESENT))
            return bad(err, path, "byte token id");
    bool empty = false;
    for (size_t i = 0; i <= tok->vocab_mask; i++) {
        uint64_t v = tok->vocab_slots[i];
        uint32_t id1 = (uint32_t)v;
        if (v == 0) {
            empty = true;
            continue;
        }
        if (id1 == 0 || id1 > tok->n_ids ||
            !(tok->entries[id1 - 1].flags & TOK_F_PRESENT))
            return bad(err, path, "vocabulary slot");
    }
    if (!empty)
        return bad(err, path, "full vocabulary table");
    empty = false;
    for (size_t i = 0; i <= tok->merge_mask; i++) {
        const struct tok_merge_slot *s = &tok->merge_slots[i];
        if (s->key == UINT64_MAX) {
            empty = true;
            continue;
        }
        if ((s->key >> 32) >= tok->n_ids ||
            (s->key & 0xffffffffu) >= tok->n_ids || s->merged < 0 ||
            (size_t)s->merged >= tok->n_ids ||
            !(tok->entries[s->merged].flags & TOK_F_PRESENT))
            return bad(err, path, "merge slot");
    }
    if (!empty)
        return bad(err, path, "full merge table");
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id < 0 || (size_t)tok->added[i].id >= tok->n_ids ||
            tok->added[i].len == 0 ||
            !(tok->entries[tok->added[i].id].flags & TOK_F_PRESENT))
            return bad(err, path, "added token");
    return 0;
}

int tok_cache_read(const char *path, uint64_t fingerprint,
                   struct tokenizer **out, struct engine_error *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return engine_error_set(err, -ENOENT, "%s: no tokenizer cache",
                                path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size > TOK_MAX_FILE_BYTES ||
        (size_t)st.st_size < sizeof(struct cache_hdr)) {
        close(fd);
        return bad(err, path, "size");
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = malloc(n);
    if (!buf) {
        close(fd);
        return engine_error_set(err, -ENOMEM, "out of memory");
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return bad(err, path, "short read");
    }
    int rc = tok_cache_parse(buf, n, fingerprint, path, out, err);
    free(buf);
    return rc;
}

uint64_t tok_cache_image_fingerprint(const void *data, size_t n)
{
    struct cache_hdr h;
    if (!data || n < sizeof(h))
        return 0;
    memcpy(&h, data, sizeof(h));
    return h.fingerprint;
}

void tok_cache_fuzz_fixup(void *data, size_t n)
{
    struct cache_hdr h;
    if (!data || n < sizeof(h))
        return;
    memcpy(&h, data, sizeof(h));
    memcpy(h.magic, CACHE_MAGIC, 8);
    h.version = CACHE_VERSION;
    h.endian = CACHE_ENDIAN;
    h.sizes = STRUCT_SIZES;
    h.payload_len = n - sizeof(h);
    h.payload_hash = tok_hash_bytes((char *)data + sizeof(h), n - sizeof(h));
    memcpy(data, &h, sizeof(h));
}

int tok_cache_parse(const char *buf, size_t n, uint64_t fingerprint,
                    const char *path, struct tokenizer **out,
                    struct engine_error *err)
{
    struct cache_hdr h;
    *out = NULL;
    if (n < sizeof(h))
        return bad(err, path, "size");
    memcpy(&h, buf, sizeof(h));
    int rc = 0;
    if (memcmp(h.magic, CACHE_MAGIC, 8) || h.version != CACHE_VERSION ||
             h.endian != CACHE_ENDIAN || h.sizes != STRUCT_SIZES)
        rc = bad(err, path, "format");
    else if (h.fingerprint != fingerprint)
        rc = engine_error_set(err, -ENOENT, "%s: stale cache", path);
    else if (h.payload_len != n - sizeof(h) ||
             tok_hash_bytes(buf + sizeof(h), n - sizeof(h)) != h.payload_hash)
        rc = bad(err, path, "checksum");
    else if (h.n_ids == 0 || h.n_ids > TOK_MAX_IDS || h.n_added > TOK_MAX_ADDED ||
             h.max_token_bytes > TOK_MAX_TOKEN_BYTES ||
             h.blob_len > UINT32_MAX || !pow2(h.vocab_cap) ||
             !pow2(h.merge_cap) || h.vocab_cap > ((uint64_t)1 << 32) ||
             h.merge_cap > ((uint64_t)1 << 32) ||
             (h.pattern_len != UINT64_MAX && h.pattern_len > 1 << 20))
        rc = bad(err, path, "counts");
    if (rc)
        return rc;

    struct rbuf r = { buf, n, sizeof(h), false };
    const int32_t *byte_id = take(&r, 256, sizeof(int32_t));
    const struct tok_entry *entries = take(&r, h.n_ids, sizeof(*entries));
    const char *blob = take(&r, h.blob_len, 1);
    skip_pad(&r);
    const uint64_t *vslots = take(&r, h.vocab_cap, sizeof(uint64_t));
    const struct tok_merge_slot *mslots =
        take(&r, h.merge_cap, sizeof(struct tok_merge_slot));
    const struct cache_added *added =
        take(&r, h.n_added, sizeof(struct cache_added));
    const char *text = take(&r, h.added_text_len, 1);
    const char *pattern = h.pattern_len == UINT64_MAX
                              ? NULL : take(&r, h.pattern_len, 1);
    skip_pad(&r);
    if (r.bad || r.at != n)
        return bad(err, path, "layout");

    struct tokenizer *tok = calloc(1, sizeof(*tok));
    if (!tok)
        return engine_error_set(err, -ENOMEM, "out of memory");
    tok->n_ids = (size_t)h.n_ids;
    tok->blob_len = (size_t)h.blob_len;
    tok->max_token_bytes = (size_t)h.max_token_bytes;
    tok->vocab_mask = (size_t)h.vocab_cap - 1;
    tok->merge_mask = (size_t)h.merge_cap - 1;
    tok->n_merges = (size_t)h.n_merges;
    tok->nfc = h.flags & 1;
    tok->ignore_merges = h.flags & 2;
    memcpy(tok->byte_id, byte_id, sizeof(tok->byte_id));
    tok->entries = malloc(tok->n_ids * sizeof(*entries));
    tok->blob = malloc(tok->blob_len + 1);
    tok->vocab_slots = malloc((size_t)h.vocab_cap * sizeof(uint64_t));
    tok->merge_slots = malloc((size_t)h.merge_cap * sizeof(*mslots));
    tok->added = calloc(h.n_added ? (size_t)h.n_added : 1,
                        sizeof(*tok->added));
    tok->pattern = pattern ? strndup(pattern, (size_t)h.pattern_len) : NULL;
    if (!tok->entries || !tok->blob || !tok->vocab_slots ||
        !tok->merge_slots || !tok->added || (pattern && !tok->pattern)) {
        tokenizer_free(tok);
        return engine_error_set(err, -ENOMEM, "out of memory");
    }
    memcpy(tok->entries, entries, tok->n_ids * sizeof(*entries));
    memcpy(tok->blob, blob, tok->blob_len);
    memcpy(tok->vocab_slots, vslots, (size_t)h.vocab_cap * sizeof(uint64_t));
    memcpy(tok->merge_slots, mslots, (size_t)h.merge_cap * sizeof(*mslots));
    size_t toff = 0;
    for (size_t i = 0; i < h.n_added; i++) {
        struct tok_added *a = &tok->added[i];
        if (added[i].len > TOK_MAX_TOKEN_BYTES ||
            added[i].len > h.added_text_len - toff) {
            rc = bad(err, path, "added token text");
            break;
        }
        a->id = added[i].id;
        a->len = added[i].len;
        a->single_word = added[i].flags & 1;
        a->lstrip = added[i].flags & 2;
        a->rstrip = added[i].flags & 4;
        a->normalized = added[i].flags & 8;
        a->special = added[i].flags & 16;
        a->content = strndup(text + toff, a->len);
        tok->n_added = i + 1;
        /* The matcher cuts the text where a token starts, so its content
         * must be whole UTF-8 characters, or a cut would split one. */
        if (!a->content || strlen(a->content) != a->len ||
            tok_utf8_check((const uint8_t *)a->content, a->len) != a->len) {
            rc = a->content ? bad(err, path, "added token text")
                            : engine_error_set(err, -ENOMEM, "out of memory");
            break;
        }
        toff += a->len;
    }
    if (rc == 0)
        rc = validate(tok, path, err);
    if (rc == 0)
        rc = tok_finish_runtime(tok, path, err);
    if (rc) {
        tokenizer_free(tok);
        return rc;
    }
    tok->source_fp = fingerprint;
    *out = tok;
    return 0;
}
