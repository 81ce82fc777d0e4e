/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fast CPU backend ("cpu"). Same op table and results-within-tolerance
 * as the reference backend (kernels/cpu/ref.c, the oracle), built for
 * speed:
 *
 * - ISA by CPUID at creation: AVX-512 (F/BW/VL/DQ + VNNI) kernels in
 *   fast-avx512.c, else AVX2 + FMA + F16C kernels in fast-avx2.c (same
 *   numerics; see there) with, where the CPU has AVX-VNNI (level
 *   avx2-vnni), the W4 x int8 product of fast-avx2-vnni.c (bit-identical
 *   to the avx2 one), else every op is delegated to the reference
 *   backend (correct, slow). One binary for all x86-64: only those
 *   files' functions carry target attributes. Another level the CPU has
 *   can be forced with kb_cpu_fast_params.isa or, when that is "auto",
 *   the environment variable RESIDENT_CPU_ISA=avx512|avx2vnni|avx2|scalar
 *   (tests run every level on one machine this way).
 * - Two numeric modes. "cpu" (fast): activations entering a W4 product are
 *   quantised per group of 32 to two int8 planes (x = d (q + r/256), one
 *   fp32 scale each; see fast-kernels.h for why one plane is not enough)
 *   and multiplied with vpdpbusd; dense products (lm_head, router) use
 *   fp32 activations and FMA in both modes. "cpu-exact":
 *   fp32 activations everywhere, W4 weights dequantised bit-exactly like the
 *   reference (bf16(q * s)), fp32 FMA accumulation. The MoE router and the
 *   shared-expert gate always use the exact fp32 path: expert selection is
 *   a discontinuous function of the router logits.
 * - Weights are read in place from the checkpoint mapping, in their stored
 *   layout: the int8 activation layout (fast-kernels.h) is arranged to match
 *   the packed nibbles instead, so there is no repacking, no load-time cost
 *   and no second copy of 18 GB of weights.
 * - Thread pool (threadpool.c) sized to n_threads (default: online CPUs).
 *   Work split: a matmul splits its output rows into one contiguous range
 *   per thread (multiples of 16 rows), each thread runs its rows over all
 *   tokens of the batch, so decode (1 token) reads each weight byte once in
 *   total and prefill (up to 64 tokens per call) reuses each weight row from
 *   L1 for 4 tokens per register tile. MoE: tokens are grouped by expert
 *   (each routed expert's weights are read once per call whatever the number
 *   of tokens routed to it) and the (expert, 32-row block) items of all
 *   experts go through one atomic work counter, so 8 small experts keep all
 *   threads busy in decode and uneven expert loads balance in prefill.
 * - No allocation on the per-token path: scratch (quantised activations,
 *   routing lists, expert outputs, attention scores) grows to the largest
 *   size seen and is then reused.
 * - Attention: items of 4 query tokens x the query heads of one GQA group
 *   (one head per item when there are too few items for the threads, as in
 *   decode), so a prefill reads each KV head's cache once per 4 tokens
 *   instead of once per (token, head); a token's output does not depend on
 *   the grouping (fast-kernels.h). The "cpu" mode stores K and V as IEEE
 *   f16 (KB_CAP_KV_F16; RESIDENT_KV_F16=0 keeps fp32 for A/B runs): half
 *   the bytes per token to read in decode and to hold per session; the
 *   kernels widen them exactly and sum in fp32 as for the fp32 cache
 *   ("cpu-exact" and the scalar level, which is cpu-ref, keep fp32).
 * - Other ops: SwiGLU and the Gated DeltaNet recurrence (value
 *   heads split across threads, each running its heads through all tokens
 *   of the call; token by token for decode, in chunks of 16 tokens as
 *   matrix products for prefill, fast-gdn.c) are vectorised here; embed,
 *   RMSNorm, RoPE, add and the sigmoid gate are in fast-elem.c (row
 *   kernels in fast-elem-avx512.c / fast-elem-avx2.c): the reference's
 *   numerics (bit-identical but for the gate's rare 1-ulp expf
 *   differences), rows split across the pool only for prefill-sized calls,
 *   RoPE's cos / sin built once per forward chunk. Residual add + RMSNorm
 *   are not fused: measured, the fusion saves nothing at the engine's
 *   64-row chunks (docs/performance.md, CPU, "Norms, RoPE and elementwise
 *   ops").
 */
#include "kernels/cpu/fast.h"

#include "kernels/cpu/fast-elem.h"
#include "kernels/cpu/fast-gdn.h"
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/ref.h"
#include "kernels/cpu/threadpool.h"

#include <errno.h>
#include <math.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xmmintrin.h>

#define FAST_MAX_THREADS 256
#define FAST_ROW_ALIGN   16
#define FAST_MOE_BLOCK   32              /* rows per MoE work item          */
#define FAST_MAX_CONSTS  1024            /* cached small GDN constants      */

struct fast_tscratch {
    float  *buf;
    size_t  cap;                         /* floats                           */
};

struct cpu_fast {
    struct kb_backend   *ref;            /* delegate for the other ops        */
    struct tp_pool      *tp;
    int32_t              n_threads;
    int32_t              isa;
    const struct fast_kernels *kn;       /* the ISA's kernels (NULL: scalar) */
    struct fast_kernels  kn_vnni;        /* avx2-vnni: the avx2 table with the
                                          * int8 product of fast-avx2-vnni.c,
                                          * copied so no kernel can be missed */
    bool                 exact;
    bool                 kv_f16;         /* KB_CAP_KV_F16: K, V stored as f16 */
    int32_t              gdn_chunk_min;  /* tokens per call for chunked GDN  */
    char                 err[256];
    uint8_t             *scr;            /* per-call scratch (calling thread) */
    size_t               scr_cap;
    struct fast_tscratch ts[FAST_MAX_THREADS];
    struct { const void *key; float *vals; } consts[FAST_MAX_CONSTS];
    int32_t              n_consts;
    struct fast_elem     el;             /* norms, RoPE, elementwise state   */
};

static struct cpu_fast *fast_of(struct kb_backend *be)
{
    return (struct cpu_fast *)be->impl;
}

static int fast_fail(struct kb_backend *be, int code, const char *what)
{
    snprintf(fast_of(be)->err, sizeof(fast_of(be)->err), "cpu: %s", what);
    return code;
}

/* ------------------------------------------------------------------ */
/* CPU features                                                         */

/* AVX-VNNI: CPUID leaf 7 subleaf 1, EAX bit 4. Read directly because
 * clang (14, the fuzz build's compiler) has no "avxvnni" name for
 * __builtin_cpu_supports (gcc 12 has). The OS's saving of the ymm state
 * (XGETBV) is already part of __builtin_cpu_supports("avx2"), which every
 * caller checks first. */
static bool cpu_has_avxvnni(void)
{
#if defined(__x86_64__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
#else
    return false;
#endif
}

bool kb_cpu_isa_supported(int32_t isa)
{
    switch (isa) {
    case KB_CPU_ISA_AUTO:
    case KB_CPU_ISA_SCALAR:
        return true;
#if defined(__x86_64__)
    case KB_CPU_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
    /* F16C is not a __builtin_cpu_supports feature name: every CPU with
     * AVX2 and FMA (Haswell, Zen 1 and later) has it */
    case KB_CPU_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KB_CPU_ISA_AVX2_VNNI:
        return kb_cpu_isa_supported(KB_CPU_ISA_AVX2) && cpu_has_avxvnni();
#endif
    default:
        return false;
    }
}

int32_t kb_cpu_fast_best_isa(void)
{
    /* preference order: on a CPU with both (Sapphire Rapids and later),
     * the AVX-512 kernels are the faster ones */
    static const int32_t order[] = { KB_CPU_ISA_AVX512, KB_CPU_ISA_AVX2_VNNI, KB_CPU_ISA_AVX2 };
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (kb_cpu_isa_supported(order[i]))
            return order[i];
    return KB_CPU_ISA_SCALAR;
}

const char *kb_cpu_isa_name(int32_t isa)
{
    switch (isa) {
    case KB_CPU_ISA_AVX512: return "avx512-vnni";
    case KB_CPU_ISA_AVX2_VNNI: return "avx2-vnni";
    case KB_CPU_ISA_AVX2: return "avx2-fma";
    case KB_CPU_ISA_SCALAR: return "scalar (cpu-ref kernels)";
    default: return "auto";
    }
}

int kb_cpu_isa_parse(const char *s, int32_t *isa)
{
    if (!s || !*s || !strcmp(s, "auto"))
        *isa = KB_CPU_ISA_AUTO;
    else if (!strcmp(s, "avx512"))
        *isa = KB_CPU_ISA_AVX512;
    else if (!strcmp(s, "avx2vnni") || !strcmp(s, "avx2-vnni"))
        *isa = KB_CPU_ISA_AVX2_VNNI;
    else if (!strcmp(s, "avx2"))
        *isa = KB_CPU_ISA_AVX2;
    else if (!strcmp(s, "scalar"))
        *isa = KB_CPU_ISA_SCALAR;
    else
        return -EINVAL;
    return 0;
}

static const struct fast_kernels fast_kernels_avx512 = {
    .q8_quantize = fast_q8_quantize_avx512,
    .q4_q8 = fast_q4_q8_avx512,
    .q4_f32 = fast_q4_f32_avx512,
    .dense_f32 = fast_dense_f32_avx512,
    .gdn_head = fast_gdn_head_avx512,
    .gdn_gemm = fast_gdn_gemm_avx512,
    .gdn_solve = fast_gdn_solve_avx512,
    .gdn_axpby = fast_gdn_axpby_avx512,
    .swiglu = fast_swiglu_avx512,
    .f32_to_f16 = fast_f32_to_f16_avx512,
    .attn_row = fast_attn_row_avx512,
    .attn_rows = fast_attn_rows_avx512,
    .cvt_row = fast_cvt_row_avx512,
    .rmsnorm_row = fast_rmsnorm_row_avx512,
    .rope_head = fast_rope_head_avx512,
    .add = fast_add_avx512,
    .mul_sigmoid = fast_mul_sigmoid_avx512,
};

static const struct fast_kernels fast_kernels_avx2 = {
    .q8_quantize = fast_q8_quantize_avx2,
    .q4_q8 = fast_q4_q8_avx2,
    .q4_f32 = fast_q4_f32_avx2,
    .dense_f32 = fast_dense_f32_avx2,
    .gdn_head = fast_gdn_head_avx2,
    .gdn_gemm = fast_gdn_gemm_avx2,
    .gdn_solve = fast_gdn_solve_avx2,
    .gdn_axpby = fast_gdn_axpby_avx2,
    .swiglu = fast_swiglu_avx2,
    .f32_to_f16 = fast_f32_to_f16_avx2,
    .attn_row = fast_attn_row_avx2,
    .attn_rows = fast_attn_rows_avx2,
    .cvt_row = fast_cvt_row_avx2,
    .rmsnorm_row = fast_rmsnorm_row_avx2,
    .rope_head = fast_rope_head_avx2,
    .add = fast_add_avx2,
    .mul_sigmoid = fast_mul_sigmoid_avx2,
};


/* ------------------------------------------------------------------ */
/* Scratch                                                              */

static void *scratch(struct cpu_fast *f, size_t bytes)
{
    if (bytes > f->scr_cap) {
        size_t cap = bytes + bytes / 4 + 4096;
        void *p = aligned_alloc(64, (cap + 63) & ~(size_t)63);
        if (!p)
            return NULL;
        free(f->scr);
        f->scr = p;
        f->scr_cap = cap;
    }
    return f->scr;
}

/* Per-thread float buffers of at least `floats` each. */
static int tscratch(struct cpu_fast *f, size_t floats)
{
    for (int32_t i = 0; i < f->n_threads; i++) {
        if (f->ts[i].cap >= floats)
            continue;
        size_t cap = floats + 1024;
        float *p = aligned_alloc(64, ((cap * sizeof(float)) + 63) & ~(size_t)63);
        if (!p)
            return -ENOMEM;
        free(f->ts[i].buf);
        f->ts[i].buf = p;
        f->ts[i].cap = cap;
    }
    return 0;
}

static size_t align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

/* ------------------------------------------------------------------ */
/* Weight checks and kinds                                              */

#define weight_ok kb_ref_weight_ok

/* W4 that the int8 kernel takes as stored. */
static bool q4_simple(const struct kb_weight *w)
{
    return w->type == KB_WTYPE_Q4G32 && !w->g_idx && w->scale_type == KB_WTYPE_BF16;
}

/* How a product's activations are presented. */
enum act_kind { ACT_F32, ACT_Q8 };

static enum act_kind act_kind_for(const struct cpu_fast *f, const struct kb_weight *w)
{
    if (f->exact)
        return ACT_F32;
    if (q4_simple(w))
        return ACT_Q8;
    /* dense products (lm_head, router, unquantised modules) keep fp32
     * activations: bf16 activations (vdpbf16ps) cost a mean KL of 1e-2 on
     * tiny-w4g32-partial, and these products are memory-bound anyway */
    return ACT_F32;
}

static size_t act_row_bytes(enum act_kind k, int64_t cols)
{
    return k == ACT_Q8 ? fast_q8_row_bytes(cols) : (size_t)cols * sizeof(float);
}

static void act_convert(const struct fast_kernels *kn, enum act_kind k, const float *x,
                        int64_t cols, void *out)
{
    if (k == ACT_Q8)
        kn->q8_quantize(x, cols, out);
    else
        memcpy(out, x, (size_t)cols * sizeof(float));
}

/* Rows [r0, r1) of w for n tokens. act: activation rows of kind k with a
 * row stride of act_stride bytes (ACT_F32: the caller's fp32 rows). */
static void product_rows(const struct fast_kernels *kn, const struct kb_weight *w,
                         enum act_kind k, const void *act,
                         size_t act_stride, const int32_t *tok, int32_t n,
                         int64_t r0, int64_t r1, float *y, int64_t y_stride, float *rowbuf)
{
    if (r0 >= r1 || n <= 0)
        return;
    if (k == ACT_Q8) {
        kn->q4_q8(w, r0, r1, act, act_stride, tok, n, y, y_stride);
    } else if (w->type == KB_WTYPE_Q4G32) {
        kn->q4_f32(w, r0, r1, act, (int64_t)(act_stride / sizeof(float)), tok, n,
                           y, y_stride, rowbuf);
    } else {
        kn->dense_f32(w, r0, r1, act, (int64_t)(act_stride / sizeof(float)), tok, n,
                      y, y_stride, rowbuf);
    }
}

/* ------------------------------------------------------------------ */
/* matmul                                                               */

struct mm_ctx {
    struct cpu_fast        *f;
    const struct kb_weight *w;
    enum act_kind           k;
    const void             *act;
    size_t                  act_stride;
    int32_t                 n;
    float                  *y;
};

static void mm_job(void *arg, int32_t tid, int32_t nth)
{
    struct mm_ctx *c = arg;
    int64_t r0, r1;
    tp_split(c->w->rows, FAST_ROW_ALIGN, tid, nth, &r0, &r1);
    product_rows(c->f->kn, c->w, c->k, c->act, c->act_stride, NULL, c->n, r0, r1, c->y, c->w->rows,
                 c->f->ts[tid].buf);
}

static int fast_matmul_impl(struct kb_backend *be, const struct kb_weight *w,
                            const float *x, int32_t n, float *y, bool force_exact)
{
    struct cpu_fast *f = fast_of(be);
    enum act_kind k = force_exact ? ACT_F32 : act_kind_for(f, w);
    size_t stride = act_row_bytes(k, w->cols);
    const void *act = x;
    if (k != ACT_F32) {
        uint8_t *a = scratch(f, stride * (size_t)n);
        if (!a)
            return fast_fail(be, -ENOMEM, "matmul: out of memory");
        for (int32_t t = 0; t < n; t++)
            act_convert(f->kn, k, x + (int64_t)t * w->cols, w->cols, a + (size_t)t * stride);
        act = a;
    }
    /* the row buffer: a dequantised W4 row, or FAST_DENSE_XTOK tokens of x
     * split into even and odd columns for the bf16 kernel */
    if (tscratch(f, (size_t)w->cols * FAST_DENSE_XTOK))
        return fast_fail(be, -ENOMEM, "matmul: out of memory");
    struct mm_ctx c = { f, w, k, act, stride, n, y };
    /* tiny products (norm-like vectors, the shared-expert gate, the GDN
     * beta / alpha projections of 32 x 2048 in decode: ~5 us of work) are
     * not worth a hand-off to the pool, which costs as much and, on a
     * loaded machine, waits for a descheduled worker */
    if (w->rows * w->cols * (int64_t)n <= (1 << 17))
        mm_job(&c, 0, 1);
    else
        tp_pool_run(f->tp, mm_job, &c);
    return 0;
}

static int fast_matmul(struct kb_backend *be, const struct kb_weight *w,
                       const float *x, int32_t n, float *y)
{
    struct cpu_fast *f = fast_of(be);
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->matmul(f->ref, w, x, n, y);
    if (!weight_ok(w) || n < 0 || (n > 0 && (!x || !y)))
        return fast_fail(be, -EINVAL, "matmul: bad weight or arguments");
    if (n == 0)
        return 0;
    return fast_matmul_impl(be, w, x, n, y, false);
}

/* ------------------------------------------------------------------ */
/* MoE                                                                  */

/* Work list of one MoE call. Assignments (token, weight) are sorted by
 * expert; expert e owns assignments [off[e], off[e+1]); the shared expert
 * is "expert" E with all n tokens. */
struct moe_ctx {
    struct cpu_fast      *f;
    const struct kb_moe  *m;
    enum act_kind         k;             /* for the expert products          */
    int32_t               n, E, H, I;    /* I: scratch row width (max inter) */
    const int32_t        *off;           /* [E+2]                            */
    const int32_t        *tok;           /* [A] token of each assignment     */
    const int32_t        *slot;          /* [n][K+1] assignment of (t, j)    */
    const float          *wt;            /* [A] routing weight               */
    const void           *actx;          /* x rows as k                      */
    size_t                actx_stride;
    float                *hg, *hu;       /* [A][I]                           */
    void                 *acth;          /* h rows as k                      */
    size_t                acth_stride;
    float                *ye;            /* [A][H]                           */
    float                *y;
    const int32_t        *items;         /* [n_items] expert << 16 | block   */
    int32_t               n_items;
    atomic_int            next;
};

static const struct kb_weight *moe_w(const struct kb_moe *m, int32_t E, int32_t e, int which)
{
    if (e == E)
        return which == 0 ? m->shared_gate : which == 1 ? m->shared_up : m->shared_down;
    return which == 0 ? &m->gate[e] : which == 1 ? &m->up[e] : &m->down[e];
}

/* gate and up projections of every (expert, row block) */
static void moe_job_gate_up(void *arg, int32_t tid, int32_t nth)
{
    struct moe_ctx *c = arg;
    int32_t it;
    while ((it = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed)) < c->n_items) {
        int32_t e = c->items[it] >> 16, blk = c->items[it] & 0xffff;
        const struct kb_weight *g = moe_w(c->m, c->E, e, 0), *u = moe_w(c->m, c->E, e, 1);
        int64_t r0 = (int64_t)blk * FAST_MOE_BLOCK;
        int64_t r1 = r0 + FAST_MOE_BLOCK < g->rows ? r0 + FAST_MOE_BLOCK : g->rows;
        int32_t a0 = c->off[e], cnt = c->off[e + 1] - a0;
        product_rows(c->f->kn, g, c->k, c->actx, c->actx_stride, c->tok + a0, cnt, r0, r1,
                     c->hg + (int64_t)a0 * c->I, c->I, c->f->ts[tid].buf);
        product_rows(c->f->kn, u, c->k, c->actx, c->actx_stride, c->tok + a0, cnt, r0, r1,
                     c->hu + (int64_t)a0 * c->I, c->I, c->f->ts[tid].buf);
    }
}

