/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Encoding: text -> token ids, step for step as HF tokenizers does it for a
 * byte-level BPE (Qwen2/3/3.5/3.6), so that the ids match bit for bit.
 *
 * 1. Added tokens are cut out of the raw text first (AddedVocabulary in HF):
 *    leftmost-longest match, the search resuming after each match. A match
 *    of a single_word token touching a word character is dropped (and the
 *    search still resumes after it, as HF's find_iter does); lstrip/rstrip
 *    widen the match over adjacent White_Space.
 * 2. Each plain segment is NFC-normalised (utf8proc). A per-code-point
 *    quick check skips the normaliser for text that is NFC by construction
 *    (ASCII, CJK, kana, emoji, ...), which is most text. HF normalises with
 *    Unicode 9.0 data, so marks encoded later are kept as starters.
 * 3. Added tokens marked "normalized" are cut out of the normalised text.
 * 4. The split regex from tokenizer.json cuts pre-tokens (PCRE2 with JIT;
 *    see docs/performance.md for why not a hand-written scanner). Text the
 *    regex does not cover is kept as its own pre-token ("Isolated").
 * 5. Each pre-token's bytes run through BPE: start from one symbol per byte
 *    (the byte's token), repeatedly merge the adjacent pair with the lowest
 *    merge rank, leftmost first on ties. Short words use an O(n^2) scan over
 *    a rank array (fast for the ~5-byte words that dominate text); long
 *    words use a binary heap over a linked list, so a 1 MB run of one
 *    character stays O(n log n). Results for short words are cached.
 *
 * All state of one call lives in `struct enc`, so concurrent calls on one
 * tokenizer share nothing but the locked word cache.
 */
#include "engine/text/tokenizer-internal.h"
#include "engine/text/unicode-props.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define BPE_SMALL_MAX 96u           /* longest word for the O(n^2) path  */

struct enc {
    const struct tokenizer *tok;
    struct engine_error    *err;
    bool                    match_added;
    int32_t                *out;
    size_t                  n_out, cap_out;
    pcre2_match_data       *md;
    pcre2_match_context    *mctx;
    pcre2_jit_stack        *jstack;
    /* BPE scratch, grown on demand */
    int32_t                *sym, *mrg;
    uint32_t               *rank;
    int32_t                *prv, *nxt;
    struct heap_ent {
        uint32_t rank, pos;
    }                      *heap;
    size_t                  scratch_cap;
    /* tok_split_for_test() only */
    int                   (*hook_fn)(void *ctx, const char *w, size_t n);
    void                   *hook_ctx;
};

typedef int (*segment_fn)(struct enc *e, const uint8_t *s, size_t n);

static int push(struct enc *e, int32_t id)
{
    if (e->n_out == e->cap_out) {
        size_t cap = e->cap_out ? e->cap_out * 2 : 256;
        int32_t *n = realloc(e->out, cap * sizeof(*n));
        if (!n)
            return engine_error_set(e->err, -ENOMEM,
                                    "tokenizer: out of memory for %zu ids",
                                    cap);
        e->out = n;
        e->cap_out = cap;
    }
    e->out[e->n_out++] = id;
    return 0;
}

/* ------------------------------------------------------------------ */
/* BPE                                                                  */

static inline bool merge_find(const struct tokenizer *tok, int32_t l,
                              int32_t r, uint32_t *rank, int32_t *merged)
{
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    size_t h = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & tok->merge_mask;
    for (;;) {
        const struct tok_merge_slot *s = &tok->merge_slots[h];
        if (s->key == key) {
            *rank = s->rank;
            *merged = s->merged;
            return true;
        }
        if (s->key == UINT64_MAX)
            return false;
        h = (h + 1) & tok->merge_mask;
    }
}

static int scratch_reserve(struct enc *e, size_t n)
{
    if (n <= e->scratch_cap)
        return 0;
    size_t cap = e->scratch_cap ? e->scratch_cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *sym = realloc(e->sym, cap * sizeof(*sym));
    if (sym)
        e->sym = sym;
    int32_t *mrg = realloc(e->mrg, cap * sizeof(*mrg));
    if (mrg)
        e->mrg = mrg;
    uint32_t *rank = realloc(e->rank, cap * sizeof(*rank));
    if (rank)
        e->rank = rank;
    int32_t *prv = realloc(e->prv, cap * sizeof(*prv));
    if (prv)
        e->prv = prv;
    int32_t *nxt = realloc(e->nxt, cap * sizeof(*nxt));
    if (nxt)
        e->nxt = nxt;
    struct heap_ent *heap = realloc(e->heap, cap * 2 * sizeof(*heap));
    if (heap)
        e->heap = heap;
    if (!sym || !mrg || !rank || !prv || !nxt || !heap)
        return engine_error_set(e->err, -ENOMEM,
                                "tokenizer: out of memory for a %zu-byte "
                                "word", n);
    e->scratch_cap = cap;
    return 0;
}

/* Word of n <= BPE_SMALL_MAX symbols: rank[i] is the rank of the pair
 * (sym[i], sym[i+1]); each step takes the lowest (leftmost on ties) and
 * updates only the two neighbouring pairs. */
static size_t bpe_small(struct enc *e, size_t n)
{
    const struct tokenizer *tok = e->tok;
    int32_t *sym = e->sym, *mrg = e->mrg;
    uint32_t *rank = e->rank;
    for (size_t i = 0; i + 1 < n; i++)
        if (!merge_find(tok, sym[i], sym[i + 1], &rank[i], &mrg[i]))
            rank[i] = UINT32_MAX;
    while (n > 1) {
        uint32_t best = UINT32_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        if (best == UINT32_MAX)
            break;
        sym[bi] = mrg[bi];
        memmove(sym + bi + 1, sym + bi + 2, (n - bi - 2) * sizeof(*sym));
        if (bi + 2 < n) {
            memmove(rank + bi, rank + bi + 1, (n - bi - 2) * sizeof(*rank));
            memmove(mrg + bi, mrg + bi + 1, (n - bi - 2) * sizeof(*mrg));
        }
        n--;
        if (bi > 0 &&
            !merge_find(tok, sym[bi - 1], sym[bi], &rank[bi - 1],
                        &mrg[bi - 1]))
            rank[bi - 1] = UINT32_MAX;
        if (bi + 1 < n &&
            !merge_find(tok, sym[bi], sym[bi + 1], &rank[bi], &mrg[bi]))
            rank[bi] = UINT32_MAX;
    }
    return n;
}

static inline bool heap_less(const struct heap_ent *a,
                             const struct heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct heap_ent *h, size_t *n, uint32_t rank,
                      uint32_t pos)
{
    size_t i = (*n)++;
    struct heap_ent v = { rank, pos };
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&v, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static struct heap_ent heap_pop(struct heap_ent *h, size_t *n)
{
    struct heap_ent top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &v))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = v;
    return top;
}

/* Long words: symbols in a linked list (positions keep their original
 * index, so "leftmost" is the smallest position, as in HF's BPE), pairs in
 * a min-heap keyed (rank, position). A popped pair is stale when either
 * side has since merged; the rank check detects that because each rank
 * belongs to exactly one (left, right) pair. */
static size_t bpe_large(struct enc *e, size_t n)
{
    const struct tokenizer *tok = e->tok;
    int32_t *sym = e->sym, *prv = e->prv, *nxt = e->nxt;
    struct heap_ent *heap = e->heap;
    size_t hn = 0;
    uint32_t r;
    int32_t m;
    for (size_t i = 0; i < n; i++) {
        prv[i] = (int32_t)i - 1;
        nxt[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++)
        if (merge_find(tok, sym[i], sym[i + 1], &r, &m))
            heap_push(heap, &hn, r, (uint32_t)i);
    while (hn) {
        struct heap_ent t = heap_pop(heap, &hn);
        int32_t p = (int32_t)t.pos, q = nxt[p];
        if (sym[p] < 0 || q < 0 || !merge_find(tok, sym[p], sym[q], &r, &m) ||
            r != t.rank)
            continue;
        sym[p] = m;
        sym[q] = -1;
        nxt[p] = nxt[q];
        if (nxt[q] >= 0)
            prv[nxt[q]] = p;
        /* The heap holds at most one entry per live pair plus stale ones;
         * each merge adds at most two, and there are < n merges, so 2n
         * entries suffice. */
        if (prv[p] >= 0 && merge_find(tok, sym[prv[p]], sym[p], &r, &m))
            heap_push(heap, &hn, r, (uint32_t)prv[p]);
        if (nxt[p] >= 0 && merge_find(tok, sym[p], sym[nxt[p]], &r, &m))
            heap_push(heap, &hn, r, (uint32_t)p);
    }
    size_t o = 0;
    for (int32_t i = 0; i >= 0; i = nxt[i])
        sym[o++] = sym[i];
    return o;
}

static bool cache_get(const struct tokenizer *tok, uint64_t h,
                      const uint8_t *w, size_t n, struct enc *e, bool *hit)
{
    struct tok_cache_shard *sh = &tok->cache[h % TOK_CACHE_SHARDS];
    struct tok_cache_slot *s =
        &sh->slot[(h / TOK_CACHE_SHARDS) % TOK_CACHE_SLOTS];
    int32_t ids[TOK_CACHE_IDS_MAX];
    size_t k = 0;
    *hit = false;
    pthread_mutex_lock(&sh->lock);
    if (s->key_len == n && s->hash == (uint32_t)h &&
        memcmp(s->key, w, n) == 0) {
        k = s->n_ids;
        memcpy(ids, s->ids, k * sizeof(*ids));
        *hit = true;
    }
    pthread_mutex_unlock(&sh->lock);
    for (size_t i = 0; i < k; i++)
        if (push(e, ids[i]) < 0)
            return false;
    return true;
}

static void cache_put(const struct tokenizer *tok, uint64_t h,
                      const uint8_t *w, size_t n, const int32_t *ids,
                      size_t k)
{
    struct tok_cache_shard *sh = &tok->cache[h % TOK_CACHE_SHARDS];
    struct tok_cache_slot *s =
        &sh->slot[(h / TOK_CACHE_SHARDS) % TOK_CACHE_SLOTS];
    pthread_mutex_lock(&sh->lock);
    s->hash = (uint32_t)h;
    s->key_len = (uint8_t)n;
    s->n_ids = (uint8_t)k;
    memcpy(s->key, w, n);
    memcpy(s->ids, ids, k * sizeof(*ids));
    pthread_mutex_unlock(&sh->lock);
}

static int bpe_word(struct enc *e, const uint8_t *w, size_t n)
{
    const struct tokenizer *tok = e->tok;
    if (n == 0)
        return 0;
    if (n == 1)
        return push(e, tok->byte_id[w[0]]);
    if (tok->ignore_merges) {
        int32_t id = tok_vocab_find(tok, w, n);
        if (id >= 0)
            return push(e, id);
    }
    bool cacheable = n <= TOK_CACHE_KEY_MAX;
    uint64_t h = 0;
    if (cacheable) {
        bool hit;
        h = tok_hash_bytes(w, n);
        if (!cache_get(tok, h, w, n, e, &hit))
            return -ENOMEM;
        if (hit)
            return 0;
    }
    if (scratch_reserve(e, n) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        e->sym[i] = tok->byte_id[w[i]];
    size_t k = n <= BPE_SMALL_MAX ? bpe_small(e, n) : bpe_large(e, n);
    if (cacheable && k <= TOK_CACHE_IDS_MAX)
        cache_put(tok, h, w, n, e->sym, k);
    for (size_t i = 0; i < k; i++)
        if (push(e, e->sym[i]) < 0)
            return -ENOMEM;
    return 0;
}

/* ------------------------------------------------------------------ */
/* pre-tokenizer                                                        */

static int regex_match(struct enc *e, const pcre2_code *re, bool jit,
                       const uint8_t *s, size_t n, size_t off)
{
    for (;;) {
        int rc = jit ? pcre2_jit_match(re, s, n, off, 0, e->md, e->mctx)
                     : pcre2_match(re, s, n, off, PCRE2_NO_UTF_CHECK, e->md,
                                   e->mctx);
        if (rc != PCRE2_ERROR_JIT_STACKLIMIT || e->jstack)
            return rc;
        /* Only pathological inputs get here; give this call a big stack. */
        e->jstack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024,
                                           NULL);
        e->mctx = pcre2_match_context_create(NULL);
        if (!e->jstack || !e->mctx)
            return PCRE2_ERROR_NOMEMORY;
        pcre2_jit_stack_assign(e->mctx, NULL, e->jstack);
    }
}

/* Does the text hold a code point that Unicode 15/16 added to L, M or N?
 * All of them are 3- or 4-byte sequences. */
static bool has_unicode16_extra(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0xe0)
            continue;
        uint32_t c;
        size_t k = tok_utf8_decode(s + i, n - i, &c);
        if (k == 0 || c < unicode16_extra_ranges[0][0])
            continue;
        size_t lo = 0, hi = unicode16_extra_ranges_count;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c < unicode16_extra_ranges[mid][0])
                hi = mid;
            else if (c > unicode16_extra_ranges[mid][1])
                lo = mid + 1;
            else
                return true;
        }
        i += k - 1;
    }
    return false;
}

