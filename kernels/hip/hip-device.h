/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A thin C layer over the HIP module API (hipModuleLoadData,
 * hipModuleGetFunction, hipModuleLaunchKernel): one device, gfx1151 code
 * objects from kernels/gpu loaded from files, device memory, launches and
 * event timing. Same shape as kernels/cuda/cuda-device.h, so the test
 * program gpu-check is built for either vendor from one source.
 *
 * Linked against libamdhip64 (Debian's HIP 5.2 builds and runs here and
 * reports no device; on Strix Halo the runtime is ROCm >= 6.4, the code
 * objects are the same). Weights and activations always live in hipMalloc
 * memory: kernels never read host or mmap'd memory, which returned wrong
 * results on gfx1151 in other projects.
 *
 * Errors: 0 or negative errno; gpu_hip_last_error() says what failed.
 * Not thread-safe: one owner thread per device handle.
 */
#ifndef RESIDENT_KERNELS_HIP_HIP_DEVICE_H
#define RESIDENT_KERNELS_HIP_HIP_DEVICE_H

#include <stddef.h>
#include <stdint.h>

struct gpu_hip;
typedef uint64_t gpu_hip_ptr;            /* hipDeviceptr_t as an integer     */
typedef void *gpu_hip_module;            /* hipModule_t                      */
typedef void *gpu_hip_function;          /* hipFunction_t                    */

/* Open device `ordinal`. Returns 0, -ENODEV (no runtime device; the
 * message says so), -EIO or -ENOMEM. On failure *out is NULL and, if
 * err is non-NULL, the reason is copied there. */
int gpu_hip_open(int ordinal, struct gpu_hip **out, char *err, size_t err_len);
void gpu_hip_close(struct gpu_hip *d);
const char *gpu_hip_last_error(const struct gpu_hip *d);

/* "AMD Radeon 8060S, gfx1151, 40 CUs, 96 GiB" style description. */
const char *gpu_hip_describe(const struct gpu_hip *d);
int gpu_hip_sm_count(const struct gpu_hip *d);

/* Load a code object (.hsaco) file; the module lives until gpu_hip_close. */
int gpu_hip_module_load(struct gpu_hip *d, const char *path, gpu_hip_module *out);
int gpu_hip_function_get(struct gpu_hip *d, gpu_hip_module m, const char *name,
                          gpu_hip_function *out);

int gpu_hip_mem_alloc(struct gpu_hip *d, size_t bytes, gpu_hip_ptr *out);
void gpu_hip_mem_free(struct gpu_hip *d, gpu_hip_ptr p);
int gpu_hip_mem_upload(struct gpu_hip *d, gpu_hip_ptr dst, const void *src, size_t bytes);
int gpu_hip_mem_download(struct gpu_hip *d, void *dst, gpu_hip_ptr src, size_t bytes);
int gpu_hip_mem_fill32(struct gpu_hip *d, gpu_hip_ptr dst, uint32_t value, size_t count);
int gpu_hip_mem_zero(struct gpu_hip *d, gpu_hip_ptr dst, size_t bytes);
int gpu_hip_mem_copy(struct gpu_hip *d, gpu_hip_ptr dst, gpu_hip_ptr src, size_t bytes);

/* Launch on the context's default stream; args as for hipModuleLaunchKernel. */
int gpu_hip_launch(struct gpu_hip *d, gpu_hip_function f, unsigned gx, unsigned gy,
                    unsigned gz, unsigned block, unsigned smem, void **args);
int gpu_hip_sync(struct gpu_hip *d);

/* Time a stretch of launches: start, launches, then stop returns the
 * elapsed milliseconds measured by device events. */
int gpu_hip_timer_start(struct gpu_hip *d);
int gpu_hip_timer_stop(struct gpu_hip *d, float *ms);

#endif
