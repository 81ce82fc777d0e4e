/* SPDX-License-Identifier: Apache-2.0 */
/*
 * AVX-512 kernels of the fast CPU backend (F, BW, VL, DQ, VNNI; Intel
 * Cooper Lake / Sapphire Rapids and later, AMD Zen 4 / Zen 5 — Strix Halo).
 * Every function carries the target attribute, so the file is built with
 * the project's ordinary flags and only called after the CPUID check in
 * fast.c.
 *
 * The int8 path (fast_q4_q8): the W4 weights are read as stored (see the
 * q8 row format in fast-kernels.h): a 64-byte load is 4 groups of one row;
 * `& 0x0f` and `>> 4 & 0x0f` give the unsigned nibbles of the even and the
 * odd columns, four vpdpbusd multiply them with the matching int8
 * activation planes (value and residual), and each group's 4 lanes are
 * scaled in fp32 by weight scale
 * x activation scale with the -8 offset folded into the activation's
 * correction term. Up to 4 token rows share each weight load (prefill);
 * a block of FAST_Q4_ROW_BLOCK rows runs against one such tile of tokens
 * before the next tile, so the weights stream from memory once per call
 * and the activations come from L1 (fast-kernels.h).
 *
 * The exact path (fast_q4_f32) dequantises a row with a 16-entry lookup
 * table per group (vpermps over bf16(q * s) for q = -8..7, the reference
 * backend's formula, bit for bit) into a row buffer in L1, then does fp32
 * FMA dot products with each token row.
 */
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/ref.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma")))
#define T512_INLINE T512 __attribute__((always_inline)) static inline

/* ------------------------------------------------------------------ */
/* Activation conversion                                                */

