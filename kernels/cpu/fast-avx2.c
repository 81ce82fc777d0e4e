/* SPDX-License-Identifier: Apache-2.0 */
/*
 * AVX2 + FMA (+ F16C) kernels of the fast CPU backend, for x86-64 CPUs
 * without AVX-512 VNNI (Haswell .. Alder Lake, Zen 1-3). Same contracts and
 * the same numerics as fast-avx512.c; every function carries the target
 * attribute, so the file is built with the project's baseline flags and
 * only called after the CPUID check in fast.c.
 *
 * The int8 path has no vpdpbusd here. Its replacement, vpmaddubsw
 * (u8 x s8 pairs summed to saturating int16) followed by vpmaddwd with
 * ones (int16 pairs to int32), gives the same int32 lane sums as vpdpbusd
 * because no int16 saturates for the operands used (fast-avx2-q4q8.h, the
 * W4 x int8 kernel, which CPUs with AVX-VNNI run as the avx2-vnni level
 * with the real vpdpbusd on ymm, fast-avx2-vnni.c). The integer sums are
 * therefore bit-identical to the AVX-512 path; only the order of the
 * final fp32 reductions differs (8 lanes, not 16).
 *
 * Lane layout: a 64-byte chunk of packed weights (4 groups of one row) is
 * two 32-byte halves of 2 groups each; a 32-byte register's 128-bit lanes
 * are one group each, which is what vpshufb's per-lane table lookup of
 * the bf16 rounding correction needs. The q8 row format is the AVX-512
 * one (fast-kernels.h): its per-lane float arrays d / c / e of 16 floats
 * split into the same two halves of 8.
 */
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/ref.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T256 __attribute__((target("avx2,fma,f16c")))
#define T256_INLINE T256 __attribute__((always_inline)) static inline

T256_INLINE float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256_INLINE __m256i mask8(int64_t rem)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem >= 8 ? 8 : (int)rem), idx);
}

/* ------------------------------------------------------------------ */
/* Activation conversion                                                */

/* Same rounding as the AVX-512 quantiser (round to nearest even via the
 * default MXCSR mode, r saturated at 127), so both paths build the same
 * q8 bytes from the same input. */
