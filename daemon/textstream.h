/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output text of one sequence: UTF-8 repair and stop-string hold-back.
 *
 * Generators hand out raw bytes per token; a byte-level tokenizer may split
 * a code point over two tokens, or produce bytes that never form one.
 * Clients must only ever see valid UTF-8, and must never see part of a
 * stop string that later completes. So each sequence keeps:
 *
 *  - a tiny UTF-8 decoder state: a code point still missing continuation
 *    bytes waits in `part`; a byte that cannot continue or start a code
 *    point becomes U+FFFD (one per maximal invalid subpart, the Unicode
 *    "substitution of maximal subparts" practice); text_stream_end() turns
 *    an unfinished code point into U+FFFD;
 *  - a hold buffer of repaired text not yet released. After each token,
 *    text_stream_ready() says how much of it may go out: everything except
 *    the longest suffix that is a proper prefix of some stop string, or,
 *    when a stop string occurs in the buffer, everything before the
 *    earliest occurrence (the request then ends; the stop string itself is
 *    never sent). Matches only count on character boundaries, so released
 *    text is always whole code points.
 *
 * Stop strings are matched on repaired text, in the blob format of the
 * SUBMIT record (n x {u16 len, bytes}); the blob must outlive the stream.
 *
 * Errors: 0 or -ENOMEM.
 */
#ifndef RESIDENT_DAEMON_TEXTSTREAM_H
#define RESIDENT_DAEMON_TEXTSTREAM_H

#include <stdint.h>

struct text_stream {
    uint8_t        part[4];     /* unfinished code point */
    uint32_t       need, have;  /* its length and bytes seen; need == 0: none */
    uint8_t       *hold;        /* repaired, unreleased text */
    uint32_t       hold_len, hold_cap;
    const uint8_t *stops;       /* stop-string blob, not owned */
    uint32_t       n_stops;
};

/**
 * text_stream_init() - start an empty stream
 * @t: stream
 * @stops: stop-string blob (n x {u16 len, bytes}); NULL when @n_stops is 0
 * @n_stops: number of stop strings
 */
void text_stream_init(struct text_stream *t, const uint8_t *stops, uint32_t n_stops);

/**
 * text_stream_free() - release the hold buffer
 * @t: stream
 */
void text_stream_free(struct text_stream *t);

/**
 * text_stream_feed() - add raw generator bytes
 * @t: stream
 * @b: bytes
 * @n: count
 *
 * Return: 0 or -ENOMEM.
 */
int text_stream_feed(struct text_stream *t, const uint8_t *b, uint32_t n);

/**
 * text_stream_end() - the sequence ends: repair an unfinished code point
 * @t: stream
 *
 * Return: 0 or -ENOMEM.
 */
int text_stream_end(struct text_stream *t);

/**
 * text_stream_ready() - how much held text may be released now
 * @t: stream
 * @final: the sequence ends with this token: release everything
 * @out: bytes at the start of text_stream_data() to release
 *
 * Return: 1 when a stop string matched (*out = bytes before it; the rest
 * must be dropped), else 0.
 */
int text_stream_ready(const struct text_stream *t, int final, uint32_t *out);

/**
 * text_stream_data() - the held text
 * @t: stream
 *
 * Return: pointer to text_stream_len() bytes (may be NULL when empty).
 */
static inline const uint8_t *text_stream_data(const struct text_stream *t) { return t->hold; }
static inline uint32_t text_stream_len(const struct text_stream *t) { return t->hold_len; }

/**
 * text_stream_consume() - drop released bytes from the front
 * @t: stream
 * @n: bytes (clamped to what is held)
 */
void text_stream_consume(struct text_stream *t, uint32_t n);

#endif
