/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz the output-text path: arbitrary generator bytes in arbitrary token
 * splits, with up to three stop strings. Checks, not just "no crash":
 *  - everything released is valid UTF-8;
 *  - no stop string occurs (on a character boundary) in released text;
 *  - without a match, the released text equals the repair of all input
 *    fed at once (repair does not depend on how bytes are split);
 *  - with a match, released text + the stop string that matched is a
 *    prefix of that repair.
 * Input: byte 0 = number of stop strings (0..3); each = length byte (1..8)
 * + bytes; then pairs {split length 1..8, bytes}.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/textstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!l || i + l > n)
            return 0;
        for (size_t k = 1; k < l; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        if (l == 3 && ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f)))
            return 0;
        if (l == 4 && ((c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f)))
            return 0;
        i += l;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t n_stops = data[0] % 4;
    size_t pos = 1;
    uint8_t blob[3 * 10];
    size_t blen = 0;
    const uint8_t *stop_s[3];
    uint32_t stop_l[3];
    for (uint32_t k = 0; k < n_stops; k++) {
        if (pos >= size)
            return 0;
        uint16_t l = (uint16_t)(data[pos++] % 8 + 1);
        if (pos + l > size)
            return 0;
        memcpy(blob + blen, &l, 2);
        memcpy(blob + blen + 2, data + pos, l);
        stop_s[k] = blob + blen + 2;
        stop_l[k] = l;
        blen += 2u + l;
        pos += l;
    }
    /* Split the rest into tokens: {length 1..8, bytes}. */
    uint8_t *bytes = malloc(size + 1);
    size_t *cuts = malloc(sizeof(size_t) * (size + 1));
    size_t n_bytes = 0, n_cuts = 0;
    while (pos < size) {
        size_t n = (size_t)(data[pos++] % 8) + 1;
        if (n > size - pos)
            n = size - pos;
        memcpy(bytes + n_bytes, data + pos, n);
        n_bytes += n;
        pos += n;
        cuts[n_cuts++] = n_bytes;
    }
    /* Reference: all bytes at once. */
    struct text_stream ref;
    text_stream_init(&ref, NULL, 0);
    if (text_stream_feed(&ref, bytes, (uint32_t)n_bytes) < 0 || text_stream_end(&ref) < 0)
        abort();
    if (!valid_utf8(text_stream_data(&ref), text_stream_len(&ref)))
        abort();

    struct text_stream t;
    text_stream_init(&t, n_stops ? blob : NULL, n_stops);
    uint8_t *out = malloc(text_stream_len(&ref) + 1);
    size_t out_len = 0, from = 0;
    int hit = 0, ended = 0;
    for (size_t c = 0; c < n_cuts && !hit; c++) {
        int last = c + 1 == n_cuts;
        if (text_stream_feed(&t, bytes + from, (uint32_t)(cuts[c] - from)) < 0)
            abort();
        from = cuts[c];
        if (last) {
            if (text_stream_end(&t) < 0)
                abort();
            ended = 1;
        }
        uint32_t r;
        hit = text_stream_ready(&t, last, &r);
        if (out_len + r > text_stream_len(&ref))
            abort();
        if (r)
            memcpy(out + out_len, text_stream_data(&t), r);
        out_len += r;
        text_stream_consume(&t, hit ? text_stream_len(&t) : r);
    }
    if (!valid_utf8(out, out_len))
        abort();
    /* No stop string starts on a character boundary of the released text
     * (inside a character, e.g. a stray continuation byte inside U+FFFD,
     * is not a match: the stream is matched as text). */
    for (uint32_t k = 0; k < n_stops; k++)
        for (size_t at = 0; at + stop_l[k] <= out_len; at++)
            if ((out[at] & 0xc0) != 0x80 && memcmp(out + at, stop_s[k], stop_l[k]) == 0)
                abort();
    if (out_len && memcmp(out, text_stream_data(&ref), out_len) != 0)
        abort();
    if (!hit && ended && out_len != text_stream_len(&ref))
        abort();
    if (hit) {
        /* Some stop string follows the released text in the reference. */
        int found = 0;
        for (uint32_t k = 0; k < n_stops; k++)
            if (out_len + stop_l[k] <= text_stream_len(&ref) &&
                memcmp(text_stream_data(&ref) + out_len, stop_s[k], stop_l[k]) == 0)
                found = 1;
        if (!found)
            abort();
    }
    free(out);
    free(bytes);
    free(cuts);
    text_stream_free(&t);
    text_stream_free(&ref);
    return 0;
}
