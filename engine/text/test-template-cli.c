/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The `render` and `parse` subcommands, run in a forked child with stdin
 * and stdout redirected to files, as resident-engine runs them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/text/text-cli-chat.h"

static int failures;
static char tmpdir[] = "/tmp/resident-tpl-cli-XXXXXX";

/* Run fn(argv) with `input` on stdin; returns the exit status and the
 * stdout text in *out (malloc'd). */
static int run(int (*fn)(int, char **), char **argv, const char *input, char **out)
{
    char in_path[256], out_path[256];
    snprintf(in_path, sizeof(in_path), "%s/in", tmpdir);
    snprintf(out_path, sizeof(out_path), "%s/out", tmpdir);
    FILE *f = fopen(in_path, "wb");
    if (!f)
        return -1;
    fputs(input, f);
    fclose(f);
    int argc = 0;
    while (argv[argc])
        argc++;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(in_path, "rb", stdin) || !freopen(out_path, "wb", stdout))
            _exit(99);
        int rc = fn(argc, argv);
        fflush(stdout);
        _exit(rc);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return -1;
    f = fopen(out_path, "rb");
    *out = calloc(1, 1 << 16);
    if (f && *out) {
        size_t n = fread(*out, 1, (1 << 16) - 1, f);
        (*out)[n] = '\0';
    }
    if (f)
        fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void expect(const char *name, int rc, int want_rc, const char *got, const char *want)
{
    if (rc != want_rc || (want && (!got || strcmp(got, want) != 0))) {
        fprintf(stderr, "FAIL %s: rc %d (want %d)\n  got  %s\n  want %s\n", name, rc, want_rc, got ? got : "(null)",
                want ? want : "(any)");
        failures++;
    }
}

int main(void)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT");
    char model[4096];
    if (!src) {
        fprintf(stderr, "RESIDENT_SOURCE_ROOT is not set; run through meson test\n");
        return 77;
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    /* The model directory only supplies the template for the identity
     * check (a warning); without ../shared an empty directory will do. */
    snprintf(model, sizeof(model), "%s/../shared/models/qwen3.6-tokenizer", src);
    if (access(model, R_OK) != 0) {
        printf("%s is absent; using an empty model directory\n", model);
        snprintf(model, sizeof(model), "%s", tmpdir);
    }
    char *out = NULL;
    int rc;

    char *render_argv[] = { "render", "--model", model, NULL };
    rc = run(text_cli_render, render_argv,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}], \"add_generation_prompt\": true}", &out);
    expect("render", rc, 0, out, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n");
    free(out);

    rc = run(text_cli_render, render_argv, "{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}", &out);
    expect("render error", rc, 1, out, "");
    free(out);

    char *bad_argv[] = { "render", NULL };
    rc = run(text_cli_render, bad_argv, "{}", &out);
    expect("render usage", rc, 2, out, "");
    free(out);

    char tools_path[256];
    snprintf(tools_path, sizeof(tools_path), "%s/tools.json", tmpdir);
    FILE *f = fopen(tools_path, "wb");
    if (f) {
        fputs("[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\", "
              "\"properties\": {\"n\": {\"type\": \"integer\"}}}}}]", f);
        fclose(f);
    }
    char *parse_argv[] = { "parse", "--model", model, "--tools", tools_path, "--fixed-ids", NULL };
    rc = run(text_cli_parse, parse_argv,
             "Think.\n</think>\n\nCalling.\n\n<tool_call>\n<function=f>\n<parameter=n>\n5\n</parameter>\n</function>\n</tool_call>",
             &out);
    expect("parse", rc, 0, out,
           "{\"reasoning\": \"Think.\\n\", \"content\": \"\\n\\nCalling.\\n\\n\", \"tool_calls\": [{\"id\": "
           "\"call_000000000000000000000000\", \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": "
           "\"{\\\"n\\\": 5}\"}}], \"finish_reason\": \"tool_calls\"}\n");
    free(out);

    char *off_argv[] = { "parse", "--model", model, "--thinking", "off", NULL };
    rc = run(text_cli_parse, off_argv, "Hello", &out);
    expect("parse thinking off", rc, 0, out,
           "{\"reasoning\": null, \"content\": \"Hello\", \"tool_calls\": [], \"finish_reason\": \"stop\"}\n");
    free(out);

    char *delta_argv[] = { "parse", "--model", model, "--deltas", "--fixed-ids", NULL };
    rc = run(text_cli_parse, delta_argv, "abcdefghij</think>ok<tool_call>\n<function=f>\n</function>", &out);
    expect("parse deltas", rc, 0, out,
           "{\"reasoning\": \"abcdefg\"}\n{\"reasoning\": \"hij\"}\n{\"content\": \"ok\"}\n"
           "{\"tool_calls\": [{\"index\": 0, \"id\": \"call_000000000000000000000000\", \"type\": \"function\", "
           "\"function\": {\"name\": \"f\", \"arguments\": \"\"}}]}\n"
           "{\"tool_calls\": [{\"index\": 0, \"function\": {\"arguments\": \"{\"}}]}\n"
           "{\"tool_calls\": [{\"index\": 0, \"function\": {\"arguments\": \"}\"}}]}\n"
           "{\"reasoning\": \"abcdefghij\", \"content\": \"ok\", \"tool_calls\": [{\"id\": \"call_000000000000000000000000\", "
           "\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": \"{}\"}}], \"finish_reason\": \"tool_calls\"}\n");
    free(out);

    char *no_model[] = { "parse", "--model", "/nonexistent/model", NULL };
    rc = run(text_cli_parse, no_model, "x", &out);
    expect("parse missing model dir", rc, 1, out, "");
    free(out);

    char *bad_parse[] = { "parse", "--model", model, "--thinking", "maybe", NULL };
    rc = run(text_cli_parse, bad_parse, "", &out);
    expect("parse usage", rc, 2, out, "");
    free(out);

    char path[300];
    snprintf(path, sizeof(path), "%s/in", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/out", tmpdir);
    unlink(path);
    unlink(tools_path);
    rmdir(tmpdir);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
