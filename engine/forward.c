/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The forward pass (spec model.md §2.3-2.7), written only in terms of the
 * backend ops of kernels/backend.h: no ISA- or vendor-specific code here.
 *
 * One call runs a "batch" of up to MODEL_CHUNK_ROWS token rows made of
 * segments, each segment being consecutive tokens of one sequence:
 *   prefill: one segment of n tokens (longer prompts run chunk by chunk);
 *   decode:  n segments of one token each, one per sequence.
 * Every Linear layer runs once over all rows (the weights are read once per
 * batch); the per-sequence parts (GDN recurrence, attention over the KV
 * cache) run per segment against that sequence's state.
 *
 * Per layer, rows = tokens, with H = hidden size:
 *   x = RMSNorm0(h)                                  [rows][H]
 *   h += GDN(x) or Attn(x)                           (§2.4 / §2.5)
 *   x = RMSNorm0(h);  h += MoE(x)                    (§2.6)
 * then logits = lm_head · RMSNorm0(h) for the rows whose logits are wanted.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "engine/state.h"

struct fwd_seg {
    struct model_seq *seq;
    int64_t           row0;               /* first row of this segment        */
    int64_t           n;                  /* tokens                           */
};

/* Largest per-row width of each scratch slot over both layer kinds. */
static void scratch_widths(const struct model_config *c, int64_t wd[5])
{
    const int64_t key_dim = (int64_t)c->linear_num_key_heads * c->linear_key_head_dim;
    const int64_t val_dim = (int64_t)c->linear_num_value_heads * c->linear_value_head_dim;
    const int64_t q_all = (int64_t)c->num_attention_heads * c->head_dim;
    const int64_t kv_all = (int64_t)c->num_key_value_heads * c->head_dim;
    const int64_t conv_dim = 2 * key_dim + val_dim;
    wd[0] = conv_dim > 2 * q_all ? conv_dim : 2 * q_all;
    wd[1] = val_dim > q_all ? val_dim : q_all;
    wd[2] = c->linear_num_value_heads > kv_all ? c->linear_num_value_heads : kv_all;
    wd[3] = wd[2];
    wd[4] = wd[1];
}

void forward_scratch_release(struct model *m)
{
    struct fwd_scratch *s = &m->scratch;
    float **all[] = { &s->h, &s->x, &s->o, &s->p0, &s->p1, &s->p2, &s->p3, &s->p4, &s->logits };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (*all[i])
            m->be->ops->free(m->be, *all[i]);
        *all[i] = NULL;
    }
}

int forward_scratch_alloc(struct model *m, struct engine_error *err)
{
    struct fwd_scratch *s = &m->scratch;
    const int64_t R = MODEL_CHUNK_ROWS, H = m->cfg.hidden_size;
    int64_t wd[5];
    scratch_widths(&m->cfg, wd);
    struct { float **p; int64_t width; } plan[] = {
        { &s->h, H }, { &s->x, H }, { &s->o, H },
        { &s->p0, wd[0] }, { &s->p1, wd[1] }, { &s->p2, wd[2] }, { &s->p3, wd[3] },
        { &s->p4, wd[4] }, { &s->logits, m->cfg.vocab_size },
    };
    s->rows = R;
    for (size_t i = 0; i < sizeof(plan) / sizeof(plan[0]); i++) {
        size_t bytes;
        if (plan[i].width <= 0 ||
            __builtin_mul_overflow((size_t)R * sizeof(float), (size_t)plan[i].width, &bytes)) {
            forward_scratch_release(m);
            return engine_error_set(err, -EOVERFLOW, "forward scratch row width %lld is invalid",
                                    (long long)plan[i].width);
        }
        *plan[i].p = m->be->ops->alloc(m->be, bytes);
        if (!*plan[i].p) {
            forward_scratch_release(m);
            return engine_error_set(err, -ENOMEM,
                "backend %s could not allocate %zu bytes of forward scratch", m->be->ops->name, bytes);
        }
    }
    return 0;
}

/* Backend failures carry the backend's own message when it has one. */
static int be_check(struct model *m, int rc, const char *op, int32_t layer,
                    struct engine_error *err)
{
    if (!rc)
        return 0;
    const char *msg = m->be->ops->last_error ? m->be->ops->last_error(m->be) : NULL;
    if (!msg || !*msg)
        msg = strerror(-rc);
    return engine_error_set(err, rc, "backend %s: %s failed in layer %d: %s",
                            m->be->ops->name, op, layer, msg);
}

#define CALL(op, ...) do { \
        rc = be_check(m, be->ops->op(be, __VA_ARGS__), #op, layer, err); \
        if (rc) \
            return rc; \
    } while (0)

