/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd under systemd's protocols, without systemd: a fake
 * NOTIFY_SOCKET must receive READY=1 once the socket is served and
 * STOPPING=1 on SIGTERM; with socket activation (LISTEN_FDS=1, a
 * listening SOCK_SEQPACKET socket on fd 3) residentd serves that socket
 * and leaves the path alone; a STREAM socket passed by mistake is refused
 * with a message naming ListenSequentialPacket=; SIGHUP reloads the config
 * file (RELOADING=1 ... READY=1) and a broken file keeps the running one.
 * Watchdog (WATCHDOG_USEC=200 ms): WATCHDOG=1 from the event loop every
 * 100 ms (at least 8 and at most 22 in 2 s, never two closer than 80 ms:
 * bounds loose enough for a loaded 2-CPU machine); none while the process
 * is stopped (SIGSTOP: the loop stalls), one (no burst) after SIGCONT; none
 * with WATCHDOG_PID naming another process. STATUS= (status_interval_sec
 * = 1): refreshed every second with sessions, tok/s and VmLck; a connected
 * client shows as "1 session", a 5-token request as a non-zero tok/s.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "tests/integration/harness.h"

static char dir[64], exe[512];

static int bind_unix(int type, const char *path, int listening)
{
    int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    unlink(path);
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (listening && listen(s, 16) < 0))
        return -1;
    return s;
}

