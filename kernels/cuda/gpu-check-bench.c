/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu-check --bench: yardsticks measured in the same run (copy and read
 * bandwidth, an int8 matrix peak loop), then the decode GEMV (both
 * activation formats), the MMQ GEMM (every tile configuration, plain and
 * expert-grouped) and the GDN state update (recurrent vs chunked) on the
 * shapes of Qwen3.6-35B-A3B. Timed with device
 * events after a warm-up; GEMV weights cycle through enough copies to
 * defeat the 50 MB L2 of an H100/H200.
 */
#include "kernels/cuda/gpu-check.h"

#include <string.h>

/* ------------------------------------------------------------------ */
/* Benchmarks                                                           */

static double bench_copy_gbs(struct check *c, double *read_gbs)
{
    const size_t bytes = (size_t)1 << 30;
    gcd_ptr a = check_dev_alloc(c, bytes), b = check_dev_alloc(c, bytes), sink = check_dev_alloc(c, 16);
    CK(gcd_mem_fill32(c->d, a, 0x01020304u, bytes / 4));
    long long n16 = (long long)(bytes / 16);
    int blocks = gcd_sm_count(c->d) * 8;
    void *args[] = { &a, &b, &n16, &blocks };
    void *rargs[] = { &a, &n16, &blocks, &sink };
    float ms = 0.0f, best = 1e30f, rbest = 1e30f;
    for (int i = 0; i < 6; i++) {
        CK(gcd_timer_start(c->d));
        CK(gcd_launch(c->d, c->bcopy, (unsigned)blocks, 1, 1, 256, 0, args));
        CK(gcd_timer_stop(c->d, &ms));
        if (i && ms < best)
            best = ms;
        CK(gcd_timer_start(c->d));
        CK(gcd_launch(c->d, c->bread, (unsigned)blocks, 1, 1, 256, 0, rargs));
        CK(gcd_timer_stop(c->d, &ms));
        if (i && ms < rbest)
            rbest = ms;
    }
    gcd_mem_free(c->d, a);
    gcd_mem_free(c->d, b);
    gcd_mem_free(c->d, sink);
    *read_gbs = (double)bytes / (rbest * 1e-3) / 1e9;
    return 2.0 * (double)bytes / (best * 1e-3) / 1e9;
}

/* GEMV bandwidth on one shape: copies of the weights cycled so the set
 * exceeds L2; bytes counted = packed weights + scales (+ x, y). */
