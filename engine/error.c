/* SPDX-License-Identifier: Apache-2.0 */
#include "engine/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int engine_error_set(struct engine_error *err, int code, const char *fmt, ...)
{
    if (err && err->code == 0) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void engine_error_clear(struct engine_error *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}
