/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The channel layer (daemon/channels.c) over the engine's real output
 * parser, fed model-like text split at every byte position (and byte by
 * byte): the reasoning / content text and the tool-call event objects must
 * not depend on the split, and must be exactly what the gateway's mapping
 * expects ({"index":N,"id":"call_…","name":"fn"} then
 * {"index":N,"arguments":"fragment"}...). Also the request options
 * (enable_thinking from chat_template_kwargs over template_kwargs,
 * tool_choice "none").
 */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/channels.h"
#include "shm/proto.h"

static int failures;

#define CHECK(c) do { \
    if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } \
} while (0)

struct out {
    char   text[3][4096];
    size_t len[3];
    int    switches;        /* channel changes seen */
    uint32_t last;
};

static int sink(void *user, uint32_t chan, const char *text, size_t len)
{
    struct out *o = user;
    if (chan > SHM_CHAN_TOOL_CALL || o->len[chan] + len >= sizeof(o->text[chan]))
        return -22;
    if (chan != o->last)
        o->switches++;
    o->last = chan;
    memcpy(o->text[chan] + o->len[chan], text, len);
    o->len[chan] += len;
    return 0;
}

static void counter_id(void *user, size_t index, char hex[24])
{
    (void)user;
    char b[32];
    snprintf(b, sizeof(b), "%024zx", index + 0xabc);
    memcpy(hex, b, 24);
}

/* Run text through a fresh channel layer in pieces cut at `cuts`. */
static int run(const struct channels_opts *o0, const char *text, const size_t *cuts, size_t n_cuts,
               struct out *out, size_t *calls)
{
    struct channels_opts o = *o0;
    o.id_fn = counter_id;
    struct channels *c = NULL;
    char err[128];
    memset(out, 0, sizeof(*out));
    if (channels_new(&o, &c, err, sizeof(err)) < 0) {
        fprintf(stderr, "channels_new: %s\n", err);
        return -1;
    }
    out->last = channels_initial(c);
    size_t pos = 0, len = strlen(text);
    int r = 0;
    for (size_t i = 0; i <= n_cuts && r == 0; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        r = channels_feed(c, text + pos, end - pos, sink, out);
        pos = end;
    }
    if (r == 0)
        r = channels_finish(c, sink, out);
    *calls = channels_tool_calls(c);
    channels_free(c);
    return r;
}

static const char *TOOLS_REQ =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"
    "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\"}}}}}]}";

static const char *MODEL_OUT =
    "Let me \"check\" the weather.\n</think>\n\nSure — checking.\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nLyon \"2\"\n</parameter>\n</function>\n</tool_call>";

/* Rebuild the calls from the tool-call channel's objects, as the gateway does. */
static int check_tool_objects(const char *s, size_t n, char names[2][32], char args[2][128], char ids[2][40])
{
    struct json_tokener *tok = json_tokener_new();
    size_t pos = 0;
    int calls = 0, ok = 1;
    while (pos < n && ok) {
        json_tokener_reset(tok);
        struct json_object *o = json_tokener_parse_ex(tok, s + pos, (int)(n - pos));
        if (!o || json_tokener_get_error(tok) != json_tokener_success) {
            ok = 0;
            break;
        }
        pos += json_tokener_get_parse_end(tok);
        struct json_object *idx, *id, *name, *a;
        ok = json_object_object_get_ex(o, "index", &idx) && json_object_is_type(idx, json_type_int);
        int i = ok ? json_object_get_int(idx) : -1;
        if (ok && json_object_object_get_ex(o, "id", &id)) {
            ok = i == calls && i < 2 && json_object_object_get_ex(o, "name", &name) &&
                 !json_object_object_get_ex(o, "arguments", NULL) && json_object_object_length(o) == 3;
            if (ok) {
                snprintf(ids[i], 40, "%s", json_object_get_string(id));
                snprintf(names[i], 32, "%s", json_object_get_string(name));
                args[i][0] = '\0';
                calls++;
            }
        } else if (ok) {
            ok = i >= 0 && i == calls - 1 && json_object_object_get_ex(o, "arguments", &a) &&
                 json_object_object_length(o) == 2 && json_object_is_type(a, json_type_string);
            if (ok)
                strncat(args[i], json_object_get_string(a), 127 - strlen(args[i]));
        }
        json_object_put(o);
    }
    json_tokener_free(tok);
    return ok ? calls : -1;
}

