/* SPDX-License-Identifier: Apache-2.0 */
/*
 * quantize_q8g32 and the MMQ GEMM of mmq-w4.cu EXECUTED on the CPU, without
 * a GPU, for the K-tail ("_kt") tiles and a plain tile: the kernel source is
 * compiled as C++ against the CPU emulation of compat.h (kernels/gpu/emu.h:
 * a pthread per GPU thread, blocks one after another, __shared__ as static
 * storage, a block barrier for gpu_sync) and compared with the scalar CPU
 * reference.
 *
 * The int8 matrix tile is emulated by its contract, not by a vendor's
 * register layout: a fragment remembers where its 16 x 32 tile lives in
 * shared memory, gpu_mma_i8 computes the lane's 8 accumulators from it, and
 * lane l holds row l/2, columns 8 (l%2) .. 8 (l%2) + 7. So this proves the
 * staging (bounds, the zero-filled groups past K, scales), the loop over
 * stages and the epilogue as written; the fragment layouts of gfx1151 /
 * sm_90 are checked on the GPU (gpu-check), where they passed for the
 * plain tiles. Bound per output as gpu-check's: 0.5 sum_c |w_c| d_g(c)
 * (activation rounding) + 2^-8 sum_c |w_c x_c| (bf16 rounding of the
 * reference's weights) + 1e-6; worst error / bound printed. Exit 0 pass,
 * 1 fail.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels/backend.h"
}

/* ---- compat.h's CPU emulation (emu.h, the int8 tile by its contract) ---- */
#define GPU_EMU 1
#include "kernels/gpu/compat.h"

#include "kernels/gpu/mmq-w4.cu"

struct mm_args {
    const float *x;
    signed char *xq;
    float *xd, *y;
    const unsigned int *wq;
    const unsigned short *ws;
    int m, n, k;
};

static void body_quant(const void *p)
{
    const mm_args *a = (const mm_args *)p;
    quantize_q8g32(a->x, a->k, nullptr, a->m, a->k, a->xq, a->xd);
}

#define MM_BODY(NAME)                                                                 \
    static void body_##NAME(const void *p)                                            \
    {                                                                                 \
        const mm_args *a = (const mm_args *)p;                                        \
        NAME(a->xq, a->xd, a->wq, a->ws, a->y, a->m, a->n, a->k, nullptr, nullptr);  \
    }
MM_BODY(mmq_w4g32_32x64_w2x2_kt)
MM_BODY(mmq_w4g32_128x64_w4x2_kt)
MM_BODY(mmq_w4g32_32x64_w2x2)

struct tile { const char *name; emu_body body; int bm, bn, threads; };
static const tile tiles[] = {
    { "mmq_w4g32_32x64_w2x2_kt", body_mmq_w4g32_32x64_w2x2_kt, 32, 64, 128 },
    { "mmq_w4g32_128x64_w4x2_kt", body_mmq_w4g32_128x64_w4x2_kt, 128, 64, 256 },
    { "mmq_w4g32_32x64_w2x2", body_mmq_w4g32_32x64_w2x2, 32, 64, 128 },
};

static int failures, checks;
static uint64_t rng = 0x13198a2e03707344ull;

static uint64_t next()
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static float rnd() { return (float)((double)(next() >> 11) * (2.0 / 9007199254740992.0) - 1.0); }

template <typename T> static T *xalloc(size_t n)
{
    T *p = (T *)calloc(n ? n : 1, sizeof(T));
    if (!p) {
        fprintf(stderr, "test-gpu-emu-mmq: out of memory\n");
        exit(2);
    }
    return p;
}

