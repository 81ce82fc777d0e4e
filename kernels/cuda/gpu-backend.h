/* SPDX-License-Identifier: Apache-2.0 */
/*
 * GPU implementations of the backend interface (kernels/backend.h) over the
 * kernels of kernels/gpu: one C source (kernels/cuda/gpu-backend.c) built
 * against the CUDA driver layer (kb_cuda_create, sm_90 cubins) and against
 * the HIP module layer (kb_hip_create, gfx1151 code objects).
 *
 * Memory: alloc returns device memory; weights are copied to the device by
 * weight_prepare (kernels never read the host mapping: wrong results were
 * seen on gfx1151 elsewhere when they did). Quantised weights need bf16
 * scales and no g_idx (caps say so); dense weights may be f32, f16, bf16.
 */
#ifndef RESIDENT_KERNELS_CUDA_GPU_BACKEND_H
#define RESIDENT_KERNELS_CUDA_GPU_BACKEND_H

#include <stdint.h>

#include "kernels/backend.h"

struct kb_gpu_params {
    int32_t     device;                  /* ordinal, 0 = first               */
    const char *kernel_dir;              /* folder with NAME.<arch>.cubin /
                                            .hsaco files (build dir kernels/gpu) */
};

/* 0, -ENODEV (no driver or device; kb_*_create_error() says why),
 * -ENOENT (kernel files missing), -ENOMEM, -EIO. */
int kb_cuda_create(const struct kb_gpu_params *params, struct kb_backend **out);
int kb_hip_create(const struct kb_gpu_params *params, struct kb_backend **out);

/* Reason of the last failed create (process-wide text, not thread-safe). */
const char *kb_cuda_create_error(void);
const char *kb_hip_create_error(void);

/* The device a backend made by kb_cuda_create / kb_hip_create runs on, e.g.
 * "NVIDIA H200, sm_90, 132 SMs, 139.8 GiB" (for logs; valid while it lives). */
const char *kb_cuda_describe(const struct kb_backend *be);
const char *kb_hip_describe(const struct kb_backend *be);

#endif
