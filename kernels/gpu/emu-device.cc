/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A fake of the device layer (kernels/cuda/cuda-device.h) for tests that
 * run kernels/cuda/gpu-backend.c without a GPU: device memory is host
 * memory, and a launch runs the kernel's source under the CPU emulation of
 * compat.h (kernels/gpu/emu.h). Every kernel of gemv-w4.cu, mmq-w4.cu,
 * moe.cu, misc.cu, norm.cu, gdn.cu and attn.cu the backend loads is
 * registered; a launch of anything else fails by name.
 *
 * Arguments arrive as the driver API passes them, an array of pointers to
 * the values; a device pointer is a gpu_cuda_ptr (uint64). One template
 * (emu_kernel) unpacks them by the kernel function's own parameter types,
 * so an argument list that does not match the kernel shows as a wrong
 * result or a crash here, as it would on a device.
 *
 * Freed device memory is poisoned (NaN) and never handed out again, so a
 * stale device address reads NaN instead of silently still-valid data.
 */
#define GPU_EMU 1
#include "kernels/gpu/compat.h"
#include "kernels/gpu/attn.cu"
#include "kernels/gpu/gdn.cu"
#include "kernels/gpu/gemv-w4.cu"
#include "kernels/gpu/misc.cu"
#include "kernels/gpu/mmq-w4.cu"
#include "kernels/gpu/moe.cu"
#include "kernels/gpu/norm.cu"

#include <errno.h>
#include <type_traits>
#include <utility>
#include <vector>

extern "C" {
#include "kernels/cuda/cuda-device.h"
}

#include "kernels/gpu/emu-device.h"

int emu_device_launches;

template <typename T> static T emu_arg(void *p)
{
    if constexpr (std::is_pointer_v<T>)
        return (T)(uintptr_t)*(const uint64_t *)p;
    else
        return *(const T *)p;
}

template <auto F> struct emu_kernel;
template <typename... A, void (*F)(A...)> struct emu_kernel<F> {
    template <size_t... I> static void call(void **args, std::index_sequence<I...>)
    {
        F(emu_arg<A>(args[I])...);
    }
    static void body(const void *p) { call((void **)p, std::index_sequence_for<A...>{}); }
    static void run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block, bool sync)
    {
        emu_run(gx, gy, (int)block, body, args, sync, gz);
    }
};

typedef void (*emu_launcher)(void **, unsigned, unsigned, unsigned, unsigned, bool);
struct emu_entry { const char *name; emu_launcher run; bool sync; };

#define K(name, sync) { #name, emu_kernel<name>::run, sync }
/* sync false: no barrier and no shuffle in the kernel (emu.h aborts if one
 * is reached), its threads run in turn, much faster */
static const emu_entry emu_table[] = {
    K(gemv_w4g32_b1_r1, true), K(gemv_w4g32_b2_r1, true), K(gemv_w4g32_b3_r1, true),
    K(gemv_w4g32_b4_r1, true), K(gemv_w4g32_b5_r1, true), K(gemv_w4g32_b6_r1, true),
    K(gemv_w4g32_b7_r1, true), K(gemv_w4g32_b8_r1, true), K(gemv_w4g32_b1_r4, true),
    K(gemv_w4g32_b2_r4, true), K(gemv_w4g32_b3_r4, true), K(gemv_w4g32_b4_r4, true),
    K(gemv_w4g32_b5_r4, true), K(gemv_w4g32_b6_r4, true), K(gemv_w4g32_b7_r4, true),
    K(gemv_w4g32_b8_r4, true),
    K(quantize_q8g32, false), K(mmq_w4g32_32x64_w2x2, true), K(mmq_w4g32_128x64_w4x2, true),
    K(mmq_w4g32_128x128_w4x2, true), K(mmq_w4g32_32x64_w2x2_kt, true),
    K(mmq_w4g32_128x64_w4x2_kt, true),
    K(moe_route, true), K(moe_sort, true), K(moe_combine, false),
    K(rmsnorm, true), K(rmsnorm_gated, true), K(rope_neox, false), K(mul_sigmoid, false),
    K(gdn_conv, false), K(gdn_recurrent, true), K(gdn_recurrent_any, true),
    K(gdn_chunk_prep, true), K(gdn_chunk_scan, true), K(gdn_chunk_out, true),
    K(attn_decode_split, true), K(attn_decode_merge, true),
    K(embed_rows, false), K(dense_matmul, true), K(add, false), K(swiglu2, false),
    K(add_sigmoid_rows, false),
};
#undef K

