/* SPDX-License-Identifier: Apache-2.0 */
/* UTF-8 repair and stop-string hold-back (see daemon/textstream.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/textstream.h"

static const uint8_t replacement[3] = { 0xef, 0xbf, 0xbd };   /* U+FFFD */

void text_stream_init(struct text_stream *t, const uint8_t *stops, uint32_t n_stops)
{
    memset(t, 0, sizeof(*t));
    t->stops = stops;
    t->n_stops = stops ? n_stops : 0;
}

void text_stream_free(struct text_stream *t)
{
    free(t->hold);
    t->hold = NULL;
    t->hold_len = t->hold_cap = 0;
}

static int hold_put(struct text_stream *t, const uint8_t *b, uint32_t n)
{
    if (t->hold_len + (uint64_t)n > t->hold_cap) {
        uint64_t cap = t->hold_cap ? t->hold_cap : 64;
        while (cap < t->hold_len + (uint64_t)n)
            cap *= 2;
        if (cap > UINT32_MAX)
            return -ENOMEM;
        uint8_t *nh = realloc(t->hold, (size_t)cap);
        if (!nh)
            return -ENOMEM;
        t->hold = nh;
        t->hold_cap = (uint32_t)cap;
    }
    memcpy(t->hold + t->hold_len, b, n);
    t->hold_len += n;
    return 0;
}

/* Length of the code point a lead byte starts; 0 = not a lead byte. */
static uint32_t utf8_len(uint8_t c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return 2;
    if (c >= 0xe0 && c <= 0xef)
        return 3;
    if (c >= 0xf0 && c <= 0xf4)
        return 4;
    return 0;
}

/* Is `c` valid as byte `k` (>= 1) of a code point starting with `lead`?
 * The second-byte ranges exclude overlongs (E0, F0), surrogates (ED) and
 * code points above U+10FFFF (F4). */
static int utf8_cont_ok(uint8_t lead, uint32_t k, uint8_t c)
{
    if (c < 0x80 || c > 0xbf)
        return 0;
    if (k == 1) {
        if (lead == 0xe0 && c < 0xa0)
            return 0;
        if (lead == 0xed && c > 0x9f)
            return 0;
        if (lead == 0xf0 && c < 0x90)
            return 0;
        if (lead == 0xf4 && c > 0x8f)
            return 0;
    }
    return 1;
}

int text_stream_feed(struct text_stream *t, const uint8_t *b, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = b[i];
        if (t->need) {
            if (utf8_cont_ok(t->part[0], t->have, c)) {
                t->part[t->have++] = c;
                if (t->have == t->need) {
                    if (hold_put(t, t->part, t->need) < 0)
                        return -ENOMEM;
                    t->need = t->have = 0;
                }
                continue;
            }
            /* The unfinished code point is broken: one U+FFFD for it,
             * then `c` is looked at afresh. */
            if (hold_put(t, replacement, 3) < 0)
                return -ENOMEM;
            t->need = t->have = 0;
        }
        uint32_t l = utf8_len(c);
        if (l == 1) {
            if (hold_put(t, &c, 1) < 0)
                return -ENOMEM;
        } else if (l == 0) {
            if (hold_put(t, replacement, 3) < 0)
                return -ENOMEM;
        } else {
            t->part[0] = c;
            t->need = l;
            t->have = 1;
        }
    }
    return 0;
}

int text_stream_end(struct text_stream *t)
{
    if (!t->need)
        return 0;
    t->need = t->have = 0;
    return hold_put(t, replacement, 3);
}

/* The hold buffer only ever holds whole code points, so a position is a
 * character boundary exactly when its byte is not a continuation byte.
 * Matches and held-back prefixes must start on one: otherwise a stop
 * string made of, say, one continuation byte could cut a character (e.g.
 * the last byte of U+FFFD) and release invalid UTF-8. */
static int boundary(const struct text_stream *t, uint32_t i)
{
    return i >= t->hold_len || (t->hold[i] & 0xc0) != 0x80;
}

int text_stream_ready(const struct text_stream *t, int final, uint32_t *out)
{
    long best = -1;
    uint32_t keep = 0, pos = 0;
    for (uint32_t k = 0; k < t->n_stops; k++) {
        uint16_t l;
        memcpy(&l, t->stops + pos, 2);
        const uint8_t *st = t->stops + pos + 2;
        pos += 2u + l;
        if (l == 0)
            continue;
        /* Earliest occurrence on a character boundary. */
        for (uint32_t from = 0; l <= t->hold_len - from;) {
            const uint8_t *hit = memmem(t->hold + from, t->hold_len - from, st, l);
            if (!hit)
                break;
            uint32_t at = (uint32_t)(hit - t->hold);
            if (boundary(t, at)) {
                if (best < 0 || at < best)
                    best = at;
                break;
            }
            from = at + 1;
        }
        /* Longest proper prefix of this stop string ending the buffer. */
        uint32_t maxp = (uint32_t)l - 1 < t->hold_len ? (uint32_t)l - 1 : t->hold_len;
        for (uint32_t p = maxp; p > keep; p--)
            if (boundary(t, t->hold_len - p) && memcmp(t->hold + t->hold_len - p, st, p) == 0) {
                keep = p;
                break;
            }
    }
    if (best >= 0) {
        *out = (uint32_t)best;
        return 1;
    }
    *out = final ? t->hold_len : t->hold_len - keep;
    return 0;
}

void text_stream_consume(struct text_stream *t, uint32_t n)
{
    if (n >= t->hold_len) {
        t->hold_len = 0;
        return;
    }
    memmove(t->hold, t->hold + n, t->hold_len - n);
    t->hold_len -= n;
}
