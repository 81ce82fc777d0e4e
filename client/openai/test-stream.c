/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The event -> OpenAI mapping (stream.c), fed with synthetic channel-tagged
 * events. The null generator emits content only, so this is where the
 * reasoning and tool-call channels are proven: every SSE frame is checked
 * for framing and parsed, and the deltas are folded back the way the
 * openai client folds them, then compared with the non-streaming body.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "client/openai/stream.h"
#include "client/resident.h"

/* What a client sees after folding every chunk. */
struct folded {
    char content[4096], reasoning[4096], reasoning_content[4096];
    char tool_id[4][80], tool_name[4][80], tool_args[4][1024];
    int n_tools;
    char finish[32];
    int role_seen, usage_seen, done_seen, error_seen, n_frames;
    long long prompt_tokens, completion_tokens;
    char error_code[64];
    int error_status_type_server;
};

static const char *str_of(struct json_object *o, const char *k)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static void cat(char *dst, size_t cap, const char *s)
{
    if (s)
        strncat(dst, s, cap - strlen(dst) - 1);
}

/* Split `data: ...\n\n` frames strictly and fold them. */
static void fold(const char *sse, struct folded *f)
{
    memset(f, 0, sizeof(*f));
    const char *p = sse;
    while (*p) {
        assert_true(strncmp(p, "data: ", 6) == 0);
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        size_t n = (size_t)(end - p - 6);
        char *frame = strndup(p + 6, n);
        assert_null(memchr(frame, '\n', n));   /* one line per event */
        p = end + 2;
        f->n_frames++;
        if (strcmp(frame, "[DONE]") == 0) {
            f->done_seen = 1;
            assert_int_equal(*p, 0);           /* nothing after [DONE] */
            free(frame);
            break;
        }
        assert_false(f->done_seen);
        struct json_object *o = json_tokener_parse(frame);
        assert_non_null(o);
        struct json_object *err, *choices, *usage;
        if (json_object_object_get_ex(o, "error", &err)) {
            f->error_seen = 1;
            cat(f->error_code, sizeof(f->error_code), str_of(err, "type"));
            json_object_put(o);
            free(frame);
            continue;
        }
        assert_string_equal(str_of(o, "id"), "chatcmpl-test");
        assert_true(json_object_object_get_ex(o, "choices", &choices));
        if (json_object_object_get_ex(o, "usage", &usage) && usage) {
            f->usage_seen = 1;
            assert_int_equal(json_object_array_length(choices), 0);
            struct json_object *v;
            json_object_object_get_ex(usage, "prompt_tokens", &v);
            f->prompt_tokens = json_object_get_int64(v);
            json_object_object_get_ex(usage, "completion_tokens", &v);
            f->completion_tokens = json_object_get_int64(v);
        }
        for (size_t i = 0; i < json_object_array_length(choices); i++) {
            struct json_object *c = json_object_array_get_idx(choices, i), *d, *fr, *tcs;
            if (json_object_object_get_ex(c, "finish_reason", &fr) && fr)
                cat(f->finish, sizeof(f->finish), json_object_get_string(fr));
            if (!json_object_object_get_ex(c, "delta", &d)) {
                cat(f->content, sizeof(f->content), str_of(c, "text"));
                continue;
            }
            if (str_of(d, "role"))
                f->role_seen++;
            cat(f->content, sizeof(f->content), str_of(d, "content"));
            cat(f->reasoning, sizeof(f->reasoning), str_of(d, "reasoning"));
            cat(f->reasoning_content, sizeof(f->reasoning_content), str_of(d, "reasoning_content"));
            if (json_object_object_get_ex(d, "tool_calls", &tcs)) {
                for (size_t k = 0; k < json_object_array_length(tcs); k++) {
                    struct json_object *tc = json_object_array_get_idx(tcs, k), *ix, *fn;
                    assert_true(json_object_object_get_ex(tc, "index", &ix));
                    int idx = json_object_get_int(ix);
                    assert_true(idx >= 0 && idx < 4);
                    if (idx + 1 > f->n_tools)
                        f->n_tools = idx + 1;
                    cat(f->tool_id[idx], sizeof(f->tool_id[idx]), str_of(tc, "id"));
                    if (str_of(tc, "id"))
                        assert_string_equal(str_of(tc, "type"), "function");
                    assert_true(json_object_object_get_ex(tc, "function", &fn));
                    cat(f->tool_name[idx], sizeof(f->tool_name[idx]), str_of(fn, "name"));
                    cat(f->tool_args[idx], sizeof(f->tool_args[idx]), str_of(fn, "arguments"));
                }
            }
        }
        json_object_put(o);
        free(frame);
    }
}

