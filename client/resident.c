/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libresident implementation. See client/resident.h for the API and
 * shm/ring.h for the ring protocol. The client validates what residentd
 * writes with the same decoders the daemon uses: a broken daemon yields
 * -EPROTO, never a crash in the application.
 *
 * Data area: prompts too large for one request record are written to the
 * session's data area, allocated as a byte ring by the client. Each
 * allocation remembers the request-ring position just after its SUBMIT
 * record; the daemon copies the payload out before it advances the ring's
 * head past that record, so the space is free again once the published
 * head reaches that position.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client/resident.h"
#include "shm/proto.h"
#include "shm/region.h"
#include "shm/wire.h"

#define DATA_RES_MAX 64
#define SPIN_NS      50000   /* busy-poll at most this long before sleeping */

struct data_res {
    uint64_t req_pos;       /* request ring position after the SUBMIT */
    uint64_t end;           /* data ring position after the payload */
};

struct resident {
    struct resident_connect_params params;
    char                socket_path[108];
    char                client_name[SHM_WIRE_NAME];
    int                 sock, epfd, doorbell_fd, wake_fd;
    struct shm_region   region;
    struct shm_ring_prod req;
    struct shm_ring_cons evt;
    struct shm_wire_welcome welcome;
    uint64_t            next_id;
    /* data area byte ring */
    uint64_t            data_head, data_tail;
    struct data_res     res[DATA_RES_MAX];
    uint32_t            res_head, res_len;
    /* last event's private copy */
    uint8_t            *evbuf;
    size_t              evbuf_size;
    char                msg[512];
    int                 dead;       /* session over: deliver what is left, then -ECONNRESET */
    int                 bye;        /* the daemon announced its shutdown */
    int                 skip_spin;  /* resident_wait: the last gap outlasted SPIN_NS */
    char                err[512];
};

static __thread char connect_err[512];

static int seterr(struct resident *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int seterr(struct resident *r, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r ? r->err : connect_err, r ? sizeof(r->err) : sizeof(connect_err), fmt, ap);
    va_end(ap);
    return code;
}

RESIDENT_API void resident_connect_params_init(struct resident_connect_params *p)
{
    memset(p, 0, sizeof(*p));
    p->size = sizeof(*p);
    p->timeout_ms = 5000;
}

RESIDENT_API void resident_request_init(struct resident_request *q)
{
    memset(q, 0, sizeof(*q));
    q->size = sizeof(*q);
    q->temperature = 0.7f;
    q->top_p = 0.95f;
    q->repeat_penalty = 1.0f;
    q->top_k = 20;
}

RESIDENT_API const char *resident_finish_name(uint32_t finish)
{
    static const char *const names[] = {
        "?", "stop", "length", "stop_string", "stop_id", "cancelled", "error", "shutdown", "slow_client",
        "tool_calls",
    };
    return finish < sizeof(names) / sizeof(names[0]) ? names[finish] : "?";
}

static void session_teardown(struct resident *r)
{
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->sock >= 0)
        close(r->sock);
    if (r->doorbell_fd >= 0)
        close(r->doorbell_fd);
    if (r->wake_fd >= 0)
        close(r->wake_fd);
    shm_region_destroy(&r->region);
    free(r->evbuf);
    r->evbuf = NULL;
    r->epfd = r->sock = r->doorbell_fd = r->wake_fd = -1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receive one frame with up to 3 fds, waiting at most until `deadline`. */
static int recv_frame(struct resident *r, struct shm_wire_msg *m, uint8_t *buf, int *fds, size_t *n_fds,
                      int64_t deadline)
{
    struct pollfd pfd = { .fd = r->sock, .events = POLLIN };
    int left = (int)(deadline - now_ms());
    if (left < 0)
        left = 0;
    int pr = poll(&pfd, 1, left);
    if (pr == 0)
        return seterr(r, -ETIMEDOUT, "residentd did not answer HELLO within %d ms", r->params.timeout_ms);
    if (pr < 0)
        return seterr(r, -errno, "poll: %s", strerror(errno));
    struct iovec iov = { .iov_base = buf, .iov_len = SHM_WIRE_MAX };
    _Alignas(struct cmsghdr) uint8_t cbuf[CMSG_SPACE(sizeof(int) * SHM_WELCOME_NFDS)];
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    ssize_t n = recvmsg(r->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n == 0)
        return seterr(r, -ECONNRESET, "residentd closed the connection during the handshake");
    if (n < 0)
        return seterr(r, -errno, "recvmsg: %s", strerror(errno));
    *n_fds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            if (*n_fds < SHM_WELCOME_NFDS)
                fds[(*n_fds)++] = fd;
            else
                close(fd);
        }
    }
    const char *why = "";
    int ret = (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) ? -EPROTO : shm_wire_decode(buf, (size_t)n, *n_fds, m, &why);
    if (ret < 0) {
        for (size_t i = 0; i < *n_fds; i++)
            close(fds[i]);
        *n_fds = 0;
        return seterr(r, -EPROTO, "bad frame from residentd: %s", why);
    }
    return 0;
}

