/* SPDX-License-Identifier: Apache-2.0 */
/*
 * AVX-512 row kernels for the fast backend's norms, RoPE and elementwise
 * ops (fast-elem.c splits the rows and threads). Numerics follow the
 * reference backend (ref.c) operation for operation, so that every op but
 * the sigmoid gate gives the reference's bits:
 * - dense rows (embedding rows, norm weights) are converted exactly
 *   (bf16: a shift; f16: vcvtph2ps);
 * - RMSNorm sums x^2 in double like the reference (a float's square is
 *   exact in double, so only the order of the additions differs: a few
 *   ulp of a double, which reaches the float 1/rms only when it sits on a
 *   rounding boundary), then y = (x * inv) * w in float;
 * - RoPE forms a*c - b*s and b*c + a*s from rounded products: the
 *   products pass through an empty asm so the compiler cannot contract
 *   them into an FMA (the reference, built for baseline x86-64, has none);
 * - add is exact;
 * - the sigmoid gate, 1 / (1 + expf(-g)) in float as in the reference,
 *   takes expf(-g) from a double exp (Cody-Waite reduction, degree-11
 *   Taylor polynomial, relative error ~1e-15) rounded to float: that is
 *   expf's correctly rounded value, which glibc's expf (< 0.502 ulp) also
 *   returns in all but rare cases, so the gate matches the reference to
 *   the bit or, rarely, 1 ulp of the exp. The float polynomial of the
 *   SwiGLU (exp512 in fast-avx512.c) rounds its argument x log2(e) in
 *   float and is 20 ulp off near |x| = 80; for 16 elements per vector the
 *   double exp costs two 8-lane polynomials, still a small share of an op
 *   that streams three arrays.
 */
#include "kernels/cpu/fast-kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma")))

/* keep a rounded product from being fused into a following add */
#define OPAQUE(v) __asm__("" : "+v"(v))

static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

T512 void fast_cvt_row_avx512(float *out, const void *src, enum kb_wtype type, int64_t count)
{
    if (type == KB_WTYPE_F32) {
        memcpy(out, src, (size_t)count * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    for (int64_t i = 0; i < count; i += 16) {
        __mmask16 m = tail_mask(count - i);
        __m256i v = _mm256_maskz_loadu_epi16(m, h + i);
        __m512 f = type == KB_WTYPE_BF16
                       ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
                       : _mm512_cvtph_ps(v);
        _mm512_mask_storeu_ps(out + i, m, f);
    }
}

T512 void fast_rmsnorm_row_avx512(float *y, const float *x, const float *w, int32_t dim,
                                  float eps)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    __m512d s2 = _mm512_setzero_pd(), s3 = _mm512_setzero_pd();
    int32_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512d a0 = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
        __m512d a1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
        __m512d b0 = _mm512_cvtps_pd(_mm512_castps512_ps256(b));
        __m512d b1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)));
        s0 = _mm512_fmadd_pd(a0, a0, s0);
        s1 = _mm512_fmadd_pd(a1, a1, s1);
        s2 = _mm512_fmadd_pd(b0, b0, s2);
        s3 = _mm512_fmadd_pd(b1, b1, s3);
    }
    for (; i < dim; i += 16) {
        __m512 a = _mm512_maskz_loadu_ps(tail_mask(dim - i), x + i);
        __m512d a0 = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
        __m512d a1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
        s0 = _mm512_fmadd_pd(a0, a0, s0);
        s1 = _mm512_fmadd_pd(a1, a1, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sqrt(ss / dim + (double)eps)));
    for (i = 0; i < dim; i += 16) {
        __mmask16 m = tail_mask(dim - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i)));
    }
}

T512 void fast_rope_head_avx512(float *x, const float *cs, const float *sn, int32_t half)
{
    for (int32_t i = 0; i < half; i += 16) {
        __mmask16 m = tail_mask(half - i);
        __m512 a = _mm512_maskz_loadu_ps(m, x + i), b = _mm512_maskz_loadu_ps(m, x + half + i);
        __m512 c = _mm512_maskz_loadu_ps(m, cs + i), s = _mm512_maskz_loadu_ps(m, sn + i);
        __m512 ac = _mm512_mul_ps(a, c), bs = _mm512_mul_ps(b, s);
        __m512 bc = _mm512_mul_ps(b, c), as = _mm512_mul_ps(a, s);
        OPAQUE(ac);
        OPAQUE(bs);
        OPAQUE(bc);
        OPAQUE(as);
        _mm512_mask_storeu_ps(x + i, m, _mm512_sub_ps(ac, bs));
        _mm512_mask_storeu_ps(x + half + i, m, _mm512_add_ps(bc, as));
    }
}

T512 void fast_add_avx512(float *y, const float *a, const float *b, int64_t count)
{
    int64_t i = 0;
    for (; i + 32 <= count; i += 32) {
        __m512 s0 = _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 s1 = _mm512_add_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        _mm512_storeu_ps(y + i, s0);
        _mm512_storeu_ps(y + i + 16, s1);
    }
    for (; i < count; i += 16) {
        __mmask16 m = tail_mask(count - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i),
                                                      _mm512_maskz_loadu_ps(m, b + i)));
    }
}

/* exp(x) in double for x in [-110, 90] (clamped: beyond it expf is 0 or
 * Inf once rounded to float): x = k ln2 + r, |r| <= ln2 / 2, exp(r) by its
 * Taylor series to r^11 (truncation < 1e-14 relative), times 2^k. */
T512 static inline __m512d exp_f64(__m512d x)
{
    x = _mm512_max_pd(_mm512_min_pd(x, _mm512_set1_pd(90.0)), _mm512_set1_pd(-110.0));
    __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(6.93147180369123816490e-01), x);
    r = _mm512_fnmadd_pd(k, _mm512_set1_pd(1.90821492927058770002e-10), r);
    static const double c[12] = { 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                  1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5,
                                  1.0, 1.0 };
    __m512d p = _mm512_set1_pd(c[0]);
    for (int i = 1; i < 12; i++)
        p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c[i]));
    return _mm512_scalef_pd(p, k);
}

T512 void fast_mul_sigmoid_avx512(float *y, const float *x, const float *g, int64_t count)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < count; i += 16) {
        __mmask16 m = tail_mask(count - i);
        __m512 ng = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_maskz_loadu_ps(m, g + i));
        __m256 e0 = _mm512_cvtpd_ps(exp_f64(_mm512_cvtps_pd(_mm512_castps512_ps256(ng))));
        __m256 e1 = _mm512_cvtpd_ps(exp_f64(_mm512_cvtps_pd(
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ng), 1)))));
        __m512 e = _mm512_insertf32x8(_mm512_castps256_ps512(e0), e1, 1);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    }
}