static void init(struct oai_stream *s, enum oai_api api, int stream, int usage)
{
    struct oai_stream_params p = { .api = api, .stream = stream, .include_usage = usage, .id = "chatcmpl-test",
                                   .model = "m", .created = 1, .fingerprint = "resident-test" };
    assert_int_equal(oai_stream_init(s, &p), 0);
}

static int feed(struct oai_stream *s, uint32_t ch, const char *t)
{
    return oai_stream_tokens(s, ch, t, strlen(t));
}

/* Reasoning, then content, then two tool calls whose JSON records arrive
 * split mid-object and two to an event. */
static void feed_tool_story(struct oai_stream *s)
{
    assert_int_equal(feed(s, RESIDENT_CHANNEL_REASONING, "Need the "), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_REASONING, "weather tool.\n"), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_CONTENT, "Checking both.\n\n"), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_TOOL_CALL, "{\"index\":0,\"id\":\"call_0123456789abcdef01234567\","), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_TOOL_CALL, "\"name\":\"get_weather\"}{\"index\":0,\"arguments\":\"{\"}"), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_TOOL_CALL, "\n{\"index\":0,\"arguments\":\"\\\"city\\\": \\\"Paris\\\"\"}"), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_TOOL_CALL, "{\"index\":0,\"arguments\":\", \\\"days\\\": 3\"}"), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_TOOL_CALL, "{\"index\":0,\"arguments\":\"}\"}"), 0);
    assert_int_equal(feed(s, RESIDENT_CHANNEL_TOOL_CALL,
                          "{\"index\":1,\"id\":\"call_b\",\"name\":\"search\"}{\"index\":1,\"arguments\":\"{\"}"
                          "{\"index\":1,\"arguments\":\"\\\"q\\\": \\\"caf\xc3\xa9\\\"\"}{\"index\":1,\"arguments\":\"}\"}"), 0);
}

static const struct oai_finish fin_stop = { .finish = RESIDENT_FINISH_STOP, .message = "", .prompt_tokens = 11,
                                            .completion_tokens = 42 };

static void test_stream_tool_calls(void **state)
{
    (void)state;
    struct oai_stream s;
    init(&s, OAI_API_CHAT, 1, 1);
    assert_int_equal(oai_stream_begin(&s), 0);
    feed_tool_story(&s);
    assert_int_equal(oai_stream_finish(&s, &fin_stop), 0);
    struct folded f;
    fold(s.out.p, &f);
    assert_int_equal(f.role_seen, 1);
    assert_string_equal(f.reasoning, "Need the weather tool.\n");
    assert_string_equal(f.reasoning_content, "Need the weather tool.\n");
    assert_string_equal(f.content, "Checking both.\n\n");
    assert_int_equal(f.n_tools, 2);
    assert_string_equal(f.tool_id[0], "call_0123456789abcdef01234567");
    assert_string_equal(f.tool_name[0], "get_weather");
    assert_string_equal(f.tool_args[0], "{\"city\": \"Paris\", \"days\": 3}");
    assert_string_equal(f.tool_id[1], "call_b");
    assert_string_equal(f.tool_name[1], "search");
    assert_string_equal(f.tool_args[1], "{\"q\": \"caf\xc3\xa9\"}");
    assert_string_equal(f.finish, "tool_calls");
    assert_true(f.usage_seen);
    assert_int_equal(f.prompt_tokens, 11);
    assert_int_equal(f.completion_tokens, 42);
    assert_true(f.done_seen);
    assert_false(f.error_seen);
    oai_stream_free(&s);
}