static int session_open(struct resident *r)
{
    r->sock = r->epfd = r->doorbell_fd = r->wake_fd = -1;
    r->region.fd = -1;
    r->dead = 0;
    r->bye = 0;
    r->data_head = r->data_tail = 0;
    r->res_head = r->res_len = 0;
    r->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (r->sock < 0)
        return seterr(r, -errno, "socket: %s", strerror(errno));
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, r->socket_path, strlen(r->socket_path));
    if (connect(r->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return seterr(r, -errno, "cannot connect to residentd at %s: %s (is residentd running? "
                      "--socket / $RESIDENT_SOCKET)", r->socket_path, strerror(errno));
    struct shm_wire_hello h = {
        .proto_version = SHM_WIRE_VERSION,
        .req_ring_bytes = r->params.req_ring_bytes,
        .evt_ring_bytes = r->params.evt_ring_bytes,
        .data_bytes = r->params.data_bytes,
    };
    memcpy(h.client_name, r->client_name, sizeof(h.client_name));
    uint8_t buf[SHM_WIRE_MAX];
    int n = shm_wire_encode(buf, SHM_WIRE_HELLO, 0, &h, sizeof(h));
    /* A daemon that refuses us at accept time may already have sent its
     * ERROR and hung up, so a failed send still reads what is queued. */
    int send_err = send(r->sock, buf, (size_t)n, MSG_NOSIGNAL) == n ? 0 : errno;

    struct shm_wire_msg m;
    int fds[SHM_WELCOME_NFDS];
    size_t n_fds = 0;
    int ret = recv_frame(r, &m, buf, fds, &n_fds, now_ms() + (send_err ? 0 : r->params.timeout_ms));
    if (ret < 0 && send_err)
        return seterr(r, -send_err, "sending HELLO: %s", strerror(send_err));
    if (ret < 0)
        return ret;
    if (m.type == SHM_WIRE_ERROR)
        return seterr(r, m.u.error.code, "residentd refused the session: %s", m.u.error.msg);
    if (m.type != SHM_WIRE_WELCOME) {
        for (size_t i = 0; i < n_fds; i++)
            close(fds[i]);
        return seterr(r, -EPROTO, "residentd answered HELLO with frame type %u", m.type);
    }
    r->welcome = m.u.welcome;
    r->doorbell_fd = fds[SHM_WELCOME_FD_DOORBELL];
    r->wake_fd = fds[SHM_WELCOME_FD_WAKE];
    const char *why = "";
    ret = shm_region_attach(&r->region, fds[SHM_WELCOME_FD_REGION], &why);
    if (ret < 0) {
        close(fds[SHM_WELCOME_FD_REGION]);
        return seterr(r, ret, "cannot attach the session memory: %s", why);
    }
    const struct shm_layout *L = &r->region.layout;
    shm_ring_prod_init(&r->req, shm_region_req_ctl(&r->region), r->region.base + L->req_data_off, L->req_cap);
    shm_ring_cons_init(&r->evt, shm_region_evt_ctl(&r->region), r->region.base + L->evt_data_off, L->evt_cap);
    r->evbuf_size = shm_ring_max_record(L->evt_cap);
    r->evbuf = malloc(r->evbuf_size);
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!r->evbuf || r->epfd < 0)
        return seterr(r, -ENOMEM, "out of memory");
    struct epoll_event e1 = { .events = EPOLLIN, .data.u32 = 1 };
    struct epoll_event e2 = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = 2 };
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wake_fd, &e1) < 0 ||
        epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->sock, &e2) < 0)
        return seterr(r, -errno, "epoll_ctl: %s", strerror(errno));
    return 0;
}

