/* SPDX-License-Identifier: Apache-2.0 */
/* `render` and `parse` subcommands. See text-cli-chat.h. */
#include "engine/text/text-cli-chat.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-output.h"
#include "engine/text/parse-value.h"
#include "engine/text/template.h"

/* Identity of the official chat_template.jinja the renderer transcribes
 * (sha256 e84f32a2…4259): its length and 64-bit FNV-1a hash. */
#define QWEN36_TEMPLATE_LEN  7764u
#define QWEN36_TEMPLATE_FNV  UINT64_C(0x8ae3a8bc6e68f114)

static int read_all(FILE *f, char **out, size_t *len)
{
    struct json_out b;
    char chunk[65536];
    size_t n;
    json_out_init(&b);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        json_out_append(&b, chunk, n);
    if (ferror(f)) {
        json_out_free(&b);
        return -EIO;
    }
    *out = json_out_take(&b, len);
    return *out ? 0 : -ENOMEM;
}

static int read_path(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    int rc = read_all(f, out, len);
    fclose(f);
    return rc;
}

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* Compare DIR's chat template with the built-in one; warn on stderr. */
static void check_model_template(const char *cmd, const char *dir)
{
    char path[4096];
    char *text = NULL;
    size_t len = 0;
    const char *where = "chat_template.jinja";
    snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
    if (read_path(path, &text, &len) < 0) {
        where = "tokenizer_config.json";
        snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
        char *cfg = NULL;
        size_t cfg_len = 0;
        struct json_object *doc = NULL, *tmpl = NULL;
        if (read_path(path, &cfg, &cfg_len) == 0 &&
            parse_value(cfg, cfg_len, PARSE_VALUE_JSON, &doc, NULL) == 0 &&
            json_object_object_get_ex(doc, "chat_template", &tmpl) && json_object_is_type(tmpl, json_type_string)) {
            len = (size_t)json_object_get_string_len(tmpl);
            text = malloc(len + 1);
            if (text)
                memcpy(text, json_object_get_string(tmpl), len);
        }
        json_object_put(doc);
        free(cfg);
    }
    if (!text) {
        fprintf(stderr, "%s: warning: no chat template in %s; using the built-in Qwen3.6 template\n", cmd, dir);
        return;
    }
    if (len != QWEN36_TEMPLATE_LEN || fnv1a(text, len) != QWEN36_TEMPLATE_FNV)
        fprintf(stderr, "%s: warning: %s/%s differs from the Qwen3.6 chat template this renderer implements "
                        "(%zu bytes; expected %u); the built-in template is used\n",
                cmd, dir, where, len, QWEN36_TEMPLATE_LEN);
    free(text);
}

static int usage(const char *cmd, const char *msg)
{
    fprintf(stderr, "%s: %s\n", cmd, msg);
    if (strcmp(cmd, "render") == 0)
        fprintf(stderr, "usage: render --model DIR [--tools-as-given] < request.json\n");
    else
        fprintf(stderr, "usage: parse --model DIR [--tools FILE] [--thinking on|off] [--deltas] [--fixed-ids] < output.txt\n");
    return 2;
}

int text_cli_render(int argc, char **argv)
{
    const char *cmd = argc > 0 ? argv[0] : "render";
    const char *model = NULL;
    struct chat_render_opts opts = CHAT_RENDER_OPTS_DEFAULT;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            model = argv[++i];
        else if (strcmp(argv[i], "--tools-as-given") == 0)
            opts.vllm_tool_shape = false;
        else
            return usage(cmd, "unknown or incomplete option");
    }
    if (!model)
        return usage(cmd, "--model DIR is required");
    if (access(model, R_OK | X_OK) != 0) {
        fprintf(stderr, "%s: --model %s: %s\n", cmd, model, strerror(errno));
        return 1;
    }
    check_model_template(cmd, model);

    char *req = NULL, *out = NULL;
    size_t len = 0, out_len = 0;
    int rc = read_all(stdin, &req, &len);
    if (rc < 0) {
        fprintf(stderr, "%s: reading stdin: %s\n", cmd, strerror(-rc));
        return 1;
    }
    struct engine_error err = { 0 };
    rc = chat_render(req, len, &opts, &out, &out_len, &err);
    free(req);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        return 1;
    }
    fwrite(out, 1, out_len, stdout);
    free(out);
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
}

static void fixed_id(void *user, size_t index, char hex[24])
{
    char buf[32];
    (void)user;
    snprintf(buf, sizeof(buf), "%024zx", index);
    memcpy(hex, buf + strlen(buf) - 24, 24);
}

