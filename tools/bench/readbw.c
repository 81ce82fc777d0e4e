/* SPDX-License-Identifier: Apache-2.0 */
/*
 * readbw: the machine's memory read bandwidth, STREAM-style (a "sum" kernel
 * rather than copy/triad, because decoding only reads weights). Each of N
 * threads streams its slice of a buffer much larger than the caches with
 * 512-bit (or 256-bit) loads into independent accumulators; the best of
 * --reps passes is reported in GB/s (1e9 bytes), as STREAM does.
 *
 *   readbw [--mib 2048] [--threads N] [--reps 10] [--json]
 *
 * Built standalone by tools/bench/compare (cc -O2 -pthread).
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct job {
    const uint8_t *p;
    size_t bytes;
    double sink;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

__attribute__((target("avx512f")))
static double sum512(const uint8_t *p, size_t bytes)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 256 <= bytes; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(p + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(p + i + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(p + i + 192)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    return (double)_mm512_reduce_add_epi64(a0);
}

__attribute__((target("avx2")))
static double sum256(const uint8_t *p, size_t bytes)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= bytes; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    int64_t t[4];
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    return (double)(t[0] + t[1] + t[2] + t[3]);
}

static int use512;

static void *run(void *arg)
{
    struct job *j = arg;
    j->sink = use512 ? sum512(j->p, j->bytes) : sum256(j->p, j->bytes);
    return NULL;
}

int main(int argc, char **argv)
{
    size_t mib = 2048;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), reps = 10, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc)
            mib = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else {
            fprintf(stderr, "usage: readbw [--mib N] [--threads N] [--reps N] [--json]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > 256 || reps < 1 || mib < 64) {
        fprintf(stderr, "readbw: bad arguments\n");
        return 2;
    }
    __builtin_cpu_init();
    use512 = __builtin_cpu_supports("avx512f");
    size_t bytes = mib << 20;
    uint8_t *buf = aligned_alloc(4096, bytes);
    if (!buf) {
        fprintf(stderr, "readbw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    memset(buf, 1, bytes);                       /* fault every page in  */
    struct job jobs[256];
    pthread_t tid[256];
    size_t slice = bytes / (size_t)threads / 4096 * 4096;
    double best = 0.0, sink = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            jobs[i] = (struct job){ buf + (size_t)i * slice, slice, 0.0 };
            if (i)
                pthread_create(&tid[i], NULL, run, &jobs[i]);
        }
        run(&jobs[0]);
        for (int i = 1; i < threads; i++)
            pthread_join(tid[i], NULL);
        double dt = now() - t0;
        double gbs = (double)slice * threads / dt * 1e-9;
        if (gbs > best)
            best = gbs;
        for (int i = 0; i < threads; i++)
            sink += jobs[i].sink;
    }
    if (json)
        printf("{\"read_gb_s\":%.3f,\"threads\":%d,\"mib\":%zu,\"isa\":\"%s\",\"check\":%.0f}\n",
               best, threads, mib, use512 ? "avx512" : "avx2", sink > 0 ? 1.0 : 0.0);
    else
        printf("read bandwidth: %.2f GB/s (%d threads, %zu MiB, best of %d, %s)\n", best, threads,
               mib, reps, use512 ? "avx512" : "avx2");
    free(buf);
    return 0;
}
