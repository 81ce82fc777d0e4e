/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static svc_log_sink_fn log_sink;
static void *log_userdata;

void svc_log_set_sink(svc_log_sink_fn sink, void *userdata)
{
    log_sink = sink;
    log_userdata = userdata;
}

static void svc_log_va(int priority, const char *fmt, va_list ap)
{
    char line[1024];

    vsnprintf(line, sizeof(line), fmt, ap);
    if (log_sink) {
        log_sink(priority, line, log_userdata);
        return;
    }
    /* One fprintf per line: stderr is unbuffered, so a single call keeps the
     * prefix and the text in one write(2) and journald sees one record. */
    fprintf(stderr, "<%d>residentd: %s\n", priority & LOG_PRIMASK, line);
}

void svc_log(int priority, const char *fmt, ...)
{
    va_list ap;
    int saved = errno;

    va_start(ap, fmt);
    svc_log_va(priority, fmt, ap);
    va_end(ap);
    errno = saved;
}

int svc_log_errno(int ret, const char *fmt, ...)
{
    va_list ap;
    int saved = errno;

    va_start(ap, fmt);
    svc_log_va(LOG_ERR, fmt, ap);
    va_end(ap);
    errno = saved;
    return ret;
}
