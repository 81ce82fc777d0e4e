/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPC benchmark: how fast do tokens travel from a producer to a client?
 *
 * Transport micro-benchmarks (two processes, one message per "token", each
 * carrying its CLOCK_MONOTONIC send time, paced every --gap-us so the
 * reader really goes to sleep between tokens):
 *   shm-wake   resident's event ring (shm/ring.h) + eventfd wake, reader sleeps
 *              with libresident's policy: spin up to 50 us, unless the last
 *              gap outlasted the spin (adaptive, resident_wait())
 *   shm-fixed  the same with the earlier policy: always spin 50 us first
 *   shm-spin   the same ring, reader busy-polls
 *   unix       a Unix stream socket, one write() per token
 *   sse        HTTP/1.1 Server-Sent Events over loopback TCP: one chunk per
 *              token, "data: {json}\n\n", as an OpenAI-style server streams
 * reporting one-way latency p50/p99 and CPU time per token (both processes,
 * including the producer's timer wakeup that paces it, the same in every
 * transport, and the two clock reads per token that timestamp it). A
 * `floor` row measures that common part alone (one process sleeps and wakes
 * on the same schedule and reads the clock twice per token, sending
 * nothing), so the transport's own share is a row minus the floor; both
 * are printed.
 * Rows run with 1, 16 and 64 tokens per producer wakeup (residentd
 * publishes a compute step of up to max_batch = 64 streams at once).
 *
 * Through residentd (null generator; spawns ../daemon/residentd next to
 * this binary, or uses --socket):
 *   rtt        submit a 1-token request, wait for DONE: p50/p99
 *   streams    events/s with 1..64 concurrent sessions streaming
 *   prompt     cost of submitting a 120 KB (30K-token) prompt
 *
 * Usage: ipc-bench [--quick] [--gap-us N] [--socket PATH]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/resident.h"
#include "shm/region.h"
#include "shm/ring.h"

static int n_msgs = 20000;
static int gap_us = 50;
/* Tokens per producer wakeup: residentd publishes a whole compute step (one
 * token of every stream of a session) with one tail store and one wake. */
static int batch = 1;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleep until an absolute time: the producer pays one timer wakeup per
 * token in every transport alike, as a real generator waits for its GPU. */
