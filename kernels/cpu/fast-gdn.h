/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Chunked Gated DeltaNet for prefill (fast-gdn.c; the derivation is at the
 * top of that file) and its two ISA kernels (fast-gdn-avx512.c,
 * fast-gdn-avx2.c), which fast.c reaches through struct fast_kernels.
 */
#ifndef RESIDENT_KERNELS_CPU_FAST_GDN_H
#define RESIDENT_KERNELS_CPU_FAST_GDN_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/fast-kernels.h"

/* Tokens per chunk. 16, 32 and 64 were measured (bench-kernels-gdn, real
 * head shape, AVX-512): 0.92-0.99, 1.0-1.1 and 1.28-1.31 us per (head,
 * token). The per-token work is 3 dk dv + C (dk + dv) multiply-adds plus
 * C / 2 exponentials, so a smaller chunk does less; below 16 the tiles
 * would be padded (docs/performance.md, CPU, "Chunked GDN prefill"). */
#define FAST_GDN_CHUNK 16

/* When the chunked form is switched on (RESIDENT_GDN_CHUNK_MIN or
 * kb_cpu_fast_params.gdn_chunk_min), calls with at least that many tokens
 * take it and fewer run the recurrence token by token (decode). Measured
 * crossover: 4-6 tokens at AVX-512, 8 at AVX2 (a call of fewer than 16 is
 * padded to 16), so 8 is the value to switch it on with.
 *
 * It is off by default. The recurrence gives a token the same bits however
 * the tokens before it were split into calls; the chunked form's rounding
 * depends on where a call's chunks start. residentd promises a prompt the
 * same tokens whatever its scheduler did (prefill chunk size, batch
 * neighbours, a prefix-cache restore vs a recompute, `resident-engine
 * generate` offline): it-engine-cpu failed with the chunked form on (greedy
 * token 1 of a prompt prefilled 8 tokens per step differed from the
 * offline run's; the int8-activation mode turns the ~1e-7 relative change
 * of the GDN output into ~2e-4 on the logits of the random-weight fixture,
 * enough to flip a near-tie). The gain it would buy is the recurrence's
 * share of a prefill, 2-3 % on synth-8L (docs/performance.md, CPU,
 * "Chunked GDN prefill"): not worth the guarantee. */
#define FAST_GDN_CHUNK_MIN 8
#define FAST_GDN_CHUNK_DEFAULT INT32_MAX   /* off */

/* fast_gdn_gemm flags */
#define FAST_GDN_ACC   1   /* Z += X Y instead of Z = X Y                    */
#define FAST_GDN_TRI_N 2   /* rows m0..m0+3 need columns < m0+4 only; later
                              columns of such a row tile are not written     */
#define FAST_GDN_TRI_K 4   /* X[r][i] == 0 for i > r: a row tile m0..m0+3
                              sums i < m0+4 only                             */
#define FAST_GDN_XT    8   /* X is stored transposed: X[r][i] at X[i * ldx + r] */

/* Z[r][c] = sum_{i < kd} X[r][i] Y[i][c] for r < m, c < n, or with
 * FAST_GDN_ACC Z[r][c] = zs[r] Z[r][c] + sum ... (zs NULL: 1); row-major
 * with leading dimensions ldx, ldy, ldz (floats). n % 16 == 0 (AVX-512) or
 * n % 8 == 0 (AVX2). Plain fp32 FMA, each Z element summed in order of i. */
void fast_gdn_gemm_avx512(const float *X, int64_t ldx, const float *Y, int64_t ldy, float *Z,
                          int64_t ldz, int32_t m, int32_t n, int32_t kd, int flags,
                          const float *zs);
void fast_gdn_gemm_avx2(const float *X, int64_t ldx, const float *Y, int64_t ldy, float *Z,
                        int64_t ldz, int32_t m, int32_t n, int32_t kd, int flags,
                        const float *zs);

/* d[i] = a x[i] + b y[i] for i < n (n as in fast_gdn_gemm). */
void fast_gdn_axpby_avx512(float *d, float a, const float *x, float b, const float *y, int32_t n);
void fast_gdn_axpby_avx2(float *d, float a, const float *x, float b, const float *y, int32_t n);

/* Forward substitution with a unit lower-triangular matrix, in place:
 * R[s] <- R[s] - sum_{i < s} L[s][i] R[i] for s = 0 .. m-1 in order (R [m][n],
 * ld ldr; L [m][m], ld ldl, only its strictly lower part is read). n as in
 * fast_gdn_gemm. */
void fast_gdn_solve_avx512(const float *L, int64_t ldl, float *R, int64_t ldr, int32_t m,
                           int32_t n);
void fast_gdn_solve_avx2(const float *L, int64_t ldl, float *R, int64_t ldr, int32_t m,
                         int32_t n);

/* One value head's tokens 0 .. n-1 (token t's q, k, v at q + t * in_stride,
 * ...; its gate inputs at b[t * gate_stride], a[t * gate_stride]), state
 * S [dk][dv] updated in place, o_t written to o + t * o_stride (before the
 * gated norm). Gates as the recurrence computes them: beta = sigmoid(b),
 * log decay g = -A * softplus(a + dt_bias). */
struct fast_gdn_seq {
    const float *q, *k, *v;
    int64_t      in_stride;
    const float *b, *a;
    int64_t      gate_stride;
    float        A, dt_bias;             /* A = exp(A_log)                   */
    float       *o;
    int64_t      o_stride;
    int32_t      n, dk, dv;
};

/* Floats of scratch fast_gdn_chunked needs (64-byte aligned). */
size_t fast_gdn_chunked_scratch(int32_t dk, int32_t dv);

/* The chunked form (kn->gdn_gemm, kn->gdn_solve). The caller sets the
 * floating-point mode (gdn_job flushes denormals). */
void fast_gdn_chunked(const struct fast_kernels *kn, float *S, const struct fast_gdn_seq *s,
                      float *scratch);

#endif
