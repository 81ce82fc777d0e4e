/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sequence state: sized from the config and the capacity, allocated through
 * the backend (so a GPU backend keeps it in device memory), zeroed at start.
 * Sizes are computed with overflow checks: capacity comes from a client.
 * Below the basic life cycle: host images of the state for snapshots and
 * restores (the prefix cache), and device-side copies (forking).
 */
#include "engine/state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Bytes of one K or V element: the backend's choice (KB_CAP_KV_F16). */
static size_t kv_elem_bytes(const struct model *m)
{
    return kb_kv_elem_bytes(m->be->ops->caps(m->be));
}

static void *be_alloc_bytes(struct kb_backend *be, uint64_t bytes)
{
    if (bytes > SIZE_MAX)
        return NULL;
    return be->ops->alloc(be, (size_t)bytes);
}

void model_seq_free(struct model_seq *s)
{
    if (!s)
        return;
    struct kb_backend *be = s->model->be;
    for (int32_t l = 0; l < s->model->w.n_layers; l++) {
        if (s->gdn) {
            be->ops->free(be, s->gdn[l].conv);
            be->ops->free(be, s->gdn[l].ssm);
        }
        if (s->kv) {
            be->ops->free(be, s->kv[l].k);
            be->ops->free(be, s->kv[l].v);
        }
    }
    free(s->gdn);
    free(s->kv);
    free(s);
}

int model_seq_new(struct model *m, int64_t capacity, struct model_seq **out,
                  struct engine_error *err)
{
    const struct model_config *c = &m->cfg;
    if (capacity == 0)
        capacity = m->params.max_context;
    if (capacity <= 0 || capacity > c->max_position_embeddings)
        return engine_error_set(err, -EINVAL,
            "sequence capacity %" PRId64 " outside 1..%d (config.json max_position_embeddings)",
            capacity, c->max_position_embeddings);
    struct model_seq *s = calloc(1, sizeof(*s));
    if (!s)
        return engine_error_set(err, -ENOMEM, "out of memory for a sequence");
    s->model = m;
    s->capacity = capacity;
    s->gdn = calloc((size_t)m->w.n_layers, sizeof(*s->gdn));
    s->kv = calloc((size_t)m->w.n_layers, sizeof(*s->kv));
    if (!s->gdn || !s->kv) {
        model_seq_free(s);
        return engine_error_set(err, -ENOMEM, "out of memory for a sequence");
    }
    const uint64_t conv_dim = 2ull * (uint64_t)c->linear_num_key_heads * (uint64_t)c->linear_key_head_dim +
                              (uint64_t)c->linear_num_value_heads * (uint64_t)c->linear_value_head_dim;
    const uint64_t conv_bytes = (uint64_t)(c->linear_conv_kernel_dim > 1 ? c->linear_conv_kernel_dim - 1 : 1) *
                                conv_dim * sizeof(float);
    const uint64_t ssm_bytes = (uint64_t)c->linear_num_value_heads * (uint64_t)c->linear_key_head_dim *
                               (uint64_t)c->linear_value_head_dim * sizeof(float);
    uint64_t kv_bytes;
    if (__builtin_mul_overflow((uint64_t)capacity,
                               (uint64_t)c->num_key_value_heads * (uint64_t)c->head_dim *
                               kv_elem_bytes(m), &kv_bytes)) {
        model_seq_free(s);
        return engine_error_set(err, -EOVERFLOW, "KV cache size for %" PRId64 " tokens overflows", capacity);
    }
    struct kb_backend *be = m->be;
    for (int32_t l = 0; l < m->w.n_layers; l++) {
        bool ok;
        if (m->w.layers[l].type == MODEL_LAYER_LINEAR_ATTENTION) {
            s->gdn[l].conv = be_alloc_bytes(be, conv_bytes);
            s->gdn[l].ssm = be_alloc_bytes(be, ssm_bytes);
            ok = s->gdn[l].conv && s->gdn[l].ssm;
            s->bytes += conv_bytes + ssm_bytes;
        } else {
            s->kv[l].k = be_alloc_bytes(be, kv_bytes);
            s->kv[l].v = be_alloc_bytes(be, kv_bytes);
            s->kv[l].capacity = capacity;
            ok = s->kv[l].k && s->kv[l].v;
            s->bytes += 2 * kv_bytes;
        }
        if (!ok) {
            uint64_t total = s->bytes;
            model_seq_free(s);
            return engine_error_set(err, -ENOMEM,
                "backend %s could not allocate sequence state (%" PRIu64 " bytes so far, layer %d); "
                "lower the context capacity", be->ops->name, total, l);
        }
    }
    *out = s;
    return 0;
}

