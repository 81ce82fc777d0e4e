/* SPDX-License-Identifier: Apache-2.0 */
/* tokenize / detokenize subcommands: see text-cli-tok.h. */
#include "engine/text/text-cli-tok.h"

#include "engine/text/tokenizer.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLI_MAX_INPUT ((size_t)1 << 30)

struct cli_opts {
    const char *model;
    const char *cache_dir;
    bool no_added, bytes, skip_special;
};

static int usage(const char *cmd, bool detok)
{
    if (detok)
        fprintf(stderr, "usage: %s --model DIR [--cache-dir DIR] "
                "[--skip-special-tokens] < ids.json\n", cmd);
    else
        fprintf(stderr, "usage: %s --model DIR [--cache-dir DIR] "
                "[--no-added-tokens] [--bytes] < text\n", cmd);
    return 2;
}

static int parse(int argc, char **argv, bool detok, struct cli_opts *o)
{
    const char *cmd = argc > 0 ? argv[0] : (detok ? "detokenize" : "tokenize");
    memset(o, 0, sizeof(*o));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--model") == 0 && i + 1 < argc) {
            o->model = argv[++i];
        } else if (strncmp(a, "--model=", 8) == 0) {
            o->model = a + 8;
        } else if (strcmp(a, "--cache-dir") == 0 && i + 1 < argc) {
            o->cache_dir = argv[++i];
        } else if (!detok && strcmp(a, "--no-added-tokens") == 0) {
            o->no_added = true;
        } else if (!detok && strcmp(a, "--bytes") == 0) {
            o->bytes = true;
        } else if (detok && strcmp(a, "--skip-special-tokens") == 0) {
            o->skip_special = true;
        } else {
            if (strcmp(a, "-h") && strcmp(a, "--help"))
                fprintf(stderr, "%s: unknown argument \"%s\"\n", cmd, a);
            return usage(cmd, detok);
        }
    }
    if (!o->model) {
        fprintf(stderr, "%s: --model DIR is required (a directory with "
                "tokenizer.json, or vocab.json + merges.txt)\n", cmd);
        return usage(cmd, detok);
    }
    return 0;
}

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (n == cap) {
            if (cap >= CLI_MAX_INPUT) {
                free(buf);
                return -EFBIG;
            }
            char *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                return -ENOMEM;
            }
            buf = b;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) {
                free(buf);
                return -EIO;
            }
            break;
        }
    }
    *out = buf;
    *len = n;
    return 0;
}

static struct tokenizer *load(const char *cmd, const struct cli_opts *o)
{
    struct tokenizer *tok;
    struct engine_error err = { 0 };
    struct tokenizer_load_params lp = TOKENIZER_LOAD_PARAMS_DEFAULT;
    lp.cache_dir = o->cache_dir;
    if (tokenizer_load_ex(o->model, &lp, &tok, &err) != 0) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        return NULL;
    }
    return tok;
}

int text_cli_tokenize(int argc, char **argv)
{
    struct cli_opts o;
    int r = parse(argc, argv, false, &o);
    if (r)
        return r;
    const char *cmd = argv[0];
    char *text;
    size_t len;
    if ((r = read_stdin(&text, &len)) < 0) {
        fprintf(stderr, "%s: reading stdin: %s\n", cmd, strerror(-r));
        return 1;
    }
    struct tokenizer *tok = load(cmd, &o);
    if (!tok) {
        free(text);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    struct engine_error err = { 0 };
    struct tokenizer_encode_params p = TOKENIZER_ENCODE_PARAMS_DEFAULT;
    p.match_added_tokens = !o.no_added;
    r = o.bytes ? tokenizer_encode_bytes(tok, text, len, &ids, &n, &err)
                : tokenizer_encode_ex(tok, text, len, &p, &ids, &n, &err);
    free(text);
    tokenizer_free(tok);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        return 1;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", ids[i]);
    fputs("]\n", stdout);
    free(ids);
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
}

int text_cli_detokenize(int argc, char **argv)
{
    struct cli_opts o;
    int r = parse(argc, argv, true, &o);
    if (r)
        return r;
    const char *cmd = argv[0];
    char *text;
    size_t len;
    if ((r = read_stdin(&text, &len)) < 0) {
        fprintf(stderr, "%s: reading stdin: %s\n", cmd, strerror(-r));
        return 1;
    }
    struct json_tokener *jt = json_tokener_new_ex(8);
    struct json_object *arr = NULL;
    if (jt && len <= INT32_MAX)
        arr = json_tokener_parse_ex(jt, text, (int)len);
    bool parsed = arr && json_tokener_get_error(jt) == json_tokener_success;
    size_t end = jt ? json_tokener_get_parse_end(jt) : 0;
    json_tokener_free(jt);
    while (parsed && end < len &&
           (text[end] == ' ' || text[end] == '\n' || text[end] == '\r' ||
            text[end] == '\t'))
        end++;
    free(text);
    if (!parsed || end != len || !json_object_is_type(arr, json_type_array)) {
        json_object_put(arr);
        fprintf(stderr, "%s: stdin must hold one JSON array of token ids, "
                "e.g. [9419,11]\n", cmd);
        return 1;
    }
    size_t n = json_object_array_length(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof(*ids));
    if (!ids) {
        json_object_put(arr);
        fprintf(stderr, "%s: out of memory\n", cmd);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        struct json_object *v = json_object_array_get_idx(arr, i);
        int64_t x = json_object_get_int64(v);
        if (!json_object_is_type(v, json_type_int) || x < 0 ||
            x > INT32_MAX) {
            fprintf(stderr, "%s: element %zu is not a token id (a "
                    "non-negative integer)\n", cmd, i);
            free(ids);
            json_object_put(arr);
            return 1;
        }
        ids[i] = (int32_t)x;
    }
    json_object_put(arr);
    struct tokenizer *tok = load(cmd, &o);
    if (!tok) {
        free(ids);
        return 1;
    }
    char *out;
    size_t out_len;
    struct engine_error err = { 0 };
    r = tokenizer_decode(tok, ids, n, o.skip_special, &out, &out_len, &err);
    free(ids);
    tokenizer_free(tok);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", cmd, err.msg);
        return 1;
    }
    bool ok = fwrite(out, 1, out_len, stdout) == out_len;
    free(out);
    return ok && fflush(stdout) == 0 ? 0 : 1;
}
