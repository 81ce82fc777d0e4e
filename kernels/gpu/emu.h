/* SPDX-License-Identifier: Apache-2.0 */
/*
 * compat.h's vendor layer EMULATED on the CPU, for tests that execute the
 * kernel sources without a GPU (C++; selected by defining GPU_EMU before
 * compat.h is included).
 *
 * Model: a launch runs its blocks one after another; inside a block every
 * GPU thread is a pthread, __shared__ is static storage (one copy, shared
 * by the block's threads), gpu_sync is a barrier of the whole block and the
 * warp shuffles are a barrier of the thread's 32-lane warp plus an exchange
 * slot per thread, so a warp that returns early as a whole (a kernel's
 * bounds check on a warp-uniform index) does not hold the others. Kernels
 * that never synchronise can run their threads in sequence on the calling
 * thread (emu_run's `sync` false), which is much faster.
 *
 * What this proves: index arithmetic, bounds, the order of operations and
 * barriers as written. What it cannot: vendor intrinsics (math comes from
 * libm), register layouts of the matrix tiles (emulated by their contract
 * below), code generation and timing.
 */
#ifndef RESIDENT_KERNELS_GPU_EMU_H
#define RESIDENT_KERNELS_GPU_EMU_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPU_EMU_ACTIVE 1
#define GPU_RESTRICT
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define GPU_KERNEL(name, threads) static __attribute__((unused)) void name

struct gpu_u32x4 { unsigned int x, y, z, w; };
struct gpu_f32x4 { float x, y, z, w; };

#define EMU_MAX_THREADS 1024

static thread_local int emu_tid;
static int emu_bid[3];
static pthread_barrier_t emu_bar;
static pthread_barrier_t emu_warp_bar[EMU_MAX_THREADS / GPU_WARP];
static uint32_t emu_xchg[EMU_MAX_THREADS];   /* one 4-byte shuffle slot per thread */