int model_seq_reset(struct model_seq *s)
{
    const struct model_config *c = &s->model->cfg;
    struct kb_backend *be = s->model->be;
    const size_t conv_dim = 2u * (size_t)c->linear_num_key_heads * (size_t)c->linear_key_head_dim +
                            (size_t)c->linear_num_value_heads * (size_t)c->linear_value_head_dim;
    const size_t conv_bytes = (size_t)(c->linear_conv_kernel_dim > 1 ? c->linear_conv_kernel_dim - 1 : 1) *
                              conv_dim * sizeof(float);
    const size_t ssm_bytes = (size_t)c->linear_num_value_heads * (size_t)c->linear_key_head_dim *
                             (size_t)c->linear_value_head_dim * sizeof(float);
    int rc = 0;
    for (int32_t l = 0; l < s->model->w.n_layers && !rc; l++) {
        if (s->gdn[l].conv) {
            rc = be->ops->zero(be, s->gdn[l].conv, conv_bytes);
            if (!rc)
                rc = be->ops->zero(be, s->gdn[l].ssm, ssm_bytes);
        }
        /* the KV cache needs no clearing: positions >= len are never read */
    }
    if (rc)
        return rc;
    s->len = 0;
    s->broken = false;
    return 0;
}

int64_t model_seq_len(const struct model_seq *s)
{
    return s->len;
}

int64_t model_seq_capacity(const struct model_seq *s)
{
    return s->capacity;
}

uint64_t model_seq_bytes(const struct model_seq *s)
{
    return s->bytes;
}

/* ---- snapshot / restore / copy (state.h) ---- */

static void gdn_sizes(const struct model_config *c, size_t *conv_bytes, size_t *ssm_bytes)
{
    const size_t conv_dim = 2u * (size_t)c->linear_num_key_heads * (size_t)c->linear_key_head_dim +
                            (size_t)c->linear_num_value_heads * (size_t)c->linear_value_head_dim;
    *conv_bytes = (size_t)(c->linear_conv_kernel_dim > 1 ? c->linear_conv_kernel_dim - 1 : 1) *
                  conv_dim * sizeof(float);
    *ssm_bytes = (size_t)c->linear_num_value_heads * (size_t)c->linear_key_head_dim *
                 (size_t)c->linear_value_head_dim * sizeof(float);
}

void model_state_geom_get(const struct model *m, struct model_state_geom *g)
{
    const struct model_config *c = &m->cfg;
    size_t conv_bytes, ssm_bytes;
    gdn_sizes(c, &conv_bytes, &ssm_bytes);
    *g = (struct model_state_geom){ 0 };
    g->kv_dim = (int64_t)c->num_key_value_heads * c->head_dim;
    for (int32_t l = 0; l < m->w.n_layers; l++) {
        if (m->w.layers[l].type == MODEL_LAYER_LINEAR_ATTENTION)
            g->n_gdn_layers++;
        else
            g->n_attn_layers++;
    }
    g->kv_elem_bytes = (uint32_t)kv_elem_bytes(m);
    g->kv_token_bytes = (uint64_t)g->n_attn_layers * 2u * (uint64_t)g->kv_dim * g->kv_elem_bytes;
    g->gdn_bytes = (uint64_t)g->n_gdn_layers * (conv_bytes + ssm_bytes);
}