T256 void fast_q8_quantize_avx2(const float *x, int64_t cols, uint8_t *out)
{
    const int64_t nch = (cols + FAST_Q8_CHUNK_COLS - 1) / FAST_Q8_CHUNK_COLS;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 k256 = _mm256_set1_ps(256.0f);
    for (int64_t k = 0; k < nch; k++) {
        uint8_t *c = out + k * FAST_Q8_CHUNK_BYTES;
        float d[4], cs[4], es[4];
        for (int g = 0; g < 4; g++) {
            int64_t c0 = k * FAST_Q8_CHUNK_COLS + g * 32;
            int64_t rem = cols - c0;
            if (rem <= 0) {
                for (int pl = 0; pl < 4; pl++)
                    memset(c + 64 * pl + 16 * g, 0, 16);
                d[g] = cs[g] = es[g] = 0.0f;
                continue;
            }
            __m256 v[4];
            __m256 mx = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                int64_t rj = rem - 8 * j;
                v[j] = rj >= 8 ? _mm256_loadu_ps(x + c0 + 8 * j)
                     : rj <= 0 ? _mm256_setzero_ps()
                     : _mm256_maskload_ps(x + c0 + 8 * j, mask8(rj));
                mx = _mm256_max_ps(mx, _mm256_and_ps(v[j], absmask));
            }
            /* Inf or NaN: no int8 image, NaN scales (see fast-avx512.c) */
            __m256 bad = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++)
                bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(v[j], absmask), _mm256_set1_ps(INFINITY),
                                                      _CMP_NLT_UQ));
            if (_mm256_movemask_ps(bad)) {
                for (int pl = 0; pl < 4; pl++)
                    memset(c + 64 * pl + 16 * g, 0, 16);
                d[g] = cs[g] = es[g] = NAN;
                continue;
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            float amax = _mm_cvtss_f32(m4);
            float dg = amax / 127.0f;
            float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            const __m256 vid = _mm256_set1_ps(id);
            int32_t q[32], r[32];
            __m256i qsum = _mm256_setzero_si256(), tsum = _mm256_setzero_si256();
            for (int j = 0; j < 4; j++) {
                __m256 s = _mm256_mul_ps(v[j], vid);
                __m256i qi = _mm256_cvtps_epi32(s);
                __m256i ri = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(s, _mm256_cvtepi32_ps(qi)), k256));
                ri = _mm256_min_epi32(ri, _mm256_set1_epi32(127));
                _mm256_storeu_si256((__m256i *)(q + 8 * j), qi);
                _mm256_storeu_si256((__m256i *)(r + 8 * j), ri);
                qsum = _mm256_add_epi32(qsum, qi);
                tsum = _mm256_add_epi32(tsum, _mm256_add_epi32(_mm256_slli_epi32(qi, 8), ri));
            }
            for (int b = 0; b < 16; b++) {
                c[16 * g + b] = (uint8_t)(int8_t)q[2 * b];
                c[64 + 16 * g + b] = (uint8_t)(int8_t)q[2 * b + 1];
                c[128 + 16 * g + b] = (uint8_t)(int8_t)r[2 * b];
                c[192 + 16 * g + b] = (uint8_t)(int8_t)r[2 * b + 1];
            }
            int32_t qa[8], ta[8], qs = 0, qe = 0;
            _mm256_storeu_si256((__m256i *)qa, qsum);
            _mm256_storeu_si256((__m256i *)ta, tsum);
            for (int j = 0; j < 8; j++) {
                qe += qa[j];
                qs += ta[j];
            }
            es[g] = (float)qe;
            d[g] = dg / 256.0f;
            cs[g] = 2.0f * d[g] * (float)qs;
        }
        float *dl = (float *)(c + 256), *cl = (float *)(c + 320), *el = (float *)(c + 384);
        for (int j = 0; j < 16; j++) {
            dl[j] = d[j / 4];
            cl[j] = cs[j / 4];
            el[j] = es[j / 4];
        }
    }
}

/* ------------------------------------------------------------------ */
/* W4 x int8: fast-avx2-q4q8.h, shared with the avx2-vnni level        */

#define Q4Q8_TARGET "avx2,fma,f16c"
#define Q4Q8_NAME   fast_q4_q8_avx2
#define Q4Q8_VNNI   0
#include "kernels/cpu/fast-avx2-q4q8.h"

/* ------------------------------------------------------------------ */
/* fp32 dot products                                                    */

T256_INLINE __m256 load_dense8(enum kb_wtype type, const void *row, int64_t c, int64_t rem)
{
    if (rem >= 8) {
        switch (type) {
        case KB_WTYPE_BF16:
            return _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c))), 16));
        case KB_WTYPE_F16:
            return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
        default:
            return _mm256_loadu_ps((const float *)row + c);
        }
    }
    /* tail: through a zeroed buffer, never past the row */
    float t[8] = { 0 };
    for (int64_t i = 0; i < rem; i++) {
        switch (type) {
        case KB_WTYPE_BF16: t[i] = kb_bf16_to_f32(((const uint16_t *)row)[c + i]); break;
        case KB_WTYPE_F16: t[i] = kb_f16_to_f32(((const uint16_t *)row)[c + i]); break;
        default: t[i] = ((const float *)row)[c + i]; break;
        }
    }
    return _mm256_loadu_ps(t);
}

T256_INLINE __m256 load_x8(const float *x, int64_t c, int64_t rem)
{
    return rem >= 8 ? _mm256_loadu_ps(x + c) : _mm256_maskload_ps(x + c, mask8(rem));
}

