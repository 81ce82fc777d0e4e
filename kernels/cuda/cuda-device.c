/* SPDX-License-Identifier: Apache-2.0 */
/* CUDA driver API layer; see cuda-device.h for why libcuda is dlopen'ed. */
#include "kernels/cuda/cuda-device.h"

#include <cuda.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Two-level stringification so cuda.h's versioning macros expand first. */
#define GPU_CU_STR2(x) #x
#define GPU_CU_STR(x) GPU_CU_STR2(x)

/* Every driver entry point used, as (member, cuda.h name). */
#define GPU_CU_FUNCS(X)                                   \
    X(init, cuInit)                                       \
    X(device_get_count, cuDeviceGetCount)                 \
    X(device_get, cuDeviceGet)                            \
    X(device_get_name, cuDeviceGetName)                   \
    X(device_get_attribute, cuDeviceGetAttribute)         \
    X(device_total_mem, cuDeviceTotalMem)                 \
    X(primary_retain, cuDevicePrimaryCtxRetain)           \
    X(primary_release, cuDevicePrimaryCtxRelease)         \
    X(ctx_set_current, cuCtxSetCurrent)                   \
    X(ctx_synchronize, cuCtxSynchronize)                  \
    X(module_load_data, cuModuleLoadData)                 \
    X(module_unload, cuModuleUnload)                      \
    X(module_get_function, cuModuleGetFunction)           \
    X(mem_alloc, cuMemAlloc)                              \
    X(mem_free, cuMemFree)                                \
    X(memcpy_htod, cuMemcpyHtoD)                          \
    X(memcpy_dtoh, cuMemcpyDtoH)                          \
    X(memset_d32, cuMemsetD32)                            \
    X(memset_d8, cuMemsetD8)                              \
    X(memcpy_dtod, cuMemcpyDtoD)                          \
    X(launch_kernel, cuLaunchKernel)                      \
    X(event_create, cuEventCreate)                        \
    X(event_destroy, cuEventDestroy)                      \
    X(event_record, cuEventRecord)                        \
    X(event_synchronize, cuEventSynchronize)              \
    X(event_elapsed, cuEventElapsedTime)                  \
    X(get_error_string, cuGetErrorString)

struct gpu_cuda_api {
#define GPU_CU_MEMBER(m, f) __typeof__(&f) m;
    GPU_CU_FUNCS(GPU_CU_MEMBER)
#undef GPU_CU_MEMBER
};

#define GPU_CUDA_MAX_MODULES 32

struct gpu_cuda {
    void *lib;
    struct gpu_cuda_api api;
    CUdevice dev;
    CUcontext ctx;
    CUevent ev0, ev1;
    CUmodule modules[GPU_CUDA_MAX_MODULES];
    int n_modules;
    int sm_count;
    char desc[160];
    char err[320];
};

static int cuda_fail(struct gpu_cuda *d, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err, sizeof(d->err), fmt, ap);
    va_end(ap);
    return code;
}

static const char *cuda_strerror(struct gpu_cuda *d, CUresult r)
{
    const char *s = NULL;
    if (d->api.get_error_string && d->api.get_error_string(r, &s) == CUDA_SUCCESS && s)
        return s;
    return "unknown CUDA error";
}

/* Map a driver result to -errno, recording what failed. */
static int cuda_check(struct gpu_cuda *d, CUresult r, const char *what)
{
    if (r == CUDA_SUCCESS)
        return 0;
    int code = r == CUDA_ERROR_OUT_OF_MEMORY ? -ENOMEM :
               r == CUDA_ERROR_INVALID_VALUE ? -EINVAL :
               (r == CUDA_ERROR_NO_DEVICE || r == CUDA_ERROR_NOT_INITIALIZED) ? -ENODEV : -EIO;
    return cuda_fail(d, code, "cuda: %s failed: %s (CUresult %d)", what, cuda_strerror(d, r), (int)r);
}

void gpu_cuda_close(struct gpu_cuda *d)
{
    if (!d)
        return;
    if (d->ctx) {
        d->api.ctx_set_current(d->ctx);
        for (int i = 0; i < d->n_modules; i++)
            d->api.module_unload(d->modules[i]);
        if (d->ev0)
            d->api.event_destroy(d->ev0);
        if (d->ev1)
            d->api.event_destroy(d->ev1);
        d->api.primary_release(d->dev);
    }
    if (d->lib)
        dlclose(d->lib);
    free(d);
}

