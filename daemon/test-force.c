/* SPDX-License-Identifier: Apache-2.0 */
/*
 * daemon/force.c without a model, on the bundled tokenizer
 * (tests/data/default-model):
 *   - force_choice_from_request: auto/none/absent are free; required and
 *     named read the names; every malformed case is refused naming the field;
 *   - the phase follows the prompt's last think tag: closed -> forcing from
 *     the first token, open -> waiting for </think>, then "\n\n" + opening,
 *     or for a <tool_call> the model writes inside its reasoning, then the
 *     rest of the opening;
 *   - force_mask keeps exactly the trie's children (NaN allowed -> 0, the
 *     rest -inf) and walking the mask's single choices spells the opening;
 *   - "required" over names with a shared prefix allows both at the
 *     divergence and follows whichever is taken; a foreign id ends forcing.
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/force.h"
#include "engine/error.h"
#include "engine/text/tokenizer.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

static struct tokenizer *tok;
static int32_t vocab;

static int parse(const char *json, struct force_choice *c, char *err, size_t errlen)
{
    struct json_object *o = json_tokener_parse(json);
    int r = force_choice_from_request(o, c, err, errlen);
    json_object_put(o);
    return r;
}

#define TOOLS "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}," \
              "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}]"

static void test_choice(void)
{
    struct force_choice c;
    char err[256];
    CHECK(parse("{\"messages\":[]}", &c, err, sizeof(err)) == 0 && c.kind == FORCE_NONE);
    CHECK(parse("{" TOOLS ",\"tool_choice\":\"auto\"}", &c, err, sizeof(err)) == 0 && c.kind == FORCE_NONE);
    CHECK(parse("{" TOOLS ",\"tool_choice\":\"none\"}", &c, err, sizeof(err)) == 0 && c.kind == FORCE_NONE);
    CHECK(parse("{" TOOLS ",\"tool_choice\":\"required\"}", &c, err, sizeof(err)) == 0);
    CHECK(c.kind == FORCE_REQUIRED && c.n_names == 2 && strcmp(c.names[1], "get_time") == 0);
    force_choice_clear(&c);
    CHECK(parse("{" TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}}", &c, err,
                sizeof(err)) == 0);
    CHECK(c.kind == FORCE_NAMED && c.n_names == 1 && strcmp(c.names[0], "get_time") == 0);
    force_choice_clear(&c);

    static const struct { const char *json, *needle; } bad[] = {
        { "{" TOOLS ",\"tool_choice\":\"maybe\"}", "tool_choice \"maybe\"" },
        { "{" TOOLS ",\"tool_choice\":true}", "tool_choice must be" },
        { "{" TOOLS ",\"tool_choice\":{\"type\":\"function\"}}", "tool_choice.function.name" },
        { "{" TOOLS ",\"tool_choice\":{\"function\":{\"name\":\"get_time\"}}}", "tool_choice.type" },
        { "{" TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}}", "not among" },
        { "{\"tool_choice\":\"required\"}", "non-empty \"tools\"" },
        { "{\"tools\":{},\"tool_choice\":\"required\"}", "non-empty \"tools\"" },
        { "{\"tools\":[{\"type\":\"function\"}],\"tool_choice\":\"required\"}", "tools[0].function.name" },
        { "{\"tools\":[{\"function\":{\"name\":\"x<y\"}}],\"tool_choice\":\"required\"}", "tools[0].function.name" },
        { "{\"tools\":[{\"function\":{\"name\":\"\"}}],\"tool_choice\":\"required\"}", "tools[0].function.name" },
        { "{\"tools\":[{\"function\":{\"name\":\"a\\u0000b\"}}],\"tool_choice\":\"required\"}", "tools[0]" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        int r = parse(bad[i].json, &c, err, sizeof(err));
        if (r != -EINVAL || !strstr(err, bad[i].needle)) {
            fprintf(stderr, "case %zu: %d \"%s\" (want \"%s\")\n", i, r, err, bad[i].needle);
            failures++;
        }
        CHECK(c.n_names == 0 && c.names == NULL);
    }
}

static size_t encode(const char *text, int32_t *out, size_t cap)
{
    int32_t *ids = NULL;
    size_t n = 0;
    struct engine_error e = { 0 };
    if (tokenizer_encode(tok, text, strlen(text), &ids, &n, &e) < 0 || n > cap) {
        fprintf(stderr, "cannot tokenize %s\n", text);
        exit(1);
    }
    memcpy(out, ids, n * sizeof(int32_t));
    free(ids);
    return n;
}

/* The allowed ids of the current mask (finite logits of a row of 1.0). */
static size_t allowed(const struct force *f, float *row, int32_t *out, size_t cap)
{
    for (int32_t i = 0; i < vocab; i++)
        row[i] = (i % 7 == 0) ? NAN : 1.0f;
    if (!force_mask(f, row, vocab))
        return (size_t)-1;
    size_t n = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (isfinite(row[i])) {
            if (n < cap)
                out[n] = i;
            n++;
        } else if (!(isinf(row[i]) && row[i] < 0)) {
            failures++;     /* neither kept nor -inf */
        }
    }
    return n;
}

