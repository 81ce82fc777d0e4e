/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internals of the scalar reference backend that tests and other CPU
 * backends reuse (the public entry point is kb_cpu_ref_create in
 * kernels/backend.h).
 */
#ifndef RESIDENT_KERNELS_CPU_REF_H
#define RESIDENT_KERNELS_CPU_REF_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/backend.h"

/* Cheap sanity checks on a weight descriptor (shapes were validated by
 * the engine at bind time): data present, positive shape, a known type,
 * W4 with scales and in_features a multiple of the group. */
bool kb_ref_weight_ok(const struct kb_weight *w);

/* The Gated DeltaNet block's constant tensors (conv taps, A_log, dt_bias,
 * norm weight) are dense and sized for g's head configuration, which the
 * caller has checked (heads > 0, n_v_heads % n_k_heads == 0). */
bool kb_ref_gdn_consts_ok(const struct kb_gdn *g);

/* Dequantise row r of any weight (dense or W4 g32) into out[w->cols]
 * exactly as the reference matmul sees it. The caller guarantees
 * 0 <= r < w->rows and a valid descriptor. */
void kb_ref_weight_row(const struct kb_weight *w, int64_t r, float *out);

/* Host-memory backend ops shared by the CPU backends (ref and fast): free,
 * upload/download/copy (memmove), zero, and the capability bits of a
 * backend that computes on host memory and reads the weight mapping. */
void     kb_host_free(struct kb_backend *be, void *p);
int      kb_host_memcpy(struct kb_backend *be, void *dst, const void *src, size_t bytes);
int      kb_host_zero(struct kb_backend *be, void *dst, size_t bytes);
uint32_t kb_host_caps(struct kb_backend *be);

#endif
