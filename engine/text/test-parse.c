/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output parser tests: every rule of spec text.md §4-5 as a whole-text
 * case, and for every case the same result from streaming at every split
 * point (two pieces), byte by byte, and in three pieces at a stride.
 * Also: schema-typed argument conversion and the Python-semantics readers.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-output.h"
#include "engine/text/parse-value.h"

static int failures;
static int checks;

static void counter_id(void *user, size_t index, char hex[24])
{
    (void)user;
    snprintf(hex, 24, "%023zu", index);
    hex[23] = (char)('0' + (index % 10));
}

/* Summary "R=<reasoning>|C=<content>|T=name:args;…", '~' for null. */
static char *summary(const struct chat_parse_result *r)
{
    struct json_out o;
    json_out_init(&o);
    json_out_puts(&o, "R=");
    if (r->reasoning)
        json_out_append(&o, r->reasoning, r->reasoning_len);
    else
        json_out_putc(&o, '~');
    json_out_puts(&o, "|C=");
    if (r->content)
        json_out_append(&o, r->content, r->content_len);
    else
        json_out_putc(&o, '~');
    json_out_puts(&o, "|T=");
    for (size_t i = 0; i < r->n_tool_calls; i++) {
        if (i)
            json_out_putc(&o, ';');
        json_out_puts(&o, r->tool_calls[i].name);
        json_out_putc(&o, ':');
        json_out_puts(&o, r->tool_calls[i].arguments);
    }
    return json_out_take(&o, NULL);
}

/* Streaming collector that also checks the delta protocol. */
struct stream {
    struct json_out reasoning, content;
    struct json_out calls;     /* "name:args;" as the summary writes it */
    size_t n_calls;
    bool bad;
    char why[128];
};

static int stream_delta(void *user, const struct chat_delta *d)
{
    struct stream *s = user;
    if (d->len == 0 && d->type != CHAT_DELTA_TOOL_NAME) {
        s->bad = true;
        snprintf(s->why, sizeof(s->why), "empty delta");
    }
    switch (d->type) {
    case CHAT_DELTA_REASONING:
        json_out_append(&s->reasoning, d->text, d->len);
        break;
    case CHAT_DELTA_CONTENT:
        json_out_append(&s->content, d->text, d->len);
        break;
    case CHAT_DELTA_TOOL_NAME:
        if (d->tool_index != s->n_calls || !d->tool_id || strlen(d->tool_id) != CHAT_TOOL_ID_LEN ||
            strncmp(d->tool_id, "call_", 5) != 0) {
            s->bad = true;
            snprintf(s->why, sizeof(s->why), "bad tool start index %zu", d->tool_index);
        }
        if (s->n_calls)
            json_out_putc(&s->calls, ';');
        json_out_append(&s->calls, d->text, d->len);
        json_out_putc(&s->calls, ':');
        s->n_calls++;
        break;
    case CHAT_DELTA_TOOL_ARGS:
        if (d->tool_index + 1 != s->n_calls) {
            s->bad = true;
            snprintf(s->why, sizeof(s->why), "args for call %zu while %zu started", d->tool_index, s->n_calls);
        }
        json_out_append(&s->calls, d->text, d->len);
        break;
    }
    return 0;
}

static char *stream_summary(struct stream *s)
{
    struct json_out o;
    json_out_init(&o);
    json_out_puts(&o, "R=");
    if (s->reasoning.len)
        json_out_append(&o, s->reasoning.data, s->reasoning.len);
    else
        json_out_putc(&o, '~');
    json_out_puts(&o, "|C=");
    if (s->content.len)
        json_out_append(&o, s->content.data, s->content.len);
    else
        json_out_putc(&o, '~');
    json_out_puts(&o, "|T=");
    json_out_append(&o, s->calls.data ? s->calls.data : "", s->calls.len);
    return json_out_take(&o, NULL);
}

