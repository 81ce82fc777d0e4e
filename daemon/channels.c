/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output channels over the engine's streaming output parser (channels.h).
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/channels.h"
#include "engine/error.h"
#include "engine/text/parse-output.h"
#include "shm/proto.h"

struct channels {
    struct chat_parser *parser;
    struct json_object *request;    /* keeps "tools" alive for the parser */
    uint32_t            initial;
    channels_sink_fn    sink;
    void               *user;
    char               *buf;        /* one tool-call JSON object being written */
    size_t              len, cap;
};

static struct json_object *parse_request(const uint8_t *json, size_t len)
{
    if (!json || !len || len > INT32_MAX)
        return NULL;
    struct json_tokener *tok = json_tokener_new_ex(64);
    if (!tok)
        return NULL;
    struct json_object *o = json_tokener_parse_ex(tok, (const char *)json, (int)len);
    if (o && (json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(o, json_type_object))) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

/* enable_thinking from chat_template_kwargs (preferred) or template_kwargs. */
static int request_thinking(struct json_object *req)
{
    static const char *const names[] = { "chat_template_kwargs", "template_kwargs" };
    for (size_t i = 0; i < 2; i++) {
        struct json_object *kw, *v;
        if (!json_object_object_get_ex(req, names[i], &kw) || !json_object_is_type(kw, json_type_object))
            continue;
        if (!json_object_object_get_ex(kw, "enable_thinking", &v) || !v)
            return 1;   /* the kwargs object that counts does not set it: the default */
        return json_object_get_boolean(v) ? 1 : 0;
    }
    return 1;
}

static int request_tools(struct json_object *req)
{
    struct json_object *tools, *tc;
    if (!json_object_object_get_ex(req, "tools", &tools) || !json_object_is_type(tools, json_type_array) ||
        json_object_array_length(tools) == 0)
        return 0;
    if (json_object_object_get_ex(req, "tool_choice", &tc) && json_object_is_type(tc, json_type_string) &&
        strcmp(json_object_get_string(tc), "none") == 0)
        return 0;
    return 1;
}

int channels_opts_from_request(uint32_t kind, const uint8_t *json, size_t len, struct channels_opts *o)
{
    memset(o, 0, sizeof(*o));
    if (kind == SHM_PROMPT_TEXT) {
        o->thinking = 1;
        return 1;
    }
    if (kind != SHM_PROMPT_CHAT)
        return 0;
    o->request_json = json;
    o->request_len = len;
    struct json_object *req = parse_request(json, len);
    o->thinking = req ? request_thinking(req) : 1;
    o->tools = req ? request_tools(req) : 0;
    json_object_put(req);
    return 1;
}

int channels_new(const struct channels_opts *o, struct channels **out, char *err, size_t errlen)
{
    *out = NULL;
    struct channels *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory for the output parser");
        return -ENOMEM;
    }
    struct chat_parser_opts po = CHAT_PARSER_OPTS_DEFAULT;
    po.thinking = o->thinking != 0;
    po.tools_enabled = o->tools != 0;
    po.id_fn = o->id_fn;
    po.id_user = o->id_user;
    if (o->tools && o->request_json) {
        c->request = parse_request(o->request_json, o->request_len);
        struct json_object *tools;
        if (c->request && json_object_object_get_ex(c->request, "tools", &tools))
            po.tools = tools;
    }
    struct engine_error e = { 0 };
    int r = chat_parser_new(&po, &c->parser, &e);
    if (r < 0) {
        snprintf(err, errlen, "output parser: %s", e.msg[0] ? e.msg : strerror(-r));
        channels_free(c);
        return r;
    }
    c->initial = o->thinking ? SHM_CHAN_REASONING : SHM_CHAN_CONTENT;
    *out = c;
    return 0;
}

void channels_free(struct channels *c)
{
    if (!c)
        return;
    chat_parser_free(c->parser);
    json_object_put(c->request);
    free(c->buf);
    free(c);
}

static int put(struct channels *c, const char *s, size_t n)
{
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        while (cap < c->len + n) {
            if (cap > SIZE_MAX / 2)
                return -ENOMEM;
            cap *= 2;
        }
        char *b = realloc(c->buf, cap);
        if (!b)
            return -ENOMEM;
        c->buf = b;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, s, n);
    c->len += n;
    return 0;
}

/* A JSON string body: quotes, backslashes and control bytes escaped; the
 * parser hands out whole UTF-8 characters, which pass through. */
static int put_escaped(struct channels *c, const char *s, size_t n)
{
    int r = 0;
    size_t run = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        r = put(c, s + run, i - run);
        run = i + 1;
        char esc[8];
        if (r == 0 && (ch == '"' || ch == '\\')) {
            esc[0] = '\\';
            esc[1] = (char)ch;
            r = put(c, esc, 2);
        } else if (r == 0) {
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            r = put(c, esc, 6);
        }
    }
    return r ? r : put(c, s + run, n - run);
}

static int on_delta(void *user, const struct chat_delta *d)
{
    struct channels *c = user;
    char head[64];
    int r;
    switch (d->type) {
    case CHAT_DELTA_REASONING:
        return d->len ? c->sink(c->user, SHM_CHAN_REASONING, d->text, d->len) : 0;
    case CHAT_DELTA_CONTENT:
        return d->len ? c->sink(c->user, SHM_CHAN_CONTENT, d->text, d->len) : 0;
    case CHAT_DELTA_TOOL_NAME:
        c->len = 0;
        snprintf(head, sizeof(head), "{\"index\":%zu,\"id\":\"", d->tool_index);
        r = put(c, head, strlen(head));
        if (r == 0)
            r = put_escaped(c, d->tool_id, strlen(d->tool_id));
        if (r == 0)
            r = put(c, "\",\"name\":\"", 10);
        if (r == 0)
            r = put_escaped(c, d->text, d->len);
        if (r == 0)
            r = put(c, "\"}", 2);
        break;
    case CHAT_DELTA_TOOL_ARGS:
        if (!d->len)
            return 0;
        c->len = 0;
        snprintf(head, sizeof(head), "{\"index\":%zu,\"arguments\":\"", d->tool_index);
        r = put(c, head, strlen(head));
        if (r == 0)
            r = put_escaped(c, d->text, d->len);
        if (r == 0)
            r = put(c, "\"}", 2);
        break;
    default:
        return 0;
    }
    return r < 0 ? r : c->sink(c->user, SHM_CHAN_TOOL_CALL, c->buf, c->len);
}

int channels_feed(struct channels *c, const char *text, size_t len, channels_sink_fn sink, void *user)
{
    if (!len)
        return 0;
    c->sink = sink;
    c->user = user;
    return chat_parser_feed(c->parser, text, len, on_delta, c);
}

int channels_finish(struct channels *c, channels_sink_fn sink, void *user)
{
    c->sink = sink;
    c->user = user;
    return chat_parser_finish(c->parser, on_delta, c);
}

size_t channels_tool_calls(const struct channels *c)
{
    return chat_parser_tool_calls(c->parser);
}

uint32_t channels_initial(const struct channels *c)
{
    return c->initial;
}
