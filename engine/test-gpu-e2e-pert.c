/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cpu-ref with the GPU backend's rounding, for engine/test-gpu-e2e.c.
 *
 * The GPU backend (kernels/cuda/gpu-backend.c) computes a W4 product in
 * one of two ways, both of which differ from the checkpoint's definition
 * (fp32 activations times bf16(q * s), which cpu-ref implements):
 *   GEMV (n <= 8 rows)  fp32 activations, weights q * s in fp32 (the product
 *                       is not rounded to bf16);
 *   MMQ  (n > 8 rows)   the same weights, activations quantised to int8 per
 *                       32 columns by quantize_q8g32 (d = amax / 127,
 *                       q = rint(x * 127 / amax) clamped to +-127).
 * Dense weights (router, shared-expert gate, lm_head, the bf16 fixture) are
 * fp32 math on both sides. The modes here put one or all of these rounding
 * steps into cpu-ref:
 *   PERT_BF16, PERT_Q8, PERT_W_EXACT, PERT_Q8_W_EXACT
 *       one perturbation at a time, for the drift calibration (`test-gpu-e2e
 *       --drift`): every matmul's inputs, and only the MoE block's input
 *       (its experts run inside cpu-ref's moe);
 *   PERT_GPU, the "GPU twin": exactly the GPU's choice per product, including
 *       inside the MoE block (router, softmax, top-k and renormalisation as
 *       cpu-ref; each routed expert's gate / up, its SwiGLU output into down,
 *       and the shared expert through GEMV or MMQ rounding by the block's
 *       token count n, as gb_moe does).
 * What the twin does not reproduce is the order of the fp32 sums (it sums
 * in double), a relative effect below 1e-6 per product. On random-weight
 * models that is still enough to flip a near-tied expert choice somewhere
 * else than on the GPU, so the twin's error against the goldens is a second
 * sample of the same amplified rounding, not the GPU's own error:
 * test-gpu-e2e bounds the GPU by twice the twin's error (see there).
 */
#include "engine/test-gpu-e2e-pert.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* gb_matmul: n <= 8 rows take the GEMV, more rows the MMQ */
#define PERT_GEMV_MAX 8

const char *const pert_name[N_PERT] = {
    "x->bf16", "x->int8/32", "W unrounded", "int8+W unr.", "GPU twin",
};

static float *pert_buf(struct pert_be *p, size_t n)
{
    if (n > p->cap) {
        free(p->buf);
        p->buf = malloc(n * sizeof(float));
        p->cap = p->buf ? n : 0;
    }
    return p->buf;
}

/* x[n] in place, as quantize_q8g32 then its dequantisation (q * d) */
static void round_q8g32(float *x, int64_t n)
{
    for (int64_t g = 0; g + 32 <= n; g += 32) {
        float amax = 0;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[g + i]));
        const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < 32; i++) {
            float q = rintf(x[g + i] * inv);
            q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
            x[g + i] = q * d;
        }
    }
}

static void pert_round(enum pert mode, float *x, int64_t n)
{
    if (mode == PERT_BF16) {
        for (int64_t i = 0; i < n; i++)
            x[i] = kb_bf16_to_f32(kb_f32_to_bf16(x[i]));
        return;
    }
    if (mode == PERT_W_EXACT)
        return;
    round_q8g32(x, n);
}

static float scale_at(const struct kb_weight *w, int64_t i)
{
    switch (w->scale_type) {
    case KB_WTYPE_BF16: return kb_bf16_to_f32(((const uint16_t *)w->scales)[i]);
    case KB_WTYPE_F16:  return kb_f16_to_f32(((const uint16_t *)w->scales)[i]);
    default:            return ((const float *)w->scales)[i];
    }
}

/* W4 with q * scale in fp32 (no bf16 rounding of the product) */
static void w4_unrounded(const struct kb_weight *w, const float *x, int32_t n, float *y)
{
    const int64_t K = w->cols, N = w->rows;
    const int32_t *pk = w->data;
    for (int64_t r = 0; r < N; r++) {
        for (int32_t t = 0; t < n; t++) {
            const float *xt = x + (int64_t)t * K;
            double acc = 0;
            for (int64_t c = 0; c < K; c++) {
                uint32_t word = (uint32_t)pk[r * (K / 8) + c / 8];
                int q = (int)((word >> (4 * (c % 8))) & 0xF) - 8;
                int64_t g = w->g_idx ? w->g_idx[c] : c / 32;
                acc += (double)((float)q * scale_at(w, r * (K / 32) + g)) * xt[c];
            }
            y[(int64_t)t * N + r] = (float)acc;
        }
    }
}

