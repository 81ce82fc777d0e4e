/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Weight binding and validation (see weights.h for the rules).
 *
 * Every tensor the forward pass touches is checked here, once, so the
 * kernels can trust shapes: dtype, exact shape against the config, for W4
 * also the packed shape (in/8 int32 words), the scale shape (in/32 groups),
 * the recorded weight_shape, in_features % 32 == 0, g_idx range, and that no
 * scale is NaN or Inf. A message always names the tensor, its shard, what was
 * expected and what was found.
 */
#include "engine/weights.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 256

/* Pointer set of bound tensors, to count the unused ones at the end. */
struct ptr_set {
    const void **slot;
    size_t       cap;                     /* power of two                     */
    size_t       count;
};

struct binder {
    const struct st_set       *st;
    const struct model_config *cfg;
    struct engine_error       *err;
    struct wt_report          *rep;
    struct ptr_set             used;
    const char                *prefix;   /* "model.language_model." / "model." */
};

static size_t ptr_hash(const void *p, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

/* Returns true when newly inserted. The set is sized for every tensor up
 * front, so it never fills. */
static bool ptr_set_add(struct ptr_set *s, const void *p)
{
    size_t i = ptr_hash(p, s->cap);
    while (s->slot[i]) {
        if (s->slot[i] == p)
            return false;
        i = (i + 1) & (s->cap - 1);
    }
    s->slot[i] = p;
    s->count++;
    return true;
}

static bool ptr_set_has(const struct ptr_set *s, const void *p)
{
    size_t i = ptr_hash(p, s->cap);
    while (s->slot[i]) {
        if (s->slot[i] == p)
            return true;
        i = (i + 1) & (s->cap - 1);
    }
    return false;
}

static const struct st_tensor *findf(struct binder *b, char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Look a tensor up by a formatted name; `name` (NAME_MAX_LEN) receives it. */
static const struct st_tensor *findf(struct binder *b, char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, NAME_MAX_LEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= NAME_MAX_LEN)
        return NULL;
    return st_set_find(b->st, name);
}

static const char *shard_of(struct binder *b, const struct st_tensor *t)
{
    const char *p = st_set_file_path(b->st, t->file);
    const char *slash = p ? strrchr(p, '/') : NULL;
    return slash ? slash + 1 : (p ? p : "?");
}

static void shape_str(char *buf, size_t len, const int64_t *shape, uint32_t ndim)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (uint32_t i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

/* Exact shape check with a message naming expected and found shapes. */
static int check_shape(struct binder *b, const struct st_tensor *t,
                       const int64_t *want, uint32_t ndim, const char *hint)
{
    bool ok = t->ndim == ndim;
    for (uint32_t i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == want[i];
    if (ok)
        return 0;
    char ws[96], fs[96];
    shape_str(ws, sizeof(ws), want, ndim);
    shape_str(fs, sizeof(fs), t->shape, t->ndim);
    return engine_error_set(b->err, -EINVAL,
        "tensor '%s' in %s: shape %s expected, found %s (%s)",
        t->name, shard_of(b, t), ws, fs, hint);
}

static int dense_type(enum st_dtype d, enum kb_wtype *out)
{
    switch (d) {
    case ST_DTYPE_F32:  *out = KB_WTYPE_F32;  return 0;
    case ST_DTYPE_F16:  *out = KB_WTYPE_F16;  return 0;
    case ST_DTYPE_BF16: *out = KB_WTYPE_BF16; return 0;
    default:            return -EINVAL;
    }
}

static int check_dense_dtype(struct binder *b, const struct st_tensor *t, enum kb_wtype *out)
{
    if (dense_type(t->dtype, out) == 0)
        return 0;
    return engine_error_set(b->err, -EINVAL,
        "tensor '%s' in %s: dtype %s is not a supported weight dtype (BF16, F16 or F32)",
        t->name, shard_of(b, t), st_dtype_name(t->dtype));
}

static void mark(struct binder *b, const struct st_tensor *t)
{
    if (t)
        ptr_set_add(&b->used, t);
}

/* A vector-like parameter (norm, A_log, dt_bias, conv1d): dense, with the
 * exact shape `want`. Presented to the backend as [1][numel]. */
static int bind_vector(struct binder *b, struct kb_weight *out, const char *name,
                       const int64_t *want, uint32_t ndim, const char *hint)
{
    const struct st_tensor *t = st_set_find(b->st, name);
    if (!t)
        return engine_error_set(b->err, -ENOENT,
            "tensor '%s' is missing from the checkpoint (%s)", name, hint);
    int rc = check_dense_dtype(b, t, &out->type);
    if (!rc)
        rc = check_shape(b, t, want, ndim, hint);
    if (rc)
        return rc;
    out->rows = 1;
    out->cols = (int64_t)t->numel;
    out->data = t->data;
    out->scales = NULL;
    out->g_idx = NULL;
    mark(b, t);
    b->rep->n_vectors++;
    b->rep->vector_bytes += t->nbytes;
    return 0;
}

/* Reads the integer vector weight_shape (I64 or I32, little-endian). */
static int check_weight_shape(struct binder *b, const struct st_tensor *t,
                              const int64_t *want, uint32_t ndim)
{
    if ((t->dtype != ST_DTYPE_I64 && t->dtype != ST_DTYPE_I32) || t->ndim != 1 ||
        t->numel != ndim)
        return engine_error_set(b->err, -EINVAL,
            "tensor '%s' in %s: weight_shape must be an I64 vector of %u values, found %s of %" PRIu64,
            t->name, shard_of(b, t), ndim, st_dtype_name(t->dtype), t->numel);
    for (uint32_t i = 0; i < ndim; i++) {
        int64_t v;
        if (t->dtype == ST_DTYPE_I64) {
            memcpy(&v, (const uint8_t *)t->data + 8 * i, 8);
        } else {
            int32_t v32;
            memcpy(&v32, (const uint8_t *)t->data + 4 * i, 4);
            v = v32;
        }
        if (v != want[i]) {
            char ws[96];
            shape_str(ws, sizeof(ws), want, ndim);
            return engine_error_set(b->err, -EINVAL,
                "tensor '%s' in %s: records shape value %" PRId64 " at index %u, expected %s "
                "(the packed data does not belong to this module)",
                t->name, shard_of(b, t), v, i, ws);
        }
    }
    return 0;
}

static int check_scales_finite(struct binder *b, const struct st_tensor *t)
{
    for (uint64_t i = 0; i < t->numel; i++) {
        float f;
        if (t->dtype == ST_DTYPE_F32) {
            memcpy(&f, (const uint8_t *)t->data + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
            f = t->dtype == ST_DTYPE_BF16 ? kb_bf16_to_f32(h) : kb_f16_to_f32(h);
        }
        if (!isfinite(f))
            return engine_error_set(b->err, -EINVAL,
                "tensor '%s' in %s: scale %" PRIu64 " is %s; the quantised checkpoint is corrupt "
                "(re-export it)", t->name, shard_of(b, t), i, isnan(f) ? "NaN" : "Inf");
    }
    return 0;
}

/*
 * A Linear module `base` of logical shape [n_slices][rows][cols]
 * (n_slices == 0: plain 2-D [rows][cols]), bound as one [n_slices*rows][cols]
 * matrix. Keys tried in order: base.weight_packed (W4), base.weight, base
 * (the fused expert tensors have no suffix in the original checkpoint).
 */
static int bind_linear(struct binder *b, struct kb_weight *out, const char *base,
                       int64_t n_slices, int64_t rows, int64_t cols, const char *hint)
{
    char name[NAME_MAX_LEN];
    int64_t want[3];
    uint32_t nd = 0;
    if (n_slices > 0)
        want[nd++] = n_slices;
    want[nd++] = rows;
    want[nd++] = cols;
    const int64_t all_rows = (n_slices > 0 ? n_slices : 1) * rows;

    const struct st_tensor *tp = findf(b, name, "%s.weight_packed", base);
    if (tp) {
        const struct st_tensor *ts = findf(b, name, "%s.weight_scale", base);
        if (!ts)
            return engine_error_set(b->err, -ENOENT,
                "tensor '%s.weight_packed' has no '%s.weight_scale' (W4 needs packed + scale + shape)",
                base, base);
        const struct st_tensor *tw = findf(b, name, "%s.weight_shape", base);
        if (!tw)
            return engine_error_set(b->err, -ENOENT,
                "tensor '%s.weight_packed' has no '%s.weight_shape' (W4 needs packed + scale + shape)",
                base, base);
        if (findf(b, name, "%s.weight_zero_point", base))
            return engine_error_set(b->err, -ENOTSUP,
                "tensor '%s.weight_zero_point' present: asymmetric W4 is not supported "
                "(re-quantise with symmetric: true)", base);
        const struct model_quant_config *q = &b->cfg->quant;
        if (q->present && (q->num_bits != 4 || q->group_size != KB_Q4_GROUP || !q->symmetric))
            return engine_error_set(b->err, -ENOTSUP,
                "config.json quantization_config: num_bits %d, group_size %d, symmetric %d; "
                "only 4-bit symmetric group-32 pack-quantized is supported",
                q->num_bits, q->group_size, (int)q->symmetric);
        if (cols % KB_Q4_GROUP)
            return engine_error_set(b->err, -EINVAL,
                "tensor '%s': in_features %" PRId64 " is not a multiple of %d, cannot be W4 g32",
                tp->name, cols, KB_Q4_GROUP);
        if (tp->dtype != ST_DTYPE_I32)
            return engine_error_set(b->err, -EINVAL,
                "tensor '%s' in %s: dtype %s, expected I32 (pack-quantized int4)",
                tp->name, shard_of(b, tp), st_dtype_name(tp->dtype));
        int64_t wp[3], wsc[3];
        memcpy(wp, want, sizeof(want));
        memcpy(wsc, want, sizeof(want));
        wp[nd - 1] = cols / 8;
        wsc[nd - 1] = cols / KB_Q4_GROUP;
        int rc = check_shape(b, tp, wp, nd, "packed int4: [out, in/8]");
        if (rc)
            return rc;
        enum kb_wtype st_type;
        if (dense_type(ts->dtype, &st_type))
            return engine_error_set(b->err, -EINVAL,
                "tensor '%s' in %s: scale dtype %s, expected BF16, F16 or F32",
                ts->name, shard_of(b, ts), st_dtype_name(ts->dtype));
        rc = check_shape(b, ts, wsc, nd, "group scales: [out, in/32]");
        if (rc)
            return rc;
        /* weight_shape records the logical shape; a fused tensor may record
         * it with or without the expert dimension */
        if (n_slices > 0 && tw->numel == 2)
            rc = check_weight_shape(b, tw, want + 1, 2);
        else
            rc = check_weight_shape(b, tw, want, nd);
        if (rc)
            return rc;
        rc = check_scales_finite(b, ts);
        if (rc)
            return rc;
        const struct st_tensor *tg = findf(b, name, "%s.weight_g_idx", base);
        if (tg) {
            if (n_slices > 0)
                return engine_error_set(b->err, -ENOTSUP,
                    "tensor '%s': act-order g_idx on fused 3-D experts is not supported "
                    "(export per-expert modules or use actorder static)", tg->name);
            int64_t wg[1] = { cols };
            if (tg->dtype != ST_DTYPE_I32)
                return engine_error_set(b->err, -EINVAL,
                    "tensor '%s' in %s: dtype %s, expected I32", tg->name, shard_of(b, tg),
                    st_dtype_name(tg->dtype));
            rc = check_shape(b, tg, wg, 1, "g_idx: [in]");
            if (rc)
                return rc;
            for (int64_t c = 0; c < cols; c++) {
                int32_t g;
                memcpy(&g, (const uint8_t *)tg->data + 4 * c, 4);
                if (g < 0 || g >= cols / KB_Q4_GROUP)
                    return engine_error_set(b->err, -EINVAL,
                        "tensor '%s': group index %d at column %" PRId64 " is outside 0..%" PRId64,
                        tg->name, g, c, cols / KB_Q4_GROUP - 1);
            }
            out->g_idx = tg->data;
            mark(b, tg);
            b->rep->quant_bytes += tg->nbytes;
        } else {
            out->g_idx = NULL;
        }
        out->type = KB_WTYPE_Q4G32;
        out->rows = all_rows;
        out->cols = cols;
        out->data = tp->data;
        out->scales = ts->data;
        out->scale_type = st_type;
        mark(b, tp);
        mark(b, ts);
        mark(b, tw);
        b->rep->n_quant_linear += (uint32_t)(n_slices > 0 ? n_slices : 1);
        b->rep->quant_bytes += tp->nbytes + ts->nbytes;
        return 0;
    }

    const struct st_tensor *t = findf(b, name, "%s.weight", base);
    if (!t && n_slices > 0)
        t = st_set_find(b->st, base);
    if (!t)
        return engine_error_set(b->err, -ENOENT,
            "tensor '%s.weight' (dense) or '%s.weight_packed' (W4) is missing from the checkpoint (%s)",
            base, base, hint);
    int rc = check_dense_dtype(b, t, &out->type);
    if (!rc)
        rc = check_shape(b, t, want, nd, hint);
    if (rc)
        return rc;
    out->rows = all_rows;
    out->cols = cols;
    out->data = t->data;
    out->scales = NULL;
    out->g_idx = NULL;
    mark(b, t);
    b->rep->n_dense_linear += (uint32_t)(n_slices > 0 ? n_slices : 1);
    b->rep->dense_bytes += t->nbytes;
    return 0;
}

/* Rows [row0, row0+n) of a bound matrix, as a view into the same mapping. */
static struct kb_weight weight_rows(const struct kb_weight *w, int64_t row0, int64_t n)
{
    struct kb_weight v = *w;
    v.rows = n;
    if (w->type == KB_WTYPE_Q4G32) {
        size_t ss = w->scale_type == KB_WTYPE_F32 ? 4 : 2;
        v.data = (const uint8_t *)w->data + (size_t)row0 * (size_t)(w->cols / 8) * 4;
        v.scales = (const uint8_t *)w->scales + (size_t)row0 * (size_t)(w->cols / KB_Q4_GROUP) * ss;
    } else {
        size_t es = w->type == KB_WTYPE_F32 ? 4 : 2;
        v.data = (const uint8_t *)w->data + (size_t)row0 * (size_t)w->cols * es;
    }
    return v;
}

static int bind_moe(struct binder *b, struct wt_moe *m, const char *lp)
{
    const struct model_config *c = b->cfg;
    const int64_t E = c->num_experts, H = c->hidden_size, I = c->moe_intermediate_size;
    const int64_t SI = c->shared_expert_intermediate_size;
    char base[NAME_MAX_LEN], name[NAME_MAX_LEN];
    int rc;

    snprintf(base, sizeof(base), "%smlp.gate", lp);
    rc = bind_linear(b, &m->router, base, 0, E, H, "router: [num_experts, hidden_size]");
    if (rc)
        return rc;
    m->experts = calloc((size_t)(3 * E), sizeof(*m->experts));
    if (!m->experts)
        return engine_error_set(b->err, -ENOMEM, "out of memory for %" PRId64 " expert descriptors", E);
    struct kb_weight *gate = m->experts, *up = gate + E, *down = up + E;

    bool per_expert = findf(b, name, "%smlp.experts.0.gate_proj.weight_packed", lp) ||
                      findf(b, name, "%smlp.experts.0.gate_proj.weight", lp);
    if (per_expert) {
        for (int64_t e = 0; e < E; e++) {
            snprintf(base, sizeof(base), "%smlp.experts.%" PRId64 ".gate_proj", lp, e);
            rc = bind_linear(b, &gate[e], base, 0, I, H, "expert gate_proj: [moe_intermediate_size, hidden_size]");
            if (rc)
                return rc;
            snprintf(base, sizeof(base), "%smlp.experts.%" PRId64 ".up_proj", lp, e);
            rc = bind_linear(b, &up[e], base, 0, I, H, "expert up_proj: [moe_intermediate_size, hidden_size]");
            if (rc)
                return rc;
            snprintf(base, sizeof(base), "%smlp.experts.%" PRId64 ".down_proj", lp, e);
            rc = bind_linear(b, &down[e], base, 0, H, I, "expert down_proj: [hidden_size, moe_intermediate_size]");
            if (rc)
                return rc;
        }
    } else {
        /* fused 3-D: gate_up [E][2I][H] (rows 0..I-1 gate, I..2I-1 up),
         * down [E][H][I] */
        struct kb_weight gu, dn;
        snprintf(base, sizeof(base), "%smlp.experts.gate_up_proj", lp);
        rc = bind_linear(b, &gu, base, E, 2 * I, H,
                         "fused experts: per-expert '...experts.{e}.gate_proj' or 3-D "
                         "'...experts.gate_up_proj' [num_experts, 2*moe_intermediate_size, hidden_size]");
        if (rc)
            return rc;
        snprintf(base, sizeof(base), "%smlp.experts.down_proj", lp);
        rc = bind_linear(b, &dn, base, E, H, I,
                         "fused experts: [num_experts, hidden_size, moe_intermediate_size]");
        if (rc)
            return rc;
        for (int64_t e = 0; e < E; e++) {
            gate[e] = weight_rows(&gu, e * 2 * I, I);
            up[e] = weight_rows(&gu, e * 2 * I + I, I);
            down[e] = weight_rows(&dn, e * H, H);
        }
        b->rep->fused_experts = true;
    }

    if (SI > 0) {
        snprintf(base, sizeof(base), "%smlp.shared_expert.gate_proj", lp);
        rc = bind_linear(b, &m->shared_gate, base, 0, SI, H, "shared_expert gate_proj: [shared_expert_intermediate_size, hidden_size]");
        if (!rc) {
            snprintf(base, sizeof(base), "%smlp.shared_expert.up_proj", lp);
            rc = bind_linear(b, &m->shared_up, base, 0, SI, H, "shared_expert up_proj: [shared_expert_intermediate_size, hidden_size]");
        }
        if (!rc) {
            snprintf(base, sizeof(base), "%smlp.shared_expert.down_proj", lp);
            rc = bind_linear(b, &m->shared_down, base, 0, H, SI, "shared_expert down_proj: [hidden_size, shared_expert_intermediate_size]");
        }
        if (!rc) {
            snprintf(base, sizeof(base), "%smlp.shared_expert_gate", lp);
            rc = bind_linear(b, &m->shared_expert_gate, base, 0, 1, H, "shared_expert_gate: [1, hidden_size]");
        }
        if (rc)
            return rc;
    }
    m->op = (struct kb_moe){
        .n_experts = (int32_t)E, .top_k = c->num_experts_per_tok, .hidden = (int32_t)H,
        .inter = (int32_t)I, .shared_inter = (int32_t)SI, .norm_topk = c->norm_topk_prob,
        .router = &m->router, .gate = gate, .up = up, .down = down,
        .shared_gate = SI > 0 ? &m->shared_gate : NULL,
        .shared_up = SI > 0 ? &m->shared_up : NULL,
        .shared_down = SI > 0 ? &m->shared_down : NULL,
        .shared_expert_gate = SI > 0 ? &m->shared_expert_gate : NULL,
    };
    return 0;
}

static int bind_attn(struct binder *b, struct wt_attn *a, const char *lp)
{
    const struct model_config *c = b->cfg;
    const int64_t H = c->hidden_size, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    const int64_t hd = c->head_dim;
    const int64_t qrows = nh * hd * (c->attn_output_gate ? 2 : 1);
    char base[NAME_MAX_LEN];
    int rc;
    if (!c->attn_output_gate)
        return engine_error_set(b->err, -ENOTSUP,
            "config.json attn_output_gate is false; only the gated attention of qwen3_5_moe is supported");
    snprintf(base, sizeof(base), "%sself_attn.q_proj", lp);
    if ((rc = bind_linear(b, &a->q_proj, base, 0, qrows, H, "q_proj: [2*num_attention_heads*head_dim, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%sself_attn.k_proj", lp);
    if ((rc = bind_linear(b, &a->k_proj, base, 0, nkv * hd, H, "k_proj: [num_key_value_heads*head_dim, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%sself_attn.v_proj", lp);
    if ((rc = bind_linear(b, &a->v_proj, base, 0, nkv * hd, H, "v_proj: [num_key_value_heads*head_dim, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%sself_attn.o_proj", lp);
    if ((rc = bind_linear(b, &a->o_proj, base, 0, H, nh * hd, "o_proj: [hidden_size, num_attention_heads*head_dim]")))
        return rc;
    int64_t vhd[1] = { hd };
    snprintf(base, sizeof(base), "%sself_attn.q_norm.weight", lp);
    if ((rc = bind_vector(b, &a->q_norm, base, vhd, 1, "q_norm: [head_dim]")))
        return rc;
    snprintf(base, sizeof(base), "%sself_attn.k_norm.weight", lp);
    if ((rc = bind_vector(b, &a->k_norm, base, vhd, 1, "k_norm: [head_dim]")))
        return rc;
    a->op = (struct kb_attn){ .n_heads = (int32_t)nh, .n_kv_heads = (int32_t)nkv,
                              .head_dim = (int32_t)hd, .scale = (float)(1.0 / sqrt((double)hd)) };
    return 0;
}

static int bind_gdn(struct binder *b, struct wt_gdn *g, const char *lp)
{
    const struct model_config *c = b->cfg;
    const int64_t H = c->hidden_size, nk = c->linear_num_key_heads, nv = c->linear_num_value_heads;
    const int64_t dk = c->linear_key_head_dim, dv = c->linear_value_head_dim;
    const int64_t K = c->linear_conv_kernel_dim;
    const int64_t conv_dim = 2 * nk * dk + nv * dv;
    char base[NAME_MAX_LEN];
    int rc;
    snprintf(base, sizeof(base), "%slinear_attn.in_proj_qkv", lp);
    if ((rc = bind_linear(b, &g->in_qkv, base, 0, conv_dim, H, "in_proj_qkv: [2*key_dim+value_dim, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%slinear_attn.in_proj_z", lp);
    if ((rc = bind_linear(b, &g->in_z, base, 0, nv * dv, H, "in_proj_z: [value_dim, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%slinear_attn.in_proj_b", lp);
    if ((rc = bind_linear(b, &g->in_b, base, 0, nv, H, "in_proj_b: [linear_num_value_heads, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%slinear_attn.in_proj_a", lp);
    if ((rc = bind_linear(b, &g->in_a, base, 0, nv, H, "in_proj_a: [linear_num_value_heads, hidden_size]")))
        return rc;
    snprintf(base, sizeof(base), "%slinear_attn.out_proj", lp);
    if ((rc = bind_linear(b, &g->out_proj, base, 0, H, nv * dv, "out_proj: [hidden_size, value_dim]")))
        return rc;
    int64_t wconv[3] = { conv_dim, 1, K }, wnv[1] = { nv }, wdv[1] = { dv };
    snprintf(base, sizeof(base), "%slinear_attn.conv1d.weight", lp);
    if ((rc = bind_vector(b, &g->conv1d, base, wconv, 3, "conv1d: [conv_dim, 1, linear_conv_kernel_dim]")))
        return rc;
    g->conv1d.rows = conv_dim;
    g->conv1d.cols = K;
    snprintf(base, sizeof(base), "%slinear_attn.A_log", lp);
    if ((rc = bind_vector(b, &g->A_log, base, wnv, 1, "A_log: [linear_num_value_heads]")))
        return rc;
    snprintf(base, sizeof(base), "%slinear_attn.dt_bias", lp);
    if ((rc = bind_vector(b, &g->dt_bias, base, wnv, 1, "dt_bias: [linear_num_value_heads]")))
        return rc;
    snprintf(base, sizeof(base), "%slinear_attn.norm.weight", lp);
    if ((rc = bind_vector(b, &g->norm, base, wdv, 1, "gated norm: [linear_value_head_dim]")))
        return rc;
    g->op = (struct kb_gdn){
        .n_k_heads = (int32_t)nk, .n_v_heads = (int32_t)nv, .d_k = (int32_t)dk, .d_v = (int32_t)dv,
        .conv_kernel = (int32_t)K, .norm_eps = c->rms_norm_eps, .conv1d = &g->conv1d,
        .A_log = &g->A_log, .dt_bias = &g->dt_bias, .norm = &g->norm,
    };
    return 0;
}

/* One decoder layer under prefix `lp` ("model.language_model.layers.3."). */
static int bind_layer(struct binder *b, struct wt_layer *l, const char *lp,
                      enum model_layer_type type)
{
    char name[NAME_MAX_LEN];
    int64_t wh[1] = { b->cfg->hidden_size };
    int rc;
    l->type = type;
    snprintf(name, sizeof(name), "%sinput_layernorm.weight", lp);
    if ((rc = bind_vector(b, &l->input_norm, name, wh, 1, "input_layernorm: [hidden_size]")))
        return rc;
    snprintf(name, sizeof(name), "%spost_attention_layernorm.weight", lp);
    if ((rc = bind_vector(b, &l->post_norm, name, wh, 1, "post_attention_layernorm: [hidden_size]")))
        return rc;
    rc = type == MODEL_LAYER_FULL_ATTENTION ? bind_attn(b, &l->attn, lp) : bind_gdn(b, &l->gdn, lp);
    if (rc)
        return rc;
    return bind_moe(b, &l->moe, lp);
}

static int bind_mtp(struct binder *b, struct wt_mtp *m)
{
    const int64_t H = b->cfg->hidden_size;
    int64_t wh[1] = { H };
    int rc = bind_linear(b, &m->fc, "mtp.fc", 0, H, 2 * H, "mtp.fc: [hidden_size, 2*hidden_size]");
    if (!rc)
        rc = bind_vector(b, &m->pre_fc_norm_embedding, "mtp.pre_fc_norm_embedding.weight", wh, 1, "[hidden_size]");
    if (!rc)
        rc = bind_vector(b, &m->pre_fc_norm_hidden, "mtp.pre_fc_norm_hidden.weight", wh, 1, "[hidden_size]");
    if (!rc)
        rc = bind_vector(b, &m->norm, "mtp.norm.weight", wh, 1, "[hidden_size]");
    if (!rc)
        rc = bind_layer(b, &m->layer, "mtp.layers.0.", MODEL_LAYER_FULL_ATTENTION);
    return rc;
}

static bool is_vision(const char *name)
{
    return !strncmp(name, "model.visual.", 13) || !strncmp(name, "visual.", 7);
}

int model_weights_bind(struct model_weights *w, const struct st_set *st,
                       const struct model_config *cfg, struct engine_error *err)
{
    memset(w, 0, sizeof(*w));
    struct binder b = { .st = st, .cfg = cfg, .err = err, .rep = &w->report };
    size_t n = st_set_count(st);
    b.used.cap = 16;
    while (b.used.cap < 2 * n + 16)
        b.used.cap <<= 1;
    b.used.slot = calloc(b.used.cap, sizeof(*b.used.slot));
    if (!b.used.slot)
        return engine_error_set(err, -ENOMEM, "out of memory binding %zu tensors", n);
    int rc = 0;
    char lp[NAME_MAX_LEN];

    if (cfg->num_hidden_layers <= 0 || cfg->num_hidden_layers > MODEL_MAX_LAYERS) {
        rc = engine_error_set(err, -EINVAL, "config.json num_hidden_layers %d outside 1..%d",
                              cfg->num_hidden_layers, MODEL_MAX_LAYERS);
        goto out;
    }
    if (st_set_find(st, "model.language_model.embed_tokens.weight") ||
        st_set_find(st, "model.language_model.embed_tokens.weight_packed"))
        b.prefix = "model.language_model.";
    else if (st_set_find(st, "model.embed_tokens.weight") ||
             st_set_find(st, "model.embed_tokens.weight_packed"))
        b.prefix = "model.";
    else {
        rc = engine_error_set(err, -ENOENT,
            "no 'model.language_model.embed_tokens.weight' nor 'model.embed_tokens.weight' in the "
            "checkpoint: not a qwen3_5_moe text checkpoint (or a shard is missing)");
        goto out;
    }
    snprintf(w->report.prefix, sizeof(w->report.prefix), "%s", b.prefix);

    const int64_t V = cfg->vocab_size, H = cfg->hidden_size;
    int64_t wh[1] = { H };
    snprintf(lp, sizeof(lp), "%sembed_tokens", b.prefix);
    if ((rc = bind_linear(&b, &w->embed, lp, 0, V, H, "embed_tokens: [vocab_size, hidden_size]")))
        goto out;
    snprintf(lp, sizeof(lp), "%snorm.weight", b.prefix);
    if ((rc = bind_vector(&b, &w->final_norm, lp, wh, 1, "final norm: [hidden_size]")))
        goto out;
    if (st_set_find(st, "lm_head.weight") || st_set_find(st, "lm_head.weight_packed") ||
        !cfg->tie_word_embeddings) {
        if ((rc = bind_linear(&b, &w->lm_head, "lm_head", 0, V, H, "lm_head: [vocab_size, hidden_size]")))
            goto out;
    } else {
        w->lm_head = w->embed;
    }

    w->n_layers = cfg->num_hidden_layers;
    w->layers = calloc((size_t)w->n_layers, sizeof(*w->layers));
    if (!w->layers) {
        rc = engine_error_set(err, -ENOMEM, "out of memory for %d layers", w->n_layers);
        goto out;
    }
    for (int32_t i = 0; i < w->n_layers; i++) {
        snprintf(lp, sizeof(lp), "%slayers.%d.", b.prefix, i);
        if ((rc = bind_layer(&b, &w->layers[i], lp, cfg->layer_types[i])))
            goto out;
    }
    if (st_set_find(st, "mtp.fc.weight") || st_set_find(st, "mtp.fc.weight_packed")) {
        /* the report describes the trunk's expert layout; MTP experts are
         * fused in every known export */
        bool trunk_fused = w->report.fused_experts;
        if ((rc = bind_mtp(&b, &w->mtp)))
            goto out;
        w->report.fused_experts = trunk_fused;
        w->report.has_mtp = true;
    }

    w->report.n_tensors = (uint32_t)n;
    w->report.n_bound = (uint32_t)b.used.count;
    w->report.mapped_bytes = st_set_mapped_bytes(st);
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = st_set_at(st, i);
        if (is_vision(t->name))
            w->report.n_skipped_vision++;
        else if (!ptr_set_has(&b.used, t) && w->report.n_unused++ == 0)
            snprintf(w->report.first_unused, sizeof(w->report.first_unused), "%s", t->name);
    }
out:
    free(b.used.slot);
    if (rc)
        model_weights_release(w);
    return rc;
}

static void layer_release(struct wt_layer *l)
{
    free(l->moe.experts);
    l->moe.experts = NULL;
}

void model_weights_release(struct model_weights *w)
{
    if (!w)
        return;
    for (int32_t i = 0; w->layers && i < w->n_layers; i++)
        layer_release(&w->layers[i]);
    free(w->layers);
    w->layers = NULL;
    layer_release(&w->mtp.layer);
}

static int layer_foreach(struct wt_layer *l, int32_t n_experts,
                         int (*fn)(void *ctx, struct kb_weight *kw), void *ctx)
{
    struct kb_weight *list[16];
    int n = 0, rc;
    list[n++] = &l->input_norm;
    list[n++] = &l->post_norm;
    if (l->type == MODEL_LAYER_FULL_ATTENTION) {
        struct wt_attn *a = &l->attn;
        list[n++] = &a->q_proj; list[n++] = &a->k_proj; list[n++] = &a->v_proj;
        list[n++] = &a->o_proj; list[n++] = &a->q_norm; list[n++] = &a->k_norm;
    } else {
        struct wt_gdn *g = &l->gdn;
        list[n++] = &g->in_qkv; list[n++] = &g->in_z; list[n++] = &g->in_b;
        list[n++] = &g->in_a; list[n++] = &g->conv1d; list[n++] = &g->A_log;
        list[n++] = &g->dt_bias; list[n++] = &g->norm; list[n++] = &g->out_proj;
    }
    list[n++] = &l->moe.router;
    for (int i = 0; i < n; i++)
        if ((rc = fn(ctx, list[i])))
            return rc;
    if (l->moe.op.shared_inter > 0) {
        struct kb_weight *sh[4] = { &l->moe.shared_gate, &l->moe.shared_up,
                                    &l->moe.shared_down, &l->moe.shared_expert_gate };
        for (int i = 0; i < 4; i++)
            if ((rc = fn(ctx, sh[i])))
                return rc;
    }
    for (int32_t e = 0; l->moe.experts && e < 3 * n_experts; e++)
        if ((rc = fn(ctx, &l->moe.experts[e])))
            return rc;
    return 0;
}

int model_weights_foreach(struct model_weights *w,
                          int (*fn)(void *ctx, struct kb_weight *kw), void *ctx)
{
    int rc;
    struct kb_weight *top[3] = { &w->embed, &w->final_norm, &w->lm_head };
    for (int i = 0; i < 3; i++) {
        if (i == 2 && w->lm_head.data == w->embed.data)
            break;                          /* tied: the same weight         */
        if ((rc = fn(ctx, top[i])))
            return rc;
    }
    for (int32_t i = 0; i < w->n_layers; i++)
        if ((rc = layer_foreach(&w->layers[i], w->layers[i].moe.op.n_experts, fn, ctx)))
            return rc;
    if (w->report.has_mtp) {
        struct kb_weight *mt[4] = { &w->mtp.fc, &w->mtp.pre_fc_norm_embedding,
                                    &w->mtp.pre_fc_norm_hidden, &w->mtp.norm };
        for (int i = 0; i < 4; i++)
            if ((rc = fn(ctx, mt[i])))
                return rc;
        if ((rc = layer_foreach(&w->mtp.layer, w->mtp.layer.moe.op.n_experts, fn, ctx)))
            return rc;
    }
    return 0;
}
