/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Loading a model directory: config (engine/config.h), mapping the
 * safetensors shards (engine/safetensors.h), binding and validating every
 * tensor (engine/weights.c), creating the backend, letting it prepare the
 * weights, and allocating the forward scratch. The weights stay in the
 * read-only mapping; nothing here copies them.
 */
#include "engine/model.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/state.h"
#include "kernels/cpu/fast.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Capability bits a weight needs from the backend. */
static int need_caps(void *ctx, struct kb_weight *w)
{
    uint32_t *need = ctx;
    switch (w->type) {
    case KB_WTYPE_Q4G32: *need |= KB_CAP_Q4G32 | (w->g_idx ? KB_CAP_G_IDX : 0); break;
    case KB_WTYPE_BF16:  *need |= KB_CAP_DENSE_BF16; break;
    case KB_WTYPE_F16:   *need |= KB_CAP_DENSE_F16; break;
    case KB_WTYPE_F32:   *need |= KB_CAP_DENSE_F32; break;
    }
    return 0;
}

static const char *cap_name(uint32_t bit)
{
    switch (bit) {
    case KB_CAP_Q4G32:      return "W4A16 g32 weights";
    case KB_CAP_G_IDX:      return "act-order g_idx";
    case KB_CAP_DENSE_BF16: return "dense BF16 weights";
    case KB_CAP_DENSE_F16:  return "dense F16 weights";
    case KB_CAP_DENSE_F32:  return "dense F32 weights";
    default:                return "?";
    }
}

static int prepare_one(void *ctx, struct kb_weight *w)
{
    struct kb_backend *be = ctx;
    return be->ops->weight_prepare(be, w);
}

