/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Gated DeltaNet token mixing (spec model.md §2.4 steps 2-7) for n
 * consecutive tokens of one sequence, in the recurrent form, and for
 * prefills of d_k = d_v = 128 in the chunked form (gdn_chunk_*, the same
 * math reordered; derived below):
 *
 *   gdn_conv       causal depthwise conv (kernel K) + SiLU, one thread per
 *                  channel walking the n tokens in order; the conv state
 *                  [K-1][conv_dim] (oldest first) is updated in place.
 *   gdn_recurrent  one block per value head, 4 neighbouring threads per value
 *                  column v (GDN_SPLIT): column v of the fp32 state S[k][v]
 *                  (128 values, 32 per thread) lives in registers for the
 *                  whole call, so the state is read and
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
 *
 * The chunked form (gdn_chunk_prep / scan / out, C = GDN_C = 64 tokens).
 * The recurrence of one value head, token t (S [d_k][d_v] fp32, g_t <= 0):
 *   S_t = e^{g_t} S_{t-1} + k_t d_t^T,  d_t = beta_t (v_t - e^{g_t} S_{t-1}^T k_t),
 *   o_t = S_t^T q_t.
 * Inside a chunk of GDN_C tokens starting from state S0, let G_t = g_0 +
 * ... + g_t (within-chunk cumulative log decay, t = 0 .. C-1). Unrolling,
 *   S_t = e^{G_t} S0 + sum_{s<=t} e^{G_t - G_s} k_s d_s^T          (1)
 * (induction: e^{g_t} S_{t-1} gives every term of S_{t-1} the factor e^{g_t}
 * and G_t - G_s = g_t + (G_{t-1} - G_s); the new term has e^0). Putting (1)
 * for S_{t-1} into d_t:
 *   d_t + beta_t sum_{s<t} e^{G_t - G_s} (k_t . k_s) d_s = beta_t v_t - beta_t e^{G_t} S0^T k_t,
 * i.e. with A = strictly-lower(diag(beta) (e^{G_i - G_j}) . K K^T) and
 * T = (I + A)^-1 (unit lower triangular, forward substitution):
 *   D = U - W S0,  U = T diag(beta) V,  W = T diag(beta e^G) K.          (2)
 * The outputs from (1), and the state after the chunk (t = last):
 *   O  = diag(e^G) Q S0 + (lower-incl-diagonal . e^{G_i - G_j} . Q K^T) D   (3)
 *   S1 = e^{G_last} S0 + (diag(e^{G_last - G}) K)^T D.                     (4)
 * G is non-increasing (a sum of non-positive terms, also in rounded
 * arithmetic), so every exponent taken above, G_t, G_i - G_j (j <= i) and
 * G_last - G_t, is <= 0: nothing overflows, and a long chunk of strong decay
 * only underflows to the exact limit 0. q, k are normalised as in the
 * recurrent kernel (l2, eps 1e-6 inside the sqrt, q also by d_k^-1/2).
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
/* Threads per state column of gdn_recurrent (neighbouring lanes; the dot
 * products over d_k reduce with GDN_SPLIT - 1 shuffles): 2 held 64 state
 * values per thread and compiled on gfx1151 to 256 VGPRs with 12 spilled
 * (52 bytes of scratch per lane, on the decode path of every GDN layer);
 * 4 hold 32. Block = GDN_SPLIT * GDN_D = 512 threads (the launch sites in
 * gpu-backend.c, gpu-check.c and test-gpu-emu.c pass the same number). */
#define GDN_SPLIT 4
#define GDN_REC_THREADS (GDN_SPLIT * GDN_D)

