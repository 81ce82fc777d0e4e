/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Parsing and validating OpenAI request bodies.
 *
 * Every byte is hostile: the body is parsed with json-c in strict mode
 * (UTF-8 validated, nesting <= 64), every field is type- and range-checked,
 * and a field the gateway cannot honour is refused with a 400 that names
 * it rather than silently ignored (docs/openai.md has the table).
 *
 * The result is what libresident needs: a struct resident_request with the
 * sampling parameters and, for chat, the JSON document residentd renders
 * with the Qwen3.6 template ({"messages", "tools", "chat_template_kwargs",
 * ...}); for completions, prompt text or token ids.
 */
#ifndef RESIDENT_CLIENT_OPENAI_REQUEST_H
#define RESIDENT_CLIENT_OPENAI_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/openai/error.h"
#include "client/openai/stream.h"
#include "client/resident.h"

#define OAI_STOP_MAX      16u     /* residentd's SHM_STOP_STRS_MAX */
#define OAI_STOP_LEN_MAX  256u
#define OAI_STOP_IDS_MAX  64u
#define OAI_MESSAGES_MAX  16384u
#define OAI_TOOLS_MAX     512u

/* Sampling defaults applied when a request leaves a field unset (from the
 * --generation-config file; `has_*` says which are known). Fields neither
 * the request nor this sets stay marked in params.model_defaults, and
 * residentd applies the loaded model's generation_config.json to them. */
struct oai_defaults {
    bool  has_temperature, has_top_p, has_top_k, has_min_p, has_repetition_penalty, has_presence_penalty;
    float temperature, top_p, min_p, repetition_penalty, presence_penalty;
    uint32_t top_k;
};

struct oai_request {
    enum oai_api api;
    char        *model;             /* NULL when the body named none */
    bool         stream;
    bool         include_usage;
    bool         seed_set;
    bool         thinking;          /* chat_template_kwargs.enable_thinking (default true) */
    bool         forced_tool;       /* tool_choice "required" or named (needs SHM_WELCOME_F_TOOL_CHOICE) */
    struct resident_request params;
    char        *stops[OAI_STOP_MAX];
    uint32_t     n_stops;
    uint32_t     stop_ids[OAI_STOP_IDS_MAX];
    uint32_t     n_stop_ids;
    /* chat: the JSON for resident_submit_chat(); completion: prompt text */
    char        *payload;
    size_t       payload_len;
    /* completion with a token-id prompt */
    uint32_t    *prompt_ids;
    size_t       n_prompt_ids;
};

/**
 * oai_request_parse() - parse and validate a request body
 * @api: which endpoint
 * @body: request bytes (need not be NUL-terminated)
 * @len: bytes
 * @defaults: generation defaults (NULL = libresident's)
 * @out: filled on success; oai_request_free() it either way
 * @err: the 400 to send on failure
 *
 * Return: 0, -EINVAL (err filled), -ENOMEM.
 */
int oai_request_parse(enum oai_api api, const char *body, size_t len, const struct oai_defaults *defaults,
                      struct oai_request *out, struct oai_error *err);
void oai_request_free(struct oai_request *r);

/**
 * oai_defaults_load() - read sampling defaults from a generation_config.json
 * @path: file
 * @d: filled
 * @why: message on failure
 *
 * Return: 0, -errno (file), -EINVAL (content; @why names the field).
 */
int oai_defaults_load(const char *path, struct oai_defaults *d, char *why, size_t whylen);

#endif