static int print_delta(void *user, const struct chat_delta *d)
{
    struct json_out o;
    (void)user;
    struct json_object *j = chat_delta_to_json(d);
    if (!j)
        return -ENOMEM;
    json_out_init(&o);
    json_out_value(&o, j);
    json_out_putc(&o, '\n');
    json_object_put(j);
    if (o.err) {
        int rc = o.err;
        json_out_free(&o);
        return rc;
    }
    fwrite(o.data, 1, o.len, stdout);
    json_out_free(&o);
    return 0;
}

static int load_tools(const char *cmd, const char *path, struct json_object **tools)
{
    char *text = NULL;
    size_t len = 0;
    struct json_object *doc = NULL, *list = NULL;
    struct engine_error err = { 0 };
    int rc = read_path(path, &text, &len);
    if (rc < 0) {
        fprintf(stderr, "%s: cannot read --tools %s: %s\n", cmd, path, strerror(-rc));
        return 1;
    }
    rc = parse_value(text, len, PARSE_VALUE_JSON, &doc, &err);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "%s: --tools %s: %s\n", cmd, path, err.msg);
        return 1;
    }
    if (json_object_is_type(doc, json_type_object) && json_object_object_get_ex(doc, "tools", &list))
        list = json_object_get(list);
    else
        list = json_object_get(doc);
    json_object_put(doc);
    if (!json_object_is_type(list, json_type_array)) {
        fprintf(stderr, "%s: --tools %s must hold a JSON list of tools or an object with a \"tools\" list\n", cmd, path);
        json_object_put(list);
        return 1;
    }
    *tools = list;
    return 0;
}

int text_cli_parse(int argc, char **argv)
{
    const char *cmd = argc > 0 ? argv[0] : "parse";
    const char *model = NULL, *tools_path = NULL;
    bool deltas = false;
    struct chat_parser_opts opts = CHAT_PARSER_OPTS_DEFAULT;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model = argv[++i];
        } else if (strcmp(argv[i], "--tools") == 0 && i + 1 < argc) {
            tools_path = argv[++i];
        } else if (strcmp(argv[i], "--thinking") == 0 && i + 1 < argc) {
            const char *v = argv[++i];
            if (strcmp(v, "on") == 0)
                opts.thinking = true;
            else if (strcmp(v, "off") == 0)
                opts.thinking = false;
            else
                return usage(cmd, "--thinking takes on or off");
        } else if (strcmp(argv[i], "--deltas") == 0) {
            deltas = true;
        } else if (strcmp(argv[i], "--fixed-ids") == 0) {
            opts.id_fn = fixed_id;
        } else {
            return usage(cmd, "unknown or incomplete option");
        }
    }
    if (!model)
        return usage(cmd, "--model DIR is required");
    if (access(model, R_OK | X_OK) != 0) {
        fprintf(stderr, "%s: --model %s: %s\n", cmd, model, strerror(errno));
        return 1;
    }

    struct json_object *tools = NULL;
    if (tools_path && load_tools(cmd, tools_path, &tools) != 0)
        return 1;
    opts.tools = tools;

    char *text = NULL;
    size_t len = 0;
    int rc = read_all(stdin, &text, &len);
    if (rc < 0) {
        fprintf(stderr, "%s: reading stdin: %s\n", cmd, strerror(-rc));
        json_object_put(tools);
        return 1;
    }

    struct engine_error err = { 0 };
    if (deltas) {
        /* Feed in small pieces, as a detokenizer would. */
        struct chat_parser *p;
        rc = chat_parser_new(&opts, &p, &err);
        for (size_t at = 0; rc == 0 && at < len; at += 7)
            rc = chat_parser_feed(p, text + at, len - at < 7 ? len - at : 7, print_delta, NULL);
        if (rc == 0)
            rc = chat_parser_finish(p, print_delta, NULL);
        if (p)
            chat_parser_free(p);
        if (rc < 0) {
            fprintf(stderr, "%s: parser failed: %s\n", cmd, strerror(-rc));
            free(text);
            json_object_put(tools);
            return 1;
        }
    }

    struct chat_parse_result r;
    rc = chat_parse_text(text, len, &opts, &r, &err);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        json_object_put(tools);
        return 1;
    }
    struct json_object *j = chat_parse_result_to_json(&r);
    chat_parse_result_free(&r);
    json_object_put(tools);
    struct json_out o;
    json_out_init(&o);
    json_out_value(&o, j);
    json_out_putc(&o, '\n');
    json_object_put(j);
    if (!j || o.err) {
        json_out_free(&o);
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    fwrite(o.data, 1, o.len, stdout);
    json_out_free(&o);
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
}
