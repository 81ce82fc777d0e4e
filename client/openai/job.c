/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The runner side of a generation: session pool, submit, event loop,
 * cancellation. See gateway.h for the threading model.
 */
#include <errno.h>
#include <microhttpd.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/openai/gateway.h"
#include "client/resident.h"

/* resident_wait() timeout: the longest a cancel or a client hang-up waits
 * before the runner looks at it, when no events arrive. */
#define RUNNER_TICK_MS    20
/* After resident_cancel(), how long to wait for the DONE before giving the
 * session up (resident_close() then cancels whatever is left). */
#define CANCEL_GRACE_NS   (5ull * 1000000000ull)

uint64_t oai_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- session pool ---- */

static void learn_generator(struct oai_gateway *gw, struct resident *r)
{
    pthread_mutex_lock(&gw->lock);
    snprintf(gw->generator, sizeof(gw->generator), "%s", resident_generator(r));
    gw->synthetic = resident_is_synthetic(r);
    pthread_mutex_unlock(&gw->lock);
}

/* An idle pooled session, checked alive, or a new one. */
static int session_get(struct oai_gateway *gw, struct resident **out, char *why, size_t whylen)
{
    for (;;) {
        struct resident *r = NULL;
        pthread_mutex_lock(&gw->lock);
        if (gw->n_idle)
            r = gw->idle[--gw->n_idle];
        pthread_mutex_unlock(&gw->lock);
        if (!r)
            break;
        /* resident_poll() notices a session residentd closed while it sat
         * idle (restart, shutdown); an idle session has no events. */
        struct resident_event ev;
        int rc;
        while ((rc = resident_poll(r, &ev)) == 1)
            ;
        if (rc == 0) {
            *out = r;
            return 0;
        }
        resident_close(r);
        oai_metrics_sessions(-1);
    }
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = gw->daemon_socket;
    cp.client_name = "resident-openai";
    cp.data_bytes = gw->data_bytes;
    cp.timeout_ms = 3000;
    struct resident *r;
    int rc = resident_connect(&cp, &r);
    if (rc < 0) {
        snprintf(why, whylen, "residentd is not available: %s", resident_last_error(NULL));
        return rc;
    }
    oai_metrics_sessions(+1);
    learn_generator(gw, r);
    *out = r;
    return 0;
}

static void session_put(struct oai_gateway *gw, struct resident *r, bool healthy)
{
    if (!r)
        return;
    pthread_mutex_lock(&gw->lock);
    if (healthy && !atomic_load(&gw->stopping) && gw->n_idle < OAI_POOL_MAX && gw->n_idle < gw->max_concurrent) {
        gw->idle[gw->n_idle++] = r;
        r = NULL;
    }
    pthread_mutex_unlock(&gw->lock);
    if (r) {
        resident_close(r);
        oai_metrics_sessions(-1);
    }
}

int oai_gateway_probe(struct oai_gateway *gw, char *why, size_t whylen)
{
    struct resident *r;
    int rc = session_get(gw, &r, why, whylen);
    if (rc < 0)
        return rc;
    session_put(gw, r, true);
    return 0;
}

/* ---- jobs ---- */

