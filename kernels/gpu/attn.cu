/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decode attention (one new token, spec model.md §2.5) split over the KV
 * cache ("flash-decoding"): a long cache is cut into chunks of ATTN_CHUNK
 * positions so that all compute units work even with 16 heads.
 *
 *   attn_decode_split  grid (chunks, n_heads): 8 warps score the chunk's
 *                      positions (warp per position, lanes over head_dim),
 *                      softmax inside the chunk, then thread per dim sums
 *                      the values. Writes the chunk's max, sum and
 *                      unnormalised output.
 *   attn_decode_merge  grid n_heads: rescales the chunks by exp(m_c - m)
 *                      and divides by the total sum.
 *
 * q [n_heads][head_dim] (row stride q_ld), caches [len][n_kv][head_dim],
 * query head h reads kv head h / (n_heads / n_kv). head_dim <= 256.
 */
#include "kernels/gpu/compat.h"

#define ATTN_CHUNK 256
#define ATTN_THREADS 256

GPU_KERNEL(attn_decode_split, ATTN_THREADS)
(const float *GPU_RESTRICT q, long long q_ld, const float *GPU_RESTRICT kc,
 const float *GPU_RESTRICT vc, int len, int n_heads, int n_kv, int head_dim, float scale,
 float *GPU_RESTRICT part_o, float *GPU_RESTRICT part_ms)
{
    __shared__ float qs[256], sc[ATTN_CHUNK], scratch[32];
    const int c = gpu_bid_x(), h = gpu_bid_y(), tid = gpu_tid_x();
    const int lane = gpu_lane(), warp = tid / GPU_WARP;
    const int kvh = h / (n_heads / n_kv);
    const int p0 = c * ATTN_CHUNK;
    const int np = len - p0 < ATTN_CHUNK ? len - p0 : ATTN_CHUNK;
    for (int i = tid; i < head_dim; i += ATTN_THREADS)
        qs[i] = q[(long long)h * q_ld + i];
    gpu_sync();
    for (int p = warp; p < np; p += ATTN_THREADS / GPU_WARP) {
        const float *kp = kc + ((long long)(p0 + p) * n_kv + kvh) * head_dim;
        float d = 0.0f;
        for (int i = lane; i < head_dim; i += GPU_WARP)
            d += qs[i] * kp[i];
        d = gpu_warp_sum(d);
        if (lane == 0)
            sc[p] = d * scale;
    }
    gpu_sync();
    float mx = -3.0e38f;
    for (int p = tid; p < np; p += ATTN_THREADS)
        mx = sc[p] > mx ? sc[p] : mx;
    mx = gpu_warp_max(mx);
    if (lane == 0)
        scratch[warp] = mx;
    gpu_sync();
    mx = scratch[0];
    for (int w = 1; w < ATTN_THREADS / GPU_WARP; w++)
        mx = scratch[w] > mx ? scratch[w] : mx;
    gpu_sync();
    float sum = 0.0f;
    for (int p = tid; p < np; p += ATTN_THREADS) {
        float e = gpu_exp(sc[p] - mx);
        sc[p] = e;
        sum += e;
    }
    sum = gpu_block_sum(sum, scratch, ATTN_THREADS / GPU_WARP);   /* also orders sc[] */
    const int n_chunks = (len + ATTN_CHUNK - 1) / ATTN_CHUNK;
    const long long pi = (long long)h * n_chunks + c;
    for (int i = tid; i < head_dim; i += ATTN_THREADS) {
        float acc = 0.0f;
        for (int p = 0; p < np; p++)
            acc += sc[p] * vc[((long long)(p0 + p) * n_kv + kvh) * head_dim + i];
        part_o[pi * head_dim + i] = acc;
    }
    if (tid == 0) {
        part_ms[2 * pi] = mx;
        part_ms[2 * pi + 1] = sum;
    }
}

/* out [n_heads][head_dim]. */
GPU_KERNEL(attn_decode_merge, ATTN_THREADS)
(const float *GPU_RESTRICT part_o, const float *GPU_RESTRICT part_ms, int len, int head_dim,
 float *GPU_RESTRICT out)
{
    const int h = gpu_bid_x();
    const int n_chunks = (len + ATTN_CHUNK - 1) / ATTN_CHUNK;
    const float *ms = part_ms + 2LL * h * n_chunks;
    float mx = -3.0e38f;
    for (int c = 0; c < n_chunks; c++)
        mx = ms[2 * c] > mx ? ms[2 * c] : mx;
    float tot = 0.0f;
    for (int c = 0; c < n_chunks; c++)
        tot += ms[2 * c + 1] * gpu_exp(ms[2 * c] - mx);
    const float inv = 1.0f / tot;
    for (int i = gpu_tid_x(); i < head_dim; i += ATTN_THREADS) {
        float acc = 0.0f;
        for (int c = 0; c < n_chunks; c++)
            acc += part_o[((long long)h * n_chunks + c) * head_dim + i] * gpu_exp(ms[2 * c] - mx);
        out[(long long)h * head_dim + i] = acc * inv;
    }
}