/* one product as the GPU computes it; q8: the MMQ's int8 inputs */
static int twin_matmul(struct pert_be *p, const struct kb_weight *w, const float *x, int32_t n, bool q8,
                       float *y)
{
    if (w->type != KB_WTYPE_Q4G32)
        return p->inner->ops->matmul(p->inner, w, x, n, y);
    const int64_t K = w->cols;
    float *xr = pert_buf(p, (size_t)n * (size_t)K);
    if (!xr)
        return -ENOMEM;
    memcpy(xr, x, sizeof(float) * (size_t)n * (size_t)K);
    if (q8)
        for (int32_t t = 0; t < n; t++)
            round_q8g32(xr + (int64_t)t * K, K);
    w4_unrounded(w, xr, n, y);
    return 0;
}

static int pert_matmul(struct kb_backend *be, const struct kb_weight *w, const float *x, int32_t n, float *y)
{
    struct pert_be *p = (struct pert_be *)be;
    if (p->mode == PERT_GPU)
        return twin_matmul(p, w, x, n, n > PERT_GEMV_MAX, y);
    const int64_t K = w->cols;
    float *xr = pert_buf(p, (size_t)n * (size_t)K);
    if (!xr)
        return -ENOMEM;
    memcpy(xr, x, sizeof(float) * (size_t)n * (size_t)K);
    for (int32_t t = 0; t < n; t++)
        pert_round(p->mode, xr + (int64_t)t * K, K);
    if ((p->mode != PERT_W_EXACT && p->mode != PERT_Q8_W_EXACT) || w->type != KB_WTYPE_Q4G32)
        return p->inner->ops->matmul(p->inner, w, xr, n, y);
    w4_unrounded(w, xr, n, y);
    return 0;
}

static float silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* gate, up, SwiGLU, down for one row x; h: 2 * inter floats of scratch */
static int twin_mlp(struct pert_be *p, const struct kb_weight *gw, const struct kb_weight *uw,
                    const struct kb_weight *dw, const float *x, bool q8, float *h, float *out)
{
    const int64_t I = gw->rows;
    int rc;
    if ((rc = twin_matmul(p, gw, x, 1, q8, h)) || (rc = twin_matmul(p, uw, x, 1, q8, h + I)))
        return rc;
    for (int64_t i = 0; i < I; i++)
        h[i] = silu(h[i]) * h[I + i];
    return twin_matmul(p, dw, h, 1, q8, out);
}

