/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Chat template tests: byte-exact comparison with prompts rendered by
 * jinja2 the way transformers does it.
 *
 *   engine/text/testdata/chat/goldens.json      (gen-goldens.py, committed)
 *   ../shared/models/qwen3.6-tokenizer/rendered_examples.json (shipped)
 *   tests/data/text/chat_goldens.json           (refgen, when present)
 *
 * Plus direct cases for the options and for hostile input.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-value.h"
#include "engine/text/template.h"

static int failures;
static int checks;

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void show_diff(const char *name, const char *want, size_t wl, const char *got, size_t gl)
{
    size_t i = 0;
    while (i < wl && i < gl && want[i] == got[i])
        i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "FAIL %s: first difference at byte %zu (want %zu bytes, got %zu)\n", name, i, wl, gl);
    fprintf(stderr, "  want: %.*s\n", (int)((wl - from) > 120 ? 120 : (wl - from)), want + from);
    fprintf(stderr, "  got:  %.*s\n", (int)((gl - from) > 120 ? 120 : (gl - from)), got + from);
}

static const char *template_messages[] = {
    "No messages provided.", "System message must be at the beginning.", "No user query found in messages.",
    "Unexpected message role.", "Unexpected content type.", "Unexpected item type in content.",
    "System message cannot contain images.", "System message cannot contain videos.", NULL,
};

static bool is_template_message(const char *s)
{
    for (int i = 0; template_messages[i]; i++)
        if (strcmp(s, template_messages[i]) == 0)
            return true;
    return false;
}

/* Render `req` and compare with `rendered` or expect `error`. */
static void check_case(const char *name, struct json_object *req, const struct chat_render_opts *opts,
                       struct json_object *rendered, struct json_object *error)
{
    struct json_out o;
    json_out_init(&o);
    json_out_value(&o, req);
    char *text = json_out_take(&o, NULL);

    char *out = NULL;
    size_t out_len = 0;
    struct engine_error err = { 0 };
    int rc = text ? chat_render(text, strlen(text), opts, &out, &out_len, &err) : -ENOMEM;
    checks++;
    if (rendered) {
        const char *want = json_object_get_string(rendered);
        size_t wl = (size_t)json_object_get_string_len(rendered);
        if (rc != 0) {
            fprintf(stderr, "FAIL %s: render failed (%d): %s\n", name, rc, err.msg);
            failures++;
        } else if (out_len != wl || memcmp(out, want, wl) != 0) {
            show_diff(name, want, wl, out, out_len);
            failures++;
        }
    } else {
        const char *want = json_object_get_string(error);
        if (rc != -EINVAL) {
            fprintf(stderr, "FAIL %s: expected error \"%s\", got rc %d\n", name, want, rc);
            failures++;
        } else if (is_template_message(want) && strcmp(want, err.msg) != 0) {
            fprintf(stderr, "FAIL %s: expected error \"%s\", got \"%s\"\n", name, want, err.msg);
            failures++;
        }
    }
    free(out);
    free(text);
}

/* Golden files hold integers beyond 64 bits: read them with parse_value,
 * which keeps such numbers exact (json-c's reader would clamp them). */
static struct json_object *load_json(const char *path)
{
    size_t len;
    char *text = read_file(path, &len);
    struct json_object *v = NULL;
    struct engine_error err = { 0 };
    if (text && parse_value(text, len, PARSE_VALUE_JSON, &v, &err) < 0)
        fprintf(stderr, "%s: %s\n", path, err.msg);
    free(text);
    return v;
}

static int run_goldens(const char *path, const struct chat_render_opts *opts, struct json_object **keep)
{
    struct json_object *all = load_json(path);
    if (!all || !json_object_is_type(all, json_type_array)) {
        fprintf(stderr, "cannot read golden list %s\n", path);
        json_object_put(all);
        return -1;
    }
    size_t n = json_object_array_length(all);
    for (size_t i = 0; i < n; i++) {
        struct json_object *rec = json_object_array_get_idx(all, i), *name, *req, *rendered = NULL, *error = NULL;
        json_object_object_get_ex(rec, "name", &name);
        json_object_object_get_ex(rec, "rendered", &rendered);
        json_object_object_get_ex(rec, "error", &error);
        if (!json_object_object_get_ex(rec, "request", &req)) {
            /* refgen layout: the request fields sit in the record itself. */
            req = rec;
        }
        check_case(json_object_get_string(name), req, opts, rendered, error);
    }
    printf("%s: %zu cases\n", path, n);
    *keep = all;
    return 0;
}

/* The shipped rendered_examples.json carries only descriptions of its
 * inputs; goldens.json rebuilds them under the same names. Check that the
 * renderer reproduces the shipped strings for those names. */
static int run_shipped(const char *path, struct json_object *goldens)
{
    struct json_object *doc = load_json(path), *cases;
    if (!doc || !json_object_object_get_ex(doc, "cases", &cases) || !json_object_is_type(cases, json_type_object)) {
        json_object_put(doc);
        return -1;
    }
    int matched = 0;
    JSON_OUT_FOREACH(cases, ent) {
        const char *name = JSON_OUT_KEY(ent);
        struct json_object *rendered = JSON_OUT_VAL(ent);
        struct json_object *req = NULL;
        for (size_t i = 0; goldens && i < json_object_array_length(goldens); i++) {
            struct json_object *rec = json_object_array_get_idx(goldens, i), *n;
            if (json_object_object_get_ex(rec, "name", &n) && strcmp(json_object_get_string(n), name) == 0)
                json_object_object_get_ex(rec, "request", &req);
        }
        if (!req) {
            fprintf(stderr, "FAIL shipped case %s has no rebuilt request in goldens.json\n", name);
            failures++;
            continue;
        }
        check_case(name, req, NULL, rendered, NULL);
        matched++;
    }
    printf("%s: %d shipped cases\n", path, matched);
    json_object_put(doc);
    return 0;
}

