/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Streaming detokenizer tests:
 *   - every piece a stream hands out is valid UTF-8 (never a partial
 *     sequence), and the concatenation equals tokenizer_decode() whenever
 *     that is valid UTF-8;
 *   - the text does not depend on how the ids are grouped into calls (one
 *     stream fed id by id vs. flushes at random points only change where
 *     pieces end, never the bytes);
 *   - invalid byte streams become exactly what Python's
 *     bytes.decode("utf-8", "replace") gives (utf8_replace.json, generated
 *     by testdata/tok/gen.py): the oracle for vLLM's text output;
 *   - skip_special_tokens drops <|im_end|> / <|endoftext|> and keeps
 *     <think>, </think>, <tool_call>.
 * Uses the committed synthetic tokenizer, plus the Qwen3 vocabulary from
 * ../shared when present.
 */
#include "engine/text/detok.h"
#include "engine/text/tokenizer-internal.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int failures, checks;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);            \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

static void fmt(char *out, size_t cap, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static void fmt(char *out, size_t cap, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(out, cap, f, ap);
    va_end(ap);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

struct sbuf {
    char  *p;
    size_t n, cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* Stream ids; every piece must be valid UTF-8 by itself. With
 * flush_every > 0 the stream is not flushed in between (flushing would
 * legitimately replace a held-back prefix), but pieces are checked. */
static bool stream_all(const struct tokenizer *tok, const int32_t *ids,
                       size_t n, bool skip, struct sbuf *out)
{
    struct detok_stream *s;
    struct detok_params p = { .skip_special_tokens = skip };
    struct engine_error err = { 0 };
    if (detok_stream_new(tok, &p, &s, &err) != 0)
        return false;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        const char *t;
        size_t len;
        if (detok_stream_feed(s, ids[i], &t, &len, &err) != 0) {
            ok = false;
            break;
        }
        if (tok_utf8_check((const uint8_t *)t, len) != len) {
            CHECK(false, "piece %zu is not complete UTF-8", i);
            ok = false;
        }
        CHECK(detok_stream_pending(s) < 4, "held back %zu bytes",
              detok_stream_pending(s));
        sb_add(out, t, len);
    }
    const char *t;
    size_t len;
    detok_stream_flush(s, &t, &len, &err);
    CHECK(tok_utf8_check((const uint8_t *)t, len) == len, "flush piece");
    sb_add(out, t, len);
    detok_stream_free(s);
    return ok;
}

static void check_text(const struct tokenizer *tok, const char *text,
                       size_t len, const char *what)
{
    int32_t *ids;
    size_t n;
    struct engine_error err = { 0 };
    if (tokenizer_encode(tok, text, len, &ids, &n, &err) != 0) {
        CHECK(false, "%s: encode: %s", what, err.msg);
        return;
    }
    char *dec;
    size_t dl;
    CHECK(tokenizer_decode(tok, ids, n, false, &dec, &dl, &err) == 0,
          "decode");
    struct sbuf a = { 0 };
    stream_all(tok, ids, n, false, &a);
    /* Added-token content like "\u00c5" decodes through the byte alphabet
     * to a lone byte (as in HF); only valid UTF-8 decodes compare whole. */
    bool valid = tok_utf8_check((const uint8_t *)dec, dl) == dl;
    CHECK(!valid || (a.n == dl && memcmp(a.p ? a.p : "", dec, dl) == 0),
          "%s: streamed text differs from decode (%zu vs %zu bytes)", what,
          a.n, dl);
    free(a.p);
    free(dec);
    free(ids);
}

/* Arbitrary bytes as byte tokens, streamed with a random grouping of the
 * ids into "deltas" (each delta's text concatenated): the result must not
 * depend on the grouping, and must equal a one-id-at-a-time stream. */
static void check_splits(const struct tokenizer *tok, int iters)
{
    for (int it = 0; it < iters; it++) {
        uint8_t buf[64];
        size_t n = 1 + rnd() % sizeof(buf);
        static const uint8_t pool[] = { 'a', 0x80, 0x9f, 0xa0, 0xbf, 0xc2,
                                        0xe0, 0xe2, 0xed, 0xf0, 0xf4, 0xff,
                                        0x82, 0xac, 0x9f, 0x8e };
        for (size_t i = 0; i < n; i++)
            buf[i] = pool[rnd() % sizeof(pool)];
        int32_t *ids;
        size_t k;
        tokenizer_encode_bytes(tok, buf, n, &ids, &k, NULL);
        struct sbuf one = { 0 }, grouped = { 0 };
        stream_all(tok, ids, k, false, &one);
        /* grouped: same stream, pieces collected per random-size group */
        struct detok_stream *s;
        detok_stream_new(tok, NULL, &s, NULL);
        size_t i = 0;
        while (i < k) {
            size_t g = 1 + rnd() % 5;
            struct sbuf delta = { 0 };
            for (size_t j = 0; j < g && i < k; j++, i++) {
                const char *t;
                size_t len;
                detok_stream_feed(s, ids[i], &t, &len, NULL);
                sb_add(&delta, t, len);
            }
            CHECK(tok_utf8_check((const uint8_t *)(delta.p ? delta.p : ""),
                                 delta.n) == delta.n,
                  "delta not valid UTF-8");
            if (delta.n)
                sb_add(&grouped, delta.p, delta.n);
            free(delta.p);
        }
        const char *t;
        size_t len;
        detok_stream_flush(s, &t, &len, NULL);
        sb_add(&grouped, t, len);
        detok_stream_free(s);
        CHECK(one.n == grouped.n && memcmp(one.p, grouped.p, one.n) == 0,
              "grouping changed the text (iteration %d)", it);
        free(one.p);
        free(grouped.p);
        free(ids);
    }
}

static int hexval(char c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static void check_replacement(const struct tokenizer *tok, const char *path)
{
    struct json_object *root = json_object_from_file(path);
    CHECK(root != NULL, "cannot read %s", path);
    if (!root)
        return;
    size_t n = json_object_array_length(root), ok = 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *c = json_object_array_get_idx(root, i), *h, *t;
        json_object_object_get_ex(c, "hex", &h);
        json_object_object_get_ex(c, "text", &t);
        const char *hex = json_object_get_string(h);
        size_t hl = strlen(hex);
        uint8_t bytes[64];
        size_t nb = 0;
        for (size_t k = 0; k + 1 < hl && nb < sizeof(bytes); k += 2)
            bytes[nb++] = (uint8_t)(hexval(hex[k]) << 4 | hexval(hex[k + 1]));
        int32_t *ids;
        size_t k;
        tokenizer_encode_bytes(tok, bytes, nb, &ids, &k, NULL);
        struct sbuf out = { 0 };
        stream_all(tok, ids, k, true, &out);
        const char *want = json_object_get_string(t);
        size_t wl = (size_t)json_object_get_string_len(t);
        bool same = out.n == wl && memcmp(out.p, want, wl) == 0;
        CHECK(same, "replacement of %s differs from Python", hex);
        ok += same;
        free(out.p);
        free(ids);
    }
    printf("U+FFFD replacement: %zu/%zu byte strings identical to Python's "
           "decode('utf-8', 'replace')\n", ok, n);
    json_object_put(root);
}

static void check_special(const struct tokenizer *tok, const char *im_end,
                          const char *think, const char *tool)
{
    int32_t ids[6];
    ids[0] = tokenizer_token_to_id(tok, im_end);
    ids[1] = tokenizer_token_to_id(tok, think);
    ids[2] = tok->byte_id['x'];
    ids[3] = tokenizer_token_to_id(tok, "<|endoftext|>");
    ids[4] = tool ? tokenizer_token_to_id(tok, tool) : tok->byte_id['y'];
    ids[5] = tok->byte_id['z'];
    for (int i = 0; i < 6; i++)
        CHECK(ids[i] >= 0, "token %d missing", i);
    struct sbuf a = { 0 }, b = { 0 };
    stream_all(tok, ids, 6, true, &a);
    stream_all(tok, ids, 6, false, &b);
    char want_a[128], want_b[256];
    fmt(want_a, sizeof(want_a), "%sx%sz", think, tool ? tool : "y");
    fmt(want_b, sizeof(want_b), "%s%sx<|endoftext|>%sz", im_end, think,
        tool ? tool : "y");
    CHECK(a.p && strcmp(a.p, want_a) == 0, "skip_special: got \"%s\"", a.p);
    CHECK(b.p && strcmp(b.p, want_b) == 0, "keep special: got \"%s\"", b.p);
    char *dec;
    size_t dl;
    tokenizer_decode(tok, ids, 6, true, &dec, &dl, NULL);
    CHECK(strcmp(dec, want_a) == 0, "tokenizer_decode skip_special");
    free(dec);
    /* an id past the vocabulary is refused and leaves the stream intact */
    struct detok_stream *s;
    struct engine_error err = { 0 };
    detok_stream_new(tok, NULL, &s, &err);
    const char *t;
    size_t len;
    detok_stream_feed(s, tok->byte_id[0xe2], &t, &len, &err);
    CHECK(detok_stream_feed(s, (int32_t)tokenizer_token_count(tok), &t, &len,
                            &err) == -ERANGE, "bad id must give -ERANGE");
    CHECK(detok_stream_pending(s) == 1, "stream changed by a bad id");
    detok_stream_free(s);
    free(a.p);
    free(b.p);
}

int main(void)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    char src[1024], p[PATH_MAX];
    fmt(src, sizeof(src), "%s", root ? root : ".");
    struct engine_error err = { 0 };
    struct tokenizer *tok;
    fmt(p, sizeof(p), "%s/engine/text/testdata/tok/synth", src);
    if (tokenizer_load(p, &tok, &err) != 0) {
        fprintf(stderr, "FAIL: load %s: %s\n", p, err.msg);
        return 1;
    }
    check_special(tok, "<|im_end|>", "<think>", NULL);
    fmt(p, sizeof(p), "%s/engine/text/testdata/tok/utf8_replace.json", src);
    check_replacement(tok, p);
    check_splits(tok, 3000);
    fmt(p, sizeof(p), "%s/engine/text/testdata/tok/synth_goldens.json", src);
    struct json_object *g = json_object_from_file(p);
    size_t ng = g ? json_object_array_length(g) : 0;
    for (size_t i = 0; i < ng; i++) {
        struct json_object *t;
        json_object_object_get_ex(json_object_array_get_idx(g, i), "text",
                                  &t);
        check_text(tok, json_object_get_string(t),
                   (size_t)json_object_get_string_len(t), "synth golden");
    }
    json_object_put(g);
    printf("streamed %zu golden texts (synthetic vocabulary)\n", ng);
    tokenizer_free(tok);

    /* Qwen3 vocabulary: emoji split across tokens, real special tokens */
    fmt(p, sizeof(p), "%s/../shared/models/qwen3-tokenizer", src);
    struct stat st;
    if (stat(p, &st) == 0 && tokenizer_load(p, &tok, &err) == 0) {
        check_special(tok, "<|im_end|>", "<think>", "<tool_call>");
        static const char *texts[] = {
            " 🎉", "🎉🎉 party 🥳 😶‍🌫️ 👨‍👩‍👧‍👦", "日本語のテキストです。",
            "नमस्ते दुनिया", "<|im_start|>user\nhi<|im_end|>\n",
        };
        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
            check_text(tok, texts[i], strlen(texts[i]), "qwen3");
        /* " 🎉" is cut inside the emoji: the first token must give " "
         * only, the emoji comes whole with its last token */
        int32_t *ids;
        size_t n;
        tokenizer_encode(tok, " 🎉", strlen(" 🎉"), &ids, &n, &err);
        CHECK(n >= 2, "emoji spans tokens (%zu)", n);
        struct detok_stream *s;
        detok_stream_new(tok, NULL, &s, &err);
        struct sbuf acc = { 0 };
        for (size_t i = 0; i < n; i++) {
            const char *t;
            size_t len;
            detok_stream_feed(s, ids[i], &t, &len, &err);
            CHECK(len == 0 || i == 0 || i == n - 1,
                  "emoji piece %zu emitted early", i);
            sb_add(&acc, t, len);
        }
        CHECK(acc.p && strcmp(acc.p, " 🎉") == 0, "emoji text");
        free(acc.p);
        detok_stream_free(s);
        free(ids);
        check_splits(tok, 500);
        tokenizer_free(tok);
        printf("Qwen3 vocabulary stream checks ran\n");
    } else {
        printf("skip: %s absent (Qwen3 stream checks)\n", p);
    }
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
