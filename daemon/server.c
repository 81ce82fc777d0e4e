/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd's event loop: one io_uring, one thread, no epoll.
 *
 * RING SETUP
 * IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL|CQSIZE, falling back
 * to COOP_TASKRUN and then to no flags when the kernel says -EINVAL. The
 * ring starts R_DISABLED; we register restrictions that allow exactly the
 * opcodes below and no SQE flags, then enable it. A kernel without
 * io_uring (or with kernel.io_uring_disabled / a seccomp filter) fails
 * startup with a message that says how to fix it.
 *
 *   ACCEPT (multishot)  listening socket
 *   RECVMSG             one per session, re-armed per frame
 *   SENDMSG             one frame in flight per session (WELCOME/ERROR/BYE)
 *   READ / POLL_ADD     session doorbell eventfds, worker eventfd, signalfd
 *   WRITE               session wake eventfds
 *   TIMEOUT             50 ms tick: deadlines, slow clients, watchdog
 *   ASYNC_CANCEL        teardown
 *
 * NEVER BLOCK ON A CLIENT
 * Every fd a client can touch is only ever used through io_uring: if the
 * client drains our doorbell itself, the READ simply stays pending; if it
 * sets O_NONBLOCK on the shared eventfd, the READ completes with -EAGAIN
 * and we fall back to POLL_ADD; if it saturates its wake eventfd, our WRITE
 * waits inside the kernel, not in this thread. Sockets are ours alone.
 *
 * FDS FROM CLIENTS
 * The protocol never carries fds from clients, so the per-uid quota for
 * received fds is zero: the control buffer has room for 4, more make the
 * kernel set MSG_CTRUNC, and any received fd is closed immediately. Either
 * way the client is disconnected (dbus-broker's rule: a truncated control
 * message is a request we cannot honour).
 *
 * SESSION TEARDOWN
 * session_close() shuts the socket down, cancels the session's SQEs,
 * drops its requests and marks it S_CLOSING. Memory is freed only when
 * the last SQE that points at it has completed and the worker no longer
 * holds any of its sequences, so no completion ever touches freed memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "daemon/svc-memlock.h"

#define TICK_MS 50

uint64_t daemon_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void daemon_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("residentd: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- SQE helpers ---- */

static struct io_uring_sqe *get_sqe(struct daemon *d)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&d->ring);
    if (!sqe) {
        io_uring_submit(&d->ring);
        sqe = io_uring_get_sqe(&d->ring);
    }
    return sqe;
}

static int op_start(struct daemon *d, struct op *op, struct io_uring_sqe *sqe)
{
    io_uring_sqe_set_data(sqe, op);
    op->busy = 1;
    if (op->s)
        op->s->ops_inflight++;
    (void)d;
    return 0;
}

static int arm_accept(struct daemon *d)
{
    struct io_uring_sqe *sqe = get_sqe(d);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_multishot_accept(sqe, d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    return op_start(d, &d->accept_op, sqe);
}

static int arm_recv(struct session *s)
{
    struct io_uring_sqe *sqe = get_sqe(s->d);
    if (!sqe)
        return -EBUSY;
    memset(&s->rmsg, 0, sizeof(s->rmsg));
    s->riov.iov_base = s->rbuf;
    s->riov.iov_len = sizeof(s->rbuf);
    s->rmsg.msg_iov = &s->riov;
    s->rmsg.msg_iovlen = 1;
    s->rmsg.msg_control = s->rcmsg.buf;
    s->rmsg.msg_controllen = sizeof(s->rcmsg.buf);
    io_uring_prep_recvmsg(sqe, s->sock, &s->rmsg, MSG_CMSG_CLOEXEC);
    return op_start(s->d, &s->recv_op, sqe);
}

static int arm_bell(struct session *s, int poll)
{
    struct io_uring_sqe *sqe = get_sqe(s->d);
    if (!sqe)
        return -EBUSY;
    if (poll) {
        io_uring_prep_poll_add(sqe, s->doorbell_fd, POLLIN);
        s->bell_op.kind = OP_BELL_POLL;
    } else {
        io_uring_prep_read(sqe, s->doorbell_fd, &s->bell_val, sizeof(s->bell_val), 0);
        s->bell_op.kind = OP_BELL;
    }
    return op_start(s->d, &s->bell_op, sqe);
}

static int arm_send(struct session *s)
{
    if (s->send_op.busy || !s->sq_len)
        return 0;
    struct io_uring_sqe *sqe = get_sqe(s->d);
    if (!sqe)
        return -EBUSY;
    struct send_frame *f = &s->sq[s->sq_head];
    memset(&s->smsg, 0, sizeof(s->smsg));
    s->siov.iov_base = f->buf;
    s->siov.iov_len = f->len;
    s->smsg.msg_iov = &s->siov;
    s->smsg.msg_iovlen = 1;
    if (f->n_fds) {
        memset(s->scmsg.buf, 0, sizeof(s->scmsg.buf));
        s->smsg.msg_control = s->scmsg.buf;
        s->smsg.msg_controllen = CMSG_SPACE(sizeof(int) * f->n_fds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&s->smsg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * f->n_fds);
        memcpy(CMSG_DATA(cm), f->fds, sizeof(int) * f->n_fds);
    }
    io_uring_prep_sendmsg(sqe, s->sock, &s->smsg, MSG_NOSIGNAL);
    return op_start(s->d, &s->send_op, sqe);
}

static int arm_read(struct daemon *d, struct op *op, int fd, void *buf, unsigned len)
{
    struct io_uring_sqe *sqe = get_sqe(d);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, 0);
    return op_start(d, op, sqe);
}

