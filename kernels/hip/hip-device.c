/* SPDX-License-Identifier: Apache-2.0 */
/* HIP module API layer; see hip-device.h. */
#include "kernels/hip/hip-device.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* hip_runtime_api.h serves both HIP platforms and needs to be told which;
 * this layer is the AMD one. */
#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1
#endif
#include <hip/hip_runtime_api.h>

#define GPU_HIP_MAX_MODULES 32

struct gpu_hip {
    int dev;
    hipEvent_t ev0, ev1;
    hipModule_t modules[GPU_HIP_MAX_MODULES];
    int n_modules;
    int cu_count;
    char desc[160];
    char err[320];
};

static int hip_fail(struct gpu_hip *d, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, sizeof(d->err), fmt, ap);
    va_end(ap);
    return code;
}

static int hip_check(struct gpu_hip *d, hipError_t r, const char *what)
{
    if (r == hipSuccess)
        return 0;
    int code = r == hipErrorOutOfMemory ? -ENOMEM :
               r == hipErrorInvalidValue ? -EINVAL :
               (r == hipErrorNoDevice || r == hipErrorInvalidDevice) ? -ENODEV : -EIO;
    return hip_fail(d, code, "hip: %s failed: %s (hipError %d)", what, hipGetErrorString(r), (int)r);
}

void gpu_hip_close(struct gpu_hip *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n_modules; i++)
        hipModuleUnload(d->modules[i]);
    if (d->ev0)
        hipEventDestroy(d->ev0);
    if (d->ev1)
        hipEventDestroy(d->ev1);
    free(d);
}