T512 void fast_q8_quantize_avx512(const float *x, int64_t cols, uint8_t *out)
{
    const int64_t nch = (cols + FAST_Q8_CHUNK_COLS - 1) / FAST_Q8_CHUNK_COLS;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512 k256 = _mm512_set1_ps(256.0f);
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
            __mmask16 m0 = rem >= 16 ? 0xffff : (__mmask16)((1u << rem) - 1);
            __mmask16 m1 = rem >= 32 ? 0xffff : rem <= 16 ? 0 : (__mmask16)((1u << (rem - 16)) - 1);
            __m512 a = _mm512_maskz_loadu_ps(m0, x + c0);
            __m512 b = _mm512_maskz_loadu_ps(m1, x + c0 + 16);
            /* Inf or NaN (a corrupted model can produce them): no int8
             * image, the block's NaN scales carry NaN into every product
             * as the exact path would (and no INT_MIN lanes to sum). */
            const __m512 inf = _mm512_set1_ps(INFINITY);
            if (_mm512_cmp_ps_mask(_mm512_and_ps(a, absmask), inf, _CMP_NLT_UQ) |
                _mm512_cmp_ps_mask(_mm512_and_ps(b, absmask), inf, _CMP_NLT_UQ)) {
                for (int pl = 0; pl < 4; pl++)
                    memset(c + 64 * pl + 16 * g, 0, 16);
                d[g] = cs[g] = es[g] = NAN;
                continue;
            }
            float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(a, absmask),
                                                            _mm512_and_ps(b, absmask)));
            float dg = amax / 127.0f;
            float id = amax > 0.0f ? 127.0f / amax : 0.0f;
            __m512 vid = _mm512_set1_ps(id);
            __m512 sa = _mm512_mul_ps(a, vid), sb = _mm512_mul_ps(b, vid);
            __m512i qa = _mm512_cvtps_epi32(sa);                    /* nearest even */
            __m512i qb = _mm512_cvtps_epi32(sb);
            __m512i ra = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(sa, _mm512_cvtepi32_ps(qa)), k256));
            __m512i rb = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(sb, _mm512_cvtepi32_ps(qb)), k256));
            /* r = 128 (a tie at exactly half a step) saturates to 127 */
            ra = _mm512_min_epi32(ra, _mm512_set1_epi32(127));
            rb = _mm512_min_epi32(rb, _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(c + 16 * g), _mm512_cvtsepi32_epi8(_mm512_permutex2var_epi32(qa, even, qb)));
            _mm_storeu_si128((__m128i *)(c + 64 + 16 * g), _mm512_cvtsepi32_epi8(_mm512_permutex2var_epi32(qa, odd, qb)));
            _mm_storeu_si128((__m128i *)(c + 128 + 16 * g), _mm512_cvtsepi32_epi8(_mm512_permutex2var_epi32(ra, even, rb)));
            _mm_storeu_si128((__m128i *)(c + 192 + 16 * g), _mm512_cvtsepi32_epi8(_mm512_permutex2var_epi32(ra, odd, rb)));
            __m512i tot = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(qa, qb), 8),
                                           _mm512_add_epi32(ra, rb));
            int32_t qs = _mm512_reduce_add_epi32(tot);
            es[g] = (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
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
/* W4 x int8                                                            */

uint8_t fast_q4_eps[128][16];

void fast_q4_eps_init(void)
{
    for (int m = 0; m < 128; m++)
        for (int u = 0; u < 16; u++) {
            float v = (float)((u - 8) * (128 + m));
            float r = kb_bf16_to_f32(kb_f32_to_bf16(v));
            fast_q4_eps[m][u] = (uint8_t)((int)r - (int)v + 4);
        }
}

T512_INLINE void q4q8_tile(const uint8_t *wr, const uint16_t *sr, int64_t ng, int64_t nch,
                           const uint8_t *const a[4], const int nt, float out[4])
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    /* word w of a zmm takes scale w / 8 (odd words; the even ones are
     * zeroed): lane j = bf16 scale of group j / 4 as an fp32 bit pattern */
    const __m512i sidx = _mm512_setr_epi32(0, 0, 0, 0, 0x00010001, 0x00010001, 0x00010001,
                                           0x00010001, 0x00020002, 0x00020002, 0x00020002,
                                           0x00020002, 0x00030003, 0x00030003, 0x00030003,
                                           0x00030003);
    const __m512 expmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7f800000));
    __m512 acc[4], acce[4];
    for (int i = 0; i < 4; i++)
        acc[i] = acce[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nch; k++) {
        int64_t grem = ng - 4 * k;
        __m512i wv;
        __m128i s4;
        /* the bf16 rounding-correction rows (fast_q4_eps) of the 4 groups,
         * indexed by the scales' 7 significand bits read straight from
         * the scale array (no vector store and reload) */
        const uint16_t *sk = sr + 4 * k;
        int mi[4] = { 0, 0, 0, 0 };
        _mm_prefetch((const char *)(wr + 64 * k + FAST_Q4_PREFETCH), _MM_HINT_T0);
        if (grem >= 4) {
            wv = _mm512_loadu_si512((const void *)(wr + 64 * k));
            s4 = _mm_loadl_epi64((const __m128i *)sk);
            for (int g = 0; g < 4; g++)
                mi[g] = sk[g] & 0x7f;
        } else {
            __mmask64 mb = (__mmask64)((1ull << (16 * grem)) - 1);
            wv = _mm512_maskz_loadu_epi8(mb, wr + 64 * k);
            s4 = _mm_maskz_loadu_epi16((__mmask8)((1u << grem) - 1), sk);
            for (int g = 0; g < grem; g++)
                mi[g] = sk[g] & 0x7f;
        }
        const __m512 sw = _mm512_castsi512_ps(
            _mm512_maskz_permutexvar_epi16(0xaaaaaaaau, sidx, _mm512_castsi128_si512(s4)));
        /* 2^E * 256 per group (the exponent of s, significand 1, times
         * 2^-7 for the 8-bit m, times the 256 of the q plane) */
        const __m512 swe = _mm512_mul_ps(_mm512_and_ps(sw, expmask), _mm512_set1_ps(2.0f));
        __m512i lo = _mm512_and_si512(wv, m4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4);
        /* broadcast loads and blends keep the table rows off the shuffle port */
        __m512i et = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fast_q4_eps[mi[0]]));
        et = _mm512_mask_blend_epi32(0x00f0, et,
                 _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fast_q4_eps[mi[1]])));
        et = _mm512_mask_blend_epi32(0x0f00, et,
                 _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fast_q4_eps[mi[2]])));
        et = _mm512_mask_blend_epi32(0xf000, et,
                 _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fast_q4_eps[mi[3]])));
        __m512i elo = _mm512_shuffle_epi8(et, lo), ehi = _mm512_shuffle_epi8(et, hi);
        for (int i = 0; i < nt; i++) {
            const uint8_t *c = a[i] + (size_t)k * FAST_Q8_CHUNK_BYTES;
            const __m512i ql = _mm512_loadu_si512((const void *)c);
            const __m512i qh = _mm512_loadu_si512((const void *)(c + 64));
            __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, ql);
            d = _mm512_dpbusd_epi32(d, hi, qh);
            __m512i e = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo,
                                            _mm512_loadu_si512((const void *)(c + 128)));
            e = _mm512_dpbusd_epi32(e, hi, _mm512_loadu_si512((const void *)(c + 192)));
            __m512i x = _mm512_dpbusd_epi32(_mm512_setzero_si512(), elo, ql);
            x = _mm512_dpbusd_epi32(x, ehi, qh);
            d = _mm512_add_epi32(_mm512_slli_epi32(d, 8), e);
            const __m512 dl = _mm512_loadu_ps((const float *)(c + 256));
            const __m512 f = _mm512_fmsub_ps(_mm512_cvtepi32_ps(d), dl,
                                             _mm512_loadu_ps((const float *)(c + 320)));
            const __m512 fe = _mm512_sub_ps(_mm512_cvtepi32_ps(x),
                                            _mm512_loadu_ps((const float *)(c + 384)));
            /* two accumulators: the main term and the correction do not
             * wait on each other's FMA latency */
            acc[i] = _mm512_fmadd_ps(f, sw, acc[i]);
            acce[i] = _mm512_fmadd_ps(_mm512_mul_ps(fe, dl), swe, acce[i]);
        }
    }
    for (int i = 0; i < nt; i++)
        out[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], acce[i]));
}

