/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output parsing for Qwen3.6: the qwen3 reasoning split and the
 * qwen3_coder tool-call parser (spec text.md §4-5), incremental.
 *
 * One parser object per generated message. Feed it text pieces as the
 * detokenizer produces them; it calls `emit` with deltas on four channels:
 *
 *   CHAT_DELTA_REASONING   a fragment of reasoning text
 *   CHAT_DELTA_CONTENT     a fragment of content text
 *   CHAT_DELTA_TOOL_NAME   a tool call starts: tool_index, tool_id
 *                          ("call_" + 24 hex) and the function name in text
 *   CHAT_DELTA_TOOL_ARGS   a fragment of that call's arguments JSON: "{"
 *                          right after the name, then one complete
 *                          `"param": value` per parameter (", " between),
 *                          then "}" when the function closes
 *
 * Every decision is made only once the text seen so far settles it, so
 * the concatenated deltas do not depend on how the text was split;
 * chat_parse_text() is literally feed-everything-then-finish, and the
 * tests check all split points. Where vLLM's streaming and non-streaming
 * paths disagree, this parser follows the rule that can be decided on a
 * prefix (documented in parse-output.c); malformed output never fails, it
 * degrades to plain content.
 */
#ifndef RESIDENT_ENGINE_TEXT_PARSE_OUTPUT_H
#define RESIDENT_ENGINE_TEXT_PARSE_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct engine_error;
struct chat_parser;

enum chat_delta_type {
    CHAT_DELTA_REASONING,
    CHAT_DELTA_CONTENT,
    CHAT_DELTA_TOOL_NAME,
    CHAT_DELTA_TOOL_ARGS,
};

struct chat_delta {
    enum chat_delta_type type;
    const char *text;       /* fragment / function name; not NUL-terminated */
    size_t      len;
    size_t      tool_index; /* TOOL_NAME, TOOL_ARGS: 0, 1, ... per message  */
    const char *tool_id;    /* TOOL_NAME: NUL-terminated "call_…"           */
};

/* Return 0 to go on, a negative errno to stop (passed back to the caller). */
typedef int (*chat_delta_fn)(void *user, const struct chat_delta *d);

/* Writes 24 lowercase hex characters (no NUL needed) for call `index`. */
typedef void (*chat_tool_id_fn)(void *user, size_t index, char hex[24]);

#define CHAT_TOOL_ID_LEN 29     /* "call_" + 24 hex */

struct chat_parser_opts {
    /* chat_template_kwargs.enable_thinking: false means the prompt closed
     * the think block, so every byte is content (vLLM skips the reasoning
     * parser then). Default true. */
    bool thinking;
    /* Run the tool-call parser on content. Default true. */
    bool tools_enabled;
    /* The request's "tools" list (OpenAI shape); its JSON schemas type the
     * arguments. May be NULL. Referenced, not copied: keep it alive for the
     * parser's lifetime. */
    const struct json_object *tools;
    /* Tool-call id source; NULL uses getrandom(). Tests pass a counter. */
    chat_tool_id_fn id_fn;
    void *id_user;
};

#define CHAT_PARSER_OPTS_DEFAULT { true, true, NULL, NULL, NULL }

/* opts may be NULL (defaults). */
int chat_parser_new(const struct chat_parser_opts *opts, struct chat_parser **out, struct engine_error *err);
void chat_parser_free(struct chat_parser *p);
/* Feed a piece of model output (any byte split, UTF-8 may be cut). */
int chat_parser_feed(struct chat_parser *p, const char *text, size_t len, chat_delta_fn emit, void *user);
/* End of output: flush everything still held back. Further feeds fail. */
int chat_parser_finish(struct chat_parser *p, chat_delta_fn emit, void *user);
/* Number of tool calls emitted so far (finish_reason "tool_calls" if > 0). */
size_t chat_parser_tool_calls(const struct chat_parser *p);
/* True once the reasoning part is over (`</think>` seen, a confirmed
 * implicit end at `<tool_call>`, or thinking disabled): from here on the
 * output is content, so e.g. structured-output constraints may start. */
bool chat_parser_reasoning_ended(const struct chat_parser *p);

struct chat_tool_call {
    char  id[CHAT_TOOL_ID_LEN + 1];
    char *name;
    char *arguments;        /* compact JSON object, json.dumps form */
};

struct chat_parse_result {
    char  *reasoning;       /* NULL when there is none (or it is empty) */
    size_t reasoning_len;
    char  *content;         /* NULL when there is none (or it is empty) */
    size_t content_len;
    struct chat_tool_call *tool_calls;
    size_t n_tool_calls;    /* finish_reason is "tool_calls" when > 0 */
};

/* Whole-text parse: the same as feeding `text` in one piece and finishing. */
int chat_parse_text(const char *text, size_t len, const struct chat_parser_opts *opts,
                    struct chat_parse_result *out, struct engine_error *err);
void chat_parse_result_free(struct chat_parse_result *r);
/* {"reasoning": …|null, "content": …|null, "tool_calls": [{"id", "type":
 * "function", "function": {"name", "arguments"}}], "finish_reason":
 * "tool_calls"|"stop"} as a new json-c object (NULL on ENOMEM). */
struct json_object *chat_parse_result_to_json(const struct chat_parse_result *r);

/* One delta as the OpenAI streaming `delta` object: {"reasoning": …},
 * {"content": …}, {"tool_calls": [{"index", "id", "type": "function",
 * "function": {"name", "arguments": ""}}]} or {"tool_calls": [{"index",
 * "function": {"arguments": fragment}}]}. New json-c object; NULL on ENOMEM. */
struct json_object *chat_delta_to_json(const struct chat_delta *d);

/*
 * Argument conversion (qwen3_coder _convert_param_value): append the JSON
 * text of the raw parameter value `value` converted according to the
 * schema of parameter `param` of function `func` in `tools`.
 */
struct json_out;
void chat_param_convert(const struct json_object *tools, const char *func, size_t func_len,
                        const char *param, size_t param_len, const char *value, size_t len,
                        struct json_out *out);
/* The "properties" object of the first tool named func, or NULL. */
const struct json_object *chat_tool_properties(const struct json_object *tools, const char *func, size_t func_len);

#endif
