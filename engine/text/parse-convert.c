/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Schema-typed conversion of qwen3_coder parameter values, after vLLM's
 * Qwen3CoderToolParser._convert_param_value (spec text.md §4):
 *
 *   not in the schema                 -> the raw string
 *   type from "type", or the first non-null "anyOf" type; a non-string
 *   "type" behaves as an unknown type (Python's str(x).lower() of a list,
 *   number or bool matches none of the names below)
 *   nullable schema and null/none     -> null
 *   string/str/text/varchar/char/enum -> the raw string
 *   null/none (any case)              -> null
 *   int*, uint*, long*, short*, unsigned* -> Python int(), else the string
 *   num*, float*                      -> Python float(); integral -> int
 *   boolean/bool/binary               -> lower() == "true"
 *   object, array, arr, dict*, list* -> json.loads (a decoded str gets
 *                                        literal_eval'ed again), then
 *                                        ast.literal_eval, else the string
 *   anything else                     -> ast.literal_eval, else the string
 *
 * Deliberate differences, all where vLLM raises or keeps state we do not:
 * float("inf") stays a string (vLLM's int(inf) raises OverflowError and the
 * whole message falls back to content); values json.dumps cannot write
 * (bytes, sets, complex) stay strings; Unicode digits are not accepted by
 * int()/float() here.
 */
#include "engine/text/parse-output.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-value.h"

static struct json_object *obj_get(const struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (o && json_object_is_type(o, json_type_object) && json_object_object_get_ex((struct json_object *)o, key, &v))
        return v;
    return NULL;
}

static bool obj_has(const struct json_object *o, const char *key)
{
    return o && json_object_is_type(o, json_type_object) &&
           json_object_object_get_ex((struct json_object *)o, key, NULL);
}

const struct json_object *chat_tool_properties(const struct json_object *tools, const char *func, size_t func_len)
{
    if (!tools || !json_object_is_type(tools, json_type_array))
        return NULL;
    for (size_t i = 0; i < json_object_array_length(tools); i++) {
        struct json_object *t = json_object_array_get_idx(tools, i);
        struct json_object *fn = obj_has(t, "function") ? obj_get(t, "function") : t;
        struct json_object *name = obj_get(fn, "name");
        if (!name || !json_object_is_type(name, json_type_string))
            continue;
        if ((size_t)json_object_get_string_len(name) != func_len ||
            memcmp(json_object_get_string(name), func, func_len) != 0)
            continue;
        struct json_object *props = obj_get(obj_get(fn, "parameters"), "properties");
        return (props && json_object_is_type(props, json_type_object)) ? props : NULL;
    }
    return NULL;
}

/* str(x).strip().lower() for a schema "type"; non-strings yield "" (an
 * unknown type: no name in the tables below can match their str()). */
static void type_name(const struct json_object *t, char *out, size_t cap)
{
    out[0] = '\0';
    if (!t || !json_object_is_type(t, json_type_string))
        return;
    const char *s = json_object_get_string((struct json_object *)t);
    size_t n = (size_t)json_object_get_string_len(t), b, e;
    parse_py_strip(s, n, &b, &e);
    size_t w = 0;
    for (size_t i = b; i < e && w + 1 < cap; i++) {
        char c = s[i];
        out[w++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    out[w] = '\0';
    if (e - b >= cap) {
        out[0] = '?';   /* too long to be a known name */
        out[1] = '\0';
    }
}

static bool starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ieq(const char *s, size_t n, const char *word)
{
    if (n != strlen(word))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != word[i])
            return false;
    }
    return true;
}

/* Python int(s) (ASCII digits): canonical decimal text into `out`. */
static bool py_int(const char *s, size_t n, struct json_out *out)
{
    size_t b, e;
    parse_py_strip(s, n, &b, &e);
    bool neg = false;
    if (b < e && (s[b] == '+' || s[b] == '-')) {
        neg = s[b] == '-';
        b++;
    }
    if (b >= e || s[b] == '_' || s[e - 1] == '_')
        return false;
    struct json_out d;
    json_out_init(&d);
    for (size_t i = b; i < e; i++) {
        if (s[i] == '_') {
            if (s[i - 1] == '_')
                goto fail;
            continue;
        }
        if (s[i] < '0' || s[i] > '9')
            goto fail;
        if (d.len == 1 && d.data[0] == '0')
            d.len = 0;  /* drop leading zeros */
        json_out_putc(&d, s[i]);
    }
    if (d.err)
        goto fail;
    if (neg && !(d.len == 1 && d.data[0] == '0'))
        json_out_putc(out, '-');
    json_out_append(out, d.data, d.len);
    json_out_free(&d);
    return true;
fail:
    json_out_free(&d);
    return false;
}

/* Python float(s): finite value in *v; false if not a float or non-finite. */
static bool py_float(const char *s, size_t n, double *v)
{
    size_t b, e;
    parse_py_strip(s, n, &b, &e);
    if (b >= e || e - b > 4096)
        return false;
    char *t = malloc(e - b + 1);
    if (!t)
        return false;
    size_t w = 0;
    bool digit_before = false, ok = true, any_digit = false, seen_e = false, seen_dot = false;
    for (size_t i = b; i < e && ok; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            t[w++] = c;
            digit_before = true;
            any_digit = true;
        } else if (c == '_') {
            /* PEP 515: only between digits */
            ok = digit_before && i + 1 < e && s[i + 1] >= '0' && s[i + 1] <= '9';
            digit_before = false;
        } else if ((c == '+' || c == '-') && (w == 0 || t[w - 1] == 'e')) {
            t[w++] = c;
            digit_before = false;
        } else if (c == '.' && !seen_dot && !seen_e) {
            t[w++] = c;
            seen_dot = true;
            digit_before = false;
        } else if ((c == 'e' || c == 'E') && any_digit && !seen_e) {
            t[w++] = 'e';
            seen_e = true;
            digit_before = false;
        } else {
            ok = false;
        }
    }
    t[w] = '\0';
    if (ok && any_digit && w > 0 && t[w - 1] != 'e' && t[w - 1] != '+' && t[w - 1] != '-') {
        char *end;
        *v = strtod(t, &end);
        ok = *end == '\0' && isfinite(*v);
    } else {
        ok = false;
    }
    free(t);
    return ok;
}