T256_INLINE void dot_tile(enum kb_wtype type, const void *row, int64_t cols,
                          const float *const x[4], const int nt, float out[4])
{
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                      _mm256_setzero_ps() };
    for (int64_t c = 0; c < cols; c += 8) {
        const int64_t rem = cols - c;
        __m256 wv = load_dense8(type, row, c, rem);
        for (int i = 0; i < nt; i++)
            acc[i] = _mm256_fmadd_ps(wv, load_x8(x[i], c, rem), acc[i]);
    }
    for (int i = 0; i < nt; i++)
        out[i] = hsum256(acc[i]);
}

T256_INLINE void dot_rows(enum kb_wtype type, const void *row, int64_t cols, int64_t r,
                          const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                          float *y, int64_t y_stride)
{
    for (int32_t t0 = 0; t0 < n; t0 += 4) {
        const int nt = n - t0 >= 4 ? 4 : n - t0;
        const float *xs[4];
        for (int i = 0; i < 4; i++) {
            int32_t ti = t0 + (i < nt ? i : 0);
            xs[i] = x + (int64_t)(tok ? tok[ti] : ti) * x_stride;
        }
        float o[4];
        switch (nt) {
        case 1: dot_tile(type, row, cols, xs, 1, o); break;
        case 2: dot_tile(type, row, cols, xs, 2, o); break;
        case 3: dot_tile(type, row, cols, xs, 3, o); break;
        default: dot_tile(type, row, cols, xs, 4, o); break;
        }
        for (int i = 0; i < nt; i++)
            y[(int64_t)(t0 + i) * y_stride + r] = o[i];
    }
}

/* bf16(v) for finite v, round to nearest even (kb_f32_to_bf16). */
T256_INLINE __m256 round_bf16(__m256 v)
{
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)));
}

T256 void fast_q4_f32_avx2(const struct kb_weight *w, int64_t r0, int64_t r1,
                           const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                           float *y, int64_t y_stride, float *rowbuf)
{
    const int64_t cols = w->cols, ng = cols / KB_Q4_GROUP;
    const bool simple = !w->g_idx && w->scale_type == KB_WTYPE_BF16;
    const __m256i m4 = _mm256_set1_epi32(0x0f), k8 = _mm256_set1_epi32(8);
    for (int64_t r = r0; r < r1; r++) {
        if (simple) {
            const uint8_t *wr = (const uint8_t *)w->data + r * (cols / 2);
            const uint16_t *sr = (const uint16_t *)w->scales + r * ng;
            for (int64_t g = 0; g < ng; g++) {
                /* bf16(q * s), the reference's formula, computed per value */
                const __m256 s = _mm256_set1_ps(kb_bf16_to_f32(sr[g]));
                for (int hb = 0; hb < 2; hb++) {
                    __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wr + 16 * g + 8 * hb)));
                    __m256 vl = round_bf16(_mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(e, m4), k8)), s));
                    __m256 vh = round_bf16(_mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(e, 4), k8)), s));
                    /* interleave: byte b holds columns 2b (low) and 2b+1 */
                    __m256 a = _mm256_unpacklo_ps(vl, vh), b = _mm256_unpackhi_ps(vl, vh);
                    float *o = rowbuf + 32 * g + 16 * hb;
                    _mm256_storeu_ps(o, _mm256_permute2f128_ps(a, b, 0x20));
                    _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(a, b, 0x31));
                }
            }
        } else {
            kb_ref_weight_row(w, r, rowbuf);
        }
        dot_rows(KB_WTYPE_F32, rowbuf, cols, r, x, x_stride, tok, n, y, y_stride);
    }
}

/* bf16 rows against x split into even and odd columns, 4 rows at a time
 * with the tokens inside each block: the same arithmetic for every (row,
 * token) whatever the batch or thread split (see fast-avx512.c for why).
 * Needs cols % 16 == 0. */
T256_INLINE void dense_bf16_split(const float *x, int64_t cols, float *xs)
{
    const int64_t half = cols / 2;
    for (int64_t c = 0; c < half; c++) {
        xs[c] = x[2 * c];
        xs[half + c] = x[2 * c + 1];
    }
}

