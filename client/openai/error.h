/* SPDX-License-Identifier: Apache-2.0 */
/*
 * OpenAI-shaped errors: every refusal the gateway sends is
 *   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
 * with an HTTP status. `type` follows OpenAI's names
 * (invalid_request_error, not_found_error, rate_limit_error, ...).
 */
#ifndef RESIDENT_CLIENT_OPENAI_ERROR_H
#define RESIDENT_CLIENT_OPENAI_ERROR_H

#include "client/openai/buf.h"

struct oai_error {
    unsigned    status;         /* HTTP status */
    const char *type;           /* static */
    const char *code;           /* static or NULL */
    char        param[96];      /* "" = null */
    char        message[512];
};

/* Fill @e; returns -EINVAL so parsers can `return oai_error_set(...)`. */
int oai_error_set(struct oai_error *e, unsigned status, const char *type, const char *code,
                  const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* 400 invalid_request_error naming @param. */
int oai_error_invalid(struct oai_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Append the JSON body (no trailing newline). Return 0 or -errno. */
int oai_error_json(const struct oai_error *e, struct oai_buf *out);

#endif