static int run_gdn(struct model *m, const struct wt_gdn *g, int32_t layer,
                   const struct fwd_seg *segs, int32_t n_segs, int32_t n,
                   struct engine_error *err)
{
    struct kb_backend *be = m->be;
    struct fwd_scratch *s = &m->scratch;
    const int64_t conv_dim = g->in_qkv.rows, val_dim = g->in_z.rows, nv = g->in_b.rows;
    int rc;
    CALL(matmul, &g->in_qkv, s->x, n, s->p0);
    CALL(matmul, &g->in_z, s->x, n, s->p1);
    CALL(matmul, &g->in_b, s->x, n, s->p2);
    CALL(matmul, &g->in_a, s->x, n, s->p3);
    for (int32_t i = 0; i < n_segs; i++) {
        const int64_t r = segs[i].row0;
        CALL(gdn, &g->op, &segs[i].seq->gdn[layer], s->p0 + r * conv_dim, s->p1 + r * val_dim,
             s->p2 + r * nv, s->p3 + r * nv, (int32_t)segs[i].n, s->p4 + r * val_dim);
    }
    CALL(matmul, &g->out_proj, s->p4, n, s->o);
    return 0;
}

static int run_attn(struct model *m, const struct wt_attn *a, int32_t layer,
                    const struct fwd_seg *segs, int32_t n_segs, int32_t n,
                    const int32_t *pos, struct engine_error *err)
{
    struct kb_backend *be = m->be;
    struct fwd_scratch *s = &m->scratch;
    const int64_t nh = a->op.n_heads, nkv = a->op.n_kv_heads, hd = a->op.head_dim;
    const float eps = m->cfg.rms_norm_eps;
    int rc;
    /* q_proj rows are [head][q 0..hd | gate hd..2hd] (per-head interleave) */
    CALL(matmul, &a->q_proj, s->x, n, s->p0);
    CALL(matmul, &a->k_proj, s->x, n, s->p2);
    CALL(matmul, &a->v_proj, s->x, n, s->p3);
    CALL(rmsnorm, s->p1, hd, s->p0, 2 * hd, (int64_t)n * nh, (int32_t)hd, &a->q_norm, eps, true);
    CALL(rmsnorm, s->p2, hd, s->p2, hd, (int64_t)n * nkv, (int32_t)hd, &a->k_norm, eps, true);
    CALL(rope, s->p1, n, (int32_t)nh, hd, m->cfg.rotary_dim, pos, m->cfg.rope_theta);
    CALL(rope, s->p2, n, (int32_t)nkv, hd, m->cfg.rotary_dim, pos, m->cfg.rope_theta);
    for (int32_t i = 0; i < n_segs; i++) {
        const int64_t r = segs[i].row0;
        CALL(attention, &a->op, &segs[i].seq->kv[layer], segs[i].seq->len,
             s->p1 + r * nh * hd, hd, s->p2 + r * nkv * hd, s->p3 + r * nkv * hd,
             (int32_t)segs[i].n, s->p4 + r * nh * hd);
    }
    /* o = attn ⊙ sigmoid(gate), gate = second half of each head's q_proj row */
    CALL(mul_sigmoid, s->p4, hd, s->p4, hd, s->p0 + hd, 2 * hd, (int64_t)n * nh, (int32_t)hd);
    CALL(matmul, &a->o_proj, s->p4, n, s->o);
    return 0;
}

/*
 * Run rows [0, n) described by segs through the model. Logits: when
 * `logits_all`, rows [0,n) are written to logits_host [n][V]; otherwise when
 * logits_host is set, only row `logit_row` is written ([V]). `hidden_host`
 * (optional) receives [n_layers+1][hidden_n][H] at row offset hidden_row0.
 */
static int forward_rows(struct model *m, const struct fwd_seg *segs, int32_t n_segs,
                        const int32_t *ids, int32_t n, float *logits_host, bool logits_all,
                        int32_t logit_row, float *hidden_host, int64_t hidden_row0,
                        int64_t hidden_n, struct engine_error *err)
{
    struct kb_backend *be = m->be;
    struct fwd_scratch *s = &m->scratch;
    const int64_t H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    const float eps = m->cfg.rms_norm_eps;
    int32_t pos[MODEL_CHUNK_ROWS];
    int32_t layer = -1;
    int rc;

    for (int32_t i = 0; i < n_segs; i++)
        for (int64_t t = 0; t < segs[i].n; t++)
            pos[segs[i].row0 + t] = (int32_t)(segs[i].seq->len + t);

    CALL(embed, &m->w.embed, ids, n, s->h);
    if (hidden_host)
        CALL(download, hidden_host + hidden_row0 * H, s->h, (size_t)n * (size_t)H * sizeof(float));
    for (layer = 0; layer < m->w.n_layers; layer++) {
        const struct wt_layer *L = &m->w.layers[layer];
        CALL(rmsnorm, s->x, H, s->h, H, n, (int32_t)H, &L->input_norm, eps, true);
        rc = L->type == MODEL_LAYER_LINEAR_ATTENTION
                 ? run_gdn(m, &L->gdn, layer, segs, n_segs, n, err)
                 : run_attn(m, &L->attn, layer, segs, n_segs, n, pos, err);
        if (rc)
            return rc;
        CALL(add, s->h, s->h, s->o, (int64_t)n * H);
        CALL(rmsnorm, s->x, H, s->h, H, n, (int32_t)H, &L->post_norm, eps, true);
        CALL(moe, &L->moe.op, s->x, n, s->o);
        CALL(add, s->h, s->h, s->o, (int64_t)n * H);
        if (hidden_host)
            CALL(download, hidden_host + ((int64_t)(layer + 1) * hidden_n + hidden_row0) * H, s->h,
                 (size_t)n * (size_t)H * sizeof(float));
    }
    if (logits_host) {
        const int64_t r0 = logits_all ? 0 : logit_row, nr = logits_all ? n : 1;
        CALL(rmsnorm, s->x, H, s->h + r0 * H, H, nr, (int32_t)H, &m->w.final_norm, eps, true);
        CALL(matmul, &m->w.lm_head, s->x, (int32_t)nr, s->logits);
        CALL(download, logits_host, s->logits, (size_t)nr * (size_t)V * sizeof(float));
    }
    return 0;
}