static int be_fail(struct model *m, int rc, const char *what, struct engine_error *err)
{
    const char *msg = m->be->ops->last_error ? m->be->ops->last_error(m->be) : NULL;
    return engine_error_set(err, rc, "backend %s: %s failed: %s", m->be->ops->name, what,
                            msg && *msg ? msg : strerror(-rc));
}

int model_seq_gdn_save(struct model_seq *s, void *dst, struct engine_error *err)
{
    struct model *m = s->model;
    struct kb_backend *be = m->be;
    if (s->broken)
        return engine_error_set(err, -EBADFD, "sequence is broken by an earlier failed step; reset it");
    size_t conv_bytes, ssm_bytes;
    gdn_sizes(&m->cfg, &conv_bytes, &ssm_bytes);
    unsigned char *p = dst;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    for (int32_t l = 0; l < m->w.n_layers && !rc; l++) {
        if (m->w.layers[l].type != MODEL_LAYER_LINEAR_ATTENTION)
            continue;
        rc = be->ops->download(be, p, s->gdn[l].conv, conv_bytes);
        if (!rc)
            rc = be->ops->download(be, p + conv_bytes, s->gdn[l].ssm, ssm_bytes);
        p += conv_bytes + ssm_bytes;
    }
    pthread_mutex_unlock(&m->lock);
    return rc ? be_fail(m, rc, "download of the GDN state", err) : 0;
}

/* Move KV rows [pos, pos+n) between the cache and a host image (state.h). */
static int kv_move(struct model_seq *s, int64_t pos, int64_t n, unsigned char *host, bool save)
{
    struct model *m = s->model;
    struct kb_backend *be = m->be;
    struct model_state_geom g;
    model_state_geom_get(m, &g);
    const size_t bytes = (size_t)n * (size_t)g.kv_dim * g.kv_elem_bytes;
    const size_t at = (size_t)pos * (size_t)g.kv_dim * g.kv_elem_bytes;
    int rc = 0;
    for (int32_t l = 0; l < m->w.n_layers && !rc; l++) {
        if (m->w.layers[l].type == MODEL_LAYER_LINEAR_ATTENTION)
            continue;
        unsigned char *dev[2] = { (unsigned char *)s->kv[l].k + at, (unsigned char *)s->kv[l].v + at };
        for (int kv = 0; kv < 2 && !rc; kv++, host += bytes)
            rc = save ? be->ops->download(be, host, dev[kv], bytes)
                      : be->ops->upload(be, dev[kv], host, bytes);
    }
    return rc;
}

int model_seq_kv_save(struct model_seq *s, int64_t pos, int64_t n, void *dst,
                      struct engine_error *err)
{
    if (s->broken)
        return engine_error_set(err, -EBADFD, "sequence is broken by an earlier failed step; reset it");
    if (pos < 0 || n < 0 || n > s->len - pos)
        return engine_error_set(err, -EINVAL, "KV rows %" PRId64 "+%" PRId64 " outside the %" PRId64
                                " tokens the sequence holds", pos, n, s->len);
    pthread_mutex_lock(&s->model->lock);
    int rc = kv_move(s, pos, n, dst, true);
    pthread_mutex_unlock(&s->model->lock);
    return rc ? be_fail(s->model, rc, "download of KV rows", err) : 0;
}