T512 void fast_q4_q8_avx512(const struct kb_weight *w, int64_t r0, int64_t r1,
                            const uint8_t *act, size_t act_stride, const int32_t *tok, int32_t n,
                            float *y, int64_t y_stride)
{
    const int64_t cols = w->cols, ng = cols / KB_Q4_GROUP;
    const int64_t nch = (cols + FAST_Q8_CHUNK_COLS - 1) / FAST_Q8_CHUNK_COLS;
    const uint8_t *wd = (const uint8_t *)w->data;
    const uint16_t *sd = (const uint16_t *)w->scales;
    for (int64_t rb = r0; rb < r1; rb += FAST_Q4_ROW_BLOCK) {
        const int64_t re = r1 - rb < FAST_Q4_ROW_BLOCK ? r1 : rb + FAST_Q4_ROW_BLOCK;
        for (int32_t t0 = 0; t0 < n; t0 += 4) {
            const int nt = n - t0 >= 4 ? 4 : n - t0;
            const uint8_t *a[4];
            for (int i = 0; i < 4; i++) {
                int32_t ti = t0 + (i < nt ? i : 0);
                a[i] = act + (size_t)(tok ? tok[ti] : ti) * act_stride;
            }
            for (int64_t r = rb; r < re; r++) {
                const uint8_t *wr = wd + r * (cols / 2);
                const uint16_t *sr = sd + r * ng;
                if (t0 == 0 && r + 1 < r1) {
                    /* the next row's first lines on its way in from
                     * memory; the hardware prefetcher picks up the rest
                     * of a 1 KB row by itself */
                    _mm_prefetch((const char *)(wr + cols / 2), _MM_HINT_T0);
                    _mm_prefetch((const char *)(sr + ng), _MM_HINT_T0);
                }
                float o[4];
                switch (nt) {
                case 1: q4q8_tile(wr, sr, ng, nch, a, 1, o); break;
                case 2: q4q8_tile(wr, sr, ng, nch, a, 2, o); break;
                case 3: q4q8_tile(wr, sr, ng, nch, a, 3, o); break;
                default: q4q8_tile(wr, sr, ng, nch, a, 4, o); break;
                }
                for (int i = 0; i < nt; i++)
                    y[(int64_t)(t0 + i) * y_stride + r] = o[i];
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* fp32 dot products of a row buffer / dense row with token rows        */

T512_INLINE __m512 load_dense16(const struct kb_weight *w, const void *row, int64_t c, __mmask16 m)
{
    switch (w->type) {
    case KB_WTYPE_BF16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case KB_WTYPE_F16: {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c);
        return _mm512_cvtph_ps(h);
    }
    default:
        return _mm512_maskz_loadu_ps(m, (const float *)row + c);
    }
}

/* out[i] = dot(row (as weight type `type`), x_i) for nt <= 4 token rows. */
T512_INLINE void dot_tile(const struct kb_weight *w, const void *row, int64_t cols,
                          const float *const x[4], const int nt, float out[4])
{
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 16) {
        __mmask16 m = cols - c >= 16 ? 0xffff : (__mmask16)((1u << (cols - c)) - 1);
        __m512 wv = load_dense16(w, row, c, m);
        acc0 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[0] + c), acc0);
        if (nt > 1) acc1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[1] + c), acc1);
        if (nt > 2) acc2 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[2] + c), acc2);
        if (nt > 3) acc3 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x[3] + c), acc3);
    }
    out[0] = _mm512_reduce_add_ps(acc0);
    if (nt > 1) out[1] = _mm512_reduce_add_ps(acc1);
    if (nt > 2) out[2] = _mm512_reduce_add_ps(acc2);
    if (nt > 3) out[3] = _mm512_reduce_add_ps(acc3);
}

