/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Request validation (request.c): hostile and wrong bodies get a 400 that
 * names the field; good ones become the right libresident parameters and
 * the JSON residentd renders.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "client/openai/request.h"

#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static int parse(enum oai_api api, const char *body, struct oai_request *r, struct oai_error *e)
{
    memset(e, 0, sizeof(*e));
    return oai_request_parse(api, body, strlen(body), NULL, r, e);
}

static void expect_400(enum oai_api api, const char *body, const char *param)
{
    struct oai_request r;
    struct oai_error e;
    int rc = parse(api, body, &r, &e);
    if (rc != -EINVAL || e.status != 400 || (param && strcmp(e.param, param) != 0))
        fail_msg("body %s: rc %d status %u param '%s' (want '%s') msg %s", body, rc, e.status, e.param,
                 param ? param : "", e.message);
    assert_true(e.message[0] != 0);
    oai_request_free(&r);
}

static struct json_object *payload_of(const struct oai_request *r)
{
    struct json_object *o = json_tokener_parse(r->payload);
    assert_non_null(o);
    return o;
}

static void test_malformed(void **state)
{
    (void)state;
    expect_400(OAI_API_CHAT, "", NULL);
    expect_400(OAI_API_CHAT, "{", NULL);
    expect_400(OAI_API_CHAT, "{\"messages\":[}", NULL);
    expect_400(OAI_API_CHAT, "[1]", NULL);
    expect_400(OAI_API_CHAT, "{" MSG "} x", NULL);
    expect_400(OAI_API_CHAT, "{" MSG ",}", NULL);
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}", NULL);
    /* 100 nested arrays: over the depth limit. */
    char deep[512] = "{\"x\":";
    for (int i = 0; i < 100; i++)
        strcat(deep, "[");
    for (int i = 0; i < 100; i++)
        strcat(deep, "]");
    strcat(deep, "," MSG "}");
    expect_400(OAI_API_CHAT, deep, NULL);
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_400(OAI_API_CHAT, "{\"model\":3," MSG "}", "model");
    expect_400(OAI_API_CHAT, "{\"messages\":\"hi\"}", "messages");
    expect_400(OAI_API_CHAT, "{\"messages\":[]}", "messages");
    expect_400(OAI_API_CHAT, "{}", "messages");
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content");
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0]");
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content");
    expect_400(OAI_API_CHAT, "{\"temperature\":\"hot\"," MSG "}", "temperature");
    expect_400(OAI_API_CHAT, "{\"temperature\":3," MSG "}", "temperature");
    expect_400(OAI_API_CHAT, "{\"top_p\":0," MSG "}", "top_p");
    expect_400(OAI_API_CHAT, "{\"top_k\":1.5," MSG "}", "top_k");
    expect_400(OAI_API_CHAT, "{\"max_tokens\":0," MSG "}", "max_tokens");
    expect_400(OAI_API_CHAT, "{\"max_tokens\":99999999999999999999," MSG "}", "max_tokens");
    expect_400(OAI_API_CHAT, "{\"stream\":1," MSG "}", "stream");
    expect_400(OAI_API_CHAT, "{\"seed\":\"1\"," MSG "}", "seed");
    expect_400(OAI_API_CHAT, "{\"stop\":5," MSG "}", "stop");
    expect_400(OAI_API_CHAT, "{\"stop\":[\"\"]," MSG "}", "stop");
    expect_400(OAI_API_CHAT, "{\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\","
                             "\"n\",\"o\",\"p\",\"q\"]," MSG "}", "stop");
    expect_400(OAI_API_CHAT, "{\"stream_options\":{\"include_usage\":true}," MSG "}", "stream_options");
    expect_400(OAI_API_CHAT, "{\"chat_template_kwargs\":{\"enable_thinking\":\"no\"}," MSG "}", "enable_thinking");
    expect_400(OAI_API_CHAT, "{\"tools\":{}," MSG "}", "tools");
    expect_400(OAI_API_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"bad name\"}}]," MSG "}",
               "tools");
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
                             "\"image_url\":{\"url\":\"x\"}}]}]}", "messages[0].content");
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
                             "\"tool_calls\":[{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\","
                             "\"arguments\":\"{not json\"}}]}]}", "messages[1].tool_calls[0].function.arguments");
    expect_400(OAI_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\",\"tool_calls\":[]}]}",
               "tool_calls");
}

