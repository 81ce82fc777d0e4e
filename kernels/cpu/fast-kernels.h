/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ISA-specific kernels of the fast CPU backend (fast-avx512.c,
 * fast-avx2.c, fast-avx2-vnni.c). Every
 * kernel computes output rows [r0, r1) of one weight for n token rows and
 * writes y[i * y_stride + r]; token i's input row is row tok[i] (or i when
 * tok is NULL) of the activation array, so MoE can run an expert over the
 * tokens routed to it without gathering them first.
 *
 * Int8 activation format ("q8 rows", built by fast_q8_quantize_*): the row
 * is cut into chunks of 128 columns (4 quantisation groups of 32, zero
 * padded at the end). Each group's values are written as two int8 planes,
 * x = d * (q + r / 256) with q = round(x / d) (d = max|x| / 127) and
 * r = round(256 * (x / d - q)): one int8 plane alone (llama.cpp's Q8_0)
 * costs too much accuracy on the reference fixtures (mean KL 0.07 against
 * the exact path, 83 % top-1 agreement), two planes keep ~15 bits. A
 * chunk is 384 bytes:
 *     int8  lo[64]   lo[16g + b] = q(x[32g + 2b])       even columns
 *     int8  hi[64]   hi[16g + b] = q(x[32g + 2b + 1])   odd columns
 *     int8  rlo[64], rhi[64]   the same for r
 *     float d[16]    lane j: d / 256 of group j / 4
 *     float c[16]    lane j: 2 * (d / 256) * sum(256 q + r over group j / 4)
 *     float e[16]    lane j: sum(q over group j / 4)
 * This is the order in which a 64-byte load of the packed W4 weights
 * presents its nibbles (byte b of a group holds columns 2b and 2b+1 in its
 * low and high nibble), so the weights are used as stored, without any
 * repacking: low nibbles meet lo, high nibbles meet hi, and one vpdpbusd
 * (u8 x s8) lane sums 4 products of one group. The nibbles are the
 * unsigned u = q + 8, so sum(q * a) = sum(u * a) - 8 * sum(a); lane j's
 * share of the correction is 8 * sum(a) / 4, which is c / d. Per lane:
 * (float(256 * acc(q) + acc(r)) * d - c) * weight_scale.
 *
 * Exact weights: the reference (and compressed-tensors) rounds every
 * dequantised weight to bf16, bf16(q * s). With s = m * 2^E (m the 8-bit
 * significand), bf16(q * s) = (q * m + eps(q, m)) * 2^E where eps is the
 * rounding of the integer q * m to 8 significant bits, -4..4. Ignoring it
 * costs ~0.1 % relative error per product, which the reference fixtures
 * amplify to a mean KL of 0.03; so the kernel adds sum(eps * a) * 2^E,
 * with eps + 4 looked up per nibble by vpshufb from a 16-byte row of
 * fast_q4_eps[m - 128] and one more pair of vpdpbusd on the q plane
 * (the r plane's share of this correction is below 2^-16).
 */
#ifndef RESIDENT_KERNELS_CPU_FAST_KERNELS_H
#define RESIDENT_KERNELS_CPU_FAST_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

#define FAST_Q8_CHUNK_COLS  128
#define FAST_Q8_CHUNK_BYTES 448

/* The W4 kernels prefetch the weight line this many bytes ahead of the
 * one they read (rows are contiguous, so this runs into the next rows):
 * one row at a time with only the hardware prefetcher read about half
 * of one core's streaming bandwidth (docs/performance.md, CPU). A
 * prefetch past the end of the mapping is harmless (it never faults). */
#define FAST_Q4_PREFETCH 2048

/* Rows the W4 kernels run against one tile of 4 token rows before moving
 * to the next tile: the tile's q8 rows (4 x 7 KB at 2048 columns) and
 * the block's weights (8 x 1.1 KB) stay in L1 together, so a batch of n
 * tokens reads its activations from L2 n / 4 times per 8 rows instead of
 * once per row. Measured on the 2048 x 2048 weight, 64 tokens, one core:
 * 18.2 -> 27.0 GMAC/s (1 -> 8 rows; 4: 25.3, 16: 26.1, 32: 25.9). The
 * order of the sums inside a (row, token) product does not change, so the
 * results are bit-identical whatever the block. */
#define FAST_Q4_ROW_BLOCK 8

static inline size_t fast_q8_row_bytes(int64_t cols)
{
    return (size_t)((cols + FAST_Q8_CHUNK_COLS - 1) / FAST_Q8_CHUNK_COLS) * FAST_Q8_CHUNK_BYTES;
}

/* fast_q4_eps[m - 128][u] = eps(u - 8, m) + 4 (see above); filled once. */
extern uint8_t fast_q4_eps[128][16];
void fast_q4_eps_init(void);

/* x[cols] -> q8 row (cols % 32 == 0 not required; the tail is zero). */
void fast_q8_quantize_avx512(const float *x, int64_t cols, uint8_t *out);

/* W4 g32 (bf16 scales, no g_idx) x q8 rows. */
void fast_q4_q8_avx512(const struct kb_weight *w, int64_t r0, int64_t r1,
                       const uint8_t *act, size_t act_stride, const int32_t *tok, int32_t n,
                       float *y, int64_t y_stride);

/* Any W4 weight x fp32 rows, with the weights dequantised exactly as the
 * reference does (bf16(q * s)); rowbuf holds w->cols floats. */
void fast_q4_f32_avx512(const struct kb_weight *w, int64_t r0, int64_t r1,
                        const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                        float *y, int64_t y_stride, float *rowbuf);

/* Tokens the bf16 kernel splits into xbuf at a time. */
#define FAST_DENSE_XTOK 8

/* Dense (f32 / f16 / bf16) weight x fp32 rows, fp32 FMA. xbuf:
 * FAST_DENSE_XTOK * w->cols floats of scratch for the bf16 kernel (x split
 * into even and odd columns), or NULL (plain path). A given weight must
 * always be called with or always without xbuf: the two paths sum in
 * different orders. */
void fast_dense_f32_avx512(const struct kb_weight *w, int64_t r0, int64_t r1,
                           const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                           float *y, int64_t y_stride, float *xbuf);

/* One Gated DeltaNet value head, one token (spec §2.4 step 7), state
 * S [dk][dv] updated in place: S = decay S; m = S^T k; delta = beta (v - m);
 * S += k delta^T; o = S^T q. dv % 16 == 0. */
void fast_gdn_head_avx512(float *S, const float *q, const float *k, const float *v,
                          float beta, float decay, int32_t dk, int32_t dv, float *o);

/* y[i] = silu(g[i]) * u[i] (y may alias g). */
void fast_swiglu_avx512(float *y, const float *g, const float *u, int64_t count);

/* The KV cache (kb_kv): fp32, or IEEE f16 when kv_f16 (the "cpu" mode's
 * default, KB_CAP_KV_F16). f32_to_f16 stores a row rounded to nearest
 * even; the attention kernels widen f16 exactly (vcvtph2ps) and then run
 * the fp32 arithmetic of the fp32 cache, so the element type changes
 * what is stored, never how it is summed. kc / vc and row_stride are in
 * elements of that type. */
void fast_f32_to_f16_avx512(uint16_t *dst, const float *src, int64_t count);

/* Causal attention for one query row block of one head group: see fast.c. */
void fast_attn_row_avx512(const float *q, const void *kc, const void *vc, int64_t row_stride,
                          int64_t len, int32_t hd, float scale, float *scores, float *out,
                          bool kv_f16);

/* Causal attention for nr <= FAST_ATTN_MAX_ROWS query rows that share one
 * KV head (a block of tokens x the query heads of a GQA group): row r is
 * q[r] against keys 0 .. len[r]-1 of kc / vc (row_stride floats apart),
 * written to out[r]; hd % 32 == 0. scores: nr rows of scores_ld floats
 * (>= max len rounded up to 16). Keys are scored 16 at a time against every
 * row while their K rows sit in L1, and P V shares each V load among up to
 * 8 rows, so a prefill reads the KV cache once per block of rows instead of
 * once per (token, head). A row's result does not depend on the other rows
 * of the call (same operations, same order), so grouping never changes a
 * token's output. */
#define FAST_ATTN_MAX_ROWS 64
void fast_attn_rows_avx512(const float *const *q, const int64_t *len, int32_t nr,
                           const void *kc, const void *vc, int64_t row_stride, int32_t hd,
                           float scale, float *scores, int64_t scores_ld, float *const *out,
                           bool kv_f16);

/* The AVX2 + FMA + F16C versions (fast-avx2.c): same contracts and the
 * same q8 row format; the int8 products give bit-identical integer sums. */
void fast_q8_quantize_avx2(const float *x, int64_t cols, uint8_t *out);
void fast_q4_q8_avx2(const struct kb_weight *w, int64_t r0, int64_t r1,
                     const uint8_t *act, size_t act_stride, const int32_t *tok, int32_t n,
                     float *y, int64_t y_stride);
void fast_q4_f32_avx2(const struct kb_weight *w, int64_t r0, int64_t r1,
                      const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                      float *y, int64_t y_stride, float *rowbuf);
void fast_dense_f32_avx2(const struct kb_weight *w, int64_t r0, int64_t r1,
                         const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                         float *y, int64_t y_stride, float *xbuf);
void fast_gdn_head_avx2(float *S, const float *q, const float *k, const float *v,
                        float beta, float decay, int32_t dk, int32_t dv, float *o);
void fast_swiglu_avx2(float *y, const float *g, const float *u, int64_t count);
void fast_f32_to_f16_avx2(uint16_t *dst, const float *src, int64_t count);
void fast_attn_row_avx2(const float *q, const void *kc, const void *vc, int64_t row_stride,
                        int64_t len, int32_t hd, float scale, float *scores, float *out,
                        bool kv_f16);
void fast_attn_rows_avx2(const float *const *q, const int64_t *len, int32_t nr,
                         const void *kc, const void *vc, int64_t row_stride, int32_t hd,
                         float scale, float *scores, int64_t scores_ld, float *const *out,
                         bool kv_f16);

/* Norms, RoPE and elementwise rows (fast-elem-avx512.c, fast-elem-avx2.c;
 * fast-elem.c splits rows and threads). cvt_row: a dense f32 / f16 / bf16
 * row to floats, exactly. rmsnorm_row: y = (x * rsqrt(mean(x^2) + eps)) * w
 * (sum in double; y may equal x). rope_head: pairs (i, i + half) of one
 * head rotated by cs[i] / sn[i]. add: y = a + b. mul_sigmoid: y = x *
 * sigmoid(g) (y may equal x or g). */
void fast_cvt_row_avx512(float *out, const void *src, enum kb_wtype type, int64_t count);
void fast_rmsnorm_row_avx512(float *y, const float *x, const float *w, int32_t dim, float eps);
void fast_rope_head_avx512(float *x, const float *cs, const float *sn, int32_t half);
void fast_add_avx512(float *y, const float *a, const float *b, int64_t count);
void fast_mul_sigmoid_avx512(float *y, const float *x, const float *g, int64_t count);
void fast_cvt_row_avx2(float *out, const void *src, enum kb_wtype type, int64_t count);
void fast_rmsnorm_row_avx2(float *y, const float *x, const float *w, int32_t dim, float eps);
void fast_rope_head_avx2(float *x, const float *cs, const float *sn, int32_t half);
void fast_add_avx2(float *y, const float *a, const float *b, int64_t count);
void fast_mul_sigmoid_avx2(float *y, const float *x, const float *g, int64_t count);

/* The avx2-vnni level's W4 x int8 product (fast-avx2-vnni.c): the avx2
 * kernel with AVX-VNNI's vpdpbusd, bit-identical results; the level's
 * other kernels are the avx2 ones. */
void fast_q4_q8_avx2vnni(const struct kb_weight *w, int64_t r0, int64_t r1,
                         const uint8_t *act, size_t act_stride, const int32_t *tok, int32_t n,
                         float *y, int64_t y_stride);

/* One ISA's kernels; fast.c picks the table once at backend creation. */
struct fast_kernels {
    void (*q8_quantize)(const float *x, int64_t cols, uint8_t *out);
    void (*q4_q8)(const struct kb_weight *w, int64_t r0, int64_t r1,
                  const uint8_t *act, size_t act_stride, const int32_t *tok, int32_t n,
                  float *y, int64_t y_stride);
    void (*q4_f32)(const struct kb_weight *w, int64_t r0, int64_t r1,
                   const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                   float *y, int64_t y_stride, float *rowbuf);
    void (*dense_f32)(const struct kb_weight *w, int64_t r0, int64_t r1,
                      const float *x, int64_t x_stride, const int32_t *tok, int32_t n,
                      float *y, int64_t y_stride, float *xbuf);
    void (*gdn_head)(float *S, const float *q, const float *k, const float *v,
                     float beta, float decay, int32_t dk, int32_t dv, float *o);
    /* the chunked GDN form's products (fast-gdn.h) */
    void (*gdn_gemm)(const float *X, int64_t ldx, const float *Y, int64_t ldy, float *Z,
                     int64_t ldz, int32_t m, int32_t n, int32_t kd, int flags, const float *zs);
    void (*gdn_solve)(const float *L, int64_t ldl, float *R, int64_t ldr, int32_t m, int32_t n);
    void (*gdn_axpby)(float *d, float a, const float *x, float b, const float *y, int32_t n);
    void (*swiglu)(float *y, const float *g, const float *u, int64_t count);
    void (*f32_to_f16)(uint16_t *dst, const float *src, int64_t count);
    void (*attn_row)(const float *q, const void *kc, const void *vc, int64_t row_stride,
                     int64_t len, int32_t hd, float scale, float *scores, float *out,
                     bool kv_f16);
    /* NULL: attention runs row by row through attn_row */
    void (*attn_rows)(const float *const *q, const int64_t *len, int32_t nr, const void *kc,
                      const void *vc, int64_t row_stride, int32_t hd, float scale,
                      float *scores, int64_t scores_ld, float *const *out, bool kv_f16);
    /* norms, RoPE, elementwise (fast-elem.c) */
    void (*cvt_row)(float *out, const void *src, enum kb_wtype type, int64_t count);
    void (*rmsnorm_row)(float *y, const float *x, const float *w, int32_t dim, float eps);
    void (*rope_head)(float *x, const float *cs, const float *sn, int32_t half);
    void (*add)(float *y, const float *a, const float *b, int64_t count);
    void (*mul_sigmoid)(float *y, const float *x, const float *g, int64_t count);
};

#endif
