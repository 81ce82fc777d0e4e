/* SPDX-License-Identifier: Apache-2.0 */
/*
 * MoE plumbing around the expert GEMMs (spec model.md §2.6):
 *
 *   moe_route     router logits -> softmax over all experts (fp32) -> top-k
 *                 (ties: lower expert id) -> optional renormalisation.
 *   moe_sort      expert-major order of the n*k (token, slot) assignments:
 *                 seg[E+1] row offsets, the source token of every sorted
 *                 row and, for every assignment, its sorted row. The MMQ
 *                 grouped GEMM then reads each expert's weights once per
 *                 tile of its rows. Rows of one expert come in arbitrary
 *                 order (LDS atomics); results do not depend on it because
 *                 no reduction crosses rows.
 *   moe_combine   out[t] (+)= sum_j w[t][j] * ys[pos[t][j]]   (fixed order j,
 *                 so the sum is deterministic); pos NULL: ys is in
 *                 assignment order already (the decode path's slices).
 *   swiglu        out[r][i] = silu(gu[r][i]) * gu[r][inter + i] for the fused
 *                 gate|up projection output.
 */
#include "kernels/gpu/compat.h"

#define MOE_MAX_E_PER_LANE 8              /* up to 256 experts          */
#define MOE_MAX_TOPK 16

/* One warp per token; block = 4 tokens. */
GPU_KERNEL(moe_route, 128)
(const float *GPU_RESTRICT logits, int n_tok, int n_exp, int topk, int renorm,
 int *GPU_RESTRICT ids, float *GPU_RESTRICT wts)
{
    const int lane = gpu_lane();
    const int t = gpu_bid_x() * 4 + gpu_tid_x() / GPU_WARP;
    if (t >= n_tok)
        return;
    const float *l = logits + (long long)t * n_exp;
    float v[MOE_MAX_E_PER_LANE];
    float mx = -3.0e38f;
#pragma unroll
    for (int i = 0; i < MOE_MAX_E_PER_LANE; i++) {
        int e = i * GPU_WARP + lane;
        v[i] = e < n_exp ? l[e] : -3.0e38f;
        mx = v[i] > mx ? v[i] : mx;
    }
    mx = gpu_warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < MOE_MAX_E_PER_LANE; i++) {
        int e = i * GPU_WARP + lane;
        v[i] = e < n_exp ? gpu_exp(v[i] - mx) : -1.0f;   /* -1: not a candidate */
        sum += e < n_exp ? v[i] : 0.0f;
    }
    sum = gpu_warp_sum(sum);
    const float inv = 1.0f / sum;

    float picked[MOE_MAX_TOPK];
    int picked_id[MOE_MAX_TOPK];
    float tot = 0.0f;
    for (int j = 0; j < topk; j++) {
        /* lane-local best, then warp argmax (value desc, id asc) */
        float bv = -2.0f;
        int be = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < MOE_MAX_E_PER_LANE; i++) {
            int e = i * GPU_WARP + lane;
            if (v[i] > bv) {
                bv = v[i];
                be = e;
            }
        }
#pragma unroll
        for (int m = 16; m > 0; m >>= 1) {
            float ov = gpu_shfl_xor_f(bv, m);
            int oe = gpu_shfl_xor_i(be, m);
            if (ov > bv || (ov == bv && oe < be)) {
                bv = ov;
                be = oe;
            }
        }
        if ((be & (GPU_WARP - 1)) == lane) {
#pragma unroll
            for (int i = 0; i < MOE_MAX_E_PER_LANE; i++)
                if (i == be / GPU_WARP)
                    v[i] = -1.0f;
        }
        float p = bv * inv;
        if (j < MOE_MAX_TOPK) {
            picked[j] = p;
            picked_id[j] = be;
        }
        tot += p;
    }
    if (lane == 0) {
        const float scale = renorm ? 1.0f / tot : 1.0f;
        for (int j = 0; j < topk && j < MOE_MAX_TOPK; j++) {
            ids[(long long)t * topk + j] = picked_id[j];
            wts[(long long)t * topk + j] = picked[j] * scale;
        }
    }
}

/* Single block of 1024 threads; n_exp <= 1024. */
GPU_KERNEL(moe_sort, 1024)
(const int *GPU_RESTRICT ids, int n_assign, int topk, int n_exp, int *GPU_RESTRICT seg,
 int *GPU_RESTRICT row_token, int *GPU_RESTRICT pos)
{
    __shared__ int count[1024];
    __shared__ int cursor[1024];
    const int tid = gpu_tid_x();
    for (int e = tid; e < n_exp; e += 1024)
        count[e] = 0;
    gpu_sync();
    for (int a = tid; a < n_assign; a += 1024)
        gpu_atomic_add_i(&count[ids[a]], 1);
    gpu_sync();
    if (tid == 0) {
        int s = 0;
        for (int e = 0; e < n_exp; e++) {
            seg[e] = s;
            cursor[e] = s;
            s += count[e];
        }
        seg[n_exp] = s;
    }
    gpu_sync();
    for (int a = tid; a < n_assign; a += 1024) {
        int r = gpu_atomic_add_i(&cursor[ids[a]], 1);
        row_token[r] = a / topk;
        pos[a] = r;
    }
}

/* Block per token, 256 threads over the hidden dimension. */
GPU_KERNEL(moe_combine, 256)
(const float *GPU_RESTRICT ys, const int *GPU_RESTRICT pos, const float *GPU_RESTRICT wts,
 int topk, int hidden, float *GPU_RESTRICT out, int accumulate)
{
    const int t = gpu_bid_x();
    for (int h = gpu_tid_x(); h < hidden; h += 256) {
        float s = accumulate ? out[(long long)t * hidden + h] : 0.0f;
        for (int j = 0; j < topk; j++) {
            long long a = (long long)t * topk + j;
            s += wts[a] * ys[(pos ? (long long)pos[a] : a) * hidden + h];
        }
        out[(long long)t * hidden + h] = s;
    }
}

/* Thread per output element. */
GPU_KERNEL(swiglu, 256)
(const float *GPU_RESTRICT gu, int n_rows, int inter, float *GPU_RESTRICT out)
{
    const long long id = (long long)gpu_bid_x() * 256 + gpu_tid_x();
    if (id >= (long long)n_rows * inter)
        return;
    const long long r = id / inter, i = id % inter;
    const float g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
    out[id] = gpu_silu(g) * u;
}
