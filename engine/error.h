/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Engine error convention (after dbus-broker / liburing):
 *
 *   0          success
 *   < 0        -errno: the operation failed; `struct engine_error` (when the
 *              caller passes one) holds a message that names the file,
 *              tensor, field or limit involved and says how to fix it.
 *   > 0        never returned by engine functions unless a function's
 *              comment documents a positive code.
 *
 * Nothing in the engine aborts on bad input: model files are hostile input.
 */
#ifndef RESIDENT_ENGINE_ERROR_H
#define RESIDENT_ENGINE_ERROR_H

#include <stddef.h>

#define ENGINE_ERROR_MSG_MAX 512

struct engine_error {
    int  code;                          /* -errno of the first failure        */
    char msg[ENGINE_ERROR_MSG_MAX];     /* human-readable, NUL-terminated     */
};

/* Record an error (first one wins) and return `code` (a negative errno).
 * `err` may be NULL. */
int engine_error_set(struct engine_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reset to "no error". */
void engine_error_clear(struct engine_error *err);

#endif
