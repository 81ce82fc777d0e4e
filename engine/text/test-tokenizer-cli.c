/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tokenize / detokenize subcommands (text-cli-tok.c), each run in a forked
 * child with stdin and stdout redirected to files, on the committed
 * synthetic tokenizer: exit codes, the JSON id array, exact text back,
 * --skip-special-tokens, --bytes, and refusal of bad input.
 */
#include "engine/text/text-cli-tok.h"
#include "engine/text/tokenizer.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures, checks;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);            \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

static char dir[] = "/tmp/resident-tokcli-XXXXXX";
static char in_path[PATH_MAX], out_path[PATH_MAX];

/* Run fn(argv) with `input` on stdin; returns the exit status and the
 * output in *out (malloc'd, NUL-terminated). */
static int run(int (*fn)(int, char **), char **argv, const void *input,
               size_t in_len, char **out, size_t *out_len)
{
    FILE *f = fopen(in_path, "wb");
    fwrite(input, 1, in_len, f);
    fclose(f);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(in_path, "rb", stdin) || !freopen(out_path, "wb", stdout))
            _exit(99);
        int argc = 0;
        while (argv[argc])
            argc++;
        int r = fn(argc, argv);
        fflush(stdout);
        _exit(r);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    f = fopen(out_path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    *out = calloc(1, (size_t)n + 1);
    if (fread(*out, 1, (size_t)n, f) != (size_t)n)
        n = 0;
    fclose(f);
    *out_len = (size_t)n;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int main(void)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    char model[PATH_MAX];
    snprintf(model, sizeof(model), "%.3000s/engine/text/testdata/tok/synth",
             root ? root : ".");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(in_path, sizeof(in_path), "%s/in", dir);
    snprintf(out_path, sizeof(out_path), "%s/out", dir);

    struct tokenizer *tok;
    struct engine_error err = { 0 };
    if (tokenizer_load(model, &tok, &err) != 0) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    static const char text[] = "Hello, world! <|im_end|> na\xc3\xafve \xf0\x9f\x8e\x89\n";
    int32_t *ids;
    size_t n;
    tokenizer_encode(tok, text, sizeof(text) - 1, &ids, &n, &err);
    char want[4096];
    size_t o = 0;
    want[o++] = '[';
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(want + o, sizeof(want) - o, i ? ",%d" : "%d",
                              ids[i]);
    snprintf(want + o, sizeof(want) - o, "]\n");

    char *out;
    size_t out_len;
    char *tok_argv[] = { "tokenize", "--model", model, NULL };
    int r = run(text_cli_tokenize, tok_argv, text, sizeof(text) - 1, &out,
                &out_len);
    CHECK(r == 0 && strcmp(out, want) == 0, "tokenize: rc %d, \"%s\"", r,
          out);
    char ids_json[4096];
    snprintf(ids_json, sizeof(ids_json), "%s", out);
    free(out);

    char *det_argv[] = { "detokenize", "--model", model, NULL };
    r = run(text_cli_detokenize, det_argv, ids_json, strlen(ids_json), &out,
            &out_len);
    CHECK(r == 0 && out_len == sizeof(text) - 1 &&
              memcmp(out, text, out_len) == 0,
          "detokenize gives the text back (rc %d)", r);
    free(out);

    /* the same through a binary cache, written by the first run */
    char cache_arg[PATH_MAX];
    snprintf(cache_arg, sizeof(cache_arg), "%s", dir);
    char *cache_argv[] = { "detokenize", "--model", model, "--cache-dir",
                           cache_arg, NULL };
    for (int i = 0; i < 2; i++) {
        r = run(text_cli_detokenize, cache_argv, ids_json, strlen(ids_json),
                &out, &out_len);
        CHECK(r == 0 && out_len == sizeof(text) - 1 &&
                  memcmp(out, text, out_len) == 0,
              "detokenize with --cache-dir, run %d", i);
        free(out);
    }

    char *skip_argv[] = { "detokenize", "--model", model,
                          "--skip-special-tokens", NULL };
    r = run(text_cli_detokenize, skip_argv, ids_json, strlen(ids_json), &out,
            &out_len);
    CHECK(r == 0 && !strstr(out, "<|im_end|>") && strstr(out, "Hello"),
          "--skip-special-tokens drops <|im_end|>");
    free(out);

    /* arbitrary bytes through --bytes */
    static const char bin[] = "\xff\xfe\x00\x80 ok \xc3";
    char *bytes_argv[] = { "tokenize", "--model", model, "--bytes", NULL };
    r = run(text_cli_tokenize, bytes_argv, bin, sizeof(bin) - 1, &out,
            &out_len);
    CHECK(r == 0 && out[0] == '[', "tokenize --bytes");
    snprintf(ids_json, sizeof(ids_json), "%s", out);
    free(out);
    r = run(text_cli_detokenize, det_argv, ids_json, strlen(ids_json), &out,
            &out_len);
    CHECK(r == 0 && out_len == sizeof(bin) - 1 &&
              memcmp(out, bin, out_len) == 0,
          "bytes round trip through the CLI");
    free(out);

    /* refusals */
    r = run(text_cli_tokenize, tok_argv, bin, sizeof(bin) - 1, &out,
            &out_len);
    CHECK(r == 1 && out_len == 0, "invalid UTF-8 refused (rc %d)", r);
    free(out);
    char *nomodel[] = { "tokenize", NULL };
    r = run(text_cli_tokenize, nomodel, "x", 1, &out, &out_len);
    CHECK(r == 2, "missing --model is a usage error (rc %d)", r);
    free(out);
    static const char *bad_json[] = { "[1,", "{\"a\":1}", "[1.5]", "[-1]",
                                      "[99999999]", "[1] x" };
    for (size_t i = 0; i < sizeof(bad_json) / sizeof(bad_json[0]); i++) {
        r = run(text_cli_detokenize, det_argv, bad_json[i],
                strlen(bad_json[i]), &out, &out_len);
        CHECK(r == 1 && out_len == 0, "detokenize \"%s\" refused (rc %d)",
              bad_json[i], r);
        free(out);
    }

    free(ids);
    tokenizer_free(tok);
    unlink(in_path);
    unlink(out_path);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        perror("rm");
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
