/* SPDX-License-Identifier: Apache-2.0 */
/* json-out: Python-json.dumps-exact serializer. See json-out.h. */
#include "engine/text/json-out.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <json-c/printbuf.h>

void json_out_init(struct json_out *o)
{
    memset(o, 0, sizeof(*o));
}

void json_out_free(struct json_out *o)
{
    free(o->data);
    memset(o, 0, sizeof(*o));
}

char *json_out_take(struct json_out *o, size_t *len)
{
    if (o->err == 0 && o->data == NULL)
        json_out_append(o, "", 0);
    if (o->err) {
        json_out_free(o);
        return NULL;
    }
    char *p = o->data;
    if (len)
        *len = o->len;
    o->data = NULL;
    o->len = o->cap = 0;
    return p;
}

void json_out_append(struct json_out *o, const char *s, size_t n)
{
    if (o->err)
        return;
    if (n > SIZE_MAX - 1 - o->len) {
        o->err = -EOVERFLOW;
        return;
    }
    size_t need = o->len + n + 1;
    if (need > o->cap) {
        size_t cap = o->cap ? o->cap : 64;
        while (cap < need) {
            if (cap > SIZE_MAX / 2) {
                cap = need;
                break;
            }
            cap *= 2;
        }
        char *p = realloc(o->data, cap);
        if (!p) {
            o->err = -ENOMEM;
            return;
        }
        o->data = p;
        o->cap = cap;
    }
    if (n)
        memcpy(o->data + o->len, s, n);
    o->len += n;
    o->data[o->len] = '\0';
}

void json_out_puts(struct json_out *o, const char *s)
{
    json_out_append(o, s, strlen(s));
}

void json_out_putc(struct json_out *o, char c)
{
    json_out_append(o, &c, 1);
}

void json_out_string(struct json_out *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;

    json_out_putc(o, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        switch (c) {
        case '"':  esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
                u[4] = hex[c >> 4]; u[5] = hex[c & 15]; u[6] = '\0';
                esc = u;
            }
        }
        if (esc) {
            json_out_append(o, s + run, i - run);
            json_out_puts(o, esc);
            run = i + 1;
        }
    }
    json_out_append(o, s + run, n - run);
    json_out_putc(o, '"');
}

/*
 * Python's float repr: the shortest decimal string that reads back as the
 * same double (found by trying 1..17 significant digits; for a given digit
 * count the correctly rounded candidate is the closest one, so it
 * round-trips whenever any candidate of that length does), then laid out
 * with repr's rules: positional when -4 <= exponent < 16, else d.ddde+XX.
 */
static void format_repr(char *out, size_t cap, double d)
{
    char buf[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    /* buf: [-]D[.DDD]e(+|-)XX */
    const char *p = buf;
    bool neg = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    char digits[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < sizeof(digits) - 1)
            digits[nd++] = *p;
    int exp10 = (*p == 'e') ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';

    size_t w = 0;
#define PUT(ch) do { if (w + 1 < cap) out[w++] = (ch); } while (0)
    if (neg)
        PUT('-');
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 >= 0) {
            for (int i = 0; i <= exp10; i++)
                PUT((size_t)i < nd ? digits[i] : '0');
            PUT('.');
            if ((size_t)exp10 + 1 < nd) {
                for (size_t i = (size_t)exp10 + 1; i < nd; i++)
                    PUT(digits[i]);
            } else {
                PUT('0');
            }
        } else {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -exp10 - 1; i++)
                PUT('0');
            for (size_t i = 0; i < nd; i++)
                PUT(digits[i]);
        }
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (size_t i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        char e[16];
        snprintf(e, sizeof(e), "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        for (const char *q = e; *q; q++)
            PUT(*q);
    }
#undef PUT
    out[w] = '\0';
}

void json_out_double(struct json_out *o, double d)
{
    char buf[48];
    if (isnan(d)) {
        json_out_puts(o, "NaN");
    } else if (isinf(d)) {
        json_out_puts(o, d < 0 ? "-Infinity" : "Infinity");
    } else {
        format_repr(buf, sizeof(buf), d);
        json_out_puts(o, buf);
    }
}