static int cuda_open_impl(struct gpu_cuda *d, int ordinal)
{
    d->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!d->lib)
        return cuda_fail(d, -ENODEV, "cuda: no NVIDIA driver (dlopen libcuda.so.1: %s); "
                         "install the driver or run on a machine with an NVIDIA GPU", dlerror());
#define GPU_CU_LOAD(m, f)                                                                  \
    *(void **)&d->api.m = dlsym(d->lib, GPU_CU_STR(f));                                    \
    if (!d->api.m)                                                                         \
        return cuda_fail(d, -ENODEV, "cuda: driver lacks %s; update the NVIDIA driver",    \
                         GPU_CU_STR(f));
    GPU_CU_FUNCS(GPU_CU_LOAD)
#undef GPU_CU_LOAD
    CUresult r = d->api.init(0);
    if (r == CUDA_ERROR_NO_DEVICE)
        return cuda_fail(d, -ENODEV, "cuda: the driver reports no CUDA device");
    int rc = cuda_check(d, r, "cuInit");
    if (rc)
        return rc;
    int count = 0;
    if ((rc = cuda_check(d, d->api.device_get_count(&count), "cuDeviceGetCount")))
        return rc;
    if (ordinal < 0 || ordinal >= count)
        return cuda_fail(d, -ENODEV, "cuda: device %d requested, %d present", ordinal, count);
    if ((rc = cuda_check(d, d->api.device_get(&d->dev, ordinal), "cuDeviceGet")))
        return rc;
    if ((rc = cuda_check(d, d->api.primary_retain(&d->ctx, d->dev), "cuDevicePrimaryCtxRetain")))
        return rc;
    if ((rc = cuda_check(d, d->api.ctx_set_current(d->ctx), "cuCtxSetCurrent")))
        return rc;
    if ((rc = cuda_check(d, d->api.event_create(&d->ev0, CU_EVENT_DEFAULT), "cuEventCreate")) ||
        (rc = cuda_check(d, d->api.event_create(&d->ev1, CU_EVENT_DEFAULT), "cuEventCreate")))
        return rc;
    char name[96] = "";
    int major = 0, minor = 0;
    size_t mem = 0;
    d->api.device_get_name(name, (int)sizeof(name), d->dev);
    d->api.device_get_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d->dev);
    d->api.device_get_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d->dev);
    d->api.device_get_attribute(&d->sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d->dev);
    d->api.device_total_mem(&mem, d->dev);
    snprintf(d->desc, sizeof(d->desc), "%s, sm_%d%d, %d SMs, %.1f GiB", name, major, minor,
             d->sm_count, (double)mem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}

