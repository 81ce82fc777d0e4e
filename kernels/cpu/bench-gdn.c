/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Microbenchmark: one Gated DeltaNet value head, recurrent form
 * (fast_gdn_head_*, one token at a time) vs the chunked form
 * (fast_gdn_chunked), on the calling thread, thread CPU time per
 * (head, token). Not a test; run by hand (docs/performance.md, CPU,
 * "Chunked GDN prefill"):
 *     bench-kernels-gdn [avx512|avx2] [dk] [dv] [rounds]
 * Token counts 1 .. 512 per call. The floating-point mode is
 * set as gdn_job sets it (FTZ | DAZ); decays as on a trained model's
 * heads (g from -0.01 to -3 per token).
 */
#include "kernels/cpu/fast-gdn.h"
#include "kernels/cpu/fast.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xmmintrin.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float rnd_f(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((uint32_t)(rng >> 16) & 0xffffff) / 8388608.0f - 1.0f;
}

static double thread_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void l2norm(float *x, int32_t d, float scale)
{
    double s = 0.0;
    for (int32_t i = 0; i < d; i++)
        s += (double)x[i] * x[i];
    const float inv = (float)(1.0 / sqrt(s + 1e-6)) * scale;
    for (int32_t i = 0; i < d; i++)
        x[i] *= inv;
}

int main(int argc, char **argv)
{
    const int avx2 = argc > 1 && !strcmp(argv[1], "avx2");
    const int32_t dk = argc > 2 ? atoi(argv[2]) : 128, dv = argc > 3 ? atoi(argv[3]) : 128;
    const int rounds = argc > 4 ? atoi(argv[4]) : 3;
    const int32_t need = avx2 ? KB_CPU_ISA_AVX2 : KB_CPU_ISA_AVX512;
    if (kb_cpu_fast_best_isa() < need || dk <= 0 || dv <= 0 || dv % 16) {
        fprintf(stderr, "bench-kernels-gdn: ISA not on this CPU or bad shape\n");
        return 77;
    }
    struct fast_kernels kn = {
        .gdn_head = avx2 ? fast_gdn_head_avx2 : fast_gdn_head_avx512,
        .gdn_gemm = avx2 ? fast_gdn_gemm_avx2 : fast_gdn_gemm_avx512,
        .gdn_solve = avx2 ? fast_gdn_solve_avx2 : fast_gdn_solve_avx512,
        .gdn_axpby = avx2 ? fast_gdn_axpby_avx2 : fast_gdn_axpby_avx512,
    };
    enum { NMAX = 512 };
    const int64_t stride = 2 * (int64_t)dk + dv;
    float *in = malloc((size_t)(NMAX * stride) * sizeof(float));
    float *b = malloc(NMAX * sizeof(float)), *a = malloc(NMAX * sizeof(float));
    float *o = malloc((size_t)NMAX * (size_t)dv * sizeof(float));
    float *S = aligned_alloc(64, (size_t)dk * (size_t)dv * sizeof(float));
    float *scr = aligned_alloc(64, fast_gdn_chunked_scratch(dk, dv) * sizeof(float) + 64);
    if (!in || !b || !a || !o || !S || !scr)
        return 1;
    for (int64_t t = 0; t < NMAX; t++) {
        float *r = in + t * stride;
        for (int64_t i = 0; i < stride; i++)
            r[i] = rnd_f();
        l2norm(r, dk, 1.0f / sqrtf((float)dk));
        l2norm(r + dk, dk, 1.0f);
        b[t] = rnd_f() * 2.0f;
        a[t] = rnd_f() * 3.0f - 1.0f;
    }
    const float A = 0.5f, dt_bias = 0.0f;
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    printf("gdn head dk %d dv %d, %s, one thread, thread CPU time, best of %d\n", dk, dv,
           avx2 ? "avx2" : "avx512", rounds);
    printf("%6s %16s %16s %8s\n", "tokens", "recurrent us/tok", "chunked us/tok", "ratio");
    const int32_t ns[] = { 1, 2, 4, 6, 8, 16, 32, 64, 128, 512 };
    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        const int32_t n = ns[k];
        const int reps = n >= 64 ? 4 : 512 / n;
        double best[2] = { 1e30, 1e30 };
        for (int rd = 0; rd < rounds; rd++) {
            for (int form = 0; form < 2; form++) {
                for (int64_t i = 0; i < (int64_t)dk * dv; i++)
                    S[i] = rnd_f() * 0.1f;
                double t0 = thread_s();
                for (int rep = 0; rep < reps; rep++) {
                    if (form == 0) {
                        for (int32_t t = 0; t < n; t++) {
                            const float *r = in + (int64_t)t * stride;
                            const float at = a[t] + dt_bias;
                            const float sp = at > 20.0f ? at : log1pf(expf(at));
                            kn.gdn_head(S, r, r + dk, r + 2 * dk, 1.0f / (1.0f + expf(-b[t])),
                                        expf(-A * sp), dk, dv, o + (int64_t)t * dv);
                        }
                    } else {
                        const struct fast_gdn_seq s = {
                            .q = in, .k = in + dk, .v = in + 2 * dk, .in_stride = stride,
                            .b = b, .a = a, .gate_stride = 1, .A = A, .dt_bias = dt_bias,
                            .o = o, .o_stride = dv, .n = n, .dk = dk, .dv = dv,
                        };
                        fast_gdn_chunked(&kn, S, &s, scr);
                    }
                }
                const double us = (thread_s() - t0) * 1e6 / ((double)reps * n);
                if (us < best[form])
                    best[form] = us;
            }
        }
        printf("%6d %16.3f %16.3f %8.2f\n", n, best[0], best[1], best[0] / best[1]);
    }
    _mm_setcsr(csr);
    free(in); free(b); free(a); free(o); free(S); free(scr);
    return 0;
}
