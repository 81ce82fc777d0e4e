/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Decode matrix-vector product with W4A16 g32 weights, read in the
 * checkpoint's own packed layout (no second copy, no repacking):
 *
 *     y[b][r] = sum_c W[r][c] * x[b][c]        b < B (1..8 batch columns)
 *
 * Why it is shaped like this. At batch 1..8 the product is bound by reading
 * the weights once: 0.5 byte per weight + 2 bytes of scale per 32. One group
 * of 32 columns of one row is exactly 16 bytes (4 int32 words), so a lane
 * owns whole groups and every weight load is one 16-byte load; the lanes of
 * one row read consecutive groups, i.e. a contiguous, coalesced stretch of
 * 16 * lpr bytes (lpr = lanes per row, 8..32, chosen by the host so that
 * narrow matrices such as the expert down projection, K = 512 = 16 groups,
 * still keep every lane busy). Each lane works on R rows at once so the 32
 * activations of its group are loaded once (from L1/L2) and used R times.
 *
 * The nibble -> float conversion is the expensive part on a GPU with
 * 4.8 TB/s of memory (H200: ~10^13 weights/s to keep up with). Instead of
 * shift + mask + int->float + subtract per weight, each nibble is masked
 * into bits 16..19 of the mantissa of 1.0f, giving f = 1 + n/128 with one
 * logic op, and
 *     sum (n - 8) x  =  128 * (sum f x - sum x) - 8 * sum x,
 * where sum x is shared by all R rows. The cancellation in (sum f x - sum x)
 * costs ~5 of fp32's 24 bits, far below the bf16 precision of the weights.
 * The scale multiplies the group's partial sum once (fp32), whereas the CPU
 * reference rounds every dequantised weight to bf16; the difference is
 * within bf16 rounding of the products and is what the tests' tolerance
 * covers.
 *
 * Two activation formats:
 *   gemv_w4g32_b*_r*     fp32 activations (A16 semantics; the reference's
 *                        math up to rounding). Costs ~3 ALU ops per weight:
 *                        bandwidth-bound on gfx1151 (256 GB/s, ~18 ops per
 *                        weight available) but ALU-bound on an H200 (measured
 *                        1.6 TB/s of 4.3 TB/s at batch 1).
 *   gemv_w4g32_q8_b*_r*  int8 activations quantised per 32-group with one
 *                        fp32 scale (quantize_q8g32 in mmq-w4.cu, nibble
 *                        order), int8 dot products (dp4a / v_dot4_i32_iu8):
 *                        2 masks + 2 dot4 per 8 weights, so it stays
 *                        bandwidth-bound on NVIDIA too. Its error is the MMQ
 *                        kernel's (activation rounding, ~1 % relative RMS on
 *                        random data, small next to the int4 weight error).
 *
 * Expert slices: grid.y selects a slice z; with `ids` the slice's weights
 * are expert e = ids[z], found either in a stacked [E][rows][K/8] tensor
 * (wtab NULL) or through a table of device addresses, wtab[2e] = the
 * expert's packed words and wtab[2e + 1] = its scales (experts loaded as
 * separate tensors: MoE decode reads the routing from device memory, one
 * launch for all top-k experts of all tokens and no host round trip). x
 * moves by x_slice floats per x_group slices (x_group = top-k: the k slices
 * of one token share its activation row), y by y_slice per slice.
 */
#include "kernels/gpu/compat.h"

#define GEMV_WARPS 4

/* Slice z's weights: expert ids[z] (or z) of a stacked tensor at wq / ws,
 * or through the address table wtab (see above). */
struct gemv_w { const unsigned int *q; const unsigned short *s; };

static __device__ __forceinline__ gemv_w
gemv_expert(const unsigned int *wq, const unsigned short *ws, const int *GPU_RESTRICT ids,
            const unsigned long long *GPU_RESTRICT wtab, int z, int n_rows, int k)
{
    const long long e = ids ? (long long)ids[z] : (long long)z;
    if (wtab)
        return gemv_w{ (const unsigned int *)wtab[2 * e], (const unsigned short *)wtab[2 * e + 1] };
    return gemv_w{ wq + e * (long long)n_rows * (k >> 3), ws + e * (long long)n_rows * (k >> 5) };
}