static inline int gpu_tid_x() { return emu_tid; }
static inline int gpu_bid_x() { return emu_bid[0]; }
static inline int gpu_bid_y() { return emu_bid[1]; }
static inline int gpu_bid_z() { return emu_bid[2]; }
static inline int gpu_lane() { return emu_tid & (GPU_WARP - 1); }
static bool emu_seq;                     /* threads run in turn (no barriers) */
static inline void emu_need_sync()
{
    if (emu_seq) {
        fprintf(stderr, "emu: a kernel launched without sync reached a barrier or shuffle\n");
        abort();
    }
}
static inline void gpu_sync() { emu_need_sync(); pthread_barrier_wait(&emu_bar); }
static inline float gpu_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned int gpu_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
/* lane ^ m's value of v, through the exchange slots and the warp barrier */
template <typename T> static inline T emu_shfl_xor(T v, int m)
{
    static_assert(sizeof(T) == 4, "4-byte shuffles only");
    emu_need_sync();
    memcpy(&emu_xchg[emu_tid], &v, 4);
    pthread_barrier_wait(&emu_warp_bar[emu_tid / GPU_WARP]);
    T r;
    memcpy(&r, &emu_xchg[emu_tid ^ m], 4);
    pthread_barrier_wait(&emu_warp_bar[emu_tid / GPU_WARP]);
    return r;
}
static inline float gpu_shfl_xor_f(float v, int m) { return emu_shfl_xor(v, m); }
static inline int gpu_shfl_xor_i(int v, int m) { return emu_shfl_xor(v, m); }
static inline float gpu_exp(float x) { return expf(x); }
static inline float gpu_log(float x) { return logf(x); }
static inline float gpu_rsqrt(float x) { return 1.0f / sqrtf(x); }
static inline float gpu_sqrt(float x) { return sqrtf(x); }
static inline float gpu_fabs(float x) { return fabsf(x); }
static inline void gpu_sincos(float a, float *s, float *c) { *s = sinf(a); *c = cosf(a); }
static inline int gpu_dot4_i8(int a, int b, int c)
{
    for (int i = 0; i < 4; i++)
        c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
}
static inline int gpu_atomic_add_i(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline float gpu_i2f_small(int v) { return (float)v; }

/* The int8 matrix tile by its contract, not by a vendor's register
 * layout: a fragment remembers where its 16 x 32 tile lives in shared
 * memory, gpu_mma_i8 computes the lane's 8 accumulators from it, and lane l
 * holds row l/2, columns 8 (l%2) .. 8 (l%2) + 7. */
struct gpu_frag_a { const signed char *p; int stride; };
struct gpu_frag_b { const signed char *p; int stride; };
struct gpu_acc { int v[8]; };
static inline int gpu_acc_row(int i) { (void)i; return gpu_lane() >> 1; }
static inline int gpu_acc_col(int i) { return 8 * (gpu_lane() & 1) + i; }
static inline void gpu_frag_a_load(gpu_frag_a *f, const signed char *p, int stride) { *f = { p, stride }; }
static inline void gpu_frag_b_load(gpu_frag_b *f, const signed char *p, int stride) { *f = { p, stride }; }
static inline void gpu_acc_zero(gpu_acc *a) { memset(a, 0, sizeof(*a)); }
/* A rows = output rows (activations), B rows = output columns (weights),
 * both 32 int8 along K; the tile's shared memory is stable until the
 * kernel's next gpu_sync, after the products */
static inline void gpu_mma_i8(gpu_acc *c, const gpu_frag_a *a, const gpu_frag_b *b)
{
    for (int e = 0; e < 8; e++) {
        const signed char *ar = a->p + gpu_acc_row(e) * a->stride, *br = b->p + gpu_acc_col(e) * b->stride;
        int s = 0;
        for (int k = 0; k < 32; k++)
            s += ar[k] * br[k];
        c->v[e] += s;
    }
}
static inline int gpu_acc_get(const gpu_acc *a, int i) { return a->v[i]; }


/* ---- launching ---- */

typedef void (*emu_body)(const void *args);

/* A pool of `threads` workers, one per GPU thread of a block, kept while
 * the block size stays the same (creating a thread per GPU thread and
 * block costs far more than the kernels here). Each block: the caller
 * publishes the body and block id, releases the workers through `start`
 * and waits for them at `done`. */
struct emu_pool {
    int threads;
    pthread_t pt[EMU_MAX_THREADS];
    int tids[EMU_MAX_THREADS];
    pthread_barrier_t start, done;
    emu_body body;
    const void *args;
    bool quit;
};
static emu_pool emu_p;

static void *emu_worker(void *p)
{
    emu_tid = *(const int *)p;
    for (;;) {
        pthread_barrier_wait(&emu_p.start);
        if (emu_p.quit)
            return nullptr;
        emu_p.body(emu_p.args);
        pthread_barrier_wait(&emu_p.done);
    }
}

static void emu_pool_stop()
{
    if (!emu_p.threads)
        return;
    emu_p.quit = true;
    pthread_barrier_wait(&emu_p.start);
    for (int i = 0; i < emu_p.threads; i++)
        pthread_join(emu_p.pt[i], nullptr);
    pthread_barrier_destroy(&emu_p.start);
    pthread_barrier_destroy(&emu_p.done);
    pthread_barrier_destroy(&emu_bar);
    for (int w = 0; w < emu_p.threads / GPU_WARP; w++)
        pthread_barrier_destroy(&emu_warp_bar[w]);
    emu_p.threads = 0;
    emu_p.quit = false;
}

static void emu_pool_start(int threads)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    pthread_barrier_init(&emu_p.start, nullptr, (unsigned)threads + 1);
    pthread_barrier_init(&emu_p.done, nullptr, (unsigned)threads + 1);
    pthread_barrier_init(&emu_bar, nullptr, (unsigned)threads);
    for (int w = 0; w < threads / GPU_WARP; w++)
        pthread_barrier_init(&emu_warp_bar[w], nullptr, GPU_WARP);
    for (int i = 0; i < threads; i++) {
        emu_p.tids[i] = i;
        if (pthread_create(&emu_p.pt[i], &attr, emu_worker, &emu_p.tids[i])) {
            fprintf(stderr, "emu: pthread_create failed\n");
            exit(2);
        }
    }
    pthread_attr_destroy(&attr);
    emu_p.threads = threads;
}

/* grid gx x gy x gz of `threads`-thread blocks (a multiple of 32);
 * body(args) is the kernel call every thread makes. sync false: the kernel
 * has no barrier or shuffle, its threads run in turn on the calling
 * thread. */
static void emu_run(unsigned gx, unsigned gy, int threads, emu_body body, const void *args,
                    bool sync = true, unsigned gz = 1)
{
    if (threads <= 0 || threads > EMU_MAX_THREADS || threads % GPU_WARP) {
        fprintf(stderr, "emu: bad block size %d\n", threads);
        exit(2);
    }
    if (sync && emu_p.threads != threads) {
        emu_pool_stop();
        emu_pool_start(threads);
    }
    const int saved_tid = emu_tid;
    emu_p.body = body;
    emu_p.args = args;
    for (unsigned b = 0; b < gx * gy * gz; b++) {
        emu_bid[0] = (int)(b % gx);
        emu_bid[1] = (int)(b / gx % gy);
        emu_bid[2] = (int)(b / gx / gy);
        if (!sync) {
            emu_seq = true;
            for (int i = 0; i < threads; i++) {
                emu_tid = i;
                body(args);
            }
            emu_seq = false;
            continue;
        }
        pthread_barrier_wait(&emu_p.start);
        pthread_barrier_wait(&emu_p.done);
    }
    emu_tid = saved_tid;
}

#endif
