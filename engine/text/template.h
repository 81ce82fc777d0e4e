/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Qwen3.6 chat template, implemented directly in C.
 *
 * Input is an OpenAI-style chat request as JSON:
 *   {"messages": [...], "tools": [...], "chat_template_kwargs": {...},
 *    "add_generation_prompt": true}
 * Output is the exact prompt text that transformers' apply_chat_template
 * produces from the official chat_template.jinja (sha256 e84f32a2…4259)
 * for the same input as vLLM prepares it. See docs in template.c and
 * spec text.md §3.
 *
 * Errors: 0 on success; -EINVAL when the conversation is rejected. For the
 * template's own raise_exception branches err->msg is exactly the
 * template's message ("No messages provided.", "System message must be at
 * the beginning.", "No user query found in messages.", "Unexpected message
 * role.", "Unexpected content type.", "Unexpected item type in content.",
 * "System message cannot contain images.", "System message cannot contain
 * videos."); other rejections (malformed JSON, wrong field types) name the
 * field. -ENOMEM on allocation failure.
 */
#ifndef RESIDENT_ENGINE_TEXT_TEMPLATE_H
#define RESIDENT_ENGINE_TEXT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct engine_error;

struct chat_render_opts {
    /* Used when the request has no "add_generation_prompt" (vLLM's
     * default is true, transformers' is false). */
    bool default_add_generation_prompt;
    /* Re-shape every tool the way vLLM's ChatCompletionToolsParam
     * .model_dump() does before rendering: {"type", "function": {"name",
     * "description" (null if absent), "parameters" (null if absent),
     * extra keys...}, extra keys...}. false renders tools exactly as given. */
    bool vllm_tool_shape;
    /* vLLM json.loads a tool call's "arguments" string before rendering
     * (and turns ""/null into {}); false leaves it to the template, which
     * then rejects a non-mapping. */
    bool decode_arguments;
    /* Also read an assistant message's "reasoning" field when
     * "reasoning_content" is not a string (spec text.md §5: newer vLLM
     * emits "reasoning", clients echo it back). */
    bool reasoning_alias;
};

/* Defaults: generation prompt on, vLLM tool shape, decode arguments,
 * reasoning alias on. */
#define CHAT_RENDER_OPTS_DEFAULT { true, true, true, true }

/* Render from a JSON text of `len` bytes. On success *out is a malloc'd
 * NUL-terminated string (free()) and *out_len its length. opts may be NULL
 * (defaults). */
int chat_render(const char *request_json, size_t len, const struct chat_render_opts *opts,
                char **out, size_t *out_len, struct engine_error *err);

/* Same, from an already parsed request object. Note: integers that json-c
 * clamped to 64 bits while parsing cannot be restored; chat_render parses
 * with parse-value.c, which keeps them exact. */
int chat_render_object(const struct json_object *request, const struct chat_render_opts *opts,
                       char **out, size_t *out_len, struct engine_error *err);

#endif