static int release_one(void *ctx, struct kb_weight *w)
{
    struct kb_backend *be = ctx;
    if (w->backend_data)
        be->ops->weight_release(be, w);
    w->backend_data = NULL;
    return 0;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    if (m->be) {
        forward_scratch_release(m);
        if (m->prepared && m->be->ops->weight_release)
            model_weights_foreach(&m->w, release_one, m->be);
        if (m->be_owned)
            m->be->ops->destroy(m->be);
    }
    model_weights_release(&m->w);
    st_set_free(m->st);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* The forward pass depends on these relations; config.h's loader checks
 * ranges, this checks what the engine itself relies on. */
static int check_config(const struct model_config *c, struct engine_error *err)
{
    if (c->hidden_size <= 0 || c->vocab_size <= 0 || c->num_hidden_layers <= 0 ||
        c->num_hidden_layers > MODEL_MAX_LAYERS)
        return engine_error_set(err, -EINVAL, "config.json: hidden_size, vocab_size and "
                                "num_hidden_layers must be positive (layers <= %d)", MODEL_MAX_LAYERS);
    if (c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 ||
        c->num_attention_heads % c->num_key_value_heads || c->head_dim <= 0)
        return engine_error_set(err, -EINVAL, "config.json: num_attention_heads %d must be a positive "
                                "multiple of num_key_value_heads %d", c->num_attention_heads,
                                c->num_key_value_heads);
    if (c->rotary_dim <= 0 || c->rotary_dim % 2 || c->rotary_dim > c->head_dim)
        return engine_error_set(err, -EINVAL, "config.json: rotary dim %d (head_dim * "
                                "partial_rotary_factor) must be even and <= head_dim %d",
                                c->rotary_dim, c->head_dim);
    if (c->linear_num_key_heads <= 0 || c->linear_num_value_heads <= 0 ||
        c->linear_num_value_heads % c->linear_num_key_heads || c->linear_key_head_dim <= 0 ||
        c->linear_value_head_dim <= 0 || c->linear_conv_kernel_dim < 1)
        return engine_error_set(err, -EINVAL, "config.json: linear_num_value_heads %d must be a "
                                "positive multiple of linear_num_key_heads %d",
                                c->linear_num_value_heads, c->linear_num_key_heads);
    if (c->num_experts <= 0 || c->num_experts_per_tok <= 0 ||
        c->num_experts_per_tok > c->num_experts || c->moe_intermediate_size <= 0 ||
        c->shared_expert_intermediate_size < 0)
        return engine_error_set(err, -EINVAL, "config.json: num_experts_per_tok %d must be in "
                                "1..num_experts %d", c->num_experts_per_tok, c->num_experts);
    return 0;
}

int model_load(const char *dir, const struct model_params *params,
               struct model **out, struct engine_error *err)
{
    const double t0 = now_ms();
    struct model_params p = MODEL_PARAMS_DEFAULT;
    if (params)
        p = *params;
    if (!p.backend)
        p.backend = "auto";
    struct model *m = calloc(1, sizeof(*m));
    if (!m)
        return engine_error_set(err, -ENOMEM, "out of memory for the model");
    pthread_mutex_init(&m->lock, NULL);
    m->params = p;
    int rc = model_config_load(dir, &m->cfg, err);
    if (!rc)
        rc = check_config(&m->cfg, err);
    if (rc)
        goto fail;
    /* max_position_embeddings is optional in config.json; absent means the
     * model sets no limit of its own (positions are int32 here) */
    if (m->cfg.max_position_embeddings <= 0)
        m->cfg.max_position_embeddings = INT32_MAX;
    if (p.real_vocab < 0 || p.real_vocab > m->cfg.vocab_size) {
        rc = engine_error_set(err, -EINVAL, "real vocabulary size %d outside 0..%d (vocab_size)",
                              p.real_vocab, m->cfg.vocab_size);
        goto fail;
    }
    m->real_vocab = p.real_vocab ? p.real_vocab : m->cfg.vocab_size;
    if (p.max_context <= 0 || p.max_context > m->cfg.max_position_embeddings) {
        rc = engine_error_set(err, -EINVAL, "max_context %" PRId64 " outside 1..%d "
                              "(max_position_embeddings)", p.max_context,
                              m->cfg.max_position_embeddings);
        goto fail;
    }
    rc = p.shard_images ? st_set_open_dir_images(dir, p.shard_images, p.n_shard_images, &m->st, err)
                        : st_set_open_dir(dir, &m->st, err);
    if (rc)
        goto fail;
    if ((rc = model_weights_bind(&m->w, m->st, &m->cfg, err)))
        goto fail;

    if (p.backend_instance) {
        /* a backend the caller created (GPU backends need device choice and
         * their own setup, which the engine does not know about) */
        m->be = p.backend_instance;
    } else if (!strcmp(p.backend, "cpu-ref")) {
        struct kb_cpu_params cp = KB_CPU_PARAMS_DEFAULT;
        cp.n_threads = p.n_threads;
        rc = kb_cpu_ref_create(&cp, &m->be);
        if (rc) {
            engine_error_set(err, rc, "cannot create the cpu-ref backend with %d threads (1..64)",
                             p.n_threads);
            goto fail;
        }
        m->be_owned = true;
    } else if (!strcmp(p.backend, "auto") || !strcmp(p.backend, "cpu") ||
               !strcmp(p.backend, "cpu-exact")) {
        /* the fast CPU backend: SIMD kernels picked by CPUID ("cpu-exact":
         * fp32 activations, for checking the fast path against it) */
        struct kb_cpu_fast_params fp = KB_CPU_FAST_PARAMS_DEFAULT;
        fp.n_threads = p.n_threads;
        fp.exact = !strcmp(p.backend, "cpu-exact");
        rc = kb_cpu_fast_create(&fp, &m->be);
        if (rc) {
            const char *isa = getenv("RESIDENT_CPU_ISA");
            engine_error_set(err, rc, "cannot create the %s backend with %d threads (0..256) "
                             "and RESIDENT_CPU_ISA=%s (avx512, avx2vnni, avx2, scalar or auto; "
                             "a level this CPU lacks is refused): %s", p.backend, p.n_threads,
                             isa ? isa : "(unset)", strerror(-rc));
            goto fail;
        }
        m->be_owned = true;
    } else {
        rc = engine_error_set(err, -ENOENT, "unknown backend '%s' (available: auto, cpu, "
                              "cpu-exact, cpu-ref)", p.backend);
        goto fail;
    }
    if ((m->be->ops->api_version >> 16) != KB_API_VERSION_MAJOR) {
        rc = engine_error_set(err, -EPROTO, "backend %s implements API %u.%u, the engine needs %d.x",
                              m->be->ops->name, m->be->ops->api_version >> 16,
                              m->be->ops->api_version & 0xffff, KB_API_VERSION_MAJOR);
        goto fail;
    }
    {
        const struct kb_backend_ops *o = m->be->ops;
        const char *missing = !o->caps ? "caps" : !o->destroy ? "destroy" : !o->alloc ? "alloc" :
            !o->free ? "free" : !o->upload ? "upload" : !o->download ? "download" :
            !o->copy ? "copy" : !o->zero ? "zero" : !o->embed ? "embed" :
            !o->matmul ? "matmul" : !o->rmsnorm ? "rmsnorm" : !o->rope ? "rope" :
            !o->add ? "add" : !o->mul_sigmoid ? "mul_sigmoid" : !o->gdn ? "gdn" :
            !o->attention ? "attention" : !o->moe ? "moe" :
            (o->weight_prepare && !o->weight_release) ? "weight_release" : NULL;
        if (missing) {
            rc = engine_error_set(err, -EINVAL, "backend %s does not implement the required op '%s'",
                                  o->name ? o->name : "?", missing);
            goto fail;
        }
    }
    {
        uint32_t need = 0, have = m->be->ops->caps(m->be);
        model_weights_foreach(&m->w, need_caps, &need);
        for (uint32_t bit = 1; bit; bit <<= 1)
            if ((need & bit) && !(have & bit)) {
                rc = engine_error_set(err, -ENOTSUP, "backend %s cannot run this checkpoint: it lacks %s "
                                      "(use the cpu-ref backend or re-export the model)",
                                      m->be->ops->name, cap_name(bit));
                goto fail;
            }
        if (!(have & KB_CAP_READS_MAPPING) && !m->be->ops->weight_prepare) {
            rc = engine_error_set(err, -EINVAL, "backend %s neither reads the host mapping nor "
                                  "implements weight_prepare", m->be->ops->name);
            goto fail;
        }
    }
    if (m->be->ops->weight_prepare) {
        m->prepared = true;
        rc = model_weights_foreach(&m->w, prepare_one, m->be);
        if (rc) {
            engine_error_set(err, rc, "backend %s could not prepare the weights: %s",
                             m->be->ops->name,
                             m->be->ops->last_error ? m->be->ops->last_error(m->be) : "");
            goto fail;
        }
        if (m->cfg.tie_word_embeddings && m->w.lm_head.data == m->w.embed.data)
            m->w.lm_head = m->w.embed;
    }
    if ((rc = forward_scratch_alloc(m, err)))
        goto fail;
    m->load_ms = now_ms() - t0;
    *out = m;
    return 0;
fail:
    model_free(m);
    return rc;
}

const struct model_config *model_get_config(const struct model *m)
{
    return &m->cfg;
}

int32_t model_vocab(const struct model *m)
{
    return m->cfg.vocab_size;
}

int32_t model_real_vocab(const struct model *m)
{
    return m->real_vocab;
}

int32_t model_hidden(const struct model *m)
{
    return m->cfg.hidden_size;
}

int32_t model_n_layers(const struct model *m)
{
    return m->w.n_layers;
}

void model_backend_describe(const struct model *m, char *buf, size_t len)
{
    const char *name = m->be->ops->name;
    if (m->be_owned && (!strcmp(name, "cpu") || !strcmp(name, "cpu-exact"))) {
        int32_t nt = kb_cpu_fast_threads(m->be);
        snprintf(buf, len, "%s with %s, %d thread%s", name, kb_cpu_isa_name(kb_cpu_fast_isa(m->be)), nt,
                 nt == 1 ? "" : "s");
    } else if (m->be_owned && !strcmp(name, "cpu-ref")) {
        int32_t nt = m->params.n_threads > 0 ? m->params.n_threads : 1;
        snprintf(buf, len, "cpu-ref, %d thread%s", nt, nt == 1 ? "" : "s");
    } else {
        snprintf(buf, len, "%s", name);
    }
}

uint64_t model_mapped_bytes(const struct model *m)
{
    return m->w.report.mapped_bytes;
}

uint32_t model_files_opened(const struct model *m)
{
    struct st_set_stats s;
    st_set_get_stats(m->st, &s);
    return s.files_opened;
}

void model_report_write(const struct model *m, FILE *f)
{
    const struct wt_report *r = &m->w.report;
    const double mib = 1024.0 * 1024.0;
    fprintf(f, "model: %d layers, hidden %d, vocab %d (real %d), prefix '%s', experts %s%s\n",
            m->w.n_layers, m->cfg.hidden_size, m->cfg.vocab_size, m->real_vocab, r->prefix,
            r->fused_experts ? "fused 3-D" : "per-expert", r->has_mtp ? ", mtp bound" : "");
    fprintf(f, "tensors: %u in checkpoint, %u bound, %u vision skipped, %u unused%s%s%s\n",
            r->n_tensors, r->n_bound, r->n_skipped_vision, r->n_unused,
            r->n_unused ? " (e.g. " : "", r->n_unused ? r->first_unused : "",
            r->n_unused ? ")" : "");
    fprintf(f, "matrices: %u W4A16 g32 (%.1f MiB), %u dense (%.1f MiB); %u vectors (%.2f MiB)\n",
            r->n_quant_linear, (double)r->quant_bytes / mib, r->n_dense_linear,
            (double)r->dense_bytes / mib, r->n_vectors, (double)r->vector_bytes / mib);
    fprintf(f, "mapped: %.1f MiB (read-only, not copied); backend %s; load %.1f ms\n",
            (double)r->mapped_bytes / mib, m->be->ops->name, m->load_ms);
}
