/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tokenizer benchmark (not a test): vocabulary load time and single-thread
 * encode throughput on a corpus file, printed as one JSON line. Driven by
 * tools/bench/tokenizer.py, which runs HF tokenizers on the same file in
 * the same run and compares the ids.
 *
 *   tokenizer-bench MODEL_DIR CORPUS [REPEAT] [IDS_OUT]
 *
 * NUL bytes split CORPUS into documents that are encoded one call each (as
 * prompts arrive); the ids of all documents are written in order.
 */
#include "engine/text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static double cpu_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR CORPUS [REPEAT] [IDS_OUT]\n",
                argv[0]);
        return 2;
    }
    int repeat = argc > 3 ? atoi(argv[3]) : 5;
    if (repeat < 1)
        repeat = 1;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *text = malloc((size_t)n + 1);
    if (!text || fread(text, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);

    struct engine_error err = { 0 };
    struct tokenizer *tok;
    double best_load = 1e30, best_load_cpu = 1e30;
    for (int i = 0; i < 3; i++) {
        double t0 = now_ms(), c0 = cpu_ms();
        if (tokenizer_load(argv[1], &tok, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        double t1 = now_ms(), c1 = cpu_ms();
        if (t1 - t0 < best_load)
            best_load = t1 - t0;
        if (c1 - c0 < best_load_cpu)
            best_load_cpu = c1 - c0;
        if (i < 2)
            tokenizer_free(tok);
    }

    int32_t *ids = NULL;
    size_t n_ids = 0, cap_ids = 0;
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < repeat; r++) {
        n_ids = 0;
        double t0 = now_ms(), c0 = cpu_ms();
        for (long at = 0; at <= n;) {
            const char *doc = text + at;
            const char *end = memchr(doc, '\0', (size_t)(n - at));
            size_t len = end ? (size_t)(end - doc) : (size_t)(n - at);
            int32_t *d;
            size_t nd;
            if (tokenizer_encode(tok, doc, len, &d, &nd, &err) != 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            if (n_ids + nd > cap_ids) {
                cap_ids = (n_ids + nd) * 2;
                ids = realloc(ids, cap_ids * sizeof(*ids));
                if (!ids)
                    return 1;
            }
            memcpy(ids + n_ids, d, nd * sizeof(*d));
            n_ids += nd;
            free(d);
            at += (long)len + 1;
        }
        double t1 = now_ms(), c1 = cpu_ms();
        if (t1 - t0 < best)
            best = t1 - t0;
        if (c1 - c0 < best_cpu)
            best_cpu = c1 - c0;
    }
    if (argc > 4) {
        FILE *o = fopen(argv[4], "w");
        if (!o) {
            perror(argv[4]);
            return 1;
        }
        for (size_t i = 0; i < n_ids; i++)
            fprintf(o, "%d\n", ids[i]);
        fclose(o);
    }
    printf("{\"load_ms\": %.1f, \"load_cpu_ms\": %.1f, \"bytes\": %ld, "
           "\"ids\": %zu, \"encode_ms\": %.1f, \"encode_cpu_ms\": %.1f, "
           "\"mb_s\": %.2f, \"mb_s_cpu\": %.2f}\n",
           best_load, best_load_cpu, n, n_ids, best, best_cpu,
           (double)n / 1e6 / (best / 1e3), (double)n / 1e6 / (best_cpu / 1e3));
    free(ids);
    free(text);
    tokenizer_free(tok);
    return 0;
}