/* the whole MoE block with the GPU's rounding (gb_moe) */
static int twin_moe(struct pert_be *p, const struct kb_moe *m, const float *x, int32_t n, float *y)
{
    const int32_t E = m->n_experts, K = m->top_k, H = m->hidden;
    const int32_t I = m->inter > m->shared_inter ? m->inter : m->shared_inter;
    const bool q8 = n > PERT_GEMV_MAX;
    if (E <= 0 || K <= 0 || K > E || H <= 0 || I <= 0)
        return -EINVAL;
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)E);
    float *h = malloc(sizeof(float) * 2 * (size_t)I);
    float *yo = malloc(sizeof(float) * (size_t)H);
    int32_t *sel = malloc(sizeof(int32_t) * (size_t)K);
    double *sw = malloc(sizeof(double) * (size_t)K);
    int rc = !lg || !h || !yo || !sel || !sw ? -ENOMEM : twin_matmul(p, m->router, x, n, q8, lg);
    memset(y, 0, sizeof(float) * (size_t)n * (size_t)H);
    for (int32_t t = 0; !rc && t < n; t++) {
        const float *l = lg + (int64_t)t * E;
        const float *xt = x + (int64_t)t * H;
        float *yt = y + (int64_t)t * H;
        double mx = -INFINITY, sum = 0, wsum = 0;
        for (int32_t e = 0; e < E; e++)
            mx = l[e] > mx ? l[e] : mx;
        for (int32_t e = 0; e < E; e++)
            sum += exp((double)l[e] - mx);
        for (int32_t j = 0; j < K; j++) {     /* top-k, first index wins ties */
            int32_t best = -1;
            for (int32_t e = 0; e < E; e++) {
                bool taken = false;
                for (int32_t i = 0; i < j; i++)
                    taken |= sel[i] == e;
                if (!taken && (best < 0 || l[e] > l[best]))
                    best = e;
            }
            sel[j] = best;
            sw[j] = exp((double)l[best] - mx) / sum;
            wsum += sw[j];
        }
        for (int32_t j = 0; !rc && j < K; j++) {
            const int32_t e = sel[j];
            const float wt = (float)(m->norm_topk ? sw[j] / wsum : sw[j]);
            rc = twin_mlp(p, &m->gate[e], &m->up[e], &m->down[e], xt, q8, h, yo);
            for (int32_t c = 0; !rc && c < H; c++)
                yt[c] += wt * yo[c];
        }
        if (!rc && m->shared_inter > 0) {
            float sg = 1.0f;
            rc = twin_mlp(p, m->shared_gate, m->shared_up, m->shared_down, xt, q8, h, yo);
            if (!rc && m->shared_expert_gate) {
                rc = twin_matmul(p, m->shared_expert_gate, xt, 1, q8, &sg);
                sg = 1.0f / (1.0f + expf(-sg));
            }
            for (int32_t c = 0; !rc && c < H; c++)
                yt[c] += sg * yo[c];
        }
    }
    free(lg);
    free(h);
    free(yo);
    free(sel);
    free(sw);
    return rc;
}

/* the index set of the top k of r[0..E) (first index wins ties) */
static void top_set(const float *r, int32_t E, int32_t k, bool *in)
{
    memset(in, 0, sizeof(bool) * (size_t)E);
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++)
            if (!in[e] && (best < 0 || r[e] > r[best]))
                best = e;
        in[best] = true;
    }
}

static int pert_moe(struct kb_backend *be, const struct kb_moe *m, const float *x, int32_t n, float *y)
{
    struct pert_be *p = (struct pert_be *)be;
    if (p->mode == PERT_GPU)
        return twin_moe(p, m, x, n, y);
    /* the routed experts run inside cpu-ref's moe: only the block input is
     * perturbed (under-estimates the GPU's MoE error; PERT_GPU does not) */
    float *xr = pert_buf(p, (size_t)n * (size_t)m->hidden);
    if (!xr)
        return -ENOMEM;
    memcpy(xr, x, sizeof(float) * (size_t)n * (size_t)m->hidden);
    for (int32_t t = 0; t < n; t++)
        pert_round(p->mode, xr + (int64_t)t * m->hidden, m->hidden);
    /* count the tokens whose top-k expert set this op's rounding changes */
    const int32_t E = m->n_experts;
    float *la = malloc(sizeof(float) * (size_t)n * (size_t)E);
    float *lb = malloc(sizeof(float) * (size_t)n * (size_t)E);
    bool *ina = malloc(sizeof(bool) * (size_t)(E > 0 ? E : 1));
    bool *inb = malloc(sizeof(bool) * (size_t)(E > 0 ? E : 1));
    if (la && lb && ina && inb && m->top_k <= E && !p->inner->ops->matmul(p->inner, m->router, x, n, la) &&
        !p->inner->ops->matmul(p->inner, m->router, xr, n, lb)) {
        for (int32_t t = 0; t < n; t++) {
            top_set(la + (int64_t)t * E, E, m->top_k, ina);
            top_set(lb + (int64_t)t * E, E, m->top_k, inb);
            p->flips += memcmp(ina, inb, sizeof(bool) * (size_t)E) != 0;
        }
    }
    free(la);
    free(lb);
    free(ina);
    free(inb);
    return p->inner->ops->moe(p->inner, m, xr, n, y);
}

void pert_be_init(struct pert_be *p, struct kb_backend *inner, enum pert mode)
{
    *p = (struct pert_be){ .inner = inner, .mode = mode, .ops = *inner->ops };
    p->ops.matmul = pert_matmul;
    p->ops.moe = pert_moe;
    p->be.ops = &p->ops;
    p->be.impl = inner->impl;
}

void pert_be_fini(struct pert_be *p)
{
    free(p->buf);
    p->buf = NULL;
    p->cap = 0;
}