T512_INLINE void dot_rows(const struct kb_weight *w, const void *row, int64_t r,
                          const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                          float *y, int64_t y_stride)
{
    const int64_t cols = w->cols;
    for (int32_t t0 = 0; t0 < n; t0 += 4) {
        const int nt = n - t0 >= 4 ? 4 : n - t0;
        const float *xs[4];
        for (int i = 0; i < 4; i++) {
            int32_t ti = t0 + (i < nt ? i : 0);
            xs[i] = x + (int64_t)(tok ? tok[ti] : ti) * x_stride;
        }
        float o[4];
        switch (nt) {
        case 1: dot_tile(w, row, cols, xs, 1, o); break;
        case 2: dot_tile(w, row, cols, xs, 2, o); break;
        case 3: dot_tile(w, row, cols, xs, 3, o); break;
        default: dot_tile(w, row, cols, xs, 4, o); break;
        }
        for (int i = 0; i < nt; i++)
            y[(int64_t)(t0 + i) * y_stride + r] = o[i];
    }
}

/* bf16(v) for finite v, round to nearest even (kb_f32_to_bf16). */
T512_INLINE __m512 round_bf16(__m512 v)
{
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)));
}

T512 void fast_q4_f32_avx512(const struct kb_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                             float *y, int64_t y_stride, float *rowbuf)
{
    const int64_t cols = w->cols, ng = cols / KB_Q4_GROUP;
    const bool simple = !w->g_idx && w->scale_type == KB_WTYPE_BF16;
    const __m512 qv = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i m4 = _mm512_set1_epi32(0x0f);
    struct kb_weight dense = { .type = KB_WTYPE_F32, .rows = 1, .cols = cols };
    for (int64_t r = r0; r < r1; r++) {
        if (simple) {
            const uint8_t *wr = (const uint8_t *)w->data + r * (cols / 2);
            const uint16_t *sr = (const uint16_t *)w->scales + r * ng;
            for (int64_t g = 0; g < ng; g++) {
                __m512 s = _mm512_castsi512_ps(_mm512_set1_epi32((int)((uint32_t)sr[g] << 16)));
                __m512 lut = round_bf16(_mm512_mul_ps(qv, s));
                __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wr + 16 * g)));
                __m512 ve = _mm512_permutexvar_ps(_mm512_and_si512(e, m4), lut);
                __m512 vo = _mm512_permutexvar_ps(_mm512_srli_epi32(e, 4), lut);
                _mm512_storeu_ps(rowbuf + 32 * g, _mm512_permutex2var_ps(ve, ilo, vo));
                _mm512_storeu_ps(rowbuf + 32 * g + 16, _mm512_permutex2var_ps(ve, ihi, vo));
            }
        } else {
            kb_ref_weight_row(w, r, rowbuf);
        }
        dot_rows(&dense, rowbuf, r, x, x_stride, tok, n, y, y_stride);
    }
}