void oai_job_unref(struct oai_job *j)
{
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    if (left)
        return;
    struct oai_gateway *gw = j->gw;
    pthread_mutex_lock(&gw->lock);
    if (j->prev)
        j->prev->next = j->next;
    else if (gw->jobs == j)
        gw->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    pthread_mutex_unlock(&gw->lock);
    oai_request_free(&j->req);
    oai_stream_free(&j->st);
    pthread_cond_destroy(&j->cond);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

void oai_job_wake(struct oai_job *j)
{
    if (j->suspended && j->conn) {
        j->suspended = false;
        MHD_resume_connection(j->conn);
    }
    pthread_cond_broadcast(&j->cond);
}

/* The generation is over: give back its admission slot and its place in
 * the running gauge before the client can see the answer, so a client
 * that sends its next request at once is not refused with 429 (and
 * /metrics read after a response is exact). Called with j->lock held. */
static void job_release_locked(struct oai_job *j)
{
    if (j->released)
        return;
    j->released = true;
    atomic_fetch_sub(&j->gw->active, 1);
    if (j->running)
        oai_metrics_running(-1);
}

/* A failure before anything was sent: the handler answers with err. */
static void job_fail(struct oai_job *j, const struct oai_error *e)
{
    pthread_mutex_lock(&j->lock);
    j->err = *e;
    j->failed = true;
    job_release_locked(j);
    oai_job_wake(j);
    pthread_mutex_unlock(&j->lock);
}

static int submit(struct resident *r, struct oai_job *j, uint64_t *id)
{
    const struct oai_request *q = &j->req;
    if (q->forced_tool && !(resident_features(r) & RESIDENT_FEATURE_TOOL_CHOICE))
        return -EOPNOTSUPP;     /* answered as a 400 on tool_choice (submit_error) */
    if (q->api == OAI_API_CHAT)
        return resident_submit_chat(r, &q->params, q->payload, q->payload_len, id);
    if (q->prompt_ids)
        return resident_submit_ids(r, &q->params, q->prompt_ids, q->n_prompt_ids, id);
    return resident_submit_text(r, &q->params, q->payload, q->payload_len, 1, id);
}

static void submit_error(struct oai_job *j, int rc, const char *msg)
{
    struct oai_error e;
    if (rc == -EOPNOTSUPP)
        oai_error_invalid(&e, "tool_choice", "tool_choice \"required\" and named need constrained decoding, which "
                          "residentd's generator does not offer (it does not advertise SHM_WELCOME_F_TOOL_CHOICE, "
                          "e.g. the null generator); use \"auto\"");
    else if (rc == -E2BIG)
        oai_error_set(&e, 413, "invalid_request_error", NULL, NULL,
                      "the request does not fit residentd's session buffers: %s", msg);
    else if (rc == -EINVAL)
        oai_error_invalid(&e, NULL, "residentd refused the parameters: %s", msg);
    else
        oai_error_set(&e, 503, "server_error", "service_unavailable", NULL, "residentd is not available: %s", msg);
    job_fail(j, &e);
}

/* Is the HTTP client gone? Called with j->lock held, so the connection
 * (and its fd) cannot be completed and closed under us. */
static bool client_gone(struct oai_job *j)
{
    if (j->cancel)
        return true;
    if (!j->conn || j->conn_fd < 0)
        return false;
    struct pollfd p = { .fd = j->conn_fd, .events = POLLRDHUP };
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
        j->cancel = true;
        oai_metrics_disconnect();
        return true;
    }
    return false;
}

static enum oai_outcome outcome_of(const struct oai_job *j)
{
    struct oai_error e;
    if (j->fin.finish == RESIDENT_FINISH_CANCELLED)
        return OAI_OUT_CANCELLED;
    if (j->st.proto_err[0] || oai_finish_failed(&j->fin, j->req.api, &e))
        return OAI_OUT_ERROR;
    if (j->fin.finish == RESIDENT_FINISH_LENGTH)
        return OAI_OUT_LENGTH;
    return j->st.n_calls ? OAI_OUT_TOOL_CALLS : OAI_OUT_STOP;
}

