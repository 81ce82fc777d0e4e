/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A small persistent thread pool for the fast CPU backend. The calling
 * thread is worker 0 and takes part in every job, so a pool of n threads
 * starts n-1 pthreads. A job is one function run once on every worker
 * (fn(ctx, tid, n)); the function splits its work itself (static row
 * ranges for matmuls, an atomic work counter for MoE items). tp_run returns
 * when every worker has returned from fn.
 *
 * Workers spin briefly after a job (the forward pass issues the next one
 * within microseconds) and then sleep on a condition variable, so an idle
 * engine costs no CPU.
 */
#ifndef RESIDENT_KERNELS_CPU_THREADPOOL_H
#define RESIDENT_KERNELS_CPU_THREADPOOL_H

#include <stdint.h>

struct tp_pool;

typedef void (*tp_fn)(void *ctx, int32_t tid, int32_t n_threads);

/* n_threads >= 1. Returns 0 or -errno. */
int  tp_pool_create(int32_t n_threads, struct tp_pool **out);
void tp_pool_destroy(struct tp_pool *tp);
int32_t tp_pool_size(const struct tp_pool *tp);

/* Run fn on every worker (the caller is tid 0) and wait for all of them. */
void tp_pool_run(struct tp_pool *tp, tp_fn fn, void *ctx);

/* Split [0, total) into n near-equal parts aligned to `align`; part i is
 * [*b, *e). */
void tp_split(int64_t total, int64_t align, int32_t i, int32_t n, int64_t *b, int64_t *e);

#endif