T256_INLINE void dense_bf16_block(const uint16_t *w0, int64_t cols, int nr, const float *xs, float *y)
{
    const int64_t half = cols / 2;
    const float *xe = xs, *xo = xs + half;
    const __m256i hm = _mm256_set1_epi32((int)0xffff0000u);
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++)
        a[i] = b[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
        const __m256 e = _mm256_loadu_ps(xe + c / 2), o = _mm256_loadu_ps(xo + c / 2);
        for (int i = 0; i < nr; i++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(w0 + i * cols + c));
            a[i] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), e, a[i]);
            b[i] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, hm)), o, b[i]);
        }
    }
    for (int i = 0; i < nr; i++)
        y[i] = hsum256(_mm256_add_ps(a[i], b[i]));
}

/* xs: FAST_DENSE_XTOK * cols floats of scratch; tokens go FAST_DENSE_XTOK
 * at a time (the block's weights are re-read once per group, from cache for
 * small matrices). */
T256 static void dense_bf16_rows(const struct kb_weight *w, int64_t r0, int64_t r1, const float *x,
                                 int64_t x_stride, const int32_t *tok, int32_t n, float *xs, float *y,
                                 int64_t y_stride)
{
    const int64_t cols = w->cols;
    for (int32_t t0 = 0; t0 < n; t0 += FAST_DENSE_XTOK) {
        const int32_t nt = n - t0 < FAST_DENSE_XTOK ? n - t0 : FAST_DENSE_XTOK;
        for (int32_t t = 0; t < nt; t++)
            dense_bf16_split(x + (int64_t)(tok ? tok[t0 + t] : t0 + t) * x_stride, cols, xs + (int64_t)t * cols);
        for (int64_t r = r0; r < r1; r += 4) {
            const int nr = r1 - r >= 4 ? 4 : (int)(r1 - r);
            const uint16_t *w0 = (const uint16_t *)w->data + r * cols;
            for (int32_t t = 0; t < nt; t++) {
                float o[4];
                switch (nr) {       /* constant trip counts for the unrolled block */
                case 1: dense_bf16_block(w0, cols, 1, xs + (int64_t)t * cols, o); break;
                case 2: dense_bf16_block(w0, cols, 2, xs + (int64_t)t * cols, o); break;
                case 3: dense_bf16_block(w0, cols, 3, xs + (int64_t)t * cols, o); break;
                default: dense_bf16_block(w0, cols, 4, xs + (int64_t)t * cols, o); break;
                }
                for (int i = 0; i < nr; i++)
                    y[(int64_t)(t0 + t) * y_stride + r + i] = o[i];
            }
        }
    }
}

T256 void fast_dense_f32_avx2(const struct kb_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                              float *y, int64_t y_stride, float *xbuf)
{
    const size_t esz = w->type == KB_WTYPE_F32 ? 4 : 2;
    if (xbuf && w->type == KB_WTYPE_BF16 && w->cols % 16 == 0) {
        dense_bf16_rows(w, r0, r1, x, x_stride, tok, n, xbuf, y, y_stride);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const void *row = (const uint8_t *)w->data + (size_t)(r * w->cols) * esz;
        dot_rows(w->type, row, w->cols, r, x, x_stride, tok, n, y, y_stride);
    }
}

/* ------------------------------------------------------------------ */
/* Elementwise                                                          */

/* exp(x) as in fast-avx512.c (same polynomial); 2^k is built in the
 * exponent field, k in [-126, 127] after the clamp. */