static int arm_tick(struct daemon *d)
{
    struct io_uring_sqe *sqe = get_sqe(d);
    if (!sqe)
        return -EBUSY;
    d->tick_ts.tv_sec = 0;
    d->tick_ts.tv_nsec = TICK_MS * 1000000ll;
    io_uring_prep_timeout(sqe, &d->tick_ts, 0, 0);
    return op_start(d, &d->tick_op, sqe);
}

static void cancel_op(struct daemon *d, struct op *op)
{
    if (!op->busy)
        return;
    struct io_uring_sqe *sqe = get_sqe(d);
    if (!sqe)
        return;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
    io_uring_sqe_set_data(sqe, NULL);   /* its completion is ignored */
}

static int session_queue(struct session *s, const void *buf, uint32_t len, const int *fds, uint32_t n_fds);

/* ---- policy ---- */

static int policy_allows(const struct daemon *d, int sock, const struct ucred *cr)
{
    const struct daemon_config *c = &d->cfg;
    if (cr->uid == geteuid())
        return 1;
    for (size_t i = 0; i < c->n_allow_uids; i++)
        if (c->allow_uids[i] == cr->uid)
            return 1;
    if (!c->n_allow_gids)
        return 0;
    /* SO_PEERCRED carries only the primary gid; SO_PEERGROUPS (Linux 4.13)
     * the supplementary groups the peer had at connect(). A peer in more
     * groups than fit gets ERANGE with the size needed. */
    gid_t stack_groups[256], *groups = stack_groups;
    socklen_t gl = sizeof(stack_groups);
    size_t ng = 0;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) == 0) {
        ng = gl / sizeof(gid_t);
    } else if (errno == ERANGE && gl > sizeof(stack_groups) && (groups = malloc(gl)) != NULL) {
        if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) == 0)
            ng = gl / sizeof(gid_t);
    } else {
        groups = stack_groups;
    }
    int ok = 0;
    for (size_t i = 0; !ok && i < c->n_allow_gids; i++) {
        if (c->allow_gids[i] == cr->gid)
            ok = 1;
        for (size_t k = 0; !ok && k < ng; k++)
            if (groups[k] == c->allow_gids[i])
                ok = 1;
    }
    if (groups != stack_groups)
        free(groups);
    return ok;
}

/* ---- sessions ---- */

static void session_free(struct session *s)
{
    struct daemon *d = s->d;
    if (s->next)
        s->next->prev = s->prev;
    if (s->prev)
        s->prev->next = s->next;
    else
        d->sessions = s->next;
    d->n_sessions--;
    for (uint32_t i = 0; i < s->sq_len; i++) {
        struct send_frame *f = &s->sq[(s->sq_head + i) % SESSION_SEND_SLOTS];
        for (uint32_t k = 0; k < f->n_fds; k++)
            if (f->fds[k] != s->doorbell_fd && f->fds[k] != s->wake_fd)
                close(f->fds[k]);
    }
    if (s->sock >= 0)
        close(s->sock);
    if (s->doorbell_fd >= 0)
        close(s->doorbell_fd);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    shm_region_destroy(&s->region);
    if (s->acct) {
        s->acct->sessions--;
        s->acct->fds -= s->charged_fds;
        s->acct->ring_bytes -= s->charged_ring;
    }
    free(s->reqbuf);
    free(s);
}

/* Free closed sessions whose last SQE completed and whose sequences left
 * the worker. Runs after each batch of completions, never inside a
 * handler, so no caller holds a pointer to a freed session. */
static void sessions_reap(struct daemon *d)
{
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        if (s->state == S_CLOSING && s->ops_inflight == 0 && s->n_in_batch == 0)
            session_free(s);
    }
}

void session_close(struct session *s, const char *why)
{
    if (s->state == S_CLOSING)
        return;
    struct daemon *d = s->d;
    daemon_log("session %llu (uid %u pid %d%s%s): closed: %s", (unsigned long long)s->id,
               (unsigned)s->cred.uid, (int)s->cred.pid, s->name[0] ? " " : "", s->name, why);
    s->state = S_CLOSING;
    sched_session_drop(s, 0);
    if (s->sock >= 0)
        shutdown(s->sock, SHUT_RDWR);
    cancel_op(d, &s->recv_op);
    cancel_op(d, &s->send_op);
    cancel_op(d, &s->bell_op);
    cancel_op(d, &s->wake_op);
}