RESIDENT_API int resident_connect(const struct resident_connect_params *p, struct resident **out)
{
    *out = NULL;
    struct resident *r = calloc(1, sizeof(*r));
    if (!r)
        return seterr(NULL, -ENOMEM, "out of memory");
    if (p && p->size >= sizeof(r->params))
        r->params = *p;
    else
        resident_connect_params_init(&r->params);
    if (r->params.timeout_ms <= 0)
        r->params.timeout_ms = 5000;
    const char *path = r->params.socket_path;
    if (!path)
        path = getenv("RESIDENT_SOCKET");
    if (!path || !*path)
        path = RESIDENT_SOCKET_DEFAULT;
    if (strlen(path) >= sizeof(r->socket_path)) {
        free(r);
        return seterr(NULL, -ENAMETOOLONG, "socket path is longer than 107 bytes");
    }
    snprintf(r->socket_path, sizeof(r->socket_path), "%s", path);
    r->params.socket_path = NULL;   /* do not keep the caller's pointer */
    const char *name = r->params.client_name ? r->params.client_name : program_invocation_short_name;
    size_t nl = strlen(name);
    memcpy(r->client_name, name, nl < SHM_WIRE_NAME - 1 ? nl : SHM_WIRE_NAME - 1);
    r->params.client_name = NULL;
    r->next_id = 1;
    int ret = session_open(r);
    if (ret < 0) {
        seterr(NULL, ret, "%s", r->err);
        session_teardown(r);
        free(r);
        return ret;
    }
    *out = r;
    return 0;
}

RESIDENT_API int resident_reconnect(struct resident *r)
{
    session_teardown(r);
    int ret = session_open(r);
    if (ret < 0) {
        session_teardown(r);
        r->dead = 1;
    }
    return ret;
}

RESIDENT_API void resident_close(struct resident *r)
{
    if (!r)
        return;
    session_teardown(r);
    free(r);
}

RESIDENT_API int resident_fd(const struct resident *r)
{
    return r->epfd;
}

RESIDENT_API const char *resident_generator(const struct resident *r)
{
    return r->welcome.generator;
}

RESIDENT_API int resident_is_synthetic(const struct resident *r)
{
    return (r->welcome.flags & SHM_WELCOME_F_NULL_GENERATOR) != 0;
}


RESIDENT_API const char *resident_last_error(const struct resident *r)
{
    return r ? r->err : connect_err;
}

/* ---- requests ---- */

static void ring_doorbell(struct resident *r)
{
    uint64_t one = 1;
    ssize_t n = write(r->doorbell_fd, &one, sizeof(one));
    (void)n;    /* the daemon re-checks rings on its tick, so a lost ring only delays */
}

static void data_reclaim(struct resident *r)
{
    uint64_t head = atomic_load_explicit(&shm_region_req_ctl(&r->region)->head.v, memory_order_acquire);
    while (r->res_len) {
        struct data_res *d = &r->res[r->res_head];
        if ((int64_t)(head - d->req_pos) < 0)
            break;
        r->data_head = d->end;
        r->res_head = (r->res_head + 1) % DATA_RES_MAX;
        r->res_len--;
    }
    if (!r->res_len)
        r->data_head = r->data_tail;
}

/* Reserve `len` contiguous bytes in the data area; returns the offset. */
static int data_alloc(struct resident *r, uint64_t len, uint64_t *off, uint64_t *end)
{
    uint64_t size = r->region.layout.data_size;
    if (len > size)
        return -E2BIG;
    data_reclaim(r);
    if (r->res_len == DATA_RES_MAX)
        return -EAGAIN;
    uint64_t used = r->data_tail - r->data_head;
    uint64_t pos = r->data_tail;
    uint64_t to_end = size - pos % size;
    if (len > to_end)
        pos += to_end;      /* skip the tail of the area: allocations are contiguous */
    if (pos + len - r->data_head > size || used > size)
        return -EAGAIN;
    *off = pos % size;
    *end = pos + len;
    return 0;
}

