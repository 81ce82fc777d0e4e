/* SPDX-License-Identifier: Apache-2.0 */
/*
 * AVX2 + FMA versions of fast-gdn-avx512.c (same contracts, same order of
 * the sums per element, so the same results up to FMA contraction, which
 * both use everywhere). 16 ymm registers: the GEMM tile is 4 rows x 24
 * columns (12 accumulators, 3 Y vectors, 1 broadcast). Only called after
 * fast.c's CPUID check.
 */
#include "kernels/cpu/fast-gdn.h"

#include <immintrin.h>

#define T256 __attribute__((target("avx2,fma")))
#define T256_INLINE T256 __attribute__((always_inline)) static inline

/* MT rows x NR vectors of 8 columns; MT and NR are constants at every
 * call site, so the accumulators live in registers. */
T256_INLINE void gemm_tile(const int MT, const int NR, const float *X, int64_t xr, int64_t xi,
                           const float *Y, int64_t ldy, float *Z, int64_t ldz, int32_t kd,
                           bool acc_in, const float *zs)
{
    __m256 acc[4][3];
#pragma GCC unroll 8
    for (int r = 0; r < MT; r++)
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            acc[r][j] = !acc_in ? _mm256_setzero_ps() : _mm256_loadu_ps(Z + r * ldz + 8 * j);
    if (acc_in && zs) {
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) {
            const __m256 sc = _mm256_set1_ps(zs[r]);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm256_mul_ps(sc, acc[r][j]);
        }
    }
    for (int32_t i = 0; i < kd; i++) {
        __m256 y[3];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            y[j] = _mm256_loadu_ps(Y + i * ldy + 8 * j);
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) {
            const __m256 x = _mm256_set1_ps(X[r * xr + i * xi]);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm256_fmadd_ps(x, y[j], acc[r][j]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MT; r++)
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            _mm256_storeu_ps(Z + r * ldz + 8 * j, acc[r][j]);
}

#define GEMM_NR(MT)                                                                    \
    switch (nr) {                                                                      \
    case 3: gemm_tile(MT, 3, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;         \
    case 2: gemm_tile(MT, 2, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;         \
    default: gemm_tile(MT, 1, x, xr, xi, y, ldy, z, ldz, klim, acc, zr); break;        \
    }

T256 void fast_gdn_gemm_avx2(const float *X, int64_t ldx, const float *Y, int64_t ldy, float *Z,
                             int64_t ldz, int32_t m, int32_t n, int32_t kd, int flags,
                             const float *zs)
{
    const bool acc = flags & FAST_GDN_ACC;
    const int64_t xr = flags & FAST_GDN_XT ? 1 : ldx, xi = flags & FAST_GDN_XT ? ldx : 1;
    for (int32_t n0 = 0; n0 < n; n0 += 24) {
        for (int32_t m0 = 0; m0 < m; m0 += 4) {
            const int mt = m - m0 >= 4 ? 4 : m - m0;
            int32_t nlim = n;
            if (flags & FAST_GDN_TRI_N) {
                nlim = (m0 + mt + 7) & ~7;
                if (nlim > n)
                    nlim = n;
            }
            if (n0 >= nlim)
                continue;
            const int nr = nlim - n0 >= 24 ? 3 : (nlim - n0) / 8;
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

/* Rows in order; NR vectors of 8 columns of R stay in registers while
 * the earlier rows' columns stream past from L1 (one broadcast of L[s][i]
 * per NR FMAs). */
T256_INLINE void solve_panel(const int NR, const float *L, int64_t ldl, float *R, int64_t ldr,
                             int32_t m)
{
    for (int32_t s = 0; s < m; s++) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            acc[j] = _mm256_loadu_ps(R + s * ldr + 8 * j);
        for (int32_t i = 0; i < s; i++) {
            const __m256 l = _mm256_set1_ps(L[s * ldl + i]);
#pragma GCC unroll 8
            for (int j = 0; j < NR; j++)
                acc[j] = _mm256_fnmadd_ps(l, _mm256_loadu_ps(R + i * ldr + 8 * j), acc[j]);
        }
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++)
            _mm256_storeu_ps(R + s * ldr + 8 * j, acc[j]);
    }
}

T256 void fast_gdn_solve_avx2(const float *L, int64_t ldl, float *R, int64_t ldr, int32_t m,
                              int32_t n)
{
    for (int32_t c0 = 0; c0 < n;) {
        const int32_t left = n - c0;
        if (left >= 64) {
            solve_panel(8, L, ldl, R + c0, ldr, m);
            c0 += 64;
        } else if (left >= 32) {
            solve_panel(4, L, ldl, R + c0, ldr, m);
            c0 += 32;
        } else if (left >= 16) {
            solve_panel(2, L, ldl, R + c0, ldr, m);
            c0 += 16;
        } else {
            solve_panel(1, L, ldl, R + c0, ldr, m);
            c0 += 8;
        }
    }
}

T256 void fast_gdn_axpby_avx2(float *d, float a, const float *x, float b, const float *y,
                              int32_t n)
{
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (int32_t i = 0; i < n; i += 8) {
        const __m256 by = _mm256_mul_ps(vb, _mm256_loadu_ps(y + i));
        _mm256_storeu_ps(d + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), by));
    }
}