/* The same events without streaming give the same message. */
static void test_body_tool_calls(void **state)
{
    (void)state;
    struct oai_stream s;
    init(&s, OAI_API_CHAT, 0, 0);
    feed_tool_story(&s);
    assert_int_equal(oai_stream_finish(&s, &fin_stop), 0);
    assert_int_equal(s.out.len, 0);     /* nothing streamed */
    struct oai_buf b = { 0 };
    assert_int_equal(oai_stream_body(&s, &fin_stop, &b), 0);
    struct json_object *o = json_tokener_parse(b.p), *choices, *m, *tcs, *fn, *usage, *v;
    assert_non_null(o);
    assert_string_equal(str_of(o, "object"), "chat.completion");
    assert_true(json_object_object_get_ex(o, "choices", &choices));
    struct json_object *c = json_object_array_get_idx(choices, 0);
    assert_string_equal(str_of(c, "finish_reason"), "tool_calls");
    assert_true(json_object_object_get_ex(c, "message", &m));
    assert_string_equal(str_of(m, "role"), "assistant");
    assert_string_equal(str_of(m, "content"), "Checking both.\n\n");
    assert_string_equal(str_of(m, "reasoning"), "Need the weather tool.\n");
    assert_string_equal(str_of(m, "reasoning_content"), "Need the weather tool.\n");
    assert_true(json_object_object_get_ex(m, "tool_calls", &tcs));
    assert_int_equal(json_object_array_length(tcs), 2);
    struct json_object *t0 = json_object_array_get_idx(tcs, 0);
    assert_string_equal(str_of(t0, "id"), "call_0123456789abcdef01234567");
    assert_string_equal(str_of(t0, "type"), "function");
    assert_true(json_object_object_get_ex(t0, "function", &fn));
    assert_string_equal(str_of(fn, "name"), "get_weather");
    assert_string_equal(str_of(fn, "arguments"), "{\"city\": \"Paris\", \"days\": 3}");
    assert_true(json_object_object_get_ex(o, "usage", &usage));
    assert_true(json_object_object_get_ex(usage, "total_tokens", &v));
    assert_int_equal(json_object_get_int(v), 53);
    json_object_put(o);
    oai_buf_free(&b);
    oai_stream_free(&s);
}

/* Only a tool call: content is null, not "". */
static void test_body_tool_only_null_content(void **state)
{
    (void)state;
    struct oai_stream s;
    init(&s, OAI_API_CHAT, 0, 0);
    assert_int_equal(feed(&s, RESIDENT_CHANNEL_TOOL_CALL, "{\"index\":0,\"id\":\"call_x\",\"name\":\"f\"}"
                                                          "{\"index\":0,\"arguments\":\"{}\"}"), 0);
    oai_stream_finish(&s, &fin_stop);
    struct oai_buf b = { 0 };
    assert_int_equal(oai_stream_body(&s, &fin_stop, &b), 0);
    assert_non_null(strstr(b.p, "\"content\":null"));
    assert_null(strstr(b.p, "\"reasoning\""));
    oai_buf_free(&b);
    oai_stream_free(&s);
}

static void test_tool_channel_protocol_errors(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "not json",
        "{\"index\":0,\"arguments\":\"{\"}",                     /* args before a start */
        "{\"index\":1,\"id\":\"call_x\",\"name\":\"f\"}",          /* index skips 0 */
        "{\"index\":0,\"id\":\"call_x\"}",                         /* start without name */
        "{\"index\":0,\"id\":\"\",\"name\":\"f\"}",                /* empty id */
        "{\"index\":\"0\",\"arguments\":\"x\"}",                   /* index not an integer */
        "[1,2]",
        "{\"index\":0,\"id\":\"call_x\",\"name\":\"f\",\"arguments\":\"{}\"}",
        "{\"index\":0,\"id\":\"call_x\",\"name\":\"\xff\"}",        /* invalid UTF-8 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct oai_stream s;
        init(&s, OAI_API_CHAT, 1, 0);
        assert_int_equal(feed(&s, RESIDENT_CHANNEL_TOOL_CALL, bad[i]), -EPROTO);
        assert_true(s.proto_err[0] != 0);
        /* Later events are refused; the stream ends with an error event. */
        assert_int_equal(feed(&s, RESIDENT_CHANNEL_CONTENT, "x"), -EPROTO);
        assert_int_equal(oai_stream_finish(&s, &fin_stop), 0);
        struct folded f;
        fold(s.out.p, &f);
        assert_true(f.error_seen);
        assert_true(f.done_seen);
        assert_string_equal(f.finish, "");
        oai_stream_free(&s);
    }
    /* An object cut off by the end of the stream is an error too. */
    struct oai_stream s;
    init(&s, OAI_API_CHAT, 0, 0);
    assert_int_equal(feed(&s, RESIDENT_CHANNEL_TOOL_CALL, "{\"index\":0,"), 0);
    oai_stream_finish(&s, &fin_stop);
    assert_true(s.proto_err[0] != 0);
    oai_stream_free(&s);
}

