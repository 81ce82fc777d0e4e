/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cpu-ref behind a wrapper that rounds like the GPU backend does, for
 * engine/test-gpu-e2e.c (see test-gpu-e2e-pert.c for each mode).
 */
#ifndef RESIDENT_ENGINE_TEST_GPU_E2E_PERT_H
#define RESIDENT_ENGINE_TEST_GPU_E2E_PERT_H

#include <stdint.h>

#include "kernels/backend.h"

enum pert {
    PERT_BF16,                           /* matmul inputs rounded to bf16     */
    PERT_Q8,                             /* matmul inputs int8 per 32         */
    PERT_W_EXACT,                        /* W4 used as q * s, not bf16(q * s) */
    PERT_Q8_W_EXACT,                     /* both (MMQ), MoE input only        */
    PERT_GPU,                            /* the GPU twin: every W4 product as
                                          * the GPU backend computes it      */
    N_PERT
};
extern const char *const pert_name[N_PERT];

struct pert_be {
    struct kb_backend be;                /* first: ops get &pert_be.be       */
    struct kb_backend_ops ops;
    struct kb_backend *inner;            /* cpu-ref                          */
    enum pert mode;
    float *buf;                          /* rounded inputs                   */
    size_t cap;
    long flips;                          /* tokens x layers with another top-k */
};

/* p wraps inner (not owned) in `mode`; pert_be_fini frees its buffers. */
void pert_be_init(struct pert_be *p, struct kb_backend *inner, enum pert mode);
void pert_be_fini(struct pert_be *p);

#endif