#undef CALL

static int check_ids(struct model *m, const int32_t *ids, int64_t n, struct engine_error *err)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return engine_error_set(err, -EINVAL,
                "token id %d at position %" PRId64 " is outside 0..%d (config.json vocab_size)",
                ids[i], i, m->cfg.vocab_size - 1);
    return 0;
}

int model_prefill(struct model *m, struct model_seq *s, const int32_t *ids, int64_t n,
                  const struct model_prefill_params *p, struct engine_error *err)
{
    struct model_prefill_params none = { 0 };
    if (!p)
        p = &none;
    if (s->model != m)
        return engine_error_set(err, -EINVAL, "sequence belongs to another model");
    if (s->broken)
        return engine_error_set(err, -EBADFD, "sequence is broken by an earlier failed step; reset it");
    if (n <= 0)
        return engine_error_set(err, -EINVAL, "prefill needs at least one token, got %" PRId64, n);
    if (n > s->capacity - s->len)
        return engine_error_set(err, -ENOSPC,
            "prefill of %" PRId64 " tokens does not fit: sequence holds %" PRId64 " of %" PRId64
            " (raise the context capacity)", n, s->len, s->capacity);
    int rc = check_ids(m, ids, n, err);
    if (rc)
        return rc;
    const int64_t V = m->cfg.vocab_size;
    pthread_mutex_lock(&m->lock);
    for (int64_t r0 = 0; r0 < n && !rc; r0 += MODEL_CHUNK_ROWS) {
        const int32_t c = (int32_t)(n - r0 < MODEL_CHUNK_ROWS ? n - r0 : MODEL_CHUNK_ROWS);
        const bool last = r0 + c == n;
        struct fwd_seg seg = { s, 0, c };
        float *lg = NULL;
        if (p->logits && p->all_logits)
            lg = p->logits + r0 * V;
        else if (p->logits && last)
            lg = p->logits;
        rc = forward_rows(m, &seg, 1, ids + r0, c, lg, p->all_logits, c - 1,
                          p->hidden, r0, n, err);
        if (!rc)
            s->len += c;
    }
    if (rc)
        s->broken = true;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int model_decode(struct model *m, struct model_seq *const *seqs, const int32_t *ids,
                 int32_t n_seq, float *logits, struct engine_error *err)
{
    if (n_seq <= 0)
        return engine_error_set(err, -EINVAL, "decode needs at least one sequence, got %d", n_seq);
    for (int32_t i = 0; i < n_seq; i++) {
        if (seqs[i]->model != m)
            return engine_error_set(err, -EINVAL, "sequence %d belongs to another model", i);
        if (seqs[i]->broken)
            return engine_error_set(err, -EBADFD,
                "sequence %d is broken by an earlier failed step; reset it", i);
        if (seqs[i]->len >= seqs[i]->capacity)
            return engine_error_set(err, -ENOSPC,
                "sequence %d is full (%" PRId64 " tokens); raise the context capacity", i,
                seqs[i]->capacity);
        for (int32_t j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return engine_error_set(err, -EINVAL,
                    "sequence appears twice in one decode batch (entries %d and %d)", j, i);
    }
    int rc = check_ids(m, ids, n_seq, err);
    if (rc)
        return rc;
    const int64_t V = m->cfg.vocab_size;
    struct fwd_seg segs[MODEL_CHUNK_ROWS];
    pthread_mutex_lock(&m->lock);
    for (int32_t b0 = 0; b0 < n_seq && !rc; b0 += MODEL_CHUNK_ROWS) {
        const int32_t c = n_seq - b0 < MODEL_CHUNK_ROWS ? n_seq - b0 : MODEL_CHUNK_ROWS;
        for (int32_t i = 0; i < c; i++)
            segs[i] = (struct fwd_seg){ seqs[b0 + i], i, 1 };
        rc = forward_rows(m, segs, c, ids + b0, c, logits ? logits + (int64_t)b0 * V : NULL,
                          true, 0, NULL, 0, 0, err);
        /* a failed chunk may have updated part of its sequences' state;
         * earlier chunks advanced, later ones were not touched */
        for (int32_t i = 0; i < c; i++) {
            if (rc)
                seqs[b0 + i]->broken = true;
            else
                seqs[b0 + i]->len++;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}