/* Feed `text` cut at the offsets in cuts[0..ncuts) and return the summary. */
static char *run_stream(const char *text, size_t len, const struct chat_parser_opts *opts,
                        const size_t *cuts, size_t ncuts, bool *bad, char *why)
{
    struct chat_parser *p;
    struct stream s;
    memset(&s, 0, sizeof(s));
    if (chat_parser_new(opts, &p, NULL) < 0)
        return NULL;
    size_t at = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        chat_parser_feed(p, text + at, end - at, stream_delta, &s);
        at = end;
    }
    chat_parser_finish(p, stream_delta, &s);
    chat_parser_free(p);
    char *sum = stream_summary(&s);
    *bad = s.bad;
    if (s.bad)
        snprintf(why, 128, "%s", s.why);
    json_out_free(&s.reasoning);
    json_out_free(&s.content);
    json_out_free(&s.calls);
    return sum;
}

struct tcase {
    const char *name;
    bool thinking;
    const char *input;
    const char *want;
};

static const char TOOLS_JSON[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", "
    "\"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"}, \"temp\": {\"type\": \"number\"}, "
    "\"ok\": {\"type\": \"boolean\"}, \"tags\": {\"type\": \"array\"}, \"opts\": {\"type\": \"object\"}, "
    "\"maybe\": {\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"null\"}]}, \"any\": {\"type\": \"custom\"}, "
    "\"n\": {\"type\": \"null\"}, \"odd\": {\"type\": [\"integer\", \"null\"]}}}}}, "
    "{\"type\": \"function\", \"function\": {\"name\": \"noschema\"}}]";

#define TC "<tool_call>\n<function=get_weather>\n"
#define P(name, value) "<parameter=" name ">\n" value "\n</parameter>\n"
#define END "</function>\n</tool_call>"

