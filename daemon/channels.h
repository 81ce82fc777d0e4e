/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output channels: one request's generated text split into reasoning,
 * content and tool calls by the engine's Qwen3.6 output parsers
 * (engine/text/parse-output.h), in the form residentd sends on the
 * event ring (docs/protocol.md §6):
 *
 *   SHM_CHAN_REASONING  reasoning text, as the model wrote it
 *   SHM_CHAN_CONTENT    answer text
 *   SHM_CHAN_TOOL_CALL  a stream of JSON objects, one after the other:
 *                         {"index":N,"id":"call_…","name":"fn"}   call N starts
 *                         {"index":N,"arguments":"fragment"}      a piece of its
 *                                                                 arguments JSON
 *                       a record may end inside an object; the concatenated
 *                       channel text is the objects back to back.
 *
 * The parser must see the text in order and exactly once: feed it the text
 * the stop-string stage released, then finish it once when the request ends
 * naturally (a cancelled request drops what the parser still holds).
 */
#ifndef RESIDENT_DAEMON_CHANNELS_H
#define RESIDENT_DAEMON_CHANNELS_H

#include <stddef.h>
#include <stdint.h>

struct channels;

struct channels_opts {
    int thinking;       /* the prompt opened <think>: output starts as reasoning */
    int tools;          /* run the tool-call parser */
    const uint8_t *request_json;  /* CHAT payload (its "tools" type the arguments), or NULL */
    size_t request_len;
    /* Tool-call id source for tests (NULL = random ids). */
    void (*id_fn)(void *user, size_t index, char hex[24]);
    void *id_user;
};

/* Receives each piece of output: channel (enum shm_channel) and bytes. */
typedef int (*channels_sink_fn)(void *user, uint32_t channel, const char *text, size_t len);

/**
 * channels_opts_from_request() - parsing options for a request
 * @kind: enum shm_prompt_kind
 * @json: CHAT payload (ignored for other kinds)
 * @len: bytes
 * @o: filled; o->request_json points at @json
 *
 * TEXT: thinking on (the template's default), no tools. CHAT: thinking is
 * chat_template_kwargs.enable_thinking, else template_kwargs.enable_thinking,
 * default true; tools when "tools" is a non-empty array and "tool_choice" is
 * not "none".
 *
 * Return: 1 when the request's output is parsed, 0 for RAW/IDS prompts
 * (plain content).
 */
int channels_opts_from_request(uint32_t kind, const uint8_t *json, size_t len, struct channels_opts *o);

/* Return: 0, -ENOMEM; @err names the failure. */
int  channels_new(const struct channels_opts *o, struct channels **out, char *err, size_t errlen);
void channels_free(struct channels *c);

/* Feed released text (any split). Return: 0 or a negative errno. */
int channels_feed(struct channels *c, const char *text, size_t len, channels_sink_fn sink, void *user);
/* End of output: flush what the parser holds back. */
int channels_finish(struct channels *c, channels_sink_fn sink, void *user);
/* Tool calls started so far. */
size_t channels_tool_calls(const struct channels *c);
/* The channel plain text goes to before any parser decision. */
uint32_t channels_initial(const struct channels *c);

#endif
