/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Soak: N client threads x M requests each, several in flight per client,
 * random cancels at random times, random token budgets. Every event is
 * checked against the null generator's formula, so any lost, duplicated
 * or reordered token (or a second DONE, or a missing one) is counted.
 * All counts must be zero, and the daemon must end with the fds it began
 * with, although hostile sessions churn beside the good ones the whole
 * time. Bounded: gives up after 50 s.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/resident.h"
#include "daemon/gen.h"
#include "tests/integration/harness.h"

#define N_CLIENTS   16
#define M_REQUESTS  400
#define IN_FLIGHT   6

static struct th_daemon D;

struct req_state {
    uint64_t id;
    uint64_t hash;
    uint64_t seed;
    uint32_t max_tokens;
    uint32_t got;
    int      queued, done, cancelled;
};

struct client_stats {
    int      index;
    uint64_t tokens, cancels, lost, dup, reorder, bad_finish, errors;
};

static void *client_main(void *arg)
{
    struct client_stats *st = arg;
    unsigned rnd = 0x9e3779b9u * (unsigned)(st->index + 1);
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = D.sock;
    cp.client_name = "soak";
    cp.evt_ring_bytes = (st->index % 2) ? 4096 : 0;  /* half of them feel backpressure */
    struct resident *r;
    if (resident_connect(&cp, &r) < 0) {
        st->errors++;
        return NULL;
    }
    struct req_state *reqs = calloc(M_REQUESTS, sizeof(*reqs));
    int submitted = 0, finished = 0, inflight = 0;
    uint64_t end = th_now_ms() + 50000;
    while (finished < M_REQUESTS && th_now_ms() < end) {
        while (submitted < M_REQUESTS && inflight < IN_FLIGHT) {
            struct req_state *q = &reqs[submitted];
            char p[64];
            snprintf(p, sizeof(p), "soak %d/%d", st->index, submitted);
            struct resident_request rq;
            resident_request_init(&rq);
            rq.id = (uint64_t)submitted + 1;
            rq.seed = rand_r(&rnd);
            rq.max_tokens = 1 + rand_r(&rnd) % 300;
            int ret = resident_submit_text(r, &rq, p, strlen(p), 1, NULL);
            if (ret == -EAGAIN)
                break;
            if (ret < 0) {
                st->errors++;
                goto out;
            }
            q->id = rq.id;
            q->seed = rq.seed;
            q->max_tokens = rq.max_tokens;
            q->hash = gen_null_prompt_hash(2, (const uint8_t *)p, strlen(p));
            submitted++;
            inflight++;
        }
        /* Cancel a random in-flight request now and then. */
        if (submitted && rand_r(&rnd) % 8 == 0) {
            struct req_state *q = &reqs[rand_r(&rnd) % (unsigned)submitted];
            if (!q->done && !q->cancelled) {
                if (resident_cancel(r, q->id) == 0) {
                    q->cancelled = 1;
                    st->cancels++;
                }
            }
        }
        /* Occasionally stall, so rings fill and sequences pause. */
        if (rand_r(&rnd) % 64 == 0)
            usleep(2000);
        struct resident_event ev;
        int ret = resident_wait(r, &ev, 200);
        if (ret < 0) {
            st->errors++;
            break;
        }
        if (ret == 0)
            continue;
        if (ev.id < 1 || ev.id > (uint64_t)submitted) {
            st->lost++;     /* an event for a request we never made */
            continue;
        }
        struct req_state *q = &reqs[ev.id - 1];
        if (q->done) {
            st->dup++;      /* anything after DONE */
            continue;
        }
        switch (ev.type) {
        case RESIDENT_EVENT_QUEUED:
            if (q->queued || q->got)
                st->reorder++;
            q->queued = 1;
            break;
        case RESIDENT_EVENT_TOKENS:
            if (!q->queued)
                st->reorder++;
            for (uint32_t i = 0; i < ev.n_tokens; i++) {
                if (ev.tokens[i] != gen_null_token(q->hash, q->seed, q->got))
                    st->reorder++;
                q->got++;
            }
            st->tokens += ev.n_tokens;
            break;
        case RESIDENT_EVENT_DONE:
            if (!q->queued)
                st->reorder++;
            q->done = 1;
            finished++;
            inflight--;
            if (ev.completion_tokens != q->got)
                st->lost++;
            if (ev.finish == RESIDENT_FINISH_LENGTH) {
                if (q->got != q->max_tokens)
                    st->lost++;
            } else if (!(ev.finish == RESIDENT_FINISH_CANCELLED && q->cancelled)) {
                st->bad_finish++;
            }
            break;
        default:
            st->errors++;
        }
    }
    if (finished != M_REQUESTS)
        st->lost += (uint64_t)(M_REQUESTS - finished);
out:
    free(reqs);
    resident_close(r);
    return NULL;
}

