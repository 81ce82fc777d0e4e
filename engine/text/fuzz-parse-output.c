/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the reasoning + tool-call output parser on arbitrary
 * text. Byte 0 picks thinking on/off and tool parsing on/off; bytes 1-2
 * give two split points; the rest is the model output. The whole-text
 * result and the streamed result (fed in three pieces, and byte by byte
 * for short inputs) must be identical, and every tool call's arguments
 * must be a JSON object.
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
    "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\", \"properties\": "
    "{\"s\": {\"type\": \"string\"}, \"i\": {\"type\": \"integer\"}, \"x\": {\"type\": \"number\"}, "
    "\"b\": {\"type\": \"boolean\"}, \"o\": {\"type\": \"object\"}, \"a\": {\"type\": \"array\"}, "
    "\"n\": {\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"null\"}]}, \"z\": {\"type\": \"custom\"}}}}}]";

static struct json_object *tools;

static void id0(void *user, size_t index, char hex[24])
{
    (void)user;
    memset(hex, '0', 24);
    hex[23] = (char)('0' + index % 10);
}

struct acc {
    struct json_out r, c, t;
};

static int on_delta(void *user, const struct chat_delta *d)
{
    struct acc *a = user;
    switch (d->type) {
    case CHAT_DELTA_REASONING: json_out_append(&a->r, d->text, d->len); break;
    case CHAT_DELTA_CONTENT:   json_out_append(&a->c, d->text, d->len); break;
    case CHAT_DELTA_TOOL_NAME:
        json_out_putc(&a->t, '|');
        json_out_append(&a->t, d->text, d->len);
        json_out_putc(&a->t, ':');
        break;
    case CHAT_DELTA_TOOL_ARGS: json_out_append(&a->t, d->text, d->len); break;
    }
    return 0;
}

static bool same(const struct json_out *o, const char *s, size_t n)
{
    return o->len == n && (n == 0 || memcmp(o->data, s, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    if (!tools && parse_value(TOOLS, sizeof(TOOLS) - 1, PARSE_VALUE_JSON, &tools, NULL) < 0)
        abort();
    struct chat_parser_opts opts = CHAT_PARSER_OPTS_DEFAULT;
    opts.thinking = data[0] & 1;
    opts.tools_enabled = !(data[0] & 2);
    opts.tools = (data[0] & 4) ? NULL : tools;
    opts.id_fn = id0;
    const char *text = (const char *)data + 3;
    size_t len = size - 3;
    size_t c1 = len ? data[1] % (len + 1) : 0, c2 = len ? data[2] % (len + 1) : 0;
    if (c1 > c2) {
        size_t t = c1;
        c1 = c2;
        c2 = t;
    }

    struct chat_parse_result r;
    if (chat_parse_text(text, len, &opts, &r, NULL) < 0)
        abort();
    struct json_out tools_text;
    json_out_init(&tools_text);
    for (size_t i = 0; i < r.n_tool_calls; i++) {
        struct json_object *args = NULL;
        /* Arguments are a JSON object (when the output was UTF-8: the
         * detokenizer never hands over anything else; raw bytes pass through).
         * parse_value cannot hold U+0000 in a key (json-c keys are C
         * strings), so such arguments are not re-read here. */
        if (parse_utf8_valid(text, len) && !strstr(r.tool_calls[i].arguments, "\\u0000") &&
            (parse_value(r.tool_calls[i].arguments, strlen(r.tool_calls[i].arguments), PARSE_VALUE_JSON, &args, NULL) < 0 ||
             !json_object_is_type(args, json_type_object)))
            abort();
        json_object_put(args);
        json_out_putc(&tools_text, '|');
        json_out_puts(&tools_text, r.tool_calls[i].name);
        json_out_putc(&tools_text, ':');
        json_out_puts(&tools_text, r.tool_calls[i].arguments);
    }

    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && len > 512)
            break;
        struct acc a;
        struct chat_parser *p;
        memset(&a, 0, sizeof(a));
        if (chat_parser_new(&opts, &p, NULL) < 0)
            abort();
        if (pass == 0) {
            chat_parser_feed(p, text, c1, on_delta, &a);
            chat_parser_feed(p, text + c1, c2 - c1, on_delta, &a);
            chat_parser_feed(p, text + c2, len - c2, on_delta, &a);
        } else {
            for (size_t i = 0; i < len; i++)
                chat_parser_feed(p, text + i, 1, on_delta, &a);
        }
        chat_parser_finish(p, on_delta, &a);
        chat_parser_free(p);
        if (!same(&a.r, r.reasoning, r.reasoning_len) || !same(&a.c, r.content, r.content_len) ||
            !same(&a.t, tools_text.data, tools_text.len))
            abort();   /* streaming must equal whole-text */
        json_out_free(&a.r);
        json_out_free(&a.c);
        json_out_free(&a.t);
    }
    json_out_free(&tools_text);
    chat_parse_result_free(&r);
    return 0;
}