void json_out_double_str(struct json_out *o, double d)
{
    char buf[48];
    if (isnan(d)) {
        json_out_puts(o, "nan");
    } else if (isinf(d)) {
        json_out_puts(o, d < 0 ? "-inf" : "inf");
    } else {
        format_repr(buf, sizeof(buf), d);
        json_out_puts(o, buf);
    }
}

/* Exact-text numbers carry "\x01" + text as json-c userdata; the marker
 * byte cannot begin the number text json-c's own tokenizer stores. */
#define NUMBER_TAG '\x01'

static int number_serialize(struct json_object *jso, struct printbuf *pb, int level, int flags)
{
    (void)level;
    (void)flags;
    const char *ud = json_object_get_userdata(jso);
    if (!ud)
        return printbuf_memappend(pb, "0", 1);
    return printbuf_memappend(pb, ud + 1, (int)strlen(ud + 1));
}

struct json_object *json_out_number_new(const char *text, size_t len, double approx)
{
    if (len > (size_t)INT32_MAX - 2)
        return NULL;
    struct json_object *v = json_object_new_double(approx);
    char *ud = malloc(len + 2);
    if (!v || !ud) {
        json_object_put(v);
        free(ud);
        return NULL;
    }
    ud[0] = NUMBER_TAG;
    memcpy(ud + 1, text, len);
    ud[len + 1] = '\0';
    json_object_set_serializer(v, number_serialize, ud, json_object_free_userdata);
    return v;
}

bool json_out_number_text(const struct json_object *v, const char **text)
{
    if (!v || json_object_get_type(v) != json_type_double)
        return false;
    const char *ud = json_object_get_userdata((struct json_object *)v);
    if (!ud || ud[0] != NUMBER_TAG)
        return false;
    if (text)
        *text = ud + 1;
    return true;
}

static void out_value(struct json_out *o, const struct json_object *cv, int depth)
{
    struct json_object *v = (struct json_object *)cv;
    char buf[32];
    const char *text;

    if (o->err)
        return;
    if (depth > JSON_OUT_MAX_DEPTH) {
        o->err = -ELOOP;
        return;
    }
    switch (json_object_get_type(v)) {
    case json_type_null:
        json_out_puts(o, "null");
        break;
    case json_type_boolean:
        json_out_puts(o, json_object_get_boolean(v) ? "true" : "false");
        break;
    case json_type_int:
        if (json_object_get_int64(v) == INT64_MAX && json_object_get_uint64(v) > (uint64_t)INT64_MAX)
            snprintf(buf, sizeof(buf), "%llu", (unsigned long long)json_object_get_uint64(v));
        else
            snprintf(buf, sizeof(buf), "%lld", (long long)json_object_get_int64(v));
        json_out_puts(o, buf);
        break;
    case json_type_double:
        if (json_out_number_text(v, &text))
            json_out_puts(o, text);
        else
            json_out_double(o, json_object_get_double(v));
        break;
    case json_type_string:
        json_out_string(o, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        break;
    case json_type_array: {
        size_t n = json_object_array_length(v);
        json_out_putc(o, '[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                json_out_puts(o, ", ");
            out_value(o, json_object_array_get_idx(v, i), depth + 1);
        }
        json_out_putc(o, ']');
        break;
    }
    case json_type_object: {
        bool first = true;
        json_out_putc(o, '{');
        JSON_OUT_FOREACH(v, ent) {
            if (!first)
                json_out_puts(o, ", ");
            first = false;
            json_out_string(o, JSON_OUT_KEY(ent), strlen(JSON_OUT_KEY(ent)));
            json_out_puts(o, ": ");
            out_value(o, JSON_OUT_VAL(ent), depth + 1);
        }
        json_out_putc(o, '}');
        break;
    }
    }
}

int json_out_value(struct json_out *o, const struct json_object *v)
{
    out_value(o, v, 0);
    return o->err;
}