void session_abort(struct session *s, int code, const char *why)
{
    if (s->state != S_ACTIVE) {
        session_close(s, why);
        return;
    }
    daemon_log("session %llu (uid %u pid %d %s): aborted: %s", (unsigned long long)s->id,
               (unsigned)s->cred.uid, (int)s->cred.pid, s->name, why);
    s->state = S_ABORTING;
    s->t_abort_us = daemon_now_us();
    sched_session_drop(s, 0);
    cancel_op(s->d, &s->bell_op);
    cancel_op(s->d, &s->wake_op);
    uint8_t buf[SHM_WIRE_MAX];
    int n = shm_wire_encode_error(buf, code, why);
    s->close_after_send = 1;
    if (session_queue(s, buf, (uint32_t)n, NULL, 0) < 0)
        session_close(s, why);
}

void session_wake_client(struct session *s)
{
    if (s->state != S_ACTIVE || s->wake_fd < 0)
        return;
    if (s->wake_op.busy) {
        s->wake_again = 1;
        return;
    }
    struct io_uring_sqe *sqe = get_sqe(s->d);
    if (!sqe)
        return;
    s->wake_val = 1;
    io_uring_prep_write(sqe, s->wake_fd, &s->wake_val, sizeof(s->wake_val), 0);
    op_start(s->d, &s->wake_op, sqe);
}

static int session_queue(struct session *s, const void *buf, uint32_t len, const int *fds, uint32_t n_fds)
{
    if (s->sq_len == SESSION_SEND_SLOTS)
        return -ENOBUFS;
    struct send_frame *f = &s->sq[(s->sq_head + s->sq_len) % SESSION_SEND_SLOTS];
    memcpy(f->buf, buf, len);
    f->len = len;
    f->n_fds = n_fds;
    if (n_fds)
        memcpy(f->fds, fds, sizeof(int) * n_fds);
    s->sq_len++;
    return arm_send(s);
}

int session_send_error(struct session *s, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    daemon_log("session %llu (uid %u pid %d): refused: %s", (unsigned long long)s->id,
               (unsigned)s->cred.uid, (int)s->cred.pid, msg);
    uint8_t buf[SHM_WIRE_MAX];
    int n = shm_wire_encode_error(buf, code, msg);
    s->close_after_send = 1;
    int r = session_queue(s, buf, (uint32_t)n, NULL, 0);
    if (r < 0)
        session_close(s, "could not queue an ERROR frame");
    return r;
}

static void on_accept(struct daemon *d, int fd)
{
    struct session *s = calloc(1, sizeof(*s));
    if (!s) {
        close(fd);
        return;
    }
    s->d = d;
    s->sock = fd;
    s->doorbell_fd = s->wake_fd = -1;
    s->region.fd = -1;
    s->id = ++d->next_session_id;
    s->t_connect_us = daemon_now_us();
    s->recv_op = (struct op){ .kind = OP_RECV, .s = s };
    s->send_op = (struct op){ .kind = OP_SEND, .s = s };
    s->bell_op = (struct op){ .kind = OP_BELL, .s = s };
    s->wake_op = (struct op){ .kind = OP_WAKE, .s = s };
    s->next = d->sessions;
    if (d->sessions)
        d->sessions->prev = s;
    d->sessions = s;
    d->n_sessions++;

    socklen_t cl = sizeof(s->cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &s->cred, &cl) < 0) {
        session_close(s, "SO_PEERCRED failed");
        return;
    }
    /* Charge the socket before anything else is granted. */
    s->acct = quota_acct_get(d, s->cred.uid);
    if (!s->acct) {
        session_close(s, "out of memory for accounting");
        return;
    }
    s->acct->sessions++;
    s->acct->fds++;
    s->charged_fds = 1;
    if (arm_recv(s) < 0) {
        session_close(s, "cannot queue a receive");
        return;
    }
    if (!policy_allows(d, fd, &s->cred))
        session_send_error(s, -EPERM, "uid %u / gid %u is not allowed by residentd's policy "
                           "(allow_uids / allow_gids in residentd.conf)", (unsigned)s->cred.uid,
                           (unsigned)s->cred.gid);
    else if (d->stopping)
        session_send_error(s, -ESHUTDOWN, "residentd is shutting down");
    else if (d->n_sessions > d->cfg.max_sessions)
        session_send_error(s, -EUSERS, "residentd has %u sessions; limit max_sessions = %u",
                           d->n_sessions - 1, d->cfg.max_sessions);
    else if (s->acct->fds > d->cfg.max_fds_per_uid)
        session_send_error(s, -EMFILE, "uid %u holds %u daemon fds; limit max_fds_per_uid = %u",
                           (unsigned)s->cred.uid, s->acct->fds - 1, d->cfg.max_fds_per_uid);
    else if (s->acct->sessions > d->cfg.max_sessions_per_uid)
        session_send_error(s, -EUSERS, "uid %u has %u sessions; limit max_sessions_per_uid = %u",
                           (unsigned)s->cred.uid, s->acct->sessions - 1, d->cfg.max_sessions_per_uid);
}

