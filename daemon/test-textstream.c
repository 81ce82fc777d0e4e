/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for daemon/textstream.c: UTF-8 repair and stop-string hold-back. */
#include <stdio.h>
#include <string.h>

#include "daemon/textstream.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

/* Feed `pieces` one by one, releasing after each; returns what went out and
 * whether a stop string ended it. */
static int run(const char *const *pieces, const uint8_t *stops, uint32_t n_stops, char *out, size_t cap)
{
    struct text_stream t;
    text_stream_init(&t, stops, n_stops);
    size_t len = 0;
    int hit = 0;
    for (size_t i = 0; pieces[i] && !hit; i++) {
        int last = pieces[i + 1] == NULL;
        CHECK(text_stream_feed(&t, (const uint8_t *)pieces[i], (uint32_t)strlen(pieces[i])) == 0);
        if (last)
            CHECK(text_stream_end(&t) == 0);
        uint32_t n;
        hit = text_stream_ready(&t, last, &n);
        if (n && len + n < cap) {
            memcpy(out + len, text_stream_data(&t), n);
            len += n;
        }
        text_stream_consume(&t, hit ? text_stream_len(&t) : n);
    }
    out[len] = '\0';
    text_stream_free(&t);
    return hit;
}

int main(void)
{
    char out[256];
    /* Plain ASCII passes straight through. */
    const char *a[] = { "hello ", "world", NULL };
    CHECK(run(a, NULL, 0, out, sizeof(out)) == 0 && strcmp(out, "hello world") == 0);

    /* A code point split over tokens is held, then sent whole. */
    struct text_stream t;
    text_stream_init(&t, NULL, 0);
    uint32_t n;
    CHECK(text_stream_feed(&t, (const uint8_t *)"caf\xc3", 4) == 0);
    CHECK(text_stream_ready(&t, 0, &n) == 0 && n == 3);
    text_stream_consume(&t, n);
    CHECK(text_stream_feed(&t, (const uint8_t *)"\xa9!", 2) == 0);
    CHECK(text_stream_ready(&t, 0, &n) == 0 && n == 3 && memcmp(text_stream_data(&t), "\xc3\xa9!", 3) == 0);
    text_stream_free(&t);

    /* Invalid bytes become U+FFFD; a broken sequence one U+FFFD, then the byte afresh. */
    const char *b[] = { "\xff", "x\xe2\x82", "A", "\xc0\xaf", "\xed\xa0\x80", NULL };
    run(b, NULL, 0, out, sizeof(out));
    CHECK(strcmp(out, "\xef\xbf\xbdx\xef\xbf\xbd" "A" "\xef\xbf\xbd\xef\xbf\xbd" "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") == 0);
    /* An unfinished code point at the end is repaired. */
    const char *c[] = { "ok", "\xf0\x9f\x98", NULL };
    run(c, NULL, 0, out, sizeof(out));
    CHECK(strcmp(out, "ok\xef\xbf\xbd") == 0);
    /* A 4-byte code point across three tokens. */
    const char *d[] = { "\xf0", "\x9f\x98", "\x80", "!", NULL };
    run(d, NULL, 0, out, sizeof(out));
    CHECK(strcmp(out, "\xf0\x9f\x98\x80!") == 0);

    /* Stop strings: blob {u16 len, bytes}. */
    uint8_t blob[] = { 3, 0, 'E', 'N', 'D', 2, 0, '\n', '\n' };
    const char *e[] = { "one E", "N", "D two", NULL };
    CHECK(run(e, blob, 2, out, sizeof(out)) == 1 && strcmp(out, "one ") == 0);
    /* A prefix that does not complete is released once it cannot match. */
    const char *f[] = { "x E", "Nd y", NULL };
    CHECK(run(f, blob, 2, out, sizeof(out)) == 0 && strcmp(out, "x ENd y") == 0);
    /* Held prefix is never released early. */
    text_stream_init(&t, blob, 2);
    CHECK(text_stream_feed(&t, (const uint8_t *)"abc EN", 6) == 0);
    CHECK(text_stream_ready(&t, 0, &n) == 0 && n == 4);
    CHECK(text_stream_ready(&t, 1, &n) == 0 && n == 6);   /* final: everything */
    text_stream_free(&t);
    /* Earliest occurrence wins when two complete at once. */
    const char *g[] = { "a\n\nEND", NULL };
    CHECK(run(g, blob, 2, out, sizeof(out)) == 1 && strcmp(out, "a") == 0);
    /* Multi-byte stop string against repaired text. */
    uint8_t blob2[] = { 2, 0, 0xc3, 0xa9 };
    const char *h[] = { "caf\xc3", "\xa9 au lait", NULL };
    CHECK(run(h, blob2, 1, out, sizeof(out)) == 1 && strcmp(out, "caf") == 0);

    if (failures) {
        fprintf(stderr, "test-textstream: %d failures\n", failures);
        return 1;
    }
    printf("test-textstream: ok\n");
    return 0;
}
