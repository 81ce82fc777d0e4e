/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A growable byte buffer with a hard size cap. The gateway builds every
 * response (JSON bodies, SSE frames) in one; the cap turns a runaway
 * producer into -E2BIG instead of unbounded memory.
 */
#ifndef RESIDENT_CLIENT_OPENAI_BUF_H
#define RESIDENT_CLIENT_OPENAI_BUF_H

#include <stddef.h>

#define OAI_BUF_MAX ((size_t)256 << 20)

struct oai_buf {
    char  *p;       /* NUL-terminated when len > 0 */
    size_t len;
    size_t cap;
};

/* Return: 0, -ENOMEM, or -E2BIG past OAI_BUF_MAX. */
int oai_buf_append(struct oai_buf *b, const void *data, size_t n);
int oai_buf_puts(struct oai_buf *b, const char *s);
int oai_buf_printf(struct oai_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void oai_buf_consume(struct oai_buf *b, size_t n);
void oai_buf_reset(struct oai_buf *b);
void oai_buf_free(struct oai_buf *b);

#endif