static void pace(uint64_t until)
{
    struct timespec ts = { .tv_sec = (time_t)(until / 1000000000ull), .tv_nsec = (long)(until % 1000000000ull) };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double cpu_s(const struct rusage *u)
{
    return (double)u->ru_utime.tv_sec + u->ru_utime.tv_usec / 1e6 + (double)u->ru_stime.tv_sec +
           u->ru_stime.tv_usec / 1e6;
}

struct lat_result {
    double p50_us, p99_us, cpu_us_per_token;
};

static void report(const char *name, uint64_t *lat, int n, double cpu_total_s, struct lat_result *out)
{
    qsort(lat, (size_t)n, sizeof(uint64_t), cmp_u64);
    out->p50_us = lat[n / 2] / 1e3;
    out->p99_us = lat[(size_t)n * 99 / 100] / 1e3;
    out->cpu_us_per_token = cpu_total_s * 1e6 / n;
    printf("%-10s one-way p50 %8.2f us  p99 %8.2f us  CPU %7.2f us/token (both sides; %d tokens, %d per wakeup, "
           "gap %d us)\n", name, out->p50_us, out->p99_us, out->cpu_us_per_token, n, batch, gap_us);
}

/* ---- shm ring ---- */

enum shm_mode { SHM_WAKE, SHM_SPIN, SHM_FIXED };
#define READER_SPIN_NS 50000    /* libresident's SPIN_NS */

static void bench_shm(enum shm_mode mode, struct lat_result *res, struct rusage *base_children)
{
    const int spin = mode == SHM_SPIN;
    int skip_spin = 0;
    struct shm_region reg;
    if (shm_region_create(&reg, 1, 4096, 65536, 0) < 0) {
        perror("region");
        exit(1);
    }
    int wake = eventfd(0, EFD_CLOEXEC);
    uint64_t *lat = calloc((size_t)n_msgs, sizeof(uint64_t));
    struct rusage ru0, ru1, rc;
    getrusage(RUSAGE_SELF, &ru0);
    pid_t p = fork();
    if (p == 0) {
        struct shm_ring_prod pr;
        shm_ring_prod_init(&pr, shm_region_evt_ctl(&reg), reg.base + reg.layout.evt_data_off, reg.layout.evt_cap);
        usleep(20000);
        uint64_t t0 = now_ns();
        for (int i = 0; i < n_msgs; i++) {
            if (i % batch == 0)
                pace(t0 + (uint64_t)(i / batch + 1) * (uint64_t)gap_us * 1000);
            void *b;
            while (shm_ring_prod_alloc(&pr, 0x102, 16, &b) == -EAGAIN)
                ;
            uint64_t t = now_ns();
            memcpy(b, &t, 8);
            if ((i + 1) % batch != 0 && i + 1 != n_msgs)
                continue;
            if (shm_ring_prod_publish(&pr)) {
                uint64_t one = 1;
                if (write(wake, &one, 8) != 8)
                    _exit(1);
            }
        }
        _exit(0);
    }
    struct shm_ring_cons c;
    shm_ring_cons_init(&c, shm_region_evt_ctl(&reg), reg.base + reg.layout.evt_data_off, reg.layout.evt_cap);
    uint8_t buf[1024];
    struct shm_rec_hdr h;
    for (int got = 0; got < n_msgs;) {
        int r = shm_ring_cons_next(&c, &h, buf, sizeof(buf));
        if (r == 1) {
            uint64_t t;
            memcpy(&t, buf, 8);
            lat[got++] = now_ns() - t;
            shm_ring_cons_release(&c);
            continue;
        }
        if (spin)
            continue;
        /* libresident's policy (resident_wait): spin, then sleep on the
         * eventfd; SHM_WAKE skips the spin while gaps outlast it. */
        uint64_t s = now_ns();
        if (mode == SHM_FIXED || !skip_spin)
            while (shm_ring_cons_pending(&c) == 0 && now_ns() - s < READER_SPIN_NS)
                ;
        if (shm_ring_cons_pending(&c))
            continue;
        if (shm_ring_cons_arm_sleep(&c)) {
            uint64_t v;
            if (read(wake, &v, 8) < 0)
                exit(1);
            shm_ring_cons_disarm_sleep(&c);
            skip_spin = now_ns() - s >= READER_SPIN_NS;
        }
    }
    waitpid(p, NULL, 0);
    getrusage(RUSAGE_SELF, &ru1);
    getrusage(RUSAGE_CHILDREN, &rc);
    double cpu = cpu_s(&ru1) - cpu_s(&ru0) + cpu_s(&rc) - cpu_s(base_children);
    report(mode == SHM_SPIN ? "shm-spin" : mode == SHM_FIXED ? "shm-fixed" : "shm-wake", lat, n_msgs, cpu, res);
    free(lat);
    close(wake);
    shm_region_destroy(&reg);
}

/* ---- the common floor: pacing and timestamps ---- */

/* CPU per token of what every row below pays besides its transport: the
 * producer's timer wakeups and the two clock reads per token (the send
 * stamp and the reader's arrival stamp; clock_gettime costs ~80 ns on this
 * VM, not negligible next to a ring record). */
static double bench_pace_floor(struct rusage *base_children)
{
    pid_t p = fork();
    if (p == 0) {
        uint64_t t0 = now_ns();
        volatile uint64_t sink = 0;
        for (int i = 0; i < n_msgs; i++) {
            if (i % batch == 0)
                pace(t0 + (uint64_t)(i / batch + 1) * (uint64_t)gap_us * 1000);
            sink += now_ns();
            sink += now_ns();
        }
        (void)sink;
        _exit(0);
    }
    waitpid(p, NULL, 0);
    struct rusage rc;
    getrusage(RUSAGE_CHILDREN, &rc);
    double us = (cpu_s(&rc) - cpu_s(base_children)) * 1e6 / n_msgs;
    printf("%-10s CPU %7.2f us/token (timer wakeups + 2 clock reads per token, no transport; %d per wakeup, "
           "gap %d us)\n", "floor", us, batch, gap_us);
    return us;
}

/* ---- Unix stream socket, one write per token ---- */

static void bench_unix(struct lat_result *res, struct rusage *base_children)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    uint64_t *lat = calloc((size_t)n_msgs, sizeof(uint64_t));
    struct rusage ru0, ru1, rc;
    getrusage(RUSAGE_SELF, &ru0);
    pid_t p = fork();
    if (p == 0) {
        close(sv[0]);
        uint64_t t0 = now_ns();
        for (int i = 0; i < n_msgs; i++) {
            if (i % batch == 0)
                pace(t0 + (uint64_t)(i / batch + 1) * (uint64_t)gap_us * 1000);
            uint64_t msg[2] = { now_ns(), (uint64_t)i };
            if (write(sv[1], msg, sizeof(msg)) != sizeof(msg))
                _exit(1);
        }
        _exit(0);
    }
    close(sv[1]);
    uint8_t buf[4096];
    size_t have = 0;
    int got = 0;
    while (got < n_msgs) {
        ssize_t n = read(sv[0], buf + have, sizeof(buf) - have);
        if (n <= 0)
            break;
        uint64_t t = now_ns();
        have += (size_t)n;
        size_t off = 0;
        while (have - off >= 16 && got < n_msgs) {
            uint64_t s;
            memcpy(&s, buf + off, 8);
            lat[got++] = t - s;
            off += 16;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    waitpid(p, NULL, 0);
    getrusage(RUSAGE_SELF, &ru1);
    getrusage(RUSAGE_CHILDREN, &rc);
    double cpu = cpu_s(&ru1) - cpu_s(&ru0) + cpu_s(&rc) - cpu_s(base_children);
    report("unix", lat, got, cpu, res);
    free(lat);
    close(sv[0]);
}

/* ---- HTTP/1.1 SSE over loopback TCP ---- */

static void bench_sse(struct lat_result *res, struct rusage *base_children)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0) {
        perror("sse listen");
        return;
    }
    socklen_t sl = sizeof(sa);
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    uint64_t *lat = calloc((size_t)n_msgs, sizeof(uint64_t));
    struct rusage ru0, ru1, rc;
    getrusage(RUSAGE_SELF, &ru0);
    pid_t p = fork();
    if (p == 0) {
        /* The server: read the request, answer with a chunked SSE stream. */
        int c = accept(ls, NULL, NULL);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        char req[4096];
        size_t have = 0;
        while (have < sizeof(req) - 1) {
            ssize_t n = read(c, req + have, sizeof(req) - 1 - have);
            if (n <= 0)
                _exit(1);
            have += (size_t)n;
            req[have] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        const char *hdr = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n";
        if (write(c, hdr, strlen(hdr)) < 0)
            _exit(1);
        uint64_t t0 = now_ns();
        for (int i = 0; i < n_msgs; i++) {
            if (i % batch == 0)
                pace(t0 + (uint64_t)(i / batch + 1) * (uint64_t)gap_us * 1000);
            char ev[512], chunk[600];
            int el = snprintf(ev, sizeof(ev),
                              "data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"t\":%llu,"
                              "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d \"}}]}\n\n",
                              (unsigned long long)now_ns(), i);
            int cl = snprintf(chunk, sizeof(chunk), "%x\r\n%s\r\n", el, ev);
            if (write(c, chunk, (size_t)cl) != cl)
                _exit(1);
        }
        if (write(c, "0\r\n\r\n", 5) < 0)
            _exit(1);
        close(c);
        _exit(0);
    }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("sse connect");
        return;
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const char *get = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                      "Content-Length: 0\r\n\r\n";
    if (write(s, get, strlen(get)) < 0)
        return;
    /* Client: parse chunked framing and SSE events, extract "t". */
    static char buf[1 << 16];
    size_t have = 0;
    int got = 0, hdr_done = 0;
    while (got < n_msgs) {
        ssize_t n = read(s, buf + have, sizeof(buf) - 1 - have);
        if (n <= 0)
            break;
        uint64_t t = now_ns();
        have += (size_t)n;
        buf[have] = '\0';
        char *pos = buf;
        if (!hdr_done) {
            char *e = strstr(pos, "\r\n\r\n");
            if (!e)
                continue;
            pos = e + 4;
            hdr_done = 1;
        }
        for (;;) {
            char *crlf = strstr(pos, "\r\n");
            if (!crlf)
                break;
            unsigned long len = strtoul(pos, NULL, 16);
            char *data = crlf + 2;
            if ((size_t)(data - buf) + len + 2 > have)
                break;
            char *tp = strstr(data, "\"t\":");
            if (len && tp && got < n_msgs)
                lat[got++] = t - strtoull(tp + 4, NULL, 10);
            pos = data + len + 2;
            if (!len)
                break;
        }
        have -= (size_t)(pos - buf);
        memmove(buf, pos, have);
    }
    waitpid(p, NULL, 0);
    getrusage(RUSAGE_SELF, &ru1);
    getrusage(RUSAGE_CHILDREN, &rc);
    double cpu = cpu_s(&ru1) - cpu_s(&ru0) + cpu_s(&rc) - cpu_s(base_children);
    report("sse", lat, got, cpu, res);
    free(lat);
    close(s);
    close(ls);
}

/* ---- through residentd ---- */

static char sock_path[108];
static pid_t daemon_pid;

static int start_daemon(void)
{
    char self[PATH_MAX], exe[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    snprintf(exe, sizeof(exe), "%s/residentd", dirname(self));
    snprintf(sock_path, sizeof(sock_path), "/tmp/ipc-bench-%d.sock", (int)getpid());
    daemon_pid = fork();
    if (daemon_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", 1);
        dup2(null, 2);
        execl(exe, exe, "--socket", sock_path, "--config", "/dev/null", "-o", "privileges=keep",
              "-o", "max_inflight_per_uid=1024",
              "-o", "max_sessions_per_uid=128", "-o", "max_batch=128", "-o", "max_fds_per_uid=1024",
              "-o", "max_ring_bytes_per_uid=1073741824", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 300; i++) {
        struct resident *r;
        struct resident_connect_params cp;
        resident_connect_params_init(&cp);
        cp.socket_path = sock_path;
        if (resident_connect(&cp, &r) == 0) {
            resident_close(r);
            return 0;
        }
        usleep(10000);
    }
    return -1;
}

static struct resident *open_session(void)
{
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = sock_path;
    cp.client_name = "ipc-bench";
    struct resident *r;
    if (resident_connect(&cp, &r) < 0) {
        fprintf(stderr, "ipc-bench: %s\n", resident_last_error(NULL));
        exit(1);
    }
    return r;
}

static void bench_rtt(void)
{
    struct resident *r = open_session();
    int n = n_msgs / 4;
    uint64_t *lat = calloc((size_t)n, sizeof(uint64_t));
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 1;
    for (int i = 0; i < n; i++) {
        uint64_t t = now_ns(), id;
        if (resident_submit_text(r, &q, "ping", 4, 1, &id) < 0)
            exit(1);
        struct resident_event ev;
        while (resident_wait(r, &ev, 1000) == 1 && !(ev.type == RESIDENT_EVENT_DONE && ev.id == id))
            ;
        lat[i] = now_ns() - t;
    }
    qsort(lat, (size_t)n, sizeof(uint64_t), cmp_u64);
    printf("rtt        submit -> DONE of a 1-token request via residentd: p50 %.2f us  p99 %.2f us (%d requests)\n",
           lat[n / 2] / 1e3, lat[(size_t)n * 99 / 100] / 1e3, n);
    free(lat);
    resident_close(r);
}

struct stream_arg {
    uint64_t tokens;
    uint64_t stop_at;
};

static void *stream_main(void *arg)
{
    struct stream_arg *a = arg;
    struct resident *r = open_session();
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 4096;
    uint64_t id = 0;
    int active = 0;
    while (now_ns() < a->stop_at) {
        if (!active) {
            if (resident_submit_text(r, &q, "stream", 6, 1, &id) < 0)
                break;
            active = 1;
        }
        struct resident_event ev;
        int ret = resident_wait(r, &ev, 100);
        if (ret < 0)
            break;
        if (ret == 1 && ev.type == RESIDENT_EVENT_TOKENS)
            a->tokens += ev.n_tokens;
        if (ret == 1 && ev.type == RESIDENT_EVENT_DONE)
            active = 0;
    }
    resident_close(r);
    return NULL;
}

static double proc_cpu_s(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p)
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st);
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void bench_streams(int quick)
{
    static const int counts[] = { 1, 4, 16, 64 };
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
        int n = counts[k];
        pthread_t th[64];
        struct stream_arg args[64];
        memset(args, 0, sizeof(args));
        uint64_t dur = quick ? 300000000ull : 1000000000ull;
        uint64_t t0 = now_ns();
        struct rusage u0, u1;
        getrusage(RUSAGE_SELF, &u0);
        double d0 = proc_cpu_s(daemon_pid);
        for (int i = 0; i < n; i++) {
            args[i].stop_at = t0 + dur;
            pthread_create(&th[i], NULL, stream_main, &args[i]);
        }
        uint64_t total = 0;
        for (int i = 0; i < n; i++) {
            pthread_join(th[i], NULL);
            total += args[i].tokens;
        }
        double secs = (now_ns() - t0) / 1e9;
        getrusage(RUSAGE_SELF, &u1);
        double cpu = cpu_s(&u1) - cpu_s(&u0) + proc_cpu_s(daemon_pid) - d0;
        printf("streams    %2d concurrent: %10.0f events/s total (%.0f per stream), CPU %.2f us/token (daemon+clients)\n",
               n, total / secs, total / secs / n, total ? cpu * 1e6 / (double)total : 0.0);
    }
}

static void bench_prompt(void)
{
    struct resident *r = open_session();
    size_t len = 120000;
    char *p = malloc(len);
    for (size_t i = 0; i < len; i++)
        p[i] = (char)('a' + i % 26);
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 1;
    int n = 200;
    uint64_t *sub = calloc((size_t)n, sizeof(uint64_t)), *queued = calloc((size_t)n, sizeof(uint64_t));
    for (int i = 0; i < n; i++) {
        uint64_t t = now_ns(), id;
        if (resident_submit_text(r, &q, p, len, 1, &id) < 0) {
            fprintf(stderr, "prompt submit: %s\n", resident_last_error(r));
            exit(1);
        }
        sub[i] = now_ns() - t;
        struct resident_event ev;
        int seen_q = 0;
        while (resident_wait(r, &ev, 1000) == 1) {
            if (ev.type == RESIDENT_EVENT_QUEUED && ev.id == id && !seen_q) {
                queued[i] = now_ns() - t;
                seen_q = 1;
            }
            if (ev.type == RESIDENT_EVENT_DONE && ev.id == id)
                break;
        }
    }
    qsort(sub, (size_t)n, sizeof(uint64_t), cmp_u64);
    qsort(queued, (size_t)n, sizeof(uint64_t), cmp_u64);
    printf("prompt     120 KB (30K tokens): submit call p50 %.1f us, submit -> QUEUED p50 %.1f us p99 %.1f us\n",
           sub[n / 2] / 1e3, queued[n / 2] / 1e3, queued[(size_t)n * 99 / 100] / 1e3);
    free(sub);
    free(queued);
    free(p);
    resident_close(r);
}

int main(int argc, char **argv)
{
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
            n_msgs = 4000;
        } else if (strcmp(argv[i], "--gap-us") == 0 && i + 1 < argc) {
            gap_us = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            snprintf(sock_path, sizeof(sock_path), "%s", argv[++i]);
        } else {
            fprintf(stderr, "usage: ipc-bench [--quick] [--gap-us N] [--socket PATH]\n");
            return 2;
        }
    }
    struct lat_result wake, spin, ux, sse;
    struct rusage base;
    getrusage(RUSAGE_CHILDREN, &base);
    double floor1 = bench_pace_floor(&base);
    struct lat_result fixed;
    getrusage(RUSAGE_CHILDREN, &base);
    bench_shm(SHM_WAKE, &wake, &base);
    getrusage(RUSAGE_CHILDREN, &base);
    bench_shm(SHM_FIXED, &fixed, &base);
    getrusage(RUSAGE_CHILDREN, &base);
    bench_shm(SHM_SPIN, &spin, &base);
    getrusage(RUSAGE_CHILDREN, &base);
    bench_unix(&ux, &base);
    getrusage(RUSAGE_CHILDREN, &base);
    bench_sse(&sse, &base);
    printf("ratio vs sse: p50 latency %.1fx (shm-wake) %.1fx (shm-spin); CPU/token %.1fx (shm-wake), "
           "%.1fx above the floor; shm-fixed CPU/token %.1fx\n", sse.p50_us / wake.p50_us, sse.p50_us / spin.p50_us,
           sse.cpu_us_per_token / wake.cpu_us_per_token,
           (sse.cpu_us_per_token - floor1) / (wake.cpu_us_per_token - floor1),
           sse.cpu_us_per_token / fixed.cpu_us_per_token);
    /* 16 and 64 streams stepping together: one wake per step for the ring,
     * one write per token for the sockets (each stream is its own event). */
    static const int steps[] = { 16, 64 };
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        batch = steps[k];
        getrusage(RUSAGE_CHILDREN, &base);
        double fl = bench_pace_floor(&base);
        getrusage(RUSAGE_CHILDREN, &base);
        bench_shm(SHM_WAKE, &wake, &base);
        getrusage(RUSAGE_CHILDREN, &base);
        bench_shm(SHM_FIXED, &fixed, &base);
        getrusage(RUSAGE_CHILDREN, &base);
        bench_unix(&ux, &base);
        getrusage(RUSAGE_CHILDREN, &base);
        bench_sse(&sse, &base);
        printf("ratio vs sse, %d tokens per step: p50 latency %.1fx, CPU/token %.1fx (shm-wake), %.1fx above the "
               "floor; shm-fixed CPU/token %.1fx\n", batch, sse.p50_us / wake.p50_us,
               sse.cpu_us_per_token / wake.cpu_us_per_token, (sse.cpu_us_per_token - fl) / (wake.cpu_us_per_token - fl),
               sse.cpu_us_per_token / fixed.cpu_us_per_token);
    }
    batch = 1;

    int own = !sock_path[0];
    if (own && start_daemon() < 0) {
        fprintf(stderr, "ipc-bench: cannot start residentd next to this binary\n");
        return 1;
    }
    bench_rtt();
    bench_streams(quick);
    bench_prompt();
    if (own) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
    }
    return 0;
}
