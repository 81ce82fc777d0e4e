/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the json.loads / ast.literal_eval readers and the
 * schema-typed argument conversion on arbitrary text. Byte 0 picks the
 * mode. Whatever is accepted must serialize to text that the JSON reader
 * accepts again and that serializes to the same bytes (a fixed point).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-output.h"
#include "engine/text/parse-value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char TOOLS[] =
    "[{\"function\": {\"name\": \"f\", \"parameters\": {\"properties\": {\"i\": {\"type\": \"int\"}, "
    "\"x\": {\"type\": \"float\"}, \"b\": {\"type\": \"bool\"}, \"o\": {\"type\": \"dict\"}, \"a\": {\"type\": \"list\"}, "
    "\"z\": {\"type\": \"thing\"}, \"s\": {\"type\": \"str\"}, \"n\": {\"type\": \"null\"}}}}}]";
static const char *const PARAMS[] = { "i", "x", "b", "o", "a", "z", "s", "n" };
static struct json_object *tools;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!tools && parse_value(TOOLS, sizeof(TOOLS) - 1, PARSE_VALUE_JSON, &tools, NULL) < 0)
        abort();
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    struct json_object *v = NULL;
    enum parse_value_mode mode = (data[0] & 1) ? PARSE_VALUE_PYTHON : PARSE_VALUE_JSON;
    if (parse_value(text, len, mode, &v, NULL) == 0) {
        struct json_out a, b;
        json_out_init(&a);
        json_out_init(&b);
        if (json_out_value(&a, v) == 0) {
            struct json_object *w = NULL;
            if (parse_value(a.data, a.len, PARSE_VALUE_JSON, &w, NULL) < 0)
                abort();   /* our output must be JSON python can read */
            if (json_out_value(&b, w) == 0 && (a.len != b.len || memcmp(a.data, b.data, a.len) != 0))
                abort();   /* and a fixed point */
            json_object_put(w);
        }
        json_out_free(&a);
        json_out_free(&b);
        json_object_put(v);
    }

    struct json_out c;
    json_out_init(&c);
    const char *param = PARAMS[(data[0] >> 1) % 8];
    chat_param_convert(tools, "f", 1, param, strlen(param), text, len, &c);
    struct json_object *w = NULL;
    if (!c.err && parse_value(c.data, c.len, PARSE_VALUE_JSON, &w, NULL) < 0 && parse_utf8_valid(text, len))
        abort();   /* a converted value is always JSON */
    json_object_put(w);
    json_out_free(&c);
    return 0;
}
