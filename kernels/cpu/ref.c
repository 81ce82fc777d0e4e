/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The portable scalar reference backend: the oracle every other backend is
 * compared against, kept forever. It is written to be obviously correct:
 * plain loops, fp32 activations, double accumulators for every reduction
 * (dot products, norms, softmax sums) so its own rounding error is far below
 * the bf16-level differences between implementations, and weights read
 * straight from the mmap'd checkpoint, dequantised one row at a time.
 *
 * "Not absurdly slow" comes from loop order only: a weight row is
 * dequantised once per call and then dotted with every token of the batch,
 * and MoE tokens are grouped by expert so each expert's weights are read
 * once per call. With n_threads > 1, large matmuls split their output rows
 * across short-lived pthreads (a persistent pool belongs to the optimised
 * backends).
 *
 * Math follows /work/shared/spec/model.md §2; comments cite the section.
 */
#include "kernels/backend.h"
#include "kernels/cpu/ref.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cpu_ref {
    int32_t n_threads;
    char    err[256];
};

static struct cpu_ref *ref_of(struct kb_backend *be)
{
    return (struct cpu_ref *)be->impl;
}

static int ref_fail(struct kb_backend *be, int code, const char *what)
{
    snprintf(ref_of(be)->err, sizeof(ref_of(be)->err), "cpu-ref: %s", what);
    return code;
}

/* ------------------------------------------------------------------ */
/* Number formats                                                       */

float kb_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

uint16_t kb_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep it quiet NaN */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);              /* round to nearest even  */
    return (uint16_t)(u >> 16);
}

float kb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    float f;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float */
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    uint32_t u;
    if (exp == 31)
        u = sign | 0x7f800000u | (man << 13);
    else
        u = sign | ((exp + 112u) << 23) | (man << 13);
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* Round a float to the nearest IEEE half and back (for f16-scaled W4:
 * compressed-tensors dequantises in the scale dtype). Exact rounding via
 * the float's bits: halves have 10 mantissa bits and exponents -14..15. */
static float round_to_f16(float f)
{
    if (!isfinite(f))
        return f;
    float a = fabsf(f);
    if (a >= 65520.0f)                             /* rounds to infinity     */
        return f < 0 ? -INFINITY : INFINITY;
    int e;
    frexpf(a, &e);                                 /* a = m * 2^e, m in [0.5,1) */
    if (e < -13)
        e = -13;                                   /* subnormal spacing 2^-24 */
    float q = ldexpf(1.0f, e - 11);                /* spacing of halves near a */
    float r = nearbyintf(a / q) * q;               /* default mode: ties-even */
    return f < 0 ? -r : r;
}

static float round_to_bf16(float f)
{
    return kb_bf16_to_f32(kb_f32_to_bf16(f));
}

/* Element i of a dense weight (any dense dtype). */
static inline float dense_at(const struct kb_weight *w, int64_t i)
{
    switch (w->type) {
    case KB_WTYPE_F32:  return ((const float *)w->data)[i];
    case KB_WTYPE_F16:  return kb_f16_to_f32(((const uint16_t *)w->data)[i]);
    case KB_WTYPE_BF16: return kb_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case KB_WTYPE_Q4G32: break;
    }
    return NAN;
}

static inline float scale_at(const struct kb_weight *w, int64_t i)
{
    switch (w->scale_type) {
    case KB_WTYPE_F32:  return ((const float *)w->scales)[i];
    case KB_WTYPE_F16:  return kb_f16_to_f32(((const uint16_t *)w->scales)[i]);
    case KB_WTYPE_BF16: return kb_bf16_to_f32(((const uint16_t *)w->scales)[i]);
    case KB_WTYPE_Q4G32: break;
    }
    return NAN;
}