static void on_hello(struct session *s, const struct shm_wire_hello *h)
{
    struct daemon *d = s->d;
    const struct daemon_config *c = &d->cfg;
    memcpy(s->name, h->client_name, sizeof(s->name));
    s->name[sizeof(s->name) - 1] = '\0';
    for (char *p = s->name; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            *p = '?';   /* it goes into our log */
    if (h->proto_version != SHM_WIRE_VERSION) {
        session_send_error(s, -EPROTONOSUPPORT, "protocol version %u requested; this residentd speaks %u",
                           h->proto_version, SHM_WIRE_VERSION);
        return;
    }
    uint64_t req = shm_layout_round_ring(h->req_ring_bytes, SHM_REQ_RING_DEFAULT);
    uint64_t evt = shm_layout_round_ring(h->evt_ring_bytes, SHM_EVT_RING_DEFAULT);
    uint64_t data = h->data_bytes ? h->data_bytes : SHM_DATA_DEFAULT;
    if (data > SHM_DATA_MAX)
        data = SHM_DATA_MAX;
    data = (data + SHM_PAGE - 1) & ~(uint64_t)(SHM_PAGE - 1);
    struct shm_layout l;
    if (shm_layout_compute(req, evt, data, &l) < 0) {
        session_send_error(s, -EINVAL, "requested ring sizes are out of range");
        return;
    }
    if (s->acct->ring_bytes + l.region_size > c->max_ring_bytes_per_uid) {
        session_send_error(s, -EDQUOT, "uid %u would hold %llu ring bytes; limit max_ring_bytes_per_uid = %llu "
                           "(ask for smaller rings in HELLO or close sessions)", (unsigned)s->cred.uid,
                           (unsigned long long)(s->acct->ring_bytes + l.region_size),
                           (unsigned long long)c->max_ring_bytes_per_uid);
        return;
    }
    if (s->acct->fds + 3 > c->max_fds_per_uid) {
        session_send_error(s, -EMFILE, "uid %u holds %u daemon fds; limit max_fds_per_uid = %u",
                           (unsigned)s->cred.uid, s->acct->fds, c->max_fds_per_uid);
        return;
    }
    /* Charge first, then allocate: failures below release via session_free. */
    s->acct->ring_bytes += l.region_size;
    s->charged_ring = l.region_size;
    s->acct->fds += 3;
    s->charged_fds += 3;

    int r = shm_region_create(&s->region, s->id, req, evt, data);
    if (r < 0) {
        session_send_error(s, r, "cannot create the session memfd: %s", strerror(-r));
        return;
    }
    s->doorbell_fd = eventfd(0, EFD_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->reqbuf = malloc(shm_ring_max_record(req));
    if (s->doorbell_fd < 0 || s->wake_fd < 0 || !s->reqbuf) {
        session_send_error(s, -EMFILE, "cannot create session eventfds: %s", strerror(errno));
        return;
    }
    const struct shm_layout *L = &s->region.layout;
    shm_ring_cons_init(&s->req, shm_region_req_ctl(&s->region), s->region.base + L->req_data_off, L->req_cap);
    shm_ring_prod_init(&s->evt, shm_region_evt_ctl(&s->region), s->region.base + L->evt_data_off, L->evt_cap);
    /* The daemon wants a doorbell for every publish: it never spins. */
    (void)shm_ring_cons_arm_sleep(&s->req);

    struct shm_wire_welcome w = {
        .session_id = s->id,
        .abi_version = SHM_ABI_VERSION,
        /* What this daemon honours: the null and script generators accept
         * the extension and the cache opt-out (they neither sample nor
         * cache); only a generator that forces tool calls sets
         * SHM_WELCOME_F_TOOL_CHOICE. */
        .flags = (d->gen->synthetic ? SHM_WELCOME_F_NULL_GENERATOR : 0) | SHM_WELCOME_F_NO_PREFIX_CACHE |
                 SHM_WELCOME_F_SUBMIT_EXT | (d->gen->tool_choice ? SHM_WELCOME_F_TOOL_CHOICE : 0),
        .region_size = L->region_size,
        .max_new_tokens = c->max_new_tokens,
        .max_prompt_tokens = c->max_prompt_tokens,
        .max_inflight = c->max_inflight_per_uid,
        .vocab_size = d->gen->vocab_size(d->gen_ctx),
    };
    snprintf(w.generator, sizeof(w.generator), "%s", d->gen->name);
    const char *base = strrchr(c->model, '/');
    base = base ? base + 1 : c->model;
    size_t ml = strlen(base);
    memcpy(w.model, base, ml < sizeof(w.model) ? ml : sizeof(w.model) - 1);   /* zero-filled: NUL-terminated */
    uint8_t buf[SHM_WIRE_MAX];
    int n = shm_wire_encode(buf, SHM_WIRE_WELCOME, SHM_WELCOME_NFDS, &w, sizeof(w));
    int fds[SHM_WELCOME_NFDS];
    fds[SHM_WELCOME_FD_REGION] = s->region.fd;
    fds[SHM_WELCOME_FD_DOORBELL] = s->doorbell_fd;
    fds[SHM_WELCOME_FD_WAKE] = s->wake_fd;
    s->region.fd = -1;      /* now owned by the send queue; closed once sent */
    if (session_queue(s, buf, (uint32_t)n, fds, SHM_WELCOME_NFDS) < 0) {
        close(fds[SHM_WELCOME_FD_REGION]);
        session_close(s, "cannot queue WELCOME");
        return;
    }
    s->state = S_ACTIVE;
    if (arm_bell(s, 0) < 0)
        session_close(s, "cannot queue the doorbell read");
    else
        daemon_log("session %llu: uid %u pid %d '%s' connected (rings %llu/%llu, data %llu bytes)",
                   (unsigned long long)s->id, (unsigned)s->cred.uid, (int)s->cred.pid, s->name,
                   (unsigned long long)req, (unsigned long long)evt, (unsigned long long)data);
}

static void close_received_fds(struct msghdr *m)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            close(fd);
        }
    }
}

