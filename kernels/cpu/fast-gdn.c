/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Chunked Gated DeltaNet for prefill: the recurrence of spec model.md §2.4
 * step 7 (kernels/cpu/ref.c, ref_gdn) computed for a chunk of C tokens
 * (FAST_GDN_CHUNK, 16; the last chunk of a call shorter) at once with
 * matrix products instead of token by token.
 *
 * Why: the recurrent form reads and writes the whole state S [dk][dv]
 * (64 KB per head at 128 x 128, more than L1) twice per token, so it is
 * bound by L2 traffic. The chunked form does fewer multiply-adds per token
 * (3 dk dv + C (dk + dv), against 4 dk dv) and does them as
 * register-blocked GEMMs over operands that stay in L1/L2, touching S three
 * times per chunk: 3.2x faster per (head, token) at the real shape
 * (docs/performance.md, CPU, "Chunked GDN prefill"). The usual GPU chunk
 * of 64 tokens was measured too: 25 % slower here than 16, since the
 * intra-chunk part (C (dk + dv) per token, C / 2 exponentials) grows with C
 * while a CPU core gains nothing from the larger matrices.
 *
 * Derivation. One head, per token t with a_t = exp(g_t) (g_t <= 0):
 *     S_t = a_t S_{t-1} + k_t d_t^T,  d_t = beta_t (v_t - (a_t S_{t-1})^T k_t),
 *     o_t = S_t^T q_t.
 * In a chunk starting from S0, let G_t = g_0 + ... + g_t (cumulative log
 * decay from the chunk's start, t = 0..C-1). Unrolling the first line,
 *     S_t = e^{G_t} S0 + sum_{s <= t} e^{G_t - G_s} k_s d_s^T,        (1)
 * and so, with the decayed state a_t S_{t-1} = (1) at t minus its s = t term,
 *     d_t = beta_t (v_t - e^{G_t} S0^T k_t - sum_{s < t} e^{G_t - G_s} (k_t.k_s) d_s).
 * Stacking the d_t as rows of D [C][dv] (K, Q, V likewise):
 *     (I + L) D = R,  L[t][s] = beta_t e^{G_t - G_s} (k_t.k_s) for s < t, 0 else,
 *                     R[t]    = beta_t (v_t - e^{G_t} (K S0)[t]).
 * I + L is unit lower triangular, so D is found by forward substitution.
 * (This is the WY / UT form: with T = (I + L)^-1, U = T diag(beta) V and
 * W = T diag(beta e^G) K, D = U - W S0. On a CPU the chunks run one after
 * another anyway, so T is applied to R directly: one substitution over dv
 * columns instead of building U (dv columns) and W (dk columns) and then
 * W S0, which is the same result with fewer products.) Then from (1):
 *     o_t  = e^{G_t} (Q S0)[t] + sum_{s <= t} e^{G_t - G_s} (q_t.k_s) d_s,
 *     S_C  = e^{G_last} S0 + sum_s e^{G_last - G_s} k_s d_s^T
 *          = e^{G_last} S0 + (K')^T D,  K'[s] = e^{G_last - G_s} k_s.
 * Products per chunk: [K; Q] S0, K K^T and Q K^T (lower triangles), the
 * substitution, P D with P = mask(Q K^T o e^{G_t - G_s}), and K'^T D.
 *
 * Numerics: every exponential is of G_t - G_s with t >= s, or of G_t, so
 * all are <= 1 (never the ratio of two exponentials, which underflows and
 * overflows for heads with a strong decay: -g_t reaches ~100 per token).
 * G is summed in double, since the difference of two large cumulative sums
 * in fp32 would lose the small ratios' precision. The state stays fp32;
 * the caller flushes denormals (fast.c, gdn_job). Results match the
 * recurrence up to fp32 rounding of a different order of operations, not
 * bit for bit (kernels/cpu/test-fast.c states the tolerance).
 *
 * Padding: a chunk of c tokens is computed as cp = c rounded up to 16
 * rows, with zero k, q, v and beta in rows c..cp-1, which makes their d
 * rows zero, so they add nothing to the outputs or the state.
 */
#include "kernels/cpu/fast-gdn.h"

#include <math.h>
#include <string.h>

#define C FAST_GDN_CHUNK

static size_t r16(size_t x)
{
    return (x + 15) & ~(size_t)15;
}

size_t fast_gdn_chunked_scratch(int32_t dk, int32_t dv)
{
    return r16(2 * (size_t)C * (size_t)dk) +   /* KQ  [2C][dk]  */
           r16((size_t)dk * C) +               /* Kt  [dk][C]   */
           r16(2 * (size_t)C * (size_t)dv) +   /* XS  [2C][dv]  */
           r16(2 * (size_t)C * C) +            /* A   [2C][C]   */
           r16((size_t)C * (size_t)dv) +       /* R   [C][dv]   */
           r16(2 * (size_t)C) +                /* G   [C] double */
           3 * r16((size_t)C) + r16((size_t)dk); /* gam, beta, w; gl */
}

void fast_gdn_chunked(const struct fast_kernels *kn, float *S, const struct fast_gdn_seq *s,
                      float *scratch)
{
    const int32_t dk = s->dk, dv = s->dv;
    float *KQ = scratch;                          /* rows 0..cp-1 K, cp..2cp-1 Q  */
    float *Kt = KQ + r16(2 * (size_t)C * (size_t)dk);   /* [dk][cp]           */
    float *XS = Kt + r16((size_t)dk * C);         /* [K; Q] S0, then O rows cp.. */
    float *A = XS + r16(2 * (size_t)C * (size_t)dv);    /* L rows 0.., P rows cp.. */
    float *R = A + r16(2 * (size_t)C * C);        /* R, then D                    */
    double *G = (double *)(R + r16((size_t)C * (size_t)dv));
    float *gam = (float *)G + r16(2 * (size_t)C), *beta = gam + r16(C), *w = beta + r16(C);
    float *gl = w + r16(C);                       /* [dk] e^{G_last}             */

    for (int32_t t0 = 0; t0 < s->n; t0 += C) {
        const int32_t c = s->n - t0 < C ? s->n - t0 : C;
        const int32_t cp = (c + 15) & ~15;
        /* gates as gdn_job computes them; G cumulative from the chunk start */
        double acc = 0.0;
        for (int32_t t = 0; t < cp; t++) {
            if (t < c) {
                const float bt = s->b[(int64_t)(t0 + t) * s->gate_stride];
                const float at = s->a[(int64_t)(t0 + t) * s->gate_stride] + s->dt_bias;
                const float sp = at > 20.0f ? at : log1pf(expf(at));
                beta[t] = 1.0f / (1.0f + expf(-bt));
                acc += (double)(-s->A * sp);
                gam[t] = expf((float)acc);
            } else {
                beta[t] = 0.0f;
                gam[t] = 0.0f;
            }
            G[t] = acc;
        }
        for (int32_t t = 0; t < cp; t++)
            w[t] = t < c ? expf((float)(G[c - 1] - G[t])) : 0.0f;
        for (int32_t i = 0; i < dk; i++)
            gl[i] = gam[c - 1];
        /* gather K and Q of the chunk (zero padded), and K^T */
        for (int32_t t = 0; t < cp; t++) {
            float *kr = KQ + (int64_t)t * dk, *qr = KQ + (int64_t)(cp + t) * dk;
            if (t < c) {
                memcpy(kr, s->k + (int64_t)(t0 + t) * s->in_stride, (size_t)dk * sizeof(float));
                memcpy(qr, s->q + (int64_t)(t0 + t) * s->in_stride, (size_t)dk * sizeof(float));
            } else {
                memset(kr, 0, (size_t)dk * sizeof(float));
                memset(qr, 0, (size_t)dk * sizeof(float));
            }
            for (int32_t i = 0; i < dk; i++)
                Kt[(int64_t)i * cp + t] = kr[i];
        }
        /* [K; Q] S0, K K^T and Q K^T (lower triangles) */
        kn->gdn_gemm(KQ, dk, S, dv, XS, dv, 2 * cp, dv, dk, 0, NULL);
        kn->gdn_gemm(KQ, dk, Kt, cp, A, cp, cp, cp, dk, FAST_GDN_TRI_N, NULL);
        kn->gdn_gemm(KQ + (int64_t)cp * dk, dk, Kt, cp, A + (int64_t)cp * cp, cp, cp, cp, dk,
                     FAST_GDN_TRI_N, NULL);
        /* decay ratios e^{G_t - G_s}, s <= t only: L (strict) and P */
        for (int32_t t = 0; t < cp; t++) {
            float *lr = A + (int64_t)t * cp, *pr = A + (int64_t)(cp + t) * cp;
            for (int32_t j = 0; j < t; j++) {
                const float d = expf((float)(G[t] - G[j]));
                lr[j] = beta[t] * d * lr[j];
                pr[j] = d * pr[j];
            }
            for (int32_t j = t + 1; j < cp; j++)
                pr[j] = 0.0f;
        }
        /* R = beta (V - e^G K S0), then D by forward substitution */
        for (int32_t t = 0; t < cp; t++) {
            float *rr = R + (int64_t)t * dv;
            if (t < c) {
                kn->gdn_axpby(rr, beta[t], s->v + (int64_t)(t0 + t) * s->in_stride,
                              -beta[t] * gam[t], XS + (int64_t)t * dv, dv);
            } else {
                memset(rr, 0, (size_t)dv * sizeof(float));
            }
        }
        kn->gdn_solve(A, cp, R, dv, cp, dv);
        /* O = e^G (Q S0) + P D */
        float *O = XS + (int64_t)cp * dv;
        kn->gdn_gemm(A + (int64_t)cp * cp, cp, R, dv, O, dv, cp, dv, cp,
                     FAST_GDN_ACC | FAST_GDN_TRI_K, gam);
        for (int32_t t = 0; t < c; t++)
            memcpy(s->o + (int64_t)(t0 + t) * s->o_stride, O + (int64_t)t * dv,
                   (size_t)dv * sizeof(float));
        /* S = e^{G_last} S0 + K'^T D, K'^T D = K^T (diag(w) D): D's rows
         * scaled (D is not needed any more), K read transposed */
        for (int32_t t = 0; t < c; t++)
            kn->gdn_axpby(R + (int64_t)t * dv, w[t], R + (int64_t)t * dv, 0.0f,
                          R + (int64_t)t * dv, dv);
        kn->gdn_gemm(KQ, dk, R, dv, S, dv, dk, dv, cp, FAST_GDN_ACC | FAST_GDN_XT, gl);
    }
}