static const struct tcase cases[] = {
    /* §5 reasoning split */
    { "end_tag", true, "plain reasoning\n</think>\n\nHello", "R=plain reasoning\n|C=\n\nHello|T=" },
    { "truncated_reasoning", true, "thinking forever", "R=thinking forever|C=~|T=" },
    { "old_style_think", true, "<think>\nold style\n</think>\n\nans", "R=\nold style\n|C=\n\nans|T=" },
    { "ws_then_think", true, "  \n<think>x</think>y", "R=x|C=y|T=" },
    { "only_end", true, "</think>", "R=~|C=~|T=" },
    { "empty", true, "", "R=~|C=~|T=" },
    { "thinking_off", false, "a</think>b", "R=~|C=a</think>b|T=" },
    { "thinking_off_plain", false, "Hello there", "R=~|C=Hello there|T=" },
    { "think_tag_later_kept", true, "a<think>b</think>c", "R=a<think>b|C=c|T=" },
    { "tool_call_mention", true, "I will use <tool_call> tags.</think>ok", "R=I will use <tool_call> tags.|C=ok|T=" },
    { "tool_call_mention_at_end", true, "use <tool_call>", "R=use <tool_call>|C=~|T=" },
    { "tool_call_then_function_no_sep", true, "x<tool_call>\n<functional", "R=x<tool_call>\n<functional|C=~|T=" },
    { "implicit_end", true, "need tool\n" TC P("city", "Paris") END,
      "R=need tool\n|C=~|T=get_weather:{\"city\": \"Paris\"}" },
    { "implicit_end_space_variant", true, "r<tool_call> <function name=\"x\">",
      "R=r|C=<tool_call> <function name=\"x\">|T=" },
    /* §4 tool calls */
    { "two_calls", true,
      "r</think>\n\nChecking both.\n\n" TC P("city", "Paris") END "\n" TC P("city", "Rome") P("days", "3") END,
      "R=r|C=\n\nChecking both.\n\n|T=get_weather:{\"city\": \"Paris\"};get_weather:{\"city\": \"Rome\", \"days\": 3}" },
    { "types", false,
      TC P("days", "007") P("temp", "5.0") P("ok", "True") P("tags", "[1, 'a']") P("opts", "{'a': None}")
      P("maybe", "None") P("any", "{'k': (1, 2)}") END,
      "R=~|C=~|T=get_weather:{\"days\": 7, \"temp\": 5, \"ok\": true, \"tags\": [1, \"a\"], \"opts\": {\"a\": null}, "
      "\"maybe\": null, \"any\": {\"k\": [1, 2]}}" },
    { "types_fallbacks", false,
      TC P("zzz", "42") P("days", "abc") P("temp", "2.5") P("ok", "yes") P("city", "null") P("maybe", "x")
      P("any", "hello") P("n", "None") P("odd", "[1]") END,
      "R=~|C=~|T=get_weather:{\"zzz\": \"42\", \"days\": \"abc\", \"temp\": 2.5, \"ok\": false, \"city\": \"null\", "
      "\"maybe\": \"x\", \"any\": \"hello\", \"n\": null, \"odd\": [1]}" },
    { "numbers", false,
      TC P("temp", "1e400") P("days", "-0") P("tags", "\"[1,2]\"") P("opts", "{\"a\": 1.50, \"b\": 1e16, \"c\": 99999999999999999999999}")
      P("any", "0x1F") END,
      "R=~|C=~|T=get_weather:{\"temp\": \"1e400\", \"days\": 0, \"tags\": [1, 2], "
      "\"opts\": {\"a\": 1.5, \"b\": 1e+16, \"c\": 99999999999999999999999}, \"any\": 31}" },
    { "big_float_integral", false, TC P("temp", "1e20") P("days", " 12_3 ") END,
      "R=~|C=~|T=get_weather:{\"temp\": 100000000000000000000, \"days\": 123}" },
    { "nested_literal", false,
      TC "<parameter=city>\nline1\n<parameter=x>\ninner\n</parameter>\nline2\n</parameter>\n" END,
      "R=~|C=~|T=get_weather:{\"city\": \"line1\\n<parameter=x>\\ninner\\n</parameter>\\nline2\"}" },
    { "missing_param_close", false, TC "<parameter=city>\nParis\n<parameter=days>\n2\n</parameter>\n" END,
      "R=~|C=~|T=get_weather:{\"city\": \"Paris\", \"days\": 2}" },
    { "missing_param_close_before_function_end", false, TC "<parameter=city>\nParis\n" END,
      "R=~|C=~|T=get_weather:{\"city\": \"Paris\"}" },
    { "truncated_call", false, TC "<parameter=city>\nPar", "R=~|C=~|T=get_weather:{\"city\": \"Par\"}" },
    { "truncated_after_name", false, "<tool_call>\n<function=get_weather>", "R=~|C=~|T=get_weather:{}" },
    { "truncated_in_name", false, "<tool_call>\n<function=get_wea", "R=~|C=<tool_call>\n<function=get_wea|T=" },
    { "invalid_name", false, "<tool_call>\n<function=bad name>\n</function>\n</tool_call>",
      "R=~|C=<tool_call>\n<function=bad name>\n</function>\n</tool_call>|T=" },
    { "template_name", false, "<tool_call>\n<function={{ tc.name }}>\n</function>\n</tool_call>",
      "R=~|C=<tool_call>\n<function={{ tc.name }}>\n</function>\n</tool_call>|T=" },
    { "empty_name", false, "<tool_call><function=></function></tool_call>",
      "R=~|C=<tool_call><function=></function></tool_call>|T=" },
    { "tool_call_without_function", false, "see <tool_call> here", "R=~|C=see <tool_call> here|T=" },
    { "bare_function", false, "x <function=noschema>\n<parameter=a>\n1\n</parameter>\n</function>",
      "R=~|C=x |T=noschema:{\"a\": \"1\"}" },
    { "text_after_call", false, TC P("city", "A") END "\n\nDone.", "R=~|C=\n\nDone.|T=get_weather:{\"city\": \"A\"}" },
    { "ws_after_call", false, "Hi " TC P("city", "A") END "\n  \n", "R=~|C=Hi |T=get_weather:{\"city\": \"A\"}" },
    { "literal_param_close", false, TC "<parameter=city>\na</parameter>b\n</parameter>\n" END,
      "R=~|C=~|T=get_weather:{\"city\": \"a</parameter>b\"}" },
    { "literal_tool_call_close", false, TC "<parameter=city>\nx</tool_call>y\n</parameter>\n" END,
      "R=~|C=~|T=get_weather:{\"city\": \"x</tool_call>y\"}" },
    { "unknown_param_after_close", false, TC P("city", "Paris") P("extra", "x") END,
      "R=~|C=~|T=get_weather:{\"city\": \"Paris\\n</parameter>\\n<parameter=extra>\\nx\\n</parameter>\"}" },
    { "noschema_params", false, "<tool_call>\n<function=noschema>\n" P("a", "1") P("b", "two") END,
      "R=~|C=~|T=noschema:{\"a\": \"1\", \"b\": \"two\"}" },
    { "duplicate_param", false, TC P("city", "A") P("city", "B") END, "R=~|C=~|T=get_weather:{\"city\": \"A\"}" },
    { "param_name_escaped", false, "<tool_call>\n<function=noschema>\n<parameter=a\"b>\nv\n</parameter>\n" END,
      "R=~|C=~|T=noschema:{\"a\\\"b\": \"v\"}" },
    { "no_function_end", false, TC P("city", "A") "</tool_call>", "R=~|C=~|T=get_weather:{\"city\": \"A\"}" },
    { "close_without_newlines", false, "<tool_call><function=noschema><parameter=a>1</parameter></function></tool_call>",
      "R=~|C=~|T=noschema:{\"a\": \"1\"}" },
    { "one_newline_stripped", false, TC "<parameter=city>\n\nA\n\n</parameter>\n" END,
      "R=~|C=~|T=get_weather:{\"city\": \"\\nA\\n\"}" },
    { "call_in_think_then_more", true, "hmm\n" TC P("city", "A") END "\nafter",
      "R=hmm\n|C=\nafter|T=get_weather:{\"city\": \"A\"}" },
    { "unicode", false, "é ☃ " TC P("city", "Zürich 東京") END, "R=~|C=é ☃ |T=get_weather:{\"city\": \"Zürich 東京\"}" },
    { "unicode_ws_before_function", true, "r<tool_call>\u3000<function=get_weather>\n" P("city", "A") END,
      "R=r|C=~|T=get_weather:{\"city\": \"A\"}" },
    { "content_control_chars", false, "a\x01\x7f\tb", "R=~|C=a\x01\x7f\tb|T=" },
};