_Static_assert(RESIDENT_DEFAULT_ALL == SHM_DEF_ALL && RESIDENT_DEFAULT_TOP_K == SHM_DEF_TOP_K &&
               RESIDENT_DEFAULT_PRESENCE_PENALTY == SHM_DEF_PRESENCE_PENALTY, "model-default bits are the wire's");
_Static_assert(RESIDENT_FEATURE_NO_CACHE == SHM_WELCOME_F_NO_PREFIX_CACHE &&
               RESIDENT_FEATURE_SUBMIT_EXT == SHM_WELCOME_F_SUBMIT_EXT &&
               RESIDENT_FEATURE_TOOL_CHOICE == SHM_WELCOME_F_TOOL_CHOICE, "feature bits are WELCOME's");

#define FEATURES_ALL (RESIDENT_FEATURE_NO_CACHE | RESIDENT_FEATURE_SUBMIT_EXT | RESIDENT_FEATURE_TOOL_CHOICE)

RESIDENT_API uint32_t resident_features(const struct resident *r)
{
    return r->welcome.flags & FEATURES_ALL;
}

/* Refuse here, with a message that says what to change, what the daemon
 * would refuse or not honour: the same checks as its decoder, plus the
 * features it advertised in WELCOME. */
static int request_check(struct resident *r, const struct resident_request *q)
{
    if (q->model_defaults & ~(uint32_t)RESIDENT_DEFAULT_ALL)
        return seterr(r, -EINVAL, "request model_defaults 0x%x has unknown bits (see RESIDENT_DEFAULT_*)",
                      (unsigned)q->model_defaults);
    if (!(q->presence_penalty >= -SHM_PENALTY_MAX && q->presence_penalty <= SHM_PENALTY_MAX))
        return seterr(r, -EINVAL, "request presence_penalty %g must be within -2..2", (double)q->presence_penalty);
    if (!(q->frequency_penalty >= -SHM_PENALTY_MAX && q->frequency_penalty <= SHM_PENALTY_MAX))
        return seterr(r, -EINVAL, "request frequency_penalty %g must be within -2..2", (double)q->frequency_penalty);
    uint32_t have = r->welcome.flags;
    if ((q->flags & RESIDENT_REQ_NO_CACHE) && !(have & SHM_WELCOME_F_NO_PREFIX_CACHE))
        return seterr(r, -EOPNOTSUPP, "RESIDENT_REQ_NO_CACHE: the connected residentd does not advertise "
                      "prefix-cache opt-out (RESIDENT_FEATURE_NO_CACHE); drop the flag or upgrade residentd");
    if ((q->presence_penalty != 0.0f || q->frequency_penalty != 0.0f || q->model_defaults) &&
        !(have & SHM_WELCOME_F_SUBMIT_EXT))
        return seterr(r, -EOPNOTSUPP, "presence/frequency penalties and model_defaults need a residentd that "
                      "advertises RESIDENT_FEATURE_SUBMIT_EXT; set them to 0 or upgrade residentd");
    return 0;
}