GPU_KERNEL(gdn_recurrent, GDN_REC_THREADS)
(const float *GPU_RESTRICT u, int n, int nk, int nv, const float *GPU_RESTRICT b,
 const float *GPU_RESTRICT a, const float *GPU_RESTRICT A_log, const float *GPU_RESTRICT dt_bias,
 float *GPU_RESTRICT ssm, float *GPU_RESTRICT o)
{
    __shared__ float qs[GDN_D], ks[GDN_D], scratch[32];
    const int j = gpu_bid_x(), tid = gpu_tid_x();
    const int v = tid / GDN_SPLIT, k0 = (tid % GDN_SPLIT) * (GDN_D / GDN_SPLIT);
    const int hk = j / (nv / nk);
    const long long conv_dim = 2LL * nk * GDN_D + (long long)nv * GDN_D;
    float *sp = ssm + (long long)j * GDN_D * GDN_D + v;
    float s[GDN_D / GDN_SPLIT];
#pragma unroll
    for (int k = 0; k < GDN_D / GDN_SPLIT; k++)
        s[k] = sp[(long long)(k0 + k) * GDN_D];
    const float neg_a = -gpu_exp(A_log[j]);

    for (int t = 0; t < n; t++) {
        const float *ut = u + t * conv_dim;
        const float q = tid < GDN_D ? ut[hk * GDN_D + tid] : 0.0f;
        const float k = tid < GDN_D ? ut[(long long)nk * GDN_D + hk * GDN_D + tid] : 0.0f;
        const float vv = ut[2LL * nk * GDN_D + (long long)j * GDN_D + v];
        const float qq = gpu_block_sum(q * q, scratch, GDN_REC_THREADS / GPU_WARP);
        const float kk = gpu_block_sum(k * k, scratch, GDN_REC_THREADS / GPU_WARP);
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
        for (int i = 0; i < GDN_D / GDN_SPLIT; i++) {
            s[i] *= decay;
            kv += s[i] * ks[k0 + i];
        }
#pragma unroll
        for (int m = 1; m < GDN_SPLIT; m <<= 1)
            kv += gpu_shfl_xor_f(kv, m);
        const float d = beta * (vv - kv);
        float out = 0.0f;
#pragma unroll
        for (int i = 0; i < GDN_D / GDN_SPLIT; i++) {
            s[i] += ks[k0 + i] * d;
            out += s[i] * qs[k0 + i];
        }
#pragma unroll
        for (int m = 1; m < GDN_SPLIT; m <<= 1)
            out += gpu_shfl_xor_f(out, m);
        if (tid % GDN_SPLIT == 0)
            o[(long long)t * nv * GDN_D + (long long)j * GDN_D + v] = out;
        gpu_sync();                        /* qs/ks are rewritten next token */
    }
#pragma unroll
    for (int k = 0; k < GDN_D / GDN_SPLIT; k++)
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

/* ------------------------------------------------------------------ */
/* Chunked prefill (d_k = d_v = 128, n >= the host's threshold)        */
/*
 * The math is derived in the comment at the top of this file.
 * Three kernels, all chunk-major scratch [nv][nc][...] (nc = ceil(n / C);
 * the rows of a last partial chunk past n are zero in every array, so they
 * add nothing):
 *   gdn_chunk_prep  grid (nc, nv): gates, norms, the two C x C Gram
 *                   matrices K K^T and Q K^T (d-tiles of 32 through LDS),
 *                   T by forward substitution, W and U (2), Qd = diag(e^G) Q,
 *                   Kd = diag(e^{G_last - G}) K, the masked decayed Q K^T (P)
 *                   and e^{G_last}. Parallel over every chunk: most of the
 *                   FLOPs.
 *   gdn_chunk_scan  grid (nv, 2): the only sequential part, over chunks. A
 *                   block owns 64 state columns (columns never mix), 4
 *                   threads per column with 32 rows each in registers (rows
 *                   part + 4i: the 4 lanes read consecutive LDS words). Per
 *                   chunk: writes S0, D = U - W S0 (in place over U), then
 *                   S1 by (4). The final state goes back to ssm.
 *   gdn_chunk_out   grid (nc, nv): (3) as one product [Qd | P] [S0 ; D]
 *                   (K dimension 128 + C) in k-tiles of 32.
 * Every sum has a fixed order: deterministic, no atomics.
 */
#define GDN_C 64                          /* tokens per chunk                 */
#define GDN_CP (GDN_C + 1)                /* padded LDS row of a C x C matrix */
#define GDN_TP 65                         /* padded LDS row of a d-tile       */

/* u, b, a, A_log, dt_bias as gdn_recurrent. Outputs per (head j, chunk c),
 * at ((j nc + c) C) rows: W, U, Qd, Kd [C][128]; P [C][C]; eGl [j nc + c]. */
GPU_KERNEL(gdn_chunk_prep, 256)
(const float *GPU_RESTRICT u, int n, int nk, int nv, const float *GPU_RESTRICT b,
 const float *GPU_RESTRICT a, const float *GPU_RESTRICT A_log, const float *GPU_RESTRICT dt_bias,
 float *GPU_RESTRICT W, float *GPU_RESTRICT U, float *GPU_RESTRICT Qd, float *GPU_RESTRICT Kd,
 float *GPU_RESTRICT P, float *GPU_RESTRICT eGl)
{
    __shared__ float graw[GDN_C], G[GDN_C], beta[GDN_C], cw[GDN_C], iq[GDN_C], ik[GDN_C];
    __shared__ float Am[GDN_C * GDN_CP];  /* A; then K and V tiles [C][32]    */
    __shared__ float Tb[GDN_C * GDN_CP];  /* K^T and Q^T tiles [32][65]; then T */
    const int c = gpu_bid_x(), j = gpu_bid_y(), tid = gpu_tid_x();
    const int nc = (n + GDN_C - 1) / GDN_C, t0 = c * GDN_C;
    const int L = n - t0 < GDN_C ? n - t0 : GDN_C;
    const int hk = j / (nv / nk);
    const long long cd = 2LL * nk * GDN_D + (long long)nv * GDN_D;
    const float *uq = u + (long long)t0 * cd + (long long)hk * GDN_D;
    const float *uk = uq + (long long)nk * GDN_D;
    const float *uv = u + (long long)t0 * cd + 2LL * nk * GDN_D + (long long)j * GDN_D;
    const long long ch = (long long)j * nc + c, base = ch * GDN_C * GDN_D;

    /* gates (zero past n) and the l2 norms, 4 threads per token */
    if (tid < GDN_C) {
        float g = 0.0f, be = 0.0f;
        if (tid < L) {
            const float x = a[(long long)(t0 + tid) * nv + j] + dt_bias[j];
            const float sp_x = x > 20.0f ? x : gpu_log(1.0f + gpu_exp(x));
            g = -gpu_exp(A_log[j]) * sp_x;
            be = gpu_sigmoid(b[(long long)(t0 + tid) * nv + j]);
        }
        graw[tid] = g;
        beta[tid] = be;
    }
    {
        const int t = tid >> 2, p = tid & 3;
        float qq = 0.0f, kk = 0.0f;
        if (t < L)
            for (int i = p; i < GDN_D; i += 4) {
                const float q = uq[(long long)t * cd + i], k = uk[(long long)t * cd + i];
                qq += q * q;
                kk += k * k;
            }
        qq += gpu_shfl_xor_f(qq, 1);
        kk += gpu_shfl_xor_f(kk, 1);
        qq += gpu_shfl_xor_f(qq, 2);
        kk += gpu_shfl_xor_f(kk, 2);
        if (p == 0) {
            iq[t] = t < L ? gpu_rsqrt(qq + 1e-6f) * gpu_rsqrt((float)GDN_D) : 0.0f;
            ik[t] = t < L ? gpu_rsqrt(kk + 1e-6f) : 0.0f;
        }
    }
    gpu_sync();
    if (tid < GDN_C) {
        float s = 0.0f;
        for (int m = 0; m <= tid; m++)
            s += graw[m];
        G[tid] = s;
    }
    gpu_sync();
    if (tid < GDN_C)
        cw[tid] = beta[tid] * gpu_exp(G[tid]) * ik[tid];
    if (tid == 0)
        eGl[ch] = gpu_exp(G[L - 1]);

    /* raw K K^T and Q K^T: thread (ti, tj) owns rows ti + 16r, columns
     * tj + 16c (r, c < 4), so a warp reads 16 consecutive columns and 2
     * rows of the transposed tiles */
    const int ti = tid >> 4, tj = tid & 15;
    float gk[4][4], gq[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            gk[r][q] = gq[r][q] = 0.0f;
    float *Kt = Tb, *Qt = Tb + 32 * GDN_TP;
    for (int d0 = 0; d0 < GDN_D; d0 += 32) {
        for (int e = tid; e < GDN_C * 32; e += 256) {
            const int t = e >> 5, d = e & 31;
            Kt[d * GDN_TP + t] = t < L ? uk[(long long)t * cd + d0 + d] : 0.0f;
            Qt[d * GDN_TP + t] = t < L ? uq[(long long)t * cd + d0 + d] : 0.0f;
        }
        gpu_sync();
        for (int d = 0; d < 32; d++) {
            float kr[4], qr[4], kc[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                kr[r] = Kt[d * GDN_TP + ti + 16 * r];
                qr[r] = Qt[d * GDN_TP + ti + 16 * r];
                kc[r] = Kt[d * GDN_TP + tj + 16 * r];
            }
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    gk[r][q] += kr[r] * kc[q];
                    gq[r][q] += qr[r] * kc[q];
                }
        }
        gpu_sync();                       /* the tiles are rewritten next */
    }
    /* A (strictly lower) to LDS, P (lower incl. the diagonal) to memory;
     * the exponentials only where i >= j, so their arguments are <= 0 */
    float *Pc = P + ch * GDN_C * GDN_C;
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int i = ti + 16 * r, jj = tj + 16 * q;
            const float dec = jj <= i ? gpu_exp(G[i] - G[jj]) : 0.0f;
            Am[i * GDN_CP + jj] = jj < i ? beta[i] * dec * gk[r][q] * ik[i] * ik[jj] : 0.0f;
            Pc[i * GDN_C + jj] = dec * gq[r][q] * iq[i] * ik[jj];
        }
    gpu_sync();

    /* T = (I + A)^-1 by forward substitution, T[i][j] = delta_ij -
     * sum_{j<=m<i} A[i][m] T[m][j]: column j only reads column j, so
     * thread j solves its column alone, top to bottom, without barriers */
    if (tid < GDN_C)
        for (int i = 0; i < GDN_C; i++) {
            float v = tid == i ? 1.0f : 0.0f;
            for (int m = tid; m < i; m++)
                v -= Am[i * GDN_CP + m] * Tb[m * GDN_CP + tid];
            Tb[i * GDN_CP + tid] = v;
        }
    gpu_sync();

    /* W = T diag(cw) K_raw, U = T diag(beta) V in d-tiles of 32 (K and V
     * tiles [C][32] over A, which is no longer needed) */
    float *Ks = Am, *Vs = Am + GDN_C * 32;
    for (int d0 = 0; d0 < GDN_D; d0 += 32) {
        for (int e = tid; e < GDN_C * 32; e += 256) {
            const int t = e >> 5, d = e & 31;
            Ks[e] = t < L ? uk[(long long)t * cd + d0 + d] : 0.0f;
            Vs[e] = t < L ? uv[(long long)t * cd + d0 + d] : 0.0f;
        }
        gpu_sync();
        float aw[4][2], au[4][2];
#pragma unroll
        for (int r = 0; r < 4; r++)
            aw[r][0] = aw[r][1] = au[r][0] = au[r][1] = 0.0f;
        for (int s = 0; s < GDN_C; s++) {
            const float k0 = Ks[s * 32 + tj], k1 = Ks[s * 32 + tj + 16];
            const float v0 = Vs[s * 32 + tj], v1 = Vs[s * 32 + tj + 16];
            const float cws = cw[s], bs = beta[s];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const float t = Tb[(ti + 16 * r) * GDN_CP + s], tw = t * cws, tb = t * bs;
                aw[r][0] += tw * k0;
                aw[r][1] += tw * k1;
                au[r][0] += tb * v0;
                au[r][1] += tb * v1;
            }
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const long long row = base + (long long)(ti + 16 * r) * GDN_D + d0 + tj;
            W[row] = aw[r][0];
            W[row + 16] = aw[r][1];
            U[row] = au[r][0];
            U[row + 16] = au[r][1];
        }
        gpu_sync();                       /* the tiles are rewritten next */
    }

    /* Qd = diag(e^G) Q^, Kd = diag(e^{G_last - G}) K^ */
    for (int e = tid; e < GDN_C * GDN_D; e += 256) {
        const int t = e >> 7, d = e & (GDN_D - 1);
        float qd = 0.0f, kd = 0.0f;
        if (t < L) {
            qd = uq[(long long)t * cd + d] * iq[t] * gpu_exp(G[t]);
            kd = uk[(long long)t * cd + d] * ik[t] * gpu_exp(G[L - 1] - G[t]);
        }
        Qd[base + e] = qd;
        Kd[base + e] = kd;
    }
}

