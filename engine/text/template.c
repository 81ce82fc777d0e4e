/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Qwen3.6 chat template in C.
 *
 * This file is a transcription of the official chat_template.jinja (7,764
 * bytes, sha256 e84f32a2…4259) rendered the way transformers does it
 * (trim_blocks + lstrip_blocks, tojson = json.dumps(ensure_ascii=False),
 * raise_exception), not a Jinja engine. Each block below names the part of
 * the template it mirrors, and follows Jinja's semantics where a hostile or
 * unusual request can tell them apart:
 *   - truthiness is Python's (empty string / list / dict and 0 are false);
 *   - `x is string`, `x is defined`, `x is false` / `is true` are type
 *     tests: only a JSON boolean `false` disables thinking;
 *   - `|trim` is Python's str.strip() (Unicode whitespace, not just ASCII);
 *   - `'image' in item` on a string item is a substring test;
 *   - `{{ item.text }}` prints str(value): None, True, 3, 1.5, ['a'].
 * Where the template would raise, we return -EINVAL with its exact message.
 *
 * vLLM prepares the request before rendering (tool dicts re-shaped by
 * pydantic's model_dump, tool-call argument strings json.loads'ed); the
 * chat_render_opts flags select that preparation, on by default.
 */
#include "engine/text/template.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <utf8proc.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-value.h"

static const char TOOLS_INTRO[] =
    "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>";

static const char TOOLS_INSTRUCTIONS[] =
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "Reminder:\n- Function calls MUST follow the specified format: an inner <function=...></function> "
    "block must be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be "
    "specified\n- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n- If there is no function call available, answer the "
    "question like normal with your current knowledge and do not tell the user about function "
    "calls\n</IMPORTANT>";

struct tpl {
    struct json_out o;
    struct chat_render_opts opts;
    struct engine_error *err;
    bool add_vision_id;
    long image_count;
    long video_count;
};

/* A piece of text: the caller owns buf (may be NULL when len == 0). */
struct text {
    char  *buf;
    size_t len;
};

static int raise_msg(struct tpl *t, const char *msg)
{
    return engine_error_set(t->err, -EINVAL, "%s", msg);
}

/* ---- Jinja value helpers ------------------------------------------------ */

static struct json_object *field(const struct json_object *o, const char *key, bool *defined)
{
    struct json_object *v = NULL;
    bool d = o && json_object_is_type(o, json_type_object) &&
             json_object_object_get_ex((struct json_object *)o, key, &v);
    if (defined)
        *defined = d;
    return d ? v : NULL;
}

static bool is_string(const struct json_object *v)
{
    return v && json_object_is_type(v, json_type_string);
}

static bool str_eq(const struct json_object *v, const char *s)
{
    return is_string(v) && (size_t)json_object_get_string_len(v) == strlen(s) &&
           memcmp(json_object_get_string((struct json_object *)v), s, strlen(s)) == 0;
}

static bool truthy(const struct json_object *cv)
{
    struct json_object *v = (struct json_object *)cv;
    switch (json_object_get_type(v)) {
    case json_type_null:    return false;
    case json_type_boolean: return json_object_get_boolean(v);
    case json_type_int:     return json_object_get_int64(v) != 0 || json_object_get_uint64(v) != 0;
    case json_type_double:  return json_out_number_text(v, NULL) || json_object_get_double(v) != 0.0;
    case json_type_string:  return json_object_get_string_len(v) > 0;
    case json_type_array:   return json_object_array_length(v) > 0;
    case json_type_object:  return json_object_object_length(v) > 0;
    }
    return false;
}

static const char *sdata(const struct json_object *v)
{
    return json_object_get_string((struct json_object *)v);
}

static size_t slen(const struct json_object *v)
{
    return (size_t)json_object_get_string_len(v);
}

static bool has_sub(const char *h, size_t hn, const char *needle)
{
    return memmem(h, hn, needle, strlen(needle)) != NULL;
}

