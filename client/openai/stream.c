/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/openai/stream.h"
#include "client/resident.h"

#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

int oai_stream_init(struct oai_stream *s, const struct oai_stream_params *p)
{
    memset(s, 0, sizeof(*s));
    s->api = p->api;
    s->stream = p->stream;
    s->include_usage = p->include_usage;
    s->created = p->created;
    snprintf(s->id, sizeof(s->id), "%s", p->id ? p->id : "");
    snprintf(s->model, sizeof(s->model), "%s", p->model ? p->model : "");
    snprintf(s->fingerprint, sizeof(s->fingerprint), "%s", p->fingerprint ? p->fingerprint : "");
    return 0;
}

void oai_stream_free(struct oai_stream *s)
{
    oai_buf_free(&s->out);
    oai_buf_free(&s->content);
    oai_buf_free(&s->reasoning);
    oai_buf_free(&s->tool_pending);
    for (size_t i = 0; i < s->n_calls; i++) {
        free(s->calls[i].name);
        oai_buf_free(&s->calls[i].args);
    }
    free(s->calls);
    s->calls = NULL;
    s->n_calls = 0;
}

/* The envelope shared by chunks and bodies. */
static struct json_object *envelope_new(const struct oai_stream *s, const char *object)
{
    struct json_object *o = json_object_new_object();
    if (!o)
        return NULL;
    json_object_object_add(o, "id", json_object_new_string(s->id));
    json_object_object_add(o, "object", json_object_new_string(object));
    json_object_object_add(o, "created", json_object_new_int64(s->created));
    json_object_object_add(o, "model", json_object_new_string(s->model));
    if (s->fingerprint[0])
        json_object_object_add(o, "system_fingerprint", json_object_new_string(s->fingerprint));
    return o;
}

/* usage, with prompt_tokens_details.cached_tokens (OpenAI's name for the
 * prompt tokens served from a cache; residentd's prefix cache) */
static struct json_object *usage_new(const struct oai_finish *f)
{
    struct json_object *u = json_object_new_object();
    if (!u)
        return NULL;
    json_object_object_add(u, "prompt_tokens", json_object_new_int64(f->prompt_tokens));
    json_object_object_add(u, "completion_tokens", json_object_new_int64(f->completion_tokens));
    json_object_object_add(u, "total_tokens", json_object_new_int64((int64_t)f->prompt_tokens + f->completion_tokens));
    struct json_object *d = json_object_new_object();
    if (d) {
        json_object_object_add(d, "cached_tokens", json_object_new_int64(f->cached_tokens));
        json_object_object_add(u, "prompt_tokens_details", d);
    }
    return u;
}

/* Append `data: <json>\n\n` and drop the object. */
static int sse_emit(struct oai_stream *s, struct json_object *o)
{
    if (!o)
        return -ENOMEM;
    const char *j = json_object_to_json_string_ext(o, JSON_FLAGS);
    int r = j ? oai_buf_printf(&s->out, "data: %s\n\n", j) : -ENOMEM;
    json_object_put(o);
    return r;
}

/* A chunk with one choice; @payload is its delta (chat) or text (completion). */
static int chunk_emit(struct oai_stream *s, struct json_object *payload, const char *finish_reason)
{
    int chat = s->api == OAI_API_CHAT;
    struct json_object *o = envelope_new(s, chat ? "chat.completion.chunk" : "text_completion");
    struct json_object *choices = json_object_new_array();
    struct json_object *c = json_object_new_object();
    if (!o || !choices || !c || !payload) {
        json_object_put(o);
        json_object_put(choices);
        json_object_put(c);
        json_object_put(payload);
        return -ENOMEM;
    }
    json_object_object_add(c, "index", json_object_new_int(0));
    json_object_object_add(c, chat ? "delta" : "text", payload);
    json_object_object_add(c, "logprobs", NULL);
    json_object_object_add(c, "finish_reason", finish_reason ? json_object_new_string(finish_reason) : NULL);
    json_object_array_add(choices, c);
    json_object_object_add(o, "choices", choices);
    return sse_emit(s, o);
}

static struct json_object *string_n(const char *t, size_t n)
{
    return json_object_new_string_len(t, n > INT32_MAX ? INT32_MAX : (int)n);
}

static int delta_text(struct oai_stream *s, const char *key1, const char *key2, const char *t, size_t n)
{
    struct json_object *d = json_object_new_object();
    if (!d)
        return -ENOMEM;
    json_object_object_add(d, key1, string_n(t, n));
    if (key2)
        json_object_object_add(d, key2, string_n(t, n));
    return chunk_emit(s, d, NULL);
}

