/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The two matchers of the encode path, built at load time:
 *
 *  - the split regex: the pattern string from tokenizer.json compiled with
 *    PCRE2 (UTF + UCP, JIT when the system allows it), after rewriting \s
 *    and \S to Unicode White_Space (see pattern_to_pcre2()); why PCRE2 and
 *    not a hand-written scanner is measured in docs/performance.md;
 *  - the added-token matchers (raw and normalised text): candidates grouped
 *    by first byte, longest first, which gives HF's leftmost-longest
 *    Aho-Corasick result for the few dozen tokens a model has.
 */
#include "engine/text/tokenizer-internal.h"
#include "engine/text/unicode-props.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The split regexes we know by name (tokenizer.json spelling). */
const char tok_pat_qwen35[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|"
    "\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|"
    "\\s+";
const char tok_pat_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char tok_pat_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

/* ------------------------------------------------------------------ */
/* split regex                                                          */

/* The split patterns come from HF tokenizers, which runs them with
 * Oniguruma on Unicode 16.0 tables. Two rewrites make PCRE2 10.42 (Unicode
 * 14.0) match the same code points:
 *  - \s / \S become the exact Unicode White_Space list: PCRE2's \s under
 *    UCP is "Perl space" (Z categories + \t\n\v\f\r), which lacks U+0085;
 *  - \p{L}, \p{M}, \p{N} get the code points Unicode 15 and 16 added to
 *    those categories (unicode-props.c; none left them, so a union is exact).
 * Everything else in these patterns ((?i:...), lookahead, classes) means the
 * same in both engines. */
#define WS_BODY "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-" \
                "\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

struct pbuf {
    char  *p;
    size_t n, cap;
    bool   oom;
};

static void pb_add(struct pbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void pb_str(struct pbuf *b, const char *s)
{
    pb_add(b, s, strlen(s));
}

static char *pattern_to_pcre2(const char *pat, bool unicode16,
                              struct engine_error *err, const char *what)
{
    size_t n = strlen(pat);
    struct pbuf out = { 0 };
    bool in_class = false;
    size_t class_start = 0;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char e = pat[i + 1];
            const char *extra = NULL;
            if (unicode16 && (e == 'p' || e == 'P') && i + 4 < n &&
                pat[i + 2] == '{' && pat[i + 4] == '}') {
                extra = pat[i + 3] == 'L' ? unicode16_extra_L
                      : pat[i + 3] == 'M' ? unicode16_extra_M
                      : pat[i + 3] == 'N' ? unicode16_extra_N : NULL;
            }
            if (extra && e == 'P' && in_class) {
                free(out.p);
                engine_error_set(err, -ENOTSUP,
                                 "%s: split regex uses \\P{%c} inside a "
                                 "character class, which is not supported",
                                 what, pat[i + 3]);
                return NULL;
            }
            if (extra) {
                char prop[8] = { '\\', 'p', '{', pat[i + 3], '}', 0 };
                if (!in_class)
                    pb_str(&out, e == 'P' ? "[^" : "[");
                pb_str(&out, prop);
                pb_str(&out, extra);
                if (!in_class)
                    pb_str(&out, "]");
                i += 4;
                continue;
            }
            if (e == 's') {
                pb_str(&out, in_class ? WS_BODY : "[" WS_BODY "]");
            } else if (e == 'S' && !in_class) {
                pb_str(&out, "[^" WS_BODY "]");
            } else if (e == 'S') {
                free(out.p);
                engine_error_set(err, -ENOTSUP,
                                 "%s: split regex uses \\S inside a "
                                 "character class, which is not supported",
                                 what);
                return NULL;
            } else {
                pb_add(&out, pat + i, 2);
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            class_start = i;
        } else if (c == ']' && in_class) {
            /* ']' right after '[' or '[^' is a literal. */
            size_t k = i - class_start;
            if (!(k == 1 || (k == 2 && pat[class_start + 1] == '^')))
                in_class = false;
        }
        pb_add(&out, &c, 1);
    }
    if (out.oom || !out.p) {
        free(out.p);
        engine_error_set(err, -ENOMEM, "%s: out of memory for the split "
                         "regex", what);
        return NULL;
    }
    return out.p;
}

static int compile_one(const char *pattern, bool unicode16, pcre2_code **out,
                       bool *jit, const char *what, struct engine_error *err)
{
    char *p = pattern_to_pcre2(pattern, unicode16, err, what);
    if (!p)
        return -EINVAL;
    int ec;
    PCRE2_SIZE eo;
    *out = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    free(p);
    if (!*out) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        return engine_error_set(err, -EINVAL,
                                "%s: split regex does not compile at offset "
                                "%zu: %s", what, (size_t)eo, (char *)msg);
    }
    /* JIT is an optimisation: without it (e.g. a W^X policy) matching
     * still works, slower. */
    size_t jit_size = 0;
    *jit = pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE) == 0 &&
           pcre2_pattern_info(*out, PCRE2_INFO_JITSIZE, &jit_size) == 0 &&
           jit_size > 0;
    return 0;
}

int tok_split_compile(struct tokenizer *tok, const char *what,
                      struct engine_error *err)
{
    if (!tok->pattern) {
        /* ByteLevel(use_regex=false) alone: each segment is one word */
        tok->pretok_name = "none";
        return 0;
    }
    tok->pretok_name = strcmp(tok->pattern, tok_pat_qwen35) == 0 ? "qwen35"
                     : strcmp(tok->pattern, tok_pat_qwen2) == 0  ? "qwen2"
                     : strcmp(tok->pattern, tok_pat_gpt2) == 0   ? "gpt2"
                                                                 : "custom";
    /* The extended classes cost ~40 % of split speed in PCRE2 (measured),
     * so text without a Unicode 15/16 code point, nearly all text, uses the
     * plain pattern; both give the same split on such text. */
    int r = compile_one(tok->pattern, true, &tok->split_re,
                        &tok->split_re_jit, what, err);
    if (r == 0)
        r = compile_one(tok->pattern, false, &tok->split_fast,
                        &tok->split_fast_jit, what, err);
    return r;
}

/* ------------------------------------------------------------------ */
/* added-token matchers                                                 */

int tok_matcher_build(const struct tokenizer *tok, struct tok_matcher *m,
                      bool normalized, struct engine_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized)
            n++;
    m->n = n;
    if (!n)
        return 0;
    m->cand = calloc(n, sizeof(*m->cand));
    if (!m->cand)
        return engine_error_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized)
            m->first_count[(uint8_t)tok->added[i].content[0]]++;
    uint32_t acc = 0;
    for (int c = 0; c < 256; c++) {
        m->first_start[c] = acc;
        acc += m->first_count[c];
    }
    uint32_t fill[256] = { 0 };
    for (size_t i = 0; i < tok->n_added; i++) {
        const struct tok_added *a = &tok->added[i];
        if (a->normalized != normalized)
            continue;
        uint8_t c = (uint8_t)a->content[0];
        /* insertion sort by length, longest first, within the bucket; the
         * first listed wins among equal contents */
        size_t base = m->first_start[c], k = fill[c]++;
        while (k > 0 && m->cand[base + k - 1]->len < a->len) {
            m->cand[base + k] = m->cand[base + k - 1];
            k--;
        }
        m->cand[base + k] = a;
    }
    return 0;
}