/* Python repr() of a str. */
static void py_repr_str(struct json_out *o, const char *s, size_t n)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    char buf[16];
    json_out_putc(o, q);
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        uint32_t cp = parse_utf8_next(s, n, &i);
        if (cp == (uint32_t)q || cp == '\\') {
            json_out_putc(o, '\\');
            json_out_putc(o, (char)cp);
        } else if (cp == '\n') {
            json_out_puts(o, "\\n");
        } else if (cp == '\r') {
            json_out_puts(o, "\\r");
        } else if (cp == '\t') {
            json_out_puts(o, "\\t");
        } else if (cp < 0x20 || cp == 0x7F) {
            snprintf(buf, sizeof(buf), "\\x%02x", cp);
            json_out_puts(o, buf);
        } else if (cp < 0x80) {
            json_out_putc(o, (char)cp);
        } else {
            utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
            bool printable = !(c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF ||
                               c == UTF8PROC_CATEGORY_CS || c == UTF8PROC_CATEGORY_CO ||
                               c == UTF8PROC_CATEGORY_CN || c == UTF8PROC_CATEGORY_ZL ||
                               c == UTF8PROC_CATEGORY_ZP || c == UTF8PROC_CATEGORY_ZS);
            if (printable) {
                json_out_append(o, s + start, i - start);
            } else {
                snprintf(buf, sizeof(buf), cp <= 0xFF ? "\\x%02x" : cp <= 0xFFFF ? "\\u%04x" : "\\U%08x", cp);
                json_out_puts(o, buf);
            }
        }
    }
    json_out_putc(o, q);
}

/* Python str() (repr inside containers) of a JSON value: what Jinja prints
 * for `{{ value }}`. */
static void py_str(struct json_out *o, const struct json_object *cv, bool repr, int depth)
{
    struct json_object *v = (struct json_object *)cv;
    if (depth > JSON_OUT_MAX_DEPTH) {
        o->err = -ELOOP;
        return;
    }
    switch (json_object_get_type(v)) {
    case json_type_null:
        json_out_puts(o, "None");
        break;
    case json_type_boolean:
        json_out_puts(o, json_object_get_boolean(v) ? "True" : "False");
        break;
    case json_type_int:
        json_out_value(o, v);
        break;
    case json_type_double:
        if (json_out_number_text(v, NULL))
            json_out_value(o, v);
        else
            json_out_double_str(o, json_object_get_double(v));
        break;
    case json_type_string:
        if (repr)
            py_repr_str(o, sdata(v), slen(v));
        else
            json_out_append(o, sdata(v), slen(v));
        break;
    case json_type_array: {
        json_out_putc(o, '[');
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            if (i)
                json_out_puts(o, ", ");
            py_str(o, json_object_array_get_idx(v, i), true, depth + 1);
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
            py_repr_str(o, JSON_OUT_KEY(ent), strlen(JSON_OUT_KEY(ent)));
            json_out_puts(o, ": ");
            py_str(o, JSON_OUT_VAL(ent), true, depth + 1);
        }
        json_out_putc(o, '}');
        break;
    }
    }
}

/* ---- macro render_content ------------------------------------------------ */

static int render_vision(struct tpl *t, struct json_out *dst, bool video, bool do_count, bool is_system)
{
    char buf[48];
    if (is_system)
        return raise_msg(t, video ? "System message cannot contain videos."
                                  : "System message cannot contain images.");
    long *count = video ? &t->video_count : &t->image_count;
    if (do_count)
        (*count)++;
    if (t->add_vision_id) {
        snprintf(buf, sizeof(buf), "%s %ld: ", video ? "Video" : "Picture", *count);
        json_out_puts(dst, buf);
    }
    json_out_puts(dst, video ? "<|vision_start|><|video_pad|><|vision_end|>"
                             : "<|vision_start|><|image_pad|><|vision_end|>");
    return 0;
}

static int render_content(struct tpl *t, const struct json_object *content, bool do_count,
                          bool is_system, struct json_out *dst)
{
    if (!content)
        return 0;   /* none or undefined */
    if (is_string(content)) {
        json_out_append(dst, sdata(content), slen(content));
        return dst->err;
    }
    if (!json_object_is_type(content, json_type_array))
        return raise_msg(t, "Unexpected content type.");
    for (size_t i = 0; i < json_object_array_length(content); i++) {
        struct json_object *item = json_object_array_get_idx(content, i);
        int rc = 0;
        if (is_string(item)) {
            /* `'image' in item` is a substring test on a str; `item.type`
             * and `item.text` are undefined (print as ""). */
            const char *s = sdata(item);
            size_t n = slen(item);
            if (has_sub(s, n, "image"))
                rc = render_vision(t, dst, false, do_count, is_system);
            else if (has_sub(s, n, "video"))
                rc = render_vision(t, dst, true, do_count, is_system);
            else if (!has_sub(s, n, "text"))
                rc = raise_msg(t, "Unexpected item type in content.");
        } else if (json_object_is_type(item, json_type_object)) {
            bool has_image, has_image_url, has_video, has_text;
            struct json_object *type = field(item, "type", NULL);
            field(item, "image", &has_image);
            field(item, "image_url", &has_image_url);
            field(item, "video", &has_video);
            struct json_object *text = field(item, "text", &has_text);
            if (has_image || has_image_url || str_eq(type, "image"))
                rc = render_vision(t, dst, false, do_count, is_system);
            else if (has_video || str_eq(type, "video"))
                rc = render_vision(t, dst, true, do_count, is_system);
            else if (has_text)
                py_str(dst, text, false, 0);
            else
                rc = raise_msg(t, "Unexpected item type in content.");
        } else {
            /* `'image' in 3` is a TypeError in Jinja; lists are not parts. */
            rc = raise_msg(t, "Unexpected item type in content.");
        }
        if (rc < 0)
            return rc;
    }
    return dst->err;
}

