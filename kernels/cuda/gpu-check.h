/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared between gpu-check.c (correctness checks, main) and
 * gpu-check-bench.c (benchmarks): the vendor mapping, the run state and the
 * launch helpers both halves use.
 */
#ifndef RESIDENT_KERNELS_CUDA_GPU_CHECK_H
#define RESIDENT_KERNELS_CUDA_GPU_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/backend.h"

/* One source, two vendors: built as gpu-check (CUDA driver API, sm_90
 * cubins) and, with -DGPU_CHECK_HIP, as gpu-check-hip (HIP module API,
 * gfx1151 code objects). gcd_* names map to either host layer. */
#ifdef GPU_CHECK_HIP
#include "kernels/hip/hip-device.h"
#define gcd_dev gpu_hip
#define gcd_ptr gpu_hip_ptr
#define gcd_module gpu_hip_module
#define gcd_function gpu_hip_function
#define gcd_open gpu_hip_open
#define gcd_close gpu_hip_close
#define gcd_last_error gpu_hip_last_error
#define gcd_describe gpu_hip_describe
#define gcd_sm_count gpu_hip_sm_count
#define gcd_module_load gpu_hip_module_load
#define gcd_function_get gpu_hip_function_get
#define gcd_mem_alloc gpu_hip_mem_alloc
#define gcd_mem_free gpu_hip_mem_free
#define gcd_mem_upload gpu_hip_mem_upload
#define gcd_mem_download gpu_hip_mem_download
#define gcd_mem_fill32 gpu_hip_mem_fill32
#define gcd_launch gpu_hip_launch
#define gcd_sync gpu_hip_sync
#define gcd_timer_start gpu_hip_timer_start
#define gcd_timer_stop gpu_hip_timer_stop
#define GPU_CHECK_OBJ "gfx1151.hsaco"
#define GPU_CHECK_PEAK_NOTE "gfx1151 datasheet int8 WMMA: 59.4 TOPS"
#else
#include "kernels/cuda/cuda-device.h"
#define gcd_dev gpu_cuda
#define gcd_ptr gpu_cuda_ptr
#define gcd_module gpu_cuda_module
#define gcd_function gpu_cuda_function
#define gcd_open gpu_cuda_open
#define gcd_close gpu_cuda_close
#define gcd_last_error gpu_cuda_last_error
#define gcd_describe gpu_cuda_describe
#define gcd_sm_count gpu_cuda_sm_count
#define gcd_module_load gpu_cuda_module_load
#define gcd_function_get gpu_cuda_function_get
#define gcd_mem_alloc gpu_cuda_mem_alloc
#define gcd_mem_free gpu_cuda_mem_free
#define gcd_mem_upload gpu_cuda_mem_upload
#define gcd_mem_download gpu_cuda_mem_download
#define gcd_mem_fill32 gpu_cuda_mem_fill32
#define gcd_launch gpu_cuda_launch
#define gcd_sync gpu_cuda_sync
#define gcd_timer_start gpu_cuda_timer_start
#define gcd_timer_stop gpu_cuda_timer_stop
#define GPU_CHECK_OBJ "sm_90.cubin"
#define GPU_CHECK_PEAK_NOTE "H100/H200 SXM datasheet dense int8: 1979 TOPS, reachable only with wgmma"
#endif

/* MMQ tile configurations, as instantiated in kernels/gpu/mmq-w4.cu */
struct mmq_cfg {
    const char *name;
    int bm, bn, threads;
};
#define N_MMQ 8                          /* plain + prefetching tiles           */
#define N_MMQ_ALL 10                     /* then the 2 "_kt" (K tail) variants  */
#define CHECK_N_MODULES 7                /* gemv-w4 mmq-w4 moe norm gdn attn bench */
extern const struct mmq_cfg check_mmq_cfgs[N_MMQ_ALL];

struct check {
    struct gcd_dev *d;
    struct kb_backend *ref;
    gcd_module mod[CHECK_N_MODULES];
    uint64_t rng;
    int failures, checks;
    gcd_function gemv[2][8];             /* [R==4][B-1] */
    gcd_function gemv_q8[2][8];
    gcd_function mmq[N_MMQ_ALL];
    gcd_function quant, route, sort, combine, swiglu;
    gcd_function rmsnorm, rmsnorm_gated, rope, mul_sigmoid;
    gcd_function gdn_conv, gdn_rec, gdn_rec_any, gdn_prep, gdn_scan, gdn_out, attn_split, attn_merge;
    gcd_function bcopy, bread, bmma;
};

#define CK(expr)                                                                          \
    do {                                                                                  \
        int rc_ = (expr);                                                                 \
        if (rc_) {                                                                        \
            fprintf(stderr, "gpu-check: %s:%d: %s: %s\n", __FILE__, __LINE__, #expr,      \
                    gcd_last_error(c->d));                                           \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

double check_rnd_u(struct check *c);
void *check_xmalloc(size_t n);
gcd_ptr check_dev_alloc(struct check *c, size_t bytes);
gcd_ptr check_dev_upload(struct check *c, const void *src, size_t bytes);
/* ids: expert per slice (0: slice = expert); wtab: the experts' device
 * addresses (0: a stacked tensor); x_group: slices sharing one x row. */
void check_gemv_launch(struct check *c, int big, int nb, gcd_ptr wq, gcd_ptr ws, gcd_ptr x,
                       gcd_ptr y, int n, int k, gcd_ptr ids, gcd_ptr wtab, int x_group,
                       int slices, long long x_slice, long long y_slice);
void check_gemv_q8_launch(struct check *c, int big, int nb, gcd_ptr wq, gcd_ptr ws, gcd_ptr xq,
                          gcd_ptr xd, gcd_ptr y, int n, int k, gcd_ptr ids, gcd_ptr wtab,
                          int x_group, int slices, long long x_slice, long long y_slice);
void check_mmq_launch(struct check *c, int cfg, gcd_ptr xq, gcd_ptr xd, gcd_ptr wq, gcd_ptr ws,
                      gcd_ptr y, int m, int n, int k, gcd_ptr seg, int experts, int max_rows);
/* The GDN state update of d_k = d_v = 128 on the conv output du (state
 * dss in place, output dyo): gdn_recurrent, or with `chunked` the chunked
 * form gdn_chunk_prep / scan / out with its scratch at `scratch` (of
 * check_gdn_scratch_bytes(n, nv) bytes), launched as gpu-backend.c does. */
size_t check_gdn_scratch_bytes(int n, int nv);
void check_gdn_launch(struct check *c, bool chunked, gcd_ptr du, int n, int nk, int nv, gcd_ptr db,
                      gcd_ptr da, gcd_ptr dal, gcd_ptr ddt, gcd_ptr dss, gcd_ptr dyo, gcd_ptr scratch);

/* Benchmarks (gpu-check-bench.c): bandwidth and int8 yardsticks, then the
 * GEMV and MMQ kernels on the model's shapes; prints BENCH lines. */
void check_bench_run(struct check *c);

#endif