int oai_stream_begin(struct oai_stream *s)
{
    if (!s->stream || s->began)
        return 0;
    s->began = 1;
    if (s->api != OAI_API_CHAT)
        return 0;
    struct json_object *d = json_object_new_object();
    if (!d)
        return -ENOMEM;
    json_object_object_add(d, "role", json_object_new_string("assistant"));
    json_object_object_add(d, "content", json_object_new_string(""));
    return chunk_emit(s, d, NULL);
}

static int proto_fail(struct oai_stream *s, const char *why)
{
    snprintf(s->proto_err, sizeof(s->proto_err), "residentd sent a malformed tool-call event: %s", why);
    return -EPROTO;
}

/* One tool-channel object: a call start or an arguments fragment. */
static int tool_record(struct oai_stream *s, struct json_object *o)
{
    struct json_object *jidx, *jid, *jname, *jargs;
    if (!json_object_is_type(o, json_type_object))
        return proto_fail(s, "not a JSON object");
    if (!json_object_object_get_ex(o, "index", &jidx) || !json_object_is_type(jidx, json_type_int))
        return proto_fail(s, "no integer \"index\"");
    int64_t idx = json_object_get_int64(jidx);
    int has_id = json_object_object_get_ex(o, "id", &jid);
    int has_name = json_object_object_get_ex(o, "name", &jname);
    int has_args = json_object_object_get_ex(o, "arguments", &jargs);
    if (has_id || has_name) {
        if (!has_id || !has_name || has_args)
            return proto_fail(s, "a call start needs \"id\" and \"name\" and no \"arguments\"");
        if (idx != (int64_t)s->n_calls)
            return proto_fail(s, "call index out of order");
        if (s->n_calls >= OAI_TOOL_CALLS_MAX)
            return proto_fail(s, "more than 128 tool calls");
        if (!json_object_is_type(jid, json_type_string) || !json_object_is_type(jname, json_type_string))
            return proto_fail(s, "\"id\" and \"name\" must be strings");
        size_t idl = (size_t)json_object_get_string_len(jid);
        size_t nl = (size_t)json_object_get_string_len(jname);
        if (idl == 0 || idl > OAI_TOOL_ID_MAX || nl == 0 || nl > OAI_TOOL_NAME_MAX)
            return proto_fail(s, "\"id\" or \"name\" empty or too long");
        struct oai_tool_call *c = realloc(s->calls, (s->n_calls + 1) * sizeof(*c));
        if (!c)
            return -ENOMEM;
        s->calls = c;
        c = &s->calls[s->n_calls];
        memset(c, 0, sizeof(*c));
        memcpy(c->id, json_object_get_string(jid), idl);
        c->name = strndup(json_object_get_string(jname), nl);
        if (!c->name)
            return -ENOMEM;
        s->n_calls++;
        if (!s->stream)
            return 0;
        struct json_object *d = json_object_new_object();
        struct json_object *arr = json_object_new_array();
        struct json_object *tc = json_object_new_object();
        struct json_object *fn = json_object_new_object();
        if (!d || !arr || !tc || !fn) {
            json_object_put(d);
            json_object_put(arr);
            json_object_put(tc);
            json_object_put(fn);
            return -ENOMEM;
        }
        json_object_object_add(tc, "index", json_object_new_int64(idx));
        json_object_object_add(tc, "id", json_object_new_string(c->id));
        json_object_object_add(tc, "type", json_object_new_string("function"));
        json_object_object_add(fn, "name", json_object_new_string(c->name));
        json_object_object_add(fn, "arguments", json_object_new_string(""));
        json_object_object_add(tc, "function", fn);
        json_object_array_add(arr, tc);
        json_object_object_add(d, "tool_calls", arr);
        return chunk_emit(s, d, NULL);
    }
    if (!has_args || !json_object_is_type(jargs, json_type_string))
        return proto_fail(s, "neither a call start nor a string \"arguments\"");
    if (idx < 0 || idx >= (int64_t)s->n_calls)
        return proto_fail(s, "arguments for a call that has not started");
    const char *a = json_object_get_string(jargs);
    size_t al = (size_t)json_object_get_string_len(jargs);
    int r = oai_buf_append(&s->calls[idx].args, a, al);
    if (r < 0 || !s->stream)
        return r;
    struct json_object *d = json_object_new_object();
    struct json_object *arr = json_object_new_array();
    struct json_object *tc = json_object_new_object();
    struct json_object *fn = json_object_new_object();
    if (!d || !arr || !tc || !fn) {
        json_object_put(d);
        json_object_put(arr);
        json_object_put(tc);
        json_object_put(fn);
        return -ENOMEM;
    }
    json_object_object_add(tc, "index", json_object_new_int64(idx));
    json_object_object_add(fn, "arguments", string_n(a, al));
    json_object_object_add(tc, "function", fn);
    json_object_array_add(arr, tc);
    json_object_object_add(d, "tool_calls", arr);
    return chunk_emit(s, d, NULL);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

/* Parse every complete object at the front of tool_pending. */
static int tool_drain(struct oai_stream *s)
{
    struct oai_buf *b = &s->tool_pending;
    for (;;) {
        size_t k = 0;
        while (k < b->len && is_ws(b->p[k]))
            k++;
        oai_buf_consume(b, k);
        if (b->len == 0)
            return 0;
        if (b->p[0] != '{')
            return proto_fail(s, "text outside a JSON object");
        if (b->len > INT32_MAX)
            return proto_fail(s, "object too large");
        struct json_tokener *tok = json_tokener_new_ex(16);
        if (!tok)
            return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS | JSON_TOKENER_VALIDATE_UTF8);
        struct json_object *o = json_tokener_parse_ex(tok, b->p, (int)b->len);
        enum json_tokener_error e = json_tokener_get_error(tok);
        size_t end = json_tokener_get_parse_end(tok);
        json_tokener_free(tok);
        if (e == json_tokener_continue)
            return 0;           /* the rest comes in a later event */
        if (!o || e != json_tokener_success) {
            json_object_put(o);
            return proto_fail(s, json_tokener_error_desc(e));
        }
        int r = tool_record(s, o);
        json_object_put(o);
        if (r < 0)
            return r;
        oai_buf_consume(b, end);
    }
}