/* render_content(...)|trim into a fresh buffer: txt->buf holds the whole
 * rendering, [*b, *e) the trimmed part. */
static int content_trimmed(struct tpl *t, const struct json_object *msg, bool do_count, bool is_system,
                           struct json_out *buf, size_t *b, size_t *e)
{
    json_out_init(buf);
    json_out_append(buf, "", 0);
    int rc = render_content(t, field(msg, "content", NULL), do_count, is_system, buf);
    if (rc == 0 && buf->err)
        rc = buf->err;
    if (rc < 0) {
        json_out_free(buf);
        return rc;
    }
    parse_py_strip(buf->data, buf->len, b, e);
    return 0;
}

/* ---- tools ------------------------------------------------------------- */

static int render_tool(struct tpl *t, const struct json_object *tool, size_t idx)
{
    if (!t->opts.vllm_tool_shape)
        return json_out_value(&t->o, tool);

    if (!json_object_is_type(tool, json_type_object))
        return engine_error_set(t->err, -EINVAL, "tools[%zu] must be an object {\"type\": \"function\", \"function\": {...}}", idx);
    bool type_defined;
    struct json_object *type = field(tool, "type", &type_defined);
    if (type_defined && !str_eq(type, "function"))
        return engine_error_set(t->err, -EINVAL, "tools[%zu].type must be \"function\"", idx);
    struct json_object *fn = field(tool, "function", NULL);
    struct json_object *name = field(fn, "name", NULL);
    if (!json_object_is_type(fn, json_type_object) || !is_string(name))
        return engine_error_set(t->err, -EINVAL, "tools[%zu].function must be an object with a string \"name\"", idx);
    struct json_object *desc = field(fn, "description", NULL);
    if (desc && !is_string(desc))
        return engine_error_set(t->err, -EINVAL, "tools[%zu].function.description must be a string or null", idx);
    struct json_object *params = field(fn, "parameters", NULL);
    if (params && !json_object_is_type(params, json_type_object))
        return engine_error_set(t->err, -EINVAL, "tools[%zu].function.parameters must be an object or null", idx);

    struct json_out *o = &t->o;
    json_out_puts(o, "{\"type\": \"function\", \"function\": {\"name\": ");
    json_out_value(o, name);
    json_out_puts(o, ", \"description\": ");
    json_out_value(o, desc);
    json_out_puts(o, ", \"parameters\": ");
    json_out_value(o, params);
    JSON_OUT_FOREACH(fn, fent) {
        const char *fkey = JSON_OUT_KEY(fent);
        if (strcmp(fkey, "name") == 0 || strcmp(fkey, "description") == 0 || strcmp(fkey, "parameters") == 0)
            continue;
        json_out_puts(o, ", ");
        json_out_string(o, fkey, strlen(fkey));
        json_out_puts(o, ": ");
        json_out_value(o, JSON_OUT_VAL(fent));
    }
    json_out_putc(o, '}');
    JSON_OUT_FOREACH(tool, tent) {
        const char *tkey = JSON_OUT_KEY(tent);
        if (strcmp(tkey, "type") == 0 || strcmp(tkey, "function") == 0)
            continue;
        json_out_puts(o, ", ");
        json_out_string(o, tkey, strlen(tkey));
        json_out_puts(o, ": ");
        json_out_value(o, JSON_OUT_VAL(tent));
    }
    json_out_putc(o, '}');
    return o->err;
}

/* ---- assistant tool calls -------------------------------------------------- */