static void bench_gemv(struct check *c, const char *name, int n, int k, int experts, int nb,
                       double copy_gbs, double read_gbs)
{
    const int slices = experts ? 8 : 1;
    const int64_t mats = experts ? experts : 1;
    const size_t wbytes = (size_t)mats * n * k / 2, sbytes = (size_t)mats * n * k / 16;
    int copies = (int)((512u << 20) / (wbytes + sbytes)) + 1;
    if (copies > 64)
        copies = 64;
    gcd_ptr *wq = check_xmalloc(sizeof(gcd_ptr) * (size_t)copies);
    gcd_ptr *ws = check_xmalloc(sizeof(gcd_ptr) * (size_t)copies);
    for (int i = 0; i < copies; i++) {
        wq[i] = check_dev_alloc(c, wbytes);
        ws[i] = check_dev_alloc(c, sbytes);
        CK(gcd_mem_fill32(c->d, wq[i], 0x9abc1234u ^ (uint32_t)i, wbytes / 4));
        CK(gcd_mem_fill32(c->d, ws[i], 0x3c003c00u, sbytes / 4));
    }
    const size_t xn = (size_t)nb * k * slices, yn = (size_t)nb * n * slices;
    gcd_ptr x = check_dev_alloc(c, xn * 4), y = check_dev_alloc(c, yn * 4), ids = 0;
    CK(gcd_mem_fill32(c->d, x, 0x3f000000u, xn));
    if (experts) {
        int h_ids[8];
        for (int i = 0; i < 8; i++)
            h_ids[i] = (i * 37 + 11) % experts;
        ids = check_dev_upload(c, h_ids, sizeof(h_ids));
    }
    gcd_ptr xq = check_dev_alloc(c, xn), xd = check_dev_alloc(c, xn / 32 * 4);
    CK(gcd_mem_fill32(c->d, xq, 0x05fb07f9u, xn / 4));
    CK(gcd_mem_fill32(c->d, xd, 0x3c000000u, xn / 32));
    /* back-to-back launches over the copies between two events: the
     * per-launch time includes the launch gap, as in a decode step.
     * variants: [q8][rows per lane 1 / 4] */
    double best_t[2][2] = { { 1e30, 1e30 }, { 1e30, 1e30 } };
    const int reps = copies < 16 ? 16 : copies;
    for (int q8 = 0; q8 < 2; q8++)
        for (int big = 0; big < 2; big++) {
            for (int round = 0; round < 3; round++) {
                float ms;
                CK(gcd_timer_start(c->d));
                for (int it = 0; it < reps; it++) {
                    long long xs = experts ? (long long)nb * k : 0, ys = (long long)nb * n;
                    if (q8)
                        check_gemv_q8_launch(c, big, nb, wq[it % copies], ws[it % copies], xq, xd, y, n, k,
                                       ids, 0, 1, slices, xs, ys);
                    else
                        check_gemv_launch(c, big, nb, wq[it % copies], ws[it % copies], x, y, n, k, ids,
                                    0, 1, slices, xs, ys);
                }
                CK(gcd_timer_stop(c->d, &ms));
                if (round && ms / reps < best_t[q8][big])
                    best_t[q8][big] = ms / reps;
            }
        }
    const double touched = (double)(wbytes + sbytes) / (double)mats * (double)slices;
    for (int q8 = 0; q8 < 2; q8++) {
        int big = best_t[q8][1] < best_t[q8][0];
        double act_bytes = q8 ? (double)xn * (1.0 + 4.0 / 32) : (double)xn * 4;
        double gbs = (touched + act_bytes + (double)yn * 4) / (best_t[q8][big] * 1e-3) / 1e9;
        printf("BENCH gemv%s %-28s B=%d: %8.2f us %7.1f GB/s = %5.1f %% of read, %5.1f %% of copy bw "
               "(rows/lane %d; other %.2f us)\n",
               q8 ? "-q8" : "-a16", name, nb, best_t[q8][big] * 1e3, gbs, 100.0 * gbs / read_gbs,
               100.0 * gbs / copy_gbs, big ? 4 : 1, best_t[q8][!big] * 1e3);
    }
    gcd_mem_free(c->d, xq);
    gcd_mem_free(c->d, xd);
    for (int i = 0; i < copies; i++) {
        gcd_mem_free(c->d, wq[i]);
        gcd_mem_free(c->d, ws[i]);
    }
    free(wq);
    free(ws);
    gcd_mem_free(c->d, x);
    gcd_mem_free(c->d, y);
    gcd_mem_free(c->d, ids);
}

static double bench_peak_int8(struct check *c)
{
    int iters = 4096, seed = 1;
    gcd_ptr sink = check_dev_alloc(c, 16);
    void *args[] = { &iters, &seed, &sink };
    unsigned blocks = (unsigned)gcd_sm_count(c->d) * 8;
    float ms, best = 1e30f;
    for (int i = 0; i < 4; i++) {
        CK(gcd_timer_start(c->d));
        CK(gcd_launch(c->d, c->bmma, blocks, 1, 1, 256, 0, args));
        CK(gcd_timer_stop(c->d, &ms));
        if (i && ms < best)
            best = ms;
    }
    gcd_mem_free(c->d, sink);
    double ops = (double)blocks * 8 /* warps */ * iters * 4 /* chains */ * (16.0 * 16 * 32 * 2);
    return ops / (best * 1e-3) / 1e12;
}