static void on_recv(struct session *s, int res)
{
    if (s->state == S_CLOSING)
        return;
    if (res <= 0) {
        session_close(s, res == 0 ? "client hung up" : strerror(-res));
        return;
    }
    int had_fds = s->rmsg.msg_controllen > 0;
    if (had_fds)
        close_received_fds(&s->rmsg);
    if (s->rmsg.msg_flags & MSG_CTRUNC) {
        session_close(s, "control message truncated (MSG_CTRUNC): too many fds sent");
        return;
    }
    if (had_fds) {
        session_close(s, "client sent file descriptors; the protocol accepts none");
        return;
    }
    if ((s->rmsg.msg_flags & MSG_TRUNC) || (size_t)res > SHM_WIRE_MAX) {
        session_close(s, "frame longer than SHM_WIRE_MAX (4096)");
        return;
    }
    struct shm_wire_msg m;
    const char *why = "";
    int r = shm_wire_decode(s->rbuf, (size_t)res, 0, &m, &why);
    if (r < 0) {
        if (s->state == S_HANDSHAKE && !s->close_after_send)
            session_send_error(s, -EPROTO, "malformed frame: %s", why);
        else
            session_close(s, why);
        return;
    }
    if (m.type != SHM_WIRE_HELLO || s->state != S_HANDSHAKE || s->close_after_send) {
        if (s->close_after_send)
            return;     /* already refused; ignore what it says */
        session_close(s, "unexpected frame (only one HELLO is allowed)");
        return;
    }
    on_hello(s, &m.u.hello);
    if (s->state != S_CLOSING && arm_recv(s) < 0)
        session_close(s, "cannot queue a receive");
}

static void on_send(struct session *s, int res)
{
    struct send_frame *f = &s->sq[s->sq_head];
    /* The memfd travelled; the eventfds stay ours. */
    if (f->n_fds)
        close(f->fds[SHM_WELCOME_FD_REGION]);
    f->n_fds = 0;
    s->sq_head = (s->sq_head + 1) % SESSION_SEND_SLOTS;
    s->sq_len--;
    if (s->state == S_CLOSING)
        return;
    if (res < 0) {
        session_close(s, "send failed");
        return;
    }
    if (s->close_after_send && !s->sq_len) {
        session_close(s, "ERROR frame delivered");
        return;
    }
    if (arm_send(s) < 0)
        session_close(s, "cannot queue a send");
}

static void on_bell(struct session *s, int res, int was_poll)
{
    if (s->state != S_ACTIVE)
        return;
    if (res == -EAGAIN && !was_poll) {
        /* The client made the shared eventfd non-blocking: poll instead. */
        if (arm_bell(s, 1) < 0)
            session_close(s, "cannot queue the doorbell poll");
        return;
    }
    if (res < 0 && res != -EAGAIN && res != -EINTR) {
        session_close(s, "doorbell read failed");
        return;
    }
    if (arm_bell(s, 0) < 0) {
        session_close(s, "cannot queue the doorbell read");
        return;
    }
    sched_session_flush(s);
    if (s->state == S_ACTIVE)
        sched_session_drain(s);
}

/* ---- shutdown ---- */

static void begin_stop(struct daemon *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    uint64_t now = daemon_now_us();
    d->stop_deadline_us = now + (uint64_t)d->cfg.shutdown_grace_ms * 1000;
    daemon_log("%s: finishing %u in-flight requests within %u ms", why, sched_running(d), d->cfg.shutdown_grace_ms);
    svc_notify_stopping(&d->notify, "shutting down");
    cancel_op(d, &d->accept_op);
    struct shm_wire_bye bye = { .reason = SHM_BYE_SHUTDOWN, .grace_ms = d->cfg.shutdown_grace_ms };
    uint8_t buf[SHM_WIRE_MAX];
    int n = shm_wire_encode(buf, SHM_WIRE_BYE, 0, &bye, sizeof(bye));
    for (struct session *s = d->sessions; s; s = s->next)
        if (s->state == S_ACTIVE && !s->bye_sent) {
            s->bye_sent = 1;
            (void)session_queue(s, buf, (uint32_t)n, NULL, 0);
        }
}

/* Returns 1 when the loop may exit. */
static int stop_progress(struct daemon *d, uint64_t now)
{
    if (!d->stopping)
        return 0;
    if (sched_running(d) && now < d->stop_deadline_us)
        return 0;
    sched_shutdown(d, 1);
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        /* Give a client with pending events until the hard deadline. */
        if (s->n_inflight && now < d->stop_deadline_us + 1000000 && s->state == S_ACTIVE)
            continue;
        session_close(s, "residentd stopping");
    }
    return d->sessions == NULL && !d->batch_busy;
}

/* ---- STATUS= ---- */

