/* SPDX-License-Identifier: Apache-2.0 */
/*
 * End-to-end tests against a real residentd running the null generator,
 * through libresident: token ids checked against the generator's formula,
 * max tokens, stop ids, stop strings, many requests per session, a 120 KB
 * prompt through the data area, chat JSON, rejections that name their
 * limit, cancellation, 20 concurrent client processes, SIGTERM with work in
 * flight, reconnect after a daemon restart, and no fd or memory growth.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "daemon/gen.h"
#include "tests/integration/harness.h"

static struct th_daemon D;

struct result {
    uint32_t ids[8192];
    uint32_t n;
    char     text[65536];
    size_t   text_len;
    uint32_t finish;
    int      error;
    char     msg[256];
    uint32_t prompt_tokens, completion_tokens;
    int      queued, done;
};

/* Collect events of request `id` until its DONE. */
static int collect(struct resident *r, uint64_t id, struct result *res)
{
    memset(res, 0, sizeof(*res));
    struct resident_event ev;
    uint64_t end = th_now_ms() + 20000;
    while (th_now_ms() < end) {
        int ret = resident_wait(r, &ev, 1000);
        if (ret < 0)
            return ret;
        if (ret == 0 || ev.id != id)
            continue;
        if (ev.type == RESIDENT_EVENT_QUEUED) {
            TH_CHECK(!res->queued && res->n == 0);
            res->queued = 1;
        } else if (ev.type == RESIDENT_EVENT_TOKENS) {
            for (uint32_t i = 0; i < ev.n_tokens && res->n < 8192; i++)
                res->ids[res->n++] = ev.tokens[i];
            if (res->text_len + ev.text_len < sizeof(res->text)) {
                memcpy(res->text + res->text_len, ev.text, ev.text_len);
                res->text_len += ev.text_len;
            }
        } else {
            res->done = 1;
            res->finish = ev.finish;
            res->error = ev.error;
            snprintf(res->msg, sizeof(res->msg), "%s", ev.message);
            res->prompt_tokens = ev.prompt_tokens;
            res->completion_tokens = ev.completion_tokens;
            return 0;
        }
    }
    return -ETIMEDOUT;
}

static int ids_match(const struct result *res, uint32_t kind, const char *prompt, size_t len, uint64_t seed)
{
    uint64_t h = gen_null_prompt_hash(kind, (const uint8_t *)prompt, len);
    for (uint32_t i = 0; i < res->n; i++)
        if (res->ids[i] != gen_null_token(h, seed, i))
            return 0;
    return 1;
}