static void check_case(const struct tcase *c, const struct chat_parser_opts *base)
{
    struct chat_parser_opts opts = *base;
    opts.thinking = c->thinking;
    size_t len = strlen(c->input);
    struct chat_parse_result r;
    struct engine_error err = { 0 };
    checks++;
    if (chat_parse_text(c->input, len, &opts, &r, &err) < 0) {
        fprintf(stderr, "FAIL %s: parse failed: %s\n", c->name, err.msg);
        failures++;
        return;
    }
    char *whole = summary(&r);
    chat_parse_result_free(&r);
    if (strcmp(whole, c->want) != 0) {
        fprintf(stderr, "FAIL %s:\n  want %s\n  got  %s\n", c->name, c->want, whole);
        failures++;
    }
    /* Every split point, byte by byte, and three pieces at strides. */
    size_t cuts[3];
    for (size_t k = 0; k <= len + 1; k++) {
        bool bad = false;
        char why[128] = "";
        char *got;
        size_t nc;
        if (k <= len) {
            cuts[0] = k;
            nc = 1;
        } else {
            nc = 0;
        }
        got = run_stream(c->input, len, &opts, cuts, nc, &bad, why);
        checks++;
        if (!got || strcmp(got, whole) != 0 || bad) {
            fprintf(stderr, "FAIL %s: split at %zu: %s\n  whole  %s\n  stream %s\n", c->name, k, why, whole, got);
            failures++;
            free(got);
            break;
        }
        free(got);
    }
    for (size_t a = 1; a < len; a += 3) {
        for (size_t b = a; b < len; b += 5) {
            bool bad = false;
            char why[128] = "";
            cuts[0] = a;
            cuts[1] = b;
            char *got = run_stream(c->input, len, &opts, cuts, 2, &bad, why);
            checks++;
            if (!got || strcmp(got, whole) != 0 || bad) {
                fprintf(stderr, "FAIL %s: cuts %zu,%zu: %s\n  whole  %s\n  stream %s\n", c->name, a, b, why, whole, got);
                failures++;
                free(got);
                goto bytes;
            }
            free(got);
        }
    }
bytes:;
    /* One byte at a time. */
    struct chat_parser *p;
    struct stream s;
    memset(&s, 0, sizeof(s));
    chat_parser_new(&opts, &p, NULL);
    for (size_t i = 0; i < len; i++)
        chat_parser_feed(p, c->input + i, 1, stream_delta, &s);
    chat_parser_finish(p, stream_delta, &s);
    if (chat_parser_feed(p, "x", 1, stream_delta, &s) != -EINVAL) {
        fprintf(stderr, "FAIL %s: feed after finish accepted\n", c->name);
        failures++;
    }
    chat_parser_free(p);
    char *got = stream_summary(&s);
    checks++;
    if (strcmp(got, whole) != 0 || s.bad) {
        fprintf(stderr, "FAIL %s: byte by byte: %s\n  whole  %s\n  stream %s\n", c->name, s.why, whole, got);
        failures++;
    }
    free(got);
    json_out_free(&s.reasoning);
    json_out_free(&s.content);
    json_out_free(&s.calls);
    free(whole);
}