/* Misbehaving sessions churning beside the soak: forged tails, garbage
 * frames, clients that vanish mid-request. The good clients must not
 * notice. */
static _Atomic int hostile_stop;
static _Atomic int hostile_rounds;

static void *hostile_main(void *arg)
{
    (void)arg;
    unsigned rnd = 12345;
    while (!atomic_load(&hostile_stop)) {
        struct th_raw r;
        if (th_raw_open(D.sock, &r, 4096, 0) < 0)
            continue;
        switch (rand_r(&rnd) % 3) {
        case 0:
            atomic_store(&shm_region_req_ctl(&r.region)->tail.v, (uint64_t)rand_r(&rnd) << 20);
            th_raw_ring(&r);
            break;
        case 1: {
            uint8_t junk[64];
            for (size_t i = 0; i < sizeof(junk); i++)
                junk[i] = (uint8_t)rand_r(&rnd);
            th_send_raw(r.sock, junk, sizeof(junk), NULL, 0);
            break;
        }
        default:
            th_raw_submit(&r, 1, "vanish", 4000);
            break;
        }
        usleep(2000);
        th_raw_close(&r);
        atomic_fetch_add(&hostile_rounds, 1);
    }
    return NULL;
}

int main(void)
{
    th_require_uring();
    const char *const opts[] = { "max_inflight_per_uid=256", "max_sessions_per_uid=64", NULL };
    if (th_daemon_start(&D, opts) < 0)
        return 1;
    usleep(100000);     /* let the readiness probe's session be reaped */
    int fds0 = th_fd_count(D.pid);
    uint64_t t0 = th_now_ms();
    pthread_t th[N_CLIENTS];
    struct client_stats st[N_CLIENTS];
    memset(st, 0, sizeof(st));
    for (int i = 0; i < N_CLIENTS; i++) {
        st[i].index = i;
        pthread_create(&th[i], NULL, client_main, &st[i]);
    }
    pthread_t hostile;
    pthread_create(&hostile, NULL, hostile_main, NULL);
    struct client_stats sum = { 0 };
    for (int i = 0; i < N_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        sum.tokens += st[i].tokens;
        sum.cancels += st[i].cancels;
        sum.lost += st[i].lost;
        sum.dup += st[i].dup;
        sum.reorder += st[i].reorder;
        sum.bad_finish += st[i].bad_finish;
        sum.errors += st[i].errors;
    }
    atomic_store(&hostile_stop, 1);
    pthread_join(hostile, NULL);
    uint64_t ms = th_now_ms() - t0;
    printf("soak: %d hostile sessions churned alongside\n", atomic_load(&hostile_rounds));
    TH_CHECK(atomic_load(&hostile_rounds) > 0);
    printf("soak: %d clients x %d requests in %llu ms: %llu tokens, %llu cancels; lost %llu, duplicated %llu, "
           "reordered %llu, bad finish %llu, errors %llu\n", N_CLIENTS, M_REQUESTS, (unsigned long long)ms,
           (unsigned long long)sum.tokens, (unsigned long long)sum.cancels, (unsigned long long)sum.lost,
           (unsigned long long)sum.dup, (unsigned long long)sum.reorder, (unsigned long long)sum.bad_finish,
           (unsigned long long)sum.errors);
    TH_CHECK(sum.lost == 0 && sum.dup == 0 && sum.reorder == 0 && sum.bad_finish == 0 && sum.errors == 0);
    TH_CHECK(sum.tokens > 0 && sum.cancels > 0);
    int fds1 = th_wait_fds(D.pid, fds0, 3000);
    TH_CHECK(fds1 == fds0);
    TH_CHECK(th_daemon_stop(&D, 10000) == 0);
    if (th_failures) {
        fprintf(stderr, "test-soak: %d failures\n", th_failures);
        return 1;
    }
    printf("test-soak: ok\n");
    return 0;
}