static int submit(struct resident *r, const struct resident_request *qin, uint32_t kind, const void *payload,
                  size_t len, uint64_t *id_out)
{
    struct resident_request q;
    if (r->dead)
        return seterr(r, -ECONNRESET, "the session is gone; call resident_reconnect()");
    /* A caller built against an older header passes a smaller struct:
     * take the fields it has, the defaults for the rest. Below the first
     * public layout (which ends with `flags`) the struct is not ours. */
    resident_request_init(&q);
    if (qin && qin->size >= offsetof(struct resident_request, flags) + sizeof(qin->flags)) {
        memcpy(&q, qin, qin->size < sizeof(q) ? qin->size : sizeof(q));
        q.size = sizeof(q);
    }
    int ret = request_check(r, &q);
    if (ret < 0)
        return ret;
    uint32_t wflags = q.flags & (RESIDENT_REQ_IGNORE_EOS | RESIDENT_REQ_NO_CACHE);
    if (q.presence_penalty != 0.0f || q.frequency_penalty != 0.0f || q.model_defaults)
        wflags |= SHM_REQ_F_EXT;
    if (!len || len > UINT32_MAX)
        return seterr(r, -EINVAL, "prompt must be 1..4 GiB bytes");
    if (q.n_stop_ids > SHM_STOP_IDS_MAX || q.n_stop_strings > SHM_STOP_STRS_MAX)
        return seterr(r, -EINVAL, "at most %u stop ids and %u stop strings", SHM_STOP_IDS_MAX, SHM_STOP_STRS_MAX);
    uint32_t blob = 0;
    for (uint32_t i = 0; i < q.n_stop_strings; i++) {
        size_t l = strlen(q.stop_strings[i]);
        if (l == 0 || l > SHM_STOP_STR_LEN_MAX)
            return seterr(r, -EINVAL, "stop string %u must be 1..%u bytes", i, SHM_STOP_STR_LEN_MAX);
        blob += 2u + (uint32_t)l;
    }
    uint64_t maxbody = shm_ring_max_record(r->req.cap) - SHM_REC_HDR;
    size_t inline_size = shm_proto_submit_size(wflags, q.n_stop_ids, blob, (uint32_t)len);
    int use_data = inline_size > maxbody;
    size_t body_size = use_data ? shm_proto_submit_size(wflags, q.n_stop_ids, blob, 0) : inline_size;
    if (body_size > maxbody)
        return seterr(r, -E2BIG, "stop lists do not fit one request record (%llu bytes)", (unsigned long long)maxbody);
    uint64_t doff = 0, dend = 0;
    if (use_data) {
        ret = data_alloc(r, len, &doff, &dend);
        if (ret == -E2BIG)
            return seterr(r, ret, "prompt of %zu bytes exceeds the session data area (%llu bytes; "
                          "set data_bytes when connecting)", len, (unsigned long long)r->region.layout.data_size);
        if (ret < 0)
            return seterr(r, ret, "data area busy with earlier prompts; read events and retry");
    }
    void *body;
    ret = shm_ring_prod_alloc(&r->req, SHM_REQ_SUBMIT, body_size, &body);
    if (ret == -EAGAIN)
        return seterr(r, ret, "request ring full; read events and retry");
    if (ret < 0)
        return seterr(r, ret == -EPROTO ? -EPROTO : ret, "request ring: %s", strerror(-ret));
    uint64_t id = q.id ? q.id : r->next_id++;
    struct shm_req_submit s = {
        .req_id = id, .kind = kind, .flags = wflags, .max_tokens = q.max_tokens,
        /* A field left to the model's default travels as 0 (the decoder insists). */
        .top_k = q.model_defaults & RESIDENT_DEFAULT_TOP_K ? 0 : q.top_k, .seed = q.seed,
        .temperature = q.model_defaults & RESIDENT_DEFAULT_TEMPERATURE ? 0.0f : q.temperature,
        .top_p = q.model_defaults & RESIDENT_DEFAULT_TOP_P ? 0.0f : q.top_p,
        .min_p = q.model_defaults & RESIDENT_DEFAULT_MIN_P ? 0.0f : q.min_p,
        .repeat_penalty = q.model_defaults & RESIDENT_DEFAULT_REPEAT_PENALTY ? 0.0f : q.repeat_penalty,
        .n_stop_ids = q.n_stop_ids, .n_stop_strs = q.n_stop_strings,
        .stop_strs_len = blob, .payload_len = (uint32_t)len,
        .payload_loc = use_data ? SHM_LOC_DATA : SHM_LOC_INLINE, .data_off = doff,
    };
    uint8_t *b = body;
    memcpy(b, &s, sizeof(s));
    b += sizeof(s);
    if (wflags & SHM_REQ_F_EXT) {
        struct shm_req_submit_ext x = {
            .size = sizeof(x), .model_defaults = q.model_defaults, .frequency_penalty = q.frequency_penalty,
            .presence_penalty = q.model_defaults & RESIDENT_DEFAULT_PRESENCE_PENALTY ? 0.0f : q.presence_penalty,
        };
        memcpy(b, &x, sizeof(x));
        b += sizeof(x);
    }
    if (q.n_stop_ids) {
        memcpy(b, q.stop_ids, 4ull * q.n_stop_ids);
        b += 4ull * q.n_stop_ids;
    }
    for (uint32_t i = 0; i < q.n_stop_strings; i++) {
        uint16_t l = (uint16_t)strlen(q.stop_strings[i]);
        memcpy(b, &l, 2);
        memcpy(b + 2, q.stop_strings[i], l);
        b += 2u + l;
    }
    if (use_data) {
        memcpy(r->region.base + r->region.layout.data_off + doff, payload, len);
        struct data_res *d = &r->res[(r->res_head + r->res_len) % DATA_RES_MAX];
        d->req_pos = r->req.tail;
        d->end = dend;
        r->res_len++;
        r->data_tail = dend;
    } else {
        memcpy(b, payload, len);
    }
    if (shm_ring_prod_publish(&r->req))
        ring_doorbell(r);
    if (id_out)
        *id_out = id;
    return 0;
}