static void expect_str(const char *name, const char *got, const char *want)
{
    checks++;
    if (!got || strcmp(got, want) != 0) {
        fprintf(stderr, "FAIL %s: want %s got %s\n", name, want, got ? got : "(null)");
        failures++;
    }
}

static void double_repr_cases(void)
{
    static const struct { double d; const char *want; } t[] = {
        { 1.0, "1.0" }, { 0.1, "0.1" }, { -0.0, "-0.0" }, { 1e16, "1e+16" }, { 1e15, "1000000000000000.0" },
        { 1e-5, "1e-05" }, { 0.0001, "0.0001" }, { 123.0, "123.0" }, { 1.5e300, "1.5e+300" },
        { 5e-324, "5e-324" }, { 1.7976931348623157e308, "1.7976931348623157e+308" }, { 0.3, "0.3" },
        { 2.0 / 3.0, "0.6666666666666666" }, { 123456789012345680.0, "1.2345678901234568e+17" },
        { NAN, "NaN" }, { INFINITY, "Infinity" }, { -INFINITY, "-Infinity" }, { 1e22, "1e+22" },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct json_out o;
        json_out_init(&o);
        json_out_double(&o, t[i].d);
        char *s = json_out_take(&o, NULL);
        expect_str("double repr", s, t[i].want);
        free(s);
    }
}

static void value_case(const char *in, enum parse_value_mode mode, const char *want)
{
    struct json_object *v = NULL;
    int rc = parse_value(in, strlen(in), mode, &v, NULL);
    char name[96];
    snprintf(name, sizeof(name), "%s value '%.60s'", mode == PARSE_VALUE_JSON ? "json" : "python", in);
    if (!want) {
        checks++;
        if (rc == 0) {
            fprintf(stderr, "FAIL %s: accepted\n", name);
            failures++;
        }
        json_object_put(v);
        return;
    }
    if (rc < 0) {
        checks++;
        fprintf(stderr, "FAIL %s: rejected\n", name);
        failures++;
        return;
    }
    struct json_out o;
    json_out_init(&o);
    json_out_value(&o, v);
    char *s = json_out_take(&o, NULL);
    expect_str(name, s, want);
    free(s);
    json_object_put(v);
}