/* Exact decimal text of an integral double (Python int(float)). */
static void integral_double_text(double d, struct json_out *out)
{
    if (fabs(d) < 9.0e18) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%lld", (long long)d);
        json_out_puts(out, buf);
        return;
    }
    int exp;
    double m = frexp(fabs(d), &exp);         /* |d| = m * 2^exp, 0.5 <= m < 1 */
    uint64_t mant = (uint64_t)ldexp(m, 53);  /* exact: d is a double */
    exp -= 53;
    /* Little-endian base-1e9 limbs: mant * 2^exp with exp >= 0 here. */
    uint32_t limbs[40] = { 0 };
    size_t nl = 0;
    while (mant) {
        limbs[nl++] = (uint32_t)(mant % 1000000000u);
        mant /= 1000000000u;
    }
    for (int k = 0; k < exp; k++) {
        uint32_t carry = 0;
        for (size_t i = 0; i < nl; i++) {
            uint64_t x = (uint64_t)limbs[i] * 2 + carry;
            limbs[i] = (uint32_t)(x % 1000000000u);
            carry = (uint32_t)(x / 1000000000u);
        }
        if (carry && nl < 40)
            limbs[nl++] = carry;
    }
    char buf[16];
    if (d < 0)
        json_out_putc(out, '-');
    snprintf(buf, sizeof(buf), "%u", limbs[nl - 1]);
    json_out_puts(out, buf);
    for (size_t i = nl - 1; i-- > 0;) {
        snprintf(buf, sizeof(buf), "%09u", limbs[i]);
        json_out_puts(out, buf);
    }
}

static bool literal(const char *s, size_t n, enum parse_value_mode mode, struct json_object **v)
{
    return parse_value(s, n, mode, v, NULL) == 0;
}

