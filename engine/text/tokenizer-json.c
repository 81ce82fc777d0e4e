/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A pull scanner for the two large JSON documents of a tokenizer directory
 * (tokenizer.json, vocab.json). json-c builds one heap object per vocabulary
 * entry and per merge; for Qwen3's 11 MB file that is ~160 ms to parse and
 * ~65 ms to free, above the 100 ms load budget for the 20 MB Qwen3.6 file.
 * This scanner walks the text in place and decodes strings into one scratch
 * buffer, so the loader touches each byte once.
 *
 * It is strict: RFC 8259 grammar, UTF-8 validated, no lone surrogates in
 * \u escapes (serde_json, which HF uses, refuses them too), raw control
 * characters refused, nesting bounded while skipping. Every error names the
 * file and the byte offset. The small parts of tokenizer.json (normalizer,
 * pre_tokenizer, added_tokens) are handed to json-c as raw spans.
 */
#include "engine/text/tokenizer-internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKJSON_MAX_DEPTH 128

void tokjson_init(struct tokjson *js, const char *text, size_t len,
                  const char *what, struct engine_error *err)
{
    memset(js, 0, sizeof(*js));
    js->start = js->p = text;
    js->end = text + len;
    js->what = what;
    js->err = err;
}

void tokjson_fini(struct tokjson *js)
{
    free(js->sbuf);
    js->sbuf = NULL;
}

int tokjson_fail(struct tokjson *js, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return engine_error_set(js->err, -EINVAL,
                            "%s: invalid JSON at byte %zu: %s (the file is "
                            "damaged or not a tokenizer file; replace it "
                            "with the model's original)",
                            js->what, (size_t)(js->p - js->start), msg);
}

static void skip_ws(struct tokjson *js)
{
    while (js->p < js->end &&
           (*js->p == ' ' || *js->p == '\n' || *js->p == '\r' ||
            *js->p == '\t'))
        js->p++;
}

static int peek(struct tokjson *js)
{
    skip_ws(js);
    return js->p < js->end ? (unsigned char)*js->p : -1;
}

static int expect(struct tokjson *js, char c)
{
    if (peek(js) != (unsigned char)c)
        return tokjson_fail(js, "expected '%c'", c);
    js->p++;
    return 0;
}

int tokjson_object_begin(struct tokjson *js) { return expect(js, '{'); }
int tokjson_array_begin(struct tokjson *js) { return expect(js, '['); }

bool tokjson_peek_string(struct tokjson *js) { return peek(js) == '"'; }
bool tokjson_peek_array(struct tokjson *js) { return peek(js) == '['; }

bool tokjson_peek_null(struct tokjson *js)
{
    return peek(js) == 'n' && js->end - js->p >= 4 &&
           memcmp(js->p, "null", 4) == 0;
}

static int sbuf_reserve(struct tokjson *js, size_t need)
{
    if (need <= js->sbuf_cap)
        return 0;
    size_t cap = js->sbuf_cap ? js->sbuf_cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return engine_error_set(js->err, -ENOMEM, "%s: string too long",
                                    js->what);
        cap *= 2;
    }
    char *n = realloc(js->sbuf, cap);
    if (!n)
        return engine_error_set(js->err, -ENOMEM,
                                "%s: out of memory reading a string",
                                js->what);
    js->sbuf = n;
    js->sbuf_cap = cap;
    return 0;
}

static int hex4(struct tokjson *js, uint32_t *v)
{
    if (js->end - js->p < 4)
        return tokjson_fail(js, "truncated \\u escape");
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        char c = js->p[i];
        x <<= 4;
        if (c >= '0' && c <= '9')
            x |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            x |= (uint32_t)(c - 'A' + 10);
        else
            return tokjson_fail(js, "bad hex digit in \\u escape");
    }
    js->p += 4;
    *v = x;
    return 0;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decode the string at js->p (after the opening quote has been checked)
 * into sbuf, or only validate and skip it when `decode` is false. */