/* Wait for a notify datagram containing `what`. */
static int wait_notify(int ns, const char *what, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    while (th_now_ms() < end) {
        struct pollfd p = { .fd = ns, .events = POLLIN };
        if (poll(&p, 1, 100) <= 0)
            continue;
        char buf[4096];
        ssize_t n = recv(ns, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        if (strstr(buf, what))
            return 1;
    }
    return 0;
}

static const char *config_file = "/dev/null";
static const char *watchdog_usec;        /* WATCHDOG_USEC for the child, or NULL */
static int watchdog_pid_other;           /* WATCHDOG_PID = the test's pid */
static const char *extra_opt;            /* one more -o KEY=VALUE, or NULL */

/* Collect datagrams containing `what` for `ms` milliseconds: how many, the
 * smallest gap between two (ms), and the text of the last one. */
static int count_notify(int ns, const char *what, int ms, uint64_t *min_gap, char *last, size_t lastlen)
{
    uint64_t end = th_now_ms() + (uint64_t)ms, prev = 0;
    int n = 0;
    if (min_gap)
        *min_gap = UINT64_MAX;
    while (th_now_ms() < end) {
        struct pollfd p = { .fd = ns, .events = POLLIN };
        if (poll(&p, 1, 10) <= 0)
            continue;
        char buf[4096];
        ssize_t k = recv(ns, buf, sizeof(buf) - 1, 0);
        if (k <= 0)
            continue;
        buf[k] = '\0';
        if (!strstr(buf, what))
            continue;
        uint64_t t = th_now_ms();
        if (n++ && min_gap && t - prev < *min_gap)
            *min_gap = t - prev;
        prev = t;
        if (last)
            snprintf(last, lastlen, "%s", buf);
    }
    return n;
}

static void drain(int ns)
{
    char buf[4096];
    while (recv(ns, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
}

static pid_t spawn(int listen_fd, const char *notify_path, const char *sock_path, const char *log)
{
    pid_t p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (lf >= 0)
            dup2(lf, 2);
        if (notify_path)
            setenv("NOTIFY_SOCKET", notify_path, 1);
        if (watchdog_usec) {
            char pid[32];
            snprintf(pid, sizeof(pid), "%d", (int)(watchdog_pid_other ? getppid() : getpid()));
            setenv("WATCHDOG_USEC", watchdog_usec, 1);
            setenv("WATCHDOG_PID", pid, 1);
        }
        if (listen_fd >= 0) {
            if (dup2(listen_fd, 3) < 0)
                _exit(126);
            char pid[32];
            snprintf(pid, sizeof(pid), "%d", (int)getpid());
            setenv("LISTEN_FDS", "1", 1);
            setenv("LISTEN_PID", pid, 1);
        }
        /* privileges = keep: as root under NOTIFY_SOCKET the default (auto)
         * would refuse to run (a unit must set User=). */
        execl(exe, exe, "--socket", sock_path, "--config", config_file, "-o", "socket_mode=0666",
              "-o", "privileges=keep", extra_opt ? "-o" : (char *)NULL, extra_opt, (char *)NULL);
        _exit(127);
    }
    return p;
}

static int client_ok(const char *sock)
{
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = sock;
    struct resident *r = NULL;
    for (int i = 0; i < 200 && resident_connect(&cp, &r) < 0; i++)
        usleep(10000);
    if (!r)
        return 0;
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 5;
    uint64_t id;
    int ok = resident_submit_text(r, &q, "sd", 2, 1, &id) == 0, done = 0;
    struct resident_event ev;
    while (ok && !done && resident_wait(r, &ev, 2000) == 1)
        done = ev.type == RESIDENT_EVENT_DONE && ev.completion_tokens == 5;
    resident_close(r);
    return done;
}

/* Ask for `n` tokens; returns the DONE error (0 = success with n tokens). */
static int request(const char *sock, uint32_t n)
{
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = sock;
    struct resident *r;
    if (resident_connect(&cp, &r) < 0)
        return -ECONNREFUSED;
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = n;
    uint64_t id;
    int ret = -EIO;
    if (resident_submit_text(r, &q, "cfg", 3, 1, &id) == 0) {
        struct resident_event ev;
        while (resident_wait(r, &ev, 3000) == 1)
            if (ev.type == RESIDENT_EVENT_DONE) {
                ret = ev.error ? ev.error : ev.completion_tokens == n ? 0 : -EIO;
                break;
            }
    }
    resident_close(r);
    return ret;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static int reap(pid_t p, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    int st;
    while (th_now_ms() < end) {
        if (waitpid(p, &st, WNOHANG) == p)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(5000);
    }
    kill(p, SIGKILL);
    waitpid(p, &st, 0);
    return -1;
}

int main(void)
{
    th_require_uring();
    const char *root = getenv("RESIDENT_BUILD_ROOT");
    snprintf(exe, sizeof(exe), "%s/daemon/residentd", root ? root : ".");
    snprintf(dir, sizeof(dir), "/tmp/resident-sd-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    char notify[128], sock[128], log[128];
    snprintf(notify, sizeof(notify), "%s/notify", dir);
    snprintf(sock, sizeof(sock), "%s/s.sock", dir);
    snprintf(log, sizeof(log), "%s/log", dir);

    /* sd_notify: READY=1 when serving, STOPPING=1 on SIGTERM. */
    int ns = bind_unix(SOCK_DGRAM, notify, 0);
    TH_CHECK(ns >= 0);
    pid_t p = spawn(-1, notify, sock, log);
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    TH_CHECK(client_ok(sock));
    kill(p, SIGTERM);
    TH_CHECK(wait_notify(ns, "STOPPING=1", 5000));
    TH_CHECK(reap(p, 5000) == 0);
    struct stat st;
    TH_CHECK(stat(sock, &st) < 0);   /* a socket it created itself is removed */

    /* Socket activation with the right socket type. */
    int ls = bind_unix(SOCK_SEQPACKET, sock, 1);
    TH_CHECK(ls >= 0);
    p = spawn(ls, notify, "/nonexistent/unused.sock", log);
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    TH_CHECK(client_ok(sock));
    kill(p, SIGTERM);
    TH_CHECK(reap(p, 5000) == 0);
    TH_CHECK(stat(sock, &st) == 0);  /* systemd's socket is not ours to unlink */
    close(ls);

    /* The wrong socket type is refused with a hint. */
    ls = bind_unix(SOCK_STREAM, sock, 1);
    p = spawn(ls, NULL, "/nonexistent/unused.sock", log);
    TH_CHECK(reap(p, 5000) != 0);
    close(ls);
    char buf[2048] = "";
    int lf = open(log, O_RDONLY);
    if (lf >= 0) {
        ssize_t n = read(lf, buf, sizeof(buf) - 1);
        buf[n > 0 ? n : 0] = '\0';
        close(lf);
    }
    TH_CHECK(strstr(buf, "ListenSequentialPacket") != NULL);

    /* SIGHUP re-reads the config file: RELOADING=1 ... READY=1, new limits
     * apply to new requests; a broken file keeps the running values. */
    char conf[128];
    snprintf(conf, sizeof(conf), "%s/residentd.conf", dir);
    write_file(conf, "max_new_tokens = 100\n");
    config_file = conf;
    p = spawn(-1, notify, sock, log);
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    TH_CHECK(request(sock, 200) == -E2BIG);
    write_file(conf, "# raised\nmax_new_tokens = 1000\n");
    kill(p, SIGHUP);
    TH_CHECK(wait_notify(ns, "RELOADING=1", 5000));
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    TH_CHECK(request(sock, 200) == 0);
    write_file(conf, "max_new_tokens = lots\n");
    kill(p, SIGHUP);
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    TH_CHECK(request(sock, 200) == 0);
    kill(p, SIGTERM);
    TH_CHECK(reap(p, 5000) == 0);
    lf = open(log, O_RDONLY);
    if (lf >= 0) {
        ssize_t n = read(lf, buf, sizeof(buf) - 1);
        buf[n > 0 ? n : 0] = '\0';
        close(lf);
    }
    TH_CHECK(strstr(buf, "keeping the running one") != NULL && strstr(buf, ":1:") != NULL);
    unlink(conf);

    /* Watchdog and periodic STATUS=. */
    config_file = "/dev/null";
    watchdog_usec = "200000";
    extra_opt = "status_interval_sec=1";
    p = spawn(-1, notify, sock, log);
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    uint64_t gap;
    int pings = count_notify(ns, "WATCHDOG=1", 2000, &gap, NULL, 0);
    printf("watchdog: %d pings in 2000 ms (expected ~20 at WATCHDOG_USEC/2 = 100 ms), smallest gap %llu ms\n",
           pings, (unsigned long long)gap);
    TH_CHECK(pings >= 8 && pings <= 22);
    TH_CHECK(gap >= 80);
    kill(p, SIGSTOP);                  /* the loop stalls */
    usleep(50000);
    drain(ns);
    int stalled = count_notify(ns, "WATCHDOG=1", 600, NULL, NULL, 0);
    kill(p, SIGCONT);
    int after = count_notify(ns, "WATCHDOG=1", 150, NULL, NULL, 0);
    int later = count_notify(ns, "WATCHDOG=1", 850, NULL, NULL, 0);
    printf("watchdog: %d pings while stopped 600 ms; after SIGCONT %d in 150 ms, %d in the next 850 ms\n",
           stalled, after, later);
    TH_CHECK(stalled == 0);
    TH_CHECK(after <= 2 && after + later >= 1);     /* resumed, no catch-up burst */
    char last[4096] = "";
    int statuses = count_notify(ns, "STATUS=serving", 2600, NULL, last, sizeof(last));
    printf("status: %d STATUS= lines in 2600 ms at status_interval_sec = 1; last: %s\n", statuses, last);
    TH_CHECK(statuses >= 2 && statuses <= 4);
    TH_CHECK(strstr(last, "tok/s") && strstr(last, "VmLck") && strstr(last, "0 sessions"));
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = sock;
    struct resident *held = NULL;
    TH_CHECK(resident_connect(&cp, &held) == 0);
    TH_CHECK(request(sock, 5) == 0);
    int saw_session = 0, saw_rate = 0;
    for (int i = 0; i < 3 && !(saw_session && saw_rate); i++) {
        count_notify(ns, "STATUS=serving", 1100, NULL, last, sizeof(last));
        saw_session |= strstr(last, " 1 session,") != NULL;
        saw_rate |= strstr(last, " 0.0 tok/s") == NULL && strstr(last, "tok/s") != NULL;
    }
    printf("status with a client connected after a 5-token request: %s\n", last);
    TH_CHECK(saw_session && saw_rate);
    if (held)
        resident_close(held);
    kill(p, SIGTERM);
    TH_CHECK(reap(p, 5000) == 0);

    /* WATCHDOG_PID of another process: the watchdog is not ours. */
    watchdog_pid_other = 1;
    p = spawn(-1, notify, sock, log);
    TH_CHECK(wait_notify(ns, "READY=1", 5000));
    pings = count_notify(ns, "WATCHDOG=1", 600, NULL, NULL, 0);
    TH_CHECK(pings == 0);
    kill(p, SIGTERM);
    TH_CHECK(reap(p, 5000) == 0);
    watchdog_usec = NULL;
    extra_opt = NULL;

    close(ns);
    unlink(notify);
    unlink(sock);
    unlink(log);
    rmdir(dir);
    if (th_failures) {
        fprintf(stderr, "test-systemd: %d failures\n", th_failures);
        return 1;
    }
    printf("test-systemd: ok\n");
    return 0;
}
