/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Gated DeltaNet token mixing (spec model.md §2.4 steps 2-7) for n
 * consecutive tokens of one sequence, in the recurrent form (exact math; the
 * chunked form only reorders it):
 *
 *   gdn_conv       causal depthwise conv (kernel K) + SiLU, one thread per
 *                  channel walking the n tokens in order; the conv state
 *                  [K-1][conv_dim] (oldest first) is updated in place.
 *   gdn_recurrent  one block per value head, one thread per value column v:
 *                  column v of the fp32 state S[k][v] (128 values) lives in
 *                  registers for the whole call, so the state is read and
 *                  written once per call, not once per token. Per token:
 *                    q^, k^ = l2norm(q), l2norm(k) (eps 1e-6), q^ *= dk^-1/2
 *                    g = -exp(A_log) * softplus(a + dt_bias),  beta = sigmoid(b)
 *                    S = e^g S;  d = beta (v - S^T k^);  S += k^ d^T;  o = S^T q^
 *                  Value head j uses q/k head j / (nv / nk).
 *   gdn_recurrent_any  the same math for any d_k <= GDN_ANY_MAX_DK and any
 *                  d_v (the tiny test models have 32): thread per value
 *                  column, columns strided over the block, the state kept in
 *                  global memory (read twice, written once per token). Slower,
 *                  only for shapes the register-resident kernel cannot take.
 * The gated RMSNorm of o is `rmsnorm_gated` (norm.cu).
 */
#include "kernels/gpu/compat.h"

#define GDN_D 128                          /* d_k = d_v = 128 (Qwen3.5/3.6) */

GPU_KERNEL(gdn_conv, 256)
(const float *GPU_RESTRICT qkv, int n, int conv_dim, int ksize, float *GPU_RESTRICT state,
 const float *GPU_RESTRICT w, float *GPU_RESTRICT u)
{
    const int c = gpu_bid_x() * 256 + gpu_tid_x();
    if (c >= conv_dim || ksize < 1 || ksize > 8)
        return;
    float hist[7];
#pragma unroll
    for (int j = 0; j < 7; j++)
        hist[j] = j < ksize - 1 ? state[(long long)j * conv_dim + c] : 0.0f;
    for (int t = 0; t < n; t++) {
        const float xt = qkv[(long long)t * conv_dim + c];
        float acc = w[(long long)c * ksize + ksize - 1] * xt;
#pragma unroll
        for (int j = 0; j < 7; j++)
            if (j < ksize - 1)
                acc += w[(long long)c * ksize + j] * hist[j];
#pragma unroll
        for (int j = 0; j < 6; j++)
            if (j < ksize - 2)
                hist[j] = hist[j + 1];
#pragma unroll
        for (int j = 0; j < 7; j++)
            if (j == ksize - 2)
                hist[j] = xt;
        u[(long long)t * conv_dim + c] = gpu_silu(acc);
    }
#pragma unroll
    for (int j = 0; j < 7; j++)
        if (j < ksize - 1)
            state[(long long)j * conv_dim + c] = hist[j];
}

/* u [n][conv_dim] = conv output (q | k | v), b, a [n][nv], A_log, dt_bias
 * [nv], ssm [nv][128][128], o [n][nv*128]. Block = value head, 256
 * threads: thread (v = tid / 2, half = tid % 2) keeps rows k = 64*half ..
 * 64*half+63 of column v in registers (64 floats: no spills on either
 * vendor) and the two halves of a column are combined with one shuffle. */
GPU_KERNEL(gdn_recurrent, 2 * GDN_D)
(const float *GPU_RESTRICT u, int n, int nk, int nv, const float *GPU_RESTRICT b,
 const float *GPU_RESTRICT a, const float *GPU_RESTRICT A_log, const float *GPU_RESTRICT dt_bias,
 float *GPU_RESTRICT ssm, float *GPU_RESTRICT o)
{
    __shared__ float qs[GDN_D], ks[GDN_D], scratch[32];
    const int j = gpu_bid_x(), tid = gpu_tid_x();
    const int v = tid >> 1, k0 = (tid & 1) * (GDN_D / 2);
    const int hk = j / (nv / nk);
    const long long conv_dim = 2LL * nk * GDN_D + (long long)nv * GDN_D;
    float *sp = ssm + (long long)j * GDN_D * GDN_D + v;
    float s[GDN_D / 2];
#pragma unroll
    for (int k = 0; k < GDN_D / 2; k++)
        s[k] = sp[(long long)(k0 + k) * GDN_D];
    const float neg_a = -gpu_exp(A_log[j]);

    for (int t = 0; t < n; t++) {
        const float *ut = u + t * conv_dim;
        const float q = tid < GDN_D ? ut[hk * GDN_D + tid] : 0.0f;
        const float k = tid < GDN_D ? ut[(long long)nk * GDN_D + hk * GDN_D + tid] : 0.0f;
        const float vv = ut[2LL * nk * GDN_D + (long long)j * GDN_D + v];
        const float qq = gpu_block_sum(q * q, scratch, 2 * GDN_D / GPU_WARP);
        const float kk = gpu_block_sum(k * k, scratch, 2 * GDN_D / GPU_WARP);
        /* every thread has read scratch inside gpu_block_sum before the
         * next barrier, so qs/ks may be written now */
        if (tid < GDN_D) {
            qs[tid] = q * gpu_rsqrt(qq + 1e-6f) * gpu_rsqrt((float)GDN_D);
            ks[tid] = k * gpu_rsqrt(kk + 1e-6f);
        }
        gpu_sync();
        const float x = a[(long long)t * nv + j] + dt_bias[j];
        const float sp_x = x > 20.0f ? x : gpu_log(1.0f + gpu_exp(x));
        const float decay = gpu_exp(neg_a * sp_x);
        const float beta = gpu_sigmoid(b[(long long)t * nv + j]);
        float kv = 0.0f;
#pragma unroll
        for (int i = 0; i < GDN_D / 2; i++) {
            s[i] *= decay;
            kv += s[i] * ks[k0 + i];
        }
        kv += gpu_shfl_xor_f(kv, 1);
        const float d = beta * (vv - kv);
        float out = 0.0f;
#pragma unroll
        for (int i = 0; i < GDN_D / 2; i++) {
            s[i] += ks[k0 + i] * d;
            out += s[i] * qs[k0 + i];
        }
        out += gpu_shfl_xor_f(out, 1);
        if ((tid & 1) == 0)
            o[(long long)t * nv * GDN_D + (long long)j * GDN_D + v] = out;
        gpu_sync();                        /* qs/ks are rewritten next token */
    }
#pragma unroll
    for (int k = 0; k < GDN_D / 2; k++)
        sp[(long long)(k0 + k) * GDN_D] = s[k];
}