int oai_stream_tokens(struct oai_stream *s, uint32_t channel, const char *text, size_t len)
{
    if (s->finished || s->proto_err[0])
        return -EPROTO;
    if (len == 0)
        return 0;
    int r = oai_stream_begin(s);
    if (r < 0)
        return r;
    if (s->api == OAI_API_COMPLETION) {
        /* Raw completions: no parsers, every channel is text. */
        if (!s->stream)
            return oai_buf_append(&s->content, text, len);
        return chunk_emit(s, string_n(text, len), NULL);
    }
    switch (channel) {
    case RESIDENT_CHANNEL_CONTENT:
        if (!s->stream)
            return oai_buf_append(&s->content, text, len);
        return delta_text(s, "content", NULL, text, len);
    case RESIDENT_CHANNEL_REASONING:
        if (!s->stream)
            return oai_buf_append(&s->reasoning, text, len);
        return delta_text(s, "reasoning", "reasoning_content", text, len);
    case RESIDENT_CHANNEL_TOOL_CALL:
        /* Bounded: one object is at most one parameter's JSON. */
        if (s->tool_pending.len + len > ((size_t)16 << 20))
            return proto_fail(s, "an unterminated object over 16 MiB");
        r = oai_buf_append(&s->tool_pending, text, len);
        return r < 0 ? r : tool_drain(s);
    default:
        return proto_fail(s, "unknown channel");
    }
}

int oai_finish_failed(const struct oai_finish *f, enum oai_api api, struct oai_error *e)
{
    const char *msg = f->message && f->message[0] ? f->message : NULL;
    switch (f->finish) {
    case RESIDENT_FINISH_STOP:
    case RESIDENT_FINISH_LENGTH:
    case RESIDENT_FINISH_STOP_STRING:
    case RESIDENT_FINISH_STOP_ID:
    case RESIDENT_FINISH_TOOL_CALLS:
        if (f->error == 0)
            return 0;
        break;
    case RESIDENT_FINISH_SHUTDOWN:
        oai_error_set(e, 503, "server_error", "service_unavailable", NULL, "%s",
                      msg ? msg : "residentd is shutting down; retry later");
        return 1;
    case RESIDENT_FINISH_CANCELLED:
        oai_error_set(e, 500, "server_error", NULL, NULL, "the request was cancelled");
        return 1;
    case RESIDENT_FINISH_SLOW:
        oai_error_set(e, 500, "server_error", NULL, NULL, "%s",
                      msg ? msg : "residentd dropped the request: the gateway did not read its events in time");
        return 1;
    default:
        break;
    }
    if (!msg)
        msg = "residentd failed the request";
    switch (f->error) {
    case -E2BIG:
        if (strncmp(msg, "prompt", 6) == 0)
            oai_error_set(e, 400, "invalid_request_error", "context_length_exceeded",
                          api == OAI_API_CHAT ? "messages" : "prompt", "%s", msg);
        else
            oai_error_set(e, 400, "invalid_request_error", NULL, "max_tokens", "%s", msg);
        break;
    case -EINVAL:
        oai_error_set(e, 400, "invalid_request_error", NULL, NULL, "%s", msg);
        break;
    case -EBUSY:
        oai_error_set(e, 429, "rate_limit_error", "rate_limit_exceeded", NULL, "%s", msg);
        break;
    case -ENOMEM:
    case -ESHUTDOWN:
    case -EAGAIN:
        oai_error_set(e, 503, "server_error", "service_unavailable", NULL, "%s", msg);
        break;
    default:
        oai_error_set(e, 500, "server_error", NULL, NULL, "%s", msg);
        break;
    }
    return 1;
}