/* MMQ on a model shape: every tile config timed, best reported. */
static void bench_mmq(struct check *c, const char *name, int m, int n, int k, double peak)
{
    gcd_ptr xq = check_dev_alloc(c, (size_t)m * k), xd = check_dev_alloc(c, (size_t)m * (k / 32) * 4);
    gcd_ptr wq = check_dev_alloc(c, (size_t)n * k / 2), ws = check_dev_alloc(c, (size_t)n * k / 16);
    gcd_ptr y = check_dev_alloc(c, (size_t)m * n * 4);
    CK(gcd_mem_fill32(c->d, xq, 0x01fe03fdu, (size_t)m * k / 4));
    CK(gcd_mem_fill32(c->d, xd, 0x3c000000u, (size_t)m * (k / 32)));
    CK(gcd_mem_fill32(c->d, wq, 0x12345678u, (size_t)n * k / 8));
    CK(gcd_mem_fill32(c->d, ws, 0x3c003c00u, (size_t)n * k / 64));
    double ops = 2.0 * m * n * k;
    double best = 1e30;
    int best_cfg = 0;
    char line[1024];
    int off = snprintf(line, sizeof(line), "[");
    for (int cfg = 0; cfg < N_MMQ; cfg++) {
        float ms, t = 1e30f;
        for (int it = 0; it < 4; it++) {
            CK(gcd_timer_start(c->d));
            check_mmq_launch(c, cfg, xq, xd, wq, ws, y, m, n, k, 0, 1, 0);
            CK(gcd_timer_stop(c->d, &ms));
            if (it && ms < t)
                t = ms;
        }
        off += snprintf(line + off, sizeof(line) - (size_t)off, "%s%s %.0f", cfg ? ", " : "",
                        check_mmq_cfgs[cfg].name + 10, ops / (t * 1e-3) / 1e12);
        if (t < best) {
            best = t;
            best_cfg = cfg;
        }
    }
    snprintf(line + off, sizeof(line) - (size_t)off, "]");
    double tops = ops / (best * 1e-3) / 1e12;
    printf("BENCH mmq %-26s M=%d N=%d K=%d: %8.1f us %6.1f TOPS = %4.1f %% of measured int8 "
           "mma peak, best %s; all TOPS %s\n",
           name, m, n, k, best * 1e3, tops, 100.0 * tops / peak, check_mmq_cfgs[best_cfg].name + 10, line);
    gcd_ptr frees[] = { xq, xd, wq, ws, y };
    for (size_t i = 0; i < 5; i++)
        gcd_mem_free(c->d, frees[i]);
}

/* Grouped (MoE) MMQ: T tokens x top-8 of 256 experts, rows sorted by expert,
 * every expert's weights in one stacked tensor; the prefill MoE layout. */