/* h = silu(g) * u per assignment, converted for the down projection */
static void moe_job_act(void *arg, int32_t tid, int32_t nth)
{
    struct moe_ctx *c = arg;
    const int32_t A = c->off[c->E + 1];
    int64_t b, e;
    tp_split(A, 1, tid, nth, &b, &e);
    for (int64_t a = b; a < e; a++) {
        int32_t ex = 0;
        /* the expert of assignment a (experts are few: binary search) */
        int32_t lo = 0, hi = c->E + 1;
        while (hi - lo > 1) {
            int32_t mid = (lo + hi) / 2;
            if (c->off[mid] <= a)
                lo = mid;
            else
                hi = mid;
        }
        ex = lo;
        int64_t inter = moe_w(c->m, c->E, ex, 0)->rows;
        float *h = c->hg + a * c->I;
        c->f->kn->swiglu(h, h, c->hu + a * c->I, inter);
        if (c->k != ACT_F32)
            act_convert(c->f->kn, c->k, h, inter, (uint8_t *)c->acth + (size_t)a * c->acth_stride);
    }
}

static void moe_job_down(void *arg, int32_t tid, int32_t nth)
{
    struct moe_ctx *c = arg;
    int32_t it;
    while ((it = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed)) < c->n_items) {
        int32_t e = c->items[it] >> 16, blk = c->items[it] & 0xffff;
        const struct kb_weight *d = moe_w(c->m, c->E, e, 2);
        int64_t r0 = (int64_t)blk * FAST_MOE_BLOCK;
        int64_t r1 = r0 + FAST_MOE_BLOCK < d->rows ? r0 + FAST_MOE_BLOCK : d->rows;
        int32_t a0 = c->off[e], cnt = c->off[e + 1] - a0;
        if (c->k == ACT_F32)
            product_rows(c->f->kn, d, ACT_F32, c->hg + (int64_t)a0 * c->I, (size_t)c->I * sizeof(float),
                         NULL, cnt, r0, r1, c->ye + (int64_t)a0 * c->H, c->H, c->f->ts[tid].buf);
        else
            product_rows(c->f->kn, d, c->k, (const uint8_t *)c->acth + (size_t)a0 * c->acth_stride,
                         c->acth_stride, NULL, cnt, r0, r1, c->ye + (int64_t)a0 * c->H, c->H,
                         c->f->ts[tid].buf);
    }
}

