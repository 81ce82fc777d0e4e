/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Yardsticks measured in the same run as the kernels they judge:
 *
 *   bench_copy      dst = src with 16-byte loads/stores, grid-stride: the
 *                   device's practical memory bandwidth (read + write).
 *   bench_read      sum of 16-byte loads (read-only stream, as the GEMV does).
 *   bench_mma_i8    back-to-back int8 16x16x32 tiles from registers (the
 *                   same compat.h path the MMQ kernel uses): the int8 matrix
 *                   rate this code can reach on this chip, with 4 independent
 *                   accumulator chains per warp to cover the pipeline latency.
 */
#include "kernels/gpu/compat.h"

GPU_KERNEL(bench_copy, 256)
(const gpu_u32x4 *GPU_RESTRICT src, gpu_u32x4 *GPU_RESTRICT dst, long long n16, int n_blocks)
{
    for (long long i = (long long)gpu_bid_x() * 256 + gpu_tid_x(); i < n16; i += (long long)n_blocks * 256)
        dst[i] = src[i];
}

GPU_KERNEL(bench_read, 256)
(const gpu_u32x4 *GPU_RESTRICT src, long long n16, int n_blocks, unsigned int *GPU_RESTRICT sink)
{
    unsigned int x = 0;
    for (long long i = (long long)gpu_bid_x() * 256 + gpu_tid_x(); i < n16; i += (long long)n_blocks * 256) {
        gpu_u32x4 v = src[i];
        x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (x == 0x9E3779B9u)                  /* practically never: keeps the loads */
        sink[0] = x;
}

GPU_KERNEL(bench_mma_i8, 256)
(int iters, int seed, int *GPU_RESTRICT sink)
{
    __shared__ __attribute__((aligned(16))) signed char tile[16 * 48];
    for (int i = gpu_tid_x(); i < 16 * 48; i += 256)
        tile[i] = (signed char)((i * 7 + seed) & 0x7f);
    gpu_sync();
    struct gpu_frag_a fa;
    struct gpu_frag_b fb;
    gpu_frag_a_load(&fa, tile, 48);
    gpu_frag_b_load(&fb, tile, 48);
    struct gpu_acc c0, c1, c2, c3;
    gpu_acc_zero(&c0);
    gpu_acc_zero(&c1);
    gpu_acc_zero(&c2);
    gpu_acc_zero(&c3);
    for (int it = 0; it < iters; it++) {
        gpu_mma_i8(&c0, &fa, &fb);
        gpu_mma_i8(&c1, &fa, &fb);
        gpu_mma_i8(&c2, &fa, &fb);
        gpu_mma_i8(&c3, &fa, &fb);
    }
    int s = 0;
    for (int e = 0; e < 8; e++)
        s += gpu_acc_get(&c0, e) ^ gpu_acc_get(&c1, e) ^ gpu_acc_get(&c2, e) ^ gpu_acc_get(&c3, e);
    if (s == 0x12345678)
        sink[0] = s;
}