/* Walk single-choice masks from the current node, accepting each id. */
static size_t walk(struct force *f, float *row, int32_t *out, size_t cap)
{
    size_t n = 0;
    int32_t a[4];
    while (force_phase(f) == FORCE_ACTIVE && n < cap) {
        size_t k = allowed(f, row, a, 4);
        if (k != 1)
            break;
        out[n++] = a[0];
        force_accept(f, a[0]);
    }
    return n;
}

static void test_forcing(void)
{
    float *row = malloc((size_t)vocab * sizeof(float));
    char err[256];
    int32_t prompt[512], want[64], got[64];
    struct force_choice c = { 0 };
    CHECK(parse("{" TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}", &c,
                err, sizeof(err)) == 0);

    /* Closed reasoning (enable_thinking=false): forced from the start. */
    size_t np = encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", prompt, 512);
    struct force *f = NULL;
    CHECK(force_new(tok, &c, prompt, np, &f, err, sizeof(err)) == 0);
    CHECK(force_phase(f) == FORCE_ACTIVE);
    size_t nw = encode("<tool_call>\n<function=get_weather>\n", want, 64);
    size_t ng = walk(f, row, got, 64);
    CHECK(ng == nw && memcmp(got, want, nw * sizeof(int32_t)) == 0);
    CHECK(force_phase(f) == FORCE_DONE);
    CHECK(force_mask(f, row, vocab) == 0);
    force_free(f);

    /* Open reasoning: waits (no mask) until </think>, then "\n\n" + opening. */
    np = encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n", prompt, 512);
    CHECK(force_new(tok, &c, prompt, np, &f, err, sizeof(err)) == 0);
    CHECK(force_phase(f) == FORCE_WAITING && force_mask(f, row, vocab) == 0);
    int32_t think_end = tokenizer_token_to_id(tok, "</think>"), some[8];
    size_t ns = encode("Let me think.", some, 8);
    for (size_t i = 0; i < ns; i++)
        force_accept(f, some[i]);
    CHECK(force_phase(f) == FORCE_WAITING);
    force_accept(f, think_end);
    CHECK(force_phase(f) == FORCE_ACTIVE);
    nw = encode("\n\n<tool_call>\n<function=get_weather>\n", want, 64);
    ng = walk(f, row, got, 64);
    CHECK(ng == nw && memcmp(got, want, nw * sizeof(int32_t)) == 0);
    force_free(f);

    /* A call the model opens inside its reasoning (<tool_call> before
     * </think>) is taken as the end of it: the rest of the opening is forced. */
    CHECK(force_new(tok, &c, prompt, np, &f, err, sizeof(err)) == 0);
    force_accept(f, some[0]);
    nw = encode("<tool_call>\n<function=get_weather>\n", want, 64);
    force_accept(f, want[0]);
    CHECK(force_phase(f) == FORCE_ACTIVE);
    ng = walk(f, row, got, 64);
    CHECK(ng == nw - 1 && memcmp(got, want + 1, ng * sizeof(int32_t)) == 0);
    CHECK(force_phase(f) == FORCE_DONE);
    force_free(f);
    force_choice_clear(&c);

    /* Required over get_weather / get_time: a fork where they diverge. */
    CHECK(parse("{" TOOLS ",\"tool_choice\":\"required\"}", &c, err, sizeof(err)) == 0);
    np = encode("<think>\n\n</think>\n\n", prompt, 512);
    CHECK(force_new(tok, &c, prompt, np, &f, err, sizeof(err)) == 0);
    int32_t w1[64], w2[64], a[8];
    size_t n1 = encode("<tool_call>\n<function=get_weather>\n", w1, 64);
    size_t n2 = encode("<tool_call>\n<function=get_time>\n", w2, 64);
    size_t common = 0;
    while (common < n1 && common < n2 && w1[common] == w2[common])
        common++;
    ng = walk(f, row, got, 64);
    CHECK(ng == common && memcmp(got, w1, common * sizeof(int32_t)) == 0);
    size_t k = allowed(f, row, a, 8);
    CHECK(k == 2 && ((a[0] == w1[common] && a[1] == w2[common]) || (a[0] == w2[common] && a[1] == w1[common])));
    force_accept(f, w2[common]);
    ng = walk(f, row, got, 64);
    CHECK(force_phase(f) == FORCE_DONE && ng == n2 - common - 1 &&
          memcmp(got, w2 + common + 1, ng * sizeof(int32_t)) == 0);
    force_free(f);

    /* An id outside the allowed set gives up forcing instead of breaking. */
    CHECK(force_new(tok, &c, prompt, np, &f, err, sizeof(err)) == 0);
    force_accept(f, some[0]);
    CHECK(force_phase(f) == FORCE_DONE && force_mask(f, row, vocab) == 0);
    force_free(f);
    force_choice_clear(&c);

    /* The largest choice the parser accepts: FORCE_TOOLS_MAX names of
     * FORCE_NAME_MAX bytes sharing long prefixes; every path ends. */
    c.kind = FORCE_REQUIRED;
    c.n_names = FORCE_TOOLS_MAX;
    c.names = calloc(c.n_names, sizeof(char *));
    for (size_t i = 0; i < c.n_names; i++) {
        c.names[i] = malloc(FORCE_NAME_MAX + 1);
        memset(c.names[i], 'a' + (int)(i % 3), FORCE_NAME_MAX);
        snprintf(c.names[i] + FORCE_NAME_MAX - 8, 9, "_%07u", (unsigned)(i % 10000000u));
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(force_new(tok, &c, prompt, np, &f, err, sizeof(err)) == 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* Information, not a check: seq_new runs on the event loop. */
    printf("force: %u names of %u bytes built in %.1f ms\n", FORCE_TOOLS_MAX, FORCE_NAME_MAX,
           (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    ng = walk(f, row, got, 64);
    k = allowed(f, row, a, 8);
    CHECK(force_phase(f) == FORCE_ACTIVE && k > 1 && k != (size_t)-1);
    force_accept(f, a[0]);
    for (int step = 0; step < 200 && force_phase(f) == FORCE_ACTIVE; step++) {
        if (allowed(f, row, a, 8) < 1)
            break;
        force_accept(f, a[0]);
    }
    CHECK(force_phase(f) == FORCE_DONE);
    force_free(f);
    force_choice_clear(&c);
    force_free(NULL);
    force_accept(NULL, 1);
    CHECK(force_mask(NULL, row, vocab) == 0);
    free(row);
    printf("force: openings of %zu and %zu ids fork after %zu common ids\n", n1, n2, common);
}

int main(void)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/tests/data/default-model", src ? src : ".");
    struct engine_error e = { 0 };
    if (tokenizer_load(dir, &tok, &e) < 0) {
        printf("SKIP: no bundled tokenizer at %s: %s\n", dir, e.msg);
        return 77;
    }
    vocab = (int32_t)tokenizer_token_count(tok);
    test_choice();
    test_forcing();
    tokenizer_free(tok);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("force: all checks passed\n");
    return 0;
}
