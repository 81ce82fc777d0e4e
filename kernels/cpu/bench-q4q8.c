/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Microbenchmark of the W4 x int8 kernel at each level this CPU has
 * (avx2 with the emulated vpdpbusd, avx2-vnni, avx512), one thread, on
 * one random W4 g32 weight (bf16 scales) and n random token rows:
 *
 *     bench-kernels-q4q8 [ROWS [COLS [N [ROUNDS]]]]   (2048 2048 1 9)
 *
 * Time is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so
 * other processes on a shared machine cost this one little beyond cache
 * and memory-bus sharing; each round calls every level once, in turn
 * (alternating, so a slow period hits all levels alike), each call
 * repeating the whole product for >= 40 ms. Prints GMAC/s (rows x cols x
 * n per product) per level and round, then the best and median per level
 * and the median over rounds of each level's ratio to avx2 in the same
 * round (the number least moved by a load that changes between rounds).
 * The outputs of the levels are compared too: avx2-vnni must equal avx2
 * bit for bit (exit 1 if not). Not a test (not run by meson test); built
 * with `meson compile -C BUILD bench-kernels-q4q8`.
 */
#include "kernels/cpu/fast.h"
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/ref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*q4q8_fn)(const struct kb_weight *w, int64_t r0, int64_t r1, const uint8_t *act,
                        size_t act_stride, const int32_t *tok, int32_t n, float *y,
                        int64_t y_stride);

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static double thread_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const int64_t rows = argc > 1 ? atoll(argv[1]) : 2048;
    const int64_t cols = argc > 2 ? atoll(argv[2]) : 2048;
    const int32_t n = argc > 3 ? atoi(argv[3]) : 1;
    const int rounds = argc > 4 ? atoi(argv[4]) : 9;
    if (rows < 1 || cols < 32 || cols % 32 || n < 1 || rounds < 1 || rounds > 99) {
        fprintf(stderr, "usage: %s [ROWS [COLS (multiple of 32) [N [ROUNDS (1..99)]]]]\n", argv[0]);
        return 2;
    }
    static const struct { int32_t isa; q4q8_fn fn; } all[] = {
        { KB_CPU_ISA_AVX2, fast_q4_q8_avx2 },
        { KB_CPU_ISA_AVX2_VNNI, fast_q4_q8_avx2vnni },
        { KB_CPU_ISA_AVX512, fast_q4_q8_avx512 },
    };
    int nl = 0, li[3];
    for (int i = 0; i < 3; i++)
        if (kb_cpu_isa_supported(all[i].isa))
            li[nl++] = i;
    if (!nl) {
        printf("skip: no SIMD level of the fast backend on this CPU\n");
        return 77;
    }
    fast_q4_eps_init();
    uint8_t *wd = malloc((size_t)(rows * cols / 2));
    uint16_t *sc = malloc((size_t)(rows * cols / 32) * 2);
    const size_t rb = fast_q8_row_bytes(cols);
    uint8_t *act = malloc(rb * (size_t)n);
    float *x = malloc((size_t)cols * sizeof(float));
    float *y[3];
    for (int i = 0; i < 3; i++)
        y[i] = calloc((size_t)(n * rows), sizeof(float));
    if (!wd || !sc || !act || !x || !y[0] || !y[1] || !y[2])
        return 1;
    for (int64_t i = 0; i < rows * cols / 2; i++)
        wd[i] = (uint8_t)rnd();
    for (int64_t i = 0; i < rows * cols / 32; i++)
        sc[i] = kb_f32_to_bf16(0.01f + 0.02f * (float)(rnd() & 0xffff) / 65536.0f);
    for (int32_t t = 0; t < n; t++) {
        for (int64_t c = 0; c < cols; c++)
            x[c] = (float)(rnd() & 0xffffff) / 8388608.0f - 1.0f;
        fast_q8_quantize_avx2(x, cols, act + (size_t)t * rb);
    }
    struct kb_weight w = { .type = KB_WTYPE_Q4G32, .rows = rows, .cols = cols, .data = wd,
                           .scales = sc, .scale_type = KB_WTYPE_BF16 };
    const double macs = (double)rows * (double)cols * (double)n;
    /* repetitions per timed call: >= 40 ms on the first level */
    int reps = 1;
    for (;;) {
        double t0 = thread_s();
        for (int r = 0; r < reps; r++)
            all[li[0]].fn(&w, 0, rows, act, rb, NULL, n, y[0], rows);
        if (thread_s() - t0 >= 0.04 || reps >= 1 << 20)
            break;
        reps *= 2;
    }
    printf("W4 x int8, %lld x %lld weight (%.2f MB incl. scales), n %d, %d reps per call, "
           "one thread, thread CPU time:\n", (long long)rows, (long long)cols,
           (double)(rows * cols / 2 + rows * cols / 16) / 1e6, n, reps);
    double g[3][99], ratio[3][99];
    for (int k = 0; k < rounds; k++) {
        printf("  round %d:", k + 1);
        for (int j = 0; j < nl; j++) {
            const int i = li[j];
            double t0 = thread_s();
            for (int r = 0; r < reps; r++)
                all[i].fn(&w, 0, rows, act, rb, NULL, n, y[i], rows);
            g[i][k] = macs * reps / (thread_s() - t0) / 1e9;
            ratio[i][k] = g[i][k] / g[li[0]][k];
            printf("  %s %.2f", kb_cpu_isa_name(all[i].isa), g[i][k]);
        }
        printf(" GMAC/s\n");
    }
    for (int j = 0; j < nl; j++) {
        const int i = li[j];
        qsort(g[i], (size_t)rounds, sizeof(double), cmp_double);
        qsort(ratio[i], (size_t)rounds, sizeof(double), cmp_double);
        printf("  %-12s best %.2f  median %.2f GMAC/s  median ratio to %s %.3f\n",
               kb_cpu_isa_name(all[i].isa), g[i][rounds - 1], g[i][rounds / 2],
               kb_cpu_isa_name(all[li[0]].isa), ratio[i][rounds / 2]);
    }
    int rc = 0;
    if (kb_cpu_isa_supported(KB_CPU_ISA_AVX2_VNNI) &&
        memcmp(y[0], y[1], (size_t)(n * rows) * sizeof(float))) {
        printf("FAIL: avx2-vnni and avx2 outputs differ\n");
        rc = 1;
    }
    for (int i = 0; i < 3; i++)
        free(y[i]);
    free(wd);
    free(sc);
    free(act);
    free(x);
    return rc;
}