static void test_refused_fields(void **state)
{
    (void)state;
    expect_400(OAI_API_CHAT, "{\"n\":2," MSG "}", "n");
    expect_400(OAI_API_CHAT, "{\"logprobs\":true," MSG "}", "logprobs");
    expect_400(OAI_API_CHAT, "{\"top_logprobs\":2," MSG "}", "top_logprobs");
    /* Penalties are honoured within OpenAI's range, refused outside it. */
    expect_400(OAI_API_CHAT, "{\"presence_penalty\":2.5," MSG "}", "presence_penalty");
    expect_400(OAI_API_CHAT, "{\"frequency_penalty\":-2.01," MSG "}", "frequency_penalty");
    expect_400(OAI_API_CHAT, "{\"frequency_penalty\":\"high\"," MSG "}", "frequency_penalty");
    expect_400(OAI_API_CHAT, "{\"logit_bias\":{\"5\":1}," MSG "}", "logit_bias");
    expect_400(OAI_API_CHAT, "{\"response_format\":{\"type\":\"json_object\"}," MSG "}", "response_format");
    /* tool_choice required / named need tools, and the named one among them. */
    expect_400(OAI_API_CHAT, "{\"tool_choice\":\"required\"," MSG "}", "tool_choice");
    expect_400(OAI_API_CHAT, "{\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}," MSG "}",
               "tool_choice");
    expect_400(OAI_API_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"g\"}}],"
               "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}," MSG "}", "tool_choice");
    expect_400(OAI_API_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
               "\"tool_choice\":{\"type\":\"tool\",\"function\":{\"name\":\"f\"}}," MSG "}", "tool_choice");
    expect_400(OAI_API_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
               "\"tool_choice\":{\"type\":\"function\",\"function\":{}}," MSG "}", "tool_choice");
    expect_400(OAI_API_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
               "\"tool_choice\":\"always\"," MSG "}", "tool_choice");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", "echo");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":\"x\",\"best_of\":2}", "best_of");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":1}", "logprobs");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":\"x\",\"suffix\":\"y\"}", "suffix");
    /* Neutral values pass. */
    struct oai_request r;
    struct oai_error e;
    assert_int_equal(parse(OAI_API_CHAT, "{\"n\":1,\"logprobs\":false,\"presence_penalty\":0,\"frequency_penalty\":0,"
                                         "\"logit_bias\":{},\"response_format\":{\"type\":\"text\"},\"user\":\"u\","
                                         "\"parallel_tool_calls\":true,\"top_logprobs\":null," MSG "}", &r, &e), 0);
    oai_request_free(&r);
}

