/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: arbitrary bytes as a whole safetensors file image.
 * Every tensor the parser accepts is checked against the buffer and its
 * first and last data bytes are read, so a bad bound shows up as an ASan
 * report rather than a silent pass.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fuzz_ctx {
    const uint8_t *buf;
    size_t         len;
    unsigned       sum;
};

static int fuzz_visit(void *opaque, const struct st_tensor *t)
{
    struct fuzz_ctx *c = opaque;
    const uint8_t *p = t->data;
    if (p < c->buf || t->nbytes > c->len || (size_t)(p - c->buf) > c->len - t->nbytes)
        abort();                        /* parser exposed an out-of-range tensor */
    if (t->ndim > ST_MAX_DIMS || st_dtype_size(t->dtype) == 0 || strlen(t->name) == 0)
        abort();
    if (t->nbytes) {
        c->sum += p[0];
        c->sum += p[t->nbytes - 1];
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_ctx c = { data, size, 0 };
    struct engine_error err = { 0 };
    int rc = st_parse_buffer(data, size, "fuzz", fuzz_visit, &c, &err);
    /* A failure must always come with a message. */
    if (rc < 0 && (err.code != rc || err.msg[0] == '\0'))
        abort();
    return 0;
}