static int hip_open_impl(struct gpu_hip *d, int ordinal)
{
    int count = 0;
    hipError_t r = hipInit(0);
    if (r == hipSuccess)
        r = hipGetDeviceCount(&count);
    if (r == hipErrorNoDevice || r == hipErrorInvalidDevice || (r == hipSuccess && count == 0))
        return hip_fail(d, -ENODEV, "hip: the HIP runtime reports no GPU (%s); on Strix Halo "
                        "install ROCm >= 6.4 and add the user to the render group",
                        hipGetErrorString(r == hipSuccess ? hipErrorNoDevice : r));
    int rc = hip_check(d, r, "hipInit/hipGetDeviceCount");
    if (rc)
        return rc;
    if (ordinal < 0 || ordinal >= count)
        return hip_fail(d, -ENODEV, "hip: device %d requested, %d present", ordinal, count);
    d->dev = ordinal;
    if ((rc = hip_check(d, hipSetDevice(ordinal), "hipSetDevice")))
        return rc;
    if ((rc = hip_check(d, hipEventCreate(&d->ev0), "hipEventCreate")) ||
        (rc = hip_check(d, hipEventCreate(&d->ev1), "hipEventCreate")))
        return rc;
    char name[96] = "";
    size_t mem = 0;
    hipDeviceGetName(name, (int)sizeof(name), ordinal);
    hipDeviceGetAttribute(&d->cu_count, hipDeviceAttributeMultiprocessorCount, ordinal);
    hipDeviceTotalMem(&mem, ordinal);
    snprintf(d->desc, sizeof(d->desc), "%s, %d CUs, %.1f GiB", name, d->cu_count,
             (double)mem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}

int gpu_hip_open(int ordinal, struct gpu_hip **out, char *err, size_t err_len)
{
    *out = NULL;
    struct gpu_hip *d = calloc(1, sizeof(*d));
    if (!d) {
        if (err && err_len)
            snprintf(err, err_len, "hip: out of memory");
        return -ENOMEM;
    }
    int rc = hip_open_impl(d, ordinal);
    if (rc) {
        if (err && err_len)
            snprintf(err, err_len, "%s", d->err);
        gpu_hip_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

const char *gpu_hip_last_error(const struct gpu_hip *d)
{
    return d->err;
}

const char *gpu_hip_describe(const struct gpu_hip *d)
{
    return d->desc;
}

int gpu_hip_sm_count(const struct gpu_hip *d)
{
    return d->cu_count;
}

int gpu_hip_module_load(struct gpu_hip *d, const char *path, gpu_hip_module *out)
{
    if (d->n_modules >= GPU_HIP_MAX_MODULES)
        return hip_fail(d, -ENOSPC, "hip: more than %d modules", GPU_HIP_MAX_MODULES);
    FILE *f = fopen(path, "rb");
    if (!f)
        return hip_fail(d, -errno, "hip: cannot open %s: %s (build the gpu-* targets)",
                        path, strerror(errno));
    int rc = 0;
    char *buf = NULL;
    long len = 0;
    if (fseek(f, 0, SEEK_END) || (len = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET))
        rc = hip_fail(d, -EIO, "hip: cannot size %s", path);
    else if (!(buf = malloc((size_t)len)))
        rc = hip_fail(d, -ENOMEM, "hip: out of memory reading %s", path);
    else if (fread(buf, 1, (size_t)len, f) != (size_t)len)
        rc = hip_fail(d, -EIO, "hip: short read on %s", path);
    fclose(f);
    if (!rc) {
        hipModule_t m = NULL;
        hipError_t r = hipModuleLoadData(&m, buf);
        if (r != hipSuccess) {
            rc = hip_check(d, r, "hipModuleLoadData");
            hip_fail(d, rc, "hip: cannot load %s: %s (a code object for another GPU? rebuild "
                     "with -Damd_arch=gfxNNNN for this one)", path, hipGetErrorString(r));
        } else {
            d->modules[d->n_modules++] = m;
            *out = m;
        }
    }
    free(buf);
    return rc;
}

int gpu_hip_function_get(struct gpu_hip *d, gpu_hip_module m, const char *name,
                         gpu_hip_function *out)
{
    hipFunction_t f = NULL;
    int rc = hip_check(d, hipModuleGetFunction(&f, (hipModule_t)m, name), "hipModuleGetFunction");
    if (rc)
        return hip_fail(d, rc, "hip: kernel %s not in module", name);
    *out = f;
    return 0;
}

int gpu_hip_mem_alloc(struct gpu_hip *d, size_t bytes, gpu_hip_ptr *out)
{
    void *p = NULL;
    int rc = hip_check(d, hipMalloc(&p, bytes ? bytes : 16), "hipMalloc");
    *out = rc ? 0 : (gpu_hip_ptr)(uintptr_t)p;
    return rc;
}

void gpu_hip_mem_free(struct gpu_hip *d, gpu_hip_ptr p)
{
    if (p)
        hipFree((void *)(uintptr_t)p);
}

int gpu_hip_mem_upload(struct gpu_hip *d, gpu_hip_ptr dst, const void *src, size_t bytes)
{
    return hip_check(d, hipMemcpyHtoD((hipDeviceptr_t)(uintptr_t)dst, (void *)(uintptr_t)src, bytes),
                     "hipMemcpyHtoD");
}

int gpu_hip_mem_download(struct gpu_hip *d, void *dst, gpu_hip_ptr src, size_t bytes)
{
    return hip_check(d, hipMemcpyDtoH(dst, (hipDeviceptr_t)(uintptr_t)src, bytes), "hipMemcpyDtoH");
}

int gpu_hip_mem_fill32(struct gpu_hip *d, gpu_hip_ptr dst, uint32_t value, size_t count)
{
    return hip_check(d, hipMemsetD32((hipDeviceptr_t)(uintptr_t)dst, (int)value, count), "hipMemsetD32");
}

int gpu_hip_mem_zero(struct gpu_hip *d, gpu_hip_ptr dst, size_t bytes)
{
    return hip_check(d, hipMemsetD8((hipDeviceptr_t)(uintptr_t)dst, 0, bytes), "hipMemsetD8");
}

int gpu_hip_mem_copy(struct gpu_hip *d, gpu_hip_ptr dst, gpu_hip_ptr src, size_t bytes)
{
    return hip_check(d, hipMemcpyDtoD((hipDeviceptr_t)(uintptr_t)dst, (hipDeviceptr_t)(uintptr_t)src, bytes),
                     "hipMemcpyDtoD");
}

int gpu_hip_launch(struct gpu_hip *d, gpu_hip_function f, unsigned gx, unsigned gy,
                   unsigned gz, unsigned block, unsigned smem, void **args)
{
    if (!gx || !gy || !gz)
        return 0;                        /* empty grid: nothing to do        */
    return hip_check(d, hipModuleLaunchKernel((hipFunction_t)f, gx, gy, gz, block, 1, 1, smem,
                                              NULL, args, NULL), "hipModuleLaunchKernel");
}

int gpu_hip_sync(struct gpu_hip *d)
{
    return hip_check(d, hipDeviceSynchronize(), "hipDeviceSynchronize (a kernel faulted?)");
}

int gpu_hip_timer_start(struct gpu_hip *d)
{
    return hip_check(d, hipEventRecord(d->ev0, NULL), "hipEventRecord");
}

int gpu_hip_timer_stop(struct gpu_hip *d, float *ms)
{
    int rc = hip_check(d, hipEventRecord(d->ev1, NULL), "hipEventRecord");
    if (!rc)
        rc = hip_check(d, hipEventSynchronize(d->ev1), "hipEventSynchronize");
    if (!rc)
        rc = hip_check(d, hipEventElapsedTime(ms, d->ev0, d->ev1), "hipEventElapsedTime");
    return rc;
}
