/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json-out: a growable byte buffer plus a serializer that writes JSON the
 * way Python's `json.dumps(x, ensure_ascii=False)` does.
 *
 * Why not json-c's own printer: the Qwen3.6 chat template (via transformers'
 * `tojson` filter) and vLLM's tool parser both produce their JSON with
 * Python's json module, and the prompt must be byte-identical to theirs.
 * Python differs from json-c in every detail that matters here:
 *   - separators are ", " and ": " (json-c: "," and ":" or "  " pretty);
 *   - floats use repr(): the shortest text that round-trips, "1.0" for an
 *     integral float, exponent form outside 1e-4 <= |x| < 1e16 ("1e+16",
 *     "1e-05"), and NaN / Infinity / -Infinity for the non-finite values;
 *   - only '"', '\\', and C0 controls are escaped; '/' and all non-ASCII
 *     (including U+2028) are written raw;
 *   - integers have arbitrary precision.
 * Key order is insertion order (json-c keeps it, as Python dicts do).
 *
 * Numbers whose exact text must survive (integers beyond 64 bits, produced
 * by parse-value.c) are json-c doubles tagged with `json_out_number_new`;
 * the serializer writes their stored text verbatim.
 */
#ifndef RESIDENT_ENGINE_TEXT_JSON_OUT_H
#define RESIDENT_ENGINE_TEXT_JSON_OUT_H

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json_object.h>
#include <json-c/linkhash.h>

/* Walk an object's members in insertion order. json-c's own
 * json_object_object_foreach is a GNU statement expression, which clang
 * reports under -Wpedantic; this is the same walk without one. `obj` must
 * be an object. */
#define JSON_OUT_FOREACH(obj, ent) \
    for (struct lh_entry *ent = lh_table_head(json_object_get_object((struct json_object *)(obj))); ent; \
         ent = lh_entry_next(ent))
#define JSON_OUT_KEY(ent) ((const char *)lh_entry_k(ent))
#define JSON_OUT_VAL(ent) ((struct json_object *)lh_entry_v(ent))

/* Nesting limit for serialization (Python's default recursion limit is
 * about 1000 frames; inputs come from parse-value.c, which stops at
 * PARSE_VALUE_MAX_DEPTH, so this is never reached for parsed data). */
#define JSON_OUT_MAX_DEPTH 1024

struct json_out {
    char  *data;    /* NUL-terminated when non-NULL                        */
    size_t len;
    size_t cap;
    int    err;     /* first failure: -ENOMEM, -EOVERFLOW or -ELOOP; sticky */
};

void json_out_init(struct json_out *o);
void json_out_free(struct json_out *o);
/* Hand the buffer to the caller (free() it); NULL with o->err on failure. */
char *json_out_take(struct json_out *o, size_t *len);

void json_out_append(struct json_out *o, const char *s, size_t n);
void json_out_puts(struct json_out *o, const char *s);
void json_out_putc(struct json_out *o, char c);

/* "..." with Python json.dumps escapes (ensure_ascii=False). */
void json_out_string(struct json_out *o, const char *s, size_t n);
/* Python repr(float), as json.dumps writes it (NaN, Infinity, -Infinity). */
void json_out_double(struct json_out *o, double d);
/* Python str(float): like repr but "nan", "inf", "-inf". */
void json_out_double_str(struct json_out *o, double d);
/* json.dumps(v, ensure_ascii=False). NULL writes "null". Returns o->err. */
int json_out_value(struct json_out *o, const struct json_object *v);

/* A number object whose serialized text is exactly `text` (an integer in
 * canonical decimal form); `approx` is its value as a double for readers
 * that call json_object_get_double. NULL on allocation failure. */
struct json_object *json_out_number_new(const char *text, size_t len, double approx);
/* True when v was made by json_out_number_new; *text gets the stored text. */
bool json_out_number_text(const struct json_object *v, const char **text);

#endif
