/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd with the engine generator on the bundled model
 * (tests/data/default-model: real Qwen3 tokenizer, random weights), through
 * libresident:
 *   - token ids equal the offline `resident-engine generate` for the same
 *     prompt ids, seed and sampling (greedy and a seeded temperature run);
 *   - several prompts of different lengths decoded in one batch (so the
 *     sequences sit at different positions) give each its offline tokens;
 *   - several client processes at once, each checked against offline;
 *   - TEXT and CHAT prompts go through the chat template; their output is on
 *     the reasoning channel when the prompt opened <think>, on content when
 *     enable_thinking is false (template_kwargs or chat_template_kwargs,
 *     the latter winning), RAW output is unparsed content;
 *   - cancellation mid-prefill (prefill_chunk=8 makes a 64-token prompt
 *     take 8 steps) and mid-decode ends with DONE(cancelled) and frees the
 *     sequence: max_inflight_per_uid=16 lets the next requests in, and the
 *     daemon's RSS does not grow over many cancelled sequences.
 * argv[1] names the backend (cpu-ref or cpu); daemon and offline reference
 * both run it, explicitly: residentd with 2 compute threads, the offline
 * reference with 1, so the equality also checks that the backend's results
 * do not depend on the thread count (meson registers one test per backend).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "tests/integration/harness-model.h"
#include "tests/integration/harness.h"

#define MAX_OUT 64

static struct th_daemon D;
static struct th_model M;
static const char *backend = "cpu-ref";

struct result {
    uint32_t ids[4096];
    uint32_t n;
    size_t   text_len;
    size_t   chan_bytes[3];     /* text per channel */
    uint32_t finish, prompt_tokens, completion_tokens;
    int      error, queued, done;
    char     msg[256];
};

static const struct th_sampling SEEDED = { 0.9f, 0.95f, 50, 1234 };

/* Feed one event into the result of its request; 1 when it was the DONE. */
static int absorb(struct result *res, const struct resident_event *ev)
{
    if (ev->type == RESIDENT_EVENT_QUEUED) {
        TH_CHECK(!res->queued);
        res->queued = 1;
        res->prompt_tokens = ev->prompt_tokens;
        return 0;
    }
    if (ev->type == RESIDENT_EVENT_TOKENS) {
        for (uint32_t i = 0; i < ev->n_tokens && res->n < 4096; i++)
            res->ids[res->n++] = ev->tokens[i];
        res->text_len += ev->text_len;
        TH_CHECK(ev->channel <= RESIDENT_CHANNEL_TOOL_CALL);
        if (ev->channel <= RESIDENT_CHANNEL_TOOL_CALL)
            res->chan_bytes[ev->channel] += ev->text_len;
        return 0;
    }
    res->done = 1;
    res->finish = ev->finish;
    res->error = ev->error;
    snprintf(res->msg, sizeof(res->msg), "%s", ev->message);
    res->completion_tokens = ev->completion_tokens;
    return 1;
}

static int absorb_at(void *res, size_t i, const struct resident_event *ev)
{
    return absorb((struct result *)res + i, ev);
}

/* Collect events for requests ids[0..n) until every one has its DONE. */
static int collect_many(struct resident *r, const uint64_t *ids, struct result *res, size_t n)
{
    return th_collect(r, ids, n, 60000, absorb_at, res);
}

static void request_init(struct resident_request *q, const struct th_sampling *s, uint32_t max_tokens)
{
    resident_request_init(q);
    q->max_tokens = max_tokens;
    q->temperature = s->temperature;
    q->top_p = s->top_p;
    q->top_k = s->top_k;
    q->min_p = 0.0f;
    q->repeat_penalty = 1.0f;
    q->seed = s->seed;
}

/* Deterministic prompt ids of length n, variant v. */
static void make_prompt(uint32_t *ids, size_t n, uint32_t v)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = (uint32_t)((i * 7919u + v * 104729u + 17u) % 150000u) + 10u;
}

/* The offline reference: resident-engine generate, same ids and sampling,
 * stopping where the daemon's engine generator stops (eos + <|im_end|>). */
