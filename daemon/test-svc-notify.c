/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sd_notify protocol as systemd sees it: a fake NOTIFY_SOCKET (AF_UNIX
 * datagram) records what a forked "daemon" sends, with arrival times, and
 * the test checks the messages, their order, the watchdog rate (WATCHDOG_USEC
 * = 100 ms, so a ping every 50 ms), that a stalled loop stops pinging, and
 * that everything is a silent success without NOTIFY_SOCKET.
 */
#include "daemon/svc-notify.h"
#include "daemon/svc-testlib.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WATCHDOG_USEC   100000u     /* 100 ms -> ping every 50 ms */
#define SERVE_MS        600u
#define STALL_MS        400u

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* The "daemon": load, READY, serve (pinging), stall, reload, stop. */
static void run_daemon(void)
{
    struct svc_notify n;
    uint64_t start;

    T_CHECK(svc_notify_init(&n) == 0);
    T_CHECK(n.connected);
    T_CHECK(n.watchdog_usec == WATCHDOG_USEC);
    T_CHECK(svc_notify_status(&n, "loading: %d%%", 10) == 0);
    T_CHECK(svc_notify_status(&n, "inject\nREADY=1") == 0);
    T_CHECK(svc_notify_extend_timeout(&n, 30000000u) == 0);
    T_CHECK(svc_notify_status(&n, "loading: %d%%", 100) == 0);
    T_CHECK(svc_notify_ready(&n, "serving") == 0);
    T_CHECK(svc_notify_ready(&n, "again") == -EALREADY);
    /* Right after READY the next ping is half an interval away. */
    T_CHECK(!svc_watchdog_due(&n, svc_now_usec()));
    T_CHECK(svc_watchdog_next_usec(&n, svc_now_usec()) <= WATCHDOG_USEC / 2);

    /* The event loop: wake at least every 5 ms, ping when due. */
    start = svc_now_usec();
    while (svc_now_usec() - start < SERVE_MS * 1000u) {
        uint64_t now = svc_now_usec();

        if (svc_watchdog_due(&n, now))
            T_CHECK(svc_watchdog_ping(&n, now) == 0);
        sleep_ms(5);
    }
    T_CHECK(svc_notify_serving(&n, 2, 31.5, 3u << 20) == 0);
    /* A stalled loop: no calls at all for STALL_MS. */
    sleep_ms(STALL_MS);
    /* The loop comes back: it pings once, immediately, not a burst. */
    T_CHECK(svc_watchdog_due(&n, svc_now_usec()));
    T_CHECK(svc_watchdog_ping(&n, svc_now_usec()) == 0);
    T_CHECK(!svc_watchdog_due(&n, svc_now_usec()));

    T_CHECK(svc_notify_reloading(&n) == 0);
    T_CHECK(svc_notify_reloaded(&n, "serving (reloaded)") == 0);
    T_CHECK(svc_notify_stopping(&n, "shutting down") == 0);
    _exit(T_PASS);
}

struct rec {
    char     text[512];
    uint64_t at_ms;
};