/* What `systemctl status` shows while serving: sessions, requests in
 * flight, tokens per second since the previous line, VmLck (the weights
 * stay locked), and the generator's counters (the engine's prefix cache:
 * hits, misses, tokens reused, bytes held, evictions). Sent with READY=1,
 * after a reload, and every status_interval_sec from the tick; the
 * generator's counters also go to the log at SIGHUP and exit. */
static void gen_stats(struct daemon *d, char *buf, size_t len)
{
    buf[0] = '\0';
    if (d->gen->stats && d->gen_ctx)
        d->gen->stats(d->gen_ctx, buf, len);
}

static void status_text(struct daemon *d, uint64_t now, char *buf, size_t len)
{
    char st[320], be[320] = "";
    gen_stats(d, st, sizeof(st));
    /* what computes (e.g. "backend cuda on NVIDIA H200, ..."): with
     * backend = auto, the only place an operator sees what auto chose */
    if (d->gen->describe && d->gen_ctx)
        d->gen->describe(d->gen_ctx, be, sizeof(be));
    uint64_t vmlck = 0, dt = now - d->status_us;
    (void)svc_memlock_vmlck(0, &vmlck);
    double tps = d->status_us && dt ? (double)(d->tokens_out - d->status_tokens_out) * 1e6 / (double)dt : 0.0;
    snprintf(buf, len, "serving (generator %s%s%s): %u session%s, %u in flight, %.1f tok/s, VmLck %" PRIu64
             " kB%s%s", d->gen->name, be[0] ? ", " : "", be, d->n_sessions, d->n_sessions == 1 ? "" : "s", sched_running(d), tps,
             vmlck / 1024, st[0] ? "; " : "", st);
    d->status_us = now;
    d->status_tokens_out = d->tokens_out;
}

static void notify_status(struct daemon *d, uint64_t now)
{
    char buf[1024];
    status_text(d, now, buf, sizeof(buf));
    svc_notify_status(&d->notify, "%s", buf);
}

/* ---- SIGHUP ---- */

/* Re-read residentd.conf (and re-apply the command-line overrides). A bad
 * file keeps the running configuration; keys that need a restart are
 * named in the log. */
static void reload(struct daemon *d)
{
    svc_notify_reloading(&d->notify);
    struct daemon_config next;
    char err[1024];
    int r = daemon_config_build(&next, &d->cfg_src, err, sizeof(err));
    if (r < 0) {
        daemon_log("SIGHUP: configuration not reloaded, keeping the running one: %s", err);
    } else {
        char restart[256];
        daemon_config_apply_live(&d->cfg, &next, restart, sizeof(restart));
        quota_config_warn(&d->cfg);
        daemon_log("SIGHUP: configuration reloaded from %s%s%s%s", d->cfg_src.path,
                   restart[0] ? " (changed, but only applied after a restart: " : "", restart,
                   restart[0] ? ")" : "");
    }
    char st[1024];
    gen_stats(d, st, sizeof(st));
    if (st[0])
        daemon_log("SIGHUP: %s", st);
    quota_log(d, "SIGHUP");
    status_text(d, daemon_now_us(), st, sizeof(st));
    svc_notify_reloaded(&d->notify, st);
}

/* ---- the loop ---- */

static void on_tick(struct daemon *d)
{
    uint64_t now = daemon_now_us();
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        if (s->state == S_HANDSHAKE && now - s->t_connect_us > (uint64_t)d->cfg.handshake_ms * 1000)
            session_close(s, s->close_after_send ? "did not take its ERROR frame" : "no HELLO within handshake_ms");
        else if (s->state == S_ABORTING && now - s->t_abort_us > (uint64_t)d->cfg.handshake_ms * 1000)
            session_close(s, "did not take its ERROR frame");
    }
    sched_tick(d, now);
    if (d->accept_retry_us && now >= d->accept_retry_us && !d->stopping) {
        d->accept_retry_us = 0;
        arm_accept(d);
    }
    if (!d->stopping && d->cfg.status_interval_sec &&
        now - d->status_us >= (uint64_t)d->cfg.status_interval_sec * 1000000u)
        notify_status(d, now);
    /* The ping proves this loop turns: it is sent from here, never from a
     * timer thread. The 50 ms tick bounds how late it can be; a ping is
     * scheduled from the time it went out, so a stall is not hidden by a
     * burst of catch-up pings (svc-notify.h). */
    if (svc_watchdog_due(&d->notify, now))
        svc_watchdog_ping(&d->notify, now);
}

