/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libresident from a foreign event loop: resident_fd() in the test's own
 * epoll set, resident_poll() until empty, resident_arm() before sleeping.
 * Every request must complete without the loop ever timing out (a lost
 * wakeup would hang it), an armed idle session must not wake spuriously,
 * and daemon loss must wake the loop and surface as -ECONNRESET.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "client/resident.h"
#include "tests/integration/harness.h"

static struct th_daemon D;

/* Wait in our own epoll on resident_fd(); 1 readable, 0 timeout. */
static int loop_wait(int ep, int timeout_ms)
{
    struct epoll_event e;
    int n;
    do
        n = epoll_wait(ep, &e, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    return n;
}

int main(void)
{
    th_require_uring();
    if (th_daemon_start(&D, NULL) < 0) {
        fprintf(stderr, "cannot start residentd\n");
        return 1;
    }
    struct resident *r = th_connect(D.sock, "it-arm", 0);
    if (!r)
        return 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event add = { .events = EPOLLIN };
    TH_CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, resident_fd(r), &add) == 0);

    /* Idle and armed: no wakeup. */
    TH_CHECK(resident_arm(r) == 0);
    TH_CHECK(loop_wait(ep, 200) == 0);

    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = 64;
    int sleeps = 0, timeouts = 0;
    for (int round = 0; round < 50; round++) {
        uint64_t ids[3];
        int done = 0;
        uint32_t tokens = 0;
        for (int i = 0; i < 3; i++)
            TH_CHECK(resident_submit_text(r, &q, "arm", 3, 1, &ids[i]) == 0);
        while (done < 3) {
            struct resident_event ev;
            int n;
            while ((n = resident_poll(r, &ev)) > 0) {
                if (ev.type == RESIDENT_EVENT_TOKENS)
                    tokens += ev.n_tokens;
                else if (ev.type == RESIDENT_EVENT_DONE)
                    done++;
            }
            TH_CHECK(n == 0);
            if (n < 0 || done == 3)
                break;
            if (resident_arm(r) == 1)
                continue;           /* events came in between */
            sleeps++;
            if (loop_wait(ep, 5000) != 1) {
                timeouts++;
                break;
            }
        }
        TH_CHECK(done == 3 && tokens == 3 * 64);
    }
    printf("150 requests through a foreign epoll loop: %d sleeps, %d lost wakeups\n", sleeps, timeouts);
    TH_CHECK(timeouts == 0 && sleeps > 0);

    /* Daemon loss wakes an armed loop; poll reports it. */
    TH_CHECK(resident_arm(r) == 0);
    kill(D.pid, SIGKILL);
    TH_CHECK(loop_wait(ep, 5000) == 1);
    struct resident_event ev;
    int n;
    while ((n = resident_poll(r, &ev)) > 0)
        ;
    TH_CHECK(n == -ECONNRESET);
    TH_CHECK(resident_arm(r) == 1);
    th_daemon_stop(&D, 1000);
    resident_close(r);
    close(ep);
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed\n", th_failures);
        return 1;
    }
    printf("resident_arm: ok\n");
    return 0;
}