RESIDENT_API int resident_submit_text(struct resident *r, const struct resident_request *q, const char *text,
                                      size_t len, int raw, uint64_t *id)
{
    return submit(r, q, raw ? SHM_PROMPT_RAW : SHM_PROMPT_TEXT, text, len, id);
}

RESIDENT_API int resident_submit_chat(struct resident *r, const struct resident_request *q, const char *json,
                                      size_t len, uint64_t *id)
{
    return submit(r, q, SHM_PROMPT_CHAT, json, len, id);
}

RESIDENT_API int resident_submit_ids(struct resident *r, const struct resident_request *q, const uint32_t *ids,
                                     size_t n, uint64_t *id)
{
    if (n > UINT32_MAX / 4)
        return seterr(r, -E2BIG, "too many prompt ids");
    return submit(r, q, SHM_PROMPT_IDS, ids, n * 4, id);
}

RESIDENT_API int resident_cancel(struct resident *r, uint64_t id)
{
    if (r->dead)
        return seterr(r, -ECONNRESET, "the session is gone");
    void *body;
    int ret = shm_ring_prod_alloc(&r->req, SHM_REQ_CANCEL, sizeof(struct shm_req_cancel), &body);
    if (ret < 0)
        return seterr(r, ret, "request ring: %s", strerror(-ret));
    struct shm_req_cancel c = { .req_id = id };
    memcpy(body, &c, sizeof(c));
    if (shm_ring_prod_publish(&r->req))
        ring_doorbell(r);
    return 0;
}

/* ---- events ---- */

/* Look at the control socket: BYE, ERROR or EOF mark the session dead. */
static void check_socket(struct resident *r)
{
    uint8_t buf[SHM_WIRE_MAX];
    for (;;) {
        ssize_t n = recv(r->sock, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            if (!r->dead && !r->bye)
                seterr(r, -ECONNRESET, "residentd closed the session%s", n < 0 ? " (socket error)" : "");
            r->dead = 1;
            return;
        }
        struct shm_wire_msg m;
        const char *why;
        if (shm_wire_decode(buf, (size_t)n, 0, &m, &why) < 0)
            continue;
        if (m.type == SHM_WIRE_ERROR) {
            seterr(r, m.u.error.code, "residentd ended the session: %s", m.u.error.msg);
            r->dead = 1;
        } else if (m.type == SHM_WIRE_BYE) {
            r->bye = 1;
            seterr(r, -ECONNRESET, "residentd is shutting down (in-flight work ends within %u ms)", m.u.bye.grace_ms);
        }
    }
}

