/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/openai/buf.h"

int oai_buf_append(struct oai_buf *b, const void *data, size_t n)
{
    if (n > OAI_BUF_MAX - b->len - 1 || b->len >= OAI_BUF_MAX)
        return -E2BIG;
    size_t need = b->len + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap = cap > OAI_BUF_MAX / 2 ? OAI_BUF_MAX : cap * 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int oai_buf_puts(struct oai_buf *b, const char *s)
{
    return oai_buf_append(b, s, strlen(s));
}

int oai_buf_printf(struct oai_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof(small))
        return oai_buf_append(b, small, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int r = oai_buf_append(b, big, (size_t)n);
    free(big);
    return r;
}

void oai_buf_consume(struct oai_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        if (b->p)
            b->p[0] = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = 0;
}

void oai_buf_reset(struct oai_buf *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = 0;
}

void oai_buf_free(struct oai_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
