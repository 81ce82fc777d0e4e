/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared by the cmocka tests that compare the engine with the transformers
 * goldens (test-forward.c: the reference backend; test-fast-e2e.c: the fast
 * CPU backend): the fixture list, golden tensors read from
 * tests/data/goldens/ (layout: tests/data/README.md), and the two measures
 * both report (relative L2 error, argmax). Include after
 * <cmocka.h>; each test sets data_dir to RESIDENT_SOURCE_ROOT/tests/data.
 */
#ifndef RESIDENT_ENGINE_TEST_GOLDENS_H
#define RESIDENT_ENGINE_TEST_GOLDENS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

static char data_dir[1024];

struct fixture {
    const char *model;
    const char *goldens;
};

/* tiny-w4g32-fused is tiny-w4g32 re-laid-out: same weights, same goldens */
static const struct fixture fixtures[] = {
    { "tiny-w4g32", "tiny-w4g32" },
    { "tiny-w4g32-partial", "tiny-w4g32-partial" },
    { "tiny-bf16", "tiny-bf16" },
    { "tiny-w4g32-fused", "tiny-w4g32" },
};

/* A golden tensor copied out of the mapping (alignment-safe). */
static inline void *golden(struct st_set *g, const char *name, enum st_dtype dt, uint64_t *numel)
{
    const struct st_tensor *t = st_set_find(g, name);
    if (!t)
        fail_msg("golden tensor %s missing", name);
    assert_int_equal(t->dtype, dt);
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    assert_non_null(p);
    memcpy(p, t->data, t->nbytes);
    if (numel)
        *numel = t->numel;
    return p;
}

static inline struct st_set *open_golden(const char *gold, const char *file)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/goldens/%s/%s", data_dir, gold, file);
    struct st_set *s = NULL;
    struct engine_error err = { 0 };
    if (st_set_open_file(path, &s, &err))
        fail_msg("cannot open %s: %s", path, err.msg);
    return s;
}

/* ||a - b|| / ||b|| over n values, in double. */
static inline double rel_l2(const float *a, const float *b, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(d / (r > 0 ? r : 1e-30));
}

/* Index of the largest of n values (the first on a tie). */
static inline int32_t argmax(const float *x, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

#endif
