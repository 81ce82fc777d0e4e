/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Streaming detokenizer: token ids in, complete UTF-8 text out.
 *
 * A token is a byte string, and byte-level BPE happily cuts a character in
 * the middle (" 🎉" is three tokens: 10838, 236, 231). A stream therefore
 * holds back the bytes of an unfinished UTF-8 sequence until the tokens that
 * complete it arrive, and every piece it hands out is valid UTF-8 that ends
 * on a character boundary.
 *
 * Bytes that can never become valid UTF-8 (a stray continuation byte, a
 * sequence broken by the next token, or an unfinished one at the end) are
 * replaced by U+FFFD, one per maximal ill-formed subpart, which is what
 * Python's bytes.decode("utf-8", "replace") and so vLLM's text output do.
 * The replacement is computed on the concatenated byte stream, so the text
 * does not depend on how the ids are split across feed calls.
 *
 * skip_special_tokens drops added tokens whose "special" flag is set
 * (<|im_end|>, <|endoftext|>); <think>, </think>, <tool_call> and
 * </tool_call> are not special and stay visible, as in vLLM.
 *
 * A stream is owned by one thread; the tokenizer it reads may be shared.
 */
#ifndef RESIDENT_ENGINE_TEXT_DETOK_H
#define RESIDENT_ENGINE_TEXT_DETOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"
#include "engine/text/tokenizer.h"

struct detok_stream;

struct detok_params {
    bool skip_special_tokens;       /* default true, as vLLM               */
};

#define DETOK_PARAMS_DEFAULT \
    ((struct detok_params){ .skip_special_tokens = true })

/* `params` may be NULL for the defaults. The tokenizer must outlive the
 * stream. */
int detok_stream_new(const struct tokenizer *tok,
                     const struct detok_params *params,
                     struct detok_stream **out, struct engine_error *err);

void detok_stream_free(struct detok_stream *s);

/* Feed one id. On success *text / *len is the newly complete text (possibly
 * empty), valid until the next call on this stream. Returns -ERANGE for an
 * id that names no token (the stream is unchanged), -ENOMEM. */
int detok_stream_feed(struct detok_stream *s, int32_t id, const char **text,
                      size_t *len, struct engine_error *err);

/* End of stream: an unfinished sequence still held back becomes U+FFFD.
 * Returns the final piece like detok_stream_feed(), and leaves the stream
 * empty and reusable. */
int detok_stream_flush(struct detok_stream *s, const char **text,
                       size_t *len, struct engine_error *err);

/* Bytes held back now (0..3). */
size_t detok_stream_pending(const struct detok_stream *s);

/* Forget held-back bytes. */
void detok_stream_reset(struct detok_stream *s);

#endif
