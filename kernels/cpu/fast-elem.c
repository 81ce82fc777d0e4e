/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Embed, RMSNorm, RoPE, add and the sigmoid gate for the fast backend:
 * argument checks as in the reference backend, rows handed to the ISA's
 * row kernels (fast-elem-avx512.c / fast-elem-avx2.c), and the rows split
 * across the thread pool when there are enough of them.
 *
 * When to use the pool: these ops stream their rows once, in ~0.1-0.2 ns
 * per element on one core (the sigmoid gate ~1 ns), so a hand-off to the
 * pool pays only for large calls: it costs a few microseconds when the
 * worker is spinning, and on this shared 2-vCPU machine at load average
 * 15 the best of 50 back-to-back 64 x 2048 RMSNorms took 129 us on two
 * threads against 29 us on one (the worker waits for a CPU). Each call's
 * work is counted in "norm elements" (RMSNorm, embed and add elements
 * count 1, RoPE pairs 1, gate elements 5, from the one-core timings in
 * docs/performance.md, CPU, "Norms, RoPE and elementwise ops"); below
 * FAST_ELEM_POOL_MIN (~12 us of work, where an even split saves ~6 us)
 * the calling thread runs the op alone. That covers every decode call
 * (one token: 2048 floats for the residual ops, 16 x 256 for the q norm
 * and the gate) and, in a 64-token prefill chunk, the k norm and both
 * RoPE calls; the chunk's residual adds, norms, embed and gate split
 * their rows.
 *
 * RoPE: the reference computes, per (token, pair i), inv_freq =
 * 1 / powf(theta, 2i / rot_dim) and the angle pos * inv_freq in float, then
 * cosf / sinf (HF's rotary embedding rounds the same way). Here the same
 * expressions build a table of cos / sin per (token, i) once, and every
 * head of the token is rotated from it with vector loads; the table is kept
 * with its key (positions, rot_dim, theta), so the q and the k rotation of
 * every attention layer in one forward chunk (20 calls for 10 attention
 * layers) compute it once. Caching only the inverse frequencies would still
 * leave one cosf and one sinf per (token, i) per call, which is most of the
 * op's time at rot_dim 64; a vector sin / cos polynomial would be faster to
 * build but would no longer give the reference's bits.
 *
 * Not fused: the residual add and the RMSNorm of its sum (twice per
 * layer) could run row by row so that the sum is normed while still in L1
 * instead of being read back from L2. Measured on one core (thread CPU
 * time, AVX-512 kernels, hidden 2048, load average ~50 so +-10 %): 1 row
 * 0.37 vs 0.36 us, 64 rows (the engine's chunk: 512 KB per array, which
 * L2 holds) 36 vs 41 us, 512 rows (4 MB, past L2) 681 vs 586 us. Only the
 * 512-row case gains, and the forward pass never norms more than 64 rows
 * per call, so there is no fused op in the backend interface (the whole
 * add + norm pair is ~0.05 % of a 64-token chunk's time anyway).
 */
#include "kernels/cpu/fast-elem.h"

#include "kernels/cpu/ref.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Work ("norm elements", see the top of the file) from which a call is
 * split across the pool. */
#define FAST_ELEM_POOL_MIN (1 << 16)
#define FAST_ELEM_GATE_COST 5

/* add is split in pieces of whole cache lines */
#define FAST_ELEM_ADD_ALIGN 16

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = need + need / 4 + 64;
    void *q = aligned_alloc(64, (cap2 * elem + 63) & ~(size_t)63);
    if (!q)
        return -ENOMEM;
    free(*p);
    *p = q;
    *cap = cap2;
    return 0;
}

static void elem_run(struct fast_elem *e, int64_t work, tp_fn fn, void *ctx)
{
    if (work < FAST_ELEM_POOL_MIN)
        fn(ctx, 0, 1);
    else
        tp_pool_run(e->tp, fn, ctx);
}

void fast_elem_release(struct fast_elem *e)
{
    free(e->wbuf);
    free(e->rope_cs);
    free(e->rope_pos);
    e->wbuf = e->rope_cs = NULL;
    e->rope_pos = NULL;
    e->wcap = e->rope_cap = e->rope_pos_cap = 0;
    e->rope_n = 0;
}

/* ------------------------------------------------------------------ */
/* embed                                                                */

struct embed_ctx {
    const struct fast_kernels *kn;
    const struct kb_weight    *t;
    const int32_t             *ids;
    int32_t                    n;
    float                     *out;
};

static void embed_job(void *arg, int32_t tid, int32_t nth)
{
    struct embed_ctx *c = arg;
    const int64_t cols = c->t->cols;
    const size_t esz = c->t->type == KB_WTYPE_F32 ? 4 : 2;
    int64_t t0, t1;
    tp_split(c->n, 1, tid, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        float *o = c->out + t * cols;
        if (c->t->type == KB_WTYPE_Q4G32)     /* a quantised table: the reference's row */
            kb_ref_weight_row(c->t, c->ids[t], o);
        else
            c->kn->cvt_row(o, (const uint8_t *)c->t->data + (size_t)c->ids[t] * (size_t)cols * esz,
                           c->t->type, cols);
    }
}

int fast_elem_embed(struct fast_elem *e, const struct kb_weight *table, const int32_t *ids,
                    int32_t n, float *out, const char **what)
{
    if (!kb_ref_weight_ok(table) || n < 0 || (n > 0 && (!ids || !out))) {
        *what = "embed: bad table";
        return -EINVAL;
    }
    /* every id before any row is written (the reference stops at the
     * first bad one, leaving the rows before it written) */
    for (int32_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= table->rows) {
            *what = "embed: token id out of range";
            return -EINVAL;
        }
    struct embed_ctx c = { e->kn, table, ids, n, out };
    elem_run(e, (int64_t)n * table->cols, embed_job, &c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* rmsnorm                                                              */

struct norm_ctx {
    const struct fast_kernels *kn;
    float                     *y;
    int64_t                    ys;
    const float               *x;
    int64_t                    xs, rows;
    int32_t                    dim;
    const float               *w;
    float                      eps;
};

static void norm_job(void *arg, int32_t tid, int32_t nth)
{
    struct norm_ctx *c = arg;
    int64_t r0, r1;
    tp_split(c->rows, 1, tid, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        c->kn->rmsnorm_row(c->y + r * c->ys, c->x + r * c->xs, c->w, c->dim, c->eps);
}

int fast_elem_rmsnorm(struct fast_elem *e, float *y, int64_t y_stride, const float *x,
                      int64_t x_stride, int64_t rows, int32_t dim, const struct kb_weight *w,
                      float eps, bool plus_one, const char **what)
{
    if (!kb_ref_weight_ok(w) || w->type == KB_WTYPE_Q4G32 || w->rows * w->cols != dim) {
        *what = "rmsnorm: weight size differs from dim";
        return -EINVAL;
    }
    if (rows <= 0)
        return 0;
    if (grow((void **)&e->wbuf, &e->wcap, (size_t)dim, sizeof(float))) {
        *what = "rmsnorm: out of memory";
        return -ENOMEM;
    }
    /* w + 1 in float, as the reference forms it (w + 0 for the plain form) */
    e->kn->cvt_row(e->wbuf, w->data, w->type, dim);
    const float one = plus_one ? 1.0f : 0.0f;
    for (int32_t i = 0; i < dim; i++)
        e->wbuf[i] += one;
    struct norm_ctx c = { e->kn, y, y_stride, x, x_stride, rows, dim, e->wbuf, eps };
    elem_run(e, rows * dim, norm_job, &c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* RoPE                                                                 */

struct rope_ctx {
    const struct fast_kernels *kn;
    float                     *x;
    int32_t                    n, heads, half;
    int64_t                    stride;
    const float               *cs;
};

static void rope_job(void *arg, int32_t tid, int32_t nth)
{
    struct rope_ctx *c = arg;
    int64_t t0, t1;
    tp_split(c->n, 1, tid, nth, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *cs = c->cs + t * 2 * c->half;
        for (int32_t h = 0; h < c->heads; h++)
            c->kn->rope_head(c->x + (t * c->heads + h) * c->stride, cs, cs + c->half, c->half);
    }
}

/* cos / sin per (token, i) for this call, reusing the last table when the
 * key is the same. */
static const float *rope_table(struct fast_elem *e, int32_t n, int32_t rot_dim,
                               const int32_t *pos, double theta)
{
    const int32_t half = rot_dim / 2;
    if (e->rope_n == n && e->rope_rot == rot_dim && e->rope_theta == theta &&
        !memcmp(e->rope_pos, pos, (size_t)n * sizeof(int32_t)))
        return e->rope_cs;
    e->rope_n = 0;                        /* invalid until rebuilt          */
    if (grow((void **)&e->rope_cs, &e->rope_cap, (size_t)n * (size_t)rot_dim, sizeof(float)) ||
        grow((void **)&e->rope_pos, &e->rope_pos_cap, (size_t)n, sizeof(int32_t)))
        return NULL;
    for (int32_t i = 0; i < half; i++) {
        /* the reference's expressions (ref.c, ref_rope), term for term */
        float inv_freq = 1.0f / powf((float)theta, (float)(2 * i) / (float)rot_dim);
        for (int32_t t = 0; t < n; t++) {
            float phi = (float)pos[t] * inv_freq;
            e->rope_cs[(int64_t)t * rot_dim + i] = cosf(phi);
            e->rope_cs[(int64_t)t * rot_dim + half + i] = sinf(phi);
        }
    }
    memcpy(e->rope_pos, pos, (size_t)n * sizeof(int32_t));
    e->rope_n = n;
    e->rope_rot = rot_dim;
    e->rope_theta = theta;
    return e->rope_cs;
}

int fast_elem_rope(struct fast_elem *e, float *x, int32_t n, int32_t rows_per_token,
                   int64_t stride, int32_t rot_dim, const int32_t *pos, double theta,
                   const char **what)
{
    if (rot_dim <= 0 || rot_dim % 2 || rot_dim > stride) {
        *what = "rope: rot_dim must be even and <= head size";
        return -EINVAL;
    }
    if (n <= 0 || rows_per_token <= 0)
        return 0;
    const float *cs = rope_table(e, n, rot_dim, pos, theta);
    if (!cs) {
        *what = "rope: out of memory";
        return -ENOMEM;
    }
    struct rope_ctx c = { e->kn, x, n, rows_per_token, rot_dim / 2, stride, cs };
    elem_run(e, (int64_t)n * rows_per_token * (rot_dim / 2), rope_job, &c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* add, sigmoid gate                                                    */

struct add_ctx {
    const struct fast_kernels *kn;
    float                     *y;
    const float               *a, *b;
    int64_t                    count;
};

static void add_job(void *arg, int32_t tid, int32_t nth)
{
    struct add_ctx *c = arg;
    int64_t i0, i1;
    tp_split(c->count, FAST_ELEM_ADD_ALIGN, tid, nth, &i0, &i1);
    if (i1 > i0)
        c->kn->add(c->y + i0, c->a + i0, c->b + i0, i1 - i0);
}

int fast_elem_add(struct fast_elem *e, float *y, const float *a, const float *b, int64_t count,
                  const char **what)
{
    (void)what;
    if (count <= 0)
        return 0;
    struct add_ctx c = { e->kn, y, a, b, count };
    elem_run(e, count, add_job, &c);
    return 0;
}

struct gate_ctx {
    const struct fast_kernels *kn;
    float                     *y;
    const float               *x, *g;
    int64_t                    ys, xs, gs, rows;
    int32_t                    dim;
};

static void gate_job(void *arg, int32_t tid, int32_t nth)
{
    struct gate_ctx *c = arg;
    int64_t r0, r1;
    tp_split(c->rows, 1, tid, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++)
        c->kn->mul_sigmoid(c->y + r * c->ys, c->x + r * c->xs, c->g + r * c->gs, c->dim);
}

int fast_elem_mul_sigmoid(struct fast_elem *e, float *y, int64_t y_stride, const float *x,
                          int64_t x_stride, const float *gate, int64_t gate_stride, int64_t rows,
                          int32_t dim, const char **what)
{
    (void)what;
    if (rows <= 0 || dim <= 0)
        return 0;
    struct gate_ctx c = { e->kn, y, x, gate, y_stride, x_stride, gate_stride, rows, dim };
    elem_run(e, FAST_ELEM_GATE_COST * rows * dim, gate_job, &c);
    return 0;
}
