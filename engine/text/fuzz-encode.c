/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for the tokenizer, on the committed synthetic
 * vocabulary (engine/text/testdata/tok/synth: Qwen3.5 split regex, added
 * tokens with lstrip/rstrip/single_word/normalized flags). The first input
 * byte picks what the rest is:
 *   0-3  text: tokenizer_encode() must succeed on valid UTF-8 and return
 *        -EILSEQ otherwise; with added-token matching off,
 *        decode(encode(s)) must equal NFC(s)
 *   4    bytes: encode_bytes + decode must give the bytes back
 *   5    ids (2 bytes each) through a detok_stream: every piece complete
 *        UTF-8, unknown ids refused with -ERANGE
 *   6    a tokenizer.json document: loading must fail cleanly or give a
 *        tokenizer that encodes
 *   7    a binary cache file (header made consistent first, so mutations
 *        reach the table checks): same contract as 6
 * Any failed property aborts, so libFuzzer reports it.
 */
#include "engine/text/detok.h"
#include "engine/text/tokenizer-internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef TOK_FUZZ_SOURCE_ROOT
#define TOK_FUZZ_SOURCE_ROOT "."
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tokenizer *tok;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz-encode: property violated: %s\n", what);
    abort();
}

static void setup(void)
{
    if (tok)
        return;
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%.*s/engine/text/testdata/tok/synth", 2000,
             root ? root : TOK_FUZZ_SOURCE_ROOT);
    struct engine_error err = { 0 };
    if (tokenizer_load(dir, &tok, &err) != 0) {
        fprintf(stderr, "fuzz-encode: %s\n", err.msg);
        abort();
    }
}

static void fuzz_text(const uint8_t *s, size_t n)
{
    int32_t *ids;
    size_t k;
    struct engine_error err = { 0 };
    bool valid = tok_utf8_check(s, n) == n;
    int r = tokenizer_encode(tok, (const char *)s, n, &ids, &k, &err);
    if (!valid) {
        if (r != -EILSEQ)
            fail("invalid UTF-8 not refused");
        return;
    }
    if (r != 0)
        fail("encode of valid UTF-8 failed");
    for (size_t i = 0; i < k; i++)
        if (!tokenizer_id_to_bytes(tok, ids[i], &(size_t){ 0 }))
            fail("encode produced an id that names no token");
    free(ids);
    struct tokenizer_encode_params p = { .match_added_tokens = false };
    if (tokenizer_encode_ex(tok, (const char *)s, n, &p, &ids, &k, &err))
        fail("plain encode failed");
    char *dec;
    size_t dl;
    if (tokenizer_decode(tok, ids, k, false, &dec, &dl, &err))
        fail("decode failed");
    size_t m = 0;
    uint8_t *nf = tok_nfc(s, n, &m, &err);
    if (!nf || m != dl || memcmp(dec, nf, dl))
        fail("decode(encode(s)) != NFC(s)");
    free(nf);
    free(dec);
    free(ids);
}

static void fuzz_bytes(const uint8_t *s, size_t n)
{
    int32_t *ids;
    size_t k;
    char *dec;
    size_t dl;
    if (tokenizer_encode_bytes(tok, s, n, &ids, &k, NULL) || k != n)
        fail("encode_bytes");
    if (tokenizer_decode(tok, ids, k, true, &dec, &dl, NULL) || dl != n ||
        memcmp(dec, s, n))
        fail("bytes round trip");
    free(dec);
    free(ids);
}

static void fuzz_stream(const uint8_t *s, size_t n)
{
    struct detok_stream *st;
    struct detok_params p = { .skip_special_tokens = n && (s[0] & 1) };
    if (detok_stream_new(tok, &p, &st, NULL))
        fail("stream new");
    size_t count = tokenizer_token_count(tok);
    for (size_t i = 0; i + 1 < n; i += 2) {
        int32_t id = (int32_t)(((size_t)s[i] << 8 | s[i + 1]) % (count + 8));
        const char *t;
        size_t len;
        int r = detok_stream_feed(st, id, &t, &len, NULL);
        if ((size_t)id >= count ? r != -ERANGE : r != 0)
            fail("stream feed result");
        if (tok_utf8_check((const uint8_t *)t, len) != len)
            fail("stream emitted a partial UTF-8 sequence");
    }
    const char *t;
    size_t len;
    detok_stream_flush(st, &t, &len, NULL);
    if (tok_utf8_check((const uint8_t *)t, len) != len ||
        detok_stream_pending(st))
        fail("flush");
    detok_stream_free(st);
}

static void fuzz_load(const uint8_t *s, size_t n)
{
    struct tokenizer *t = NULL;
    struct engine_error err = { 0 };
    if (tok_load_json_buffer((const char *)s, n, &t, &err) != 0) {
        if (t || !err.msg[0])
            fail("failed load without a message");
        return;
    }
    int32_t *ids;
    size_t k;
    static const char probe[] = "Hello <|im_end|> world 123 \xc3\xa9";
    if (tokenizer_encode(t, probe, sizeof(probe) - 1, &ids, &k, &err) == 0)
        free(ids);
    tokenizer_free(t);
}

static void fuzz_cache(const uint8_t *s, size_t n)
{
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return;
    memcpy(buf, s, n);
    tok_cache_fuzz_fixup(buf, n);
    uint64_t fp = 0;
    if (n >= 24)
        memcpy(&fp, buf + 16, sizeof(fp));  /* accept the stored one */
    struct tokenizer *t = NULL;
    struct engine_error err = { 0 };
    if (tok_cache_parse(buf, n, fp, "fuzz", &t, &err) == 0) {
        int32_t *ids;
        size_t k;
        static const char probe[] = "Hello <|im_end|> world 123 \xc3\xa9";
        if (tokenizer_encode(t, probe, sizeof(probe) - 1, &ids, &k, &err) == 0)
            free(ids);
        tokenizer_free(t);
    } else if (t || !err.msg[0]) {
        fail("failed cache read without a message");
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size == 0)
        return 0;
    const uint8_t *s = data + 1;
    size_t n = size - 1;
    switch (data[0] % 8) {
    case 4: fuzz_bytes(s, n); break;
    case 5: fuzz_stream(s, n); break;
    case 6: fuzz_load(s, n); break;
    case 7: fuzz_cache(s, n); break;
    default: fuzz_text(s, n); break;
    }
    return 0;
}