int gpu_cuda_open(int ordinal, struct gpu_cuda **out, char *err, size_t err_len)
{
    *out = NULL;
    struct gpu_cuda *d = calloc(1, sizeof(*d));
    if (!d) {
        if (err && err_len)
            snprintf(err, err_len, "cuda: out of memory");
        return -ENOMEM;
    }
    int rc = cuda_open_impl(d, ordinal);
    if (rc) {
        if (err && err_len)
            snprintf(err, err_len, "%s", d->err);
        if (!d->ctx && d->lib) {
            dlclose(d->lib);
            d->lib = NULL;
        }
        gpu_cuda_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

const char *gpu_cuda_last_error(const struct gpu_cuda *d)
{
    return d->err;
}

const char *gpu_cuda_describe(const struct gpu_cuda *d)
{
    return d->desc;
}

int gpu_cuda_sm_count(const struct gpu_cuda *d)
{
    return d->sm_count;
}

int gpu_cuda_module_load(struct gpu_cuda *d, const char *path, gpu_cuda_module *out)
{
    if (d->n_modules >= GPU_CUDA_MAX_MODULES)
        return cuda_fail(d, -ENOSPC, "cuda: more than %d modules", GPU_CUDA_MAX_MODULES);
    FILE *f = fopen(path, "rb");
    if (!f)
        return cuda_fail(d, -errno, "cuda: cannot open %s: %s (build the gpu-* targets)",
                         path, strerror(errno));
    int rc = 0;
    char *buf = NULL;
    long len = 0;
    if (fseek(f, 0, SEEK_END) || (len = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET))
        rc = cuda_fail(d, -EIO, "cuda: cannot size %s", path);
    else if (!(buf = malloc((size_t)len)))
        rc = cuda_fail(d, -ENOMEM, "cuda: out of memory reading %s", path);
    else if (fread(buf, 1, (size_t)len, f) != (size_t)len)
        rc = cuda_fail(d, -EIO, "cuda: short read on %s", path);
    fclose(f);
    if (!rc) {
        CUmodule m = NULL;
        CUresult r = d->api.module_load_data(&m, buf);
        if (r != CUDA_SUCCESS) {
            rc = cuda_check(d, r, "cuModuleLoadData");
            cuda_fail(d, rc, "cuda: cannot load %s: %s (a cubin for another GPU? rebuild "
                      "with -Dnv_arch=sm_XY for this card)", path, cuda_strerror(d, r));
        } else {
            d->modules[d->n_modules++] = m;
            *out = m;
        }
    }
    free(buf);
    return rc;
}

int gpu_cuda_function_get(struct gpu_cuda *d, gpu_cuda_module m, const char *name,
                          gpu_cuda_function *out)
{
    CUfunction f = NULL;
    int rc = cuda_check(d, d->api.module_get_function(&f, (CUmodule)m, name), "cuModuleGetFunction");
    if (rc)
        return cuda_fail(d, rc, "cuda: kernel %s not in module", name);
    *out = f;
    return 0;
}

int gpu_cuda_mem_alloc(struct gpu_cuda *d, size_t bytes, gpu_cuda_ptr *out)
{
    CUdeviceptr p = 0;
    int rc = cuda_check(d, d->api.mem_alloc(&p, bytes ? bytes : 16), "cuMemAlloc");
    *out = rc ? 0 : (gpu_cuda_ptr)p;
    return rc;
}

void gpu_cuda_mem_free(struct gpu_cuda *d, gpu_cuda_ptr p)
{
    if (p)
        d->api.mem_free((CUdeviceptr)p);
}

int gpu_cuda_mem_upload(struct gpu_cuda *d, gpu_cuda_ptr dst, const void *src, size_t bytes)
{
    return cuda_check(d, d->api.memcpy_htod((CUdeviceptr)dst, src, bytes), "cuMemcpyHtoD");
}

int gpu_cuda_mem_download(struct gpu_cuda *d, void *dst, gpu_cuda_ptr src, size_t bytes)
{
    return cuda_check(d, d->api.memcpy_dtoh(dst, (CUdeviceptr)src, bytes), "cuMemcpyDtoH");
}

int gpu_cuda_mem_fill32(struct gpu_cuda *d, gpu_cuda_ptr dst, uint32_t value, size_t count)
{
    return cuda_check(d, d->api.memset_d32((CUdeviceptr)dst, value, count), "cuMemsetD32");
}

int gpu_cuda_mem_zero(struct gpu_cuda *d, gpu_cuda_ptr dst, size_t bytes)
{
    return cuda_check(d, d->api.memset_d8((CUdeviceptr)dst, 0, bytes), "cuMemsetD8");
}

int gpu_cuda_mem_copy(struct gpu_cuda *d, gpu_cuda_ptr dst, gpu_cuda_ptr src, size_t bytes)
{
    return cuda_check(d, d->api.memcpy_dtod((CUdeviceptr)dst, (CUdeviceptr)src, bytes), "cuMemcpyDtoD");
}

int gpu_cuda_launch(struct gpu_cuda *d, gpu_cuda_function f, unsigned gx, unsigned gy,
                    unsigned gz, unsigned block, unsigned smem, void **args)
{
    if (!gx || !gy || !gz)
        return 0;                        /* empty grid: nothing to do        */
    return cuda_check(d, d->api.launch_kernel((CUfunction)f, gx, gy, gz, block, 1, 1, smem,
                                              NULL, args, NULL), "cuLaunchKernel");
}

int gpu_cuda_sync(struct gpu_cuda *d)
{
    return cuda_check(d, d->api.ctx_synchronize(), "cuCtxSynchronize (a kernel faulted?)");
}

int gpu_cuda_timer_start(struct gpu_cuda *d)
{
    return cuda_check(d, d->api.event_record(d->ev0, NULL), "cuEventRecord");
}

int gpu_cuda_timer_stop(struct gpu_cuda *d, float *ms)
{
    int rc = cuda_check(d, d->api.event_record(d->ev1, NULL), "cuEventRecord");
    if (!rc)
        rc = cuda_check(d, d->api.event_synchronize(d->ev1), "cuEventSynchronize");
    if (!rc)
        rc = cuda_check(d, d->api.event_elapsed(ms, d->ev0, d->ev1), "cuEventElapsedTime");
    return rc;
}