static void test_tool_calls_every_split(void)
{
    struct channels_opts o;
    CHECK(channels_opts_from_request(SHM_PROMPT_CHAT, (const uint8_t *)TOOLS_REQ, strlen(TOOLS_REQ), &o) == 1);
    CHECK(o.thinking == 1 && o.tools == 1);
    struct out *ref = calloc(1, sizeof(*ref)), *got = calloc(1, sizeof(*got));
    size_t calls = 0;
    CHECK(run(&o, MODEL_OUT, NULL, 0, ref, &calls) == 0);
    CHECK(calls == 2);
    const char *want_reasoning = "Let me \"check\" the weather.\n";
    CHECK(ref->len[SHM_CHAN_REASONING] == strlen(want_reasoning) &&
          memcmp(ref->text[SHM_CHAN_REASONING], want_reasoning, strlen(want_reasoning)) == 0);
    const char *want_content = "\n\nSure — checking.\n";
    CHECK(ref->len[SHM_CHAN_CONTENT] == strlen(want_content) &&
          memcmp(ref->text[SHM_CHAN_CONTENT], want_content, strlen(want_content)) == 0);
    char names[2][32], args[2][128], ids[2][40];
    CHECK(check_tool_objects(ref->text[SHM_CHAN_TOOL_CALL], ref->len[SHM_CHAN_TOOL_CALL], names, args, ids) == 2);
    CHECK(strcmp(names[0], "get_weather") == 0 && strcmp(names[1], "get_weather") == 0);
    CHECK(strcmp(ids[0], "call_000000000000000000000abc") == 0 && strcmp(ids[1], "call_000000000000000000000abd") == 0);
    /* The schema types the arguments: days is an integer, city a string. */
    CHECK(strcmp(args[0], "{\"city\": \"Paris\", \"days\": 3}") == 0);
    CHECK(strcmp(args[1], "{\"city\": \"Lyon \\\"2\\\"\"}") == 0);
    if (failures)
        fprintf(stderr, "reasoning [%.*s]\ncontent [%.*s]\ntools [%.*s]\nargs0 [%s] args1 [%s]\n",
                (int)ref->len[1], ref->text[1], (int)ref->len[0], ref->text[0], (int)ref->len[2], ref->text[2],
                args[0], args[1]);

    size_t n = strlen(MODEL_OUT);
    int bad = 0;
    for (size_t cut = 1; cut < n && !bad; cut++) {
        size_t cuts[1] = { cut };
        if (run(&o, MODEL_OUT, cuts, 1, got, &calls) != 0 || calls != 2)
            bad = 1;
        for (int ch = 0; ch < 3 && !bad; ch++) {
            if (ch == SHM_CHAN_TOOL_CALL) {
                char n2[2][32], a2[2][128], i2[2][40];
                bad = check_tool_objects(got->text[ch], got->len[ch], n2, a2, i2) != 2 ||
                      strcmp(a2[0], args[0]) != 0 || strcmp(a2[1], args[1]) != 0 ||
                      strcmp(n2[0], names[0]) != 0 || strcmp(i2[1], ids[1]) != 0;
            } else {
                bad = got->len[ch] != ref->len[ch] || memcmp(got->text[ch], ref->text[ch], ref->len[ch]) != 0;
            }
        }
        if (bad)
            fprintf(stderr, "split at %zu differs\n", cut);
    }
    CHECK(!bad);
    /* Byte by byte (UTF-8 of the em dash cut too). */
    size_t *cuts = calloc(n, sizeof(*cuts));
    for (size_t i = 0; i + 1 < n; i++)
        cuts[i] = i + 1;
    CHECK(run(&o, MODEL_OUT, cuts, n - 1, got, &calls) == 0 && calls == 2);
    for (int ch = 0; ch < 2; ch++)
        CHECK(got->len[ch] == ref->len[ch] && memcmp(got->text[ch], ref->text[ch], ref->len[ch]) == 0);
    char n2[2][32], a2[2][128], i2[2][40];
    CHECK(check_tool_objects(got->text[2], got->len[2], n2, a2, i2) == 2 && strcmp(a2[0], args[0]) == 0);
    free(cuts);
    free(ref);
    free(got);
}

static void test_options(void)
{
    struct channels_opts o;
    /* RAW and IDS: no parsing at all. */
    CHECK(channels_opts_from_request(SHM_PROMPT_RAW, NULL, 0, &o) == 0);
    CHECK(channels_opts_from_request(SHM_PROMPT_IDS, NULL, 0, &o) == 0);
    /* TEXT: the template's default opens <think>; no tools. */
    CHECK(channels_opts_from_request(SHM_PROMPT_TEXT, (const uint8_t *)"hi", 2, &o) == 1 && o.thinking && !o.tools);
    const char *a = "{\"messages\":[],\"template_kwargs\":{\"enable_thinking\":false}}";
    CHECK(channels_opts_from_request(SHM_PROMPT_CHAT, (const uint8_t *)a, strlen(a), &o) == 1 && !o.thinking);
    const char *b = "{\"messages\":[],\"chat_template_kwargs\":{\"enable_thinking\":true},"
                    "\"template_kwargs\":{\"enable_thinking\":false}}";
    CHECK(channels_opts_from_request(SHM_PROMPT_CHAT, (const uint8_t *)b, strlen(b), &o) == 1 && o.thinking);
    const char *c = "{\"messages\":[],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
                    "\"tool_choice\":\"none\"}";
    CHECK(channels_opts_from_request(SHM_PROMPT_CHAT, (const uint8_t *)c, strlen(c), &o) == 1 && !o.tools);

    /* Thinking off, tools off: everything is content, tags included. */
    struct out *got = calloc(1, sizeof(*got));
    size_t calls = 9;
    const char *t = "<think>x</think>y<tool_call>\n<function=f>\n</function>\n</tool_call>";
    CHECK(run(&o, t, NULL, 0, got, &calls) == 0 && calls == 0);
    memset(&o, 0, sizeof(o));
    CHECK(run(&o, t, NULL, 0, got, &calls) == 0 && calls == 0);
    CHECK(got->len[0] == strlen(t) && memcmp(got->text[0], t, strlen(t)) == 0 && !got->len[1] && !got->len[2]);
    /* Thinking on, no </think> before the end: all reasoning. */
    o.thinking = 1;
    CHECK(run(&o, "just thinking", NULL, 0, got, &calls) == 0);
    CHECK(got->len[1] == 13 && got->len[0] == 0);
    free(got);
}

int main(void)
{
    test_tool_calls_every_split();
    test_options();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("channels: reasoning / content / tool-call objects independent of the split: ok\n");
    return 0;
}
