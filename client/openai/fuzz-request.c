/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for what an HTTP client and residentd can send the
 * gateway. Byte 0 picks the mode:
 *   0 / 1  the rest is a /v1/chat/completions / /v1/completions body:
 *          parse must fail with a 4xx/5xx error that has a message, or
 *          succeed with a chat payload that is a JSON object holding
 *          "messages" (and stop strings within the limits);
 *   2      the rest is tool-channel text fed in pieces (byte 1 sets the
 *          piece length) through a streaming and a non-streaming mapper:
 *          both must agree on failure, and every SSE frame and the final
 *          body must be valid JSON.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/openai/request.h"
#include "client/openai/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_sse(const struct oai_stream *s)
{
    const char *p = s->out.p ? s->out.p : "";
    while (*p) {
        if (strncmp(p, "data: ", 6) != 0)
            abort();
        const char *end = strstr(p, "\n\n");
        if (!end)
            abort();
        char *frame = strndup(p + 6, (size_t)(end - p - 6));
        if (strcmp(frame, "[DONE]") != 0) {
            struct json_object *o = json_tokener_parse(frame);
            if (!o)
                abort();
            json_object_put(o);
        }
        free(frame);
        p = end + 2;
    }
}

static void fuzz_request(enum oai_api api, const char *body, size_t len)
{
    struct oai_request r;
    struct oai_error e;
    memset(&e, 0, sizeof(e));
    int rc = oai_request_parse(api, body, len, NULL, &r, &e);
    if (rc < 0) {
        if (e.status < 400 || e.status > 599 || !e.message[0])
            abort();
    } else if (api == OAI_API_CHAT) {
        struct json_object *o = json_tokener_parse(r.payload), *m;
        if (!o || !json_object_object_get_ex(o, "messages", &m) || !json_object_is_type(m, json_type_array))
            abort();
        json_object_put(o);
    } else if (!r.payload && !r.n_prompt_ids) {
        abort();
    }
    if (rc == 0 && (r.n_stops > OAI_STOP_MAX || r.n_stop_ids > OAI_STOP_IDS_MAX))
        abort();
    oai_request_free(&r);
}

static void fuzz_tools(size_t piece, const char *t, size_t len)
{
    struct oai_stream s[2];
    int failed[2] = { 0, 0 };
    for (int k = 0; k < 2; k++) {
        struct oai_stream_params p = { .api = OAI_API_CHAT, .stream = k == 0, .include_usage = 1,
                                       .id = "chatcmpl-f", .model = "m", .created = 1 };
        oai_stream_init(&s[k], &p);
        for (size_t off = 0; off < len && !failed[k]; off += piece) {
            size_t n = len - off < piece ? len - off : piece;
            failed[k] = oai_stream_tokens(&s[k], 2, t + off, n) < 0;
        }
        struct oai_finish f = { .finish = 1, .message = "" };
        oai_stream_finish(&s[k], &f);
        failed[k] = s[k].proto_err[0] != 0;
    }
    if (failed[0] != failed[1] || s[0].n_calls != s[1].n_calls)
        abort();
    check_sse(&s[0]);
    struct oai_finish f = { .finish = 1, .message = "" };
    struct oai_buf b = { 0 };
    if (oai_stream_body(&s[1], &f, &b) == 0) {
        struct json_object *o = json_tokener_parse(b.p);
        if (!o)
            abort();
        json_object_put(o);
    }
    oai_buf_free(&b);
    oai_stream_free(&s[0]);
    oai_stream_free(&s[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_request(OAI_API_CHAT, (const char *)data + 1, size - 1);
        break;
    case 1:
        fuzz_request(OAI_API_COMPLETION, (const char *)data + 1, size - 1);
        break;
    default:
        fuzz_tools(data[1] ? data[1] : 1, (const char *)data + 2, size - 2);
        break;
    }
    return 0;
}