/* want: the whole output, or its beginning when `prefix`; for errors a
 * substring of the message. */
static void expect_render_ex(const char *name, const char *req, const struct chat_render_opts *opts,
                             int want_rc, const char *want, bool prefix)
{
    char *out = NULL;
    size_t len = 0;
    struct engine_error err = { 0 };
    int rc = chat_render(req, strlen(req), opts, &out, &len, &err);
    checks++;
    if (rc != want_rc) {
        fprintf(stderr, "FAIL %s: rc %d (want %d) %s\n", name, rc, want_rc, err.msg);
        failures++;
    } else if (rc == 0 && (len < strlen(want) || memcmp(out, want, strlen(want)) != 0 ||
                           (!prefix && len != strlen(want)))) {
        show_diff(name, want, strlen(want), out, len);
        failures++;
    } else if (rc != 0 && want && !strstr(err.msg, want)) {
        fprintf(stderr, "FAIL %s: message \"%s\" lacks \"%s\"\n", name, err.msg, want);
        failures++;
    }
    free(out);
}

static void expect_render(const char *name, const char *req, const struct chat_render_opts *opts,
                          int want_rc, const char *want)
{
    expect_render_ex(name, req, opts, want_rc, want, false);
}

static void direct_cases(void)
{
    struct chat_render_opts raw = CHAT_RENDER_OPTS_DEFAULT;
    raw.vllm_tool_shape = false;
    raw.decode_arguments = false;
    raw.reasoning_alias = false;
    raw.default_add_generation_prompt = false;

    expect_render("reasoning_alias",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\",\"reasoning\":\"r\"}],"
                  "\"add_generation_prompt\":false}",
                  NULL, 0, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\na<|im_end|>\n");
    expect_render("reasoning_alias_off",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\",\"reasoning\":\"r\"}]}",
                  &raw, 0, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\na<|im_end|>\n");
    expect_render_ex("tools_as_given",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"tools\":[{\"function\":{\"name\":\"f\"},\"type\":\"function\"}]}",
                  &raw, 0,
                  "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
                  "{\"function\": {\"name\": \"f\"}, \"type\": \"function\"}\n</tools>", true);
    expect_render("string_arguments_not_decoded",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"\","
                  "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}",
                  &raw, -EINVAL, "Can only get item pairs from a mapping.");
    expect_render("default_generation_prompt", "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", NULL, 0,
                  "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n");
    expect_render("bad_json", "{\"messages\":[", NULL, -EINVAL, "not valid JSON");
    expect_render("trailing_comma", "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},]}", NULL, -EINVAL, "not valid JSON");
    expect_render("invalid_utf8", "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", NULL, -EINVAL, "UTF-8");
    expect_render("lone_surrogate", "{\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", NULL, -EINVAL, "surrogate");
    expect_render("not_object", "[1,2]", NULL, -EINVAL, "JSON object");
    expect_render("messages_not_list", "{\"messages\":{\"role\":\"user\"}}", NULL, -EINVAL, "messages must be a list");
    expect_render("tools_not_list", "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"tools\":\"x\"}", NULL, -EINVAL,
                  "tools must be a list");
    expect_render("tool_bad_name", "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"tools\":[{\"function\":{\"name\":1}}]}",
                  NULL, -EINVAL, "tools[0].function");
    expect_render("kwargs_not_object", "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"chat_template_kwargs\":3}",
                  NULL, -EINVAL, "chat_template_kwargs");
    expect_render("bad_arguments_json",
                  "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"\","
                  "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{oops\"}}]}]}",
                  NULL, -EINVAL, "arguments is not valid JSON");

    /* Nesting far deeper than the parser's limit fails cleanly. */
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 64);
    if (deep) {
        size_t w = (size_t)sprintf(deep, "{\"messages\":");
        for (size_t i = 0; i < depth; i++)
            deep[w++] = '[';
        for (size_t i = 0; i < depth; i++)
            deep[w++] = ']';
        deep[w++] = '}';
        deep[w] = '\0';
        expect_render("deep_nesting", deep, NULL, -EINVAL, "nesting too deep");
        free(deep);
    }
}

int main(void)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT");
    char path[4096];
    if (!src) {
        fprintf(stderr, "RESIDENT_SOURCE_ROOT is not set; run through meson test\n");
        return 77;
    }

    struct json_object *goldens = NULL;
    snprintf(path, sizeof(path), "%s/engine/text/testdata/chat/goldens.json", src);
    if (run_goldens(path, NULL, &goldens) < 0)
        failures++;

    snprintf(path, sizeof(path), "%s/../shared/models/qwen3.6-tokenizer/rendered_examples.json", src);
    if (run_shipped(path, goldens) < 0)
        printf("skipping shipped examples: %s not readable\n", path);
    json_object_put(goldens);

    snprintf(path, sizeof(path), "%s/tests/data/text/chat_goldens.json", src);
    struct json_object *refgen = NULL;
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        /* refgen calls transformers' apply_chat_template directly: tools
         * are rendered as given, not re-shaped the way vLLM does. */
        struct chat_render_opts transformers = CHAT_RENDER_OPTS_DEFAULT;
        transformers.vllm_tool_shape = false;
        if (run_goldens(path, &transformers, &refgen) < 0)
            failures++;
        json_object_put(refgen);
    } else {
        printf("refgen goldens %s not present yet; skipped\n", path);
    }

    direct_cases();

    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
