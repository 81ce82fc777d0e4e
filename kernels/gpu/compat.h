/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One kernel source, two vendors.
 *
 * Every file in kernels/gpu/ is compiled twice: by clang++-19 as HIP device
 * code for gfx1151 (with -nogpulib -nogpuinc, i.e. WITHOUT the HIP headers
 * and the ROCm device libraries) and by nvcc as CUDA for sm_90. This header
 * is the only place that knows which one is running. It provides:
 *
 *   - the function/variable qualifiers (__global__, __device__, __shared__),
 *     which clang only knows as attributes when no HIP header is included;
 *   - thread/block ids (gpu_tid_x, gpu_bid_x/y/z), lane id, barrier;
 *   - warp-wide xor shuffles of float/int (ds_bpermute on AMD);
 *   - math helpers (exp, log, rsqrt, sincos with range reduction, bit
 *     casts, bf16 -> f32);
 *   - a 16x16x32 int8 matrix tile: fragments loaded from LDS, a multiply-
 *     accumulate into 8 int32 per lane, and the (row, col) of each of those
 *     8 values. On gfx1151 it is two chained
 *     __builtin_amdgcn_wmma_i32_16x16x16_iu8_w32 (k = 16 each); on sm_90 two
 *     mma.sync.m16n8k32.s8 (n = 8 each). Both vendors happen to hold 8
 *     accumulators per lane for a 16x16 tile, so kernels above this header
 *     are written once.
 *
 * Both vendors run 32-wide waves/warps here (gfx1151 is compiled wave32,
 * the RDNA default), so "warp" below means 32 lanes everywhere.
 *
 * A third branch, GPU_EMU, runs the kernels on the CPU for tests
 * (kernels/gpu/emu.h).
 *
 * Kernel entry points are extern "C" so the host (C, module APIs) finds them
 * by plain name with cuModuleGetFunction / hipModuleGetFunction.
 */
#ifndef RESIDENT_KERNELS_GPU_COMPAT_H
#define RESIDENT_KERNELS_GPU_COMPAT_H

#define GPU_WARP 32

#if defined(__AMDGCN__) || defined(__HIP_DEVICE_COMPILE__)
/* ------------------------------------------------------------ AMD (HIP) */
#define GPU_AMD 1
#ifndef __global__
#define __global__ __attribute__((global))
#endif
#ifndef __device__
#define __device__ __attribute__((device))
#endif
#ifndef __shared__
#define __shared__ __attribute__((shared))
#endif
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#define GPU_KERNEL(name, threads) \
    extern "C" __global__ __attribute__((amdgpu_flat_work_group_size(1, threads))) void name
#define GPU_RESTRICT __restrict__

typedef int gpu_i32x4 __attribute__((ext_vector_type(4)));
typedef int gpu_i32x8 __attribute__((ext_vector_type(8)));
typedef unsigned int gpu_u32x4 __attribute__((ext_vector_type(4)));
typedef float gpu_f32x4 __attribute__((ext_vector_type(4)));

static __device__ __forceinline__ int gpu_tid_x(void) { return (int)__builtin_amdgcn_workitem_id_x(); }
static __device__ __forceinline__ int gpu_bid_x(void) { return (int)__builtin_amdgcn_workgroup_id_x(); }
static __device__ __forceinline__ int gpu_bid_y(void) { return (int)__builtin_amdgcn_workgroup_id_y(); }
static __device__ __forceinline__ int gpu_bid_z(void) { return (int)__builtin_amdgcn_workgroup_id_z(); }
static __device__ __forceinline__ int gpu_lane(void)
{
    return (int)__builtin_amdgcn_mbcnt_lo(~0u, 0u);
}
/* A barrier alone does not order LDS traffic; HIP's __syncthreads is the
 * same fence / s_barrier / fence sequence. */