bool kb_ref_weight_ok(const struct kb_weight *w)
{
    if (!w || !w->data || w->rows <= 0 || w->cols <= 0)
        return false;
    if (w->type == KB_WTYPE_Q4G32)
        return w->scales && w->cols % KB_Q4_GROUP == 0 &&
               w->scale_type != KB_WTYPE_Q4G32;
    return w->type == KB_WTYPE_F32 || w->type == KB_WTYPE_F16 ||
           w->type == KB_WTYPE_BF16;
}

bool kb_ref_gdn_consts_ok(const struct kb_gdn *g)
{
    const int64_t nv = g->n_v_heads, dv = g->d_v, K = g->conv_kernel;
    const int64_t conv_dim = 2 * (int64_t)g->n_k_heads * g->d_k + nv * dv;
    const struct kb_weight *c[4] = { g->conv1d, g->A_log, g->dt_bias, g->norm };
    const int64_t want[4] = { conv_dim * K, nv, nv, dv };
    for (int i = 0; i < 4; i++)
        if (!kb_ref_weight_ok(c[i]) || c[i]->type == KB_WTYPE_Q4G32 ||
            c[i]->rows * c[i]->cols != want[i])
            return false;
    return true;
}

/* the short name the ops below use */
#define weight_ok kb_ref_weight_ok

/* Dequantise row r of any weight into out[cols]. W4 (§4.4): the lowest
 * nibble is the lowest column, value - 8, times the group's scale, rounded
 * to the scale dtype as compressed-tensors' _dequantize does. */
void kb_ref_weight_row(const struct kb_weight *w, int64_t r, float *out)
{
    const int64_t cols = w->cols;
    if (w->type != KB_WTYPE_Q4G32) {
        for (int64_t c = 0; c < cols; c++)
            out[c] = dense_at(w, r * cols + c);
        return;
    }
    const uint32_t *packed = (const uint32_t *)w->data + r * (cols / 8);
    const int64_t n_groups = cols / KB_Q4_GROUP;
    if (w->g_idx || w->scale_type != KB_WTYPE_BF16) {
        /* general path: any group map, any scale dtype */
        for (int64_t c = 0; c < cols; c++) {
            uint32_t word = packed[c / 8];
            int q = (int)((word >> (4 * (c & 7))) & 0xFu) - 8;
            int64_t g = w->g_idx ? w->g_idx[c] : c / KB_Q4_GROUP;
            float s = scale_at(w, r * n_groups + g);
            float v = (float)q * s;
            if (w->scale_type == KB_WTYPE_BF16)
                v = round_to_bf16(v);
            else if (w->scale_type == KB_WTYPE_F16)
                v = round_to_f16(v);
            out[c] = v;
        }
        return;
    }
    /* the common case (bf16 scales, groups of 32 consecutive columns): the
     * same formula with the scale read once per group; the 16 possible
     * values of bf16(q * s) are tabulated per group */
    const uint16_t *scales = (const uint16_t *)w->scales + r * n_groups;
    for (int64_t g = 0; g < n_groups; g++) {
        const float s = kb_bf16_to_f32(scales[g]);
        float lut[16];
        for (int n = 0; n < 16; n++)
            lut[n] = round_to_bf16((float)(n - 8) * s);
        for (int64_t k = 0; k < KB_Q4_GROUP / 8; k++) {
            uint32_t word = packed[g * (KB_Q4_GROUP / 8) + k];
            float *o = out + g * KB_Q4_GROUP + k * 8;
            for (int n = 0; n < 8; n++)
                o[n] = lut[(word >> (4 * n)) & 0xFu];
        }
    }
}

/* ------------------------------------------------------------------ */
/* Matrix products                                                      */

/* Dot product accumulated in double; four partial sums only break the
 * add latency chain (the order differs from a single sum by far less than
 * float rounding). */