/* y[t] = sum_j w_j ye[slot(t, j)] (+ shared); threads split the columns */
static void moe_job_combine(void *arg, int32_t tid, int32_t nth)
{
    struct moe_ctx *c = arg;
    const int32_t K = c->m->top_k, S = K + 1;
    const bool shared = c->m->shared_inter > 0;
    int64_t c0, c1;
    tp_split(c->H, 16, tid, nth, &c0, &c1);
    for (int32_t t = 0; t < c->n; t++) {
        float *yt = c->y + (int64_t)t * c->H;
        memset(yt + c0, 0, (size_t)(c1 - c0) * sizeof(float));
        for (int32_t j = 0; j < K + (shared ? 1 : 0); j++) {
            int32_t a = c->slot[(int64_t)t * S + j];
            const float w = c->wt[a];
            const float *src = c->ye + (int64_t)a * c->H;
            for (int64_t i = c0; i < c1; i++)
                yt[i] += w * src[i];
        }
    }
}

static float sigmoidf_(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static int fast_moe(struct kb_backend *be, const struct kb_moe *m,
                    const float *x, int32_t n, float *y)
{
    struct cpu_fast *f = fast_of(be);
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->moe(f->ref, m, x, n, y);
    const int32_t E = m->n_experts, K = m->top_k, H = m->hidden;
    const int32_t I = m->inter > m->shared_inter ? m->inter : m->shared_inter;
    if (E <= 0 || E >= 32767 || K <= 0 || K > E || H <= 0 || m->inter <= 0 ||
        !weight_ok(m->router) || m->router->rows != E || m->router->cols != H)
        return fast_fail(be, -EINVAL, "moe: bad configuration");
    for (int32_t e = 0; e < E; e++)
        if (!weight_ok(&m->gate[e]) || !weight_ok(&m->up[e]) || !weight_ok(&m->down[e]) ||
            m->gate[e].rows != m->inter || m->gate[e].cols != H ||
            m->up[e].rows != m->inter || m->up[e].cols != H ||
            m->down[e].rows != H || m->down[e].cols != m->inter)
            return fast_fail(be, -EINVAL, "moe: expert weight shapes differ from the block");
    const bool shared = m->shared_inter > 0;
    if (shared &&
        (!weight_ok(m->shared_gate) || !weight_ok(m->shared_up) || !weight_ok(m->shared_down) ||
         m->shared_gate->rows != m->shared_inter || m->shared_gate->cols != H ||
         m->shared_up->rows != m->shared_inter || m->shared_up->cols != H ||
         m->shared_down->rows != H || m->shared_down->cols != m->shared_inter ||
         (m->shared_expert_gate && (!weight_ok(m->shared_expert_gate) ||
                                    m->shared_expert_gate->rows != 1 ||
                                    m->shared_expert_gate->cols != H))))
        return fast_fail(be, -EINVAL, "moe: shared expert shapes differ from the block");
    if (n <= 0)
        return n < 0 ? fast_fail(be, -EINVAL, "moe: negative row count") : 0;

    /* The activation kind is decided once for the block: int8 only when
     * every expert matrix is plain W4 (mixed checkpoints take fp32). */
    enum act_kind k = ACT_F32;
    if (!f->exact) {
        bool all_q4 = !shared || (q4_simple(m->shared_gate) && q4_simple(m->shared_up) &&
                                  q4_simple(m->shared_down));
        for (int32_t e = 0; e < E && all_q4; e++)
            all_q4 = q4_simple(&m->gate[e]) && q4_simple(&m->up[e]) && q4_simple(&m->down[e]);
        if (all_q4)
            k = ACT_Q8;
    }

    const size_t nn = (size_t)n, S = (size_t)K + 1;
    const size_t A = nn * S;                              /* upper bound     */
    const size_t xs = k == ACT_Q8 ? fast_q8_row_bytes(H) : 0;
    const size_t hs = k == ACT_Q8 ? fast_q8_row_bytes(I) : 0;
    const int32_t blocks_gu = (I + FAST_MOE_BLOCK - 1) / FAST_MOE_BLOCK;
    const int32_t blocks_d = (H + FAST_MOE_BLOCK - 1) / FAST_MOE_BLOCK;
    const size_t max_items = (size_t)(E + 1) * (size_t)(blocks_gu > blocks_d ? blocks_gu : blocks_d);
    size_t o_logits = 0;
    size_t o_sel = o_logits + align64(nn * (size_t)E * sizeof(float));
    size_t o_selw = o_sel + align64(nn * (size_t)K * sizeof(int32_t));
    size_t o_sg = o_selw + align64(nn * (size_t)K * sizeof(float));
    size_t o_off = o_sg + align64(nn * sizeof(float));
    size_t o_tok = o_off + align64(((size_t)E + 2) * sizeof(int32_t) * 2);
    size_t o_wt = o_tok + align64(A * sizeof(int32_t));
    size_t o_slot = o_wt + align64(A * sizeof(float));
    size_t o_items = o_slot + align64(A * sizeof(int32_t));
    size_t o_actx = o_items + align64(max_items * sizeof(int32_t));
    size_t o_hg = o_actx + align64(nn * xs);
    size_t o_hu = o_hg + align64(A * (size_t)I * sizeof(float));
    size_t o_acth = o_hu + align64(A * (size_t)I * sizeof(float));
    size_t o_ye = o_acth + align64(A * hs);
    size_t total = o_ye + align64(A * (size_t)H * sizeof(float));
    uint8_t *s = scratch(f, total);
    if (!s || tscratch(f, (size_t)(I > H ? I : H) * FAST_DENSE_XTOK))
        return fast_fail(be, -ENOMEM, "moe: out of memory");
    float *logits = (float *)(s + o_logits), *selw = (float *)(s + o_selw);
    float *sg = (float *)(s + o_sg), *wt = (float *)(s + o_wt);
    int32_t *sel = (int32_t *)(s + o_sel), *off = (int32_t *)(s + o_off);
    int32_t *fill = off + E + 2, *tok = (int32_t *)(s + o_tok);
    int32_t *slot = (int32_t *)(s + o_slot), *items = (int32_t *)(s + o_items);

    /* router (exact fp32: selection must not flip on rounding) */
    struct mm_ctx rc_ = { f, m->router, ACT_F32, x, (size_t)H * sizeof(float), n, logits };
    tp_pool_run(f->tp, mm_job, &rc_);
    for (int32_t t = 0; t < n; t++) {
        float *l = logits + (int64_t)t * E;
        float mx = -INFINITY;
        for (int32_t e = 0; e < E; e++)
            mx = l[e] > mx ? l[e] : mx;
        double sum = 0.0;
        for (int32_t e = 0; e < E; e++) {
            l[e] = expf(l[e] - mx);
            sum += l[e];
        }
        const float inv = (float)(1.0 / sum);
        /* top-k by repeated max over the unnormalised values (same order,
         * first index wins ties like the reference) */
        int32_t *st = sel + (int64_t)t * K;
        float *sw = selw + (int64_t)t * K;
        double wsum = 0.0;
        for (int32_t j = 0; j < K; j++) {
            int32_t best = -1;
            for (int32_t e = 0; e < E; e++) {
                if (l[e] < 0.0f)
                    continue;                            /* taken            */
                if (best < 0 || l[e] > l[best])
                    best = e;
            }
            st[j] = best;
            sw[j] = l[best] * inv;
            wsum += sw[j];
            l[best] = -1.0f;
        }
        if (m->norm_topk)
            for (int32_t j = 0; j < K; j++)
                sw[j] = (float)(sw[j] / wsum);
        sg[t] = 1.0f;
        if (shared && m->shared_expert_gate) {
            product_rows(f->kn, m->shared_expert_gate, ACT_F32, x + (int64_t)t * H, (size_t)H * sizeof(float),
                         NULL, 1, 0, 1, sg + t, 1, NULL);
            sg[t] = sigmoidf_(sg[t]);
        }
    }

    /* group the assignments by expert (counting sort) */
    memset(off, 0, ((size_t)E + 2) * sizeof(int32_t));
    for (size_t i = 0; i < nn * (size_t)K; i++)
        off[sel[i] + 1]++;
    off[E + 1] = shared ? n : 0;
    for (int32_t e = 0; e <= E; e++)
        off[e + 1] += off[e];
    memcpy(fill, off, ((size_t)E + 2) * sizeof(int32_t));
    for (int32_t t = 0; t < n; t++) {
        for (int32_t j = 0; j < K; j++) {
            int32_t e = sel[(int64_t)t * K + j], a = fill[e]++;
            tok[a] = t;
            wt[a] = selw[(int64_t)t * K + j];
            slot[(int64_t)t * (int64_t)S + j] = a;
        }
        if (shared) {
            int32_t a = fill[E]++;
            tok[a] = t;
            wt[a] = sg[t];
            slot[(int64_t)t * (int64_t)S + K] = a;
        }
    }

    struct moe_ctx c = {
        .f = f, .m = m, .k = k, .n = n, .E = E, .H = H, .I = I,
        .off = off, .tok = tok, .slot = slot, .wt = wt,
        .actx = x, .actx_stride = (size_t)H * sizeof(float),
        .hg = (float *)(s + o_hg), .hu = (float *)(s + o_hu),
        .acth = s + o_acth, .acth_stride = hs,
        .ye = (float *)(s + o_ye), .y = y, .items = items,
    };
    if (k == ACT_Q8) {
        uint8_t *ax = s + o_actx;
        for (int32_t t = 0; t < n; t++)
            f->kn->q8_quantize(x + (int64_t)t * H, H, ax + (size_t)t * xs);
        c.actx = ax;
        c.actx_stride = xs;
    }
    /* items of the gate/up pass: the biggest experts first, so the tail of
     * the atomic queue is small work */
    int32_t ni = 0;
    for (int32_t e = 0; e <= E; e++) {
        if (off[e + 1] == off[e])
            continue;
        int32_t rows = (int32_t)moe_w(m, E, e, 0)->rows;
        for (int32_t b = 0; b * FAST_MOE_BLOCK < rows; b++)
            items[ni++] = e << 16 | b;
    }
    c.n_items = ni;
    atomic_init(&c.next, 0);
    /* in decode (a token or two) SwiGLU and the combine are a few
     * thousand floats: the calling thread does them without a hand-off */
    const bool small = n <= 2;
    tp_pool_run(f->tp, moe_job_gate_up, &c);
    if (small)
        moe_job_act(&c, 0, 1);
    else
        tp_pool_run(f->tp, moe_job_act, &c);
    ni = 0;
    for (int32_t e = 0; e <= E; e++) {
        if (off[e + 1] == off[e])
            continue;
        for (int32_t b = 0; b < blocks_d; b++)
            items[ni++] = e << 16 | b;
    }
    c.n_items = ni;
    atomic_store(&c.next, 0);
    tp_pool_run(f->tp, moe_job_down, &c);
    if (small)
        moe_job_combine(&c, 0, 1);
    else
        tp_pool_run(f->tp, moe_job_combine, &c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Attention                                                            */

/* Query tokens per block of attention rows (with the query heads of one
 * GQA group: 4 x 8 = 32 rows of the real model per KV-cache pass). */
#define FAST_ATTN_TOKENS 4

struct attn_ctx {
    struct cpu_fast      *f;
    const struct kb_attn *a;
    const struct kb_kv   *kv;
    int64_t               past;
    const float          *q;
    int64_t               q_stride;
    int32_t               n;
    float                *out;
    int32_t               sg;            /* query heads per item (blocks)    */
    int64_t               scores_ld;
    atomic_int            next;
};

/* Element i of a K or V cache array (f16 or fp32 elements). */
static void *kv_elem(void *base, int64_t i, bool f16)
{
    return (char *)base + i * (f16 ? 2 : 4);
}

/* One row per (token, head): the kernels without attn_rows, and head
 * sizes that are not a multiple of 32. */
static void attn_job_rows(struct attn_ctx *c, int32_t tid)
{
    const int32_t nh = c->a->n_heads, hd = c->a->head_dim, group = nh / c->a->n_kv_heads;
    const int64_t row = (int64_t)c->a->n_kv_heads * hd, items = (int64_t)c->n * nh;
    float *scores = c->f->ts[tid].buf;
    int32_t it;
    /* later tokens have longer rows: hand them out first */
    while ((it = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed)) < items) {
        int64_t idx = items - 1 - it;
        int32_t t = (int32_t)(idx / nh), h = (int32_t)(idx % nh);
        const int64_t kh = h / group;
        c->f->kn->attn_row(c->q + ((int64_t)t * nh + h) * c->q_stride,
                           kv_elem(c->kv->k, kh * hd, c->f->kv_f16),
                           kv_elem(c->kv->v, kh * hd, c->f->kv_f16), row, c->past + t + 1, hd,
                           c->a->scale, scores, c->out + ((int64_t)t * nh + h) * hd,
                           c->f->kv_f16);
    }
}

/* Items = (block of FAST_ATTN_TOKENS tokens, KV head, sg of its query
 * heads): every row of an item shares the KV head, so the kernel reads
 * that head's cache once per item. */
static void attn_job(void *arg, int32_t tid, int32_t nth)
{
    struct attn_ctx *c = arg;
    (void)nth;
    if (!c->sg) {
        attn_job_rows(c, tid);
        return;
    }
    const int32_t nh = c->a->n_heads, nkv = c->a->n_kv_heads, hd = c->a->head_dim;
    const int32_t group = nh / nkv, nsub = group / c->sg;
    const int64_t row = (int64_t)nkv * hd;
    const int64_t ntb = (c->n + FAST_ATTN_TOKENS - 1) / FAST_ATTN_TOKENS;
    const int64_t items = ntb * nkv * nsub;
    float *scores = c->f->ts[tid].buf;
    const float *qs[FAST_ATTN_MAX_ROWS];
    float *outs[FAST_ATTN_MAX_ROWS];
    int64_t lens[FAST_ATTN_MAX_ROWS];
    int32_t it;
    while ((it = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed)) < items) {
        const int64_t idx = items - 1 - it;      /* later tokens first */
        const int64_t tb = idx / (nkv * nsub), rest = idx % (nkv * nsub);
        const int32_t kh = (int32_t)(rest / nsub), h0 = kh * group + (int32_t)(rest % nsub) * c->sg;
        const int32_t t0 = (int32_t)(tb * FAST_ATTN_TOKENS);
        const int32_t t1 = c->n - t0 < FAST_ATTN_TOKENS ? c->n : t0 + FAST_ATTN_TOKENS;
        int32_t nr = 0;
        for (int32_t t = t0; t < t1; t++)
            for (int32_t h = h0; h < h0 + c->sg; h++) {
                qs[nr] = c->q + ((int64_t)t * nh + h) * c->q_stride;
                outs[nr] = c->out + ((int64_t)t * nh + h) * hd;
                lens[nr++] = c->past + t + 1;
            }
        c->f->kn->attn_rows(qs, lens, nr, kv_elem(c->kv->k, (int64_t)kh * hd, c->f->kv_f16),
                            kv_elem(c->kv->v, (int64_t)kh * hd, c->f->kv_f16), row, hd,
                            c->a->scale, scores, c->scores_ld, outs, c->f->kv_f16);
    }
}

static int fast_attention(struct kb_backend *be, const struct kb_attn *at,
                          struct kb_kv *kv, int64_t past,
                          const float *q, int64_t q_stride,
                          const float *k, const float *v, int32_t n, float *out)
{
    struct cpu_fast *f = fast_of(be);
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->attention(f->ref, at, kv, past, q, q_stride, k, v, n, out);
    const int32_t nh = at->n_heads, nkv = at->n_kv_heads, hd = at->head_dim;
    if (nh <= 0 || nkv <= 0 || nh % nkv || hd <= 0 || q_stride < hd)
        return fast_fail(be, -EINVAL, "attention: bad head configuration");
    if (past < 0 || n < 0 || past + n > kv->capacity)
        return fast_fail(be, -EINVAL, "attention: KV cache capacity exceeded");
    const int64_t row = (int64_t)nkv * hd;
    if (f->kv_f16) {
        f->kn->f32_to_f16(kv_elem(kv->k, past * row, true), k, (int64_t)n * row);
        f->kn->f32_to_f16(kv_elem(kv->v, past * row, true), v, (int64_t)n * row);
    } else {
        memcpy(kv_elem(kv->k, past * row, false), k, (size_t)n * (size_t)row * sizeof(float));
        memcpy(kv_elem(kv->v, past * row, false), v, (size_t)n * (size_t)row * sizeof(float));
    }
    /* blocks of rows where the kernel has them; the whole GQA group per
     * item when there are enough items to keep the threads busy, else one
     * head per item (decode: n = 1) */
    const int32_t group = nh / nkv;
    int32_t sg = 0;
    if (f->kn->attn_rows && hd % 32 == 0)
        sg = group * FAST_ATTN_TOKENS <= FAST_ATTN_MAX_ROWS &&
             (int64_t)n * nkv >= 2 * (int64_t)f->n_threads ? group : 1;
    const int64_t ld = (past + n + 15) / 16 * 16;
    const size_t need = sg ? (size_t)(sg * FAST_ATTN_TOKENS) * (size_t)ld : (size_t)(past + n + 16);
    if (tscratch(f, need))
        return fast_fail(be, -ENOMEM, "attention: out of memory");
    struct attn_ctx c = { .f = f, .a = at, .kv = kv, .past = past, .q = q,
                          .q_stride = q_stride, .n = n, .out = out, .sg = sg, .scores_ld = ld };
    atomic_init(&c.next, 0);
    tp_pool_run(f->tp, attn_job, &c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Embed, norms, RoPE, elementwise (fast-elem.c; scalar level: cpu-ref)  */

static int fast_embed(struct kb_backend *be, const struct kb_weight *table,
                      const int32_t *ids, int32_t n, float *out)
{
    struct cpu_fast *f = fast_of(be);
    const char *what = "";
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->embed(f->ref, table, ids, n, out);
    int rc = fast_elem_embed(&f->el, table, ids, n, out, &what);
    return rc ? fast_fail(be, rc, what) : 0;
}

static int fast_rmsnorm(struct kb_backend *be, float *y, int64_t y_stride,
                        const float *x, int64_t x_stride, int64_t rows, int32_t dim,
                        const struct kb_weight *w, float eps, bool plus_one)
{
    struct cpu_fast *f = fast_of(be);
    const char *what = "";
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->rmsnorm(f->ref, y, y_stride, x, x_stride, rows, dim, w, eps, plus_one);
    int rc = fast_elem_rmsnorm(&f->el, y, y_stride, x, x_stride, rows, dim, w, eps, plus_one,
                               &what);
    return rc ? fast_fail(be, rc, what) : 0;
}

static int fast_rope(struct kb_backend *be, float *x, int32_t n, int32_t rows_per_token,
                     int64_t stride, int32_t rot_dim, const int32_t *pos, double theta)
{
    struct cpu_fast *f = fast_of(be);
    const char *what = "";
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->rope(f->ref, x, n, rows_per_token, stride, rot_dim, pos, theta);
    int rc = fast_elem_rope(&f->el, x, n, rows_per_token, stride, rot_dim, pos, theta, &what);
    return rc ? fast_fail(be, rc, what) : 0;
}

static int fast_add(struct kb_backend *be, float *y, const float *a, const float *b,
                    int64_t count)
{
    struct cpu_fast *f = fast_of(be);
    const char *what = "";
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->add(f->ref, y, a, b, count);
    int rc = fast_elem_add(&f->el, y, a, b, count, &what);
    return rc ? fast_fail(be, rc, what) : 0;
}

static int fast_mul_sigmoid(struct kb_backend *be, float *y, int64_t y_stride,
                            const float *x, int64_t x_stride,
                            const float *gate, int64_t gate_stride,
                            int64_t rows, int32_t dim)
{
    struct cpu_fast *f = fast_of(be);
    const char *what = "";
    if (f->isa == KB_CPU_ISA_SCALAR)
        return f->ref->ops->mul_sigmoid(f->ref, y, y_stride, x, x_stride, gate, gate_stride,
                                        rows, dim);
    int rc = fast_elem_mul_sigmoid(&f->el, y, y_stride, x, x_stride, gate, gate_stride, rows,
                                   dim, &what);
    return rc ? fast_fail(be, rc, what) : 0;
}

/* ------------------------------------------------------------------ */
/* Gated DeltaNet                                                       */

/* A small weight (conv taps, A_log, dt_bias, norm) as floats, converted
 * once and cached by data pointer (weights never move while loaded). */
static const float *const_floats(struct cpu_fast *f, const struct kb_weight *w)
{
    for (int32_t i = 0; i < f->n_consts; i++)
        if (f->consts[i].key == w->data)
            return f->consts[i].vals;
    if (f->n_consts == FAST_MAX_CONSTS)
        return NULL;
    float *v = malloc((size_t)(w->rows * w->cols) * sizeof(float));
    if (!v)
        return NULL;
    for (int64_t r = 0; r < w->rows; r++)
        kb_ref_weight_row(w, r, v + r * w->cols);
    f->consts[f->n_consts].key = w->data;
    f->consts[f->n_consts].vals = v;
    f->n_consts++;
    return v;
}

struct gdn_ctx {
    const struct fast_kernels *kn;
    const struct fast_tscratch *ts;      /* per-thread scratch (chunked form) */
    const struct kb_gdn *g;
    struct kb_gdn_state *st;
    const float *u;                      /* [n][conv_dim] after conv, SiLU, l2norm */
    const float *z, *b, *a, *A_log, *dt_bias, *norm;
    int32_t n;
    float *y;
    bool chunked;
};

static float silu_f(float x)
{
    return x / (1.0f + expf(-x));
}

/* Gated RMSNorm of token t, value head j, in place:
 * w * (o * rsqrt(mean(o^2) + eps)) * silu(z) */
static void gdn_out_norm(const struct gdn_ctx *c, int32_t t, int64_t j)
{
    const int32_t dv = c->g->d_v;
    const int64_t val_dim = (int64_t)c->g->n_v_heads * dv;
    float *yo = c->y + (int64_t)t * val_dim + j * dv;
    double ss = 0.0;
    for (int32_t i = 0; i < dv; i++)
        ss += (double)yo[i] * yo[i];
    float inv = (float)(1.0 / sqrt(ss / dv + (double)c->g->norm_eps));
    const float *zj = c->z + (int64_t)t * val_dim + j * dv;
    for (int32_t i = 0; i < dv; i++)
        yo[i] = c->norm[i] * (yo[i] * inv) * silu_f(zj[i]);
}

/* Threads own value heads; each runs its heads through all n tokens:
 * token by token (the recurrence), or in chunks (fast-gdn.c) from
 * gdn_chunk_min tokens on when the chunked form is switched on (off by
 * default: fast-gdn.h, FAST_GDN_CHUNK_DEFAULT). */
static void gdn_job(void *arg, int32_t tid, int32_t nth)
{
    struct gdn_ctx *c = arg;
    const struct kb_gdn *g = c->g;
    const int32_t nk = g->n_k_heads, nv = g->n_v_heads, dk = g->d_k, dv = g->d_v, r = nv / nk;
    const int64_t key_dim = (int64_t)nk * dk, val_dim = (int64_t)nv * dv;
    const int64_t conv_dim = 2 * key_dim + val_dim;
    int64_t j0, j1;
    tp_split(nv, 1, tid, nth, &j0, &j1);
    /* Flush denormals to zero (FTZ | DAZ) while the recurrence runs: a
     * head whose decay is small drives its state entries below 1e-38,
     * and every multiply that meets a denormal takes a microcode assist
     * (~100 cycles on Intel). On the shape-faithful synthetic model this
     * made the recurrence 20 % of a 512-token prefill; flushed, 2 %
     * (docs/performance.md, CPU). Values that small carry nothing into
     * the output (the state meets q and k of norm 1). The previous mode
     * is restored, so no other op and no other user of this thread sees
     * the change, and the result does not depend on the thread count.
     * The chunked form meets the same state (and decay ratios that
     * underflow), so it runs under the same mode. */
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    if (c->chunked) {
        for (int64_t j = j0; j < j1; j++) {
            const struct fast_gdn_seq seq = {
                .q = c->u + (j / r) * dk, .k = c->u + key_dim + (j / r) * dk,
                .v = c->u + 2 * key_dim + j * dv, .in_stride = conv_dim,
                .b = c->b + j, .a = c->a + j, .gate_stride = nv,
                .A = expf(c->A_log[j]), .dt_bias = c->dt_bias[j],
                .o = c->y + j * dv, .o_stride = val_dim, .n = c->n, .dk = dk, .dv = dv,
            };
            fast_gdn_chunked(c->kn, c->st->ssm + j * dk * dv, &seq, c->ts[tid].buf);
            for (int32_t t = 0; t < c->n; t++)
                gdn_out_norm(c, t, j);
        }
        _mm_setcsr(csr);
        return;
    }
    for (int32_t t = 0; t < c->n; t++) {
        const float *u = c->u + (int64_t)t * conv_dim;
        for (int64_t j = j0; j < j1; j++) {
            const float *qh = u + (j / r) * dk, *kh = u + key_dim + (j / r) * dk;
            const float *vh = u + 2 * key_dim + j * dv;
            float bt = c->b[(int64_t)t * nv + j], at = c->a[(int64_t)t * nv + j] + c->dt_bias[j];
            float beta = 1.0f / (1.0f + expf(-bt));
            float sp = at > 20.0f ? at : log1pf(expf(at));
            float decay = expf(-expf(c->A_log[j]) * sp);
            float *yo = c->y + (int64_t)t * val_dim + j * dv;
            c->kn->gdn_head(c->st->ssm + j * dk * dv, qh, kh, vh, beta, decay, dk, dv, yo);
            gdn_out_norm(c, t, j);
        }
    }
    _mm_setcsr(csr);
}

static int fast_gdn(struct kb_backend *be, const struct kb_gdn *g,
                    struct kb_gdn_state *st, const float *qkv, const float *z,
                    const float *b, const float *a, int32_t n, float *y)
{
    struct cpu_fast *f = fast_of(be);
    const int32_t nk = g->n_k_heads, nv = g->n_v_heads, dk = g->d_k, dv = g->d_v;
    const int32_t K = g->conv_kernel;
    if (f->isa == KB_CPU_ISA_SCALAR || dv % 16 || n <= 0 || nk <= 0 || nv <= 0 || nv % nk ||
        dk <= 0 || K < 1)
        return f->ref->ops->gdn(f->ref, g, st, qkv, z, b, a, n, y);
    const int64_t key_dim = (int64_t)nk * dk, val_dim = (int64_t)nv * dv;
    const int64_t conv_dim = 2 * key_dim + val_dim;
    if (!kb_ref_gdn_consts_ok(g))
        return fast_fail(be, -EINVAL, "gdn: constant tensors do not match the head configuration");
    const float *w = const_floats(f, g->conv1d), *A_log = const_floats(f, g->A_log);
    const float *dt_bias = const_floats(f, g->dt_bias), *norm = const_floats(f, g->norm);
    float *u = scratch(f, (size_t)n * (size_t)conv_dim * sizeof(float));
    if (!w || !A_log || !dt_bias || !norm || !u)
        return fast_fail(be, -ENOMEM, "gdn: out of memory");
    /* 2. causal depthwise conv over [state (K-1 inputs, oldest first), x],
     *    tap K-1 on the current token, then SiLU; input p < 0 is state row
     *    p + K - 1 */
    for (int32_t t = 0; t < n; t++) {
        float *ut = u + (int64_t)t * conv_dim;
        const float *xt = qkv + (int64_t)t * conv_dim;
        for (int64_t c = 0; c < conv_dim; c++)
            ut[c] = w[c * K + K - 1] * xt[c];
        for (int32_t j = 0; j < K - 1; j++) {
            int64_t p = (int64_t)t - (K - 1) + j;
            const float *src = p < 0 ? st->conv + (p + K - 1) * conv_dim : qkv + p * conv_dim;
            for (int64_t c = 0; c < conv_dim; c++)
                ut[c] += w[c * K + j] * src[c];
        }
        for (int64_t c = 0; c < conv_dim; c++)
            ut[c] = silu_f(ut[c]);
        /* 6. l2norm per k head (eps inside the sqrt); q also scaled dk^-1/2 */
        for (int32_t h = 0; h < nk; h++) {
            float *qh = ut + (int64_t)h * dk, *kh = ut + key_dim + (int64_t)h * dk;
            double sq = 0.0, sk = 0.0;
            for (int32_t i = 0; i < dk; i++) {
                sq += (double)qh[i] * qh[i];
                sk += (double)kh[i] * kh[i];
            }
            float iq = (float)(1.0 / sqrt(sq + 1e-6)) / sqrtf((float)dk);
            float ik = (float)(1.0 / sqrt(sk + 1e-6));
            for (int32_t i = 0; i < dk; i++) {
                qh[i] *= iq;
                kh[i] *= ik;
            }
        }
    }
    /* the new conv state: the last K-1 inputs */
    for (int32_t j = 0; j < K - 1; j++) {
        int64_t p = (int64_t)n - (K - 1) + j;
        if (p < 0)                                    /* still in the old state */
            memmove(st->conv + (int64_t)j * conv_dim, st->conv + (p + K - 1) * conv_dim,
                    (size_t)conv_dim * sizeof(float));
        else
            memcpy(st->conv + (int64_t)j * conv_dim, qkv + p * conv_dim,
                   (size_t)conv_dim * sizeof(float));
    }
    const bool chunked = n >= f->gdn_chunk_min;
    if (chunked && tscratch(f, fast_gdn_chunked_scratch(dk, dv)))
        return fast_fail(be, -ENOMEM, "gdn: out of memory");
    struct gdn_ctx c = { f->kn, f->ts, g, st, u, z, b, a, A_log, dt_bias, norm, n, y, chunked };
    tp_pool_run(f->tp, gdn_job, &c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Memory and lifetime                                                  */

static void *fast_alloc(struct kb_backend *be, size_t bytes)
{
    /* 64-byte aligned so vector loads of activation rows never split a
     * cache line at the start */
    size_t sz = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, sz ? sz : 64);
    if (p)
        memset(p, 0, sz ? sz : 64);
    return p;
}

static const char *fast_last_error(struct kb_backend *be)
{
    struct cpu_fast *f = fast_of(be);
    if (f->err[0])
        return f->err;
    return f->ref->ops->last_error ? f->ref->ops->last_error(f->ref) : "";
}

static void fast_destroy(struct kb_backend *be)
{
    if (!be)
        return;
    struct cpu_fast *f = fast_of(be);
    if (f) {
        tp_pool_destroy(f->tp);
        if (f->ref)
            f->ref->ops->destroy(f->ref);
        for (int32_t i = 0; i < FAST_MAX_THREADS; i++)
            free(f->ts[i].buf);
        for (int32_t i = 0; i < f->n_consts; i++)
            free(f->consts[i].vals);
        free(f->scr);
        fast_elem_release(&f->el);
        free(f);
    }
    free(be);
}

/* Per instance: the f16 KV cache is the "cpu" mode's (fast_create). */
static uint32_t fast_caps(struct kb_backend *be)
{
    return kb_host_caps(be) | (fast_of(be)->kv_f16 ? KB_CAP_KV_F16 : 0);
}

static const struct kb_backend_ops fast_ops = {
    .api_version = KB_API_VERSION,
    .name = "cpu",
    .caps = fast_caps,
    .last_error = fast_last_error,
    .destroy = fast_destroy,
    .alloc = fast_alloc,
    .free = kb_host_free,
    .upload = kb_host_memcpy,
    .download = kb_host_memcpy,
    .copy = kb_host_memcpy,
    .zero = kb_host_zero,
    .embed = fast_embed,
    .matmul = fast_matmul,
    .rmsnorm = fast_rmsnorm,
    .rope = fast_rope,
    .add = fast_add,
    .mul_sigmoid = fast_mul_sigmoid,
    .gdn = fast_gdn,
    .attention = fast_attention,
    .moe = fast_moe,
};

static const struct kb_backend_ops fast_exact_ops = {
    .api_version = KB_API_VERSION,
    .name = "cpu-exact",
    .caps = fast_caps,
    .last_error = fast_last_error,
    .destroy = fast_destroy,
    .alloc = fast_alloc,
    .free = kb_host_free,
    .upload = kb_host_memcpy,
    .download = kb_host_memcpy,
    .copy = kb_host_memcpy,
    .zero = kb_host_zero,
    .embed = fast_embed,
    .matmul = fast_matmul,
    .rmsnorm = fast_rmsnorm,
    .rope = fast_rope,
    .add = fast_add,
    .mul_sigmoid = fast_mul_sigmoid,
    .gdn = fast_gdn,
    .attention = fast_attention,
    .moe = fast_moe,
};

int32_t kb_cpu_fast_isa(struct kb_backend *be)
{
    return fast_of(be)->isa;
}

int32_t kb_cpu_fast_threads(struct kb_backend *be)
{
    return fast_of(be)->n_threads;
}

int kb_cpu_fast_create(const struct kb_cpu_fast_params *params, struct kb_backend **out)
{
    struct kb_cpu_fast_params p = KB_CPU_FAST_PARAMS_DEFAULT;
    if (params)
        p = *params;
    if (p.n_threads < 0 || p.n_threads > FAST_MAX_THREADS)
        return -EINVAL;
    static pthread_once_t eps_once = PTHREAD_ONCE_INIT;
    pthread_once(&eps_once, fast_q4_eps_init);
    int32_t isa = p.isa;
    if (isa == KB_CPU_ISA_AUTO && kb_cpu_isa_parse(getenv("RESIDENT_CPU_ISA"), &isa))
        return -EINVAL;
    if (isa == KB_CPU_ISA_AUTO)
        isa = kb_cpu_fast_best_isa();
    if (isa != KB_CPU_ISA_SCALAR && isa != KB_CPU_ISA_AVX2 && isa != KB_CPU_ISA_AVX2_VNNI &&
        isa != KB_CPU_ISA_AVX512)
        return -EINVAL;
    /* per level, not by order: an AVX-512 CPU may lack AVX-VNNI */
    if (!kb_cpu_isa_supported(isa))
        return -ENOTSUP;
    int32_t chunk_min = p.gdn_chunk_min < 0 ? INT32_MAX : p.gdn_chunk_min;
    const char *cm = getenv("RESIDENT_GDN_CHUNK_MIN");
    if (chunk_min == 0 && cm && *cm) {
        char *end;
        long v = strtol(cm, &end, 10);
        if (*end || v < 0 || v > INT32_MAX)
            return -EINVAL;
        chunk_min = v == 0 ? INT32_MAX : (int32_t)v;
    }
    if (chunk_min == 0)
        chunk_min = FAST_GDN_CHUNK_DEFAULT;
    /* f16 KV: the fast mode on a SIMD level (the scalar level's attention
     * is cpu-ref's, which reads fp32) unless RESIDENT_KV_F16=0 */
    bool kv_f16 = !p.exact && isa != KB_CPU_ISA_SCALAR;
    const char *kf = getenv("RESIDENT_KV_F16");
    if (kf && *kf && strcmp(kf, "0") && strcmp(kf, "1"))
        return -EINVAL;
    if (kf && !strcmp(kf, "0"))
        kv_f16 = false;
    int32_t nt = p.n_threads;
    if (nt == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nt = c < 1 ? 1 : c > FAST_MAX_THREADS ? FAST_MAX_THREADS : (int32_t)c;
    }
    struct kb_backend *be = calloc(1, sizeof(*be));
    struct cpu_fast *f = calloc(1, sizeof(*f));
    if (!be || !f) {
        free(be);
        free(f);
        return -ENOMEM;
    }
    be->impl = f;
    be->ops = p.exact ? &fast_exact_ops : &fast_ops;
    f->isa = isa;
    f->kn_vnni = fast_kernels_avx2;
    f->kn_vnni.q4_q8 = fast_q4_q8_avx2vnni;
    f->kn = isa == KB_CPU_ISA_AVX512 ? &fast_kernels_avx512 :
            isa == KB_CPU_ISA_AVX2_VNNI ? &f->kn_vnni :
            isa == KB_CPU_ISA_AVX2 ? &fast_kernels_avx2 : NULL;
    f->exact = p.exact;
    f->kv_f16 = kv_f16;
    f->gdn_chunk_min = chunk_min;
    f->n_threads = nt;
    struct kb_cpu_params rp = { .n_threads = nt > 64 ? 64 : nt };
    int rc = kb_cpu_ref_create(&rp, &f->ref);
    if (!rc)
        rc = tp_pool_create(nt, &f->tp);
    if (rc) {
        fast_destroy(be);
        return rc;
    }
    f->n_threads = tp_pool_size(f->tp);
    f->el.tp = f->tp;
    f->el.kn = f->kn;
    *out = be;
    return 0;
}