static void check(kb_backend *ref, const tile &t, int m, int n, int k)
{
    const int groups = k / 32;
    unsigned int *wq = xalloc<unsigned int>((size_t)n * k / 8);
    unsigned short *ws = xalloc<unsigned short>((size_t)n * groups);
    float *x = xalloc<float>((size_t)m * k), *xd = xalloc<float>((size_t)m * groups);
    float *y = xalloc<float>((size_t)m * n), *want = xalloc<float>((size_t)m * n);
    signed char *xq = xalloc<signed char>((size_t)m * k);
    for (size_t i = 0; i < (size_t)n * k / 8; i++)
        wq[i] = (unsigned int)next();
    for (size_t i = 0; i < (size_t)n * groups; i++)
        ws[i] = kb_f32_to_bf16(0.004f + 0.02f * (0.5f + 0.5f * rnd()));
    for (size_t i = 0; i < (size_t)m * k; i++)
        x[i] = rnd() * (i % 7 == 0 ? 4.0f : 1.0f);
    for (size_t i = 0; i < (size_t)m * n; i++)
        y[i] = NAN;                      /* poisoned */
    kb_weight w = {};
    w.type = KB_WTYPE_Q4G32;
    w.rows = n;
    w.cols = k;
    w.data = wq;
    w.scales = ws;
    w.scale_type = KB_WTYPE_BF16;
    if (ref->ops->matmul(ref, &w, x, m, want)) {
        fprintf(stderr, "test-gpu-emu-mmq: reference matmul failed: %s\n", ref->ops->last_error(ref));
        exit(2);
    }
    mm_args a = { x, xq, xd, y, wq, ws, m, n, k };
    emu_run((unsigned)((m * groups + 255) / 256), 1, 256, body_quant, &a);
    emu_run((unsigned)((n + t.bn - 1) / t.bn), (unsigned)((m + t.bm - 1) / t.bm), t.threads, t.body, &a);
    double worst = 0;
    long bad = 0;
    for (int r = 0; r < m; r++)
        for (int c = 0; c < n; c++) {
            double swd = 0, swx = 0;
            for (int j = 0; j < k; j++) {
                int nib = (int)((wq[((size_t)c * k + j) / 8] >> (4 * (j % 8))) & 15u) - 8;
                double wv = nib * (double)gpu_bf16_to_f32(ws[(size_t)c * groups + j / 32]);
                swd += fabs(wv) * xd[(size_t)r * groups + j / 32];
                swx += fabs(wv * x[(size_t)r * k + j]);
            }
            double bound = 0.5 * swd + ldexp(swx, -8) + 1e-6;
            double d = fabs((double)y[(size_t)r * n + c] - want[(size_t)r * n + c]);
            if (!(d <= bound))
                bad++;
            worst = isnan(d) ? INFINITY : fmax(worst, d / bound);
        }
    checks++;
    failures += bad != 0;
    printf("%s %-26s %4dx%4dx%4d: worst err/bound %.3f, %ld of %d out of bounds\n", bad ? "FAIL" : "ok  ",
           t.name, m, n, k, worst, bad, m * n);
    free(wq);
    free(ws);
    free(x);
    free(xd);
    free(y);
    free(want);
    free(xq);
}

int main()
{
    kb_backend *ref = nullptr;
    kb_cpu_params cp = {};
    cp.n_threads = 1;
    if (kb_cpu_ref_create(&cp, &ref)) {
        fprintf(stderr, "test-gpu-emu-mmq: cannot create the CPU reference backend\n");
        return 2;
    }
    check(ref, tiles[0], 37, 130, 96);       /* K tail: 3 groups of a 4-group stage */
    check(ref, tiles[0], 9, 64, 64);
    check(ref, tiles[0], 33, 70, 160);       /* one full stage + 1 group */
    check(ref, tiles[0], 20, 96, 256);       /* "_kt" where no tail is needed */
    check(ref, tiles[1], 100, 130, 96);
    check(ref, tiles[1], 129, 64, 160);
    check(ref, tiles[2], 37, 130, 256);      /* a plain tile, K % 128 == 0 */
    ref->ops->destroy(ref);
    emu_pool_stop();
    printf("RESULT: %d/%d checks passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