static double dot_f64(const float *a, const float *b, int64_t n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += (double)a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

struct mm_job {
    const struct kb_weight *w;
    const float *x;
    int32_t n;
    float *y;
    int64_t r0, r1;
    int rc;
};

static void *mm_rows(void *arg)
{
    struct mm_job *j = arg;
    const int64_t cols = j->w->cols, rows = j->w->rows;
    float *row = malloc((size_t)cols * sizeof(float));
    if (!row) {
        j->rc = -ENOMEM;
        return NULL;
    }
    for (int64_t r = j->r0; r < j->r1; r++) {
        kb_ref_weight_row(j->w, r, row);
        for (int32_t t = 0; t < j->n; t++)
            j->y[(int64_t)t * rows + r] = (float)dot_f64(row, j->x + (int64_t)t * cols, cols);
    }
    free(row);
    j->rc = 0;
    return NULL;
}

#define REF_MAX_THREADS 64

static int ref_matmul_impl(int32_t n_threads, const struct kb_weight *w,
                           const float *x, int32_t n, float *y)
{
    int64_t work = w->rows * w->cols * (n > 0 ? n : 1);
    int32_t nt = n_threads;
    if (nt > REF_MAX_THREADS)
        nt = REF_MAX_THREADS;
    if (nt > w->rows)
        nt = (int32_t)w->rows;
    if (nt <= 1 || work < (1 << 18)) {
        struct mm_job j = { w, x, n, y, 0, w->rows, 0 };
        mm_rows(&j);
        return j.rc;
    }
    struct mm_job jobs[REF_MAX_THREADS];
    pthread_t tids[REF_MAX_THREADS];
    bool started[REF_MAX_THREADS];
    for (int32_t i = 0; i < nt; i++) {
        jobs[i] = (struct mm_job){ w, x, n, y, w->rows * i / nt,
                                   w->rows * (i + 1) / nt, 0 };
        started[i] = i > 0 && pthread_create(&tids[i], NULL, mm_rows, &jobs[i]) == 0;
    }
    /* Thread 0's share, and any share whose thread failed to start, run
     * here: a failed pthread_create only costs speed. */
    for (int32_t i = 0; i < nt; i++)
        if (!started[i])
            mm_rows(&jobs[i]);
    int rc = 0;
    for (int32_t i = 0; i < nt; i++) {
        if (started[i])
            pthread_join(tids[i], NULL);
        if (jobs[i].rc)
            rc = jobs[i].rc;
    }
    return rc;
}

static int ref_matmul(struct kb_backend *be, const struct kb_weight *w,
                      const float *x, int32_t n, float *y)
{
    if (!weight_ok(w) || n < 0 || (n > 0 && (!x || !y)))
        return ref_fail(be, -EINVAL, "matmul: bad weight or arguments");
    return ref_matmul_impl(ref_of(be)->n_threads, w, x, n, y);
}

static int ref_embed(struct kb_backend *be, const struct kb_weight *table,
                     const int32_t *ids, int32_t n, float *out)
{
    if (!weight_ok(table) || n < 0)
        return ref_fail(be, -EINVAL, "embed: bad table");
    for (int32_t t = 0; t < n; t++) {
        if (ids[t] < 0 || ids[t] >= table->rows)
            return ref_fail(be, -EINVAL, "embed: token id out of range");
        kb_ref_weight_row(table, ids[t], out + (int64_t)t * table->cols);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Norms, RoPE, elementwise                                             */

static int ref_rmsnorm(struct kb_backend *be, float *y, int64_t y_stride,
                       const float *x, int64_t x_stride, int64_t rows, int32_t dim,
                       const struct kb_weight *w, float eps, bool plus_one)
{
    if (!weight_ok(w) || w->type == KB_WTYPE_Q4G32 || w->rows * w->cols != dim)
        return ref_fail(be, -EINVAL, "rmsnorm: weight size differs from dim");
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * x_stride;
        float *yr = y + r * y_stride;
        double ss = 0.0;
        for (int32_t i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / dim + (double)eps));
        for (int32_t i = 0; i < dim; i++) {
            float wi = dense_at(w, i) + (plus_one ? 1.0f : 0.0f);
            yr[i] = xr[i] * inv * wi;
        }
    }
    return 0;
}

static int ref_rope(struct kb_backend *be, float *x, int32_t n, int32_t rows_per_token,
                    int64_t stride, int32_t rot_dim, const int32_t *pos, double theta)
{
    if (rot_dim <= 0 || rot_dim % 2 || rot_dim > stride)
        return ref_fail(be, -EINVAL, "rope: rot_dim must be even and <= head size");
    const int32_t half = rot_dim / 2;
    for (int32_t t = 0; t < n; t++) {
        for (int32_t i = 0; i < half; i++) {
            /* inv_freq and the angle in fp32 like HF's rotary embedding, so
             * large positions round the same way. */
            float inv_freq = 1.0f / powf((float)theta, (float)(2 * i) / (float)rot_dim);
            float phi = (float)pos[t] * inv_freq;
            float c = cosf(phi), s = sinf(phi);
            for (int32_t h = 0; h < rows_per_token; h++) {
                float *xh = x + ((int64_t)t * rows_per_token + h) * stride;
                float a = xh[i], b = xh[i + half];
                xh[i] = a * c - b * s;
                xh[i + half] = b * c + a * s;
            }
        }
    }
    return 0;
}

static int ref_add(struct kb_backend *be, float *y, const float *a, const float *b,
                   int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        y[i] = a[i] + b[i];
    return 0;
}

static float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static float siluf(float x)
{
    return x / (1.0f + expf(-x));
}

static int ref_mul_sigmoid(struct kb_backend *be, float *y, int64_t y_stride,
                           const float *x, int64_t x_stride,
                           const float *gate, int64_t gate_stride,
                           int64_t rows, int32_t dim)
{
    for (int64_t r = 0; r < rows; r++)
        for (int32_t i = 0; i < dim; i++)
            y[r * y_stride + i] = x[r * x_stride + i] * sigmoidf(gate[r * gate_stride + i]);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Gated DeltaNet (§2.4), recurrent form for every token                */

static float softplusf(float x)
{
    /* torch.nn.functional.softplus: beta 1, threshold 20 -> identity above */
    return x > 20.0f ? x : log1pf(expf(x));
}

static int ref_gdn(struct kb_backend *be, const struct kb_gdn *g,
                   struct kb_gdn_state *st, const float *qkv, const float *z,
                   const float *b, const float *a, int32_t n, float *y)
{
    const int32_t nk = g->n_k_heads, nv = g->n_v_heads, dk = g->d_k, dv = g->d_v;
    const int32_t K = g->conv_kernel;
    if (nk <= 0 || nv <= 0 || nv % nk || dk <= 0 || dv <= 0 || K < 1)
        return ref_fail(be, -EINVAL, "gdn: bad head configuration");
    const int64_t key_dim = (int64_t)nk * dk, val_dim = (int64_t)nv * dv;
    const int64_t conv_dim = 2 * key_dim + val_dim;
    if (!kb_ref_gdn_consts_ok(g))
        return ref_fail(be, -EINVAL, "gdn: constant tensors do not match the head configuration");

    const int32_t r = nv / nk;                     /* v heads per k head     */
    float *u = malloc((size_t)(conv_dim + 2 * dv) * sizeof(float));
    if (!u)
        return ref_fail(be, -ENOMEM, "gdn: out of memory");
    float *kv_mem = u + conv_dim, *delta = kv_mem + dv;

    for (int32_t t = 0; t < n; t++) {
        const float *xt = qkv + (int64_t)t * conv_dim;
        /* 2. causal depthwise conv over [state (K-1 rows, oldest first), x_t],
         *    weight tap K-1 multiplies the current token; then SiLU. */
        for (int64_t c = 0; c < conv_dim; c++) {
            double acc = (double)dense_at(g->conv1d, c * K + (K - 1)) * xt[c];
            for (int32_t j = 0; j < K - 1; j++)
                acc += (double)dense_at(g->conv1d, c * K + j) * st->conv[(int64_t)j * conv_dim + c];
            u[c] = siluf((float)acc);
        }
        if (K > 1) {
            memmove(st->conv, st->conv + conv_dim, (size_t)(K - 2) * (size_t)conv_dim * sizeof(float));
            memcpy(st->conv + (int64_t)(K - 2) * conv_dim, xt, (size_t)conv_dim * sizeof(float));
        }
        float *q = u, *k = u + key_dim, *v = u + 2 * key_dim;
        /* 6. l2norm per k head (eps inside the sqrt), q also scaled dk^-1/2 */
        for (int32_t h = 0; h < nk; h++) {
            float *qh = q + (int64_t)h * dk, *kh = k + (int64_t)h * dk;
            double sq = 0.0, sk = 0.0;
            for (int32_t i = 0; i < dk; i++) {
                sq += (double)qh[i] * qh[i];
                sk += (double)kh[i] * kh[i];
            }
            float iq = (float)(1.0 / sqrt(sq + 1e-6)), ik = (float)(1.0 / sqrt(sk + 1e-6));
            float qs = 1.0f / sqrtf((float)dk);
            for (int32_t i = 0; i < dk; i++) {
                qh[i] = qh[i] * iq * qs;
                kh[i] = kh[i] * ik;
            }
        }
        for (int32_t j = 0; j < nv; j++) {
            /* 4. gates; 5. value head j uses key head j / r */
            const float *qh = q + (int64_t)(j / r) * dk, *kh = k + (int64_t)(j / r) * dk;
            const float *vh = v + (int64_t)j * dv;
            float beta = sigmoidf(b[(int64_t)t * nv + j]);
            float gg = -expf(dense_at(g->A_log, j)) *
                       softplusf(a[(int64_t)t * nv + j] + dense_at(g->dt_bias, j));
            float decay = expf(gg);
            float *S = st->ssm + (int64_t)j * dk * dv;   /* [dk][dv] */
            /* 7. S <- e^g S; kv_mem = S^T k; delta = beta (v - kv_mem);
             *    S += k delta^T; o = S^T q */
            for (int64_t i = 0; i < (int64_t)dk * dv; i++)
                S[i] *= decay;
            for (int32_t vi = 0; vi < dv; vi++) {
                double acc = 0.0;
                for (int32_t ki = 0; ki < dk; ki++)
                    acc += (double)S[(int64_t)ki * dv + vi] * kh[ki];
                kv_mem[vi] = (float)acc;
                delta[vi] = beta * (vh[vi] - kv_mem[vi]);
            }
            for (int32_t ki = 0; ki < dk; ki++)
                for (int32_t vi = 0; vi < dv; vi++)
                    S[(int64_t)ki * dv + vi] += kh[ki] * delta[vi];
            float *yo = y + (int64_t)t * val_dim + (int64_t)j * dv;
            double ss = 0.0;
            for (int32_t vi = 0; vi < dv; vi++) {
                double acc = 0.0;
                for (int32_t ki = 0; ki < dk; ki++)
                    acc += (double)S[(int64_t)ki * dv + vi] * qh[ki];
                yo[vi] = (float)acc;
                ss += acc * acc;
            }
            /* 8. gated RMSNorm: w * (o * rsqrt(mean(o^2)+eps)) * silu(z) */
            float inv = (float)(1.0 / sqrt(ss / dv + (double)g->norm_eps));
            const float *zj = z + (int64_t)t * val_dim + (int64_t)j * dv;
            for (int32_t vi = 0; vi < dv; vi++)
                yo[vi] = dense_at(g->norm, vi) * (yo[vi] * inv) * siluf(zj[vi]);
        }
    }
    free(u);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Attention (§2.5 step 5): causal softmax attention with GQA           */

static int ref_attention(struct kb_backend *be, const struct kb_attn *at,
                         struct kb_kv *kv, int64_t past,
                         const float *q, int64_t q_stride,
                         const float *k, const float *v, int32_t n, float *out)
{
    const int32_t nh = at->n_heads, nkv = at->n_kv_heads, hd = at->head_dim;
    if (nh <= 0 || nkv <= 0 || nh % nkv || hd <= 0 || q_stride < hd)
        return ref_fail(be, -EINVAL, "attention: bad head configuration");
    if (past < 0 || n < 0 || past + n > kv->capacity)
        return ref_fail(be, -EINVAL, "attention: KV cache capacity exceeded");
    const int64_t row = (int64_t)nkv * hd;
    float *kc = kv->k, *vc = kv->v;              /* fp32: no KB_CAP_KV_F16 */
    memcpy(kc + past * row, k, (size_t)n * (size_t)row * sizeof(float));
    memcpy(vc + past * row, v, (size_t)n * (size_t)row * sizeof(float));

    double *p = malloc((size_t)(past + n) * sizeof(double));
    double *acc = malloc((size_t)hd * sizeof(double));
    if (!p || !acc) {
        free(p);
        free(acc);
        return ref_fail(be, -ENOMEM, "attention: out of memory");
    }
    const int32_t group = nh / nkv;
    for (int32_t t = 0; t < n; t++) {
        const int64_t len = past + t + 1;          /* causal: up to itself  */
        for (int32_t h = 0; h < nh; h++) {
            const float *qh = q + ((int64_t)t * nh + h) * q_stride;
            const int64_t kh = h / group;
            double mx = -INFINITY;
            for (int64_t s = 0; s < len; s++) {
                const float *ks = kc + s * row + kh * hd;
                double d = 0.0;
                for (int32_t i = 0; i < hd; i++)
                    d += (double)qh[i] * ks[i];
                p[s] = d * at->scale;
                if (p[s] > mx)
                    mx = p[s];
            }
            double sum = 0.0;
            for (int64_t s = 0; s < len; s++) {
                p[s] = exp(p[s] - mx);
                sum += p[s];
            }
            for (int32_t i = 0; i < hd; i++)
                acc[i] = 0.0;
            for (int64_t s = 0; s < len; s++) {
                const float *vs = vc + s * row + kh * hd;
                for (int32_t i = 0; i < hd; i++)
                    acc[i] += p[s] * vs[i];
            }
            float *o = out + ((int64_t)t * nh + h) * hd;
            for (int32_t i = 0; i < hd; i++)
                o[i] = (float)(acc[i] / sum);
        }
    }
    free(p);
    free(acc);
    return 0;
}

/* ------------------------------------------------------------------ */
/* MoE block (§2.6)                                                     */

/* y[n][hidden] = down(silu(gate x) * up x) for the rows of x. */
static int swiglu_mlp(int32_t nt, const struct kb_weight *gw, const struct kb_weight *uw,
                      const struct kb_weight *dw, const float *x, int32_t n,
                      float *hg, float *hu, float *y)
{
    int rc = ref_matmul_impl(nt, gw, x, n, hg);
    if (!rc)
        rc = ref_matmul_impl(nt, uw, x, n, hu);
    if (rc)
        return rc;
    for (int64_t i = 0; i < (int64_t)n * gw->rows; i++)
        hg[i] = siluf(hg[i]) * hu[i];
    return ref_matmul_impl(nt, dw, hg, n, y);
}

static int ref_moe(struct kb_backend *be, const struct kb_moe *m,
                   const float *x, int32_t n, float *y)
{
    const int32_t E = m->n_experts, K = m->top_k, H = m->hidden;
    const int32_t I = m->inter > m->shared_inter ? m->inter : m->shared_inter;
    const int32_t nt = ref_of(be)->n_threads;
    if (E <= 0 || K <= 0 || K > E || H <= 0 || m->inter <= 0 || !weight_ok(m->router) ||
        m->router->rows != E || m->router->cols != H)
        return ref_fail(be, -EINVAL, "moe: bad configuration");
    for (int32_t e = 0; e < E; e++)
        if (!weight_ok(&m->gate[e]) || !weight_ok(&m->up[e]) || !weight_ok(&m->down[e]) ||
            m->gate[e].rows != m->inter || m->gate[e].cols != H ||
            m->up[e].rows != m->inter || m->up[e].cols != H ||
            m->down[e].rows != H || m->down[e].cols != m->inter)
            return ref_fail(be, -EINVAL, "moe: expert weight shapes differ from the block");
    if (m->shared_inter > 0 &&
        (!weight_ok(m->shared_gate) || !weight_ok(m->shared_up) || !weight_ok(m->shared_down) ||
         m->shared_gate->rows != m->shared_inter || m->shared_gate->cols != H ||
         m->shared_up->rows != m->shared_inter || m->shared_up->cols != H ||
         m->shared_down->rows != H || m->shared_down->cols != m->shared_inter ||
         (m->shared_expert_gate && (!weight_ok(m->shared_expert_gate) ||
                                    m->shared_expert_gate->rows != 1 ||
                                    m->shared_expert_gate->cols != H))))
        return ref_fail(be, -EINVAL, "moe: shared expert shapes differ from the block");
    if (n == 0)
        return 0;

    size_t nn = (size_t)n;
    float *logits = malloc(nn * (size_t)E * sizeof(float));
    int32_t *sel = malloc(nn * (size_t)K * sizeof(int32_t));
    float *selw = malloc(nn * (size_t)K * sizeof(float));
    int32_t *tok = malloc(nn * sizeof(int32_t));
    float *tokw = malloc(nn * sizeof(float));
    float *xe = malloc(nn * (size_t)H * sizeof(float));
    float *ye = malloc(nn * (size_t)H * sizeof(float));
    float *hg = malloc(nn * (size_t)I * sizeof(float));
    float *hu = malloc(nn * (size_t)I * sizeof(float));
    float *sg = malloc(nn * sizeof(float));
    int rc = 0;
    if (!logits || !sel || !selw || !tok || !tokw || !xe || !ye || !hg || !hu || !sg) {
        rc = ref_fail(be, -ENOMEM, "moe: out of memory");
        goto out;
    }
    rc = ref_matmul_impl(nt, m->router, x, n, logits);
    if (rc)
        goto out;
    /* softmax over all experts, then top-k (first index wins ties), then
     * renormalise the k weights */
    for (int32_t t = 0; t < n; t++) {
        float *l = logits + (int64_t)t * E;
        double mx = -INFINITY, sum = 0.0;
        for (int32_t e = 0; e < E; e++)
            if (l[e] > mx)
                mx = l[e];
        for (int32_t e = 0; e < E; e++)
            sum += exp((double)l[e] - mx);
        for (int32_t e = 0; e < E; e++)
            l[e] = (float)(exp((double)l[e] - mx) / sum);
        double wsum = 0.0;
        for (int32_t j = 0; j < K; j++) {
            int32_t best = -1;
            for (int32_t e = 0; e < E; e++) {
                bool taken = false;
                for (int32_t i = 0; i < j; i++)
                    taken |= sel[(int64_t)t * K + i] == e;
                if (!taken && (best < 0 || l[e] > l[best]))
                    best = e;
            }
            sel[(int64_t)t * K + j] = best;
            selw[(int64_t)t * K + j] = l[best];
            wsum += l[best];
        }
        if (m->norm_topk)
            for (int32_t j = 0; j < K; j++)
                selw[(int64_t)t * K + j] = (float)(selw[(int64_t)t * K + j] / wsum);
    }
    memset(y, 0, nn * (size_t)H * sizeof(float));
    /* tokens grouped by expert: each expert's weights are read once */
    for (int32_t e = 0; e < E; e++) {
        int32_t cnt = 0;
        for (int32_t t = 0; t < n; t++)
            for (int32_t j = 0; j < K; j++)
                if (sel[(int64_t)t * K + j] == e) {
                    tok[cnt] = t;
                    tokw[cnt] = selw[(int64_t)t * K + j];
                    memcpy(xe + (int64_t)cnt * H, x + (int64_t)t * H, (size_t)H * sizeof(float));
                    cnt++;
                }
        if (!cnt)
            continue;
        rc = swiglu_mlp(nt, &m->gate[e], &m->up[e], &m->down[e], xe, cnt, hg, hu, ye);
        if (rc)
            goto out;
        for (int32_t i = 0; i < cnt; i++)
            for (int32_t c = 0; c < H; c++)
                y[(int64_t)tok[i] * H + c] += tokw[i] * ye[(int64_t)i * H + c];
    }
    if (m->shared_inter > 0) {
        rc = swiglu_mlp(nt, m->shared_gate, m->shared_up, m->shared_down, x, n, hg, hu, ye);
        if (rc)
            goto out;
        for (int32_t t = 0; t < n; t++)
            sg[t] = 1.0f;
        if (m->shared_expert_gate) {
            rc = ref_matmul_impl(nt, m->shared_expert_gate, x, n, sg);
            if (rc)
                goto out;
            for (int32_t t = 0; t < n; t++)
                sg[t] = sigmoidf(sg[t]);
        }
        for (int32_t t = 0; t < n; t++)
            for (int32_t c = 0; c < H; c++)
                y[(int64_t)t * H + c] += sg[t] * ye[(int64_t)t * H + c];
    }
out:
    free(logits); free(sel); free(selw); free(tok); free(tokw);
    free(xe); free(ye); free(hg); free(hu); free(sg);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Memory: plain host memory                                            */

static void *ref_alloc(struct kb_backend *be, size_t bytes)
{
    return calloc(1, bytes ? bytes : 1);
}

void kb_host_free(struct kb_backend *be, void *p)
{
    free(p);
}

int kb_host_memcpy(struct kb_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        memmove(dst, src, bytes);
    return 0;
}

int kb_host_zero(struct kb_backend *be, void *dst, size_t bytes)
{
    if (bytes)
        memset(dst, 0, bytes);
    return 0;
}

uint32_t kb_host_caps(struct kb_backend *be)
{
    return KB_CAP_HOST_MEMORY | KB_CAP_READS_MAPPING | KB_CAP_Q4G32 |
           KB_CAP_DENSE_BF16 | KB_CAP_DENSE_F16 | KB_CAP_DENSE_F32 | KB_CAP_G_IDX;
}

static const char *ref_last_error(struct kb_backend *be)
{
    return ref_of(be)->err;
}

static void ref_destroy(struct kb_backend *be)
{
    if (be) {
        free(be->impl);
        free(be);
    }
}

static const struct kb_backend_ops ref_ops = {
    .api_version = KB_API_VERSION,
    .name = "cpu-ref",
    .caps = kb_host_caps,
    .last_error = ref_last_error,
    .destroy = ref_destroy,
    .alloc = ref_alloc,
    .free = kb_host_free,
    .upload = kb_host_memcpy,
    .download = kb_host_memcpy,
    .copy = kb_host_memcpy,
    .zero = kb_host_zero,
    .sync = NULL,
    .weight_prepare = NULL,
    .weight_release = NULL,
    .embed = ref_embed,
    .matmul = ref_matmul,
    .rmsnorm = ref_rmsnorm,
    .rope = ref_rope,
    .add = ref_add,
    .mul_sigmoid = ref_mul_sigmoid,
    .gdn = ref_gdn,
    .attention = ref_attention,
    .moe = ref_moe,
};

int kb_cpu_ref_create(const struct kb_cpu_params *params, struct kb_backend **out)
{
    struct kb_cpu_params p = KB_CPU_PARAMS_DEFAULT;
    if (params)
        p = *params;
    if (p.n_threads < 0 || p.n_threads > REF_MAX_THREADS)
        return -EINVAL;
    struct kb_backend *be = calloc(1, sizeof(*be));
    struct cpu_ref *impl = calloc(1, sizeof(*impl));
    if (!be || !impl) {
        free(be);
        free(impl);
        return -ENOMEM;
    }
    impl->n_threads = p.n_threads ? p.n_threads : 1;
    be->ops = &ref_ops;
    be->impl = impl;
    *out = be;
    return 0;
}