static void bench_mmq_moe(struct check *c, const char *name, int t, int n, int k, double peak)
{
    const int E = 256, top = 8, A = t * top;
    int *seg = check_xmalloc((size_t)(E + 1) * sizeof(int)), *cnt = calloc((size_t)E, sizeof(int));
    for (int i = 0; i < t; i++)
        for (int s = 0; s < top; s++)           /* distinct experts per token */
            cnt[(int)((unsigned)(i * 131 + s * 32 + (int)(check_rnd_u(c) * 31)) % (unsigned)E)]++;
    int max_rows = 0;
    seg[0] = 0;
    for (int e = 0; e < E; e++) {
        seg[e + 1] = seg[e] + cnt[e];
        max_rows = cnt[e] > max_rows ? cnt[e] : max_rows;
    }
    gcd_ptr dseg = check_dev_upload(c, seg, (size_t)(E + 1) * sizeof(int));
    gcd_ptr xq = check_dev_alloc(c, (size_t)A * k), xd = check_dev_alloc(c, (size_t)A * (k / 32) * 4);
    gcd_ptr wq = check_dev_alloc(c, (size_t)E * n * k / 2), ws = check_dev_alloc(c, (size_t)E * n * k / 16);
    gcd_ptr y = check_dev_alloc(c, (size_t)A * n * 4);
    CK(gcd_mem_fill32(c->d, xq, 0x01fe03fdu, (size_t)A * k / 4));
    CK(gcd_mem_fill32(c->d, xd, 0x3c000000u, (size_t)A * (k / 32)));
    CK(gcd_mem_fill32(c->d, wq, 0x12345678u, (size_t)E * n * k / 8));
    CK(gcd_mem_fill32(c->d, ws, 0x3c003c00u, (size_t)E * n * k / 64));
    double ops = 2.0 * A * n * k, best = 1e30;
    int best_cfg = 0;
    char line[1024];
    int off = snprintf(line, sizeof(line), "[");
    for (int cfg = 0; cfg < N_MMQ; cfg++) {
        float ms, tm = 1e30f;
        for (int it = 0; it < 4; it++) {
            CK(gcd_timer_start(c->d));
            check_mmq_launch(c, cfg, xq, xd, wq, ws, y, A, n, k, dseg, E, max_rows);
            CK(gcd_timer_stop(c->d, &ms));
            if (it && ms < tm)
                tm = ms;
        }
        off += snprintf(line + off, sizeof(line) - (size_t)off, "%s%s %.0f", cfg ? ", " : "",
                        check_mmq_cfgs[cfg].name + 10, ops / (tm * 1e-3) / 1e12);
        if (tm < best) {
            best = tm;
            best_cfg = cfg;
        }
    }
    snprintf(line + off, sizeof(line) - (size_t)off, "]");
    double tops = ops / (best * 1e-3) / 1e12;
    double gbs = ((double)E * n * k * (0.5 + 1.0 / 16)) / (best * 1e-3) / 1e9;
    printf("BENCH mmq-moe %-22s T=%d (x8 = %d rows, max %d/expert) N=%d K=%d: %8.1f us %6.1f TOPS "
           "= %4.1f %% of mma peak, weights streamed at %.0f GB/s, best %s; all TOPS %s\n",
           name, t, A, max_rows, n, k, best * 1e3, tops, 100.0 * tops / peak, gbs,
           check_mmq_cfgs[best_cfg].name + 10, line);
    gcd_ptr frees[] = { dseg, xq, xd, wq, ws, y };
    for (size_t i = 0; i < 6; i++)
        gcd_mem_free(c->d, frees[i]);
    free(seg);
    free(cnt);
}

/* The GDN state update of one layer (16 k / 32 v heads of 128) over an
 * n-token prefill: gdn_recurrent (one block per head walks the n tokens)
 * against the chunked form (gdn_chunk_prep / scan / out); 64 tokens is where
 * gpu-backend.c switches to the chunked form (GB_GDN_CHUNK_MIN). Inputs are
 * constants: neither kernel's work depends on the values. */