static int offline(const uint32_t *ids, size_t n, const struct th_sampling *s, uint32_t max_tokens,
                   uint32_t *out, uint32_t *n_out)
{
    char *cmd = malloc(16 * n + 1024);
    if (!cmd)
        return -ENOMEM;
    int k = sprintf(cmd, "'%s' generate --model '%s' --backend %s --threads 1 --real-vocab %zu --stop %d -n %u --ids ",
                    M.engine_exe, M.model_dir, backend, M.real_vocab, M.im_end_id, max_tokens);
    for (size_t i = 0; i < n; i++)
        k += sprintf(cmd + k, "%s%u", i ? "," : "", ids[i]);
    if (s->temperature > 0)
        sprintf(cmd + k, " --temp %g --top-p %g --top-k %u --seed %" PRIu64, (double)s->temperature,
                (double)s->top_p, s->top_k, s->seed);
    FILE *p = popen(cmd, "r");
    free(cmd);
    if (!p)
        return -errno;
    *n_out = 0;
    unsigned v;
    while (*n_out < MAX_OUT && fscanf(p, "%u", &v) == 1) {
        out[(*n_out)++] = v;
        if (fgetc(p) != ',')
            break;
    }
    int st = pclose(p);
    return st == 0 && *n_out > 0 ? 0 : -EIO;
}

static int same_ids(const struct result *res, const uint32_t *want, uint32_t n_want)
{
    if (res->error)
        fprintf(stderr, "request failed: %d %s\n", res->error, res->msg);
    if (res->n != n_want) {
        fprintf(stderr, "daemon gave %u tokens, offline %u\n", res->n, n_want);
        return 0;
    }
    for (uint32_t i = 0; i < n_want; i++)
        if (res->ids[i] != want[i]) {
            fprintf(stderr, "token %u: daemon %u, offline %u\n", i, res->ids[i], want[i]);
            return 0;
        }
    return 1;
}

/* Prompts of different lengths: in one batch they decode at different positions. */
#define N_VAR 4
static const size_t var_len[N_VAR] = { 5, 19, 33, 50 };
static uint32_t var_ids[N_VAR][64];
static uint32_t ref_greedy[N_VAR][MAX_OUT], ref_seeded[N_VAR][MAX_OUT];
static uint32_t n_ref_greedy[N_VAR], n_ref_seeded[N_VAR];
#define N_NEW 12u

static void test_offline_equal_alone(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "it-engine-alone");
    TH_CHECK(!resident_is_synthetic(r) && strcmp(resident_generator(r), "engine") == 0);
    for (int v = 0; v < N_VAR; v++) {
        for (int k = 0; k < 2; k++) {
            const struct th_sampling *s = k ? &SEEDED : &TH_GREEDY;
            struct resident_request q;
            request_init(&q, s, N_NEW);
            uint64_t id;
            TH_CHECK(resident_submit_ids(r, &q, var_ids[v], var_len[v], &id) == 0);
            struct result *res = calloc(1, sizeof(*res));
            TH_CHECK(collect_many(r, &id, res, 1) == 0);
            TH_CHECK(res->queued && res->done && res->error == 0);
            TH_CHECK(res->prompt_tokens == var_len[v]);
            TH_CHECK(res->completion_tokens == res->n);
            TH_CHECK(same_ids(res, k ? ref_seeded[v] : ref_greedy[v], k ? n_ref_seeded[v] : n_ref_greedy[v]));
            TH_CHECK(res->finish == (res->n == N_NEW ? RESIDENT_FINISH_LENGTH : RESIDENT_FINISH_STOP));
            free(res);
        }
    }
    resident_close(r);
}

/* All prompts (both samplings) in flight together: batched decode of
 * sequences at different positions, and prefill chunks next to decodes. */
static void test_batched(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "it-engine-batch");
    uint64_t ids[2 * N_VAR];
    struct result *res = calloc(2 * N_VAR, sizeof(*res));
    for (int i = 0; i < 2 * N_VAR; i++) {
        struct resident_request q;
        request_init(&q, i % 2 ? &SEEDED : &TH_GREEDY, N_NEW);
        TH_CHECK(resident_submit_ids(r, &q, var_ids[i / 2], var_len[i / 2], &ids[i]) == 0);
    }
    TH_CHECK(collect_many(r, ids, res, 2 * N_VAR) == 0);
    for (int i = 0; i < 2 * N_VAR; i++) {
        int v = i / 2;
        TH_CHECK(res[i].error == 0);
        TH_CHECK(same_ids(&res[i], i % 2 ? ref_seeded[v] : ref_greedy[v], i % 2 ? n_ref_seeded[v] : n_ref_greedy[v]));
    }
    free(res);
    resident_close(r);
}