int model_seq_kv_load(struct model_seq *s, int64_t pos, int64_t n, const void *src,
                      struct engine_error *err)
{
    if (pos < s->len || n < 0 || n > s->capacity - pos)
        return engine_error_set(err, -EINVAL, "KV rows %" PRId64 "+%" PRId64 " must lie in the unused "
                                "part %" PRId64 "..%" PRId64 " of the sequence", pos, n, s->len,
                                s->capacity);
    pthread_mutex_lock(&s->model->lock);
    /* kv_move only reads through `host` when uploading */
    int rc = kv_move(s, pos, n, (unsigned char *)(uintptr_t)src, false);
    if (rc)
        s->broken = true;
    pthread_mutex_unlock(&s->model->lock);
    return rc ? be_fail(s->model, rc, "upload of KV rows", err) : 0;
}

int model_seq_gdn_load(struct model_seq *s, const void *src, int64_t len, struct engine_error *err)
{
    struct model *m = s->model;
    struct kb_backend *be = m->be;
    if (s->len != 0 || s->broken)
        return engine_error_set(err, -EINVAL, "state can only be restored onto an empty sequence "
                                "(this one holds %" PRId64 " tokens%s)", s->len,
                                s->broken ? ", broken" : "");
    if (len <= 0 || len > s->capacity)
        return engine_error_set(err, -EINVAL, "restored length %" PRId64 " outside 1..%" PRId64
                                " (sequence capacity)", len, s->capacity);
    size_t conv_bytes, ssm_bytes;
    gdn_sizes(&m->cfg, &conv_bytes, &ssm_bytes);
    const unsigned char *p = src;
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    for (int32_t l = 0; l < m->w.n_layers && !rc; l++) {
        if (m->w.layers[l].type != MODEL_LAYER_LINEAR_ATTENTION)
            continue;
        rc = be->ops->upload(be, s->gdn[l].conv, p, conv_bytes);
        if (!rc)
            rc = be->ops->upload(be, s->gdn[l].ssm, p + conv_bytes, ssm_bytes);
        p += conv_bytes + ssm_bytes;
    }
    if (rc)
        s->broken = true;
    else
        s->len = len;
    pthread_mutex_unlock(&m->lock);
    return rc ? be_fail(m, rc, "upload of the GDN state", err) : 0;
}

int model_seq_copy(struct model_seq *dst, struct model_seq *src, struct engine_error *err)
{
    struct model *m = src->model;
    struct kb_backend *be = m->be;
    if (dst == src || dst->model != m)
        return engine_error_set(err, -EINVAL, "copy needs two distinct sequences of one model");
    if (src->broken)
        return engine_error_set(err, -EBADFD, "source sequence is broken by an earlier failed step");
    if (src->len > dst->capacity)
        return engine_error_set(err, -ENOSPC, "source holds %" PRId64 " tokens, the destination only "
                                "has room for %" PRId64, src->len, dst->capacity);
    size_t conv_bytes, ssm_bytes;
    gdn_sizes(&m->cfg, &conv_bytes, &ssm_bytes);
    const size_t kv_bytes = (size_t)src->len * (size_t)m->cfg.num_key_value_heads *
                            (size_t)m->cfg.head_dim * kv_elem_bytes(m);
    int rc = 0;
    pthread_mutex_lock(&m->lock);
    for (int32_t l = 0; l < m->w.n_layers && !rc; l++) {
        if (m->w.layers[l].type == MODEL_LAYER_LINEAR_ATTENTION) {
            rc = be->ops->copy(be, dst->gdn[l].conv, src->gdn[l].conv, conv_bytes);
            if (!rc)
                rc = be->ops->copy(be, dst->gdn[l].ssm, src->gdn[l].ssm, ssm_bytes);
        } else if (kv_bytes) {
            rc = be->ops->copy(be, dst->kv[l].k, src->kv[l].k, kv_bytes);
            if (!rc)
                rc = be->ops->copy(be, dst->kv[l].v, src->kv[l].v, kv_bytes);
        }
    }
    dst->broken = rc != 0;
    if (!rc)
        dst->len = src->len;
    pthread_mutex_unlock(&m->lock);
    return rc ? be_fail(m, rc, "copy of sequence state", err) : 0;
}