static int take_event(struct resident *r, struct resident_event *ev)
{
    struct shm_rec_hdr h;
    int ret = shm_ring_cons_next(&r->evt, &h, r->evbuf, r->evbuf_size);
    if (ret <= 0) {
        if (ret < 0) {
            r->dead = 1;
            return seterr(r, -EPROTO, "residentd published an impossible event ring position or record");
        }
        return 0;
    }
    if (shm_ring_cons_release(&r->evt))
        ring_doorbell(r);
    size_t len = h.len - SHM_REC_HDR;
    const char *why = "";
    memset(ev, 0, sizeof(*ev));
    ev->message = "";
    switch (h.type) {
    case SHM_EVT_QUEUED: {
        struct shm_evt_queued q;
        if (shm_proto_decode_queued(r->evbuf, len, &q, &why) < 0)
            break;
        ev->type = RESIDENT_EVENT_QUEUED;
        ev->id = q.req_id;
        ev->prompt_tokens = q.prompt_tokens;
        return 1;
    }
    case SHM_EVT_TOKENS: {
        struct shm_tokens_view v;
        if (shm_proto_decode_tokens(r->evbuf, len, &v, &why) < 0)
            break;
        ev->type = RESIDENT_EVENT_TOKENS;
        ev->id = v.fixed.req_id;
        ev->n_tokens = v.fixed.n_tokens;
        ev->tokens = v.ids;
        ev->text_lens = v.text_lens;
        ev->text = v.text;
        ev->text_len = v.fixed.text_len;
        ev->channel = v.fixed.channel;
        return 1;
    }
    case SHM_EVT_DONE: {
        struct shm_evt_done d;
        const char *msg;
        if (shm_proto_decode_done(r->evbuf, len, &d, &msg, &why) < 0)
            break;
        size_t ml = d.msg_len < sizeof(r->msg) - 1 ? d.msg_len : sizeof(r->msg) - 1;
        memcpy(r->msg, msg, ml);
        r->msg[ml] = '\0';
        ev->type = RESIDENT_EVENT_DONE;
        ev->id = d.req_id;
        ev->finish = d.finish;
        ev->error = d.error;
        ev->message = r->msg;
        ev->prompt_tokens = d.prompt_tokens;
        ev->completion_tokens = d.completion_tokens;
        ev->cached_tokens = d.cached_tokens;
        ev->queue_us = d.queue_us;
        ev->ttft_us = d.ttft_us;
        ev->total_us = d.total_us;
        ev->decode_us = d.decode_us;
        return 1;
    }
    default:
        why = "unknown event type";
        break;
    }
    r->dead = 1;
    return seterr(r, -EPROTO, "bad event from residentd: %s", why);
}

RESIDENT_API int resident_poll(struct resident *r, struct resident_event *ev)
{
    if (!r->evbuf)
        return seterr(r, -ECONNRESET, "the session is gone; call resident_reconnect()");
    int ret = take_event(r, ev);
    if (ret != 0)
        return ret;
    if (!r->dead)
        check_socket(r);
    if (r->dead) {
        /* Events published before the daemon left are still delivered. */
        ret = take_event(r, ev);
        if (ret != 0)
            return ret;
        return -ECONNRESET;
    }
    return 0;
}

static void drain_wake(struct resident *r)
{
    uint64_t v;
    ssize_t n = read(r->wake_fd, &v, sizeof(v));   /* EFD_NONBLOCK: never blocks */
    (void)n;
}

static int64_t elapsed_ns(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000000ll + (t.tv_nsec - t0->tv_nsec);
}

RESIDENT_API int resident_arm(struct resident *r)
{
    if (!r->evbuf || r->dead)
        return 1;               /* resident_poll() reports the loss */
    /* Clear old wakeups first, so the fd is readable only for what comes
     * after; then the sleep handshake: flag, fence, re-check the tail. */
    drain_wake(r);
    if (!shm_ring_cons_arm_sleep(&r->evt))
        return 1;
    return 0;
}

RESIDENT_API int resident_wait(struct resident *r, struct resident_event *ev, int timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
    for (;;) {
        int ret = resident_poll(r, ev);
        if (ret != 0)
            return ret;
        /* Spin on the shared tail a little (memory only, no syscalls): a
         * busy stream is served without ever sleeping. Adaptive: when the
         * last gap between events outlasted the whole spin, events come
         * slower than SPIN_NS apart (a model decoding at tens of tokens per
         * second) and spinning would only burn up to 50 us of CPU per
         * event, more than the wakeup it tries to save; sleep at once until
         * a gap shorter than SPIN_NS shows the stream is fast again. */
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int pending = 0;
        if (!r->skip_spin)
            while (!(pending = shm_ring_cons_pending(&r->evt)) && elapsed_ns(&t0) < SPIN_NS)
                ;
        if (pending)
            continue;
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        if (shm_ring_cons_arm_sleep(&r->evt)) {
            struct epoll_event e[2];
            int n = epoll_wait(r->epfd, e, 2, left > INT32_MAX ? -1 : (int)left);
            shm_ring_cons_disarm_sleep(&r->evt);
            if (n < 0 && errno != EINTR)
                return seterr(r, -errno, "epoll_wait: %s", strerror(errno));
            /* The gap since the ring ran dry, spin included. */
            r->skip_spin = elapsed_ns(&t0) >= SPIN_NS;
            drain_wake(r);
        }
    }
}