/* Client processes at once, each running every prompt. */
static void test_concurrent_clients(void)
{
    enum { N_CLIENTS = 4 };
    pid_t kids[N_CLIENTS];
    for (int c = 0; c < N_CLIENTS; c++) {
        kids[c] = fork();
        if (kids[c] == 0) {
            th_failures = 0;
            struct resident *r = th_connect_or_exit(D.sock, "it-engine-conc");
            uint64_t ids[N_VAR];
            struct result *res = calloc(N_VAR, sizeof(*res));
            for (int v = 0; v < N_VAR; v++) {
                struct resident_request q;
                request_init(&q, (v + c) % 2 ? &SEEDED : &TH_GREEDY, N_NEW);
                TH_CHECK(resident_submit_ids(r, &q, var_ids[v], var_len[v], &ids[v]) == 0);
            }
            TH_CHECK(collect_many(r, ids, res, N_VAR) == 0);
            for (int v = 0; v < N_VAR; v++) {
                int sd = (v + c) % 2;
                TH_CHECK(same_ids(&res[v], sd ? ref_seeded[v] : ref_greedy[v], sd ? n_ref_seeded[v] : n_ref_greedy[v]));
            }
            free(res);
            resident_close(r);
            _exit(th_failures ? 1 : 0);
        }
    }
    for (int c = 0; c < N_CLIENTS; c++) {
        int st = 0;
        TH_CHECK(kids[c] > 0 && waitpid(kids[c], &st, 0) == kids[c] && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

static void run_one(struct resident *r, int kind, const char *payload, struct result *res)
{
    struct resident_request q;
    request_init(&q, &TH_GREEDY, 8);
    q.flags = RESIDENT_REQ_IGNORE_EOS;
    uint64_t id;
    memset(res, 0, sizeof(*res));
    int ret = kind == 0 ? resident_submit_text(r, &q, payload, strlen(payload), 0, &id)
            : kind == 1 ? resident_submit_text(r, &q, payload, strlen(payload), 1, &id)
                        : resident_submit_chat(r, &q, payload, strlen(payload), &id);
    TH_CHECK(ret == 0);
    TH_CHECK(collect_many(r, &id, res, 1) == 0);
    if (res->error)
        fprintf(stderr, "request failed: %s\n", res->msg);
    TH_CHECK(res->error == 0 && res->n == 8 && res->text_len > 0);
}

/* Prompts through the chat template, and the channels of their output: the
 * template opens <think> unless enable_thinking is false, so (random
 * weights never close it) a TEXT prompt's output is reasoning, a chat
 * with enable_thinking false is content, and a RAW prompt is unparsed. */
static void test_text_prompt_channels(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "it-engine-text");
    struct result *res = calloc(1, sizeof(*res));
    run_one(r, 0, "Hello", res);
    /* <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n */
    TH_CHECK(res->prompt_tokens > 5);
    TH_CHECK(res->chan_bytes[RESIDENT_CHANNEL_REASONING] == res->text_len);
    uint32_t text_tokens = res->prompt_tokens;

    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}";
    run_one(r, 2, chat, res);
    TH_CHECK(res->prompt_tokens == text_tokens);
    TH_CHECK(res->chan_bytes[RESIDENT_CHANNEL_REASONING] == res->text_len);

    /* enable_thinking false, under either name: the prompt closes an empty
     * think block (more tokens) and the output is content. */
    const char *off[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"template_kwargs\":{\"enable_thinking\":false}}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"chat_template_kwargs\":{\"enable_thinking\":false}}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"chat_template_kwargs\":{\"enable_thinking\":false},"
        "\"template_kwargs\":{\"enable_thinking\":true}}",
    };
    uint32_t off_tokens = 0;
    for (int i = 0; i < 3; i++) {
        run_one(r, 2, off[i], res);
        TH_CHECK(res->prompt_tokens > text_tokens);
        TH_CHECK(!off_tokens || res->prompt_tokens == off_tokens);
        off_tokens = res->prompt_tokens;
        TH_CHECK(res->chan_bytes[RESIDENT_CHANNEL_CONTENT] == res->text_len);
    }
    /* chat_template_kwargs wins over template_kwargs. */
    const char *both = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
                       "\"chat_template_kwargs\":{\"enable_thinking\":true},\"template_kwargs\":{\"enable_thinking\":false}}";
    run_one(r, 2, both, res);
    TH_CHECK(res->prompt_tokens == text_tokens && res->chan_bytes[RESIDENT_CHANNEL_REASONING] == res->text_len);

    run_one(r, 1, "Hello", res);
    TH_CHECK(res->prompt_tokens == 1 && res->chan_bytes[RESIDENT_CHANNEL_CONTENT] == res->text_len);
    free(res);
    resident_close(r);
}

/* Cancel while the prompt is still being prefilled, and while decoding. */
static void cancel_once(struct resident *r, int mid_decode)
{
    uint32_t prompt[64];
    make_prompt(prompt, 64, 99);
    struct resident_request q;
    request_init(&q, &TH_GREEDY, mid_decode ? 3000 : 16);
    q.flags = RESIDENT_REQ_IGNORE_EOS;
    uint64_t id;
    TH_CHECK(resident_submit_ids(r, &q, prompt, 64, &id) == 0);
    struct result res = { 0 };
    struct resident_event ev;
    int cancelled = 0;
    uint64_t end = th_now_ms() + 30000;
    while (!res.done && th_now_ms() < end) {
        int ret = resident_wait(r, &ev, 1000);
        TH_CHECK(ret >= 0);
        if (ret <= 0 || ev.id != id)
            continue;
        absorb(&res, &ev);
        int now = mid_decode ? ev.type == RESIDENT_EVENT_TOKENS : ev.type == RESIDENT_EVENT_QUEUED;
        if (now && !cancelled) {
            TH_CHECK(resident_cancel(r, id) == 0);
            cancelled = 1;
        }
    }
    TH_CHECK(res.done && res.finish == RESIDENT_FINISH_CANCELLED && res.error == 0);
    if (mid_decode)
        TH_CHECK(res.n >= 1 && res.n < 3000);
    else
        TH_CHECK(res.n == 0 && res.completion_tokens == 0);
}

static void test_cancel(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "it-engine-cancel");
    for (int i = 0; i < 2; i++) {
        cancel_once(r, 0);
        cancel_once(r, 1);
    }
    usleep(100000);
    long rss0 = th_rss_kb(D.pid);
    for (int i = 0; i < 20; i++)
        cancel_once(r, i % 2);
    usleep(100000);
    long rss1 = th_rss_kb(D.pid);
    printf("cancelled 20 sequences: daemon RSS %ld -> %ld kB\n", rss0, rss1);
    /* A leaked sequence state holds >= 116 KiB + 2 KiB (f16 KV: 1 KiB) per token touched. */
    TH_CHECK(rss1 - rss0 < 2048);
    /* max_inflight_per_uid=16: still accepted after 24 cancelled requests. */
    struct resident_request q;
    request_init(&q, &TH_GREEDY, N_NEW);
    uint64_t id;
    TH_CHECK(resident_submit_ids(r, &q, var_ids[0], var_len[0], &id) == 0);
    struct result *res = calloc(1, sizeof(*res));
    TH_CHECK(collect_many(r, &id, res, 1) == 0);
    TH_CHECK(res->error == 0 && same_ids(res, ref_greedy[0], n_ref_greedy[0]));
    free(res);
    resident_close(r);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        backend = argv[1];
    if (strcmp(backend, "cpu-ref") != 0 && strcmp(backend, "cpu") != 0) {
        fprintf(stderr, "usage: test-it-engine [cpu-ref|cpu]\n");
        return 2;
    }
    th_model_require(&M);

    for (int v = 0; v < N_VAR; v++) {
        make_prompt(var_ids[v], var_len[v], (uint32_t)v);
        if (offline(var_ids[v], var_len[v], &TH_GREEDY, N_NEW, ref_greedy[v], &n_ref_greedy[v]) < 0 ||
            offline(var_ids[v], var_len[v], &SEEDED, N_NEW, ref_seeded[v], &n_ref_seeded[v]) < 0) {
            fprintf(stderr, "offline resident-engine generate failed\n");
            return 1;
        }
    }

    char opt_model[600], opt_backend[64];
    snprintf(opt_model, sizeof(opt_model), "model=%s", M.model_dir);
    snprintf(opt_backend, sizeof(opt_backend), "backend=%s", backend);
    const char *opts[] = { "generator=engine", opt_model, opt_backend, "threads=2", "prefill_chunk=8",
                           "max_inflight_per_uid=16", NULL };
    if (th_daemon_start(&D, opts) < 0) {
        fprintf(stderr, "cannot start residentd with the engine generator\n");
        return 1;
    }
    test_offline_equal_alone();
    test_batched();
    test_concurrent_clients();
    test_text_prompt_channels();
    test_cancel();
    TH_CHECK(th_daemon_alive(&D));
    TH_CHECK(th_daemon_stop(&D, 10000) == 0);
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed; daemon log: %s\n", th_failures, D.log);
        return 1;
    }
    printf("engine generator on %s (residentd 2 threads, offline 1): offline-equal (greedy + seeded), batched, "
           "concurrent, text, cancel: ok\n", backend);
    return 0;
}