static void test_sampling(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error e;
    assert_int_equal(parse(OAI_API_CHAT, "{\"temperature\":0.25,\"top_p\":0.5,\"top_k\":-1,\"min_p\":0.1,"
                                         "\"repetition_penalty\":1.1,\"seed\":-7,\"max_tokens\":9,"
                                         "\"max_completion_tokens\":12,\"stop\":\"END\",\"stop_token_ids\":[7,9],"
                                         "\"ignore_eos\":true,\"stream\":true,"
                                         "\"stream_options\":{\"include_usage\":true}," MSG "}", &r, &e), 0);
    assert_float_equal(r.params.temperature, 0.25, 1e-6);
    assert_float_equal(r.params.top_p, 0.5, 1e-6);
    assert_int_equal(r.params.top_k, 0);
    assert_float_equal(r.params.min_p, 0.1, 1e-6);
    assert_float_equal(r.params.repeat_penalty, 1.1, 1e-6);
    assert_int_equal(r.params.seed, (uint64_t)-7);
    assert_int_equal(r.params.max_tokens, 12);   /* max_completion_tokens wins */
    assert_int_equal(r.params.n_stop_strings, 1);
    assert_string_equal(r.params.stop_strings[0], "END");
    assert_int_equal(r.params.n_stop_ids, 2);
    assert_int_equal(r.params.stop_ids[1], 9);
    assert_true(r.params.flags & RESIDENT_REQ_IGNORE_EOS);
    assert_true(r.stream && r.include_usage);
    /* Set fields are explicit; presence_penalty alone stays the model's. */
    assert_int_equal(r.params.model_defaults, RESIDENT_DEFAULT_PRESENCE_PENALTY);
    assert_float_equal(r.params.presence_penalty, 0.0, 0.0);
    assert_float_equal(r.params.frequency_penalty, 0.0, 0.0);
    oai_request_free(&r);

    /* Penalties pass through; a request that sets nothing leaves every
     * sampling field to the model (residentd applies its generation_config). */
    assert_int_equal(parse(OAI_API_CHAT, "{\"presence_penalty\":1.5,\"frequency_penalty\":-0.5," MSG "}", &r, &e), 0);
    assert_float_equal(r.params.presence_penalty, 1.5, 1e-6);
    assert_float_equal(r.params.frequency_penalty, -0.5, 1e-6);
    assert_int_equal(r.params.model_defaults, RESIDENT_DEFAULT_ALL & ~RESIDENT_DEFAULT_PRESENCE_PENALTY);
    oai_request_free(&r);
    assert_int_equal(parse(OAI_API_CHAT, "{" MSG "}", &r, &e), 0);
    assert_int_equal(r.params.model_defaults, RESIDENT_DEFAULT_ALL);
    assert_float_equal(r.params.frequency_penalty, 0.0, 0.0);
    oai_request_free(&r);

    /* Defaults fill only what the request leaves unset. */
    struct oai_defaults d = { .has_temperature = true, .temperature = 1.0f, .has_top_k = true, .top_k = 20 };
    const char *body = "{\"top_k\":5," MSG "}";
    assert_int_equal(oai_request_parse(OAI_API_CHAT, body, strlen(body), &d, &r, &e), 0);
    assert_float_equal(r.params.temperature, 1.0, 1e-6);
    assert_int_equal(r.params.top_k, 5);
    assert_int_equal(r.params.max_tokens, 0);    /* residentd's limit */
    /* request > --generation-config > the model's file (the bits left) */
    assert_int_equal(r.params.model_defaults, RESIDENT_DEFAULT_TOP_P | RESIDENT_DEFAULT_MIN_P |
                                              RESIDENT_DEFAULT_REPEAT_PENALTY | RESIDENT_DEFAULT_PRESENCE_PENALTY);
    oai_request_free(&r);
    d = (struct oai_defaults){ .has_presence_penalty = true, .presence_penalty = 1.0f };
    body = "{\"temperature\":0," MSG "}";
    assert_int_equal(oai_request_parse(OAI_API_CHAT, body, strlen(body), &d, &r, &e), 0);
    assert_float_equal(r.params.presence_penalty, 1.0, 1e-6);
    assert_float_equal(r.params.temperature, 0.0, 0.0);
    assert_int_equal(r.params.model_defaults, RESIDENT_DEFAULT_TOP_P | RESIDENT_DEFAULT_TOP_K |
                                              RESIDENT_DEFAULT_MIN_P | RESIDENT_DEFAULT_REPEAT_PENALTY);
    oai_request_free(&r);

    /* Unseeded requests get different seeds. */
    struct oai_request r2;
    assert_int_equal(parse(OAI_API_CHAT, "{" MSG "}", &r, &e), 0);
    assert_int_equal(parse(OAI_API_CHAT, "{" MSG "}", &r2, &e), 0);
    assert_true(r.params.seed != r2.params.seed);
    oai_request_free(&r);
    oai_request_free(&r2);
}

static void test_chat_payload(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error e;
    const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"
                        "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}]";
    char body[2048];
    snprintf(body, sizeof(body),
             "{\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Weather?\"}]},"
             "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"Need it.\",\"tool_calls\":"
             "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
             "\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
             "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"18C\"}],"
             "%s,\"chat_template_kwargs\":{\"enable_thinking\":false,\"preserve_thinking\":true,\"other\":1}}",
             tools);
    assert_int_equal(parse(OAI_API_CHAT, body, &r, &e), 0);
    assert_false(r.thinking);
    struct json_object *p = payload_of(&r), *v, *kw;
    assert_true(json_object_object_get_ex(p, "messages", &v));
    assert_int_equal(json_object_array_length(v), 4);
    struct json_object *m0 = json_object_array_get_idx(v, 0), *role;
    json_object_object_get_ex(m0, "role", &role);
    assert_string_equal(json_object_get_string(role), "system");   /* developer -> system */
    assert_true(json_object_object_get_ex(p, "tools", &v));
    assert_true(json_object_object_get_ex(p, "tool_choice", &v));
    assert_string_equal(json_object_get_string(v), "auto");
    assert_true(json_object_object_get_ex(p, "chat_template_kwargs", &kw));
    assert_true(json_object_object_get_ex(kw, "enable_thinking", &v));
    assert_false(json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(kw, "preserve_thinking", &v));
    assert_false(json_object_object_get_ex(kw, "other", &v));
    assert_true(json_object_object_get_ex(p, "template_kwargs", &kw));
    assert_null(strstr(r.payload, "\\/"));
    json_object_put(p);
    oai_request_free(&r);

    /* tool_choice required / named travel to residentd next to the tools
     * (it forces the call; job.c refuses them before submission when the
     * daemon lacks SHM_WELCOME_F_TOOL_CHOICE). */
    snprintf(body, sizeof(body), "{%s,\"tool_choice\":\"required\"," MSG "}", tools);
    assert_int_equal(parse(OAI_API_CHAT, body, &r, &e), 0);
    assert_true(r.forced_tool);
    p = payload_of(&r);
    assert_true(json_object_object_get_ex(p, "tools", &v));
    assert_true(json_object_object_get_ex(p, "tool_choice", &v));
    assert_string_equal(json_object_get_string(v), "required");
    json_object_put(p);
    oai_request_free(&r);
    snprintf(body, sizeof(body), "{%s,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":"
             "\"get_weather\"}}," MSG "}", tools);
    assert_int_equal(parse(OAI_API_CHAT, body, &r, &e), 0);
    assert_true(r.forced_tool);
    p = payload_of(&r);
    assert_true(json_object_object_get_ex(p, "tool_choice", &v));
    struct json_object *fn, *nm;
    assert_true(json_object_object_get_ex(v, "function", &fn) && json_object_object_get_ex(fn, "name", &nm));
    assert_string_equal(json_object_get_string(nm), "get_weather");
    json_object_put(p);
    oai_request_free(&r);
    snprintf(body, sizeof(body), "{%s,\"tool_choice\":\"auto\"," MSG "}", tools);
    assert_int_equal(parse(OAI_API_CHAT, body, &r, &e), 0);
    assert_false(r.forced_tool);
    oai_request_free(&r);

    /* tool_choice none: tools stay out of the prompt. */
    snprintf(body, sizeof(body), "{%s,\"tool_choice\":\"none\"," MSG "}", tools);
    assert_int_equal(parse(OAI_API_CHAT, body, &r, &e), 0);
    p = payload_of(&r);
    assert_false(json_object_object_get_ex(p, "tools", &v));
    assert_true(r.thinking);
    json_object_put(p);
    oai_request_free(&r);
}