static void dispatch(struct daemon *d, struct io_uring_cqe *cqe)
{
    struct op *op = io_uring_cqe_get_data(cqe);
    if (!op)
        return;     /* cancel completions */
    int res = cqe->res;
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        op->busy = 0;
        if (op->s)
            op->s->ops_inflight--;
    }
    struct session *s = op->s;
    switch (op->kind) {
    case OP_ACCEPT:
        if (res >= 0)
            on_accept(d, res);
        else if (res != -ECANCELED)
            daemon_log("accept: %s%s", strerror(-res),
                       res == -EMFILE || res == -ENFILE ? " (fd limit reached; retrying in 100 ms)" : "");
        if (!more && !d->stopping) {
            if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS)
                d->accept_retry_us = daemon_now_us() + 100000;
            else
                arm_accept(d);
        }
        break;
    case OP_RECV:
        on_recv(s, res);
        break;
    case OP_SEND:
        on_send(s, res);
        break;
    case OP_BELL:
    case OP_BELL_POLL:
        on_bell(s, res, op->kind == OP_BELL_POLL);
        break;
    case OP_WAKE:
        if (s->wake_again && s->state == S_ACTIVE) {
            s->wake_again = 0;
            session_wake_client(s);
        }
        break;
    case OP_WORKER:
        arm_read(d, &d->worker_op, d->worker.efd, &d->worker_val, sizeof(d->worker_val));
        if (d->batch_busy)
            sched_batch_done(d);
        break;
    case OP_SIGNAL: {
        struct signalfd_siginfo si;
        memcpy(&si, d->sig_buf, sizeof(si));
        arm_read(d, &d->signal_op, d->signal_fd, d->sig_buf, sizeof(struct signalfd_siginfo));
        if (res == (int)sizeof(si) && (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT))
            begin_stop(d, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        else if (res == (int)sizeof(si) && si.ssi_signo == SIGHUP && !d->stopping)
            reload(d);
        break;
    }
    case OP_TICK:
        arm_tick(d);
        on_tick(d);
        break;
    }
}

/* ---- setup ---- */

static int ring_setup(struct daemon *d, char *err, size_t errlen)
{
    static const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        0,
    };
    int r = -EINVAL;
    size_t i;
    for (i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
        struct io_uring_params p = { 0 };
        p.flags = flag_sets[i] | IORING_SETUP_R_DISABLED | IORING_SETUP_CQSIZE;
        p.cq_entries = 4096;
        r = io_uring_queue_init_params(256, &d->ring, &p);
        if (r != -EINVAL)
            break;
    }
    if (r < 0) {
        snprintf(err, errlen, "io_uring is unavailable: %s (check 'sysctl kernel.io_uring_disabled' "
                 "= 0, and that no seccomp filter or container profile blocks io_uring_setup)", strerror(-r));
        return r;
    }
    static const uint8_t ops[] = {
        IORING_OP_ACCEPT, IORING_OP_RECVMSG, IORING_OP_SENDMSG, IORING_OP_READ, IORING_OP_WRITE,
        IORING_OP_POLL_ADD, IORING_OP_TIMEOUT, IORING_OP_ASYNC_CANCEL,
    };
    /* Probe before restricting (IORING_REGISTER_PROBE is not allowed after):
     * a kernel missing an opcode fails here with its name, not later. */
    struct io_uring_probe *probe = io_uring_get_probe_ring(&d->ring);
    for (size_t k = 0; probe && k < sizeof(ops); k++) {
        if (!io_uring_opcode_supported(probe, ops[k])) {
            snprintf(err, errlen, "this kernel's io_uring lacks opcode %u (residentd needs Linux 6.0 or newer)",
                     ops[k]);
            io_uring_free_probe(probe);
            io_uring_queue_exit(&d->ring);
            return -EOPNOTSUPP;
        }
    }
    if (probe)
        io_uring_free_probe(probe);
    struct io_uring_restriction res[sizeof(ops)];
    memset(res, 0, sizeof(res));
    for (size_t k = 0; k < sizeof(ops); k++) {
        res[k].opcode = IORING_RESTRICTION_SQE_OP;
        res[k].sqe_op = ops[k];
    }
    /* liburing 2.3 declares io_uring_register_restrictions() and
     * io_uring_enable_rings() but its shared library does not export them
     * (fixed in 2.4), so call io_uring_register(2) directly. */
    r = (int)syscall(__NR_io_uring_register, d->ring.ring_fd, IORING_REGISTER_RESTRICTIONS, res,
                     (unsigned)sizeof(ops));
    if (r == 0)
        r = (int)syscall(__NR_io_uring_register, d->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (r < 0)
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "io_uring restrictions/enable failed: %s", strerror(-r));
        io_uring_queue_exit(&d->ring);
        return r;
    }
    daemon_log("io_uring: %s, restricted to %zu opcodes",
               i == 0 ? "SINGLE_ISSUER|DEFER_TASKRUN" : i == 1 ? "COOP_TASKRUN (kernel refused DEFER_TASKRUN)"
                                                                : "plain (kernel refused task-run flags)",
               sizeof(ops));
    return 0;
}