static __device__ __forceinline__ void gpu_sync(void)
{
    __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
    __builtin_amdgcn_s_barrier();
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}
static __device__ __forceinline__ float gpu_as_float(unsigned int u) { return __builtin_bit_cast(float, u); }
static __device__ __forceinline__ unsigned int gpu_as_uint(float f) { return __builtin_bit_cast(unsigned int, f); }
static __device__ __forceinline__ int gpu_shfl_xor_i(int v, int mask)
{
    int src = gpu_lane() ^ mask;
    return __builtin_amdgcn_ds_bpermute(src << 2, v);
}
static __device__ __forceinline__ float gpu_shfl_xor_f(float v, int mask)
{
    return gpu_as_float((unsigned int)gpu_shfl_xor_i((int)gpu_as_uint(v), mask));
}
static __device__ __forceinline__ float gpu_exp(float x) { return __builtin_amdgcn_exp2f(x * 1.4426950408889634f); }
static __device__ __forceinline__ float gpu_log(float x) { return __builtin_amdgcn_logf(x) * 0.6931471805599453f; }
static __device__ __forceinline__ float gpu_rsqrt(float x) { return __builtin_amdgcn_rsqf(x); }
static __device__ __forceinline__ float gpu_sqrt(float x) { return __builtin_sqrtf(x); }
static __device__ __forceinline__ float gpu_fabs(float x) { return __builtin_fabsf(x); }
/* sin and cos of a possibly large angle (RoPE: position * inv_freq up to
 * ~2.6e5 rad). v_sin/v_cos take turns and lose accuracy on big inputs, so
 * first reduce to [-pi, pi] with 2*pi split into three floats (Cody-Waite:
 * 6.28125 has 8 significant bits, so k * c1 is exact for k < 2^16). */
