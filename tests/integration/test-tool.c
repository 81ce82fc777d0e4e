/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The `resident` command against a live residentd: `run` streams exactly
 * the text the null generator defines, `--json` emits one event per line,
 * `--stats` reports TTFT, `chat` answers every line of a multi-turn
 * conversation, errors are reported with a non-zero exit, and the offline
 * subcommands exec the engine helper named by $RESIDENT_ENGINE with
 * argv = ["resident-engine", SUBCOMMAND, rest...].
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/gen.h"
#include "tests/integration/harness.h"

static struct th_daemon D;
static char tool[512];

/* Run a shell command, capture stdout (and stderr when `err`), return the exit status. */
static int run(const char *cmd, char *out, size_t cap, int err)
{
    char full[2100];
    snprintf(full, sizeof(full), "%s%s", cmd, err ? " 2>&1" : " 2>/dev/null");
    FILE *f = popen(full, "r");
    if (!f)
        return -1;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void)
{
    th_require_uring();
    const char *root = getenv("RESIDENT_BUILD_ROOT");
    snprintf(tool, sizeof(tool), "%s/client/resident", root ? root : ".");
    if (th_daemon_start(&D, NULL) < 0)
        return 1;
    static char out[1 << 16], cmd[2048];

    /* run --raw: text must equal the null generator's pieces for 12 tokens
     * (pieces 60/61 form U+00E9 when adjacent, so compare only when absent). */
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 12 --seed 3 --raw 'hello tool'", tool, D.sock);
    TH_CHECK(run(cmd, out, sizeof(out), 0) == 0);
    uint64_t h = gen_null_prompt_hash(2, (const uint8_t *)"hello tool", 10);
    char expect[1024] = "";
    int plain = 1;
    for (uint32_t i = 0; i < 12; i++) {
        uint32_t t = gen_null_token(h, 3, i), n;
        const char *p = gen_null_piece(t, &n);
        plain &= t != 60 && t != 61;
        strncat(expect, p, n);
    }
    strcat(expect, "\n");
    if (plain)
        TH_CHECK(strcmp(out, expect) == 0);
    else
        TH_CHECK(strlen(out) > 1);

    /* Sampling options: explicit values and the model defaults both reach
     * residentd (the null generator ignores them: same text for the seed);
     * an out-of-range value is refused naming the option. */
    static char out2[1 << 16];
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 12 --seed 3 --raw --temperature 0 --top-p 0.5 --top-k 7 "
             "--min-p 0.1 --repetition-penalty 1.2 --presence-penalty 1.5 --frequency-penalty -0.5 'hello tool'",
             tool, D.sock);
    TH_CHECK(run(cmd, out2, sizeof(out2), 0) == 0 && strcmp(out2, out) == 0);
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 1 --presence-penalty 2.5 'x'", tool, D.sock);
    TH_CHECK(run(cmd, out2, sizeof(out2), 1) != 0 && strstr(out2, "--presence-penalty") != NULL);
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 1 --top-p 0 'x'", tool, D.sock);
    TH_CHECK(run(cmd, out2, sizeof(out2), 1) != 0 && strstr(out2, "--top-p") != NULL);
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 1 --top-k 2.5 'x'", tool, D.sock);
    TH_CHECK(run(cmd, out2, sizeof(out2), 1) != 0 && strstr(out2, "--top-k") != NULL);

    /* --json: queued, one tokens line per batch, done with finish "length". */
    snprintf(cmd, sizeof(cmd), "%s run --socket %s -n 4 --json 'hi'", tool, D.sock);
    TH_CHECK(run(cmd, out, sizeof(out), 0) == 0);
    TH_CHECK(strncmp(out, "{\"event\":\"queued\"", 17) == 0);
    TH_CHECK(strstr(out, "\"event\":\"tokens\"") != NULL);
    TH_CHECK(strstr(out, "\"finish\":\"length\"") != NULL && strstr(out, "\"completion_tokens\":4") != NULL);

    /* --stats goes to stderr and names TTFT; the null generator is announced. */
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 8 --stats 'x'", tool, D.sock);
    TH_CHECK(run(cmd, out, sizeof(out), 1) == 0);
    TH_CHECK(strstr(out, "TTFT") != NULL && strstr(out, "tok/s") != NULL);
    TH_CHECK(strstr(out, "synthetic") != NULL);

    /* chat: two turns, two answers. */
    snprintf(cmd, sizeof(cmd), "printf 'first\\nsecond\\n' | %s --socket %s chat -n 3", tool, D.sock);
    TH_CHECK(run(cmd, out, sizeof(out), 0) == 0);
    int lines = 0;
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    TH_CHECK(lines == 2);

    /* Errors: a limit, a missing daemon. */
    snprintf(cmd, sizeof(cmd), "%s --socket %s run -n 999999 'x'", tool, D.sock);
    TH_CHECK(run(cmd, out, sizeof(out), 1) == 1 && strstr(out, "max_new_tokens") != NULL);
    snprintf(cmd, sizeof(cmd), "%s --socket %s/none.sock run 'x'", tool, D.dir);
    TH_CHECK(run(cmd, out, sizeof(out), 1) == 1 && strstr(out, "cannot connect") != NULL);

    /* Offline subcommands exec the helper with its own argv[0]. */
    char helper[128];
    snprintf(helper, sizeof(helper), "%s/fake-engine.sh", D.dir);
    FILE *f = fopen(helper, "w");
    fprintf(f, "#!/bin/sh\necho \"argv0=$0 args=$*\"\nexit 3\n");
    fclose(f);
    chmod(helper, 0755);
    snprintf(cmd, sizeof(cmd), "RESIDENT_ENGINE=%s %s tokenize --model /m 'a b'", helper, tool);
    TH_CHECK(run(cmd, out, sizeof(out), 0) == 3);
    TH_CHECK(strstr(out, "args=tokenize --model /m a b") != NULL);
    const char *subs[] = { "logits", "generate", "detokenize", "render", "parse", "bench" };
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        snprintf(cmd, sizeof(cmd), "RESIDENT_ENGINE=%s %s %s x", helper, tool, subs[i]);
        char want[64];
        snprintf(want, sizeof(want), "args=%s x", subs[i]);
        TH_CHECK(run(cmd, out, sizeof(out), 0) == 3 && strstr(out, want) != NULL);
    }
    snprintf(cmd, sizeof(cmd), "RESIDENT_ENGINE=%s/missing %s bogus-subcommand", D.dir, tool);
    TH_CHECK(run(cmd, out, sizeof(out), 1) == 2 && strstr(out, "unknown command") != NULL);
    unlink(helper);

    TH_CHECK(th_daemon_stop(&D, 10000) == 0);
    if (th_failures) {
        fprintf(stderr, "test-tool: %d failures\n", th_failures);
        return 1;
    }
    printf("test-tool: ok\n");
    return 0;
}
