/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz the forced-tool-call path (daemon/force.c) with hostile CHAT
 * payloads, on the bundled model's tokenizer. Checks, not just "no crash":
 *  - force_choice_from_request either succeeds or refuses with a message;
 *    a refusal leaves no names behind;
 *  - a choice it accepts always builds a constraint, or force_new refuses
 *    it with a message (a name the tokenizer cannot encode);
 *  - walking a built constraint by always taking the lowest allowed id
 *    (and </think> while it waits) ends in FORCE_DONE within the opening's
 *    length, and every narrowed row keeps at least one id.
 * Input: byte 0 bit 0 picks the prompt (reasoning closed / open); the rest
 * is the CHAT JSON.
 */
#include <limits.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/force.h"
#include "engine/error.h"
#include "engine/text/tokenizer.h"

#ifndef FORCE_FUZZ_SOURCE_ROOT
#define FORCE_FUZZ_SOURCE_ROOT "."
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tokenizer *tok;
static float *row;
static int32_t vocab, prompts[2][64];
static size_t n_prompts[2];

static void fail(const char *what)
{
    fprintf(stderr, "fuzz-force: property violated: %s\n", what);
    abort();
}

static void setup(void)
{
    if (tok)
        return;
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%.*s/tests/data/default-model", 2000, root ? root : FORCE_FUZZ_SOURCE_ROOT);
    struct engine_error e = { 0 };
    if (tokenizer_load(dir, &tok, &e) != 0) {
        fprintf(stderr, "fuzz-force: %s\n", e.msg);
        abort();
    }
    vocab = (int32_t)tokenizer_token_count(tok);
    row = malloc((size_t)vocab * sizeof(float));
    static const char *const text[2] = { "<|im_start|>assistant\n<think>\n\n</think>\n\n",
                                         "<|im_start|>assistant\n<think>\n" };
    for (int k = 0; k < 2; k++) {
        int32_t *ids = NULL;
        if (!row || tokenizer_encode(tok, text[k], strlen(text[k]), &ids, &n_prompts[k], &e) < 0 ||
            n_prompts[k] > 64)
            fail("setup");
        memcpy(prompts[k], ids, n_prompts[k] * sizeof(int32_t));
        free(ids);
    }
}

static void walk(struct force *f)
{
    int32_t think_end = tokenizer_token_to_id(tok, "</think>");
    if (force_phase(f) == FORCE_WAITING) {
        if (force_mask(f, row, vocab) != 0)
            fail("a waiting constraint narrowed a row");
        force_accept(f, think_end);
    }
    /* An opening is at most "\n\n<tool_call>\n<function=" + FORCE_NAME_MAX bytes + ">\n". */
    for (int step = 0; step < 400 && force_phase(f) == FORCE_ACTIVE; step++) {
        for (int32_t i = 0; i < vocab; i++)
            row[i] = (float)(i % 13);
        if (force_mask(f, row, vocab) != 1)
            fail("an active constraint left a row free");
        int32_t pick = -1;
        for (int32_t i = 0; i < vocab && pick < 0; i++)
            if (isfinite(row[i]))
                pick = i;
        if (pick < 0)
            fail("a narrowed row keeps no id");
        force_accept(f, pick);
    }
    if (force_phase(f) != FORCE_DONE)
        fail("the opening did not end");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    setup();
    int open = data[0] & 1;
    struct json_tokener *jt = json_tokener_new_ex(64);
    struct json_object *req = jt ? json_tokener_parse_ex(jt, (const char *)data + 1, (int)(size - 1)) : NULL;
    json_tokener_free(jt);
    struct force_choice c;
    char err[256] = "";
    int r = force_choice_from_request(req, &c, err, sizeof(err));
    if (r < 0 && (!err[0] || c.n_names || c.names))
        fail("a refusal without a message, or with names left");
    if (r == 0 && c.kind != FORCE_NONE) {
        struct force *f = NULL;
        err[0] = '\0';
        r = force_new(tok, &c, prompts[open], n_prompts[open], &f, err, sizeof(err));
        if (r < 0 && !err[0])
            fail("force_new refused without a message");
        if (r == 0)
            walk(f);
        force_free(f);
    }
    force_choice_clear(&c);
    json_object_put(req);
    return 0;
}