static __device__ __forceinline__ void gpu_sincos(float a, float *s, float *c)
{
    const float k = __builtin_rintf(a * 0.15915494309189535f);
    float r = __builtin_fmaf(-k, 6.28125f, a);
    r = __builtin_fmaf(-k, 0x1.fb5444p-10f, r);
    r = __builtin_fmaf(-k, 0x1.68cp-37f, r);
    *s = __builtin_amdgcn_sinf(r * 0.15915494309189535f);
    *c = __builtin_amdgcn_cosf(r * 0.15915494309189535f);
}
/* Signed int8x4 dot product: v_dot4_i32_iu8. */
static __device__ __forceinline__ int gpu_dot4_i8(int a, int b, int c)
{
    return __builtin_amdgcn_sudot4(true, a, true, b, c, false);
}
static __device__ __forceinline__ int gpu_atomic_add_i(int *p, int v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* int8 16x16x32 tile on RDNA3 WMMA (wave32): lane l holds row (l % 16) of A
 * and column (l % 16) of B, 16 consecutive k each; lanes 16-31 must hold the
 * same data as lanes 0-15. Accumulator v[i] is row 2i + l/16, col l % 16. */
struct gpu_frag_a { gpu_i32x4 k0, k1; };
struct gpu_frag_b { gpu_i32x4 k0, k1; };
struct gpu_acc    { gpu_i32x8 v; };

/* A: 16 rows x 32 int8 at `p`, row stride `stride` bytes (16-byte aligned). */
static __device__ __forceinline__ void gpu_frag_a_load(struct gpu_frag_a *f, const signed char *p, int stride)
{
    const gpu_i32x4 *q = (const gpu_i32x4 *)(p + (gpu_lane() & 15) * stride);
    f->k0 = q[0];
    f->k1 = q[1];
}
/* B: 16 columns (stored as rows of 32 k) at `p`, stride in bytes. */
static __device__ __forceinline__ void gpu_frag_b_load(struct gpu_frag_b *f, const signed char *p, int stride)
{
    const gpu_i32x4 *q = (const gpu_i32x4 *)(p + (gpu_lane() & 15) * stride);
    f->k0 = q[0];
    f->k1 = q[1];
}
static __device__ __forceinline__ void gpu_acc_zero(struct gpu_acc *a)
{
    a->v = (gpu_i32x8){0, 0, 0, 0, 0, 0, 0, 0};
}
static __device__ __forceinline__ void gpu_mma_i8(struct gpu_acc *c, const struct gpu_frag_a *a,
                                                  const struct gpu_frag_b *b)
{
    c->v = __builtin_amdgcn_wmma_i32_16x16x16_iu8_w32(true, a->k0, true, b->k0, c->v, false);
    c->v = __builtin_amdgcn_wmma_i32_16x16x16_iu8_w32(true, a->k1, true, b->k1, c->v, false);
}
static __device__ __forceinline__ int gpu_acc_get(const struct gpu_acc *a, int i) { return a->v[i]; }
/* |v| < 2^22 -> float; v_cvt_f32_i32 is a full-rate VALU op on RDNA. */
static __device__ __forceinline__ float gpu_i2f_small(int v) { return (float)v; }
static __device__ __forceinline__ int gpu_acc_row(int i) { return 2 * i + (gpu_lane() >> 4); }
static __device__ __forceinline__ int gpu_acc_col(int i) { (void)i; return gpu_lane() & 15; }

#elif defined(__CUDACC__)
/* ---------------------------------------------------------- NVIDIA (CUDA) */
#define GPU_NV 1
#define GPU_KERNEL(name, threads) extern "C" __global__ void __launch_bounds__(threads) name
#define GPU_RESTRICT __restrict__

typedef uint4 gpu_u32x4;
typedef float4 gpu_f32x4;

static __device__ __forceinline__ int gpu_tid_x(void) { return (int)threadIdx.x; }
static __device__ __forceinline__ int gpu_bid_x(void) { return (int)blockIdx.x; }
static __device__ __forceinline__ int gpu_bid_y(void) { return (int)blockIdx.y; }
static __device__ __forceinline__ int gpu_bid_z(void) { return (int)blockIdx.z; }
static __device__ __forceinline__ int gpu_lane(void) { return (int)(threadIdx.x & 31u); }
static __device__ __forceinline__ void gpu_sync(void) { __syncthreads(); }
static __device__ __forceinline__ float gpu_as_float(unsigned int u) { return __uint_as_float(u); }
static __device__ __forceinline__ unsigned int gpu_as_uint(float f) { return __float_as_uint(f); }
static __device__ __forceinline__ int gpu_shfl_xor_i(int v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
static __device__ __forceinline__ float gpu_shfl_xor_f(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
static __device__ __forceinline__ float gpu_exp(float x) { return expf(x); }
static __device__ __forceinline__ float gpu_log(float x) { return logf(x); }
static __device__ __forceinline__ float gpu_rsqrt(float x) { return rsqrtf(x); }
static __device__ __forceinline__ float gpu_sqrt(float x) { return sqrtf(x); }
static __device__ __forceinline__ float gpu_fabs(float x) { return fabsf(x); }
static __device__ __forceinline__ void gpu_sincos(float a, float *s, float *c) { sincosf(a, s, c); }
static __device__ __forceinline__ int gpu_dot4_i8(int a, int b, int c) { return __dp4a(a, b, c); }
static __device__ __forceinline__ int gpu_atomic_add_i(int *p, int v) { return atomicAdd(p, v); }

/* int8 16x16x32 tile as two mma.sync.m16n8k32 (row.col, s8 x s8 -> s32).
 * g = lane / 4, t = lane % 4. A regs: (g, 4t..), (g+8, 4t..), (g, 16+4t..),
 * (g+8, 16+4t..); B regs per n-half h: column 8h+g, k 4t.. and 16+4t..;
 * accumulator i: n-half i/4, row g + 8*((i%4)/2), col 8*(i/4) + 2t + i%2. */
struct gpu_frag_a { int r[4]; };
struct gpu_frag_b { int r[4]; };
struct gpu_acc    { int v[8]; };

static __device__ __forceinline__ void gpu_frag_a_load(struct gpu_frag_a *f, const signed char *p, int stride)
{
    int g = gpu_lane() >> 2, t = gpu_lane() & 3;
    f->r[0] = *(const int *)(p + g * stride + 4 * t);
    f->r[1] = *(const int *)(p + (g + 8) * stride + 4 * t);
    f->r[2] = *(const int *)(p + g * stride + 16 + 4 * t);
    f->r[3] = *(const int *)(p + (g + 8) * stride + 16 + 4 * t);
}
static __device__ __forceinline__ void gpu_frag_b_load(struct gpu_frag_b *f, const signed char *p, int stride)
{
    int g = gpu_lane() >> 2, t = gpu_lane() & 3;
    f->r[0] = *(const int *)(p + g * stride + 4 * t);
    f->r[1] = *(const int *)(p + g * stride + 16 + 4 * t);
    f->r[2] = *(const int *)(p + (g + 8) * stride + 4 * t);
    f->r[3] = *(const int *)(p + (g + 8) * stride + 16 + 4 * t);
}
static __device__ __forceinline__ void gpu_acc_zero(struct gpu_acc *a)
{
#pragma unroll
    for (int i = 0; i < 8; i++)
        a->v[i] = 0;
}
static __device__ __forceinline__ void gpu_mma_i8(struct gpu_acc *c, const struct gpu_frag_a *a,
                                                  const struct gpu_frag_b *b)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+r"(c->v[4 * h + 0]), "+r"(c->v[4 * h + 1]),
                       "+r"(c->v[4 * h + 2]), "+r"(c->v[4 * h + 3])
                     : "r"(a->r[0]), "r"(a->r[1]), "r"(a->r[2]), "r"(a->r[3]),
                       "r"(b->r[2 * h]), "r"(b->r[2 * h + 1]));
    }
}
static __device__ __forceinline__ int gpu_acc_get(const struct gpu_acc *a, int i) { return a->v[i]; }
/* |v| < 2^22 -> float without I2F, which runs at a quarter of the FP32 rate
 * on sm_90 and was the MMQ bottleneck (every int32 tile result is converted
 * once per 32-column group): 0x4B400000 is 1.5 * 2^23, so adding v to its
 * bit pattern gives the float 1.5 * 2^23 + v exactly. */