static void bench_gdn(struct check *c, int n)
{
    const int nk = 16, nv = 32, cd = 2 * nk * 128 + nv * 128;
    gcd_ptr du = check_dev_alloc(c, (size_t)n * cd * 4), db = check_dev_alloc(c, (size_t)n * nv * 4);
    gcd_ptr da = check_dev_alloc(c, (size_t)n * nv * 4), dal = check_dev_alloc(c, (size_t)nv * 4);
    gcd_ptr ddt = check_dev_alloc(c, (size_t)nv * 4), dss = check_dev_alloc(c, (size_t)nv * 128 * 128 * 4);
    gcd_ptr dyo = check_dev_alloc(c, (size_t)n * nv * 128 * 4);
    gcd_ptr scr = check_dev_alloc(c, check_gdn_scratch_bytes(n, nv));
    CK(gcd_mem_fill32(c->d, du, 0x3c23d70au, (size_t)n * cd));          /* 0.01 */
    CK(gcd_mem_fill32(c->d, db, 0u, (size_t)n * nv));
    CK(gcd_mem_fill32(c->d, da, 0u, (size_t)n * nv));
    CK(gcd_mem_fill32(c->d, dal, 0u, (size_t)nv));
    CK(gcd_mem_fill32(c->d, ddt, 0u, (size_t)nv));
    CK(gcd_mem_fill32(c->d, dss, 0u, (size_t)nv * 128 * 128));
    float best[2] = { 1e30f, 1e30f };
    for (int it = 0; it < 4; it++)
        for (int chunked = 0; chunked < 2; chunked++) {
            float ms;
            CK(gcd_timer_start(c->d));
            check_gdn_launch(c, chunked, du, n, nk, nv, db, da, dal, ddt, dss, dyo, scr);
            CK(gcd_timer_stop(c->d, &ms));
            if (it && ms < best[chunked])
                best[chunked] = ms;
        }
    printf("BENCH gdn state update, %d tokens, 32 heads of 128: gdn_recurrent %8.1f us, chunked "
           "(prep+scan+out) %8.1f us\n", n, best[0] * 1e3, best[1] * 1e3);
    gcd_ptr frees[] = { du, db, da, dal, ddt, dss, dyo, scr };
    for (size_t i = 0; i < sizeof(frees) / sizeof(frees[0]); i++)
        gcd_mem_free(c->d, frees[i]);
}

void check_bench_run(struct check *c)
{
    double read_gbs;
    double copy_gbs = bench_copy_gbs(c, &read_gbs);
    printf("BENCH copy bandwidth (1 GiB, read+write counted): %.1f GB/s; read-only stream %.1f GB/s\n",
           copy_gbs, read_gbs);
    bench_gemv(c, "lm_head 248320x2048", 248320, 2048, 0, 1, copy_gbs, read_gbs);
    bench_gemv(c, "lm_head 248320x2048", 248320, 2048, 0, 4, copy_gbs, read_gbs);
    bench_gemv(c, "lm_head 248320x2048", 248320, 2048, 0, 8, copy_gbs, read_gbs);
    bench_gemv(c, "gdn qkv 8192x2048", 8192, 2048, 0, 1, copy_gbs, read_gbs);
    bench_gemv(c, "gdn out 2048x4096", 2048, 4096, 0, 1, copy_gbs, read_gbs);
    bench_gemv(c, "experts gate|up 8x(1024x2048)", 1024, 2048, 256, 1, copy_gbs, read_gbs);
    bench_gemv(c, "experts down 8x(2048x512)", 2048, 512, 256, 1, copy_gbs, read_gbs);
    double peak = bench_peak_int8(c);
    printf("BENCH int8 matrix peak loop (compat.h 16x16x32 tiles): %.1f TOPS (" GPU_CHECK_PEAK_NOTE ")\n",
           peak);
    bench_mmq(c, "gdn qkv", 512, 8192, 2048, peak);
    bench_mmq(c, "gdn qkv", 2048, 8192, 2048, peak);
    bench_mmq(c, "attn/gdn out", 2048, 2048, 4096, peak);
    bench_mmq(c, "expert gate|up (dense)", 2048, 1024, 2048, peak);
    bench_mmq(c, "expert down (dense)", 2048, 2048, 512, peak);
    bench_mmq(c, "lm_head", 512, 248320, 2048, peak);
    bench_mmq_moe(c, "experts gate|up", 512, 1024, 2048, peak);
    bench_mmq_moe(c, "experts gate|up", 2048, 1024, 2048, peak);
    bench_mmq_moe(c, "experts down", 2048, 2048, 512, peak);
    bench_gdn(c, 64);                      /* the chunked threshold (gpu-backend.c) */
    bench_gdn(c, 512);
    bench_gdn(c, 4096);
}