static int render_tool_call(struct tpl *t, const struct json_object *tc, size_t mi, size_t j, bool content_nonblank)
{
    struct json_out *o = &t->o;
    bool has_function;
    const struct json_object *f = field(tc, "function", &has_function);
    if (!has_function)
        f = tc;
    struct json_object *name = field(f, "name", NULL);
    if (!is_string(name))
        return engine_error_set(t->err, -EINVAL,
                                "messages[%zu].tool_calls[%zu] has no string function name", mi, j);

    if (j == 0)
        json_out_puts(o, content_nonblank ? "\n\n<tool_call>\n<function=" : "<tool_call>\n<function=");
    else
        json_out_puts(o, "\n<tool_call>\n<function=");
    json_out_append(o, sdata(name), slen(name));
    json_out_puts(o, ">\n");

    bool args_defined;
    struct json_object *args = field(f, "arguments", &args_defined);
    struct json_object *decoded = NULL;
    if (t->opts.decode_arguments && has_function && json_object_is_type(f, json_type_object)) {
        /* vLLM: a truthy non-dict/list is json.loads'ed; anything falsy becomes {}. */
        args_defined = true;
        if (!truthy(args)) {
            args = decoded = json_object_new_object();
            if (!decoded)
                return -ENOMEM;
        } else if (is_string(args)) {
            struct engine_error perr = { 0 };
            if (parse_value(sdata(args), slen(args), PARSE_VALUE_JSON, &decoded, &perr) < 0)
                return engine_error_set(t->err, -EINVAL,
                                        "messages[%zu].tool_calls[%zu].function.arguments is not valid JSON: %s",
                                        mi, j, perr.msg);
            args = decoded;
        } else if (!json_object_is_type(args, json_type_object) && !json_object_is_type(args, json_type_array)) {
            return engine_error_set(t->err, -EINVAL,
                                    "messages[%zu].tool_calls[%zu].function.arguments must be a JSON object or a string holding one",
                                    mi, j);
        }
    }
    int rc = 0;
    if (args_defined) {
        if (!json_object_is_type(args, json_type_object)) {
            rc = raise_msg(t, "Can only get item pairs from a mapping.");
        } else {
            JSON_OUT_FOREACH(args, ent) {
                struct json_object *val = JSON_OUT_VAL(ent);
                json_out_puts(o, "<parameter=");
                json_out_puts(o, JSON_OUT_KEY(ent));
                json_out_puts(o, ">\n");
                if (is_string(val))
                    json_out_append(o, sdata(val), slen(val));
                else
                    json_out_value(o, val);
                json_out_puts(o, "\n</parameter>\n");
            }
        }
    }
    json_object_put(decoded);
    if (rc < 0)
        return rc;
    json_out_puts(o, "</function>\n</tool_call>");
    return o->err;
}

static const char *find_last(const char *h, size_t hn, const char *needle)
{
    size_t nl = strlen(needle);
    if (hn < nl)
        return NULL;
    for (size_t i = hn - nl + 1; i-- > 0;)
        if (memcmp(h + i, needle, nl) == 0)
            return h + i;
    return NULL;
}

static int render_assistant(struct tpl *t, const struct json_object *msg, size_t mi, bool after_last_query,
                            bool preserve_thinking, const char *content, size_t clen)
{
    struct json_out *o = &t->o;
    const char *rs = "";
    size_t rn = 0;

    struct json_object *rc_field = field(msg, "reasoning_content", NULL);
    if (!is_string(rc_field) && t->opts.reasoning_alias && is_string(field(msg, "reasoning", NULL)))
        rc_field = field(msg, "reasoning", NULL);
    if (is_string(rc_field)) {
        rs = sdata(rc_field);
        rn = slen(rc_field);
    } else if (has_sub(content, clen, "</think>")) {
        /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
        const char *end_tag = memmem(content, clen, "</think>", 8);
        size_t first_len = (size_t)(end_tag - content);
        while (first_len > 0 && content[first_len - 1] == '\n')
            first_len--;
        const char *open = find_last(content, first_len, "<think>");
        rs = open ? open + 7 : content;
        rn = first_len - (size_t)(rs - content);
        while (rn > 0 && rs[0] == '\n') {
            rs++;
            rn--;
        }
        /* content.split('</think>')[-1].lstrip('\n') */
        const char *last = find_last(content, clen, "</think>");
        size_t off = (size_t)(last - content) + 8;
        content += off;
        clen -= off;
        while (clen > 0 && content[0] == '\n') {
            content++;
            clen--;
        }
    }
    size_t rb, re;
    parse_py_strip(rs, rn, &rb, &re);

    if (preserve_thinking || after_last_query) {
        json_out_puts(o, "<|im_start|>assistant\n<think>\n");
        json_out_append(o, rs + rb, re - rb);
        json_out_puts(o, "\n</think>\n\n");
    } else {
        json_out_puts(o, "<|im_start|>assistant\n");
    }
    json_out_append(o, content, clen);

    struct json_object *calls = field(msg, "tool_calls", NULL);
    if (truthy(calls)) {
        if (is_string(calls))
            return engine_error_set(t->err, -EINVAL, "messages[%zu].tool_calls must be a list", mi);
        if (json_object_is_type(calls, json_type_array)) {
            size_t cb, ce;
            parse_py_strip(content, clen, &cb, &ce);
            for (size_t j = 0; j < json_object_array_length(calls); j++) {
                int rc = render_tool_call(t, json_object_array_get_idx(calls, j), mi, j, ce > cb);
                if (rc < 0)
                    return rc;
            }
        }
    }
    json_out_puts(o, "<|im_end|>\n");
    return o->err;
}

