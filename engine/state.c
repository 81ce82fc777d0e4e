/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sequence state: sized from the config and the capacity, allocated through
 * the backend (so a GPU backend keeps it in device memory), zeroed at start.
 * Sizes are computed with overflow checks: capacity comes from a client.
 */
#include "engine/state.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

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
                               (uint64_t)c->num_key_value_heads * (uint64_t)c->head_dim * sizeof(float),
                               &kv_bytes)) {
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
