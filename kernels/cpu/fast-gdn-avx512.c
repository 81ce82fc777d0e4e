/* SPDX-License-Identifier: Apache-2.0 */
/*
 * AVX-512 products of the chunked Gated DeltaNet (fast-gdn.c): a small
 * fp32 GEMM, a forward substitution and an axpby, over one head's chunk
 * (at most 2 x FAST_GDN_CHUNK rows by dk or dv columns, in L1/L2).
 * Register tile: 4 rows x 64 columns (16 accumulators); the 64-column
 * panel of Y is the outer loop, so it stays in L1 while the row tiles pass
 * over it. The tile loops carry `#pragma GCC unroll`: GCC 12 at -O2 kept
 * the accumulator array on the stack without it (a load and a store per
 * FMA; the chunked form was then slower than the recurrence). Target
 * attributes as in fast-avx512.c: only called after fast.c's CPUID check.
 */
#include "kernels/cpu/fast-gdn.h"

#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma")))
#define T512_INLINE T512 __attribute__((always_inline)) static inline

/* MT rows x NR vectors of 16 columns; MT and NR are constants at every
 * call site, so the accumulators live in registers. */
T512_INLINE void gemm_tile(const int MT, const int NR, const float *X, int64_t xr, int64_t xi,
                           const float *Y, int64_t ldy, float *Z, int64_t ldz, int32_t kd,
                           bool acc_in, const float *zs)
{
    __m512 acc[4][4];
#pragma GCC unroll 8
    for (int r = 0; r < MT; r++)
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            acc[r][j] = !acc_in ? _mm512_setzero_ps() : _mm512_loadu_ps(Z + r * ldz + 16 * j);
    if (acc_in && zs) {
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) {
            const __m512 sc = _mm512_set1_ps(zs[r]);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm512_mul_ps(sc, acc[r][j]);
        }
    }
    for (int32_t i = 0; i < kd; i++) {
        __m512 y[4];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            y[j] = _mm512_loadu_ps(Y + i * ldy + 16 * j);
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) {
            const __m512 x = _mm512_set1_ps(X[r * xr + i * xi]);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm512_fmadd_ps(x, y[j], acc[r][j]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MT; r++)
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            _mm512_storeu_ps(Z + r * ldz + 16 * j, acc[r][j]);
}

#define GEMM_NR(MT)                                                                    \
    switch (nr) {                                                                      \
    case 4: gemm_tile(MT, 4, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;         \
    case 3: gemm_tile(MT, 3, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;         \
    case 2: gemm_tile(MT, 2, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;         \
    default: gemm_tile(MT, 1, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;        \
    }

T512 void fast_gdn_gemm_avx512(const float *X, int64_t ldx, const float *Y, int64_t ldy, float *Z,
                               int64_t ldz, int32_t m, int32_t n, int32_t kd, int flags,
                               const float *zs)
{
    const bool acc = flags & FAST_GDN_ACC;
    const int64_t xr = flags & FAST_GDN_XT ? 1 : ldx, xi = flags & FAST_GDN_XT ? ldx : 1;
    for (int32_t n0 = 0; n0 < n; n0 += 64) {
        for (int32_t m0 = 0; m0 < m; m0 += 4) {
            const int mt = m - m0 >= 4 ? 4 : m - m0;
            int32_t nlim = n;
            if (flags & FAST_GDN_TRI_N) {
                nlim = (m0 + mt + 15) & ~15;
                if (nlim > n)
                    nlim = n;
            }
            if (n0 >= nlim)
                continue;
            const int nr = nlim - n0 >= 64 ? 4 : (nlim - n0) / 16;
            const int32_t klim = (flags & FAST_GDN_TRI_K) && m0 + mt < kd ? m0 + mt : kd;
            const float *x = X + m0 * xr, *y = Y + n0;
            float *z = Z + m0 * ldz + n0;
            const float *zr = zs ? zs + m0 : NULL;
            switch (mt) {
            case 4: GEMM_NR(4); break;
            case 3: GEMM_NR(3); break;
            case 2: GEMM_NR(2); break;
            default: GEMM_NR(1); break;
            }
        }
    }
}

/* Rows in order; NR vectors of 16 columns of R stay in registers while
 * the earlier rows' columns stream past from L1 (one broadcast of L[s][i]
 * per NR FMAs). */
T512_INLINE void solve_panel(const int NR, const float *L, int64_t ldl, float *R, int64_t ldr,
                             int32_t m)
{
    for (int32_t s = 0; s < m; s++) {
        __m512 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            acc[j] = _mm512_loadu_ps(R + s * ldr + 16 * j);
        for (int32_t i = 0; i < s; i++) {
            const __m512 l = _mm512_set1_ps(L[s * ldl + i]);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++)
                acc[j] = _mm512_fnmadd_ps(l, _mm512_loadu_ps(R + i * ldr + 16 * j), acc[j]);
        }
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            _mm512_storeu_ps(R + s * ldr + 16 * j, acc[j]);
    }
}

T512 void fast_gdn_solve_avx512(const float *L, int64_t ldl, float *R, int64_t ldr, int32_t m,
                                int32_t n)
{
    for (int32_t c0 = 0; c0 < n;) {
        const int32_t left = n - c0;
        if (left >= 128) {
            solve_panel(8, L, ldl, R + c0, ldr, m);
            c0 += 128;
        } else if (left >= 64) {
            solve_panel(4, L, ldl, R + c0, ldr, m);
            c0 += 64;
        } else if (left >= 32) {
            solve_panel(2, L, ldl, R + c0, ldr, m);
            c0 += 32;
        } else {
            solve_panel(1, L, ldl, R + c0, ldr, m);
            c0 += 16;
        }
    }
}

T512 void fast_gdn_axpby_avx512(float *d, float a, const float *x, float b, const float *y,
                                int32_t n)
{
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (int32_t i = 0; i < n; i += 16) {
        const __m512 by = _mm512_mul_ps(vb, _mm512_loadu_ps(y + i));
        _mm512_storeu_ps(d + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), by));
    }
}