/* ---- the template body -------------------------------------------------- */

static bool role_is(const struct json_object *msg, const char *role)
{
    return str_eq(field(msg, "role", NULL), role);
}

static bool is_tool_response_wrapper(const char *s, size_t n)
{
    static const char open[] = "<tool_response>", close[] = "</tool_response>";
    return n >= sizeof(open) - 1 && memcmp(s, open, sizeof(open) - 1) == 0 &&
           n >= sizeof(close) - 1 && memcmp(s + n - (sizeof(close) - 1), close, sizeof(close) - 1) == 0;
}

static int render(struct tpl *t, const struct json_object *req)
{
    struct json_out *o = &t->o;
    int rc;

    if (!json_object_is_type(req, json_type_object))
        return engine_error_set(t->err, -EINVAL, "the request must be a JSON object with a \"messages\" list");

    struct json_object *kwargs = field(req, "chat_template_kwargs", NULL);
    if (kwargs && !json_object_is_type(kwargs, json_type_object))
        return engine_error_set(t->err, -EINVAL, "chat_template_kwargs must be an object");
    bool defined;
    struct json_object *v = field(kwargs, "enable_thinking", &defined);
    bool thinking_off = defined && json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v);
    v = field(kwargs, "preserve_thinking", &defined);
    bool preserve = defined && json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
    t->add_vision_id = truthy(field(kwargs, "add_vision_id", NULL));
    v = field(req, "add_generation_prompt", &defined);
    bool agp = defined ? truthy(v) : t->opts.default_add_generation_prompt;

    struct json_object *messages = field(req, "messages", NULL);
    if (!truthy(messages))
        return raise_msg(t, "No messages provided.");
    if (!json_object_is_type(messages, json_type_array))
        return engine_error_set(t->err, -EINVAL, "messages must be a list of message objects");
    size_t nmsg = json_object_array_length(messages);
    struct json_object *first = json_object_array_get_idx(messages, 0);

    struct json_out cbuf;
    size_t cb, ce;

    /* {%- if tools and tools is iterable and tools is not mapping %} */
    struct json_object *tools = field(req, "tools", NULL);
    if (truthy(tools) && !json_object_is_type(tools, json_type_array))
        return engine_error_set(t->err, -EINVAL, "tools must be a list of tool objects");
    if (truthy(tools)) {
        json_out_puts(o, TOOLS_INTRO);
        for (size_t i = 0; i < json_object_array_length(tools); i++) {
            json_out_putc(o, '\n');
            rc = render_tool(t, json_object_array_get_idx(tools, i), i);
            if (rc < 0)
                return rc;
        }
        json_out_puts(o, "\n</tools>");
        json_out_puts(o, TOOLS_INSTRUCTIONS);
        if (role_is(first, "system")) {
            rc = content_trimmed(t, first, false, true, &cbuf, &cb, &ce);
            if (rc < 0)
                return rc;
            if (ce > cb) {
                json_out_puts(o, "\n\n");
                json_out_append(o, cbuf.data + cb, ce - cb);
            }
            json_out_free(&cbuf);
        }
        json_out_puts(o, "<|im_end|>\n");
    } else if (role_is(first, "system")) {
        rc = content_trimmed(t, first, false, true, &cbuf, &cb, &ce);
        if (rc < 0)
            return rc;
        json_out_puts(o, "<|im_start|>system\n");
        json_out_append(o, cbuf.data + cb, ce - cb);
        json_out_puts(o, "<|im_end|>\n");
        json_out_free(&cbuf);
    }

    /* last_query_index: the last user message that is not wholly a
     * <tool_response>…</tool_response> wrapper. */
    size_t last_query = 0;
    bool found = false;
    for (size_t k = nmsg; k-- > 0 && !found;) {
        struct json_object *m = json_object_array_get_idx(messages, k);
        if (!role_is(m, "user"))
            continue;
        rc = content_trimmed(t, m, false, false, &cbuf, &cb, &ce);
        if (rc < 0)
            return rc;
        if (!is_tool_response_wrapper(cbuf.data + cb, ce - cb)) {
            found = true;
            last_query = k;
        }
        json_out_free(&cbuf);
    }
    if (!found)
        return raise_msg(t, "No user query found in messages.");

    for (size_t i = 0; i < nmsg; i++) {
        struct json_object *m = json_object_array_get_idx(messages, i);
        rc = content_trimmed(t, m, true, false, &cbuf, &cb, &ce);
        if (rc < 0)
            return rc;
        const char *content = cbuf.data + cb;
        size_t clen = ce - cb;

        if (role_is(m, "system")) {
            if (i != 0)
                rc = raise_msg(t, "System message must be at the beginning.");
        } else if (role_is(m, "user")) {
            json_out_puts(o, "<|im_start|>user\n");
            json_out_append(o, content, clen);
            json_out_puts(o, "<|im_end|>\n");
        } else if (role_is(m, "assistant")) {
            rc = render_assistant(t, m, i, i > last_query, preserve, content, clen);
        } else if (role_is(m, "tool")) {
            struct json_object *prev = i > 0 ? json_object_array_get_idx(messages, i - 1) : NULL;
            if (i > 0 && truthy(prev) && !role_is(prev, "tool"))
                json_out_puts(o, "<|im_start|>user");
            json_out_puts(o, "\n<tool_response>\n");
            json_out_append(o, content, clen);
            json_out_puts(o, "\n</tool_response>");
            if (i + 1 == nmsg || !role_is(json_object_array_get_idx(messages, i + 1), "tool"))
                json_out_puts(o, "<|im_end|>\n");
        } else {
            rc = raise_msg(t, "Unexpected message role.");
        }
        json_out_free(&cbuf);
        if (rc < 0)
            return rc;
    }

    if (agp)
        json_out_puts(o, thinking_off ? "<|im_start|>assistant\n<think>\n\n</think>\n\n"
                                      : "<|im_start|>assistant\n<think>\n");
    return o->err;
}