static void test_protocol(const char *dir)
{
    static struct rec recs[256];
    size_t n = 0, pings = 0, i_ready = 0, i_reloading = 0, i_ready2 = 0, i_stopping = 0;
    size_t i_status10 = 0, i_status100 = 0;
    uint64_t max_gap = 0, min_gap = UINT64_MAX, first_ping = 0;
    char val[64];
    pid_t pid;
    int fd, st;

    fd = svc_testlib_notify_listen(dir);
    T_CHECKF(fd >= 0, "%s", strerror(-fd));
    snprintf(val, sizeof(val), "%u", WATCHDOG_USEC);
    setenv("WATCHDOG_USEC", val, 1);
    unsetenv("WATCHDOG_PID");

    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0)
        run_daemon();

    for (;;) {
        int r;

        T_CHECK(n < sizeof(recs) / sizeof(recs[0]));
        r = svc_testlib_notify_recv(fd, recs[n].text, sizeof(recs[n].text), 3000, NULL, NULL);
        T_CHECKF(r > 0, "no message within 3 s after %zu messages", n);
        /* the kernel's arrival time, not this reader's: under load the
         * listener can be descheduled and then read two pings at once */
        recs[n].at_ms = svc_testlib_notify_arrival_ms();
        if (!recs[n].at_ms)
            recs[n].at_ms = svc_testlib_now_ms();
        n++;
        if (strncmp(recs[n - 1].text, "STOPPING=1", 10) == 0)
            break;
    }
    st = svc_testlib_wait(pid);
    T_CHECKF(st == 0, "daemon child exited %d", st);

    /* Walk the log; positions are 1-based so 0 means "not seen". */
    for (size_t i = 0; i < n; i++) {
        const char *t = recs[i].text;

        printf("  %6llu ms  %s\n", (unsigned long long)(recs[i].at_ms - recs[0].at_ms), t);
        if (!strcmp(t, "STATUS=loading: 10%"))
            i_status10 = i + 1;
        else if (!strcmp(t, "STATUS=loading: 100%"))
            i_status100 = i + 1;
        else if (!strncmp(t, "STATUS=inject", 13))
            T_CHECKF(!strchr(t, '\n'), "a newline in STATUS= must not start a new assignment");
        else if (!strcmp(t, "READY=1\nSTATUS=serving")) {
            T_CHECKF(!i_ready, "READY=1 sent twice");
            i_ready = i + 1;
        } else if (!strcmp(t, "WATCHDOG=1")) {
            T_CHECKF(i_ready, "WATCHDOG=1 before READY=1");
            if (pings) {
                uint64_t gap = recs[i].at_ms - recs[first_ping].at_ms;

                if (gap > max_gap)
                    max_gap = gap;
                if (gap < min_gap)
                    min_gap = gap;
            }
            first_ping = i;     /* reused as "previous ping" */
            pings++;
        } else if (!strncmp(t, "RELOADING=1\nMONOTONIC_USEC=", 27))
            i_reloading = i + 1;
        else if (!strcmp(t, "READY=1\nSTATUS=serving (reloaded)"))
            i_ready2 = i + 1;
        else if (!strcmp(t, "STOPPING=1\nSTATUS=shutting down"))
            i_stopping = i + 1;
    }
    T_CHECK(i_status10 && i_status100 && i_ready && i_reloading && i_ready2 && i_stopping);
    T_CHECK(i_status10 < i_status100 && i_status100 < i_ready);
    T_CHECK(i_ready < i_reloading && i_reloading < i_ready2 && i_ready2 < i_stopping);
    /* SERVE_MS at one ping per 50 ms = 12, +1 after the stall; allow
     * scheduling slack but not a missing or doubled rate. */
    printf("watchdog: %zu pings, gaps %llu..%llu ms (expected ~50, one >= %u after the stall)\n",
           pings, (unsigned long long)min_gap, (unsigned long long)max_gap, STALL_MS);
    T_CHECKF(pings >= 8 && pings <= 14, "%zu pings", pings);
    /* Arrival times are the kernel's (SO_TIMESTAMP), so the listener's own
     * scheduling delay is out; the sender's remains (2 shared cores in CI),
     * so allow 25 ms; a loop pinging on every 5 ms tick would fail. */
    T_CHECKF(min_gap >= 25, "pings %llu ms apart: faster than WatchdogSec/2", (unsigned long long)min_gap);
    T_CHECKF(max_gap >= STALL_MS, "the stalled loop kept pinging (max gap %llu ms)", (unsigned long long)max_gap);
    close(fd);
}

static void test_without_systemd(void)
{
    struct svc_notify n;

    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    T_CHECK(svc_notify_init(&n) == 0);
    T_CHECK(!n.connected && n.watchdog_usec == 0);
    T_CHECK(svc_notify_status(&n, "loading") == 0);
    T_CHECK(svc_notify_ready(&n, NULL) == 0);
    T_CHECK(!svc_watchdog_due(&n, svc_now_usec() + 3600u * 1000000u));
    T_CHECK(svc_watchdog_next_usec(&n, svc_now_usec()) == UINT64_MAX);
    T_CHECK(svc_watchdog_ping(&n, svc_now_usec()) == 0);
    T_CHECK(n.pings == 0);
    T_CHECK(svc_notify_stopping(&n, NULL) == 0);
}

static void test_watchdog_env(void)
{
    struct svc_notify n;
    char pid[32];

    /* WATCHDOG_PID names another process: the watchdog is not ours. */
    setenv("WATCHDOG_USEC", "100000", 1);
    snprintf(pid, sizeof(pid), "%d", (int)getppid());
    setenv("WATCHDOG_PID", pid, 1);
    T_CHECK(svc_notify_init(&n) == 0);
    T_CHECK(n.watchdog_usec == 0);
    /* Our pid: enabled. */
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    T_CHECK(svc_notify_init(&n) == 0);
    T_CHECK(n.watchdog_usec == 100000);
    /* Garbage is an error that names WatchdogSec=. */
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    T_CHECK(svc_notify_init(&n) < 0);
    unsetenv("WATCHDOG_USEC");
}

int main(void)
{
    char dir[256];

    setvbuf(stdout, NULL, _IOLBF, 0);   /* forked children _exit() */
    T_CHECK(svc_testlib_tmpdir(dir, sizeof(dir)) == 0);
    test_without_systemd();
    test_watchdog_env();
    test_protocol(dir);
    {
        char p[300];

        snprintf(p, sizeof(p), "%s/notify", dir);
        unlink(p);
        rmdir(dir);
    }
    printf("notify: ok\n");
    return T_PASS;
}