/* bf16 rows against x split into even and odd columns: a bf16 pair read as
 * one 32-bit lane is (odd << 16 | even), so `lane << 16` is the even value
 * and `lane & 0xffff0000` the odd one as fp32, two FMAs after two plain
 * integer ops, without the widening shuffle (vpmovzxwd per 16 values) that
 * held the previous kernel to about a fifth of one core's read bandwidth
 * (docs/performance.md, CPU). Needs cols % 32 == 0.
 *
 * Every (row, token) value is computed by the same arithmetic whatever the
 * batch size, the thread split or the row's place in a 4-row block (two
 * accumulators per row, columns in order, one final reduction): residentd
 * batches whoever is decoding, and a sequence's logits must not depend on
 * its neighbours (engine-fast-e2e checks alone == in a batch, bit for
 * bit). Four rows share each x load and keep four streams of misses in
 * flight; the tokens loop inside a 4-row block, so the block's weights are
 * read from memory once for the whole batch. */
T512_INLINE void dense_bf16_split(const float *x, int64_t cols, float *xs)
{
    const int64_t half = cols / 2;
    for (int64_t c = 0; c < half; c++) {
        xs[c] = x[2 * c];
        xs[half + c] = x[2 * c + 1];
    }
}

T512_INLINE void dense_bf16_block(const uint16_t *w0, int64_t cols, int nr, const float *xs, float *y)
{
    const int64_t half = cols / 2;
    const float *xe = xs, *xo = xs + half;
    const __m512i hm = _mm512_set1_epi32((int)0xffff0000u);
    __m512 a[4], b[4];
    for (int i = 0; i < 4; i++)
        a[i] = b[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c += 32) {
        const __m512 e = _mm512_loadu_ps(xe + c / 2), o = _mm512_loadu_ps(xo + c / 2);
        for (int i = 0; i < nr; i++) {
            __m512i v = _mm512_loadu_si512((const void *)(w0 + i * cols + c));
            a[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), e, a[i]);
            b[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hm)), o, b[i]);
        }
    }
    for (int i = 0; i < nr; i++)
        y[i] = _mm512_reduce_add_ps(_mm512_add_ps(a[i], b[i]));
}

/* xs: FAST_DENSE_XTOK * cols floats of scratch; tokens go FAST_DENSE_XTOK
 * at a time (the block's weights are re-read once per group, from cache for
 * small matrices). */