static void test_basic(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "e2e-basic");
    TH_CHECK(resident_is_synthetic(r) && strcmp(resident_generator(r), "null") == 0);
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 300;
    q.seed = 7;
    const char *prompt = "The quick brown fox";
    uint64_t id;
    TH_CHECK(resident_submit_text(r, &q, prompt, strlen(prompt), 1, &id) == 0);
    struct result *res = calloc(1, sizeof(*res));
    TH_CHECK(collect(r, id, res) == 0);
    TH_CHECK(res->queued && res->done && res->finish == RESIDENT_FINISH_LENGTH && res->error == 0);
    TH_CHECK(res->n == 300 && res->completion_tokens == 300 && res->prompt_tokens == 5);
    TH_CHECK(ids_match(res, 2, prompt, strlen(prompt), 7));
    TH_CHECK(th_utf8_valid(res->text, res->text_len));

    /* Stop id: the 10th token's id ends the request at its first occurrence. */
    uint32_t stop = res->ids[9];
    uint32_t first = 0;
    while (res->ids[first] != stop)
        first++;
    q.stop_ids = &stop;
    q.n_stop_ids = 1;
    TH_CHECK(resident_submit_text(r, &q, prompt, strlen(prompt), 1, &id) == 0);
    struct result *r2 = calloc(1, sizeof(*r2));
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_STOP_ID && r2->n == first + 1 && ids_match(r2, 2, prompt, strlen(prompt), 7));
    q.stop_ids = NULL;
    q.n_stop_ids = 0;

    /* Stop string: cut the full text at the first occurrence of a chunk of it. */
    size_t at = 0;
    while (at + 12 < res->text_len && !(res->text[at] == ' ' && res->text[at + 1] >= 'a' && res->text[at + 1] <= 'z'))
        at++;
    at += 40 < res->text_len / 2 ? 40 : 0;
    while (at < res->text_len && (unsigned char)res->text[at] >= 0x80)
        at++;
    char stopstr[8];
    memcpy(stopstr, res->text + at, 7);
    stopstr[7] = '\0';
    const char *expect_end = memmem(res->text, res->text_len, stopstr, strlen(stopstr));
    TH_CHECK(expect_end != NULL);
    const char *stops[1] = { stopstr };
    q.stop_strings = stops;
    q.n_stop_strings = 1;
    TH_CHECK(resident_submit_text(r, &q, prompt, strlen(prompt), 1, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_STOP_STRING);
    TH_CHECK(expect_end && r2->text_len == (size_t)(expect_end - res->text) &&
             memcmp(r2->text, res->text, r2->text_len) == 0);
    TH_CHECK(ids_match(r2, 2, prompt, strlen(prompt), 7));
    q.stop_strings = NULL;
    q.n_stop_strings = 0;

    /* Text prompt vs raw prompt are different requests to the generator. */
    q.max_tokens = 10;
    TH_CHECK(resident_submit_text(r, &q, prompt, strlen(prompt), 0, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->n == 10 && ids_match(r2, 1, prompt, strlen(prompt), 7));

    /* Token-id prompt. */
    uint32_t pid[4] = { 1, 2, 3, 4 };
    TH_CHECK(resident_submit_ids(r, &q, pid, 4, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->n == 10 && r2->prompt_tokens == 4 && ids_match(r2, 3, (const char *)pid, sizeof(pid), 7));
    pid[2] = 100000;
    TH_CHECK(resident_submit_ids(r, &q, pid, 4, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_ERROR && r2->error == -EINVAL && strstr(r2->msg, "vocabulary"));

    /* Chat JSON: valid, then invalid. */
    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    TH_CHECK(resident_submit_chat(r, &q, chat, strlen(chat), &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_LENGTH && r2->n == 10);
    TH_CHECK(resident_submit_chat(r, &q, "{\"messages\":", 12, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_ERROR && r2->error == -EINVAL && strstr(r2->msg, "JSON"));

    /* A limit is named when exceeded. */
    q.max_tokens = 100000;
    TH_CHECK(resident_submit_text(r, &q, "x", 1, 1, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_ERROR && r2->error == -E2BIG && strstr(r2->msg, "max_new_tokens"));

    /* 120 KB prompt (30K tokens) through the data area. */
    size_t big_len = 120000;
    char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)('a' + i % 26);
    q.max_tokens = 5;
    TH_CHECK(resident_submit_text(r, &q, big, big_len, 1, &id) == 0);
    TH_CHECK(collect(r, id, r2) == 0);
    TH_CHECK(r2->finish == RESIDENT_FINISH_LENGTH && r2->prompt_tokens == 30000 &&
             ids_match(r2, 2, big, big_len, 7));
    free(big);
    free(res);
    free(r2);
    resident_close(r);
}

static void test_many_requests(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "e2e-many");
    struct resident_request q;
    resident_request_init(&q);
    enum { N = 48 };
    uint64_t ids[N];
    uint32_t count[N] = { 0 };
    int done[N] = { 0 };
    for (int i = 0; i < N; i++) {
        char p[32];
        snprintf(p, sizeof(p), "prompt %d", i);
        q.max_tokens = 20 + (uint32_t)i;
        q.seed = (uint64_t)i;
        int ret;
        while ((ret = resident_submit_text(r, &q, p, strlen(p), 1, &ids[i])) == -EAGAIN) {
            struct resident_event ev;
            resident_wait(r, &ev, 10);
        }
        TH_CHECK(ret == 0);
    }
    int n_done = 0;
    struct resident_event ev;
    uint64_t end = th_now_ms() + 20000;
    while (n_done < N && th_now_ms() < end) {
        if (resident_wait(r, &ev, 500) != 1)
            continue;
        int i = (int)(ev.id - ids[0]);
        TH_CHECK(i >= 0 && i < N);
        if (i < 0 || i >= N)
            continue;
        char p[32];
        snprintf(p, sizeof(p), "prompt %d", i);
        uint64_t h = gen_null_prompt_hash(2, (const uint8_t *)p, strlen(p));
        if (ev.type == RESIDENT_EVENT_TOKENS)
            for (uint32_t k = 0; k < ev.n_tokens; k++)
                TH_CHECK(ev.tokens[k] == gen_null_token(h, (uint64_t)i, count[i]++));
        if (ev.type == RESIDENT_EVENT_DONE) {
            TH_CHECK(!done[i] && ev.finish == RESIDENT_FINISH_LENGTH && count[i] == 20u + (uint32_t)i);
            done[i] = 1;
            n_done++;
        }
    }
    TH_CHECK(n_done == N);
    resident_close(r);
}

static void test_cancel(void)
{
    /* A small event ring and a client that does not read: the request is
     * paused by backpressure, so the cancel lands mid-stream for sure. */
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = D.sock;
    cp.evt_ring_bytes = 4096;
    struct resident *r;
    TH_CHECK(resident_connect(&cp, &r) == 0);
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 4000;
    uint64_t id;
    TH_CHECK(resident_submit_text(r, &q, "cancel me", 9, 1, &id) == 0);
    usleep(100000);
    TH_CHECK(resident_cancel(r, id) == 0);
    TH_CHECK(resident_cancel(r, id) == 0);      /* idempotent */
    TH_CHECK(resident_cancel(r, 999999) == 0);  /* unknown ids are ignored */
    struct result *res = calloc(1, sizeof(*res));
    TH_CHECK(collect(r, id, res) == 0);
    TH_CHECK(res->finish == RESIDENT_FINISH_CANCELLED && res->n < 4000 && res->n == res->completion_tokens);
    TH_CHECK(ids_match(res, 2, "cancel me", 9, 0));
    free(res);
    resident_close(r);
}

/* Chunked prefill: while a 30K-token prompt is read in 512-token chunks
 * (59 steps), an already-decoding stream keeps getting one token per step.
 * Events of one session are in publication order, so the number of tokens
 * of stream A between B's QUEUED and B's first token is exact: >= 58. */
static void test_chunked_prefill(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "e2e-prefill");
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 4096;
    uint64_t a, b;
    TH_CHECK(resident_submit_text(r, &q, "stream A", 8, 1, &a) == 0);
    struct resident_event ev;
    int a_started = 0;
    while (!a_started && resident_wait(r, &ev, 2000) == 1)
        a_started = ev.id == a && ev.type == RESIDENT_EVENT_TOKENS;
    TH_CHECK(a_started);
    size_t len = 120000;
    char *big = malloc(len);
    memset(big, 'p', len);
    q.max_tokens = 2;
    TH_CHECK(resident_submit_text(r, &q, big, len, 1, &b) == 0);
    free(big);
    int b_queued = 0, b_first = 0;
    uint32_t a_during = 0;
    uint64_t end = th_now_ms() + 10000;
    while (!b_first && th_now_ms() < end) {
        if (resident_wait(r, &ev, 500) != 1)
            continue;
        if (ev.id == b && ev.type == RESIDENT_EVENT_QUEUED)
            b_queued = 1;
        else if (ev.id == b && ev.type == RESIDENT_EVENT_TOKENS)
            b_first = 1;
        else if (ev.id == a && ev.type == RESIDENT_EVENT_TOKENS && b_queued)
            a_during += ev.n_tokens;
        else if (ev.id == a && ev.type == RESIDENT_EVENT_DONE)
            break;
    }
    printf("prefill: stream A got %u tokens while B's 30000-token prompt was read\n", a_during);
    TH_CHECK(b_queued && b_first);
    TH_CHECK(a_during >= 58);
    resident_cancel(r, a);
    resident_close(r);
}

static int child_client(int idx)
{
    struct resident *r = th_connect_or_exit(D.sock, "e2e-child");
    struct resident_request q;
    resident_request_init(&q);
    struct result *res = calloc(1, sizeof(*res));
    int bad = 0;
    for (int k = 0; k < 10; k++) {
        char p[64];
        snprintf(p, sizeof(p), "client %d request %d", idx, k);
        q.max_tokens = 50;
        q.seed = (uint64_t)k;
        uint64_t id;
        if (resident_submit_text(r, &q, p, strlen(p), 1, &id) != 0 || collect(r, id, res) != 0 ||
            res->n != 50 || !ids_match(res, 2, p, strlen(p), (uint64_t)k) || res->finish != RESIDENT_FINISH_LENGTH)
            bad++;
    }
    free(res);
    resident_close(r);
    return bad ? 1 : 0;
}

static void test_concurrent_clients(void)
{
    enum { N = 20 };
    pid_t kids[N];
    for (int i = 0; i < N; i++) {
        kids[i] = fork();
        if (kids[i] == 0)
            _exit(child_client(i));
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    TH_CHECK(ok == N);
}

static void test_shutdown_and_reconnect(void)
{
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = D.sock;
    cp.evt_ring_bytes = 4096;
    struct resident *r;
    TH_CHECK(resident_connect(&cp, &r) == 0);
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 4000;
    uint64_t id;
    TH_CHECK(resident_submit_text(r, &q, "long", 4, 1, &id) == 0);
    usleep(50000);
    /* The request is stalled on our full ring: SIGTERM must still finish
     * within the grace period plus the drain bound. */
    uint64_t t0 = th_now_ms();
    int st = th_daemon_stop(&D, 10000);
    TH_CHECK(st == 0);
    TH_CHECK(th_now_ms() - t0 < 5000);
    /* Events published before it left are readable; then a clear error. */
    struct resident_event ev;
    int ret;
    while ((ret = resident_wait(r, &ev, 2000)) == 1)
        ;
    TH_CHECK(ret == -ECONNRESET);
    TH_CHECK(strlen(resident_last_error(r)) > 0);
    TH_CHECK(resident_submit_text(r, &q, "x", 1, 1, &id) == -ECONNRESET);
    /* Restart and reconnect the same handle. */
    TH_CHECK(th_daemon_start(&D, NULL) == 0);
    cp.socket_path = D.sock;
    resident_close(r);
    TH_CHECK(resident_connect(&cp, &r) == 0);
    q.max_tokens = 5;
    TH_CHECK(resident_submit_text(r, &q, "again", 5, 1, &id) == 0);
    struct result *res = calloc(1, sizeof(*res));
    TH_CHECK(collect(r, id, res) == 0 && res->n == 5);
    free(res);
    resident_close(r);
}

/* SIGTERM with no grace: a running request ends with DONE(shutdown), which
 * reaches a client that drains its ring late; then the session ends with a
 * message that says the daemon shut down. */
static void test_shutdown_cancels(void)
{
    struct th_daemon d2;
    const char *const opts[] = { "shutdown_grace_ms=0", NULL };
    TH_CHECK(th_daemon_start(&d2, opts) == 0);
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = d2.sock;
    cp.evt_ring_bytes = 4096;
    struct resident *r;
    TH_CHECK(resident_connect(&cp, &r) == 0);
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 4000;
    uint64_t id;
    TH_CHECK(resident_submit_text(r, &q, "cut short", 9, 1, &id) == 0);
    usleep(100000);                 /* paused on our full ring */
    kill(d2.pid, SIGTERM);
    usleep(100000);
    struct resident_event ev;
    int ret;
    uint32_t finish = 0, tokens = 0;
    while ((ret = resident_wait(r, &ev, 3000)) == 1) {
        if (ev.type == RESIDENT_EVENT_TOKENS)
            tokens += ev.n_tokens;
        if (ev.type == RESIDENT_EVENT_DONE && ev.id == id)
            finish = ev.finish;
    }
    TH_CHECK(finish == RESIDENT_FINISH_SHUTDOWN && tokens < 4000);
    TH_CHECK(ret == -ECONNRESET && strstr(resident_last_error(r), "shutting down"));
    resident_close(r);
    TH_CHECK(th_daemon_stop(&d2, 5000) == 0);   /* exited 0 after the SIGTERM above */
}

static void test_reconnect_same_path(void)
{
    struct resident *r = th_connect_or_exit(D.sock, "e2e-reconnect");
    pid_t pid = D.pid;
    kill(pid, SIGKILL);       /* daemon crash */
    waitpid(pid, NULL, 0);
    D.pid = 0;
    struct resident_event ev;
    TH_CHECK(resident_wait(r, &ev, 2000) == -ECONNRESET);
    /* Start a new daemon on the same socket path (stale socket file). */
    const char *root = getenv("RESIDENT_BUILD_ROOT");
    char exe[512];
    snprintf(exe, sizeof(exe), "%s/daemon/residentd", root);
    pid_t p = fork();
    if (p == 0) {
        execl(exe, exe, "--socket", D.sock, "--config", "/dev/null", "-o", "socket_mode=0666",
              "-o", "privileges=keep", (char *)NULL);
        _exit(127);
    }
    D.pid = p;
    int ret = -1;
    for (int i = 0; i < 200 && ret < 0; i++) {
        usleep(10000);
        ret = resident_reconnect(r);
    }
    TH_CHECK(ret == 0);
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 3;
    uint64_t id;
    TH_CHECK(resident_submit_text(r, &q, "after", 5, 1, &id) == 0);
    struct result *res = calloc(1, sizeof(*res));
    TH_CHECK(collect(r, id, res) == 0 && res->n == 3);
    free(res);
    resident_close(r);
}

int main(void)
{
    th_require_uring();
    if (th_daemon_start(&D, NULL) < 0) {
        fprintf(stderr, "cannot start residentd\n");
        return 1;
    }
    /* Warm up once so lazily allocated state is in the baseline. */
    test_basic();
    usleep(100000);
    int fds0 = th_fd_count(D.pid);
    long rss0 = th_rss_kb(D.pid);

    test_basic();
    test_many_requests();
    test_cancel();
    test_chunked_prefill();
    test_concurrent_clients();

    int fds1 = th_wait_fds(D.pid, fds0, 3000);
    long rss1 = th_rss_kb(D.pid);
    printf("daemon fds %d -> %d, RSS %ld -> %ld kB\n", fds0, fds1, rss0, rss1);
    TH_CHECK(fds1 == fds0);
    TH_CHECK(rss1 - rss0 < 16384);
    TH_CHECK(th_daemon_alive(&D));

    test_shutdown_cancels();
    test_shutdown_and_reconnect();
    test_reconnect_same_path();
    TH_CHECK(th_daemon_stop(&D, 10000) == 0);
    if (th_failures) {
        fprintf(stderr, "test-e2e: %d failures\n", th_failures);
        return 1;
    }
    printf("test-e2e: ok\n");
    return 0;
}