static int scan_string(struct tokjson *js, bool decode, const char **s,
                       size_t *len)
{
    if (peek(js) != '"')
        return tokjson_fail(js, "expected a string");
    js->p++;
    size_t o = 0;
    for (;;) {
        /* Copy the plain run up to the next quote, backslash, control or
         * non-ASCII byte in one go. */
        const char *q = js->p;
        while (q < js->end) {
            unsigned char c = (unsigned char)*q;
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80)
                break;
            q++;
        }
        size_t run = (size_t)(q - js->p);
        if (decode && run) {
            if (sbuf_reserve(js, o + run + 5) < 0)
                return -ENOMEM;
            memcpy(js->sbuf + o, js->p, run);
            o += run;
        }
        js->p = q;
        if (js->p >= js->end)
            return tokjson_fail(js, "unterminated string");
        unsigned char c = (unsigned char)*js->p;
        if (c == '"') {
            js->p++;
            break;
        }
        if (c < 0x20)
            return tokjson_fail(js, "raw control character 0x%02x in a "
                                "string", c);
        if (decode && sbuf_reserve(js, o + 5) < 0)
            return -ENOMEM;
        if (c >= 0x80) {
            uint32_t cp;
            size_t n = tok_utf8_decode((const uint8_t *)js->p,
                                       (size_t)(js->end - js->p), &cp);
            if (n == 0)
                return tokjson_fail(js, "invalid UTF-8");
            if (decode) {
                memcpy(js->sbuf + o, js->p, n);
                o += n;
            }
            js->p += n;
            continue;
        }
        /* backslash escape */
        js->p++;
        if (js->p >= js->end)
            return tokjson_fail(js, "truncated escape");
        char e = *js->p++;
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (hex4(js, &cp) < 0)
                return -EINVAL;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return tokjson_fail(js, "lone low surrogate \\u%04x", cp);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo;
                if (js->end - js->p < 2 || js->p[0] != '\\' ||
                    js->p[1] != 'u')
                    return tokjson_fail(js, "lone high surrogate \\u%04x",
                                        cp);
                js->p += 2;
                if (hex4(js, &lo) < 0)
                    return -EINVAL;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return tokjson_fail(js, "high surrogate without a low "
                                        "one");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        default:
            return tokjson_fail(js, "unknown escape '\\%c'", e);
        }
        if (decode)
            o += put_utf8(js->sbuf + o, cp);
    }
    if (decode) {
        if (sbuf_reserve(js, o + 1) < 0)
            return -ENOMEM;
        js->sbuf[o] = '\0';
        *s = js->sbuf;
        *len = o;
    }
    return 0;
}

int tokjson_string(struct tokjson *js, const char **s, size_t *len)
{
    return scan_string(js, true, s, len);
}

/* After a value inside a container: ',' continues, `close` ends. Returns 1
 * for more, 0 for the end. */
static int after_value(struct tokjson *js, char close, bool *first)
{
    int c = peek(js);
    if (*first) {
        *first = false;
        if (c == (unsigned char)close) {
            js->p++;
            return 0;
        }
        return 1;
    }
    if (c == ',') {
        js->p++;
        return 1;
    }
    if (c == (unsigned char)close) {
        js->p++;
        return 0;
    }
    return tokjson_fail(js, "expected ',' or '%c'", close);
}

/* The scanner tracks "first element" by looking back at the previous
 * significant character: '{' or '[' means nothing has been read yet. */
static bool at_container_start(struct tokjson *js)
{
    const char *q = js->p;
    while (q > js->start) {
        char c = q[-1];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            q--;
            continue;
        }
        return c == '{' || c == '[';
    }
    return false;
}

int tokjson_object_next(struct tokjson *js, const char **key, size_t *klen)
{
    skip_ws(js);
    bool first = at_container_start(js);
    int r = after_value(js, '}', &first);
    if (r <= 0)
        return r;
    if (tokjson_string(js, key, klen) < 0)
        return -EINVAL;
    if (expect(js, ':') < 0)
        return -EINVAL;
    return 1;
}

int tokjson_array_next(struct tokjson *js)
{
    skip_ws(js);
    bool first = at_container_start(js);
    return after_value(js, ']', &first);
}

