/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd internals shared by the event loop (daemon/server.c) and the
 * scheduler (daemon/sched.c). Not a public API.
 *
 * Threads: everything here belongs to the event-loop thread, except the
 * compute batch (struct daemon.batch) which the worker thread owns between
 * sched posting it and the worker's completion eventfd firing.
 *
 * Errors: 0 or -errno, as everywhere in resident.
 */
#ifndef RESIDENT_DAEMON_DAEMON_H
#define RESIDENT_DAEMON_DAEMON_H

#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "daemon/config.h"
#include "daemon/gen.h"
#include "daemon/svc-notify.h"
#include "shm/region.h"
#include "shm/ring.h"
#include "shm/wire.h"

struct daemon;
struct session;
struct seq;

enum op_kind {
    OP_ACCEPT = 1,
    OP_RECV,
    OP_SEND,
    OP_BELL,        /* read of a session's doorbell eventfd */
    OP_BELL_POLL,   /* poll of the doorbell after a read saw -EAGAIN */
    OP_WAKE,        /* write of a session's wake eventfd */
    OP_WORKER,      /* read of the worker's completion eventfd */
    OP_SIGNAL,      /* read of the signalfd */
    OP_TICK,        /* periodic timeout */
};

/* Every SQE's user_data points at one of these. */
struct op {
    enum op_kind    kind;
    struct session *s;          /* NULL for daemon-wide ops */
    int             busy;       /* an SQE is in flight */
};

/* Per-uid accounting (dbus-broker style: charge before granting; the
 * rules are in daemon/quota.c). */
struct uid_acct {
    uid_t            uid;
    uint32_t         sessions;
    uint32_t         inflight;
    uint32_t         fds;
    uint32_t         underflows;    /* releases of more than was charged (bugs) */
    uint64_t         ring_bytes;
    uint64_t         prompt_tokens; /* of all in-flight requests */
    uint64_t         new_tokens;    /* max_tokens reserved by all in-flight requests */
    struct uid_acct *next;
};

#define SESSION_SEND_SLOTS 2

struct send_frame {
    uint8_t  buf[SHM_WIRE_MAX];
    uint32_t len;
    int      fds[SHM_WELCOME_NFDS];
    uint32_t n_fds;
};

enum session_state {
    S_HANDSHAKE,    /* accepted, waiting for HELLO */
    S_ACTIVE,       /* WELCOME sent, rings live */
    S_ABORTING,     /* broke the rules or stalled: requests dropped, ERROR frame on its way */
    S_CLOSING,      /* torn down, waiting for in-flight SQEs and batch items */
};

struct session {
    struct daemon      *d;
    struct session     *next, *prev;
    uint64_t            id;
    enum session_state  state;
    int                 sock;
    int                 doorbell_fd;    /* client -> daemon */
    int                 wake_fd;        /* daemon -> client */
    struct shm_region   region;
    struct shm_ring_cons req;
    struct shm_ring_prod evt;
    uint8_t            *reqbuf;         /* private copy of one request record */
    struct ucred        cred;
    struct uid_acct    *acct;
    uint32_t            charged_fds;
    uint64_t            charged_ring;
    char                name[SHM_WIRE_NAME];
    uint64_t            t_connect_us;
    uint64_t            full_since_us;  /* event ring full since, 0 = not */
    uint64_t            t_abort_us;     /* entered S_ABORTING */
    uint32_t            ops_inflight;
    uint32_t            n_in_batch;     /* its sequences inside the worker's batch */
    uint32_t            n_inflight;     /* requests not yet DONE-delivered */
    int                 close_after_send;
    int                 bye_sent;
    struct seq         *seqs;           /* this session's requests */
    struct op           recv_op, send_op, bell_op, wake_op;
    int                 wake_again;     /* a wake was wanted while one was in flight */
    uint64_t            wake_val;
    /* recvmsg state */
    uint8_t             rbuf[SHM_WIRE_MAX + 1];
    struct {
        _Alignas(struct cmsghdr) uint8_t buf[CMSG_SPACE(sizeof(int) * 4)];
    } rcmsg;
    struct msghdr       rmsg;
    struct iovec        riov;
    /* sendmsg state: a tiny FIFO, one frame in flight at a time */
    struct send_frame   sq[SESSION_SEND_SLOTS];
    uint32_t            sq_head, sq_len;
    struct {
        _Alignas(struct cmsghdr) uint8_t buf[CMSG_SPACE(sizeof(int) * SHM_WELCOME_NFDS)];
    } scmsg;
    struct msghdr       smsg;
    struct iovec        siov;
    uint64_t            bell_val;
};