const char *oai_stream_finish_reason(const struct oai_stream *s, const struct oai_finish *f)
{
    if (f->finish == RESIDENT_FINISH_LENGTH)
        return "length";
    return s->n_calls ? "tool_calls" : "stop";
}

int oai_stream_finish(struct oai_stream *s, const struct oai_finish *f)
{
    if (s->finished)
        return 0;
    s->finished = 1;
    if (!s->proto_err[0] && s->tool_pending.len)
        proto_fail(s, "the event stream ended inside an object");
    if (!s->stream)
        return 0;
    int r = oai_stream_begin(s);
    if (r < 0)
        return r;
    struct oai_error e;
    int failed = s->proto_err[0] ? (oai_error_set(&e, 502, "server_error", NULL, NULL, "%s", s->proto_err), 1)
                                 : oai_finish_failed(f, s->api, &e);
    if (failed) {
        /* Headers are gone already: the error travels as an SSE event,
         * which the openai client raises as an APIError. */
        struct oai_buf j = { 0 };
        r = oai_error_json(&e, &j);
        if (r == 0)
            r = oai_buf_printf(&s->out, "data: %s\n\n", j.p);
        oai_buf_free(&j);
    } else {
        struct json_object *payload = s->api == OAI_API_CHAT ? json_object_new_object() : json_object_new_string("");
        r = chunk_emit(s, payload, oai_stream_finish_reason(s, f));
        if (r == 0 && s->include_usage) {
            struct json_object *o = envelope_new(s, s->api == OAI_API_CHAT ? "chat.completion.chunk"
                                                                            : "text_completion");
            if (o) {
                json_object_object_add(o, "choices", json_object_new_array());
                json_object_object_add(o, "usage", usage_new(f));
            }
            r = sse_emit(s, o);
        }
    }
    if (r == 0)
        r = oai_buf_puts(&s->out, "data: [DONE]\n\n");
    return r;
}

int oai_stream_body(const struct oai_stream *s, const struct oai_finish *f, struct oai_buf *out)
{
    int chat = s->api == OAI_API_CHAT;
    struct json_object *o = envelope_new(s, chat ? "chat.completion" : "text_completion");
    struct json_object *choices = json_object_new_array();
    struct json_object *c = json_object_new_object();
    if (!o || !choices || !c) {
        json_object_put(o);
        json_object_put(choices);
        json_object_put(c);
        return -ENOMEM;
    }
    json_object_object_add(c, "index", json_object_new_int(0));
    if (chat) {
        struct json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("assistant"));
        /* vLLM: content is null when the parsers left nothing for it. */
        if (s->content.len || (!s->n_calls && !s->reasoning.len))
            json_object_object_add(m, "content", string_n(s->content.p ? s->content.p : "", s->content.len));
        else
            json_object_object_add(m, "content", NULL);
        if (s->reasoning.len) {
            json_object_object_add(m, "reasoning", string_n(s->reasoning.p, s->reasoning.len));
            json_object_object_add(m, "reasoning_content", string_n(s->reasoning.p, s->reasoning.len));
        }
        if (s->n_calls) {
            struct json_object *arr = json_object_new_array();
            for (size_t i = 0; i < s->n_calls; i++) {
                struct json_object *tc = json_object_new_object();
                struct json_object *fn = json_object_new_object();
                json_object_object_add(tc, "id", json_object_new_string(s->calls[i].id));
                json_object_object_add(tc, "type", json_object_new_string("function"));
                json_object_object_add(fn, "name", json_object_new_string(s->calls[i].name));
                json_object_object_add(fn, "arguments",
                                       string_n(s->calls[i].args.p ? s->calls[i].args.p : "", s->calls[i].args.len));
                json_object_object_add(tc, "function", fn);
                json_object_array_add(arr, tc);
            }
            json_object_object_add(m, "tool_calls", arr);
        }
        json_object_object_add(c, "message", m);
    } else {
        json_object_object_add(c, "text", string_n(s->content.p ? s->content.p : "", s->content.len));
    }
    json_object_object_add(c, "logprobs", NULL);
    json_object_object_add(c, "finish_reason", json_object_new_string(oai_stream_finish_reason(s, f)));
    json_object_array_add(choices, c);
    json_object_object_add(o, "choices", choices);
    json_object_object_add(o, "usage", usage_new(f));
    const char *j = json_object_to_json_string_ext(o, JSON_FLAGS);
    int r = j ? oai_buf_puts(out, j) : -ENOMEM;
    json_object_put(o);
    return r;
}