int chat_render_object(const struct json_object *request, const struct chat_render_opts *opts,
                       char **out, size_t *out_len, struct engine_error *err)
{
    static const struct chat_render_opts defaults = CHAT_RENDER_OPTS_DEFAULT;
    struct tpl t;
    memset(&t, 0, sizeof(t));
    json_out_init(&t.o);
    t.opts = opts ? *opts : defaults;
    t.err = err;

    *out = NULL;
    if (out_len)
        *out_len = 0;
    int rc = render(&t, request);
    if (rc == 0 && t.o.err)
        rc = t.o.err;
    if (rc < 0) {
        if (rc == -ENOMEM || rc == -EOVERFLOW || rc == -ELOOP)
            engine_error_set(err, rc, "chat template: out of memory or nesting too deep while rendering");
        json_out_free(&t.o);
        return rc;
    }
    *out = json_out_take(&t.o, out_len);
    return *out ? 0 : engine_error_set(err, -ENOMEM, "chat template: out of memory");
}

int chat_render(const char *request_json, size_t len, const struct chat_render_opts *opts,
                char **out, size_t *out_len, struct engine_error *err)
{
    struct json_object *req = NULL;
    struct engine_error perr = { 0 };
    *out = NULL;
    if (out_len)
        *out_len = 0;
    int rc = parse_value(request_json, len, PARSE_VALUE_JSON, &req, &perr);
    if (rc < 0)
        return engine_error_set(err, rc == -ENOMEM ? -ENOMEM : -EINVAL, "chat request is not valid JSON: %s", perr.msg);
    rc = chat_render_object(req, opts, out, out_len, err);
    json_object_put(req);
    return rc;
}
