/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Plumbing kernels the backend interface needs around the heavy ones:
 *
 *   embed_rows        out[t] = table[ids[t]] as fp32 (f32 / f16 / bf16 table)
 *   dense_matmul      y[t][r] = sum_c W[r][c] x[t][c] for dense f32/f16/bf16 W
 *                     (router, shared-expert gate, unquantised projections):
 *                     one warp per output row, lanes over the columns
 *   add               y = a + b
 *   swiglu2           out = silu(g) * u (separate gate and up buffers)
 *   add_sigmoid_rows  out[t] += sigmoid(gate[t]) * src[t] (shared expert)
 *
 * Weight type codes follow enum kb_wtype: 0 f32, 1 f16, 2 bf16.
 */
#include "kernels/gpu/compat.h"

static __device__ __forceinline__ float misc_load(const void *p, int type, long long i)
{
    if (type == 0)
        return ((const float *)p)[i];
    if (type == 1)
        return gpu_f16_to_f32(((const unsigned short *)p)[i]);
    return gpu_bf16_to_f32(((const unsigned short *)p)[i]);
}

GPU_KERNEL(embed_rows, 256)
(const void *GPU_RESTRICT table, int type, int cols, const int *GPU_RESTRICT ids, int n,
 float *GPU_RESTRICT out)
{
    const long long id = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (id >= (long long)n * cols)
        return;
    const long long t = id / cols, c = id % cols;
    out[id] = misc_load(table, type, (long long)ids[t] * cols + c);
}

/* grid.x = ceil(rows / 4), block = 4 warps, each warp one row for all n tokens. */
GPU_KERNEL(dense_matmul, 128)
(const void *GPU_RESTRICT w, int type, int rows, int cols, const float *GPU_RESTRICT x, int n,
 float *GPU_RESTRICT y)
{
    const int r = gpu_bid_x() * 4 + gpu_tid_x() / GPU_WARP, lane = gpu_lane();
    if (r >= rows)
        return;
    for (int t = 0; t < n; t++) {
        float acc = 0.0f;
        for (int c = lane; c < cols; c += GPU_WARP)
            acc += misc_load(w, type, (long long)r * cols + c) * x[(long long)t * cols + c];
        acc = gpu_warp_sum(acc);
        if (lane == 0)
            y[(long long)t * rows + r] = acc;
    }
}

GPU_KERNEL(add, 256)
(float *y, const float *a, const float *b, long long count)
{
    const long long i = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (i < count)
        y[i] = a[i] + b[i];
}

GPU_KERNEL(swiglu2, 256)
(const float *GPU_RESTRICT g, const float *GPU_RESTRICT u, long long count, float *GPU_RESTRICT out)
{
    const long long i = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (i < count)
        out[i] = gpu_silu(g[i]) * u[i];
}

GPU_KERNEL(add_sigmoid_rows, 256)
(float *GPU_RESTRICT out, const float *GPU_RESTRICT src, const float *GPU_RESTRICT gate, int n,
 int cols)
{
    const long long id = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (id >= (long long)n * cols)
        return;
    out[id] += gpu_sigmoid(gate[id / cols]) * src[id];
}