T256_INLINE __m256 exp256(__m256 x)
{
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(t, k);
    __m256 p = _mm256_set1_ps(1.5353362e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3398874e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

T256 void fast_swiglu_avx2(float *y, const float *g, const float *u, int64_t count)
{
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        __m256 s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < count; i++)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

T256 void fast_gdn_head_avx2(float *S, const float *q, const float *k, const float *v,
                             float beta, float decay, int32_t dk, int32_t dv, float *o)
{
    const __m256 vdec = _mm256_set1_ps(decay), vbeta = _mm256_set1_ps(beta);
    /* 32 columns of the state at a time: 4 registers of m, then of o */
    for (int32_t c0 = 0; c0 < dv; c0 += 32) {
        const int nr = dv - c0 >= 32 ? 4 : (dv - c0) / 8;
        __m256 m[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                        _mm256_setzero_ps() };
        for (int32_t i = 0; i < dk; i++) {
            float *row = S + (int64_t)i * dv + c0;
            const __m256 ki = _mm256_set1_ps(k[i]);
            for (int j = 0; j < nr; j++) {
                __m256 sv = _mm256_mul_ps(_mm256_loadu_ps(row + 8 * j), vdec);
                _mm256_storeu_ps(row + 8 * j, sv);
                m[j] = _mm256_fmadd_ps(sv, ki, m[j]);
            }
        }
        __m256 dl[4], acc[4];
        for (int j = 0; j < nr; j++) {
            dl[j] = _mm256_mul_ps(vbeta, _mm256_sub_ps(_mm256_loadu_ps(v + c0 + 8 * j), m[j]));
            acc[j] = _mm256_setzero_ps();
        }
        for (int32_t i = 0; i < dk; i++) {
            float *row = S + (int64_t)i * dv + c0;
            const __m256 ki = _mm256_set1_ps(k[i]), qi = _mm256_set1_ps(q[i]);
            for (int j = 0; j < nr; j++) {
                __m256 sv = _mm256_fmadd_ps(ki, dl[j], _mm256_loadu_ps(row + 8 * j));
                _mm256_storeu_ps(row + 8 * j, sv);
                acc[j] = _mm256_fmadd_ps(sv, qi, acc[j]);
            }
        }
        for (int j = 0; j < nr; j++)
            _mm256_storeu_ps(o + c0 + 8 * j, acc[j]);
    }
}

/* ------------------------------------------------------------------ */
/* KV cache elements (see fast-avx512.c)                                */

/* dst[i] = f16(src[i]), round to nearest even (explicit rounding mode). */
T256 void fast_f32_to_f16_avx2(uint16_t *dst, const float *src, int64_t count)
{
    int64_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < count) {
        uint16_t t[8];
        const __m256 x = _mm256_maskload_ps(src + i, mask8(count - i));
        _mm_storeu_si128((__m128i *)t, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
        memcpy(dst + i, t, (size_t)(count - i) * sizeof(uint16_t));
    }
}

/* 8 elements (fewer when rem < 8; the rest zero) of a K or V row from
 * element idx on, as fp32. */
T256_INLINE __m256 kv_load8(const void *base, int64_t idx, int64_t rem, bool f16)
{
    if (!f16)
        return load_x8((const float *)base, idx, rem);
    const uint16_t *h = (const uint16_t *)base + idx;
    if (rem >= 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
    uint16_t t[8] = { 0 };
    memcpy(t, h, (size_t)rem * sizeof(uint16_t));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t));
}

T256_INLINE void attn_row_body(const float *q, const void *kc, const void *vc, int64_t row_stride,
                               int64_t len, int32_t hd, float scale, float *scores, float *out,
                               const bool f16)
{
    float mx = -INFINITY;
    for (int64_t s = 0; s < len; s++) {
        const int64_t k = s * row_stride;
        __m256 acc = _mm256_setzero_ps();
        for (int32_t i = 0; i < hd; i += 8)
            acc = _mm256_fmadd_ps(load_x8(q, i, hd - i), kv_load8(kc, k + i, hd - i, f16), acc);
        float v = hsum256(acc) * scale;
        scores[s] = v;
        if (v > mx)
            mx = v;
    }
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    int64_t s = 0;
    for (; s + 8 <= len; s += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(scores + s), vmx));
        _mm256_storeu_ps(scores + s, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum256(vsum);
    for (; s < len; s++) {
        scores[s] = expf(scores[s] - mx);
        sum += scores[s];
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (int32_t i = 0; i < hd; i += 32) {
        /* 4 registers of output at a time so each V row is read once per
         * 32 dims */
        __m256 o[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                        _mm256_setzero_ps() };
        const int nr = hd - i >= 32 ? 4 : (hd - i + 7) / 8;
        for (int64_t t = 0; t < len; t++) {
            const __m256 p = _mm256_set1_ps(scores[t]);
            const int64_t v = t * row_stride + i;
            for (int j = 0; j < nr; j++)
                o[j] = _mm256_fmadd_ps(p, kv_load8(vc, v + 8 * j, hd - i - 8 * j, f16), o[j]);
        }
        for (int j = 0; j < nr; j++) {
            __m256 r = _mm256_mul_ps(o[j], inv);
            int64_t rem = hd - i - 8 * j;
            if (rem >= 8)
                _mm256_storeu_ps(out + i + 8 * j, r);
            else
                _mm256_maskstore_ps(out + i + 8 * j, mask8(rem), r);
        }
    }
}

T256 void fast_attn_row_avx2(const float *q, const void *kc, const void *vc, int64_t row_stride,
                             int64_t len, int32_t hd, float scale, float *scores, float *out,
                             bool kv_f16)
{
    if (kv_f16)
        attn_row_body(q, kc, vc, row_stride, len, hd, scale, scores, out, true);
    else
        attn_row_body(q, kc, vc, row_stride, len, hd, scale, scores, out, false);
}

/* ------------------------------------------------------------------ */
/* Attention over a block of query rows sharing one KV head             */

/* lane k = the sum of a[k]'s 8 lanes */
T256_INLINE __m256 sum8x8(const __m256 a[8])
{
    const __m256 x0 = _mm256_hadd_ps(a[0], a[1]), x1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 x2 = _mm256_hadd_ps(a[4], a[5]), x3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 y0 = _mm256_hadd_ps(x0, x1), y1 = _mm256_hadd_ps(x2, x3);
    return _mm256_add_ps(_mm256_permute2f128_ps(y0, y1, 0x20), _mm256_permute2f128_ps(y0, y1, 0x31));
}

/* out[r] += sum_s p[r][s] v[s] for s in [s0, s1), nr <= 4 rows, 16 dims */
T256_INLINE void attn_pv_tile2(float *const *p, int nr, const void *vc, int64_t row_stride,
                               int64_t s0, int64_t s1, int32_t d, __m256 acc[4][2], const bool f16)
{
    for (int64_t s = s0; s < s1; s++) {
        const int64_t v = s * row_stride + d;
        const __m256 v0 = kv_load8(vc, v, 8, f16), v1 = kv_load8(vc, v + 8, 8, f16);
        for (int r = 0; r < nr; r++) {
            const __m256 pr = _mm256_broadcast_ss(&p[r][s]);
            acc[r][0] = _mm256_fmadd_ps(pr, v0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(pr, v1, acc[r][1]);
        }
    }
}

T256_INLINE void attn_rows_body(const float *const *q, const int64_t *len, int32_t nr,
                                const void *kc, const void *vc, int64_t row_stride, int32_t hd,
                                float scale, float *scores, int64_t scores_ld, float *const *out,
                                const bool f16)
{
    int64_t maxlen = 0;
    for (int32_t r = 0; r < nr; r++)
        maxlen = len[r] > maxlen ? len[r] : maxlen;
    /* scores, 8 keys at a time (see fast_attn_rows_avx512) */
    for (int64_t s0 = 0; s0 < maxlen; s0 += 8) {
        int64_t kp[8];
        for (int k = 0; k < 8; k++)
            kp[k] = (s0 + k < maxlen ? s0 + k : maxlen - 1) * row_stride;
        for (int32_t r = 0; r < nr; r++) {
            if (s0 >= len[r])
                continue;
            __m256 acc[8];
            for (int k = 0; k < 8; k++)
                acc[k] = _mm256_setzero_ps();
            for (int32_t d = 0; d < hd; d += 8) {
                const __m256 qv = _mm256_loadu_ps(q[r] + d);
                for (int k = 0; k < 8; k++)
                    acc[k] = _mm256_fmadd_ps(qv, kv_load8(kc, kp[k] + d, 8, f16), acc[k]);
            }
            const int64_t valid = len[r] - s0 >= 8 ? 8 : len[r] - s0;
            const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                _mm256_set1_epi32((int)valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
            _mm256_storeu_ps(scores + r * scores_ld + s0,
                             _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                              _mm256_mul_ps(sum8x8(acc), _mm256_set1_ps(scale)), keep));
        }
    }
    /* softmax per row over its own keys */
    float inv[FAST_ATTN_MAX_ROWS];
    float *prow[FAST_ATTN_MAX_ROWS];
    for (int32_t r = 0; r < nr; r++) {
        float *sc = scores + r * scores_ld;
        prow[r] = sc;
        float mx = -INFINITY;
        for (int64_t s = 0; s < len[r]; s++)
            mx = sc[s] > mx ? sc[s] : mx;
        const __m256 vmx = _mm256_set1_ps(mx);
        __m256 vsum = _mm256_setzero_ps();
        int64_t s = 0;
        for (; s + 8 <= len[r]; s += 8) {
            __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + s), vmx));
            _mm256_storeu_ps(sc + s, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum256(vsum);
        for (; s < len[r]; s++) {
            sc[s] = expf(sc[s] - mx);
            sum += sc[s];
        }
        inv[r] = 1.0f / sum;
    }
    /* P V: groups of 4 rows x 16 dims, shared keys first, then each row's
     * own, ascending either way */
    for (int32_t r0 = 0; r0 < nr; r0 += 4) {
        const int g = nr - r0 >= 4 ? 4 : nr - r0;
        int64_t common = INT64_MAX;
        for (int r = 0; r < g; r++)
            common = len[r0 + r] < common ? len[r0 + r] : common;
        for (int32_t d = 0; d < hd; d += 16) {
            __m256 acc[4][2];
            for (int r = 0; r < 4; r++)
                acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            switch (g) {
            case 1: attn_pv_tile2(prow + r0, 1, vc, row_stride, 0, common, d, acc, f16); break;
            case 2: attn_pv_tile2(prow + r0, 2, vc, row_stride, 0, common, d, acc, f16); break;
            case 3: attn_pv_tile2(prow + r0, 3, vc, row_stride, 0, common, d, acc, f16); break;
            default: attn_pv_tile2(prow + r0, 4, vc, row_stride, 0, common, d, acc, f16); break;
            }
            for (int r = 0; r < g; r++) {
                __m256 one[4][2];
                one[0][0] = acc[r][0];
                one[0][1] = acc[r][1];
                attn_pv_tile2(prow + r0 + r, 1, vc, row_stride, common, len[r0 + r], d, one, f16);
                const __m256 sc = _mm256_set1_ps(inv[r0 + r]);
                _mm256_storeu_ps(out[r0 + r] + d, _mm256_mul_ps(one[0][0], sc));
                _mm256_storeu_ps(out[r0 + r] + d + 8, _mm256_mul_ps(one[0][1], sc));
            }
        }
    }
}

T256 void fast_attn_rows_avx2(const float *const *q, const int64_t *len, int32_t nr,
                              const void *kc, const void *vc, int64_t row_stride, int32_t hd,
                              float scale, float *scores, int64_t scores_ld, float *const *out,
                              bool kv_f16)
{
    if (kv_f16)
        attn_rows_body(q, len, nr, kc, vc, row_stride, hd, scale, scores, scores_ld, out, true);
    else
        attn_rows_body(q, len, nr, kc, vc, row_stride, hd, scale, scores, scores_ld, out, false);
}
