/* SPDX-License-Identifier: Apache-2.0 */
/*
 * AVX2 + FMA + F16C versions of the row kernels in fast-elem-avx512.c:
 * same contracts, same operations in the same order (see there), so the
 * two levels give the same bits. Tails use vmaskmov loads and stores
 * rather than scalar code where a scalar tail would round differently.
 */
#include "kernels/cpu/fast-kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T256 __attribute__((target("avx2,fma,f16c")))

/* keep a rounded product from being fused into a following add */
#define OPAQUE(v) __asm__("" : "+x"(v))

/* lanes [0, left) of 8 set (left >= 8: all) */
T256 static inline __m256i tail_mask8(int64_t left)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : (int32_t)left), idx);
}

T256 void fast_cvt_row_avx2(float *out, const void *src, enum kb_wtype type, int64_t count)
{
    if (type == KB_WTYPE_F32) {
        memcpy(out, src, (size_t)count * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
        __m256 f = type == KB_WTYPE_BF16
                       ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
                       : _mm256_cvtph_ps(v);
        _mm256_storeu_ps(out + i, f);
    }
    for (; i < count; i++)
        out[i] = type == KB_WTYPE_BF16 ? kb_bf16_to_f32(h[i]) : kb_f16_to_f32(h[i]);
}

T256 void fast_rmsnorm_row_avx2(float *y, const float *x, const float *w, int32_t dim, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    __m256d s2 = _mm256_setzero_pd(), s3 = _mm256_setzero_pd();
    int32_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        __m256d a0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
        __m256d a1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        __m256d a2 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 8));
        __m256d a3 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 12));
        s0 = _mm256_fmadd_pd(a0, a0, s0);
        s1 = _mm256_fmadd_pd(a1, a1, s1);
        s2 = _mm256_fmadd_pd(a2, a2, s2);
        s3 = _mm256_fmadd_pd(a3, a3, s3);
    }
    for (; i < dim; i += 8) {
        __m256 a = _mm256_maskload_ps(x + i, tail_mask8(dim - i));
        __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a));
        __m256d a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
        s0 = _mm256_fmadd_pd(a0, a0, s0);
        s1 = _mm256_fmadd_pd(a1, a1, s1);
    }
    __m256d s = _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    double ss = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sqrt(ss / dim + (double)eps)));
    for (i = 0; i < dim; i += 8) {
        __m256i m = tail_mask8(dim - i);
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + i, m), inv);
        _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(v, _mm256_maskload_ps(w + i, m)));
    }
}

T256 void fast_rope_head_avx2(float *x, const float *cs, const float *sn, int32_t half)
{
    for (int32_t i = 0; i < half; i += 8) {
        __m256i m = tail_mask8(half - i);
        __m256 a = _mm256_maskload_ps(x + i, m), b = _mm256_maskload_ps(x + half + i, m);
        __m256 c = _mm256_maskload_ps(cs + i, m), s = _mm256_maskload_ps(sn + i, m);
        __m256 ac = _mm256_mul_ps(a, c), bs = _mm256_mul_ps(b, s);
        __m256 bc = _mm256_mul_ps(b, c), as = _mm256_mul_ps(a, s);
        OPAQUE(ac);
        OPAQUE(bs);
        OPAQUE(bc);
        OPAQUE(as);
        _mm256_maskstore_ps(x + i, m, _mm256_sub_ps(ac, bs));
        _mm256_maskstore_ps(x + half + i, m, _mm256_add_ps(bc, as));
    }
}

T256 void fast_add_avx2(float *y, const float *a, const float *b, int64_t count)
{
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256 s0 = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 s1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        _mm256_storeu_ps(y + i, s0);
        _mm256_storeu_ps(y + i + 8, s1);
    }
    for (; i < count; i++)
        y[i] = a[i] + b[i];
}

/* exp(x) in double as in fast-elem-avx512.c (same reduction and
 * polynomial); 2^k is built in the exponent field (k in [-159, 130]). */
T256 static inline __m256d exp_f64(__m256d x)
{
    x = _mm256_max_pd(_mm256_min_pd(x, _mm256_set1_pd(90.0)), _mm256_set1_pd(-110.0));
    __m256d k = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(6.93147180369123816490e-01), x);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(1.90821492927058770002e-10), r);
    static const double c[12] = { 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                  1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5,
                                  1.0, 1.0 };
    __m256d p = _mm256_set1_pd(c[0]);
    for (int i = 1; i < 12; i++)
        p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c[i]));
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(k)),
                                                   _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(e));
}

T256 void fast_mul_sigmoid_avx2(float *y, const float *x, const float *g, int64_t count)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < count; i += 8) {
        __m256i m = tail_mask8(count - i);
        __m256 ng = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_maskload_ps(g + i, m));
        __m128 e0 = _mm256_cvtpd_ps(exp_f64(_mm256_cvtps_pd(_mm256_castps256_ps128(ng))));
        __m128 e1 = _mm256_cvtpd_ps(exp_f64(_mm256_cvtps_pd(_mm256_extractf128_ps(ng, 1))));
        __m256 e = _mm256_insertf128_ps(_mm256_castps128_ps256(e0), e1, 1);
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, e));
        _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), s));
    }
}