template <int B, int R>
static __device__ __forceinline__ void
gemv_w4g32(const unsigned int *GPU_RESTRICT wq, const unsigned short *GPU_RESTRICT ws,
           const float *GPU_RESTRICT x, float *GPU_RESTRICT y, int n_rows, int k, int lpr,
           const int *GPU_RESTRICT ids, const unsigned long long *GPU_RESTRICT wtab,
           int x_group, long long x_slice, long long y_slice)
{
    const int groups = k >> 5;
    const int lane = gpu_lane(), warp = gpu_tid_x() / GPU_WARP;
    const int sub = lane & (lpr - 1), slot = lane / lpr, slots = GPU_WARP / lpr;
    const int row0 = ((gpu_bid_x() * GEMV_WARPS + warp) * slots + slot) * R;
    const int z = gpu_bid_y();
    const gemv_w ew = gemv_expert(wq, ws, ids, wtab, z, n_rows, k);
    wq = ew.q;
    ws = ew.s;
    x += (long long)(z / x_group) * x_slice;
    y += z * y_slice;

    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++)
            acc[r][b] = 0.0f;

    for (int g = sub; g < groups; g += lpr) {
        gpu_u32x4 w[R];
        float s[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            int row = row0 + r < n_rows ? row0 + r : n_rows - 1;
            w[r] = ((const gpu_u32x4 *)(wq + (long long)row * (k >> 3)))[g];
            s[r] = gpu_bf16_to_f32(ws[(long long)row * groups + g]);
        }
#pragma unroll
        for (int b = 0; b < B; b++) {
            const gpu_f32x4 *xp = (const gpu_f32x4 *)(x + (long long)b * k + (g << 5));
            float xv[32];
            float xs = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                gpu_f32x4 t = xp[j];
                xv[4 * j + 0] = t.x;
                xv[4 * j + 1] = t.y;
                xv[4 * j + 2] = t.z;
                xv[4 * j + 3] = t.w;
                xs += (t.x + t.y) + (t.z + t.w);
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                unsigned int wr[4] = { w[r].x, w[r].y, w[r].z, w[r].w };
                float d = 0.0f;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    unsigned int u = wr[j];
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        unsigned int v = i < 4 ? u << (16 - 4 * i) : u >> (4 * i - 16);
                        float f = gpu_as_float((v & 0x000F0000u) | 0x3F800000u);
                        d += f * xv[8 * j + i];
                    }
                }
                acc[r][b] += s[r] * (128.0f * (d - xs) - 8.0f * xs);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++)
            for (int m = lpr >> 1; m > 0; m >>= 1)
                acc[r][b] += gpu_shfl_xor_f(acc[r][b], m);

    if (sub == 0) {
#pragma unroll
        for (int r = 0; r < R; r++)
            if (row0 + r < n_rows)
#pragma unroll
                for (int b = 0; b < B; b++)
                    y[(long long)b * n_rows + row0 + r] = acc[r][b];
    }
}

