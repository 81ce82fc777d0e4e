/* SPDX-License-Identifier: Apache-2.0 */
/*
 * parse-value: two small readers that turn text into json-c values with the
 * semantics of the Python functions vLLM and transformers use:
 *
 *   PARSE_VALUE_JSON    json.loads: RFC 8259 plus NaN / Infinity /
 *                       -Infinity, integers of any size (kept as exact
 *                       text, see json_out_number_new), duplicate keys keep
 *                       the first position and the last value, surrounding
 *                       " \t\n\r" allowed. Control characters inside strings
 *                       and lone surrogates are rejected.
 *   PARSE_VALUE_PYTHON  ast.literal_eval restricted to what json.dumps can
 *                       write back: str literals (quotes ' " ''' """,
 *                       prefixes r/u, escapes, implicit concatenation), int
 *                       (decimal, 0x, 0o, 0b, underscores), float, one unary
 *                       sign on a number, True / False / None, list, tuple
 *                       (becomes a list), dict with str / int / float / bool /
 *                       None keys (written as json.dumps writes such keys),
 *                       parentheses and # comments. Bytes, sets, complex
 *                       numbers and \N{...} escapes fail: vLLM's json.dumps
 *                       would fail on the first three too, and the caller
 *                       then keeps the raw string.
 *
 * Input must be valid UTF-8 (-EILSEQ otherwise). Nesting deeper than
 * PARSE_VALUE_MAX_DEPTH fails with -ELOOP instead of recursing further.
 * Returns 0 and a new reference in *out, or a negative errno.
 */
#ifndef RESIDENT_ENGINE_TEXT_PARSE_VALUE_H
#define RESIDENT_ENGINE_TEXT_PARSE_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;
struct engine_error;

#define PARSE_VALUE_MAX_DEPTH 256

enum parse_value_mode {
    PARSE_VALUE_JSON,
    PARSE_VALUE_PYTHON,
};

int parse_value(const char *text, size_t len, enum parse_value_mode mode,
                struct json_object **out, struct engine_error *err);

/* Validate UTF-8 (no surrogates, no overlongs, max U+10FFFF). */
bool parse_utf8_valid(const char *s, size_t n);
/* Decode one code point at s[*i] (advancing *i); input must be valid. */
uint32_t parse_utf8_next(const char *s, size_t n, size_t *i);
/* Python str.isspace() for one code point. */
bool parse_py_isspace(uint32_t cp);
/* Python str.strip() bounds: [*b, *e) within [0, n). */
void parse_py_strip(const char *s, size_t n, size_t *b, size_t *e);

#endif