static void value_cases(void)
{
    const enum parse_value_mode J = PARSE_VALUE_JSON, Y = PARSE_VALUE_PYTHON;
    value_case(" {\"b\": 1, \"a\": [true, null, 1.50, -0, 1E2, \"\\u00e9\\ud83d\\ude00\\/\"]} ", J,
               "{\"b\": 1, \"a\": [true, null, 1.5, 0, 100.0, \"é😀/\"]}");
    value_case("{\"a\": 1, \"b\": 2, \"a\": 3}", J, "{\"a\": 3, \"b\": 2}");
    value_case("[NaN, Infinity, -Infinity, 1e400]", J, "[NaN, Infinity, -Infinity, Infinity]");
    value_case("123456789012345678901234567890", J, "123456789012345678901234567890");
    value_case("-9223372036854775809", J, "-9223372036854775809");
    value_case("[1,]", J, NULL);
    value_case("01", J, NULL);
    value_case("'a'", J, NULL);
    value_case("\"a\nb\"", J, NULL);
    value_case("\"\\ud800\"", J, NULL);
    value_case("[1] x", J, NULL);
    value_case("\"\xc3\"", J, NULL);
    value_case("{'a': (1, 2.5, None), \"b\": [True, False,], 3: 'x', None: 1, 1.5: 2}", Y,
               "{\"a\": [1, 2.5, null], \"b\": [true, false], \"3\": \"x\", \"null\": 1, \"1.5\": 2}");
    value_case("'it''s' \"x\"", Y, "\"itsx\"");
    value_case("r'\\n' + 'x'", Y, NULL);
    value_case("r'\\n'", Y, "\"\\\\n\"");
    value_case("'\\x41\\u00e9\\101\\q'", Y, "\"AéA\\\\q\"");
    value_case("'''multi\nline'''", Y, "\"multi\\nline\"");
    value_case("-1_000", Y, "-1000");
    value_case("0x_ff", Y, "255");
    value_case("0o17", Y, "15");
    value_case("0b101", Y, "5");
    value_case(".5", Y, "0.5");
    value_case("1.", Y, "1.0");
    value_case("(1)", Y, "1");
    value_case("()", Y, "[]");
    value_case("(1,)", Y, "[1]");
    value_case("  [1, # comment\n 2]", Y, "[1, 2]");
    value_case("01", Y, NULL);
    value_case("00", Y, "0");
    value_case("1j", Y, NULL);
    value_case("{1, 2}", Y, NULL);
    value_case("b'x'", Y, NULL);
    value_case("f'x'", Y, NULL);
    value_case("true", Y, NULL);
    value_case("hello", Y, NULL);
    value_case("--1", Y, NULL);
    value_case("'\\N{BULLET}'", Y, NULL);
    value_case("'\\ud800'", Y, NULL);
    /* Top level of ast.literal_eval: bare tuples, newlines, indentation. */
    value_case("1, 'a',", Y, "[1, \"a\"]");
    value_case("\t51_000,", Y, "[51000]");
    value_case("5\n\n# done\n", Y, "5");
    value_case("\n\n#c\n[1,\n 2]", Y, "[1, 2]");
    value_case("'a'\n'b'", Y, NULL);
    value_case("+\n5", Y, NULL);
    value_case("\n 5", Y, NULL);
    value_case("5\n\t", Y, NULL);
    value_case("5\\\n", Y, NULL);
    value_case("-(5)", Y, "-5");
    value_case("- ((1.5))", Y, "-1.5");
    value_case("+(-5)", Y, NULL);
    value_case("0x1f99999999999999999999", Y, "38202055899822281920715161");
    value_case("{[1]: 2}", Y, NULL);
    value_case("", Y, NULL);
}

static void convert_case(struct json_object *tools, const char *fn, const char *param, const char *value,
                         const char *want)
{
    struct json_out o;
    json_out_init(&o);
    chat_param_convert(tools, fn, strlen(fn), param, strlen(param), value, strlen(value), &o);
    char *s = json_out_take(&o, NULL);
    char name[96];
    snprintf(name, sizeof(name), "convert %s.%s '%.40s'", fn, param, value);
    expect_str(name, s, want);
    free(s);
}

