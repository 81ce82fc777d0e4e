/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: arbitrary text as model.safetensors.index.json. An
 * accepted index may only name plain, non-empty shard file names.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_entry(void *ctx, const char *tensor, const char *shard)
{
    (*(size_t *)ctx)++;
    if (!tensor || !shard || shard[0] == '\0' || strchr(shard, '/') ||
        strcmp(shard, "..") == 0 || strcmp(shard, ".") == 0)
        abort();                        /* a path the loader would open */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = 0;
    struct engine_error err = { 0 };
    int rc = st_index_parse_buffer((const char *)data, size, "index.json", fuzz_entry, &n, &err);
    if ((rc < 0 && err.msg[0] == '\0') || (rc == 0 && n == 0))
        abort();
    return 0;
}
