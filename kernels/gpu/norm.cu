/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Row-wise small kernels of the forward pass (spec model.md §2.2, §2.5):
 *
 *   rmsnorm        y = x * rsqrt(mean(x^2) + eps) * (w + plus_one)
 *                  (plus_one = 1: the zero-centred Qwen3.5 form)
 *   rmsnorm_gated  y = w * (o * rsqrt(mean(o^2) + eps)) * silu(z), per head
 *                  of `dim`, one weight vector shared by all heads (GDN out)
 *   rope_neox      partial NeoX rotation of the first rot_dim dims, pairs
 *                  (i, i + rot_dim/2), angle pos * theta^(-2i/rot_dim)
 *   mul_sigmoid    y = x * sigmoid(gate)
 *
 * Norms run one block per row and reduce in fp32; the elementwise ones one
 * thread per element. All strides are in floats.
 */
#include "kernels/gpu/compat.h"

GPU_KERNEL(rmsnorm, 256)
(float *y, long long y_ld, const float *x, long long x_ld, int dim,
 const float *GPU_RESTRICT w, float eps, float plus_one)
{
    __shared__ float scratch[32];
    const long long r = gpu_bid_x();
    const float *xr = x + r * x_ld;
    float ss = 0.0f;
    for (int i = gpu_tid_x(); i < dim; i += 256)
        ss += xr[i] * xr[i];
    ss = gpu_block_sum(ss, scratch, 8);
    const float inv = gpu_rsqrt(ss / (float)dim + eps);
    for (int i = gpu_tid_x(); i < dim; i += 256)
        y[r * y_ld + i] = xr[i] * inv * (w[i] + plus_one);
}

/* rows = tokens * heads; o, z, y are [rows][dim] contiguous. */
GPU_KERNEL(rmsnorm_gated, 128)
(float *y, const float *o, const float *GPU_RESTRICT z, int dim,
 const float *GPU_RESTRICT w, float eps)
{
    __shared__ float scratch[32];
    const long long r = gpu_bid_x();
    const float *orow = o + r * dim;
    float ss = 0.0f;
    for (int i = gpu_tid_x(); i < dim; i += 128)
        ss += orow[i] * orow[i];
    ss = gpu_block_sum(ss, scratch, 4);
    const float inv = gpu_rsqrt(ss / (float)dim + eps);
    for (int i = gpu_tid_x(); i < dim; i += 128)
        y[r * dim + i] = w[i] * (orow[i] * inv) * gpu_silu(z[r * dim + i]);
}

/* Thread per (token, head row, pair i < rot_dim/2). pos and inv_freq
 * [rot_dim/2] are device memory; the host computes inv_freq once per model
 * exactly as the reference does (1 / powf(theta, 2i/rot_dim) in fp32), so
 * the fp32 angle pos * inv_freq is bit-identical to the reference and to
 * HF, and only sin/cos differ (by ulps). */
GPU_KERNEL(rope_neox, 256)
(float *x, int n_tok, int rows_per_token, long long stride, int rot_dim,
 const int *GPU_RESTRICT pos, const float *GPU_RESTRICT inv_freq)
{
    const int half = rot_dim / 2;
    const long long id = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (id >= (long long)n_tok * rows_per_token * half)
        return;
    const int i = (int)(id % half);
    const long long row = id / half;            /* token * rows_per_token + h */
    const int t = (int)(row / rows_per_token);
    float s, c;
    gpu_sincos((float)pos[t] * inv_freq[i], &s, &c);
    float *p = x + row * stride;
    const float a = p[i], b = p[i + half];
    p[i] = a * c - b * s;
    p[i + half] = b * c + a * s;
}

GPU_KERNEL(mul_sigmoid, 256)
(float *y, long long y_ld, const float *x, long long x_ld, const float *gate, long long g_ld,
 int rows, int dim)
{
    const long long id = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (id >= (long long)rows * dim)
        return;
    const long long r = id / dim, i = id % dim;
    y[r * y_ld + i] = x[r * x_ld + i] * gpu_sigmoid(gate[r * g_ld + i]);
}