static void convert_cases(struct json_object *tools)
{
    convert_case(tools, "get_weather", "days", "+42", "42");
    convert_case(tools, "get_weather", "days", "1_0", "10");
    convert_case(tools, "get_weather", "days", "1__0", "\"1__0\"");
    convert_case(tools, "get_weather", "days", "NULL", "null");
    convert_case(tools, "get_weather", "days", "99999999999999999999", "99999999999999999999");
    convert_case(tools, "get_weather", "temp", "-2.50", "-2.5");
    convert_case(tools, "get_weather", "temp", "nan", "\"nan\"");
    convert_case(tools, "get_weather", "temp", "-0.0", "0");
    convert_case(tools, "get_weather", "temp", "1e-7", "1e-07");
    convert_case(tools, "get_weather", "ok", "TRUE", "true");
    convert_case(tools, "get_weather", "ok", "true ", "false");
    convert_case(tools, "get_weather", "tags", "not json", "\"not json\"");
    convert_case(tools, "get_weather", "tags", "\"{'a': 1}\"", "{\"a\": 1}");
    convert_case(tools, "get_weather", "tags", "\"plain\"", "\"plain\"");
    convert_case(tools, "get_weather", "any", "'quoted'", "\"quoted\"");
    convert_case(tools, "get_weather", "any", "3.0", "3.0");
    convert_case(tools, "get_weather", "any", "{1, 2}", "\"{1, 2}\"");
    convert_case(tools, "get_weather", "maybe", "null", "null");
    convert_case(tools, "get_weather", "city", "None", "\"None\"");
    convert_case(tools, "get_weather", "n", "x", "\"x\"");
    convert_case(tools, "missing_tool", "days", "3", "\"3\"");
    convert_case(tools, "get_weather", "zzz", "42", "\"42\"");
    convert_case(NULL, "get_weather", "days", "3", "\"3\"");
}

/* Conversion goldens made with CPython (testdata/chat/gen-convert.py). */
static void convert_goldens(void)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT");
    char path[4096];
    if (!src) {
        printf("RESIDENT_SOURCE_ROOT unset: conversion goldens not run\n");
        return;
    }
    snprintf(path, sizeof(path), "%s/engine/text/testdata/chat/convert-goldens.json", src);
    FILE *f = fopen(path, "rb");
    struct json_out text;
    json_out_init(&text);
    char chunk[65536];
    size_t n;
    while (f && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        json_out_append(&text, chunk, n);
    if (f)
        fclose(f);
    struct json_object *all = NULL;
    checks++;
    if (!f || text.err || parse_value(text.data, text.len, PARSE_VALUE_JSON, &all, NULL) < 0) {
        fprintf(stderr, "FAIL: cannot read %s\n", path);
        failures++;
        json_out_free(&text);
        return;
    }
    json_out_free(&text);
    size_t ran = 0;
    for (size_t i = 0; i < json_object_array_length(all); i++) {
        struct json_object *r = json_object_array_get_idx(all, i), *schema, *value, *want;
        json_object_object_get_ex(r, "schema", &schema);
        json_object_object_get_ex(r, "value", &value);
        json_object_object_get_ex(r, "want", &want);
        if (!want)
            continue;   /* json.dumps fails there: vLLM gives up on the message */
        struct json_object *tools = json_object_new_array(), *t = json_object_new_object();
        struct json_object *fn = json_object_new_object(), *params = json_object_new_object();
        struct json_object *props = json_object_new_object();
        json_object_object_add(props, "p", json_object_get(schema));
        json_object_object_add(params, "properties", props);
        json_object_object_add(fn, "name", json_object_new_string("f"));
        json_object_object_add(fn, "parameters", params);
        json_object_object_add(t, "function", fn);
        json_object_array_add(tools, t);
        convert_case(tools, "f", "p", json_object_get_string(value), json_object_get_string(want));
        json_object_put(tools);
        ran++;
    }
    printf("%zu conversion goldens\n", ran);
    json_object_put(all);
}