static int scan_number(struct tokjson *js)
{
    const char *q = js->p;
    if (q < js->end && *q == '-')
        q++;
    if (q >= js->end || *q < '0' || *q > '9')
        return tokjson_fail(js, "expected a value");
    if (*q == '0')
        q++;
    else
        while (q < js->end && *q >= '0' && *q <= '9')
            q++;
    if (q < js->end && *q == '.') {
        q++;
        if (q >= js->end || *q < '0' || *q > '9')
            return tokjson_fail(js, "bad number");
        while (q < js->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < js->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < js->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= js->end || *q < '0' || *q > '9')
            return tokjson_fail(js, "bad number");
        while (q < js->end && *q >= '0' && *q <= '9')
            q++;
    }
    js->p = q;
    return 0;
}

int tokjson_int(struct tokjson *js, int64_t *v)
{
    skip_ws(js);
    const char *q = js->p;
    bool neg = false;
    if (q < js->end && *q == '-') {
        neg = true;
        q++;
    }
    if (q >= js->end || *q < '0' || *q > '9')
        return tokjson_fail(js, "expected an integer");
    int64_t x = 0;
    while (q < js->end && *q >= '0' && *q <= '9') {
        if (x > (INT64_MAX - 9) / 10)
            return tokjson_fail(js, "integer out of range");
        x = x * 10 + (*q - '0');
        q++;
    }
    if (q < js->end && (*q == '.' || *q == 'e' || *q == 'E'))
        return tokjson_fail(js, "expected an integer, found a fraction");
    js->p = q;
    *v = neg ? -x : x;
    return 0;
}

static int literal(struct tokjson *js, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(js->end - js->p) < n || memcmp(js->p, lit, n) != 0)
        return tokjson_fail(js, "expected a value");
    js->p += n;
    return 0;
}

int tokjson_bool(struct tokjson *js, bool *v)
{
    int c = peek(js);
    if (c == 't') {
        *v = true;
        return literal(js, "true");
    }
    if (c == 'f') {
        *v = false;
        return literal(js, "false");
    }
    return tokjson_fail(js, "expected true or false");
}

int tokjson_skip(struct tokjson *js, const char **span, size_t *span_len)
{
    char stack[TOKJSON_MAX_DEPTH];
    int depth = 0;
    skip_ws(js);
    const char *begin = js->p;
    /* state: expecting a value (true) or ',' / close (false) */
    bool want_value = true;
    for (;;) {
        int c = peek(js);
        if (c < 0)
            return tokjson_fail(js, "unexpected end of file");
        if (want_value) {
            if (c == '{' || c == '[') {
                if (depth >= TOKJSON_MAX_DEPTH)
                    return tokjson_fail(js, "nesting deeper than %d",
                                        TOKJSON_MAX_DEPTH);
                stack[depth++] = (char)(c == '{' ? '}' : ']');
                js->p++;
                int n = peek(js);
                if (n == (unsigned char)stack[depth - 1]) {
                    js->p++;
                    depth--;
                    want_value = false;
                } else if (c == '{') {
                    if (scan_string(js, false, NULL, NULL) < 0 ||
                        expect(js, ':') < 0)
                        return -EINVAL;
                }
                if (!want_value && depth == 0)
                    break;
                continue;
            }
            int r;
            if (c == '"')
                r = scan_string(js, false, NULL, NULL);
            else if (c == 't')
                r = literal(js, "true");
            else if (c == 'f')
                r = literal(js, "false");
            else if (c == 'n')
                r = literal(js, "null");
            else
                r = scan_number(js);
            if (r < 0)
                return r;
            want_value = false;
            if (depth == 0)
                break;
            continue;
        }
        /* after a value inside a container */
        if (c == ',') {
            js->p++;
            if (stack[depth - 1] == '}') {
                if (scan_string(js, false, NULL, NULL) < 0 ||
                    expect(js, ':') < 0)
                    return -EINVAL;
            }
            want_value = true;
            continue;
        }
        if (c == (unsigned char)stack[depth - 1]) {
            js->p++;
            depth--;
            if (depth == 0)
                break;
            continue;
        }
        return tokjson_fail(js, "expected ',' or '%c'", stack[depth - 1]);
    }
    if (span) {
        *span = begin;
        *span_len = (size_t)(js->p - begin);
    }
    return 0;
}

int tokjson_end(struct tokjson *js)
{
    if (peek(js) >= 0)
        return tokjson_fail(js, "trailing data after the top-level value");
    return 0;
}