void chat_param_convert(const struct json_object *tools, const char *func, size_t func_len,
                        const char *param, size_t param_len, const char *value, size_t len,
                        struct json_out *out)
{
    const struct json_object *props = chat_tool_properties(tools, func, func_len);
    struct json_object *pc = NULL;
    char ptype[64];
    bool allows_null = false;

    if (props) {
        /* json-c keys are C strings: a name with NUL cannot be in the schema. */
        if (!memchr(param, '\0', param_len)) {
            char *key = strndup(param, param_len);
            if (key) {
                if (!json_object_object_get_ex((struct json_object *)props, key, &pc))
                    props = NULL;
                free(key);
            } else {
                props = NULL;
            }
        } else {
            props = NULL;
        }
    }
    if (!props) {
        json_out_string(out, value, len);
        return;
    }

    strcpy(ptype, "string");
    if (obj_has(pc, "type")) {
        type_name(obj_get(pc, "type"), ptype, sizeof(ptype));
        allows_null = strcmp(ptype, "null") == 0;
    } else if (obj_has(pc, "anyOf")) {
        struct json_object *any = obj_get(pc, "anyOf");
        bool picked = false;
        for (size_t i = 0; json_object_is_type(any, json_type_array) && i < json_object_array_length(any); i++) {
            struct json_object *opt = json_object_array_get_idx(any, i);
            if (!obj_has(opt, "type"))
                continue;
            char t[64];
            type_name(obj_get(opt, "type"), t, sizeof(t));
            if (strcmp(t, "null") == 0) {
                allows_null = true;
            } else if (!picked) {
                strcpy(ptype, t);
                picked = true;
            }
        }
    }

    bool is_null_word = ieq(value, len, "null") || ieq(value, len, "none");
    if (allows_null && is_null_word) {
        json_out_puts(out, "null");
        return;
    }
    static const char *const string_types[] = { "string", "str", "text", "varchar", "char", "enum", NULL };
    for (int i = 0; string_types[i]; i++) {
        if (strcmp(ptype, string_types[i]) == 0) {
            json_out_string(out, value, len);
            return;
        }
    }
    if (is_null_word) {
        json_out_puts(out, "null");
        return;
    }
    if (starts(ptype, "int") || starts(ptype, "uint") || starts(ptype, "long") || starts(ptype, "short") ||
        starts(ptype, "unsigned")) {
        size_t mark = out->len;
        if (!py_int(value, len, out)) {
            out->len = mark;
            json_out_string(out, value, len);
        }
        return;
    }
    if (starts(ptype, "num") || starts(ptype, "float")) {
        double d;
        if (!py_float(value, len, &d))
            json_out_string(out, value, len);
        else if (d == floor(d))
            integral_double_text(d, out);
        else
            json_out_double(out, d);
        return;
    }
    if (strcmp(ptype, "boolean") == 0 || strcmp(ptype, "bool") == 0 || strcmp(ptype, "binary") == 0) {
        json_out_puts(out, ieq(value, len, "true") ? "true" : "false");
        return;
    }

    bool container = strcmp(ptype, "object") == 0 || strcmp(ptype, "array") == 0 || strcmp(ptype, "arr") == 0 ||
                     starts(ptype, "dict") || starts(ptype, "list");
    struct json_object *v = NULL;
    if (container && literal(value, len, PARSE_VALUE_JSON, &v)) {
        if (json_object_is_type(v, json_type_string)) {
            struct json_object *again = NULL;
            if (literal(json_object_get_string(v), (size_t)json_object_get_string_len(v), PARSE_VALUE_PYTHON, &again)) {
                json_object_put(v);
                v = again;
            }
        }
        json_out_value(out, v);
        json_object_put(v);
        return;
    }
    if (literal(value, len, PARSE_VALUE_PYTHON, &v)) {
        if (container && json_object_is_type(v, json_type_string)) {
            struct json_object *again = NULL;
            if (literal(json_object_get_string(v), (size_t)json_object_get_string_len(v), PARSE_VALUE_PYTHON, &again)) {
                json_object_put(v);
                v = again;
            }
        }
        json_out_value(out, v);
        json_object_put(v);
        return;
    }
    json_out_string(out, value, len);
}
