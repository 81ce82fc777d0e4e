/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The mapping layer: residentd's channel-tagged events -> OpenAI output.
 *
 * residentd runs the qwen3 reasoning parser and the qwen3_coder tool-call
 * parser (spec text.md §4-5) and tags every TOKENS event with a channel
 * (enum resident_channel). This file turns those events into
 *   - SSE chunks (`data: {...}\n\n`, then `data: [DONE]\n\n`) when the
 *     client streams, or
 *   - one chat.completion / text_completion JSON body when it does not.
 *
 * CHANNELS
 *   CONTENT    text -> delta.content / message.content
 *   REASONING  text -> delta.reasoning and delta.reasoning_content (both
 *              names: current vLLM emits "reasoning", older clients read
 *              "reasoning_content"; spec text.md §5)
 *   TOOL_CALL  a sequence of JSON objects, one per parser delta
 *              (engine/text/parse-output.h CHAT_DELTA_TOOL_NAME / _ARGS):
 *                {"index": N, "id": "call_...", "name": "fn"}   call N starts
 *                {"index": N, "arguments": "fragment"}         arguments text
 *              Objects may be split across events or several may share
 *              one event (whitespace between them is allowed). They become
 *              delta.tool_calls[{index, id, type, function{name,
 *              arguments: ""}}] and delta.tool_calls[{index, function
 *              {arguments}}], exactly the stream spec text.md §4 describes;
 *              the fragments of one call concatenate to its arguments JSON.
 * For /v1/completions every channel is plain text (no parsers there).
 *
 * Anything malformed on the tool channel is a protocol error (-EPROTO):
 * the caller cancels the request and the client gets an error, never a
 * made-up tool call.
 */
#ifndef RESIDENT_CLIENT_OPENAI_STREAM_H
#define RESIDENT_CLIENT_OPENAI_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "client/openai/buf.h"
#include "client/openai/error.h"

enum oai_api {
    OAI_API_CHAT       = 1,    /* /v1/chat/completions */
    OAI_API_COMPLETION = 2,    /* /v1/completions */
};

#define OAI_TOOL_CALLS_MAX 128
#define OAI_TOOL_ID_MAX    64
#define OAI_TOOL_NAME_MAX  256

struct oai_stream_params {
    enum oai_api api;
    int          stream;        /* SSE; else one body at the end */
    int          include_usage; /* stream_options.include_usage */
    const char  *id;            /* "chatcmpl-..." / "cmpl-..." */
    const char  *model;
    long long    created;       /* unix seconds */
    const char  *fingerprint;   /* system_fingerprint; NULL = omitted */
};

struct oai_tool_call {
    char           id[OAI_TOOL_ID_MAX + 1];
    char          *name;
    struct oai_buf args;
};

struct oai_stream {
    enum oai_api  api;
    int           stream, include_usage;
    char          id[80];
    char          model[256];
    char          fingerprint[80];
    long long     created;
    struct oai_buf out;         /* SSE bytes not yet sent */
    struct oai_buf content;     /* non-streaming accumulators */
    struct oai_buf reasoning;
    struct oai_buf tool_pending;/* unparsed tool-channel bytes */
    struct oai_tool_call *calls;
    size_t        n_calls;
    int           began, finished;
    char          proto_err[200];   /* "" or why the event stream was refused */
};

/* What the DONE event said. */
struct oai_finish {
    uint32_t    finish;         /* enum resident_finish */
    int         error;          /* 0 or -errno */
    const char *message;        /* "" when none */
    uint32_t    prompt_tokens;
    uint32_t    completion_tokens;
    uint32_t    cached_tokens;  /* prompt tokens from residentd's prefix cache */
};

int oai_stream_init(struct oai_stream *s, const struct oai_stream_params *p);
void oai_stream_free(struct oai_stream *s);

/* Streaming chat: the first chunk (delta.role = "assistant"). No-op otherwise. */
int oai_stream_begin(struct oai_stream *s);

/*
 * oai_stream_tokens() - one TOKENS event
 * Return: 0; -EPROTO when the tool channel is malformed (s->proto_err says
 * why; feed nothing more, cancel the request and finish); -ENOMEM/-E2BIG.
 */
int oai_stream_tokens(struct oai_stream *s, uint32_t channel, const char *text, size_t len);

/*
 * oai_stream_finish() - the DONE event
 * Streaming: appends the final chunk (finish_reason), the usage chunk when
 * asked for, then `data: [DONE]`; a failed request (or a protocol error
 * seen earlier) becomes an SSE `data: {"error": ...}` event instead.
 * Non-streaming: only records the end; see oai_stream_body().
 */
int oai_stream_finish(struct oai_stream *s, const struct oai_finish *f);

/* Whether a DONE means failure; fills @e with the HTTP error to report. */
int oai_finish_failed(const struct oai_finish *f, enum oai_api api, struct oai_error *e);

/* "stop" / "length" / "tool_calls" for a successful DONE. */
const char *oai_stream_finish_reason(const struct oai_stream *s, const struct oai_finish *f);

/* Non-streaming: the whole response body for a successful DONE. */
int oai_stream_body(const struct oai_stream *s, const struct oai_finish *f, struct oai_buf *out);

#endif
