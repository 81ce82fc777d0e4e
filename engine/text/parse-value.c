/* SPDX-License-Identifier: Apache-2.0 */
/* parse-value: json.loads / ast.literal_eval look-alikes. See parse-value.h. */
#include "engine/text/parse-value.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"

bool parse_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2; cp = c & 0x1F; min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3; cp = c & 0x0F; min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4; cp = c & 0x07; min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

uint32_t parse_utf8_next(const char *str, size_t n, size_t *i)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned char c = s[*i];
    size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    if (len > n - *i)
        len = n - *i;
    for (size_t k = 1; k < len; k++)
        cp = (cp << 6) | (s[*i + k] & 0x3Fu);
    *i += len;
    return cp;
}

bool parse_py_isspace(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

void parse_py_strip(const char *s, size_t n, size_t *b, size_t *e)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        if (!parse_py_isspace(parse_utf8_next(s, n, &j)))
            break;
        i = j;
    }
    size_t end = n;
    while (end > i) {
        size_t start = end - 1;
        while (start > i && ((unsigned char)s[start] & 0xC0) == 0x80)
            start--;
        size_t j = start;
        if (!parse_py_isspace(parse_utf8_next(s, n, &j)))
            break;
        end = start;
    }
    *b = i;
    *e = end;
}

struct pv {
    const char *s;
    size_t n, i;
    enum parse_value_mode mode;
    int depth;
    struct engine_error *err;
};

static int pv_fail(struct pv *p, int code, const char *what)
{
    return engine_error_set(p->err, code, "%s value: %s at byte %zu",
                            p->mode == PARSE_VALUE_JSON ? "JSON" : "Python literal", what, p->i);
}

static int pv_peek(const struct pv *p)
{
    return p->i < p->n ? (unsigned char)p->s[p->i] : -1;
}

static bool pv_match(struct pv *p, const char *word)
{
    size_t l = strlen(word);
    if (p->n - p->i >= l && memcmp(p->s + p->i, word, l) == 0) {
        p->i += l;
        return true;
    }
    return false;
}

static bool is_ident_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

static void pv_ws(struct pv *p)
{
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (p->mode == PARSE_VALUE_PYTHON && p->depth == 0 && (c == '\n' || c == '\r')) {
            break;  /* outside brackets a newline ends a Python expression */
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            p->i++;
        } else if (p->mode == PARSE_VALUE_PYTHON && c == '\f') {
            p->i++;
        } else if (p->mode == PARSE_VALUE_PYTHON && c == '\\' && p->i + 2 < p->n && p->s[p->i + 1] == '\n') {
            p->i += 2;
        } else if (p->mode == PARSE_VALUE_PYTHON && c == '#') {
            while (p->i < p->n && p->s[p->i] != '\n')
                p->i++;
        } else {
            break;
        }
    }
}

