/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internals of the scalar reference backend that tests and other CPU
 * backends reuse (the public entry point is kb_cpu_ref_create in
 * kernels/backend.h).
 */
#ifndef RESIDENT_KERNELS_CPU_REF_H
#define RESIDENT_KERNELS_CPU_REF_H

#include <stdint.h>

#include "kernels/backend.h"

/* Dequantise row r of any weight (dense or W4 g32) into out[w->cols]
 * exactly as the reference matmul sees it. The caller guarantees
 * 0 <= r < w->rows and a valid descriptor. */
void kb_ref_weight_row(const struct kb_weight *w, int64_t r, float *out);

#endif
