/* SPDX-License-Identifier: Apache-2.0 */
/*
 * resident-openai internals shared by http.c (libmicrohttpd side) and
 * job.c (the libresident side).
 *
 * THREADS
 *   - one libmicrohttpd polling thread per listener: parses requests,
 *     answers GETs, queues responses, feeds SSE bytes to sockets;
 *   - one runner thread per generation (job.c): owns one libresident
 *     session for the request's lifetime, submits, waits for events with
 *     resident_wait(), maps them through stream.c and wakes the HTTP side.
 * A session per generation keeps slow HTTP clients apart: a client that
 * stops reading stalls only its own event ring, so residentd pauses only
 * that sequence (its backpressure rule), never the others. Sessions are
 * pooled between requests.
 *
 * The HTTP connection waits for the runner with MHD_suspend_connection();
 * the runner calls MHD_resume_connection() under the job lock when it has
 * something new. Suspended connections are not watched by libmicrohttpd,
 * so the runner also polls the client socket for POLLRDHUP: a client that
 * hangs up is noticed while its request is still queued or prefilling,
 * and the generation is cancelled in residentd at once (resident_cancel).
 */
#ifndef RESIDENT_CLIENT_OPENAI_GATEWAY_H
#define RESIDENT_CLIENT_OPENAI_GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "client/openai/metrics.h"
#include "client/openai/request.h"
#include "client/openai/stream.h"

struct MHD_Connection;
struct resident;

#define OAI_POOL_MAX 64

struct oai_gateway {
    const char    *daemon_socket;   /* NULL = libresident's default */
    char           model_name[256];
    char          *api_key;         /* NULL = no auth on TCP */
    size_t         api_key_len;
    size_t         max_body;
    unsigned       max_concurrent;
    uint32_t       data_bytes;      /* session data area: holds one chat JSON */
    struct oai_defaults defaults;
    bool           has_defaults;
    long long      started;         /* unix seconds, /v1/models "created" */
    atomic_uint    active;          /* admitted generations */
    atomic_uint    runners;         /* runner threads alive */
    atomic_bool    stopping;
    pthread_mutex_t lock;           /* pool, job list, generator name */
    struct resident *idle[OAI_POOL_MAX];
    unsigned       n_idle;
    struct oai_job *jobs;           /* live jobs (for shutdown) */
    char           generator[64];   /* "" until a session told us */
    int            synthetic;
};

struct oai_job {
    pthread_mutex_t lock;
    pthread_cond_t  cond;           /* SSE drained below the low mark / cancel */
    int             refs;           /* connection, runner, SSE response */
    struct oai_gateway *gw;
    struct oai_job *next, *prev;    /* gw->jobs */
    struct MHD_Connection *conn;    /* NULL once the connection completed */
    int             conn_fd;
    bool            suspended;
    bool            cancel;         /* client gone / shutdown: cancel in residentd */
    bool            started;        /* a token arrived: the 200 can go out */
    bool            done;
    bool            failed;         /* err holds the HTTP error (nothing sent yet) */
    bool            running;        /* counted in the running gauge */
    bool            released;       /* admission slot and gauge given back */
    enum oai_endpoint ep;
    struct oai_error err;
    struct oai_request req;
    struct oai_stream st;
    struct oai_finish fin;
    char            fin_msg[256];
    uint64_t        t0_ns;
};

/* SSE flow control: the runner stops reading residentd's events above
 * HIGH unsent bytes and resumes below LOW. */
#define OAI_SSE_HIGH ((size_t)1 << 20)
#define OAI_SSE_LOW  ((size_t)256 << 10)

uint64_t oai_now_ns(void);

/* job.c */
int oai_job_start(struct oai_job *j);           /* spawns the runner; takes a ref */
void oai_job_unref(struct oai_job *j);
void oai_job_wake(struct oai_job *j);           /* call with j->lock held */
int oai_gateway_probe(struct oai_gateway *gw, char *why, size_t whylen);
/* Cancel everything; -EBUSY when runners are still busy after timeout_ms. */
int oai_gateway_shutdown(struct oai_gateway *gw, int timeout_ms);

/* http.c */
struct MHD_Daemon;
struct oai_listener {
    struct oai_gateway *gw;
    bool               need_auth;
    struct MHD_Daemon *mhd;
};
int oai_http_start(struct oai_listener *l, int listen_fd);
void oai_http_quiesce(struct oai_listener *l);
/* Wait (at most timeout_ms) until no connection is open, so queued
 * responses reach their clients before oai_http_stop(). */
void oai_http_drain(struct oai_listener *l, int timeout_ms);
void oai_http_stop(struct oai_listener *l);

#endif
