/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-notify: sd_notify(3) state reporting and the watchdog.
 *
 * Protocol seen by systemd (Type=notify, NotifyAccess=main):
 *
 *   STATUS=loading ...       any number, while weights are read/verified/locked
 *   EXTEND_TIMEOUT_USEC=...  optional, when a load runs past TimeoutStartSec
 *   READY=1                  exactly once, after weights are mapped, verified
 *                            and locked and the listening socket is served
 *   WATCHDOG=1               from the event loop, every WatchdogSec/2
 *   RELOADING=1 ... READY=1  around a SIGHUP reload
 *   STOPPING=1               when shutdown starts
 *
 * Everything works the same without systemd: with NOTIFY_SOCKET unset
 * sd_notify() is a successful no-op and the watchdog is disabled.
 *
 * The watchdog is deliberately a pair of functions called from the io_uring
 * loop, not a timer thread: a ping must prove that the loop itself still
 * turns.  A stalled loop stops pinging and systemd kills and restarts us
 * (Restart=on-failure).  The loop uses svc_watchdog_next_usec() as the
 * upper bound of its wait so it wakes up in time even when idle.
 */
#ifndef RESIDENT_DAEMON_SVC_NOTIFY_H
#define RESIDENT_DAEMON_SVC_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

struct svc_notify {
    bool     connected;         /* NOTIFY_SOCKET was set at init            */
    bool     ready_sent;        /* READY=1 went out (guards double READY)   */
    uint64_t watchdog_usec;     /* WatchdogSec= in µs, 0 = disabled         */
    uint64_t next_ping_usec;    /* CLOCK_MONOTONIC µs of the next ping      */
    uint64_t pings;             /* WATCHDOG=1 messages sent (diagnostics)   */
};

/* CLOCK_MONOTONIC in µs: the time base of every *_usec argument below. */
uint64_t svc_now_usec(void);

/* Read NOTIFY_SOCKET and WATCHDOG_USEC/WATCHDOG_PID (sd_watchdog_enabled).
 * The environment is left in place (sd_notify needs NOTIFY_SOCKET later).
 * Returns 0, or -EINVAL when WATCHDOG_USEC is malformed. */
int svc_notify_init(struct svc_notify *n);

/* STATUS=<text>, printf-style. */
int svc_notify_status(struct svc_notify *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* STATUS=serving: <sessions> sessions, <tok/s> tok/s, VmLck <MiB> MiB. */
int svc_notify_serving(struct svc_notify *n, unsigned sessions, double tok_per_s,
                       uint64_t vmlck_bytes);

/* EXTEND_TIMEOUT_USEC=<usec>: ask for more start-up time (slow disks). */
int svc_notify_extend_timeout(struct svc_notify *n, uint64_t usec);

/* READY=1 (+ STATUS=<status> when non-NULL).  Call once weights are mapped,
 * verified and locked.  Also arms the watchdog clock.  A second call outside
 * a reload returns -EALREADY and sends nothing. */
int svc_notify_ready(struct svc_notify *n, const char *status);

/* RELOADING=1 + MONOTONIC_USEC= (SIGHUP received); follow with
 * svc_notify_reloaded() once the new configuration is in effect. */
int svc_notify_reloading(struct svc_notify *n);
int svc_notify_reloaded(struct svc_notify *n, const char *status);

/* STOPPING=1 (+ STATUS=). */
int svc_notify_stopping(struct svc_notify *n, const char *status);

/* True when a WATCHDOG=1 is due at `now_usec` (never when disabled). */
bool svc_watchdog_due(const struct svc_notify *n, uint64_t now_usec);

/* Send WATCHDOG=1 and schedule the next ping at now + WatchdogSec/2. */
int svc_watchdog_ping(struct svc_notify *n, uint64_t now_usec);

/* µs until the next ping is due (0 = due now); UINT64_MAX when disabled. */
uint64_t svc_watchdog_next_usec(const struct svc_notify *n, uint64_t now_usec);

#endif
