/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A thin C layer over the CUDA driver API: one device, its primary
 * context, modules loaded from cubin files, device memory, launches and
 * event timing. It is what the CUDA backend and the GPU test program
 * (gpu-check) stand on.
 *
 * libcuda.so.1 is opened with dlopen at run time instead of being linked:
 * the same binary then runs on machines without the NVIDIA driver (CI, the
 * AMD target) and reports -ENODEV with a readable reason instead of failing
 * in the dynamic loader. The prototypes still come from cuda.h, so every
 * call is type-checked against the toolkit headers at build time; symbol
 * names are taken after cuda.h's versioning macros (cuMemAlloc ->
 * cuMemAlloc_v2, ...), i.e. the ABI the headers describe.
 *
 * Errors: 0 or negative errno; gpu_cuda_last_error() says what failed.
 * Not thread-safe: one owner thread per device handle.
 */
#ifndef RESIDENT_KERNELS_CUDA_CUDA_DEVICE_H
#define RESIDENT_KERNELS_CUDA_CUDA_DEVICE_H

#include <stddef.h>
#include <stdint.h>

struct gpu_cuda;
typedef uint64_t gpu_cuda_ptr;           /* CUdeviceptr                      */
typedef void *gpu_cuda_module;           /* CUmodule                         */
typedef void *gpu_cuda_function;         /* CUfunction                       */

/* Open device `ordinal`. Returns 0, -ENODEV (no driver or no device; the
 * message says which), -EIO or -ENOMEM. On failure *out is NULL and, if
 * err is non-NULL, the reason is copied there. */
int gpu_cuda_open(int ordinal, struct gpu_cuda **out, char *err, size_t err_len);
void gpu_cuda_close(struct gpu_cuda *d);
const char *gpu_cuda_last_error(const struct gpu_cuda *d);

/* "NVIDIA H200, sm_90, 132 SMs, 141 GB" style description. */
const char *gpu_cuda_describe(const struct gpu_cuda *d);
int gpu_cuda_sm_count(const struct gpu_cuda *d);

/* Load a cubin file; the module lives until gpu_cuda_close. */
int gpu_cuda_module_load(struct gpu_cuda *d, const char *path, gpu_cuda_module *out);
int gpu_cuda_function_get(struct gpu_cuda *d, gpu_cuda_module m, const char *name,
                          gpu_cuda_function *out);

int gpu_cuda_mem_alloc(struct gpu_cuda *d, size_t bytes, gpu_cuda_ptr *out);
void gpu_cuda_mem_free(struct gpu_cuda *d, gpu_cuda_ptr p);
int gpu_cuda_mem_upload(struct gpu_cuda *d, gpu_cuda_ptr dst, const void *src, size_t bytes);
int gpu_cuda_mem_download(struct gpu_cuda *d, void *dst, gpu_cuda_ptr src, size_t bytes);
int gpu_cuda_mem_fill32(struct gpu_cuda *d, gpu_cuda_ptr dst, uint32_t value, size_t count);
int gpu_cuda_mem_zero(struct gpu_cuda *d, gpu_cuda_ptr dst, size_t bytes);
int gpu_cuda_mem_copy(struct gpu_cuda *d, gpu_cuda_ptr dst, gpu_cuda_ptr src, size_t bytes);

/* Launch on the context's default stream; args as for cuLaunchKernel. */
int gpu_cuda_launch(struct gpu_cuda *d, gpu_cuda_function f, unsigned gx, unsigned gy,
                    unsigned gz, unsigned block, unsigned smem, void **args);
int gpu_cuda_sync(struct gpu_cuda *d);

/* Time a stretch of launches: start, launches, then stop returns the
 * elapsed milliseconds measured by device events. */
int gpu_cuda_timer_start(struct gpu_cuda *d);
int gpu_cuda_timer_stop(struct gpu_cuda *d, float *ms);

#endif