#define GEMV_INST(B, R)                                                                   \
    GPU_KERNEL(gemv_w4g32_b##B##_r##R, GEMV_WARPS * GPU_WARP)                             \
    (const unsigned int *wq, const unsigned short *ws, const float *x, float *y,          \
     int n_rows, int k, int lpr, const int *ids, const unsigned long long *wtab,          \
     int x_group, long long x_slice, long long y_slice)                                   \
    {                                                                                     \
        gemv_w4g32<B, R>(wq, ws, x, y, n_rows, k, lpr, ids, wtab, x_group, x_slice,       \
                         y_slice);                                                        \
    }

GEMV_INST(1, 1) GEMV_INST(2, 1) GEMV_INST(3, 1) GEMV_INST(4, 1)
GEMV_INST(5, 1) GEMV_INST(6, 1) GEMV_INST(7, 1) GEMV_INST(8, 1)
GEMV_INST(1, 4) GEMV_INST(2, 4) GEMV_INST(3, 4) GEMV_INST(4, 4)
GEMV_INST(5, 4) GEMV_INST(6, 4) GEMV_INST(7, 4) GEMV_INST(8, 4)

/* int8-activation variant: xq [B][k] int8 in nibble order (per 8 columns:
 * 0,2,4,6,1,3,5,7 — the order quantize_q8g32 writes), xd [B][k/32]. The
 * packed word's low nibbles (& 0x0F0F0F0F) are columns 0,2,4,6 and the high
 * ones columns 1,3,5,7, unsigned 0..15, so
 *     sum (n - 8) q  =  dot4(lo, q_even) + dot4(hi, q_odd) - 8 * sum q. */
template <int B, int R>
static __device__ __forceinline__ void
gemv_w4g32_q8(const unsigned int *GPU_RESTRICT wq, const unsigned short *GPU_RESTRICT ws,
              const signed char *GPU_RESTRICT xq, const float *GPU_RESTRICT xd,
              float *GPU_RESTRICT y, int n_rows, int k, int lpr, const int *GPU_RESTRICT ids,
              const unsigned long long *GPU_RESTRICT wtab, int x_group, long long x_slice,
              long long y_slice)
{
    const int groups = k >> 5;
    const int lane = gpu_lane(), warp = gpu_tid_x() / GPU_WARP;
    const int sub = lane & (lpr - 1), slot = lane / lpr, slots = GPU_WARP / lpr;
    const int row0 = ((gpu_bid_x() * GEMV_WARPS + warp) * slots + slot) * R;
    const int z = gpu_bid_y();
    const gemv_w ew = gemv_expert(wq, ws, ids, wtab, z, n_rows, k);
    wq = ew.q;
    ws = ew.s;
    xq += (long long)(z / x_group) * x_slice;
    xd += (long long)(z / x_group) * (x_slice >> 5);
    y += z * y_slice;

    float acc[R][B];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++)
            acc[r][b] = 0.0f;

    for (int g = sub; g < groups; g += lpr) {
        gpu_u32x4 w[R];
        float s[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            int row = row0 + r < n_rows ? row0 + r : n_rows - 1;
            w[r] = ((const gpu_u32x4 *)(wq + (long long)row * (k >> 3)))[g];
            s[r] = gpu_bf16_to_f32(ws[(long long)row * groups + g]);
        }
#pragma unroll
        for (int b = 0; b < B; b++) {
            const gpu_u32x4 *xp = (const gpu_u32x4 *)(xq + (long long)b * k + (g << 5));
            const gpu_u32x4 x0 = xp[0], x1 = xp[1];
            const int xv[8] = { (int)x0.x, (int)x0.y, (int)x0.z, (int)x0.w,
                                (int)x1.x, (int)x1.y, (int)x1.z, (int)x1.w };
            int xs = 0;
#pragma unroll
            for (int j = 0; j < 8; j++)
                xs = gpu_dot4_i8(0x01010101, xv[j], xs);
            const float d = xd[(long long)b * groups + g];
#pragma unroll
            for (int r = 0; r < R; r++) {
                const unsigned int wr[4] = { w[r].x, w[r].y, w[r].z, w[r].w };
                int dot = 0;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    dot = gpu_dot4_i8((int)(wr[j] & 0x0F0F0F0Fu), xv[2 * j], dot);
                    dot = gpu_dot4_i8((int)((wr[j] >> 4) & 0x0F0F0F0Fu), xv[2 * j + 1], dot);
                }
                acc[r][b] += (s[r] * d) * (float)(dot - 8 * xs);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < B; b++)
            for (int m = lpr >> 1; m > 0; m >>= 1)
                acc[r][b] += gpu_shfl_xor_f(acc[r][b], m);

    if (sub == 0) {
#pragma unroll
        for (int r = 0; r < R; r++)
            if (row0 + r < n_rows)
#pragma unroll
                for (int b = 0; b < B; b++)
                    y[(long long)b * n_rows + row0 + r] = acc[r][b];
    }
}

/* x_slice is in activation elements (bytes of xq); xd moves by x_slice/32. */
#define GEMV_Q8_INST(B, R)                                                                \
    GPU_KERNEL(gemv_w4g32_q8_b##B##_r##R, GEMV_WARPS * GPU_WARP)                          \
    (const unsigned int *wq, const unsigned short *ws, const signed char *xq,             \
     const float *xd, float *y, int n_rows, int k, int lpr, const int *ids,               \
     const unsigned long long *wtab, int x_group, long long x_slice, long long y_slice)   \
    {                                                                                     \
        gemv_w4g32_q8<B, R>(wq, ws, xq, xd, y, n_rows, k, lpr, ids, wtab, x_group,        \
                            x_slice, y_slice);                                            \
    }

GEMV_Q8_INST(1, 1) GEMV_Q8_INST(2, 1) GEMV_Q8_INST(3, 1) GEMV_Q8_INST(4, 1)
GEMV_Q8_INST(5, 1) GEMV_Q8_INST(6, 1) GEMV_Q8_INST(7, 1) GEMV_Q8_INST(8, 1)
GEMV_Q8_INST(1, 4) GEMV_Q8_INST(2, 4) GEMV_Q8_INST(3, 4) GEMV_Q8_INST(4, 4)
GEMV_Q8_INST(5, 4) GEMV_Q8_INST(6, 4) GEMV_Q8_INST(7, 4) GEMV_Q8_INST(8, 4)