static int listen_setup(struct daemon *d, char *err, size_t errlen)
{
    int n = sd_listen_fds(1);
    if (n > 0) {
        int fd = SD_LISTEN_FDS_START;
        if (sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) <= 0) {
            snprintf(err, errlen, "inherited fd 3 is not a listening AF_UNIX SOCK_SEQPACKET socket "
                     "(use ListenSequentialPacket= in residentd.socket)");
            return -EINVAL;
        }
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        d->listen_fd = fd;
        d->listen_inherited = 1;
        daemon_log("listening on the socket passed by systemd");
        return 0;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    const char *path = d->cfg.socket;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "socket path '%s' is longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    /* Create the parent directory (e.g. /run/resident) when it is missing. */
    char dir[sizeof(sa.sun_path)];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create socket directory %s: %s", dir, strerror(errno));
            return -errno;
        }
    }
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(AF_UNIX, SOCK_SEQPACKET): %s", strerror(errno));
        return -errno;
    }
    /* A stale socket from a crashed instance: remove it only if nobody answers. */
    int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        if (connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            close(probe);
            close(fd);
            snprintf(err, errlen, "another residentd is already listening on %s", path);
            return -EADDRINUSE;
        }
        close(probe);
    }
    unlink(path);
    mode_t old = umask(0777 & ~d->cfg.socket_mode);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (r < 0 || chmod(path, d->cfg.socket_mode) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    if (d->cfg.socket_group[0]) {
        /* Access control is the socket's group plus the SO_PEERCRED policy
         * (allow_uids / allow_gids); name the same group in both. */
        char *end;
        errno = 0;
        unsigned long g = strtoul(d->cfg.socket_group, &end, 10);
        gid_t gid = (gid_t)g;
        if (*end || errno) {
            struct group *gr = getgrnam(d->cfg.socket_group);
            if (!gr) {
                snprintf(err, errlen, "socket_group '%s' is not a known group (create it, e.g. with "
                         "systemd-sysusers, or give a numeric gid)", d->cfg.socket_group);
                close(fd);
                unlink(path);
                return -ENOENT;
            }
            gid = gr->gr_gid;
        }
        if (chown(path, (uid_t)-1, gid) < 0) {
            int e = errno;
            snprintf(err, errlen, "cannot give the socket to group %s: %s", d->cfg.socket_group, strerror(e));
            close(fd);
            unlink(path);
            return -e;
        }
    }
    d->listen_fd = fd;
    daemon_log("listening on %s (mode %04o%s%s)", path, d->cfg.socket_mode,
               d->cfg.socket_group[0] ? ", group " : "", d->cfg.socket_group);
    return 0;
}

int daemon_run(struct daemon *d, char *err, size_t errlen)
{
    int r = ring_setup(d, err, errlen);
    if (r < 0)
        return r;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    d->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
    d->worker.efd = eventfd(0, EFD_CLOEXEC);
    if (d->signal_fd < 0 || d->worker.efd < 0) {
        snprintf(err, errlen, "signalfd/eventfd: %s", strerror(errno));
        return -errno;
    }
    /* main() normally passes the socket in (svc_activation_listen()). */
    r = d->listen_fd >= 0 ? 0 : listen_setup(d, err, errlen);
    if (r < 0)
        return r;
    r = sched_init(d);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the compute worker: %s", strerror(-r));
        return r;
    }
    d->accept_op = (struct op){ .kind = OP_ACCEPT };
    d->worker_op = (struct op){ .kind = OP_WORKER };
    d->signal_op = (struct op){ .kind = OP_SIGNAL };
    d->tick_op = (struct op){ .kind = OP_TICK };
    arm_accept(d);
    arm_read(d, &d->worker_op, d->worker.efd, &d->worker_val, sizeof(d->worker_val));
    arm_read(d, &d->signal_op, d->signal_fd, d->sig_buf, sizeof(struct signalfd_siginfo));
    arm_tick(d);
    /* WATCHDOG_USEC, honoured only when WATCHDOG_PID is unset or ours (as
     * sd_watchdog_enabled() decides); READY=1 arms the ping clock. */
    r = svc_notify_init(&d->notify);
    if (r < 0) {
        snprintf(err, errlen, "WATCHDOG_USEC=%s is not a valid interval (WatchdogSec= in residentd.service)",
                 getenv("WATCHDOG_USEC") ? getenv("WATCHDOG_USEC") : "");
        return r;
    }
    quota_config_warn(&d->cfg);
    char st[1024];
    status_text(d, daemon_now_us(), st, sizeof(st));
    svc_notify_ready(&d->notify, st);
    daemon_log("ready");
    if (d->notify.watchdog_usec)
        daemon_log("watchdog: WATCHDOG=1 every %" PRIu64 " ms from the event loop",
                   d->notify.watchdog_usec / 2000);

    for (;;) {
        r = io_uring_submit_and_wait(&d->ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            snprintf(err, errlen, "io_uring_submit_and_wait: %s", strerror(-r));
            break;
        }
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&d->ring, head, cqe) {
            dispatch(d, cqe);
            n++;
        }
        io_uring_cq_advance(&d->ring, n);
        sessions_reap(d);
        if (d->stopping && stop_progress(d, daemon_now_us())) {
            r = 0;
            break;
        }
    }
    /* Stop the worker before tearing down what it may touch. */
    sched_fini(d);
    gen_stats(d, st, sizeof(st));
    if (st[0])
        daemon_log("exit: %s", st);
    if (!d->listen_inherited && d->listen_fd >= 0)
        unlink(d->cfg.socket);
    close(d->listen_fd);
    io_uring_queue_exit(&d->ring);
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        sched_session_drop(s, 1);
        s->ops_inflight = 0;
        s->n_in_batch = 0;
        s->state = S_CLOSING;
        session_free(s);
    }
    /* Every session went through the normal release paths above: any
     * counter left is a charge that was never released. */
    if (quota_check_released(d) && r == 0) {
        snprintf(err, errlen, "per-uid accounting did not return to zero (see the log): a residentd bug");
        r = -EUCLEAN;
    }
    quota_fini(d);
    close(d->signal_fd);
    close(d->worker.efd);
    return r;
}