static void put_utf8(struct json_out *o, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp; n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6)); b[1] = (char)(0x80 | (cp & 0x3F)); n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12)); b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18)); b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); b[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    json_out_append(o, b, n);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Read exactly `count` hex digits at p->i. */
static int pv_hex(struct pv *p, int count, uint32_t *out)
{
    uint32_t v = 0;
    if (p->n - p->i < (size_t)count)
        return -1;
    for (int k = 0; k < count; k++) {
        int h = hexval((unsigned char)p->s[p->i + (size_t)k]);
        if (h < 0)
            return -1;
        v = (v << 4) | (uint32_t)h;
    }
    p->i += (size_t)count;
    *out = v;
    return 0;
}

static int json_string(struct pv *p, struct json_out *o)
{
    p->i++; /* opening quote */
    for (;;) {
        if (p->i >= p->n)
            return pv_fail(p, -EINVAL, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') {
            p->i++;
            return o->err;
        }
        if (c < 0x20)
            return pv_fail(p, -EINVAL, "control character in string");
        if (c != '\\') {
            size_t start = p->i;
            while (p->i < p->n && p->s[p->i] != '"' && p->s[p->i] != '\\' && (unsigned char)p->s[p->i] >= 0x20)
                p->i++;
            json_out_append(o, p->s + start, p->i - start);
            continue;
        }
        p->i++;
        int e = pv_peek(p);
        p->i++;
        switch (e) {
        case '"': json_out_putc(o, '"'); break;
        case '\\': json_out_putc(o, '\\'); break;
        case '/': json_out_putc(o, '/'); break;
        case 'b': json_out_putc(o, '\b'); break;
        case 'f': json_out_putc(o, '\f'); break;
        case 'n': json_out_putc(o, '\n'); break;
        case 'r': json_out_putc(o, '\r'); break;
        case 't': json_out_putc(o, '\t'); break;
        case 'u': {
            uint32_t cp, lo;
            if (pv_hex(p, 4, &cp) < 0)
                return pv_fail(p, -EINVAL, "bad \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF && pv_match(p, "\\u")) {
                if (pv_hex(p, 4, &lo) < 0)
                    return pv_fail(p, -EINVAL, "bad \\u escape");
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return pv_fail(p, -EILSEQ, "lone surrogate (cannot be encoded as UTF-8)");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xD800 && cp <= 0xDFFF) {
                return pv_fail(p, -EILSEQ, "lone surrogate (cannot be encoded as UTF-8)");
            }
            put_utf8(o, cp);
            break;
        }
        default:
            p->i--;
            return pv_fail(p, -EINVAL, "invalid escape in string");
        }
    }
}

/* Canonical integer text (digits only, '-' prefix) to a json-c value. */
static struct json_object *int_from_digits(const char *digits, size_t nd, bool neg)
{
    while (nd > 1 && digits[0] == '0') {
        digits++;
        nd--;
    }
    if (nd == 1 && digits[0] == '0')
        neg = false;
    if (nd <= 18) {
        int64_t v = 0;
        for (size_t k = 0; k < nd; k++)
            v = v * 10 + (digits[k] - '0');
        return json_object_new_int64(neg ? -v : v);
    }
    char *t = malloc(nd + 2);
    if (!t)
        return NULL;
    size_t w = 0;
    if (neg)
        t[w++] = '-';
    memcpy(t + w, digits, nd);
    w += nd;
    t[w] = '\0';
    struct json_object *v = json_out_number_new(t, w, strtod(t, NULL));
    free(t);
    return v;
}

static struct json_object *float_from_text(const char *text, size_t len, bool neg)
{
    char small[64];
    char *b = len < sizeof(small) ? small : malloc(len + 1);
    if (!b)
        return NULL;
    memcpy(b, text, len);
    b[len] = '\0';
    double d = strtod(b, NULL);
    if (b != small)
        free(b);
    return json_object_new_double(neg ? -d : d);
}

static int json_number(struct pv *p, struct json_object **out)
{
    size_t start = p->i;
    bool neg = false, is_float = false;
    if (pv_peek(p) == '-') {
        neg = true;
        p->i++;
    }
    size_t ds = p->i;
    if (pv_peek(p) == '0') {
        p->i++;
    } else if (pv_peek(p) >= '1' && pv_peek(p) <= '9') {
        while (pv_peek(p) >= '0' && pv_peek(p) <= '9')
            p->i++;
    } else {
        return pv_fail(p, -EINVAL, "expected a value");
    }
    size_t de = p->i;
    if (pv_peek(p) == '.' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9') {
        is_float = true;
        p->i++;
        while (pv_peek(p) >= '0' && pv_peek(p) <= '9')
            p->i++;
    }
    if (pv_peek(p) == 'e' || pv_peek(p) == 'E') {
        size_t save = p->i;
        p->i++;
        if (pv_peek(p) == '+' || pv_peek(p) == '-')
            p->i++;
        if (pv_peek(p) >= '0' && pv_peek(p) <= '9') {
            is_float = true;
            while (pv_peek(p) >= '0' && pv_peek(p) <= '9')
                p->i++;
        } else {
            p->i = save;   /* json.loads stops before a dangling 'e' */
        }
    }
    *out = is_float ? float_from_text(p->s + start, p->i - start, false)
                    : int_from_digits(p->s + ds, de - ds, neg);
    return *out ? 0 : -ENOMEM;
}

static int pv_value(struct pv *p, struct json_object **out);

static int add_member(struct pv *p, struct json_object *obj, struct json_out *key, struct json_object *val)
{
    if (memchr(key->data ? key->data : "", '\0', key->len)) {
        json_object_put(val);
        return pv_fail(p, -EINVAL, "object key contains U+0000");
    }
    if (json_object_object_add(obj, key->data ? key->data : "", val) < 0) {
        json_object_put(val);
        return -ENOMEM;
    }
    return 0;
}

/* Python dict key -> the string json.dumps writes for it. */
static int py_key_text(struct pv *p, struct json_object *k, struct json_out *key)
{
    const char *text;
    switch (json_object_get_type(k)) {
    case json_type_string:
        json_out_append(key, json_object_get_string(k), (size_t)json_object_get_string_len(k));
        break;
    case json_type_null:
        json_out_puts(key, "null");
        break;
    case json_type_boolean:
        json_out_puts(key, json_object_get_boolean(k) ? "true" : "false");
        break;
    case json_type_int:
    case json_type_double:
        if (json_object_get_type(k) == json_type_double && !json_out_number_text(k, &text)) {
            json_out_double(key, json_object_get_double(k));
        } else {
            struct json_out t;
            json_out_init(&t);
            json_out_value(&t, k);
            json_out_append(key, t.data ? t.data : "", t.len);
            json_out_free(&t);
        }
        break;
    default:
        return pv_fail(p, -EINVAL, "unhashable dict key");
    }
    return key->err;
}

static int container(struct pv *p, struct json_object **out)
{
    char open = p->s[p->i];
    bool is_obj = open == '{';
    char close = open == '{' ? '}' : open == '[' ? ']' : ')';
    bool py = p->mode == PARSE_VALUE_PYTHON;
    int rc = 0;

    if (++p->depth > PARSE_VALUE_MAX_DEPTH)
        return pv_fail(p, -ELOOP, "nesting too deep");
    p->i++;
    struct json_object *c = is_obj ? json_object_new_object() : json_object_new_array();
    if (!c)
        return -ENOMEM;
    size_t count = 0;
    bool saw_comma = false;
    for (;;) {
        pv_ws(p);
        if (pv_peek(p) == close && (count == 0 ? true : (py || !saw_comma))) {
            p->i++;
            break;
        }
        if (count > 0 && !saw_comma) {
            rc = pv_fail(p, -EINVAL, "expected ',' or closing bracket");
            break;
        }
        struct json_object *k = NULL, *v = NULL;
        if (is_obj && !py && pv_peek(p) != '"') {
            rc = pv_fail(p, -EINVAL, "expected a string key");
            break;
        }
        rc = pv_value(p, is_obj ? &k : &v);
        if (rc < 0)
            break;
        if (is_obj) {
            pv_ws(p);
            if (pv_peek(p) != ':') {
                json_object_put(k);
                rc = pv_fail(p, -EINVAL, py ? "expected ':' (sets are not JSON values)" : "expected ':'");
                break;
            }
            p->i++;
            pv_ws(p);
            rc = pv_value(p, &v);
            if (rc < 0) {
                json_object_put(k);
                break;
            }
            struct json_out key;
            json_out_init(&key);
            rc = py_key_text(p, k, &key);
            json_object_put(k);
            if (rc == 0)
                rc = add_member(p, c, &key, v);
            else
                json_object_put(v);
            json_out_free(&key);
            if (rc < 0)
                break;
        } else if (json_object_array_add(c, v) < 0) {
            json_object_put(v);
            rc = -ENOMEM;
            break;
        }
        count++;
        pv_ws(p);
        saw_comma = pv_peek(p) == ',';
        if (saw_comma)
            p->i++;
        /* A parenthesized single value without a comma is not a tuple. */
        if (open == '(' && count == 1 && !saw_comma) {
            pv_ws(p);
            if (pv_peek(p) != ')') {
                rc = pv_fail(p, -EINVAL, "expected ')'");
                break;
            }
            p->i++;
            struct json_object *inner = json_object_get(json_object_array_get_idx(c, 0));
            json_object_put(c);
            p->depth--;
            *out = inner;
            return 0;
        }
    }
    p->depth--;
    if (rc < 0) {
        json_object_put(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* One Python string literal (prefix already checked) appended to o. */
static int py_string_piece(struct pv *p, struct json_out *o, bool raw)
{
    char q = p->s[p->i];
    bool triple = p->n - p->i >= 3 && p->s[p->i + 1] == q && p->s[p->i + 2] == q;
    p->i += triple ? 3 : 1;
    for (;;) {
        if (p->i >= p->n)
            return pv_fail(p, -EINVAL, "unterminated string literal");
        char c = p->s[p->i];
        if (c == q) {
            if (!triple) {
                p->i++;
                return o->err;
            }
            if (p->n - p->i >= 3 && p->s[p->i + 1] == q && p->s[p->i + 2] == q) {
                p->i += 3;
                return o->err;
            }
            json_out_putc(o, c);
            p->i++;
            continue;
        }
        if ((c == '\n' || c == '\r') && !triple)
            return pv_fail(p, -EINVAL, "newline in string literal");
        if (c != '\\') {
            json_out_putc(o, c);
            p->i++;
            continue;
        }
        if (p->i + 1 >= p->n)
            return pv_fail(p, -EINVAL, "unterminated string literal");
        char e = p->s[p->i + 1];
        if (raw) {
            /* A raw string keeps the backslash; it only stops the quote
             * (or a second backslash) after it from being special. */
            json_out_putc(o, '\\');
            json_out_putc(o, e);
            p->i += 2;
            continue;
        }
        p->i += 2;
        uint32_t cp;
        switch (e) {
        case '\n': break;
        case '\\': json_out_putc(o, '\\'); break;
        case '\'': json_out_putc(o, '\''); break;
        case '"': json_out_putc(o, '"'); break;
        case 'a': json_out_putc(o, '\a'); break;
        case 'b': json_out_putc(o, '\b'); break;
        case 'f': json_out_putc(o, '\f'); break;
        case 'n': json_out_putc(o, '\n'); break;
        case 'r': json_out_putc(o, '\r'); break;
        case 't': json_out_putc(o, '\t'); break;
        case 'v': json_out_putc(o, '\v'); break;
        case 'x':
        case 'u':
        case 'U':
            if (pv_hex(p, e == 'x' ? 2 : e == 'u' ? 4 : 8, &cp) < 0)
                return pv_fail(p, -EINVAL, "truncated \\x/\\u/\\U escape");
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                return pv_fail(p, -EILSEQ, "escape is not a UTF-8 encodable code point");
            put_utf8(o, cp);
            break;
        case 'N':
            return pv_fail(p, -ENOTSUP, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                cp = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && pv_peek(p) >= '0' && pv_peek(p) <= '7'; k++) {
                    cp = cp * 8 + (uint32_t)(pv_peek(p) - '0');
                    p->i++;
                }
                put_utf8(o, cp);
            } else {
                /* Unknown escapes keep the backslash. */
                json_out_putc(o, '\\');
                p->i--;
            }
        }
    }
}

/* Returns 1 if a string literal (with optional prefix) starts at p->i. */
static int py_string_start(const struct pv *p, size_t *prefix_len, bool *raw)
{
    size_t k = p->i;
    *raw = false;
    while (k < p->n && k - p->i < 2 && strchr("rRuUbBfF", p->s[k]) && p->s[k] != '\0') {
        if (p->s[k] == 'r' || p->s[k] == 'R')
            *raw = true;
        k++;
    }
    if (k < p->n && (p->s[k] == '\'' || p->s[k] == '"')) {
        *prefix_len = k - p->i;
        return 1;
    }
    return 0;
}

static int py_strings(struct pv *p, struct json_object **out)
{
    struct json_out o;
    json_out_init(&o);
    json_out_append(&o, "", 0);
    size_t plen;
    bool raw;
    int rc = 0;
    bool any = false;
    while (py_string_start(p, &plen, &raw)) {
        for (size_t k = 0; k < plen; k++) {
            char c = p->s[p->i + k];
            if (c == 'b' || c == 'B' || c == 'f' || c == 'F') {
                json_out_free(&o);
                return pv_fail(p, -ENOTSUP, "bytes and f-strings are not literals json.dumps can write");
            }
        }
        if (plen == 2 && !raw) {
            json_out_free(&o);
            return pv_fail(p, -EINVAL, "bad string prefix");
        }
        p->i += plen;
        rc = py_string_piece(p, &o, raw);
        if (rc < 0)
            break;
        any = true;
        pv_ws(p);
    }
    if (rc == 0 && !any)
        rc = pv_fail(p, -EINVAL, "expected a string");
    if (rc == 0 && o.err)
        rc = o.err;
    if (rc == 0) {
        *out = json_object_new_string_len(o.data, (int)(o.len > INT_MAX ? INT_MAX : o.len));
        if (!*out)
            rc = -ENOMEM;
    }
    json_out_free(&o);
    return rc;
}

/* Digits with single '_' separators; returns count of chars consumed. */
static size_t py_digit_run(struct pv *p, int base, struct json_out *digits)
{
    size_t start = p->i;
    bool last_us = true;  /* a run may not start with '_' (base prefix handled by caller) */
    while (p->i < p->n) {
        int c = (unsigned char)p->s[p->i];
        int v = hexval(c);
        if (c == '_' && !last_us) {
            last_us = true;
            p->i++;
            continue;
        }
        if (v < 0 || v >= base)
            break;
        json_out_putc(digits, (char)c);
        last_us = false;
        p->i++;
    }
    if (last_us && p->i > start) {
        p->i--;   /* trailing '_' is not part of the number */
    }
    return p->i - start;
}

/* Digits of an integer in base 2, 8 or 16 to decimal text (malloc'd):
 * little-endian base-1e9 limbs, multiply-and-add per digit. */
static char *based_to_decimal(const char *digits, size_t n, int base)
{
    size_t cap = n / 7 + 2;     /* 16^7 < 1e9: enough limbs for n hex digits */
    uint32_t *limb = calloc(cap, sizeof(*limb));
    size_t nl = 1;
    if (!limb)
        return NULL;
    for (size_t k = 0; k < n; k++) {
        uint64_t carry = (uint64_t)hexval((unsigned char)digits[k]);
        for (size_t i = 0; i < nl; i++) {
            uint64_t x = (uint64_t)limb[i] * (uint64_t)base + carry;
            limb[i] = (uint32_t)(x % 1000000000u);
            carry = x / 1000000000u;
        }
        if (carry && nl < cap)
            limb[nl++] = (uint32_t)carry;
    }
    char *t = malloc(nl * 9 + 1);
    if (t) {
        int w = sprintf(t, "%u", limb[nl - 1]);
        for (size_t i = nl - 1; i-- > 0;)
            w += sprintf(t + w, "%09u", limb[i]);
    }
    free(limb);
    return t;
}

static int py_number(struct pv *p, bool neg, struct json_object **out)
{
    struct json_out d;
    json_out_init(&d);
    json_out_append(&d, "", 0);
    int rc = 0;
    int c0 = pv_peek(p);
    int c1 = p->i + 1 < p->n ? (unsigned char)p->s[p->i + 1] : -1;
    if (c0 == '0' && (c1 == 'x' || c1 == 'X' || c1 == 'o' || c1 == 'O' || c1 == 'b' || c1 == 'B')) {
        int base = (c1 == 'x' || c1 == 'X') ? 16 : (c1 == 'o' || c1 == 'O') ? 8 : 2;
        p->i += 2;
        if (pv_peek(p) == '_')
            p->i++;
        py_digit_run(p, base, &d);
        if (d.len == 0 || d.len > 4096)
            rc = pv_fail(p, -EINVAL, "bad or oversized based integer");
        if (rc == 0 && is_ident_char(pv_peek(p)))
            rc = pv_fail(p, -EINVAL, "invalid number literal");
        if (rc == 0) {
            char *t = based_to_decimal(d.data, d.len, base);
            *out = t ? int_from_digits(t, strlen(t), neg) : NULL;
            free(t);
            if (!*out)
                rc = -ENOMEM;
        }
    } else {
        bool is_float = false;
        size_t int_digits = py_digit_run(p, 10, &d);
        size_t int_len = d.len;
        if (pv_peek(p) == '.') {
            is_float = true;
            p->i++;
            json_out_putc(&d, '.');
            if (pv_peek(p) >= '0' && pv_peek(p) <= '9')
                py_digit_run(p, 10, &d);
            if (int_digits == 0 && d.len == 1)
                rc = pv_fail(p, -EINVAL, "expected digits");
        }
        if (rc == 0 && (pv_peek(p) == 'e' || pv_peek(p) == 'E')) {
            size_t save = p->i, save_len = d.len;
            p->i++;
            json_out_putc(&d, 'e');
            if (pv_peek(p) == '+' || pv_peek(p) == '-')
                json_out_putc(&d, (char)p->s[p->i++]);
            if (pv_peek(p) >= '0' && pv_peek(p) <= '9') {
                py_digit_run(p, 10, &d);
                is_float = true;
            } else {
                p->i = save;
                d.len = save_len;
            }
        }
        if (rc == 0 && (pv_peek(p) == 'j' || pv_peek(p) == 'J'))
            rc = pv_fail(p, -ENOTSUP, "complex numbers are not JSON values");
        if (rc == 0 && is_ident_char(pv_peek(p)))
            rc = pv_fail(p, -EINVAL, "invalid number literal");
        if (rc == 0 && !is_float) {
            /* "01" is a syntax error in Python 3; "00" is fine. */
            bool all_zero = true;
            for (size_t k = 0; k < int_len; k++)
                if (d.data[k] != '0')
                    all_zero = false;
            if (int_len > 1 && d.data[0] == '0' && !all_zero)
                rc = pv_fail(p, -EINVAL, "leading zeros in decimal integer");
        }
        if (rc == 0 && d.err)
            rc = d.err;
        if (rc == 0) {
            *out = is_float ? float_from_text(d.data, d.len, neg) : int_from_digits(d.data, d.len, neg);
            if (!*out)
                rc = -ENOMEM;
        }
    }
    json_out_free(&d);
    return rc;
}

static int pv_value(struct pv *p, struct json_object **out)
{
    int c = pv_peek(p);
    *out = NULL;
    if (c < 0)
        return pv_fail(p, -EINVAL, "unexpected end of input");
    if (c == '{' || c == '[' || (c == '(' && p->mode == PARSE_VALUE_PYTHON))
        return container(p, out);

    if (p->mode == PARSE_VALUE_JSON) {
        if (c == '"') {
            struct json_out o;
            json_out_init(&o);
            json_out_append(&o, "", 0);
            int rc = json_string(p, &o);
            if (rc == 0) {
                *out = json_object_new_string_len(o.data, (int)(o.len > INT_MAX ? INT_MAX : o.len));
                rc = *out ? 0 : -ENOMEM;
            }
            json_out_free(&o);
            return rc;
        }
        if (pv_match(p, "true"))
            return (*out = json_object_new_boolean(1)) ? 0 : -ENOMEM;
        if (pv_match(p, "false"))
            return (*out = json_object_new_boolean(0)) ? 0 : -ENOMEM;
        if (pv_match(p, "null"))
            return 0;   /* NULL is json-c's null */
        if (pv_match(p, "NaN"))
            return (*out = json_object_new_double(NAN)) ? 0 : -ENOMEM;
        if (pv_match(p, "Infinity"))
            return (*out = json_object_new_double(INFINITY)) ? 0 : -ENOMEM;
        if (pv_match(p, "-Infinity"))
            return (*out = json_object_new_double(-INFINITY)) ? 0 : -ENOMEM;
        return json_number(p, out);
    }

    size_t plen;
    bool raw;
    if (py_string_start(p, &plen, &raw))
        return py_strings(p, out);
    if (c == '+' || c == '-') {
        /* One sign on a number literal, which may sit in parentheses:
         * -(5) is fine, +(-5) and -(5,) are not. */
        int parens = 0, rc;
        p->i++;
        pv_ws(p);
        while (pv_peek(p) == '(') {
            p->i++;
            parens++;
            p->depth++;
            pv_ws(p);
        }
        int d = pv_peek(p);
        if (!((d >= '0' && d <= '9') || (d == '.' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9')))
            rc = pv_fail(p, -EINVAL, "a sign must be followed by a number");
        else
            rc = py_number(p, c == '-', out);
        for (; parens > 0; parens--) {
            if (rc == 0) {
                pv_ws(p);
                if (pv_peek(p) == ')')
                    p->i++;
                else
                    rc = pv_fail(p, -EINVAL, "expected ')'");
            }
            p->depth--;
        }
        if (rc < 0) {
            json_object_put(*out);
            *out = NULL;
        }
        return rc;
    }
    if ((c >= '0' && c <= '9') || (c == '.' && p->i + 1 < p->n && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9'))
        return py_number(p, false, out);
    if (is_ident_char(c)) {
        size_t start = p->i;
        while (p->i < p->n && is_ident_char((unsigned char)p->s[p->i]))
            p->i++;
        size_t l = p->i - start;
        if (l == 4 && memcmp(p->s + start, "True", 4) == 0)
            return (*out = json_object_new_boolean(1)) ? 0 : -ENOMEM;
        if (l == 5 && memcmp(p->s + start, "False", 5) == 0)
            return (*out = json_object_new_boolean(0)) ? 0 : -ENOMEM;
        if (l == 4 && memcmp(p->s + start, "None", 4) == 0)
            return 0;
        p->i = start;
        return pv_fail(p, -EINVAL, "name is not a literal");
    }
    return pv_fail(p, -EINVAL, "unexpected character");
}

/*
 * ast.literal_eval's top level (mode "eval"): leading spaces and tabs are
 * stripped; blank and comment lines may come first, but the line holding
 * the expression must not be indented; a newline outside brackets ends the
 * expression (only blank lines and comments may follow); `a, b` without
 * parentheses is a tuple.
 */
static int py_top(struct pv *p, struct json_object **out)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t'))
        p->i++;
    for (;;) {
        pv_ws(p);   /* same-line spaces, comments, continuations */
        if (p->i >= p->n || (p->s[p->i] != '\n' && p->s[p->i] != '\r'))
            break;
        p->i++;
        size_t line = p->i;
        while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\f'))
            p->i++;
        if (p->i > line && p->i < p->n && p->s[p->i] != '\n' && p->s[p->i] != '\r' && p->s[p->i] != '#')
            return pv_fail(p, -EINVAL, "unexpected indent");
    }
    struct json_object *v = NULL;
    int rc = pv_value(p, &v);
    if (rc < 0)
        return rc;
    pv_ws(p);
    if (pv_peek(p) == ',') {
        struct json_object *tuple = json_object_new_array();
        if (!tuple || json_object_array_add(tuple, v) < 0) {
            json_object_put(tuple);
            json_object_put(v);
            return -ENOMEM;
        }
        while (pv_peek(p) == ',') {
            p->i++;
            pv_ws(p);
            int c = pv_peek(p);
            if (c < 0 || c == '\n' || c == '\r')
                break;   /* trailing comma */
            rc = pv_value(p, &v);
            if (rc == 0 && json_object_array_add(tuple, v) < 0) {
                json_object_put(v);
                rc = -ENOMEM;
            }
            if (rc < 0) {
                json_object_put(tuple);
                return rc;
            }
            pv_ws(p);
        }
        v = tuple;
    }
    /* Only blank lines and comments may follow; a last line of bare
     * indentation is an IndentationError. */
    for (;;) {
        pv_ws(p);
        if (p->i < p->n && (p->s[p->i] == '\n' || p->s[p->i] == '\r')) {
            p->i++;
            size_t j = p->i;
            while (j < p->n && (p->s[j] == ' ' || p->s[j] == '\t' || p->s[j] == '\f'))
                j++;
            if (j == p->n && j > p->i) {
                json_object_put(v);
                return pv_fail(p, -EINVAL, "unexpected indent");
            }
        } else {
            break;
        }
    }
    if (p->i != p->n) {
        json_object_put(v);
        return pv_fail(p, -EINVAL, "extra data after the value");
    }
    *out = v;
    return 0;
}

int parse_value(const char *text, size_t len, enum parse_value_mode mode,
                struct json_object **out, struct engine_error *err)
{
    struct pv p = { .s = text, .n = len, .i = 0, .mode = mode, .depth = 0, .err = err };
    *out = NULL;
    if (!text && len)
        return engine_error_set(err, -EINVAL, "parse_value: NULL text");
    if (!parse_utf8_valid(text, len))
        return engine_error_set(err, -EILSEQ, "value text is not valid UTF-8");
    struct json_object *v = NULL;
    int rc;
    if (mode == PARSE_VALUE_PYTHON) {
        rc = py_top(&p, &v);
    } else {
        pv_ws(&p);
        rc = pv_value(&p, &v);
        if (rc == 0) {
            pv_ws(&p);
            if (p.i != p.n)
                rc = pv_fail(&p, -EINVAL, "extra data after the value");
        }
    }
    if (rc < 0) {
        json_object_put(v);
        return rc;
    }
    *out = v;
    return 0;
}