/* The sequential pass over the chunks (see above): block (head j, column
 * half y), thread (column v = 64 y + tid / 4, part = tid % 4) with rows
 * part + 4 i of that column. S0 [nv][nc][128][128] receives every chunk's
 * starting state, U becomes D. */
GPU_KERNEL(gdn_chunk_scan, 256)
(int n, const float *GPU_RESTRICT W, float *GPU_RESTRICT U, const float *GPU_RESTRICT Kd,
 const float *GPU_RESTRICT eGl, float *GPU_RESTRICT ssm, float *GPU_RESTRICT S0)
{
    __shared__ float buf[32 * GDN_D], dv[GDN_C * 64];
    const int j = gpu_bid_x(), tid = gpu_tid_x(), part = tid & 3, vl = tid >> 2;
    const int v = gpu_bid_y() * 64 + vl;
    const int nc = (n + GDN_C - 1) / GDN_C;
    float *sp = ssm + (long long)j * GDN_D * GDN_D + v;
    float s[GDN_D / 4];
#pragma unroll
    for (int i = 0; i < GDN_D / 4; i++)
        s[i] = sp[(long long)(part + 4 * i) * GDN_D];
    for (int c = 0; c < nc; c++) {
        const long long ch = (long long)j * nc + c, base = ch * GDN_C * GDN_D;
        float *s0 = S0 + ch * GDN_D * GDN_D + v;
#pragma unroll
        for (int i = 0; i < GDN_D / 4; i++)
            s0[(long long)(part + 4 * i) * GDN_D] = s[i];
        /* D = U - W S0; U is read and overwritten by the same thread */
        for (int tb = 0; tb < GDN_C; tb += 32) {
            gpu_sync();                   /* buf is free */
            for (int e = tid; e < 32 * GDN_D; e += 256)
                buf[e] = W[base + (long long)tb * GDN_D + e];
            gpu_sync();
            for (int t = 0; t < 32; t++) {
                float p = 0.0f;
#pragma unroll
                for (int i = 0; i < GDN_D / 4; i++)
                    p += buf[t * GDN_D + part + 4 * i] * s[i];
                p += gpu_shfl_xor_f(p, 1);
                p += gpu_shfl_xor_f(p, 2);
                if (part == 0) {
                    float *up = U + base + (long long)(tb + t) * GDN_D + v;
                    const float d = *up - p;
                    *up = d;
                    dv[(tb + t) * 64 + vl] = d;
                }
            }
        }
        const float eg = eGl[ch];
#pragma unroll
        for (int i = 0; i < GDN_D / 4; i++)
            s[i] *= eg;
        for (int tb = 0; tb < GDN_C; tb += 32) {
            gpu_sync();                   /* buf is free, dv is complete */
            for (int e = tid; e < 32 * GDN_D; e += 256)
                buf[e] = Kd[base + (long long)tb * GDN_D + e];
            gpu_sync();
            for (int t = 0; t < 32; t++) {
                const float d = dv[(tb + t) * 64 + vl];
#pragma unroll
                for (int i = 0; i < GDN_D / 4; i++)
                    s[i] += buf[t * GDN_D + part + 4 * i] * d;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < GDN_D / 4; i++)
        sp[(long long)(part + 4 * i) * GDN_D] = s[i];
}

/* O = [Qd | P] [S0 ; D] (3) for chunk c of head j; o [n][nv*128]. Thread
 * (ti, tj) owns rows ti + 16 r (r < 4) and columns tj + 16 q (q < 8). */
GPU_KERNEL(gdn_chunk_out, 256)
(int n, int nv, const float *GPU_RESTRICT Qd, const float *GPU_RESTRICT P,
 const float *GPU_RESTRICT D, const float *GPU_RESTRICT S0, float *GPU_RESTRICT o)
{
    __shared__ float As[GDN_C * 33], Bs[32 * GDN_D];
    const int c = gpu_bid_x(), j = gpu_bid_y(), tid = gpu_tid_x(), ti = tid >> 4, tj = tid & 15;
    const int nc = (n + GDN_C - 1) / GDN_C, t0 = c * GDN_C;
    const int L = n - t0 < GDN_C ? n - t0 : GDN_C;
    const long long ch = (long long)j * nc + c, base = ch * GDN_C * GDN_D;
    const float *qd = Qd + base, *pc = P + ch * GDN_C * GDN_C, *dc = D + base;
    const float *sc = S0 + ch * GDN_D * GDN_D;
    float acc[4][8];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int q = 0; q < 8; q++)
            acc[r][q] = 0.0f;
    for (int kt = 0; kt < (GDN_D + GDN_C) / 32; kt++) {
        const bool inter = kt < GDN_D / 32;
        gpu_sync();                       /* the tiles are free */
        for (int e = tid; e < GDN_C * 32; e += 256) {
            const int t = e >> 5, k = e & 31;
            As[t * 33 + k] = inter ? qd[t * GDN_D + kt * 32 + k] : pc[t * GDN_C + (kt - GDN_D / 32) * 32 + k];
        }
        for (int e = tid; e < 32 * GDN_D; e += 256)
            Bs[e] = inter ? sc[kt * 32 * GDN_D + e] : dc[(kt - GDN_D / 32) * 32 * GDN_D + e];
        gpu_sync();
        for (int k = 0; k < 32; k++) {
            float ar[4], bc[8];
#pragma unroll
            for (int r = 0; r < 4; r++)
                ar[r] = As[(ti + 16 * r) * 33 + k];
#pragma unroll
            for (int q = 0; q < 8; q++)
                bc[q] = Bs[k * GDN_D + tj + 16 * q];
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int q = 0; q < 8; q++)
                    acc[r][q] += ar[r] * bc[q];
        }
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int t = ti + 16 * r;
        if (t < L)
#pragma unroll
            for (int q = 0; q < 8; q++)
                o[(long long)(t0 + t) * nv * GDN_D + (long long)j * GDN_D + tj + 16 * q] = acc[r][q];
    }
}
