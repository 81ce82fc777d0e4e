/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-notify.h"
#include "daemon/svc-log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

uint64_t svc_now_usec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* sd_notify() returns >0 sent, 0 "no NOTIFY_SOCKET", <0 -errno.  A failure to
 * notify is logged but is never fatal: systemd will time out (start) or kill
 * us (watchdog), which is the correct outcome of a broken notify path. */
static int svc_notify_send(const char *msg)
{
    int r = sd_notify(0, msg);

    if (r < 0)
        svc_log(LOG_WARNING, "sd_notify(\"%.40s\") failed: %s (is NOTIFY_SOCKET=%s reachable? "
                "PrivateNetwork= keeps path sockets working, abstract ones need the host namespace)",
                msg, strerror(-r), getenv("NOTIFY_SOCKET") ? getenv("NOTIFY_SOCKET") : "(unset)");
    return r < 0 ? r : 0;
}

int svc_notify_init(struct svc_notify *n)
{
    uint64_t usec = 0;
    int r;

    memset(n, 0, sizeof(*n));
    n->connected = getenv("NOTIFY_SOCKET") != NULL;
    /* Returns >0 only if WATCHDOG_USEC is set and WATCHDOG_PID (if set) is us. */
    r = sd_watchdog_enabled(0, &usec);
    if (r < 0)
        return svc_log_errno(r, "WATCHDOG_USEC=%s is not a valid watchdog interval: %s "
                             "(check WatchdogSec= in residentd.service)",
                             getenv("WATCHDOG_USEC") ? getenv("WATCHDOG_USEC") : "",
                             strerror(-r));
    if (r > 0)
        n->watchdog_usec = usec;
    return 0;
}

int svc_notify_status(struct svc_notify *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    (void)n;
    memcpy(msg, "STATUS=", 7);
    va_start(ap, fmt);
    vsnprintf(msg + 7, sizeof(msg) - 7, fmt, ap);
    va_end(ap);
    /* A newline would start a new assignment and let the text inject e.g.
     * READY=1; status text is informational, so flatten it. */
    for (char *p = msg; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return svc_notify_send(msg);
}

int svc_notify_serving(struct svc_notify *n, unsigned sessions, double tok_per_s,
                       uint64_t vmlck_bytes)
{
    return svc_notify_status(n, "serving: %u session%s, %.1f tok/s, VmLck %" PRIu64 " MiB",
                             sessions, sessions == 1 ? "" : "s", tok_per_s,
                             vmlck_bytes >> 20);
}

int svc_notify_extend_timeout(struct svc_notify *n, uint64_t usec)
{
    char msg[64];

    (void)n;
    snprintf(msg, sizeof(msg), "EXTEND_TIMEOUT_USEC=%" PRIu64, usec);
    return svc_notify_send(msg);
}

static int svc_notify_ready_msg(struct svc_notify *n, const char *status)
{
    char msg[512];
    int r;

    snprintf(msg, sizeof(msg), "READY=1%s%.480s", status ? "\nSTATUS=" : "", status ? status : "");
    r = svc_notify_send(msg);
    if (r == 0) {
        n->ready_sent = true;
        /* Arm the watchdog from the moment we claim to be up: WatchdogSec=
         * starts counting at READY=1 for Type=notify services. */
        if (n->watchdog_usec)
            n->next_ping_usec = svc_now_usec() + n->watchdog_usec / 2;
    }
    return r;
}

int svc_notify_ready(struct svc_notify *n, const char *status)
{
    if (n->ready_sent)
        return -EALREADY;
    return svc_notify_ready_msg(n, status);
}

int svc_notify_reloading(struct svc_notify *n)
{
    char msg[96];

    (void)n;
    /* MONOTONIC_USEC= is what Type=notify-reload (253+) requires; 252 ignores
     * unknown assignments, so sending it now is forward compatible. */
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, svc_now_usec());
    return svc_notify_send(msg);
}

int svc_notify_reloaded(struct svc_notify *n, const char *status)
{
    return svc_notify_ready_msg(n, status);
}

int svc_notify_stopping(struct svc_notify *n, const char *status)
{
    char msg[512];

    (void)n;
    snprintf(msg, sizeof(msg), "STOPPING=1%s%.480s", status ? "\nSTATUS=" : "", status ? status : "");
    return svc_notify_send(msg);
}

bool svc_watchdog_due(const struct svc_notify *n, uint64_t now_usec)
{
    return n->watchdog_usec != 0 && now_usec >= n->next_ping_usec;
}

int svc_watchdog_ping(struct svc_notify *n, uint64_t now_usec)
{
    if (!n->watchdog_usec)
        return 0;
    /* Schedule from `now`, not from the previous deadline: after a stall we
     * must not burst out catch-up pings that would hide how late we were. */
    n->next_ping_usec = now_usec + n->watchdog_usec / 2;
    n->pings++;
    return svc_notify_send("WATCHDOG=1");
}

uint64_t svc_watchdog_next_usec(const struct svc_notify *n, uint64_t now_usec)
{
    if (!n->watchdog_usec)
        return UINT64_MAX;
    return now_usec >= n->next_ping_usec ? 0 : n->next_ping_usec - now_usec;
}