/* The generation's event loop. Returns whether the session is reusable. */
static bool runner_loop(struct oai_job *j, struct resident *r, uint64_t id)
{
    bool cancel_sent = false, got_token = false, waiting = true;
    uint64_t cancel_at = 0, last_ns = 0, last_check = 0;
    bool healthy = true;
    oai_metrics_waiting(+1);
    for (;;) {
        struct resident_event ev;
        int rc = resident_wait(r, &ev, RUNNER_TICK_MS);
        uint64_t now = oai_now_ns();
        if (rc < 0) {
            /* residentd went away (or broke the protocol) mid-request. */
            char msg[256];
            snprintf(msg, sizeof(msg), "residentd ended the session: %s", resident_last_error(r));
            pthread_mutex_lock(&j->lock);
            j->fin = (struct oai_finish){ .finish = RESIDENT_FINISH_ERROR, .error = -ESHUTDOWN, .message = j->fin_msg };
            snprintf(j->fin_msg, sizeof(j->fin_msg), "%s", msg);
            if (j->req.stream)
                oai_stream_finish(&j->st, &j->fin);
            j->done = true;
            /* Counted before the release, so /metrics never shows a
             * generation neither running nor finished. */
            oai_metrics_finished(OAI_OUT_ERROR);
            if (waiting)
                oai_metrics_waiting(-1);
            waiting = false;
            job_release_locked(j);
            oai_job_wake(j);
            pthread_mutex_unlock(&j->lock);
            healthy = false;
            break;
        }
        if (rc == 1 && ev.id == id) {
            if (ev.type == RESIDENT_EVENT_QUEUED) {
                /* Not a commitment: residentd also queues requests it then
                 * rejects (DONE with an error), and those must get their
                 * HTTP status. The response starts with the first token. */
            } else if (ev.type == RESIDENT_EVENT_TOKENS) {
                if (!got_token) {
                    got_token = true;
                    waiting = false;
                    oai_metrics_waiting(-1);
                    oai_metrics_ttft((double)(now - j->t0_ns) / 1e9);
                } else if (ev.n_tokens) {
                    oai_metrics_itl((double)(now - last_ns) / 1e9, ev.n_tokens);
                }
                if (ev.n_tokens)
                    last_ns = now;
                pthread_mutex_lock(&j->lock);
                j->started = true;
                int sr = oai_stream_tokens(&j->st, ev.channel, ev.text, ev.text_len);
                if (sr < 0 && !j->st.proto_err[0])
                    snprintf(j->st.proto_err, sizeof(j->st.proto_err), "gateway: %s", strerror(-sr));
                if (sr < 0)
                    j->cancel = true;       /* stop generating what cannot be delivered */
                if (j->req.stream)
                    oai_job_wake(j);
                /* Flow control: leave residentd's events in the ring while
                 * the client is behind; residentd pauses the sequence. */
                while (j->req.stream && j->st.out.len > OAI_SSE_HIGH && j->conn && !j->cancel &&
                       !atomic_load(&j->gw->stopping)) {
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    ts.tv_nsec += 50 * 1000000L;
                    if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                    }
                    pthread_cond_timedwait(&j->cond, &j->lock, &ts);
                    client_gone(j);
                }
                pthread_mutex_unlock(&j->lock);
            } else if (ev.type == RESIDENT_EVENT_DONE) {
                pthread_mutex_lock(&j->lock);
                snprintf(j->fin_msg, sizeof(j->fin_msg), "%s", ev.message ? ev.message : "");
                j->fin = (struct oai_finish){ .finish = ev.finish, .error = ev.error, .message = j->fin_msg,
                                              .prompt_tokens = ev.prompt_tokens,
                                              .completion_tokens = ev.completion_tokens,
                                              .cached_tokens = ev.cached_tokens };
                if (j->req.stream)
                    oai_stream_finish(&j->st, &j->fin);
                j->done = true;
                oai_metrics_finished(outcome_of(j));
                if (waiting)
                    oai_metrics_waiting(-1);
                waiting = false;
                oai_metrics_tokens(ev.prompt_tokens, ev.completion_tokens);
                oai_metrics_prefix_cache(ev.cached_tokens);
                oai_metrics_e2e((double)(now - j->t0_ns) / 1e9);
                job_release_locked(j);
                oai_job_wake(j);
                pthread_mutex_unlock(&j->lock);
                break;
            }
        }
        if (rc == 0 || now - last_check > 10ull * 1000000ull) {
            last_check = now;
            pthread_mutex_lock(&j->lock);
            bool gone = client_gone(j) || atomic_load(&j->gw->stopping);
            pthread_mutex_unlock(&j->lock);
            if (gone && !cancel_sent) {
                cancel_sent = true;
                cancel_at = now;
                if (resident_cancel(r, id) < 0) {
                    healthy = false;
                    break;
                }
            }
            if (cancel_sent && now - cancel_at > CANCEL_GRACE_NS) {
                healthy = false;        /* resident_close() cancels the rest */
                break;
            }
        }
    }
    if (waiting)
        oai_metrics_waiting(-1);
    return healthy;
}

