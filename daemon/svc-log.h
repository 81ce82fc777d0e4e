/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-log: the one place the service building blocks (svc-*.c) report to.
 *
 * Every svc_* function returns 0 or -errno and, when it fails, has already
 * logged one line that names the limit, capability or unit setting involved
 * and how to fix it.  By default lines go to stderr with the sd-daemon(3)
 * "<N>" priority prefix, which journald turns into the journal priority
 * (SyslogLevelPrefix=yes is systemd's default) and which stays readable on a
 * terminal.  The daemon may route the lines into its own logger with
 * svc_log_set_sink().
 */
#ifndef RESIDENT_DAEMON_SVC_LOG_H
#define RESIDENT_DAEMON_SVC_LOG_H

#include <syslog.h>     /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */

/* A sink receives the priority (LOG_*) and the formatted line (no newline). */
typedef void (*svc_log_sink_fn)(int priority, const char *line, void *userdata);

/* Route all svc_* log lines to `sink` (NULL restores stderr). Not thread-safe:
 * call once at start-up, before any other svc_* function. */
void svc_log_set_sink(svc_log_sink_fn sink, void *userdata);

/* Log one line. Always returns `ret`, so callers can write
 * `return svc_log_errno(-EPERM, "...")`. */
int svc_log_errno(int ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void svc_log(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
