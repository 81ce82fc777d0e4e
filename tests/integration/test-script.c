/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Channels through the real scheduler and event ring, with scripted model
 * output: the TEST daemon residentd-script (daemon/gen-script.c) replays a
 * Qwen3.6-style reply (reasoning, content, a tool call whose one argument
 * is ~9 KB of multi-byte text) through the bundled model's real tokenizer.
 * The client uses the smallest event ring (4 KiB: records of at most 1 KiB),
 * so the long argument must arrive split over text-only records at
 * character boundaries. Checked: the per-channel text, the tool-call
 * objects and the arguments they add up to, finish tool_calls, every token
 * id delivered exactly once (sum of n_tokens = completion_tokens), every
 * record valid UTF-8; a stop string ends the content (parser flushed, no
 * call); and a cancel mid-stream still ends with one DONE.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "tests/integration/harness.h"

static char dir[64], sock[128], script_path[128], log_path[128];
static pid_t daemon_pid;

static int start_daemon(const char *script)
{
    const char *build = getenv("RESIDENT_BUILD_ROOT"), *src = getenv("RESIDENT_SOURCE_ROOT");
    char exe[512], model[512];
    snprintf(exe, sizeof(exe), "%s/daemon/residentd-script", build ? build : ".");
    snprintf(model, sizeof(model), "%s/tests/data/default-model", src ? src : ".");
    if (access(exe, X_OK) != 0 || access(model, R_OK) != 0) {
        printf("SKIP: %s or %s is missing\n", exe, model);
        exit(77);
    }
    snprintf(dir, sizeof(dir), "/tmp/resident-it-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(sock, sizeof(sock), "%s/s.sock", dir);
    snprintf(script_path, sizeof(script_path), "%s/script.txt", dir);
    snprintf(log_path, sizeof(log_path), "%s/residentd.log", dir);
    FILE *f = fopen(script_path, "w");
    if (!f || fputs(script, f) < 0 || fclose(f) != 0)
        return -1;
    daemon_pid = fork();
    if (daemon_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        setenv("RESIDENT_GEN_SCRIPT", script_path, 1);
        execl(exe, exe, "--config", "/dev/null", "--socket", sock, "--generator", "script", "--model", model,
              "-o", "socket_mode=0666", "-o", "privileges=keep", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        int s = th_raw_connect(sock);
        if (s >= 0) {
            close(s);
            return 0;
        }
        if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid)
            return -1;
        usleep(10000);
    }
    return -1;
}

struct collected {
    char    *text[3];
    size_t   len[3];
    uint32_t tokens, text_only_records, records, completion, finish;
    int      error, done;
};

static void add_text(struct collected *c, uint32_t ch, const char *t, size_t n)
{
    char *p = realloc(c->text[ch], c->len[ch] + n + 1);
    if (!p)
        exit(1);
    memcpy(p + c->len[ch], t, n);
    c->len[ch] += n;
    p[c->len[ch]] = '\0';
    c->text[ch] = p;
}

static int collect(struct resident *r, uint64_t id, struct collected *c, int cancel_after)
{
    struct resident_event ev;
    uint64_t end = th_now_ms() + 30000;
    while (!c->done && th_now_ms() < end) {
        int n = resident_wait(r, &ev, 1000);
        if (n < 0) {
            fprintf(stderr, "resident_wait: %s\n", resident_last_error(r));
            return n;
        }
        if (n == 0 || ev.id != id)
            continue;
        if (ev.type == RESIDENT_EVENT_TOKENS) {
            TH_CHECK(ev.channel <= RESIDENT_CHANNEL_TOOL_CALL);
            TH_CHECK(ev.n_tokens > 0 || ev.text_len > 0);
            TH_CHECK(th_utf8_valid(ev.text, ev.text_len));
            c->records++;
            c->tokens += ev.n_tokens;
            if (ev.n_tokens == 0)
                c->text_only_records++;
            if (ev.channel <= RESIDENT_CHANNEL_TOOL_CALL)
                add_text(c, ev.channel, ev.text, ev.text_len);
            if (cancel_after && c->tokens >= (uint32_t)cancel_after) {
                resident_cancel(r, id);
                cancel_after = 0;
            }
        } else if (ev.type == RESIDENT_EVENT_DONE) {
            c->done = 1;
            c->finish = ev.finish;
            c->error = ev.error;
            c->completion = ev.completion_tokens;
        }
    }
    return c->done ? 0 : -ETIMEDOUT;
}

/* Rebuild the calls from the tool channel's objects (as the gateway does). */
static int tool_calls(const char *s, size_t n, char *name, size_t name_cap, char **args)
{
    struct json_tokener *tok = json_tokener_new();
    size_t pos = 0, alen = 0;
    int calls = 0;
    *args = calloc(1, n + 1);
    while (pos < n) {
        while (pos < n && (s[pos] == ' ' || s[pos] == '\n'))
            pos++;
        if (pos == n)
            break;
        json_tokener_reset(tok);
        struct json_object *o = json_tokener_parse_ex(tok, s + pos, (int)(n - pos));
        if (!o || json_tokener_get_error(tok) != json_tokener_success) {
            calls = -1;
            break;
        }
        pos += json_tokener_get_parse_end(tok);
        struct json_object *v;
        if (json_object_object_get_ex(o, "name", &v)) {
            snprintf(name, name_cap, "%s", json_object_get_string(v));
            calls++;
        } else if (json_object_object_get_ex(o, "arguments", &v)) {
            size_t l = (size_t)json_object_get_string_len(v);
            memcpy(*args + alen, json_object_get_string(v), l);
            alen += l;
        }
        json_object_put(o);
    }
    json_tokener_free(tok);
    return calls;
}

int main(void)
{
    th_require_uring();
    /* ~9 KB argument of 2- and 3-byte characters. */
    size_t big_cap = 16384, bl = 0;
    char *big = malloc(big_cap);
    for (int i = 0; i < 1500; i++)
        bl += (size_t)snprintf(big + bl, big_cap - bl, "%s", i % 2 ? "été " : "€ab ");
    char *script = malloc(big_cap + 512);
    snprintf(script, big_cap + 512,
             "Thinking about it.\n</think>\n\nWriting the file.\n<tool_call>\n<function=write_file>\n"
             "<parameter=path>\n/tmp/x.txt\n</parameter>\n<parameter=content>\n%s\n</parameter>\n"
             "</function>\n</tool_call>", big);
    if (start_daemon(script) < 0) {
        fprintf(stderr, "cannot start residentd-script (log %s)\n", log_path);
        return 1;
    }
    struct resident *r = th_connect(sock, "it-script", 4096);
    if (!r)
        return 1;
    TH_CHECK(resident_is_synthetic(r));
    const char *req =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"write it\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"write_file\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{\"path\":{\"type\":\"string\"},\"content\":{\"type\":\"string\"}}}}}]}";
    struct resident_request q;
    resident_request_init(&q);
    uint64_t id;
    TH_CHECK(resident_submit_chat(r, &q, req, strlen(req), &id) == 0);
    struct collected c = { 0 };
    TH_CHECK(collect(r, id, &c, 0) == 0);
    TH_CHECK(c.finish == RESIDENT_FINISH_TOOL_CALLS && c.error == 0);
    TH_CHECK(c.tokens == c.completion && c.tokens > 100);
    TH_CHECK(c.text_only_records > 0);
    TH_CHECK(c.text[RESIDENT_CHANNEL_REASONING] && strcmp(c.text[RESIDENT_CHANNEL_REASONING], "Thinking about it.\n") == 0);
    TH_CHECK(c.text[RESIDENT_CHANNEL_CONTENT] && strcmp(c.text[RESIDENT_CHANNEL_CONTENT], "\n\nWriting the file.\n") == 0);
    char name[64] = "";
    char *args = NULL;
    TH_CHECK(tool_calls(c.text[RESIDENT_CHANNEL_TOOL_CALL], c.len[RESIDENT_CHANNEL_TOOL_CALL], name, sizeof(name), &args) == 1);
    TH_CHECK(strcmp(name, "write_file") == 0);
    struct json_object *a = args ? json_tokener_parse(args) : NULL, *v;
    TH_CHECK(a && json_object_object_get_ex(a, "path", &v) && strcmp(json_object_get_string(v), "/tmp/x.txt") == 0);
    TH_CHECK(a && json_object_object_get_ex(a, "content", &v) && strcmp(json_object_get_string(v), big) == 0);
    printf("scripted reply: %u records (%u text-only), %u tokens, tool channel %zu bytes\n", c.records,
           c.text_only_records, c.tokens, c.len[RESIDENT_CHANNEL_TOOL_CALL]);
    json_object_put(a);
    free(args);
    for (int i = 0; i < 3; i++)
        free(c.text[i]);

    /* A stop string in the content: matched on the raw text, the parser is
     * flushed with what came before it, no tool call, finish stop_string. */
    const char *stops[] = { " the file" };
    struct resident_request qs = q;
    qs.stop_strings = stops;
    qs.n_stop_strings = 1;
    struct collected c3 = { 0 };
    TH_CHECK(resident_submit_chat(r, &qs, req, strlen(req), &id) == 0);
    TH_CHECK(collect(r, id, &c3, 0) == 0);
    TH_CHECK(c3.finish == RESIDENT_FINISH_STOP_STRING && c3.tokens == c3.completion);
    TH_CHECK(c3.text[RESIDENT_CHANNEL_REASONING] && strcmp(c3.text[RESIDENT_CHANNEL_REASONING], "Thinking about it.\n") == 0);
    TH_CHECK(c3.text[RESIDENT_CHANNEL_CONTENT] && strcmp(c3.text[RESIDENT_CHANNEL_CONTENT], "\n\nWriting") == 0);
    TH_CHECK(c3.len[RESIDENT_CHANNEL_TOOL_CALL] == 0);
    for (int i = 0; i < 3; i++)
        free(c3.text[i]);

    /* Cancel mid-stream: one DONE, cancelled, no tool_calls finish. */
    struct collected c2 = { 0 };
    TH_CHECK(resident_submit_chat(r, &q, req, strlen(req), &id) == 0);
    TH_CHECK(collect(r, id, &c2, 10) == 0);
    TH_CHECK(c2.finish == RESIDENT_FINISH_CANCELLED || c2.finish == RESIDENT_FINISH_TOOL_CALLS);
    TH_CHECK(c2.tokens == c2.completion);
    for (int i = 0; i < 3; i++)
        free(c2.text[i]);

    resident_close(r);
    kill(daemon_pid, SIGTERM);
    int st = 0;
    TH_CHECK(waitpid(daemon_pid, &st, 0) == daemon_pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    free(big);
    free(script);
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed; daemon log %s\n", th_failures, log_path);
        return 1;
    }
    printf("script generator: channels, split tool arguments, cancel: ok\n");
    return 0;
}
