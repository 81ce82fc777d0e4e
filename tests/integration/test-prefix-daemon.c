/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd's prefix cache end to end (engine generator on the bundled
 * model tests/data/default-model, through libresident; docs/prefix-cache.md):
 *   - a CHAT request that shares the system message with an earlier one
 *     reports cached_tokens > 0 in DONE (prompt_tokens unchanged), and a
 *     follow-up turn (the first exchange + a new user message) reuses more;
 *   - the generated ids with the cache equal those without it (the
 *     per-request opt-out, and a second daemon with prefix_cache=off), for
 *     greedy and a seeded temperature run; prefill_chunk=8 makes the
 *     scheduler's chunks straddle the cache's snapshot positions;
 *   - RESIDENT_REQ_NO_CACHE gives cached_tokens 0 where a plain request hits;
 *   - per-uid isolation: uid 65534 (a forked child after setuid, allowed by
 *     allow_uids) gets no hit on root's prefixes, then hits its own (root only;
 *     skipped otherwise);
 *   - SIGHUP logs the cache's counters.
 * With --bench: time to first token of requests that share a long system
 * message, cache on vs off (docs/performance.md, "Prefix cache").
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "tests/integration/harness.h"

#define MAX_IDS 256

struct result {
    uint32_t ids[MAX_IDS];
    uint32_t n;
    uint32_t prompt_tokens, cached_tokens;
    uint64_t ttft_us;
    int      error, done;
    char     msg[256];
};

static const struct th_sampling SEEDED = { 0.9f, 0.95f, 50, 77 };

/* A system message long enough to span several prefill chunks. */
#define SYS "You are a careful assistant for the resident test suite. Answer briefly, cite the " \
            "relevant section, and never invent facts. Prefer short sentences and plain words. " \
            "When a question is ambiguous, say which reading you chose and why."

static const char *CHAT_A =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"" SYS "\"},"
    "{\"role\":\"user\",\"content\":\"What is a radix tree?\"}]}";
static const char *CHAT_B =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"" SYS "\"},"
    "{\"role\":\"user\",\"content\":\"How large is a GDN snapshot?\"}]}";
/* The turn after A: A's exchange, then a new question. */
static const char *CHAT_A2 =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"" SYS "\"},"
    "{\"role\":\"user\",\"content\":\"What is a radix tree?\"},"
    "{\"role\":\"assistant\",\"content\":\"A tree keyed by sequences, with shared prefixes stored once.\"},"
    "{\"role\":\"user\",\"content\":\"And why does it suit token ids?\"}]}";

/* One CHAT request to its DONE. */
static int chat(struct resident *r, const char *json, const struct th_sampling *s, uint32_t flags,
                struct result *res)
{
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 12;
    q.temperature = s->temperature;
    q.top_p = s->top_p;
    q.top_k = s->top_k;
    q.seed = s->seed;
    q.repeat_penalty = 1.0f;
    q.flags = RESIDENT_REQ_IGNORE_EOS | flags;
    memset(res, 0, sizeof(*res));
    uint64_t id;
    int ret = resident_submit_chat(r, &q, json, strlen(json), &id);
    if (ret < 0)
        return ret;
    struct resident_event ev;
    uint64_t end = th_now_ms() + 60000;
    while (!res->done && th_now_ms() < end) {
        ret = resident_wait(r, &ev, 1000);
        if (ret < 0)
            return ret;
        if (ret == 0 || ev.id != id)
            continue;
        if (ev.type == RESIDENT_EVENT_TOKENS) {
            for (uint32_t i = 0; i < ev.n_tokens && res->n < MAX_IDS; i++)
                res->ids[res->n++] = ev.tokens[i];
        } else if (ev.type == RESIDENT_EVENT_DONE) {
            res->done = 1;
            res->error = ev.error;
            res->prompt_tokens = ev.prompt_tokens;
            res->cached_tokens = ev.cached_tokens;
            res->ttft_us = ev.ttft_us;
            snprintf(res->msg, sizeof(res->msg), "%s", ev.message);
        }
    }
    if (res->error)
        fprintf(stderr, "request failed: %d %s\n", res->error, res->msg);
    return res->done && !res->error ? 0 : -EIO;
}

static int same(const struct result *a, const struct result *b, const char *what)
{
    if (a->n == b->n && a->n > 0 && memcmp(a->ids, b->ids, a->n * sizeof(uint32_t)) == 0)
        return 1;
    fprintf(stderr, "%s: generated ids differ (%u vs %u tokens)\n", what, a->n, b->n);
    for (uint32_t i = 0; i < a->n && i < b->n; i++)
        if (a->ids[i] != b->ids[i]) {
            fprintf(stderr, "  first difference at token %u: %u vs %u\n", i, a->ids[i], b->ids[i]);
            break;
        }
    return 0;
}