T512 static void dense_bf16_rows(const struct kb_weight *w, int64_t r0, int64_t r1, const float *x,
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

T512 void fast_dense_f32_avx512(const struct kb_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                                float *y, int64_t y_stride, float *xbuf)
{
    const size_t esz = w->type == KB_WTYPE_F32 ? 4 : 2;
    if (xbuf && w->type == KB_WTYPE_BF16 && w->cols % 32 == 0) {
        dense_bf16_rows(w, r0, r1, x, x_stride, tok, n, xbuf, y, y_stride);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const void *row = (const uint8_t *)w->data + (size_t)(r * w->cols) * esz;
        switch (w->type) {
        case KB_WTYPE_BF16: {
            struct kb_weight d = { .type = KB_WTYPE_BF16, .cols = w->cols };
            dot_rows(&d, row, r, x, x_stride, tok, n, y, y_stride);
            break;
        }
        case KB_WTYPE_F16: {
            struct kb_weight d = { .type = KB_WTYPE_F16, .cols = w->cols };
            dot_rows(&d, row, r, x, x_stride, tok, n, y, y_stride);
            break;
        }
        default: {
            struct kb_weight d = { .type = KB_WTYPE_F32, .cols = w->cols };
            dot_rows(&d, row, r, x, x_stride, tok, n, y, y_stride);
            break;
        }
        }
    }
}

/* ------------------------------------------------------------------ */
/* Elementwise                                                          */

/* exp(x) for x <= 88: 2^(x log2 e) split into 2^k * 2^f, f in [-0.5, 0.5],
 * degree-6 polynomial (relative error < 2e-7, like expf's last bit or two). */
T512_INLINE __m512 exp512(__m512 x)
{
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, k);                       /* [-0.5, 0.5] */
    __m512 p = _mm512_set1_ps(1.5353362e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398874e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

T512 void fast_swiglu_avx512(float *y, const float *g, const float *u, int64_t count)
{
    for (int64_t i = 0; i < count; i += 16) {
        __mmask16 m = count - i >= 16 ? 0xffff : (__mmask16)((1u << (count - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 uv = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 s = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(s, uv));
    }
}

T512 void fast_gdn_head_avx512(float *S, const float *q, const float *k, const float *v,
                               float beta, float decay, int32_t dk, int32_t dv, float *o)
{
    const __m512 vdec = _mm512_set1_ps(decay), vbeta = _mm512_set1_ps(beta);
    /* 64 columns of the state at a time: 4 registers of m, then of o */
    for (int32_t c0 = 0; c0 < dv; c0 += 64) {
        const int nr = dv - c0 >= 64 ? 4 : (dv - c0) / 16;
        __m512 m[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                        _mm512_setzero_ps() };
        for (int32_t i = 0; i < dk; i++) {
            float *row = S + (int64_t)i * dv + c0;
            const __m512 ki = _mm512_set1_ps(k[i]);
            for (int j = 0; j < nr; j++) {
                __m512 sv = _mm512_mul_ps(_mm512_loadu_ps(row + 16 * j), vdec);
                _mm512_storeu_ps(row + 16 * j, sv);
                m[j] = _mm512_fmadd_ps(sv, ki, m[j]);
            }
        }
        __m512 dl[4], acc[4];
        for (int j = 0; j < nr; j++) {
            dl[j] = _mm512_mul_ps(vbeta, _mm512_sub_ps(_mm512_loadu_ps(v + c0 + 16 * j), m[j]));
            acc[j] = _mm512_setzero_ps();
        }
        for (int32_t i = 0; i < dk; i++) {
            float *row = S + (int64_t)i * dv + c0;
            const __m512 ki = _mm512_set1_ps(k[i]), qi = _mm512_set1_ps(q[i]);
            for (int j = 0; j < nr; j++) {
                __m512 sv = _mm512_fmadd_ps(ki, dl[j], _mm512_loadu_ps(row + 16 * j));
                _mm512_storeu_ps(row + 16 * j, sv);
                acc[j] = _mm512_fmadd_ps(sv, qi, acc[j]);
            }
        }
        for (int j = 0; j < nr; j++)
            _mm512_storeu_ps(o + c0 + 16 * j, acc[j]);
    }
}

/* ------------------------------------------------------------------ */
/* KV cache elements                                                    */

/* dst[i] = f16(src[i]), round to nearest even (vcvtps2ph with an explicit
 * rounding mode: MXCSR plays no part). */
T512 void fast_f32_to_f16_avx512(uint16_t *dst, const float *src, int64_t count)
{
    int64_t i = 0;
    for (; i + 16 <= count; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < count) {
        const __mmask16 m = (__mmask16)((1u << (count - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, m,
                                 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
}

/* 16 elements of a K or V row from element idx on, as fp32 (f16 widens
 * exactly). The attention kernels below take the element type as a
 * constant argument of an always-inline body: each entry point calls the
 * body once per type, so each type gets its own compiled loop with no
 * test inside it, from one source. */
T512_INLINE __m512 kv_load16(const void *base, int64_t idx, bool f16)
{
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + idx)))
               : _mm512_loadu_ps((const float *)base + idx);
}

/* The same with the lanes outside m zero. */
T512_INLINE __m512 kv_load16_mask(const void *base, int64_t idx, __mmask16 m, bool f16)
{
    return f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)base + idx))
               : _mm512_maskz_loadu_ps(m, (const float *)base + idx);
}

/* One query row against cache rows 0..len-1 (kc / vc advance row_stride
 * elements per position): out[hd] = softmax(q.k * scale) v. scores[len]. */
T512_INLINE void attn_row_body(const float *q, const void *kc, const void *vc, int64_t row_stride,
                               int64_t len, int32_t hd, float scale, float *scores, float *out,
                               const bool f16)
{
    float mx = -INFINITY;
    for (int64_t s = 0; s < len; s++) {
        const int64_t k = s * row_stride;
        __m512 acc = _mm512_setzero_ps();
        for (int32_t i = 0; i < hd; i += 16) {
            __mmask16 m = hd - i >= 16 ? 0xffff : (__mmask16)((1u << (hd - i)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), kv_load16_mask(kc, k + i, m, f16),
                                  acc);
        }
        float v = _mm512_reduce_add_ps(acc) * scale;
        scores[s] = v;
        if (v > mx)
            mx = v;
    }
    __m512 vmx = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps();
    for (int64_t s = 0; s < len; s += 16) {
        __mmask16 m = len - s >= 16 ? 0xffff : (__mmask16)((1u << (len - s)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + s), vmx));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(scores + s, m, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(vsum);
    for (int32_t i = 0; i < hd; i += 64) {
        /* 4 registers of output at a time so each V row is read once per
         * 64 dims */
        __mmask16 mk[4];
        __m512 o[4];
        for (int j = 0; j < 4; j++) {
            int32_t c = i + 16 * j;
            mk[j] = c >= hd ? 0 : hd - c >= 16 ? 0xffff : (__mmask16)((1u << (hd - c)) - 1);
            o[j] = _mm512_setzero_ps();
        }
        for (int64_t s = 0; s < len; s++) {
            __m512 p = _mm512_set1_ps(scores[s]);
            const int64_t v = s * row_stride + i;
            for (int j = 0; j < 4; j++)
                o[j] = _mm512_fmadd_ps(p, kv_load16_mask(vc, v + 16 * j, mk[j], f16), o[j]);
        }
        for (int j = 0; j < 4; j++)
            _mm512_mask_storeu_ps(out + i + 16 * j, mk[j], _mm512_mul_ps(o[j], _mm512_set1_ps(inv)));
    }
}

T512 void fast_attn_row_avx512(const float *q, const void *kc, const void *vc, int64_t row_stride,
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

/* lane k = the sum of a[k]'s 16 lanes (a transpose-and-add tree: 45
 * shuffles and adds for 16 sums instead of 16 horizontal reductions). */
T512_INLINE __m512 sum16x16(const __m512 a[16])
{
    __m512 x[8], y[4];
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        y[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(y[0], y[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(y[2], y[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* out[r] += sum_s p[r][s] v[s] for s in [s0, s1), nr <= 8 rows, 32
 * dims at d: 16 accumulators, each V load used by every row. */
T512_INLINE void attn_pv_tile(float *const *p, int nr, const void *vc, int64_t row_stride,
                              int64_t s0, int64_t s1, int32_t d, __m512 acc[8][2], const bool f16)
{
    for (int64_t s = s0; s < s1; s++) {
        const int64_t v = s * row_stride + d;
        const __m512 v0 = kv_load16(vc, v, f16), v1 = kv_load16(vc, v + 16, f16);
        for (int r = 0; r < nr; r++) {
            const __m512 pr = _mm512_set1_ps(p[r][s]);
            acc[r][0] = _mm512_fmadd_ps(pr, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(pr, v1, acc[r][1]);
        }
    }
}

T512_INLINE void attn_rows_body(const float *const *q, const int64_t *len, int32_t nr,
                                const void *kc, const void *vc, int64_t row_stride, int32_t hd,
                                float scale, float *scores, int64_t scores_ld, float *const *out,
                                const bool f16)
{
    int64_t maxlen = 0;
    for (int32_t r = 0; r < nr; r++)
        maxlen = len[r] > maxlen ? len[r] : maxlen;
    /* scores: 16 keys at a time; the block's K rows (16 x hd floats) stay
     * in L1 while every row of the block meets them */
    for (int64_t s0 = 0; s0 < maxlen; s0 += 16) {
        int64_t kp[16];
        for (int k = 0; k < 16; k++)
            kp[k] = (s0 + k < maxlen ? s0 + k : maxlen - 1) * row_stride;
        for (int32_t r = 0; r < nr; r++) {
            if (s0 >= len[r])
                continue;
            __m512 acc[16];
            for (int k = 0; k < 16; k++)
                acc[k] = _mm512_setzero_ps();
            for (int32_t d = 0; d < hd; d += 16) {
                const __m512 qv = _mm512_loadu_ps(q[r] + d);
                for (int k = 0; k < 16; k++)
                    acc[k] = _mm512_fmadd_ps(qv, kv_load16(kc, kp[k] + d, f16), acc[k]);
            }
            const int64_t valid = len[r] - s0 >= 16 ? 16 : len[r] - s0;
            const __mmask16 m = (__mmask16)((1u << valid) - 1);
            _mm512_storeu_ps(scores + r * scores_ld + s0,
                             _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), m,
                                                _mm512_mul_ps(sum16x16(acc), _mm512_set1_ps(scale))));
        }
    }
    /* softmax per row over its own keys: exp in place, 1 / sum kept */
    float inv[FAST_ATTN_MAX_ROWS];
    float *prow[FAST_ATTN_MAX_ROWS];
    for (int32_t r = 0; r < nr; r++) {
        float *sc = scores + r * scores_ld;
        prow[r] = sc;
        __m512 vmx = _mm512_set1_ps(-INFINITY);
        for (int64_t s = 0; s < len[r]; s += 16) {
            __mmask16 m = len[r] - s >= 16 ? 0xffff : (__mmask16)((1u << (len[r] - s)) - 1);
            vmx = _mm512_max_ps(vmx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, sc + s));
        }
        vmx = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
        __m512 vsum = _mm512_setzero_ps();
        for (int64_t s = 0; s < len[r]; s += 16) {
            __mmask16 m = len[r] - s >= 16 ? 0xffff : (__mmask16)((1u << (len[r] - s)) - 1);
            __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + s), vmx)));
            _mm512_mask_storeu_ps(sc + s, m, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        inv[r] = 1.0f / _mm512_reduce_add_ps(vsum);
    }
    /* P V: groups of 8 rows x 32 dims; the keys all rows of a group have
     * go through the shared tile, each row's remaining keys through its
     * own pass, in ascending order either way (a row's result does not
     * depend on the rows grouped with it) */
    for (int32_t r0 = 0; r0 < nr; r0 += 8) {
        const int g = nr - r0 >= 8 ? 8 : nr - r0;
        int64_t common = INT64_MAX;
        for (int r = 0; r < g; r++)
            common = len[r0 + r] < common ? len[r0 + r] : common;
        for (int32_t d = 0; d < hd; d += 32) {
            __m512 acc[8][2];
            for (int r = 0; r < 8; r++)
                acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            switch (g) {
            case 1: attn_pv_tile(prow + r0, 1, vc, row_stride, 0, common, d, acc, f16); break;
            case 2: attn_pv_tile(prow + r0, 2, vc, row_stride, 0, common, d, acc, f16); break;
            case 3: attn_pv_tile(prow + r0, 3, vc, row_stride, 0, common, d, acc, f16); break;
            case 4: attn_pv_tile(prow + r0, 4, vc, row_stride, 0, common, d, acc, f16); break;
            case 5: attn_pv_tile(prow + r0, 5, vc, row_stride, 0, common, d, acc, f16); break;
            case 6: attn_pv_tile(prow + r0, 6, vc, row_stride, 0, common, d, acc, f16); break;
            case 7: attn_pv_tile(prow + r0, 7, vc, row_stride, 0, common, d, acc, f16); break;
            default: attn_pv_tile(prow + r0, 8, vc, row_stride, 0, common, d, acc, f16); break;
            }
            for (int r = 0; r < g; r++) {
                __m512 one[8][2];
                one[0][0] = acc[r][0];
                one[0][1] = acc[r][1];
                attn_pv_tile(prow + r0 + r, 1, vc, row_stride, common, len[r0 + r], d, one, f16);
                const __m512 sc = _mm512_set1_ps(inv[r0 + r]);
                _mm512_storeu_ps(out[r0 + r] + d, _mm512_mul_ps(one[0][0], sc));
                _mm512_storeu_ps(out[r0 + r] + d + 16, _mm512_mul_ps(one[0][1], sc));
            }
        }
    }
}

T512 void fast_attn_rows_avx512(const float *const *q, const int64_t *len, int32_t nr,
                                const void *kc, const void *vc, int64_t row_stride, int32_t hd,
                                float scale, float *scores, int64_t scores_ld, float *const *out,
                                bool kv_f16)
{
    if (kv_f16)
        attn_rows_body(q, len, nr, kc, vc, row_stride, hd, scale, scores, scores_ld, out, true);
    else
        attn_rows_body(q, len, nr, kc, vc, row_stride, hd, scale, scores, scores_ld, out, false);
}