int main(void)
{
    struct json_object *tools = NULL;
    if (parse_value(TOOLS_JSON, strlen(TOOLS_JSON), PARSE_VALUE_JSON, &tools, NULL) < 0) {
        fprintf(stderr, "FAIL: test tool schema does not parse\n");
        return 1;
    }
    struct chat_parser_opts opts = CHAT_PARSER_OPTS_DEFAULT;
    opts.tools = tools;
    opts.id_fn = counter_id;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_case(&cases[i], &opts);

    /* Tool parsing off: markup is content. */
    struct chat_parser_opts off = opts;
    off.tools_enabled = false;
    off.thinking = false;
    struct chat_parse_result r;
    const char *in = TC P("city", "A") END;
    if (chat_parse_text(in, strlen(in), &off, &r, NULL) == 0) {
        char *s = summary(&r);
        char want[512];
        snprintf(want, sizeof(want), "R=~|C=%s|T=", in);
        expect_str("tools disabled", s, want);
        free(s);
        chat_parse_result_free(&r);
    }

    /* The OpenAI-shaped result object. */
    in = "r</think>x" TC P("city", "A") END;
    if (chat_parse_text(in, strlen(in), &opts, &r, NULL) == 0) {
        struct json_object *j = chat_parse_result_to_json(&r);
        struct json_out o;
        json_out_init(&o);
        json_out_value(&o, j);
        char *s = json_out_take(&o, NULL);
        expect_str("result json", s,
                   "{\"reasoning\": \"r\", \"content\": \"x\", \"tool_calls\": [{\"id\": \"call_000000000000000000000000\", "
                   "\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"A\\\"}\"}}], "
                   "\"finish_reason\": \"tool_calls\"}");
        free(s);
        json_object_put(j);
        chat_parse_result_free(&r);
    }

    /* Where the reasoning ends. */
    {
        struct chat_parser *p;
        struct stream st;
        memset(&st, 0, sizeof(st));
        chat_parser_new(&opts, &p, NULL);
        chat_parser_feed(p, "thinking </thi", 14, stream_delta, &st);
        checks++;
        if (chat_parser_reasoning_ended(p)) {
            fprintf(stderr, "FAIL reasoning ended before </think>\n");
            failures++;
        }
        chat_parser_feed(p, "nk>answer", 9, stream_delta, &st);
        checks++;
        if (!chat_parser_reasoning_ended(p)) {
            fprintf(stderr, "FAIL reasoning not ended after </think>\n");
            failures++;
        }
        chat_parser_free(p);
        struct chat_parser_opts nothink = opts;
        nothink.thinking = false;
        chat_parser_new(&nothink, &p, NULL);
        checks++;
        if (!chat_parser_reasoning_ended(p)) {
            fprintf(stderr, "FAIL thinking off must start in content\n");
            failures++;
        }
        chat_parser_free(p);
        json_out_free(&st.reasoning);
        json_out_free(&st.content);
        json_out_free(&st.calls);
    }

    /* Streaming deltas in OpenAI shape. */
    {
        static const struct chat_delta ds[] = {
            { CHAT_DELTA_REASONING, "r\n", 2, 0, NULL },
            { CHAT_DELTA_CONTENT, "hi", 2, 0, NULL },
            { CHAT_DELTA_TOOL_NAME, "get_weather", 11, 1, "call_000000000000000000000001" },
            { CHAT_DELTA_TOOL_ARGS, "\"city\": \"A\"", 11, 1, NULL },
        };
        static const char *const want[] = {
            "{\"reasoning\": \"r\\n\"}",
            "{\"content\": \"hi\"}",
            ("{\"tool_calls\": [{\"index\": 1, \"id\": \"call_000000000000000000000001\", \"type\": \"function\", "
             "\"function\": {\"name\": \"get_weather\", \"arguments\": \"\"}}]}"),
            "{\"tool_calls\": [{\"index\": 1, \"function\": {\"arguments\": \"\\\"city\\\": \\\"A\\\"\"}}]}",
        };
        for (size_t i = 0; i < 4; i++) {
            struct json_object *j = chat_delta_to_json(&ds[i]);
            struct json_out o;
            json_out_init(&o);
            json_out_value(&o, j);
            char *txt = json_out_take(&o, NULL);
            expect_str("delta json", txt, want[i]);
            free(txt);
            json_object_put(j);
        }
    }

    double_repr_cases();
    value_cases();
    convert_cases(tools);
    convert_goldens();
    json_object_put(tools);

    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