static void test_completion_prompts(void **state)
{
    (void)state;
    struct oai_request r;
    struct oai_error e;
    assert_int_equal(parse(OAI_API_COMPLETION, "{\"prompt\":\"Once upon\"}", &r, &e), 0);
    assert_string_equal(r.payload, "Once upon");
    oai_request_free(&r);
    assert_int_equal(parse(OAI_API_COMPLETION, "{\"prompt\":[\"Once\"]}", &r, &e), 0);
    assert_string_equal(r.payload, "Once");
    oai_request_free(&r);
    assert_int_equal(parse(OAI_API_COMPLETION, "{\"prompt\":[1,2,3]}", &r, &e), 0);
    assert_int_equal(r.n_prompt_ids, 3);
    assert_int_equal(r.prompt_ids[2], 3);
    oai_request_free(&r);
    assert_int_equal(parse(OAI_API_COMPLETION, "{\"prompt\":[[4,5]]}", &r, &e), 0);
    assert_int_equal(r.n_prompt_ids, 2);
    oai_request_free(&r);
    expect_400(OAI_API_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "prompt");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":\"\"}", "prompt");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":[-1]}", "prompt");
    expect_400(OAI_API_COMPLETION, "{\"prompt\":[1.5]}", "prompt");
    expect_400(OAI_API_COMPLETION, "{}", "prompt");
}

static void test_defaults_file(void **state)
{
    (void)state;
    char path[] = "/tmp/oai-genconf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *gc = "{\"bos_token_id\":248044,\"do_sample\":true,\"eos_token_id\":[248046,248044],"
                     "\"pad_token_id\":248044,\"temperature\":1.0,\"top_k\":20,\"top_p\":0.95}";
    assert_int_equal(write(fd, gc, strlen(gc)), (ssize_t)strlen(gc));
    close(fd);
    struct oai_defaults d;
    char why[256];
    assert_int_equal(oai_defaults_load(path, &d, why, sizeof(why)), 0);
    assert_true(d.has_temperature && d.has_top_k && d.has_top_p);
    assert_false(d.has_min_p || d.has_presence_penalty);
    assert_float_equal(d.temperature, 1.0, 1e-6);
    assert_int_equal(d.top_k, 20);
    assert_float_equal(d.top_p, 0.95, 1e-6);
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "{\"presence_penalty\":1.5}", 24), 24);
    close(fd);
    assert_int_equal(oai_defaults_load(path, &d, why, sizeof(why)), 0);
    assert_true(d.has_presence_penalty && !d.has_temperature);
    assert_float_equal(d.presence_penalty, 1.5, 1e-6);
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "{\"top_p\":\"x\"}", 13), 13);
    close(fd);
    assert_int_equal(oai_defaults_load(path, &d, why, sizeof(why)), -EINVAL);
    unlink(path);
    assert_true(oai_defaults_load("/nonexistent/gc.json", &d, why, sizeof(why)) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_refused_fields),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_chat_payload),
        cmocka_unit_test(test_completion_prompts),
        cmocka_unit_test(test_defaults_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
