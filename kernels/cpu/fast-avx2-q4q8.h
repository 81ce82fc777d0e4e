/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The W4 x int8 kernel of the two AVX2 levels, as a template: included
 * once by fast-avx2.c (level avx2, vpdpbusd emulated) and once by
 * fast-avx2-vnni.c (level avx2-vnni, AVX-VNNI's VEX vpdpbusd on ymm).
 * No include guard. The includer defines, before including it:
 *   Q4Q8_TARGET  the target attribute string of the level
 *   Q4Q8_NAME    the name of the kernel it exports (fast-kernels.h)
 *   Q4Q8_VNNI    1: _mm256_dpbusd_avx_epi32; 0: vpmaddubsw + vpmaddwd
 *
 * Why a template header: this kernel is the only one of the AVX2 level
 * that multiplies int8 (the quantiser, dense, attention, GDN and SwiGLU
 * kernels have no integer dot product), so it is the only code that must
 * exist twice. Compiling all of fast-avx2.c twice with a -D flag would
 * put a second, dead copy of every other kernel in the binary and rename
 * every symbol through a macro; a run-time function pointer for the dot
 * product would stop it from being inlined into the inner loop. Here the
 * avx2-vnni table (fast.c) takes this kernel's VNNI build and the avx2
 * functions for everything else.
 *
 * Both builds give bit-identical results. vpdpbusd adds the four u8 x s8
 * products of a lane to the int32 accumulator exactly (no intermediate
 * rounding or saturation). The emulation saturates only if an int16 does:
 * the unsigned operand is a weight nibble u <= 15 or a bf16-correction
 * value eps + 4 <= 8 (fast_q4_eps), the signed one an int8 activation
 * (-128..127), so a vpmaddubsw pair is at most 2 * 15 * 128 = 3840 in
 * magnitude and the sum of the two pairs added in int16 before vpmaddwd
 * at most 7680 < 32767. The int32 lane sums are therefore the same, and
 * everything after them (conversion, fp32 FMAs, the horizontal sum) is
 * the same source compiled with the same float operations.
 */

#define Q4Q8_FN     __attribute__((target(Q4Q8_TARGET)))
#define Q4Q8_INLINE Q4Q8_FN __attribute__((always_inline)) static inline

Q4Q8_INLINE float q4q8_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Per int32 lane: acc + the 8 products of bytes 4l..4l+3 of (u0, s0) and
 * of (u1, s1), u unsigned, s signed (exact in int32: at most 8 * 15 * 128
 * plus an acc below 2^23 here). */
Q4Q8_INLINE __m256i q4q8_dot2(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1)
{
#if Q4Q8_VNNI
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, u0, s0), u1, s1);
#else
    /* no int16 saturates here (see the top of the file) */
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

Q4Q8_INLINE void q4q8_tile2(const uint8_t *wr, const uint16_t *sr, int64_t ng, int64_t nch,
                            const uint8_t *const a[4], const int nt, float out[4])
{
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                      _mm256_setzero_ps() };
    for (int64_t k = 0; k < nch; k++) {
        _mm_prefetch((const char *)(wr + 64 * k + FAST_Q4_PREFETCH), _MM_HINT_T0);
        for (int h = 0; h < 2; h++) {
            const int64_t g0 = 4 * k + 2 * h, grem = ng - g0;
            if (grem <= 0)
                break;
            const uint8_t *wp = wr + 64 * k + 32 * h;
            __m256i wv;
            uint16_t s0 = sr[g0], s1 = 0;
            if (grem >= 2) {
                wv = _mm256_loadu_si256((const __m256i *)wp);
                s1 = sr[g0 + 1];
            } else {
                /* last odd group: never read past the row */
                wv = _mm256_inserti128_si256(_mm256_setzero_si256(),
                                             _mm_loadu_si128((const __m128i *)wp), 0);
            }
            const float f0 = kb_bf16_to_f32(s0), f1 = kb_bf16_to_f32(s1);
            const __m256 sw = _mm256_set_m128(_mm_set1_ps(f1), _mm_set1_ps(f0));
            /* 2^E * 256 per group, as in the AVX-512 kernel */
            const __m256 swe = _mm256_mul_ps(
                _mm256_and_ps(sw, _mm256_castsi256_ps(_mm256_set1_epi32(0x7f800000))),
                _mm256_set1_ps(2.0f));
            __m256i lo = _mm256_and_si256(wv, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
            __m256i et = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)fast_q4_eps[s1 & 0x7f]),
                                          _mm_loadu_si128((const __m128i *)fast_q4_eps[s0 & 0x7f]));
            __m256i elo = _mm256_shuffle_epi8(et, lo), ehi = _mm256_shuffle_epi8(et, hi);
            for (int i = 0; i < nt; i++) {
                const uint8_t *c = a[i] + (size_t)k * FAST_Q8_CHUNK_BYTES + 32 * h;
                __m256i ql = _mm256_loadu_si256((const __m256i *)c);
                __m256i qh = _mm256_loadu_si256((const __m256i *)(c + 64));
                __m256i rl = _mm256_loadu_si256((const __m256i *)(c + 128));
                __m256i rh = _mm256_loadu_si256((const __m256i *)(c + 192));
                const __m256i z = _mm256_setzero_si256();
                /* 256 acc(q) + acc(r), the r products added onto the
                 * shifted q sum (saves an add with vpdpbusd) */
                __m256i d = q4q8_dot2(z, lo, ql, hi, qh);
                d = q4q8_dot2(_mm256_slli_epi32(d, 8), lo, rl, hi, rh);
                __m256i x = q4q8_dot2(z, elo, ql, ehi, qh);
                /* this half's 8 lanes of d / c / e (lanes 8h .. 8h+7) */
                const float *fl = (const float *)(c + 256);
                __m256 dl = _mm256_loadu_ps(fl);
                __m256 f = _mm256_fmsub_ps(_mm256_cvtepi32_ps(d), dl, _mm256_loadu_ps(fl + 16));
                __m256 fe = _mm256_sub_ps(_mm256_cvtepi32_ps(x), _mm256_loadu_ps(fl + 32));
                acc[i] = _mm256_fmadd_ps(f, sw, acc[i]);
                acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(fe, dl), swe, acc[i]);
            }
        }
    }
    for (int i = 0; i < nt; i++)
        out[i] = q4q8_hsum(acc[i]);
}

Q4Q8_FN void Q4Q8_NAME(const struct kb_weight *w, int64_t r0, int64_t r1,
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
                    _mm_prefetch((const char *)(wr + cols / 2), _MM_HINT_T0);
                    _mm_prefetch((const char *)(sr + ng), _MM_HINT_T0);
                }
                float o[4];
                switch (nt) {
                case 1: q4q8_tile2(wr, sr, ng, nch, a, 1, o); break;
                case 2: q4q8_tile2(wr, sr, ng, nch, a, 2, o); break;
                case 3: q4q8_tile2(wr, sr, ng, nch, a, 3, o); break;
                default: q4q8_tile2(wr, sr, ng, nch, a, 4, o); break;
                }
                for (int i = 0; i < nt; i++)
                    y[(int64_t)(t0 + i) * y_stride + r] = o[i];
            }
        }
    }
}

#undef Q4Q8_FN
#undef Q4Q8_INLINE