static void test_length_and_plain_content(void **state)
{
    (void)state;
    struct oai_stream s;
    init(&s, OAI_API_CHAT, 1, 0);
    assert_int_equal(feed(&s, RESIDENT_CHANNEL_CONTENT, "a \"quoted\" / line\n"), 0);
    struct oai_finish f = fin_stop;
    f.finish = RESIDENT_FINISH_LENGTH;
    assert_int_equal(oai_stream_finish(&s, &f), 0);
    struct folded fo;
    fold(s.out.p, &fo);
    assert_int_equal(fo.role_seen, 1);      /* begin() happens implicitly */
    assert_string_equal(fo.content, "a \"quoted\" / line\n");
    assert_string_equal(fo.finish, "length");
    assert_false(fo.usage_seen);            /* not asked for */
    assert_non_null(strstr(s.out.p, "\"content\":\"a \\\"quoted\\\" / line\\n\""));   /* no \/ escaping */
    oai_stream_free(&s);
}

static void test_completion_api_text(void **state)
{
    (void)state;
    struct oai_stream s;
    init(&s, OAI_API_COMPLETION, 1, 1);
    /* No parsers on /v1/completions: every channel is text. */
    feed(&s, RESIDENT_CHANNEL_REASONING, "one ");
    feed(&s, RESIDENT_CHANNEL_CONTENT, "two");
    oai_stream_finish(&s, &fin_stop);
    assert_non_null(strstr(s.out.p, "\"object\":\"text_completion\""));
    struct folded f;
    fold(s.out.p, &f);
    assert_string_equal(f.content, "one two");
    assert_string_equal(f.finish, "stop");
    assert_true(f.usage_seen);
    oai_stream_free(&s);

    init(&s, OAI_API_COMPLETION, 0, 0);
    feed(&s, RESIDENT_CHANNEL_CONTENT, "abc");
    oai_stream_finish(&s, &fin_stop);
    struct oai_buf b = { 0 };
    assert_int_equal(oai_stream_body(&s, &fin_stop, &b), 0);
    assert_non_null(strstr(b.p, "\"text\":\"abc\""));
    assert_non_null(strstr(b.p, "\"finish_reason\":\"stop\""));
    oai_buf_free(&b);
    oai_stream_free(&s);
}

static void test_midstream_error(void **state)
{
    (void)state;
    struct oai_stream s;
    init(&s, OAI_API_CHAT, 1, 1);
    feed(&s, RESIDENT_CHANNEL_CONTENT, "partial");
    struct oai_finish f = { .finish = RESIDENT_FINISH_SHUTDOWN, .error = -ESHUTDOWN, .message = "bye" };
    oai_stream_finish(&s, &f);
    struct folded fo;
    fold(s.out.p, &fo);
    assert_true(fo.error_seen);
    assert_true(fo.done_seen);
    assert_false(fo.usage_seen);
    assert_string_equal(fo.finish, "");
    oai_stream_free(&s);
}

static void test_finish_failed_mapping(void **state)
{
    (void)state;
    struct oai_error e;
    struct oai_finish f = { .finish = RESIDENT_FINISH_ERROR, .error = -E2BIG,
                            .message = "prompt has 5000 tokens; limit max_prompt_tokens = 4096" };
    assert_int_equal(oai_finish_failed(&f, OAI_API_CHAT, &e), 1);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.code, "context_length_exceeded");
    assert_string_equal(e.param, "messages");
    f.message = "max_tokens 9999 exceeds the limit max_new_tokens = 4096";
    oai_finish_failed(&f, OAI_API_COMPLETION, &e);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "max_tokens");
    f.error = -EBUSY;
    oai_finish_failed(&f, OAI_API_CHAT, &e);
    assert_int_equal(e.status, 429);
    f.finish = RESIDENT_FINISH_SHUTDOWN;
    oai_finish_failed(&f, OAI_API_CHAT, &e);
    assert_int_equal(e.status, 503);
    f = fin_stop;
    assert_int_equal(oai_finish_failed(&f, OAI_API_CHAT, &e), 0);
    f.finish = RESIDENT_FINISH_STOP_STRING;
    assert_int_equal(oai_finish_failed(&f, OAI_API_CHAT, &e), 0);
    struct oai_buf b = { 0 };
    oai_error_set(&e, 404, "invalid_request_error", "model_not_found", "model", "no %s", "x");
    assert_int_equal(oai_error_json(&e, &b), 0);
    assert_string_equal(b.p, "{\"error\":{\"message\":\"no x\",\"type\":\"invalid_request_error\",\"param\":\"model\","
                             "\"code\":\"model_not_found\"}}");
    oai_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_tool_calls),
        cmocka_unit_test(test_body_tool_calls),
        cmocka_unit_test(test_body_tool_only_null_content),
        cmocka_unit_test(test_tool_channel_protocol_errors),
        cmocka_unit_test(test_length_and_plain_content),
        cmocka_unit_test(test_completion_api_text),
        cmocka_unit_test(test_midstream_error),
        cmocka_unit_test(test_finish_failed_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
