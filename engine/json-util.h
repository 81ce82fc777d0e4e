/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Small helpers around json-c for the model-directory loader: reading a
 * bounded file, parsing with a size and nesting limit, and typed field
 * access whose error messages name the file and the JSON field path
 * ("config.json: text_config.head_dim ..."). Every JSON file in a model
 * directory is hostile input, so each accessor checks the JSON type and
 * the range before the value is used.
 */
#ifndef RESIDENT_ENGINE_JSON_UTIL_H
#define RESIDENT_ENGINE_JSON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "engine/error.h"

/* Read a whole regular file relative to `dirfd` (AT_FDCWD for a plain path)
 * into a NUL-terminated heap buffer. Files larger than `max` bytes are
 * refused. Returns 0, -ENOENT (with `err` set) when absent, or -errno. */
int ejson_read_file(int dirfd, const char *name, const char *what, size_t max,
                    char **out, size_t *out_len, struct engine_error *err);

/* Parse `len` bytes of JSON text in strict mode with at most `max_depth`
 * levels of nesting. NUL bytes and trailing garbage are refused; UTF-8 is
 * validated. On success `*out` holds a reference the caller must
 * json_object_put(). `what` names the file in messages. */
int ejson_parse(const char *text, size_t len, int max_depth, const char *what,
                struct json_object **out, struct engine_error *err);

/* Field lookup: NULL when absent or JSON null. */
struct json_object *ejson_get(struct json_object *obj, const char *key);

/* Typed reads of obj[key]. `what` is the file, `path` the dotted prefix of
 * `obj` ("" or "text_config."). They return 0 when set, 1 when the field is
 * absent or null (the output is left untouched), or -EINVAL with `err` set
 * when the value has the wrong type or is outside [lo, hi]. */
int ejson_get_int(struct json_object *obj, const char *key, const char *what,
                  const char *path, int64_t lo, int64_t hi, int64_t *out,
                  struct engine_error *err);
int ejson_get_double(struct json_object *obj, const char *key, const char *what,
                     const char *path, double lo, double hi, double *out,
                     struct engine_error *err);
int ejson_get_bool(struct json_object *obj, const char *key, const char *what,
                   const char *path, bool *out, struct engine_error *err);
/* `*out` points into `obj` and lives as long as it does. */
int ejson_get_string(struct json_object *obj, const char *key, const char *what,
                     const char *path, const char **out, size_t *out_len,
                     struct engine_error *err);

/* Iterate an object's members in file order as `it`; read them with
 * json_object_iter_peek_name(&it) / json_object_iter_peek_value(&it).
 * (json-c's own json_object_object_foreach expands to a GNU statement
 * expression, which clang -Wpedantic warns about.) `obj` must be an object. */
#define ejson_foreach(obj, it)                                                  \
    for (struct json_object_iterator it = json_object_iter_begin(obj),          \
                                     it##_end = json_object_iter_end(obj);      \
         !json_object_iter_equal(&it, &it##_end); json_object_iter_next(&it))

/* Strict UTF-8 check (no overlong forms, surrogates or code points above
 * U+10FFFF) that also refuses NUL bytes. */
bool ejson_utf8_valid(const char *s, size_t len);

#endif