struct emu_fn { char name[64]; const emu_entry *e; };
struct gpu_cuda { char err[256]; };

static std::vector<emu_fn *> emu_fns;
static std::vector<void *> emu_blocks;   /* every allocation, live or freed */

void emu_device_shutdown()
{
    for (emu_fn *f : emu_fns)
        delete f;
    emu_fns.clear();
    for (void *p : emu_blocks)
        free(p);
    emu_blocks.clear();
    emu_pool_stop();
}

extern "C" {
int gpu_cuda_open(int, gpu_cuda **out, char *, size_t)
{
    /* whatever a test leaves allocated is released at exit (before the
     * leak checker's own exit handler, which was registered first) */
    static bool registered;
    if (!registered && !atexit(emu_device_shutdown))
        registered = true;
    *out = new gpu_cuda();
    return 0;
}
void gpu_cuda_close(gpu_cuda *d) { delete d; }
const char *gpu_cuda_last_error(const gpu_cuda *d) { return d->err; }
const char *gpu_cuda_describe(const gpu_cuda *) { return "CPU emulation (kernels/gpu/emu-device.cc)"; }
int gpu_cuda_sm_count(const gpu_cuda *) { return 1; }
int gpu_cuda_module_load(gpu_cuda *, const char *, gpu_cuda_module *out)
{
    *out = (void *)&emu_fns;
    return 0;
}
/* every name resolves; a launch of one without an emulation fails by name */
int gpu_cuda_function_get(gpu_cuda *, gpu_cuda_module, const char *name, gpu_cuda_function *out)
{
    emu_fn *f = new emu_fn();
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->e = nullptr;
    for (const emu_entry &e : emu_table)
        if (!strcmp(e.name, name))
            f->e = &e;
    emu_fns.push_back(f);
    *out = f;
    return 0;
}
int gpu_cuda_mem_alloc(gpu_cuda *, size_t bytes, gpu_cuda_ptr *out)
{
    const size_t size = (bytes + 255) / 256 * 256 + 256;
    unsigned char *p = (unsigned char *)aligned_alloc(256, size);
    if (!p)
        return -ENOMEM;
    memset(p, 0xff, size);                       /* poisoned: NaN floats */
    memcpy(p, &size, sizeof(size));
    emu_blocks.push_back(p);
    *out = (gpu_cuda_ptr)(uintptr_t)(p + 256);
    return 0;
}
void gpu_cuda_mem_free(gpu_cuda *, gpu_cuda_ptr ptr)
{
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)(uintptr_t)ptr - 256;
    size_t size;
    memcpy(&size, p, sizeof(size));
    memset(p + 256, 0xff, size - 256);           /* kept, not reused */
}
int gpu_cuda_mem_upload(gpu_cuda *, gpu_cuda_ptr dst, const void *src, size_t bytes)
{
    memcpy((void *)(uintptr_t)dst, src, bytes);
    return 0;
}
int gpu_cuda_mem_download(gpu_cuda *, void *dst, gpu_cuda_ptr src, size_t bytes)
{
    memcpy(dst, (const void *)(uintptr_t)src, bytes);
    return 0;
}
int gpu_cuda_mem_fill32(gpu_cuda *, gpu_cuda_ptr dst, uint32_t v, size_t count)
{
    for (size_t i = 0; i < count; i++)
        ((uint32_t *)(uintptr_t)dst)[i] = v;
    return 0;
}
int gpu_cuda_mem_zero(gpu_cuda *, gpu_cuda_ptr dst, size_t bytes)
{
    memset((void *)(uintptr_t)dst, 0, bytes);
    return 0;
}
int gpu_cuda_mem_copy(gpu_cuda *, gpu_cuda_ptr dst, gpu_cuda_ptr src, size_t bytes)
{
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
    return 0;
}
int gpu_cuda_launch(gpu_cuda *d, gpu_cuda_function fn, unsigned gx, unsigned gy, unsigned gz,
                    unsigned block, unsigned, void **args)
{
    emu_fn *f = (emu_fn *)fn;
    if (!f->e) {
        snprintf(d->err, sizeof(d->err), "kernel %s is not emulated (kernels/gpu/emu-device.cc)",
                 f->name);
        return -ENOSYS;
    }
    emu_device_launches++;
    f->e->run(args, gx, gy, gz, block, f->e->sync);
    return 0;
}
int gpu_cuda_sync(gpu_cuda *) { return 0; }
int gpu_cuda_timer_start(gpu_cuda *) { return -ENOSYS; }
int gpu_cuda_timer_stop(gpu_cuda *, float *) { return -ENOSYS; }
}