#define GDN_ANY_MAX_DK 256
#define GDN_ANY_THREADS 128

/* As gdn_recurrent with runtime dk, dv: u [n][2*nk*dk + nv*dv], ssm
 * [nv][dk][dv], o [n][nv*dv]. Block = value head. Each thread owns the
 * columns v = tid, tid + 128, ... for the whole call, so no other thread
 * touches them and the state needs no barrier; only qs/ks are shared. */
GPU_KERNEL(gdn_recurrent_any, GDN_ANY_THREADS)
(const float *GPU_RESTRICT u, int n, int nk, int nv, int dk, int dv, const float *GPU_RESTRICT b,
 const float *GPU_RESTRICT a, const float *GPU_RESTRICT A_log, const float *GPU_RESTRICT dt_bias,
 float *GPU_RESTRICT ssm, float *GPU_RESTRICT o)
{
    __shared__ float qs[GDN_ANY_MAX_DK], ks[GDN_ANY_MAX_DK], scratch[32];
    const int j = gpu_bid_x(), tid = gpu_tid_x();
    if (dk <= 0 || dk > GDN_ANY_MAX_DK || dv <= 0 || nk <= 0 || nv % nk)
        return;                            /* uniform: the host checks too */
    const int hk = j / (nv / nk);
    const long long conv_dim = 2LL * nk * dk + (long long)nv * dv;
    float *S = ssm + (long long)j * dk * dv;
    const float neg_a = -gpu_exp(A_log[j]);
    const float qscale = gpu_rsqrt((float)dk);

    for (int t = 0; t < n; t++) {
        const float *ut = u + t * conv_dim;
        float qq = 0.0f, kk = 0.0f;
        for (int i = tid; i < dk; i += GDN_ANY_THREADS) {
            const float q = ut[(long long)hk * dk + i], k = ut[(long long)nk * dk + (long long)hk * dk + i];
            qs[i] = q;
            ks[i] = k;
            qq += q * q;
            kk += k * k;
        }
        qq = gpu_block_sum(qq, scratch, GDN_ANY_THREADS / GPU_WARP);
        kk = gpu_block_sum(kk, scratch, GDN_ANY_THREADS / GPU_WARP);
        const float iq = gpu_rsqrt(qq + 1e-6f) * qscale, ik = gpu_rsqrt(kk + 1e-6f);
        /* each thread rescales the entries it wrote itself, then the
         * barrier publishes them */
        for (int i = tid; i < dk; i += GDN_ANY_THREADS) {
            qs[i] *= iq;
            ks[i] *= ik;
        }
        gpu_sync();
        const float x = a[(long long)t * nv + j] + dt_bias[j];
        const float sp_x = x > 20.0f ? x : gpu_log(1.0f + gpu_exp(x));
        const float decay = gpu_exp(neg_a * sp_x);
        const float beta = gpu_sigmoid(b[(long long)t * nv + j]);
        for (int v = tid; v < dv; v += GDN_ANY_THREADS) {
            float kv = 0.0f;
            for (int i = 0; i < dk; i++)
                kv += S[(long long)i * dv + v] * ks[i];
            kv *= decay;
            const float d = beta * (ut[2LL * nk * dk + (long long)j * dv + v] - kv);
            float out = 0.0f;
            for (int i = 0; i < dk; i++) {
                const float s = S[(long long)i * dv + v] * decay + ks[i] * d;
                S[(long long)i * dv + v] = s;
                out += s * qs[i];
            }
            o[(long long)t * nv * dv + (long long)j * dv + v] = out;
        }
        gpu_sync();                        /* qs/ks are rewritten next token */
    }
}
