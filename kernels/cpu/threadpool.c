/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Persistent thread pool (see threadpool.h). Job hand-off: the caller bumps
 * `gen` under the mutex and broadcasts; a worker that sees a new generation
 * runs the job and decrements `pending`; the last one signals `done`.
 * Both sides spin on the atomics for a while first, because jobs come in
 * bursts (dozens per layer) and a futex wake-up costs more than a short
 * matmul.
 */
#include "kernels/cpu/threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define TP_SPINS 4000            /* ~0.1-0.5 ms: pause is 10-140 cycles */

struct tp_worker {
    struct tp_pool *tp;
    int32_t         tid;
    pthread_t       thread;
    bool            started;
};

struct tp_pool {
    int32_t          n;
    pthread_mutex_t  mu;
    pthread_cond_t   wake;
    pthread_cond_t   done;
    atomic_uint      gen;
    atomic_int       pending;
    atomic_bool      quit;
    tp_fn            fn;
    void            *ctx;
    struct tp_worker *w;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

void tp_split(int64_t total, int64_t align, int32_t i, int32_t n, int64_t *b, int64_t *e)
{
    if (align < 1)
        align = 1;
    int64_t units = (total + align - 1) / align;
    int64_t ub = units * i / n, ue = units * (i + 1) / n;
    *b = ub * align < total ? ub * align : total;
    *e = ue * align < total ? ue * align : total;
}

static void *tp_main(void *arg)
{
    struct tp_worker *w = arg;
    struct tp_pool *tp = w->tp;
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&tp->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&tp->quit, memory_order_relaxed) && spins < TP_SPINS) {
            cpu_relax();
            spins++;
        }
        if (g == seen && !atomic_load(&tp->quit)) {
            pthread_mutex_lock(&tp->mu);
            while ((g = atomic_load(&tp->gen)) == seen && !atomic_load(&tp->quit))
                pthread_cond_wait(&tp->wake, &tp->mu);
            pthread_mutex_unlock(&tp->mu);
        }
        if (atomic_load(&tp->quit))
            break;
        seen = g;
        tp->fn(tp->ctx, w->tid, tp->n);
        if (atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&tp->mu);
            pthread_cond_signal(&tp->done);
            pthread_mutex_unlock(&tp->mu);
        }
    }
    return NULL;
}

int tp_pool_create(int32_t n_threads, struct tp_pool **out)
{
    if (n_threads < 1 || n_threads > 256)
        return -EINVAL;
    struct tp_pool *tp = calloc(1, sizeof(*tp));
    if (!tp)
        return -ENOMEM;
    tp->n = n_threads;
    tp->w = calloc((size_t)n_threads, sizeof(*tp->w));
    if (!tp->w) {
        free(tp);
        return -ENOMEM;
    }
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->wake, NULL);
    pthread_cond_init(&tp->done, NULL);
    atomic_init(&tp->gen, 0);
    atomic_init(&tp->pending, 0);
    atomic_init(&tp->quit, false);
    for (int32_t i = 1; i < n_threads; i++) {
        tp->w[i].tp = tp;
        tp->w[i].tid = i;
        if (pthread_create(&tp->w[i].thread, NULL, tp_main, &tp->w[i]) != 0) {
            tp->n = i;                      /* run with the threads we got */
            break;
        }
        tp->w[i].started = true;
    }
    *out = tp;
    return 0;
}

int32_t tp_pool_size(const struct tp_pool *tp)
{
    return tp->n;
}

void tp_pool_destroy(struct tp_pool *tp)
{
    if (!tp)
        return;
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->quit, true);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    for (int32_t i = 1; i < tp->n; i++)
        if (tp->w[i].started)
            pthread_join(tp->w[i].thread, NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->wake);
    pthread_cond_destroy(&tp->done);
    free(tp->w);
    free(tp);
}

void tp_pool_run(struct tp_pool *tp, tp_fn fn, void *ctx)
{
    if (tp->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->ctx = ctx;
    atomic_store_explicit(&tp->pending, tp->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add_explicit(&tp->gen, 1, memory_order_release);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    fn(ctx, 0, tp->n);
    int spins = 0;
    while (atomic_load_explicit(&tp->pending, memory_order_acquire) > 0 && spins < TP_SPINS) {
        cpu_relax();
        spins++;
    }
    if (atomic_load(&tp->pending) > 0) {
        pthread_mutex_lock(&tp->mu);
        while (atomic_load(&tp->pending) > 0)
            pthread_cond_wait(&tp->done, &tp->mu);
        pthread_mutex_unlock(&tp->mu);
    }
}