static __device__ __forceinline__ float gpu_i2f_small(int v)
{
    return __int_as_float(0x4B400000 + v) - 12582912.0f;
}
static __device__ __forceinline__ int gpu_acc_row(int i) { return (gpu_lane() >> 2) + 8 * ((i & 3) >> 1); }
static __device__ __forceinline__ int gpu_acc_col(int i) { return 8 * (i >> 2) + 2 * (gpu_lane() & 3) + (i & 1); }

#elif defined(GPU_EMU)
/* ------------------------------------------------- CPU emulation (tests) */
#include "kernels/gpu/emu.h"

#else
#error "kernels/gpu/compat.h: compile with clang -x hip (gfx1151) or nvcc (sm_90)"
#endif

/* ---------------------------------------------------------- both vendors */

static __device__ __forceinline__ float gpu_bf16_to_f32(unsigned short h)
{
    return gpu_as_float((unsigned int)h << 16);
}

/* IEEE half -> float by bits (no vendor half type needed). */
static __device__ __forceinline__ float gpu_f16_to_f32(unsigned short h)
{
    const unsigned int sign = (unsigned int)(h >> 15) << 31;
    const unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {                          /* zero / subnormal: m * 2^-24 */
        const float f = (float)m * 5.9604644775390625e-08f;
        return sign ? -f : f;
    }
    if (e == 31)
        return gpu_as_float(sign | 0x7f800000u | (m << 13));
    return gpu_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

static __device__ __forceinline__ float gpu_warp_sum(float v)
{
#pragma unroll
    for (int m = 16; m > 0; m >>= 1)
        v += gpu_shfl_xor_f(v, m);
    return v;
}

static __device__ __forceinline__ float gpu_warp_max(float v)
{
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) {
        float o = gpu_shfl_xor_f(v, m);
        v = o > v ? o : v;
    }
    return v;
}

static __device__ __forceinline__ float gpu_sigmoid(float x) { return 1.0f / (1.0f + gpu_exp(-x)); }
static __device__ __forceinline__ float gpu_silu(float x) { return x / (1.0f + gpu_exp(-x)); }

/* Block-wide sum for blocks of `nwarps` warps; `scratch` holds >= 32 floats
 * of shared memory. Every thread gets the result. */
static __device__ __forceinline__ float gpu_block_sum(float v, float *scratch, int nwarps)
{
    int lane = gpu_lane(), warp = gpu_tid_x() / GPU_WARP;
    v = gpu_warp_sum(v);
    gpu_sync();
    if (lane == 0)
        scratch[warp] = v;
    gpu_sync();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return gpu_warp_sum(v);
}

#endif