static void *runner_main(void *arg)
{
    struct oai_job *j = arg;
    struct oai_gateway *gw = j->gw;
    char why[400];
    struct resident *r = NULL;
    uint64_t id = 0;
    bool healthy = false;
    int rc = session_get(gw, &r, why, sizeof(why));
    if (rc == 0) {
        /* The generator is known for sure only now (first session). */
        pthread_mutex_lock(&j->lock);
        snprintf(j->st.fingerprint, sizeof(j->st.fingerprint), "resident-%s", resident_generator(r));
        pthread_mutex_unlock(&j->lock);
        rc = submit(r, j, &id);
        if (rc == -ECONNRESET) {
            /* The pooled session died between the check and the submit. */
            resident_close(r);
            oai_metrics_sessions(-1);
            r = NULL;
            rc = session_get(gw, &r, why, sizeof(why));
            if (rc == 0)
                rc = submit(r, j, &id);
        }
    }
    if (rc < 0 && r) {
        submit_error(j, rc, resident_last_error(r));
        healthy = rc != -ECONNRESET;
    } else if (rc < 0) {
        struct oai_error e;
        oai_error_set(&e, 503, "server_error", "service_unavailable", NULL, "%s", why);
        job_fail(j, &e);
    }
    if (rc == 0) {
        pthread_mutex_lock(&j->lock);
        j->running = true;
        oai_metrics_running(+1);
        pthread_mutex_unlock(&j->lock);
        healthy = runner_loop(j, r, id);
        /* The loop gave up without a DONE (the cancel could not be sent or
         * was not answered in time): end the response anyway, so no
         * connection stays suspended. */
        pthread_mutex_lock(&j->lock);
        if (!j->done) {
            snprintf(j->fin_msg, sizeof(j->fin_msg), "residentd did not end the cancelled request in time");
            j->fin = (struct oai_finish){ .finish = RESIDENT_FINISH_ERROR, .error = -ETIMEDOUT, .message = j->fin_msg };
            if (j->req.stream)
                oai_stream_finish(&j->st, &j->fin);
            j->done = true;
            oai_metrics_finished(OAI_OUT_ERROR);
            job_release_locked(j);
            oai_job_wake(j);
            pthread_mutex_unlock(&j->lock);
        } else {
            pthread_mutex_unlock(&j->lock);
        }
    }
    pthread_mutex_lock(&j->lock);
    job_release_locked(j);
    pthread_mutex_unlock(&j->lock);
    session_put(gw, r, healthy);
    oai_job_unref(j);
    atomic_fetch_sub(&gw->runners, 1);
    return NULL;
}

int oai_job_start(struct oai_job *j)
{
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 256 * 1024);
    /* The runner must not take SIGTERM/SIGINT: main() sigwaits for them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_mutex_lock(&j->lock);
    j->refs++;
    pthread_mutex_unlock(&j->lock);
    struct oai_gateway *gw = j->gw;
    pthread_mutex_lock(&gw->lock);
    j->next = gw->jobs;
    if (gw->jobs)
        gw->jobs->prev = j;
    gw->jobs = j;
    pthread_mutex_unlock(&gw->lock);
    pthread_t t;
    atomic_fetch_add(&gw->runners, 1);
    int rc = pthread_create(&t, &a, runner_main, j);
    if (rc)
        atomic_fetch_sub(&gw->runners, 1);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    if (rc) {
        pthread_mutex_lock(&j->lock);
        j->refs--;
        pthread_mutex_unlock(&j->lock);
        return -rc;
    }
    return 0;
}

int oai_gateway_shutdown(struct oai_gateway *gw, int timeout_ms)
{
    atomic_store(&gw->stopping, true);
    /* Runners see `stopping` within one tick, cancel in residentd and wake
     * their (suspended) connections with the end of the stream. */
    uint64_t end = oai_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (atomic_load(&gw->runners) && oai_now_ns() < end) {
        struct timespec ts = { 0, 10 * 1000000L };
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&gw->lock);
    while (gw->n_idle) {
        resident_close(gw->idle[--gw->n_idle]);
        oai_metrics_sessions(-1);
    }
    pthread_mutex_unlock(&gw->lock);
    return atomic_load(&gw->runners) ? -EBUSY : 0;
}