typedef int (*word_fn)(struct enc *e, const uint8_t *w, size_t n);

static int split_words(struct enc *e, const uint8_t *s, size_t n,
                       word_fn word)
{
    const struct tokenizer *tok = e->tok;
    if (!tok->split_re)
        return word(e, s, n);
    bool exact = has_unicode16_extra(s, n);
    const pcre2_code *re = exact ? tok->split_re : tok->split_fast;
    bool jit = exact ? tok->split_re_jit : tok->split_fast_jit;
    size_t off = 0, gap = 0;
    while (off < n) {
        int rc = regex_match(e, re, jit, s, n, off);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return engine_error_set(e->err, rc == PCRE2_ERROR_NOMEMORY
                                                ? -ENOMEM : -EIO,
                                    "tokenizer: split regex failed at byte "
                                    "%zu: %s", off, (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (ms > gap && word(e, s + gap, ms - gap) < 0)
            return -ENOMEM;
        if (me == ms) {
            /* An empty match splits but yields nothing; step one char. */
            gap = ms;
            off = ms + 1;
            while (off < n && (s[off] & 0xc0) == 0x80)
                off++;
            continue;
        }
        if (word(e, s + ms, me - ms) < 0)
            return -ENOMEM;
        gap = off = me;
    }
    if (gap < n)
        return word(e, s + gap, n - gap);
    return 0;
}

static int pretokenize(struct enc *e, const uint8_t *s, size_t n)
{
    return split_words(e, s, n, bpe_word);
}

/* ------------------------------------------------------------------ */
/* added tokens                                                         */

static bool is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 ||
           c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
           c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation,
 * join controls. Letters and Nl stand in for Alphabetic. */
static bool is_word_char(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
               (c >= 'A' && c <= 'Z') || c == '_';
    if (c == 0x200c || c == 0x200d)
        return true;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* Code point ending at s[end) (s valid UTF-8, end > 0). */
static uint32_t cp_before(const uint8_t *s, size_t end, size_t *start)
{
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xc0) == 0x80 && end - i < 4)
        i--;
    uint32_t cp = 0;
    if (tok_utf8_decode(s + i, end - i, &cp) == 0)
        cp = 0;
    *start = i;
    return cp;
}

static int added_split(struct enc *e, const struct tok_matcher *m,
                       const uint8_t *s, size_t n, segment_fn plain)
{
    size_t start_offset = 0, pos = 0;
    while (pos < n) {
        uint8_t c = s[pos];
        if (!m->first_count[c]) {
            pos++;
            continue;
        }
        const struct tok_added *hit = NULL;
        const struct tok_added *const *cand = m->cand + m->first_start[c];
        for (size_t k = 0; k < m->first_count[c]; k++)
            if (cand[k]->len <= n - pos &&
                memcmp(cand[k]->content, s + pos, cand[k]->len) == 0) {
                hit = cand[k];
                break;
            }
        if (!hit) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + hit->len, at;
        uint32_t cp;
        pos = stop;
        if (hit->single_word) {
            bool before = start > 0 && is_word_char(cp_before(s, start, &at));
            bool after = stop < n &&
                         tok_utf8_decode(s + stop, n - stop, &cp) > 0 &&
                         is_word_char(cp);
            if (before || after)
                continue;
        }
        if (hit->lstrip) {
            size_t ns = start;
            while (ns > 0 && is_white_space(cp_before(s, ns, &at)))
                ns = at;
            start = ns > start_offset ? ns : start_offset;
        }
        if (hit->rstrip) {
            size_t k;
            while (stop < n && (k = tok_utf8_decode(s + stop, n - stop, &cp)) &&
                   is_white_space(cp))
                stop += k;
        }
        if (start_offset < start && plain(e, s + start_offset,
                                          start - start_offset) < 0)
            return -ENOMEM;
        if (push(e, hit->id) < 0)
            return -ENOMEM;
        start_offset = stop;
    }
    if (start_offset < n)
        return plain(e, s + start_offset, n - start_offset);
    return 0;
}

/* ------------------------------------------------------------------ */
/* normalisation                                                        */

/* True when the code point cannot change under NFC whatever surrounds it:
 * combining class 0, no canonical decomposition, never the second half of
 * a composition. Checked with utf8proc's own tables; the cheap ranges
 * first. */
static bool nfc_inert(uint32_t c)
{
    if (c < 0x300)
        return true;
    if ((c >= 0x1100 && c <= 0x11ff) || (c >= 0xac00 && c <= 0xd7a3))
        return false;   /* Hangul: composed algorithmically */
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    if (p->combining_class != 0)
        return false;
    if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0)
        return false;   /* canonical decomposition */
    if (p->comb_index != UINT16_MAX && p->comb_index >= 0x8000)
        return false;   /* can be the second of a pair */
    return true;
}