static int start(struct th_daemon *d, const char *model_opt, const char *cache)
{
    const char *opts[] = { "generator=engine", model_opt, "prefill_chunk=8", "allow_uids=65534", cache, NULL };
    return th_daemon_start(d, opts);
}

/* The log line SIGHUP writes with the cache counters. */
static int log_has(const struct th_daemon *d, const char *needle)
{
    FILE *f = fopen(d->log, "r");
    if (!f)
        return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* --bench: 8 questions under one ~2,600-token system message; mean TTFT of
 * requests 2..8 (1 fills the cache), cache on vs off, prefill_chunk 512. */
static int bench(const char *model_opt)
{
    size_t cap = 64 * 1024;
    char *sys = malloc(cap), *json = malloc(cap + 512);
    if (!sys || !json)
        return 1;
    size_t k = 0;
    for (int i = 0; i < 60; i++)
        k += (size_t)snprintf(sys + k, cap - k, "Rule %d: " SYS " ", i);
    for (int mode = 0; mode < 2; mode++) {
        struct th_daemon d = { 0 };
        const char *opts[] = { "generator=engine", model_opt, mode ? "prefix_cache=on" : "prefix_cache=off", NULL };
        if (th_daemon_start(&d, opts) < 0)
            return 1;
        struct resident *r = th_connect(d.sock, "it-prefix-bench", 0);
        struct result *res = calloc(1, sizeof(*res));
        uint64_t sum = 0, cached = 0;
        uint32_t prompt = 0;
        for (int q = 0; q < 8 && r && res; q++) {
            snprintf(json, cap + 512, "{\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
                     "{\"role\":\"user\",\"content\":\"Question number %d: which rule applies?\"}]}", sys, q);
            if (chat(r, json, &TH_GREEDY, 0, res) < 0)
                return 1;
            if (q) {
                sum += res->ttft_us;
                cached += res->cached_tokens;
                prompt += res->prompt_tokens;
            }
        }
        printf("bench prefix_cache=%s: prompt %u tokens (7 requests), cached %" PRIu64 ", mean TTFT %.2f ms\n",
               mode ? "on" : "off", prompt, cached, (double)sum / 7 / 1000.0);
        if (r)
            resident_close(r);
        free(res);
        th_daemon_stop(&d, 10000);
    }
    free(sys);
    free(json);
    return 0;
}

int main(int argc, char **argv)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT");
    char model_dir[512], model_opt[600];
    snprintf(model_dir, sizeof(model_dir), "%s/tests/data/default-model", src ? src : ".");
    if (access(model_dir, R_OK) != 0) {
        printf("SKIP: no bundled model at %s\n", model_dir);
        return 77;
    }
    snprintf(model_opt, sizeof(model_opt), "model=%s", model_dir);
    th_require_uring();
    if (argc > 1 && strcmp(argv[1], "--bench") == 0)
        return bench(model_opt);

    /* Reference outputs from a daemon without the cache. */
    struct th_daemon off = { 0 };
    if (start(&off, model_opt, "prefix_cache=off") < 0) {
        fprintf(stderr, "cannot start residentd (prefix_cache=off)\n");
        return 1;
    }
    struct result *ref_b = calloc(1, sizeof(*ref_b)), *ref_bs = calloc(1, sizeof(*ref_bs));
    struct result *ref_a2 = calloc(1, sizeof(*ref_a2)), *res = calloc(1, sizeof(*res));
    struct result *tmp = calloc(1, sizeof(*tmp));
    struct resident *r = th_connect(off.sock, "it-prefix-off", 0);
    TH_CHECK(r != NULL);
    if (r) {
        TH_CHECK(chat(r, CHAT_A, &TH_GREEDY, 0, tmp) == 0);
        TH_CHECK(chat(r, CHAT_B, &TH_GREEDY, 0, ref_b) == 0 && ref_b->cached_tokens == 0);
        TH_CHECK(chat(r, CHAT_B, &SEEDED, 0, ref_bs) == 0 && ref_bs->cached_tokens == 0);
        TH_CHECK(chat(r, CHAT_A2, &TH_GREEDY, 0, ref_a2) == 0 && ref_a2->cached_tokens == 0);
        /* off really is off: the same prompt again reuses nothing */
        TH_CHECK(chat(r, CHAT_A2, &TH_GREEDY, 0, tmp) == 0 && tmp->cached_tokens == 0);
        resident_close(r);
    }
    TH_CHECK(th_daemon_stop(&off, 10000) == 0);

    struct th_daemon on = { 0 };
    if (start(&on, model_opt, "prefix_cache=on") < 0) {
        fprintf(stderr, "cannot start residentd (prefix_cache=on)\n");
        return 1;
    }
    r = th_connect(on.sock, "it-prefix-on", 0);
    TH_CHECK(r != NULL);
    uint32_t cached_b = 0, cached_a2 = 0;
    if (r) {
        /* First request: nothing to reuse. */
        TH_CHECK(chat(r, CHAT_A, &TH_GREEDY, 0, tmp) == 0);
        TH_CHECK(tmp->cached_tokens == 0);
        /* Same system message: resumes at the first message boundary. */
        TH_CHECK(chat(r, CHAT_B, &TH_GREEDY, 0, res) == 0);
        cached_b = res->cached_tokens;
        TH_CHECK(res->cached_tokens > 0 && res->cached_tokens < res->prompt_tokens);
        TH_CHECK(res->prompt_tokens == ref_b->prompt_tokens);
        TH_CHECK(same(res, ref_b, "greedy, cache on vs off"));
        /* Seeded sampling, restored again. */
        TH_CHECK(chat(r, CHAT_B, &SEEDED, 0, res) == 0);
        TH_CHECK(res->cached_tokens > 0);
        TH_CHECK(same(res, ref_bs, "seeded, cache on vs off"));
        /* The next turn of A: resumes where A's generation prompt began. */
        TH_CHECK(chat(r, CHAT_A2, &TH_GREEDY, 0, res) == 0);
        cached_a2 = res->cached_tokens;
        TH_CHECK(res->cached_tokens > cached_b);
        TH_CHECK(same(res, ref_a2, "next turn, cache on vs off"));
        /* Opt-out: no reuse where a plain request hits, same output. */
        TH_CHECK(chat(r, CHAT_A2, &TH_GREEDY, RESIDENT_REQ_NO_CACHE, res) == 0);
        TH_CHECK(res->cached_tokens == 0);
        TH_CHECK(same(res, ref_a2, "opt-out vs cache off"));
        TH_CHECK(chat(r, CHAT_A2, &TH_GREEDY, 0, res) == 0);
        TH_CHECK(res->cached_tokens > 0);
        TH_CHECK(same(res, ref_a2, "repeat, cache on vs off"));
        resident_close(r);
    }

    /* Per-uid isolation: another uid does not reach root's prefixes. */
    if (geteuid() == 0) {
        pid_t kid = fork();
        if (kid == 0) {
            th_failures = 0;
            if (setgid(65534) != 0 || setuid(65534) != 0) {
                perror("setuid 65534");
                _exit(2);
            }
            struct resident *u = th_connect(on.sock, "it-prefix-nobody", 0);
            struct result *x = calloc(1, sizeof(*x));
            TH_CHECK(u != NULL && x != NULL);
            if (u && x) {
                TH_CHECK(chat(u, CHAT_B, &TH_GREEDY, 0, x) == 0);
                TH_CHECK(x->cached_tokens == 0);
                TH_CHECK(same(x, ref_b, "other uid vs cache off"));
                /* its own prefix is reused */
                TH_CHECK(chat(u, CHAT_A, &TH_GREEDY, 0, x) == 0);
                TH_CHECK(x->cached_tokens > 0);
                resident_close(u);
            }
            free(x);
            _exit(th_failures ? 1 : 0);
        }
        int st = 0;
        TH_CHECK(kid > 0 && waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    } else {
        printf("per-uid isolation: skipped (needs root to setuid 65534)\n");
    }

    /* Counters in the log at SIGHUP. */
    kill(on.pid, SIGHUP);
    uint64_t end = th_now_ms() + 5000;
    while (!log_has(&on, "SIGHUP: prefix cache:") && th_now_ms() < end)
        usleep(20000);
    TH_CHECK(log_has(&on, "SIGHUP: prefix cache:"));
    TH_CHECK(th_daemon_alive(&on));
    TH_CHECK(th_daemon_stop(&on, 10000) == 0);
    free(ref_b);
    free(ref_bs);
    free(ref_a2);
    free(res);
    free(tmp);
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed\n", th_failures);
        return 1;
    }
    printf("prefix cache through residentd: cached_tokens %u (shared system), %u (next turn); "
           "outputs equal with the cache off; opt-out and uid isolation ok\n", cached_b, cached_a2);
    return 0;
}