struct worker {
    pthread_t        thread;
    pthread_mutex_t  lock;
    pthread_cond_t   cond;
    int              has_work;
    int              quit;
    int              efd;           /* worker -> loop completion eventfd */
    int              rc;
};

struct daemon {
    struct daemon_config  cfg;
    struct daemon_config_source cfg_src;    /* for SIGHUP reloads */
    const struct gen_ops *gen;
    void                 *gen_ctx;
    struct io_uring       ring;
    int                   listen_fd;
    int                   listen_inherited;
    int                   signal_fd;
    struct session       *sessions;
    uint32_t              n_sessions;
    uint64_t              next_session_id;
    struct uid_acct      *accts;
    struct op             accept_op, worker_op, signal_op, tick_op;
    uint64_t              worker_val;
    uint8_t               sig_buf[128];     /* one struct signalfd_siginfo */
    struct __kernel_timespec tick_ts;
    uint64_t              accept_retry_us;  /* re-arm accept after EMFILE */
    /* scheduler */
    struct seq           *run_head, *run_tail;  /* all unfinished sequences, arrival order */
    struct gen_item      *batch;
    struct seq          **batch_seqs;
    size_t                batch_n;
    int                   batch_busy;
    struct worker         worker;
    uint64_t              steps;
    /* lifecycle */
    int                   stopping;
    uint64_t              stop_deadline_us;
    int                   exit_code;
    /* systemd: READY/RELOADING/STOPPING, WATCHDOG=1 from on_tick(), and
     * the periodic STATUS= (svc-notify.h; daemon_run() initialises it) */
    struct svc_notify     notify;
    uint64_t              tokens_out;       /* sampled tokens, all sequences */
    uint64_t              status_tokens_out;    /* tokens_out at the last STATUS= */
    uint64_t              status_us;        /* when the last STATUS= went out */
};

uint64_t daemon_now_us(void);
void daemon_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/**
 * daemon_run() - set up io_uring, the socket and the worker, serve until SIGTERM
 * @d: daemon with cfg, gen and gen_ctx filled
 * @err: message buffer (names what failed and how to fix it)
 * @errlen: its size
 *
 * Return: 0 after a clean shutdown, -errno when setup or the loop failed.
 */
int daemon_run(struct daemon *d, char *err, size_t errlen);

/* server.c */
void session_close(struct session *s, const char *why);
/* End an active session for a reason the client should hear: its requests
 * are dropped now, an ERROR frame (code, why) is sent, then it is closed. */
void session_abort(struct session *s, int code, const char *why);
void session_wake_client(struct session *s);
int  session_send_error(struct session *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* quota.c */
struct uid_acct *quota_acct_get(struct daemon *d, uid_t uid);
/* 0, -EBUSY (over the uid's total now) or -E2BIG (over it alone); @msg
 * names the limit key and how to raise it. */
int  quota_new_tokens_check(const struct daemon *d, const struct uid_acct *a, uint32_t want,
                            char *msg, size_t len);
int  quota_prompt_tokens_check(const struct daemon *d, const struct uid_acct *a, uint32_t want,
                               char *msg, size_t len);
void quota_tokens_charge(struct uid_acct *a, uint32_t prompt_tokens, uint32_t new_tokens);
void quota_tokens_release(struct uid_acct *a, uint32_t prompt_tokens, uint32_t new_tokens);
/* Log a note when a per-request limit exceeds its per-uid total. */
void quota_config_warn(const struct daemon_config *c);
/* One log line per uid ("PREFIX: uid N: sessions a/b ..."), then
 * "PREFIX: accounting of N uids listed". */
void quota_log(const struct daemon *d, const char *prefix);
/* Number of uids with a non-zero counter (logged): 0 after a clean teardown. */
int  quota_check_released(const struct daemon *d);
void quota_fini(struct daemon *d);

/* sched.c */
int  sched_init(struct daemon *d);
void sched_fini(struct daemon *d);
void sched_session_drain(struct session *s);
void sched_session_flush(struct session *s);
void sched_session_drop(struct session *s, int force);
void sched_kick(struct daemon *d);
void sched_batch_done(struct daemon *d);
void sched_tick(struct daemon *d, uint64_t now);
void sched_shutdown(struct daemon *d, int hard);
uint32_t sched_running(const struct daemon *d);

#endif