static bool nfc_opaque(uint32_t c)
{
    size_t lo = 0, hi = unicode9_nfc_opaque_count;
    if (c < unicode9_nfc_opaque[0][0])
        return false;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < unicode9_nfc_opaque[mid][0])
            hi = mid;
        else if (c > unicode9_nfc_opaque[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

/* NFC as HF computes it. HF's normaliser has Unicode 9.0 data, utf8proc
 * has 15.0: a mark added after 9.0 is a plain starter to HF, which neither
 * reorders nor composes across it. Normalising the runs between such code
 * points separately, and copying them unchanged, gives exactly that. The
 * result is malloc'd. */
uint8_t *tok_nfc(const uint8_t *s, size_t n, size_t *out_len,
                 struct engine_error *err)
{
    uint8_t *out = malloc(n * 3 + 1);   /* NFC grows UTF-8 at most 3x */
    size_t o = 0, run = 0, i = 0;
    if (!out) {
        engine_error_set(err, -ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    while (run < n) {
        /* find the next opaque code point (or the end) */
        size_t stop = i;
        uint32_t cp = 0;
        size_t k = 0;
        while (stop < n) {
            k = tok_utf8_decode(s + stop, n - stop, &cp);
            if (k == 0)
                k = 1;
            if (s[stop] >= 0x80 && nfc_opaque(cp))
                break;
            stop += k;
        }
        if (stop > run) {
            utf8proc_uint8_t *nf = NULL;
            utf8proc_ssize_t m = utf8proc_map(s + run,
                                              (utf8proc_ssize_t)(stop - run),
                                              &nf, UTF8PROC_STABLE |
                                                       UTF8PROC_COMPOSE);
            if (m < 0 || o + (size_t)m > n * 3) {
                free(nf);
                free(out);
                engine_error_set(err, m == UTF8PROC_ERROR_NOMEM
                                             ? -ENOMEM : -EILSEQ,
                                 "tokenizer: NFC normalisation failed: %s",
                                 m < 0 ? utf8proc_errmsg(m) : "grew too much");
                return NULL;
            }
            memcpy(out + o, nf, (size_t)m);
            o += (size_t)m;
            free(nf);
        }
        if (stop < n) {
            memcpy(out + o, s + stop, k);
            o += k;
            stop += k;
        }
        run = i = stop;
    }
    *out_len = o;
    return out;
}

static int segment_normalized(struct enc *e, const uint8_t *s, size_t n)
{
    if (e->match_added && e->tok->match_norm.n)
        return added_split(e, &e->tok->match_norm, s, n, pretokenize);
    return pretokenize(e, s, n);
}

static int segment_raw(struct enc *e, const uint8_t *s, size_t n)
{
    if (!e->tok->nfc)
        return segment_normalized(e, s, n);
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = tok_utf8_decode(s + i, n - i, &cp);
        if (k == 0 || !nfc_inert(cp))
            break;
        i += k;
    }
    if (i == n)
        return segment_normalized(e, s, n);
    size_t m;
    uint8_t *nf = tok_nfc(s, n, &m, e->err);
    if (!nf)
        return -ENOMEM;
    int r = segment_normalized(e, nf, m);
    free(nf);
    return r;
}

/* ------------------------------------------------------------------ */

static void enc_free(struct enc *e)
{
    pcre2_match_data_free(e->md);
    pcre2_match_context_free(e->mctx);
    pcre2_jit_stack_free(e->jstack);
    free(e->sym);
    free(e->mrg);
    free(e->rank);
    free(e->prv);
    free(e->nxt);
    free(e->heap);
}

static int enc_finish(struct enc *e, int r, int32_t **ids, size_t *n_ids)
{
    enc_free(e);
    if (r < 0) {
        free(e->out);
        return r;
    }
    if (!e->out) {
        e->out = malloc(sizeof(int32_t));
        if (!e->out)
            return engine_error_set(e->err, -ENOMEM, "out of memory");
    }
    *ids = e->out;
    *n_ids = e->n_out;
    return 0;
}

int tokenizer_encode_ex(const struct tokenizer *tok, const char *text,
                        size_t len, const struct tokenizer_encode_params *params,
                        int32_t **ids, size_t *n_ids, struct engine_error *err)
{
    struct tokenizer_encode_params def = TOKENIZER_ENCODE_PARAMS_DEFAULT;
    if (!params)
        params = &def;
    *ids = NULL;
    *n_ids = 0;
    if (len > TOK_MAX_INPUT_BYTES)
        return engine_error_set(err, -EOVERFLOW,
                                "tokenizer: input of %zu bytes is over the "
                                "%zu MiB limit of one encode call; split it",
                                len, TOK_MAX_INPUT_BYTES >> 20);
    if (len && !text)
        return engine_error_set(err, -EINVAL, "tokenizer: text is NULL");
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = tok_utf8_check(s, len);
    if (bad < len)
        return engine_error_set(err, -EILSEQ,
                                "tokenizer: input is not valid UTF-8 at byte "
                                "%zu (0x%02x); send text as UTF-8, or use "
                                "tokenizer_encode_bytes() for binary data",
                                bad, s[bad]);
    struct enc e = { .tok = tok, .err = err,
                     .match_added = params->match_added_tokens };
    if (tok->split_re) {
        /* Both patterns have no capture groups: one pair suffices. */
        e.md = pcre2_match_data_create(1, NULL);
        if (!e.md)
            return engine_error_set(err, -ENOMEM, "out of memory");
    }
    int r;
    if (e.match_added && tok->match_raw.n)
        r = added_split(&e, &tok->match_raw, s, len, segment_raw);
    else
        r = segment_raw(&e, s, len);
    return enc_finish(&e, r, ids, n_ids);
}

int tokenizer_encode(const struct tokenizer *tok, const char *text, size_t len,
                     int32_t **ids, size_t *n_ids, struct engine_error *err)
{
    return tokenizer_encode_ex(tok, text, len, NULL, ids, n_ids, err);
}

int tokenizer_encode_bytes(const struct tokenizer *tok, const void *data,
                           size_t len, int32_t **ids, size_t *n_ids,
                           struct engine_error *err)
{
    *ids = NULL;
    *n_ids = 0;
    if (len > TOK_MAX_INPUT_BYTES)
        return engine_error_set(err, -EOVERFLOW,
                                "tokenizer: input of %zu bytes is over the "
                                "%zu MiB limit of one encode call", len,
                                TOK_MAX_INPUT_BYTES >> 20);
    int32_t *out = malloc((len ? len : 1) * sizeof(*out));
    if (!out)
        return engine_error_set(err, -ENOMEM, "out of memory");
    const uint8_t *s = data;
    for (size_t i = 0; i < len; i++)
        out[i] = tok->byte_id[s[i]];
    *ids = out;
    *n_ids = len;
    return 0;
}

/* ------------------------------------------------------------------ */
/* test hook: the pre-token split alone (no added tokens, no NFC)       */

static int split_hook_word(struct enc *e, const uint8_t *w, size_t n)
{
    int r = e->hook_fn(e->hook_ctx, (const char *)w, n);
    return r < 0 ? engine_error_set(e->err, r, "split callback failed") : 0;
}

int tok_split_for_test(const struct tokenizer *tok, const char *text,
                       size_t len,
                       int (*fn)(void *ctx, const char *w, size_t n),
                       void *ctx, struct engine_error *err)
{
    struct enc e = { .tok = tok, .err = err, .hook_fn = fn,
                     .hook_ctx = ctx };
    if (tok_utf8_check((const uint8_t *)text, len) < len)
        return engine_error_set(err, -EILSEQ, "invalid UTF-8");
    if (tok->split_re) {
        /* Both patterns have no capture groups: one pair suffices. */
        e.md = pcre2_match_data_create(1, NULL);
        if (!e.md)
            return engine_error_set(err, -ENOMEM, "out of memory");
    }
    int r = split_words(&e, (const uint8_t *)text, len, split_hook_word);
    enc_free(&e);
    return r;
}
