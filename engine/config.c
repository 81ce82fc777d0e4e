/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.json / generation_config.json reader.
 *
 * Where fields live: the Qwen3.5/3.6 MoE checkpoint is saved as a
 * multimodal wrapper, {"text_config": {...}, "vision_config": {...},
 * "quantization_config": {...}, "tie_word_embeddings": ...}. A text-only
 * export has the text fields at the top level instead; both are accepted
 * (the text fields are read from "text_config" when it exists, else from
 * the root). quantization_config is normally at the top level, but some
 * exports nest it in text_config, so both places are checked. RoPE
 * parameters moved in transformers v5 from top-level rope_theta /
 * partial_rotary_factor (and rope_scaling) into "rope_parameters"; all
 * three places are checked, rope_parameters first.
 *
 * Why the limits: every dimension gets a hard upper bound so that any
 * product a later stage forms from a few of them (e.g. num_experts *
 * moe_intermediate_size * hidden_size <= 2^12 * 2^16 * 2^15 = 2^43, or
 * vocab_size * hidden_size <= 2^22 * 2^15) fits comfortably in 64 bits
 * and even in a size_t byte count, so the binder and the allocator only
 * need overflow checks where they multiply by untrusted tensor data.
 *
 * Parsing is all-or-nothing: results go to a local copy that is copied to
 * the caller's struct only on success.
 */
#include "engine/config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <stdlib.h>

#include "engine/json-util.h"

#define CFG_JSON_MAX        (16u << 20)     /* 16 MiB per JSON file           */
#define CFG_JSON_DEPTH      64

#define CFG_MAX_HIDDEN      (1 << 15)
#define CFG_MAX_VOCAB       (1 << 22)
#define CFG_MAX_HEADS       1024
#define CFG_MAX_HEAD_DIM    1024
#define CFG_MAX_FFN         (1 << 18)
#define CFG_MAX_MOE_FFN     (1 << 16)
#define CFG_MAX_EXPERTS     4096
#define CFG_MAX_CONV        64
#define CFG_MAX_POS         (1 << 24)
#define CFG_MAX_MTP         16

struct cfg_ctx {
    const char          *what;          /* file name for messages            */
    struct engine_error *err;
};

/* Read an int field into *out; `required` turns absence into an error. */
static int cfg_int(const struct cfg_ctx *c, struct json_object *obj, const char *path,
                   const char *key, int64_t lo, int64_t hi, bool required, int *out)
{
    int64_t v = 0;
    int rc = ejson_get_int(obj, key, c->what, path, lo, hi, &v, c->err);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        if (required)
            return engine_error_set(c->err, -EINVAL, "%s: %s%s is missing (required)", c->what, path, key);
        return 1;
    }
    *out = (int)v;
    return 0;
}

static int cfg_double(const struct cfg_ctx *c, struct json_object *obj, const char *path,
                      const char *key, double lo, double hi, double *out)
{
    return ejson_get_double(obj, key, c->what, path, lo, hi, out, c->err);
}

/* Copy a string field into a fixed buffer, refusing what does not fit. */
static int cfg_strcpy(const struct cfg_ctx *c, const char *path, const char *key,
                      const char *s, size_t len, char *dst, size_t dst_size)
{
    if (len >= dst_size || memchr(s, '\0', len))
        return engine_error_set(c->err, -EINVAL, "%s: %s%s (\"%.64s\") is longer than %zu bytes or contains NUL",
                                c->what, path, key, s, dst_size - 1);
    memcpy(dst, s, len);
    dst[len] = '\0';
    return 0;
}

static int cfg_layer_types(const struct cfg_ctx *c, struct json_object *tc, const char *tp,
                           struct model_config *cfg)
{
    int n = cfg->num_hidden_layers;
    struct json_object *lt = ejson_get(tc, "layer_types");
    if (lt) {
        if (!json_object_is_type(lt, json_type_array))
            return engine_error_set(c->err, -EINVAL, "%s: %slayer_types must be an array of strings",
                                    c->what, tp);
        size_t len = json_object_array_length(lt);
        if (len != (size_t)n)
            return engine_error_set(c->err, -EINVAL,
                                    "%s: %slayer_types has %zu entries but %snum_hidden_layers is %d",
                                    c->what, tp, len, tp, n);
        for (int i = 0; i < n; i++) {
            struct json_object *e = json_object_array_get_idx(lt, (size_t)i);
            const char *s = e && json_object_is_type(e, json_type_string) ? json_object_get_string(e) : NULL;
            if (s && strcmp(s, "linear_attention") == 0)
                cfg->layer_types[i] = MODEL_LAYER_LINEAR_ATTENTION;
            else if (s && strcmp(s, "full_attention") == 0)
                cfg->layer_types[i] = MODEL_LAYER_FULL_ATTENTION;
            else
                return engine_error_set(c->err, -EINVAL,
                                        "%s: %slayer_types[%d] must be \"linear_attention\" or \"full_attention\", got %.64s",
                                        c->what, tp, i, s ? s : (e ? json_object_to_json_string(e) : "null"));
        }
        return 0;
    }
    /* transformers derives the pattern when layer_types is absent: every
     * full_attention_interval-th layer (1-based) is full attention. */
    int interval = 0;
    int rc = cfg_int(c, tc, tp, "full_attention_interval", 1, n, false, &interval);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return engine_error_set(c->err, -EINVAL,
                                "%s: %slayer_types is missing and so is %sfull_attention_interval to derive it from",
                                c->what, tp, tp);
    for (int i = 0; i < n; i++)
        cfg->layer_types[i] = ((i + 1) % interval == 0) ? MODEL_LAYER_FULL_ATTENTION
                                                        : MODEL_LAYER_LINEAR_ATTENTION;
    return 0;
}

/* The rope parameter `key` from rope_parameters (or its "full_attention"
 * entry, the v5 per-layer-type form), the text config itself, or the
 * legacy rope_scaling object; *where says which for messages. */
static int cfg_rope_double(const struct cfg_ctx *c, struct json_object *tc, const char *tp,
                           const char *key, double lo, double hi, double *out)
{
    struct json_object *rp = ejson_get(tc, "rope_parameters");
    struct json_object *full = ejson_get(rp, "full_attention");
    char path[96];
    int rc;
    if (full && json_object_is_type(full, json_type_object)) {
        snprintf(path, sizeof(path), "%srope_parameters.full_attention.", tp);
        rc = cfg_double(c, full, path, key, lo, hi, out);
        if (rc <= 0)
            return rc;
    }
    if (rp && json_object_is_type(rp, json_type_object)) {
        snprintf(path, sizeof(path), "%srope_parameters.", tp);
        rc = cfg_double(c, rp, path, key, lo, hi, out);
        if (rc <= 0)
            return rc;
    }
    rc = cfg_double(c, tc, tp, key, lo, hi, out);
    if (rc <= 0)
        return rc;
    struct json_object *rs = ejson_get(tc, "rope_scaling");
    if (rs && json_object_is_type(rs, json_type_object)) {
        snprintf(path, sizeof(path), "%srope_scaling.", tp);
        return cfg_double(c, rs, path, key, lo, hi, out);
    }
    return 1;
}

/* We implement plain (NeoX, rotate-half) RoPE only; MRoPE reduces to it
 * for text because all three position rows are equal. */
static int cfg_rope_type(const struct cfg_ctx *c, struct json_object *obj, const char *path)
{
    if (!obj || !json_object_is_type(obj, json_type_object))
        return 0;
    static const char *keys[] = { "rope_type", "type" };
    for (size_t i = 0; i < 2; i++) {
        const char *s = NULL;
        int rc = ejson_get_string(obj, keys[i], c->what, path, &s, NULL, c->err);
        if (rc < 0)
            return rc;
        if (rc == 0 && strcmp(s, "default") != 0 && strcmp(s, "mrope") != 0)
            return engine_error_set(c->err, -ENOTSUP,
                                    "%s: %s%s \"%.32s\" is not supported (only \"default\" RoPE is implemented)",
                                    c->what, path, keys[i], s);
    }
    return 0;
}

static int cfg_rope(const struct cfg_ctx *c, struct json_object *tc, const char *tp,
                    struct model_config *cfg)
{
    char path[96];
    struct json_object *rp = ejson_get(tc, "rope_parameters");
    struct json_object *rs = ejson_get(tc, "rope_scaling");
    struct json_object *full = ejson_get(rp, "full_attention");
    int rc;
    snprintf(path, sizeof(path), "%srope_parameters.", tp);
    if ((rc = cfg_rope_type(c, rp, path)) < 0)
        return rc;
    snprintf(path, sizeof(path), "%srope_parameters.full_attention.", tp);
    if ((rc = cfg_rope_type(c, full, path)) < 0)
        return rc;
    snprintf(path, sizeof(path), "%srope_scaling.", tp);
    if ((rc = cfg_rope_type(c, rs, path)) < 0)
        return rc;

    double theta = 0, prf = 0;
    rc = cfg_rope_double(c, tc, tp, "rope_theta", 1.0, 1e12, &theta);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return engine_error_set(c->err, -EINVAL,
                                "%s: %srope_parameters.rope_theta is missing (also looked for %srope_theta and %srope_scaling.rope_theta)",
                                c->what, tp, tp, tp);
    rc = cfg_rope_double(c, tc, tp, "partial_rotary_factor", 1e-6, 1.0, &prf);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return engine_error_set(c->err, -EINVAL,
                                "%s: %srope_parameters.partial_rotary_factor is missing (also looked for %spartial_rotary_factor and %srope_scaling.partial_rotary_factor)",
                                c->what, tp, tp, tp);
    cfg->rope_theta = theta;
    cfg->partial_rotary_factor = (float)prf;

    double d = (double)cfg->head_dim * prf;
    long rd = lround(d);
    if (fabs(d - (double)rd) > 1e-3 || rd < 2 || rd % 2 != 0 || rd > cfg->head_dim)
        return engine_error_set(c->err, -EINVAL,
                                "%s: %shead_dim (%d) x partial_rotary_factor (%g) = %g must be an even integer in [2, head_dim]",
                                c->what, tp, cfg->head_dim, prf, d);
    cfg->rotary_dim = (int)rd;

    /* MRoPE sections split the rotary frequencies among T/H/W; they must
     * cover exactly rotary_dim / 2 of them. */
    struct json_object *ms = ejson_get(full ? full : rp, "mrope_section");
    if (!ms)
        ms = ejson_get(rs, "mrope_section");
    if (ms) {
        if (!json_object_is_type(ms, json_type_array) || json_object_array_length(ms) > 8)
            return engine_error_set(c->err, -EINVAL, "%s: %srope_parameters.mrope_section must be an array of up to 8 integers",
                                    c->what, tp);
        int64_t sum = 0;
        size_t n = json_object_array_length(ms);
        for (size_t i = 0; i < n; i++) {
            struct json_object *e = json_object_array_get_idx(ms, i);
            int64_t x = e && json_object_is_type(e, json_type_int) ? json_object_get_int64(e) : -1;
            if (x < 0 || x > CFG_MAX_HEAD_DIM)
                return engine_error_set(c->err, -EINVAL,
                                        "%s: %srope_parameters.mrope_section[%zu] must be an integer in [0, %d]",
                                        c->what, tp, i, CFG_MAX_HEAD_DIM);
            sum += x;
        }
        if (sum != cfg->rotary_dim / 2)
            return engine_error_set(c->err, -EINVAL,
                                    "%s: %srope_parameters.mrope_section sums to %lld but rotary_dim / 2 is %d",
                                    c->what, tp, (long long)sum, cfg->rotary_dim / 2);
    }
    return 0;
}

/* actorder is a string ("static", "group", "weight"), null, or a bool in
 * older compressed-tensors releases (true meant "group"). */
static int cfg_actorder(const struct cfg_ctx *c, struct json_object *w, const char *path,
                        char *dst, size_t dst_size)
{
    struct json_object *a = ejson_get(w, "actorder");
    const char *s = "";
    if (!a)
        s = "";
    else if (json_object_is_type(a, json_type_boolean))
        s = json_object_get_boolean(a) ? "group" : "";
    else if (json_object_is_type(a, json_type_string))
        s = json_object_get_string(a);
    else
        return engine_error_set(c->err, -EINVAL, "%s: %sactorder must be a string or null", c->what, path);
    if (s[0] && strcmp(s, "static") != 0 && strcmp(s, "group") != 0 && strcmp(s, "weight") != 0)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %sactorder \"%.32s\" is not supported (static, group, weight or null)",
                                c->what, path, s);
    /* Several groups: "group" wins since it means g_idx tensors exist. */
    if (dst[0] && strcmp(dst, "group") == 0)
        return 0;
    return cfg_strcpy(c, path, "actorder", s, strlen(s), dst, dst_size);
}

static int cfg_quant_group(const struct cfg_ctx *c, const char *gname, struct json_object *g,
                           const char *qp, struct model_quant_config *q)
{
    char path[160];
    snprintf(path, sizeof(path), "%sconfig_groups.%.60s.", qp, gname);
    if (!json_object_is_type(g, json_type_object))
        return engine_error_set(c->err, -EINVAL, "%s: %.150s must be an object", c->what, path);
    const char *s;
    size_t len;
    int rc = ejson_get_string(g, "format", c->what, path, &s, &len, c->err);
    if (rc < 0)
        return rc;
    if (rc == 0 && strcmp(s, "pack-quantized") != 0)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %sformat \"%.32s\" is not supported (need pack-quantized)", c->what, path, s);
    static const char *acts[] = { "input_activations", "output_activations" };
    for (size_t i = 0; i < 2; i++)
        if (ejson_get(g, acts[i]))
            return engine_error_set(c->err, -ENOTSUP,
                                    "%s: %s%s is set: activation quantisation is not supported (W4A16 only)",
                                    c->what, path, acts[i]);
    struct json_object *w = ejson_get(g, "weights");
    snprintf(path, sizeof(path), "%sconfig_groups.%.60s.weights.", qp, gname);
    if (!w || !json_object_is_type(w, json_type_object))
        return engine_error_set(c->err, -EINVAL, "%s: %.150s is missing or not an object", c->what, path);

    int bits = 0, gs = 0;
    if ((rc = cfg_int(c, w, path, "num_bits", 1, 64, true, &bits)) < 0)
        return rc;
    if (bits != 4)
        return engine_error_set(c->err, -ENOTSUP, "%s: %snum_bits is %d; only 4-bit weights are supported",
                                c->what, path, bits);
    rc = ejson_get_string(w, "type", c->what, path, &s, &len, c->err);
    if (rc < 0)
        return rc;
    if (rc == 0 && strcmp(s, "int") != 0)
        return engine_error_set(c->err, -ENOTSUP, "%s: %stype \"%.32s\" is not supported (need int)",
                                c->what, path, s);
    bool sym = true;
    if ((rc = ejson_get_bool(w, "symmetric", c->what, path, &sym, c->err)) < 0)
        return rc;
    if (!sym)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %ssymmetric is false; asymmetric (zero-point) quantisation is not supported",
                                c->what, path);
    rc = ejson_get_string(w, "strategy", c->what, path, &s, &len, c->err);
    if (rc < 0)
        return rc;
    if (rc == 0 && strcmp(s, "group") != 0)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %sstrategy \"%.32s\" is not supported (need group)", c->what, path, s);
    if ((rc = cfg_int(c, w, path, "group_size", 1, 1 << 20, true, &gs)) < 0)
        return rc;
    if (gs != 32)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %sgroup_size is %d; only group_size 32 is supported", c->what, path, gs);
    bool dyn = false;
    if ((rc = ejson_get_bool(w, "dynamic", c->what, path, &dyn, c->err)) < 0)
        return rc;
    if (dyn)
        return engine_error_set(c->err, -ENOTSUP, "%s: %sdynamic is true; only static weight scales are supported",
                                c->what, path);
    q->num_bits = bits;
    q->group_size = gs;
    q->symmetric = sym;
    return cfg_actorder(c, w, path, q->actorder, sizeof(q->actorder));
}

static int cfg_quant(const struct cfg_ctx *c, struct json_object *qc, const char *qp,
                     struct model_quant_config *q)
{
    if (!json_object_is_type(qc, json_type_object))
        return engine_error_set(c->err, -EINVAL, "%s: %.*s must be an object", c->what,
                                (int)strlen(qp) - 1, qp);
    const char *s;
    size_t len;
    int rc = ejson_get_string(qc, "quant_method", c->what, qp, &s, &len, c->err);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return engine_error_set(c->err, -EINVAL, "%s: %squant_method is missing (required)", c->what, qp);
    if (strcmp(s, "compressed-tensors") != 0)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %squant_method \"%.32s\" is not supported (need compressed-tensors W4A16)",
                                c->what, qp, s);
    rc = ejson_get_string(qc, "format", c->what, qp, &s, &len, c->err);
    if (rc < 0)
        return rc;
    if (rc == 0 && strcmp(s, "pack-quantized") != 0)
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %sformat \"%.32s\" is not supported (need pack-quantized)", c->what, qp, s);
    if (rc == 1) {
        s = "pack-quantized";
        len = strlen(s);
    }
    if ((rc = cfg_strcpy(c, qp, "format", s, len, q->format, sizeof(q->format))) < 0)
        return rc;
    if (ejson_get(qc, "kv_cache_scheme"))
        return engine_error_set(c->err, -ENOTSUP,
                                "%s: %skv_cache_scheme is set: KV-cache quantisation is not supported", c->what, qp);
    struct json_object *sp = ejson_get(qc, "sparsity_config");
    if (sp && json_object_is_type(sp, json_type_object)) {
        rc = ejson_get_string(sp, "format", c->what, qp, &s, &len, c->err);
        if (rc < 0)
            return rc;
        if (rc == 0 && strcmp(s, "dense") != 0)
            return engine_error_set(c->err, -ENOTSUP,
                                    "%s: %ssparsity_config.format \"%.32s\" is not supported (dense only)",
                                    c->what, qp, s);
    }
    struct json_object *groups = ejson_get(qc, "config_groups");
    if (!groups || !json_object_is_type(groups, json_type_object) || json_object_object_length(groups) == 0)
        return engine_error_set(c->err, -EINVAL, "%s: %sconfig_groups is missing or empty", c->what, qp);
    ejson_foreach(groups, gname_it) {
        const char *gname = json_object_iter_peek_name(&gname_it);
        struct json_object *g = json_object_iter_peek_value(&gname_it);
        if (!g)
            return engine_error_set(c->err, -EINVAL, "%s: %sconfig_groups.%.60s is null", c->what, qp, gname);
        if ((rc = cfg_quant_group(c, gname, g, qp, q)) < 0)
            return rc;
    }
    q->present = true;
    return 0;
}

/* Token ids in config.json / generation_config.json. */
static int cfg_token(const struct cfg_ctx *c, struct json_object *obj, const char *path,
                     const char *key, int vocab, int *out)
{
    int64_t hi = vocab > 0 ? vocab - 1 : CFG_MAX_VOCAB - 1;
    int v;
    int rc = cfg_int(c, obj, path, key, 0, hi, false, &v);
    if (rc == 0)
        *out = v;
    return rc;
}

static int cfg_eos(const struct cfg_ctx *c, struct json_object *obj, const char *path,
                   int vocab, struct model_config *cfg)
{
    struct json_object *e = ejson_get(obj, "eos_token_id");
    if (!e)
        return 1;
    if (!json_object_is_type(e, json_type_array)) {
        int rc = cfg_token(c, obj, path, "eos_token_id", vocab, &cfg->eos_token_ids[0]);
        if (rc == 0)
            cfg->n_eos = 1;
        return rc;
    }
    size_t n = json_object_array_length(e);
    /* An empty list would leave generation without a stop token; treat it
     * like an absent field so config.json's ids stay in force. */
    if (n == 0)
        return 1;
    if (n > MODEL_MAX_EOS)
        return engine_error_set(c->err, -EINVAL, "%s: %seos_token_id lists %zu ids, more than the limit of %d",
                                c->what, path, n, MODEL_MAX_EOS);
    int64_t hi = vocab > 0 ? vocab - 1 : CFG_MAX_VOCAB - 1;
    for (size_t i = 0; i < n; i++) {
        struct json_object *x = json_object_array_get_idx(e, i);
        int64_t v = x && json_object_is_type(x, json_type_int) ? json_object_get_int64(x) : -1;
        if (v < 0 || v > hi)
            return engine_error_set(c->err, -EINVAL,
                                    "%s: %seos_token_id[%zu] must be a token id in [0, %lld]",
                                    c->what, path, i, (long long)hi);
        cfg->eos_token_ids[i] = (int)v;
    }
    cfg->n_eos = (int)n;
    return 0;
}

void model_config_init(struct model_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->bos_token_id = -1;
    cfg->pad_token_id = -1;
    cfg->gen_temperature = -1.0f;
    cfg->gen_top_p = -1.0f;
    cfg->gen_top_k = -1;
    cfg->gen_min_p = -1.0f;
    cfg->gen_repetition_penalty = -1.0f;
    cfg->gen_presence_penalty = -1.0f;
}

static int cfg_text(const struct cfg_ctx *c, struct json_object *root, struct json_object *tc,
                    const char *tp, struct model_config *cfg)
{
    int rc;
#define REQ(key, lo, hi, field) \
    if ((rc = cfg_int(c, tc, tp, key, lo, hi, true, &cfg->field)) < 0) return rc
#define OPT(key, lo, hi, field) \
    if ((rc = cfg_int(c, tc, tp, key, lo, hi, false, &cfg->field)) < 0) return rc

    REQ("hidden_size", 1, CFG_MAX_HIDDEN, hidden_size);
    REQ("num_hidden_layers", 1, MODEL_MAX_LAYERS, num_hidden_layers);
    REQ("vocab_size", 1, CFG_MAX_VOCAB, vocab_size);
    OPT("intermediate_size", 0, CFG_MAX_FFN, intermediate_size);

    double eps = 1e-6;
    if ((rc = cfg_double(c, tc, tp, "rms_norm_eps", 1e-12, 0.1, &eps)) < 0)
        return rc;
    cfg->rms_norm_eps = (float)eps;

    /* The wrapper's own flag governs the top-level model (lm_head). */
    cfg->tie_word_embeddings = false;
    if ((rc = ejson_get_bool(root, "tie_word_embeddings", c->what, "", &cfg->tie_word_embeddings, c->err)) < 0)
        return rc;
    if (rc == 1 && tc != root &&
        (rc = ejson_get_bool(tc, "tie_word_embeddings", c->what, tp, &cfg->tie_word_embeddings, c->err)) < 0)
        return rc;

    if ((rc = cfg_layer_types(c, tc, tp, cfg)) < 0)
        return rc;
    bool any_full = false, any_linear = false;
    for (int i = 0; i < cfg->num_hidden_layers; i++) {
        any_full |= cfg->layer_types[i] == MODEL_LAYER_FULL_ATTENTION;
        any_linear |= cfg->layer_types[i] == MODEL_LAYER_LINEAR_ATTENTION;
    }

    /* Gated full attention: needed when any layer uses it, and by the MTP
     * block, which is always a full-attention layer. */
    bool need_full = any_full || ejson_get(tc, "mtp_num_hidden_layers");
    if ((rc = cfg_int(c, tc, tp, "num_attention_heads", 1, CFG_MAX_HEADS, need_full, &cfg->num_attention_heads)) < 0)
        return rc;
    if ((rc = cfg_int(c, tc, tp, "num_key_value_heads", 1, CFG_MAX_HEADS, need_full, &cfg->num_key_value_heads)) < 0)
        return rc;
    if ((rc = cfg_int(c, tc, tp, "head_dim", 2, CFG_MAX_HEAD_DIM, need_full, &cfg->head_dim)) < 0)
        return rc;
    OPT("max_position_embeddings", 1, CFG_MAX_POS, max_position_embeddings);
    if (cfg->num_attention_heads && cfg->num_key_value_heads &&
        cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return engine_error_set(c->err, -EINVAL, "%s: %snum_key_value_heads (%d) must divide num_attention_heads (%d)",
                                c->what, tp, cfg->num_key_value_heads, cfg->num_attention_heads);
    cfg->attn_output_gate = true;
    if ((rc = ejson_get_bool(tc, "attn_output_gate", c->what, tp, &cfg->attn_output_gate, c->err)) < 0)
        return rc;
    bool bias = false;
    if ((rc = ejson_get_bool(tc, "attention_bias", c->what, tp, &bias, c->err)) < 0)
        return rc;
    if (bias)
        return engine_error_set(c->err, -ENOTSUP, "%s: %sattention_bias is true; attention biases are not supported",
                                c->what, tp);
    if (cfg->head_dim && (rc = cfg_rope(c, tc, tp, cfg)) < 0)
        return rc;

    /* Gated DeltaNet */
    if ((rc = cfg_int(c, tc, tp, "linear_num_key_heads", 1, CFG_MAX_HEADS, any_linear, &cfg->linear_num_key_heads)) < 0)
        return rc;
    if ((rc = cfg_int(c, tc, tp, "linear_num_value_heads", 1, CFG_MAX_HEADS, any_linear, &cfg->linear_num_value_heads)) < 0)
        return rc;
    if ((rc = cfg_int(c, tc, tp, "linear_key_head_dim", 1, CFG_MAX_HEAD_DIM, any_linear, &cfg->linear_key_head_dim)) < 0)
        return rc;
    if ((rc = cfg_int(c, tc, tp, "linear_value_head_dim", 1, CFG_MAX_HEAD_DIM, any_linear, &cfg->linear_value_head_dim)) < 0)
        return rc;
    if ((rc = cfg_int(c, tc, tp, "linear_conv_kernel_dim", 1, CFG_MAX_CONV, any_linear, &cfg->linear_conv_kernel_dim)) < 0)
        return rc;
    if (cfg->linear_num_key_heads && cfg->linear_num_value_heads &&
        cfg->linear_num_value_heads % cfg->linear_num_key_heads != 0)
        return engine_error_set(c->err, -EINVAL,
                                "%s: %slinear_num_value_heads (%d) must be a multiple of linear_num_key_heads (%d)",
                                c->what, tp, cfg->linear_num_value_heads, cfg->linear_num_key_heads);

    /* MoE */
    REQ("num_experts", 1, CFG_MAX_EXPERTS, num_experts);
    REQ("num_experts_per_tok", 1, CFG_MAX_EXPERTS, num_experts_per_tok);
    if (cfg->num_experts_per_tok > cfg->num_experts)
        return engine_error_set(c->err, -EINVAL, "%s: %snum_experts_per_tok (%d) must not exceed num_experts (%d)",
                                c->what, tp, cfg->num_experts_per_tok, cfg->num_experts);
    REQ("moe_intermediate_size", 1, CFG_MAX_MOE_FFN, moe_intermediate_size);
    OPT("shared_expert_intermediate_size", 0, CFG_MAX_MOE_FFN, shared_expert_intermediate_size);
    cfg->norm_topk_prob = true;
    if ((rc = ejson_get_bool(tc, "norm_topk_prob", c->what, tp, &cfg->norm_topk_prob, c->err)) < 0)
        return rc;
    OPT("mtp_num_hidden_layers", 0, CFG_MAX_MTP, mtp_num_hidden_layers);

    const char *act;
    if ((rc = ejson_get_string(tc, "hidden_act", c->what, tp, &act, NULL, c->err)) < 0)
        return rc;
    if (rc == 0 && strcmp(act, "silu") != 0)
        return engine_error_set(c->err, -ENOTSUP, "%s: %shidden_act \"%.32s\" is not supported (silu only)",
                                c->what, tp, act);
#undef REQ
#undef OPT

    /* Token ids that config.json may carry; generation_config.json, when
     * present, overrides them. */
    struct json_object *src[2] = { tc, root };
    const char *srcp[2] = { tp, "" };
    for (int i = 0; i < (tc == root ? 1 : 2); i++) {
        if (cfg->bos_token_id < 0 &&
            (rc = cfg_token(c, src[i], srcp[i], "bos_token_id", cfg->vocab_size, &cfg->bos_token_id)) < 0)
            return rc;
        if (cfg->pad_token_id < 0 &&
            (rc = cfg_token(c, src[i], srcp[i], "pad_token_id", cfg->vocab_size, &cfg->pad_token_id)) < 0)
            return rc;
        if (cfg->n_eos == 0 && (rc = cfg_eos(c, src[i], srcp[i], cfg->vocab_size, cfg)) < 0)
            return rc;
    }
    return 0;
}

int model_config_parse(const char *json, size_t len, const char *what,
                       struct model_config *out, struct engine_error *err)
{
    if (!what)
        what = "config.json";
    struct cfg_ctx c = { .what = what, .err = err };
    if (!json && len)
        return engine_error_set(err, -EINVAL, "%s: NULL text", what);
    if (len > CFG_JSON_MAX)
        return engine_error_set(err, -EFBIG, "%s: %zu bytes exceeds the %u byte limit", what, len, CFG_JSON_MAX);
    struct json_object *root = NULL;
    int rc = ejson_parse(json ? json : "", len, CFG_JSON_DEPTH, what, &root, err);
    if (rc < 0)
        return rc;

    struct model_config *cfg = malloc(sizeof(*cfg));
    if (!cfg) {
        json_object_put(root);
        return engine_error_set(err, -ENOMEM, "%s: out of memory", what);
    }
    model_config_init(cfg);

    if (!json_object_is_type(root, json_type_object)) {
        rc = engine_error_set(err, -EINVAL, "%s: must be a JSON object", what);
        goto out;
    }
    struct json_object *tc = root;
    const char *tp = "";
    struct json_object *t = ejson_get(root, "text_config");
    if (t) {
        if (!json_object_is_type(t, json_type_object)) {
            rc = engine_error_set(err, -EINVAL, "%s: text_config must be an object", what);
            goto out;
        }
        tc = t;
        tp = "text_config.";
    }
    rc = cfg_text(&c, root, tc, tp, cfg);
    if (rc < 0)
        goto out;

    struct json_object *qc = ejson_get(root, "quantization_config");
    const char *qp = "quantization_config.";
    if (!qc && tc != root) {
        qc = ejson_get(tc, "quantization_config");
        qp = "text_config.quantization_config.";
    }
    if (qc && (rc = cfg_quant(&c, qc, qp, &cfg->quant)) < 0)
        goto out;
    *out = *cfg;
    rc = 0;
out:
    free(cfg);
    json_object_put(root);
    return rc;
}

int model_config_parse_generation(const char *json, size_t len, const char *what,
                                  struct model_config *out, struct engine_error *err)
{
    if (!what)
        what = "generation_config.json";
    struct cfg_ctx c = { .what = what, .err = err };
    if (!json && len)
        return engine_error_set(err, -EINVAL, "%s: NULL text", what);
    if (len > CFG_JSON_MAX)
        return engine_error_set(err, -EFBIG, "%s: %zu bytes exceeds the %u byte limit", what, len, CFG_JSON_MAX);
    struct json_object *root = NULL;
    int rc = ejson_parse(json ? json : "", len, CFG_JSON_DEPTH, what, &root, err);
    if (rc < 0)
        return rc;
    struct model_config *cfg = malloc(sizeof(*cfg));
    if (!cfg) {
        json_object_put(root);
        return engine_error_set(err, -ENOMEM, "%s: out of memory", what);
    }
    *cfg = *out;
    if (!json_object_is_type(root, json_type_object)) {
        rc = engine_error_set(err, -EINVAL, "%s: must be a JSON object", what);
        goto out;
    }
    int v = cfg->vocab_size;
    if ((rc = cfg_token(&c, root, "", "bos_token_id", v, &cfg->bos_token_id)) < 0)
        goto out;
    if ((rc = cfg_token(&c, root, "", "pad_token_id", v, &cfg->pad_token_id)) < 0)
        goto out;
    if ((rc = cfg_eos(&c, root, "", v, cfg)) < 0)
        goto out;

    /* Sampling defaults. The header marks "unset" by a negative value, so
     * a negative presence_penalty default cannot be expressed and is
     * refused along with other out-of-range values. */
    static const struct {
        const char *key;
        double      lo, hi;
        size_t      off;
    } fl[] = {
        { "temperature",        0.0, 100.0, offsetof(struct model_config, gen_temperature) },
        { "top_p",              0.0, 1.0,   offsetof(struct model_config, gen_top_p) },
        { "min_p",              0.0, 1.0,   offsetof(struct model_config, gen_min_p) },
        { "repetition_penalty", 1e-6, 100.0, offsetof(struct model_config, gen_repetition_penalty) },
        { "presence_penalty",   0.0, 100.0, offsetof(struct model_config, gen_presence_penalty) },
    };
    for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++) {
        double d;
        rc = cfg_double(&c, root, "", fl[i].key, fl[i].lo, fl[i].hi, &d);
        if (rc < 0)
            goto out;
        if (rc == 0) {
            float f = (float)d;
            memcpy((char *)cfg + fl[i].off, &f, sizeof(f));
        }
    }
    if ((rc = cfg_int(&c, root, "", "top_k", 0, CFG_MAX_VOCAB, false, &cfg->gen_top_k)) < 0)
        goto out;
    if ((rc = ejson_get_bool(root, "do_sample", what, "", &cfg->gen_do_sample, err)) < 0)
        goto out;
    cfg->gen_do_sample_set = rc == 0;
    *out = *cfg;
    rc = 0;
out:
    free(cfg);
    json_object_put(root);
    return rc;
}

int model_config_load(const char *dir, struct model_config *cfg, struct engine_error *err)
{
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s: cannot open model directory: %s", dir, strerror(e));
    }
    size_t dl = strlen(dir);
    const char *sep = (dl && dir[dl - 1] == '/') ? "" : "/";
    char what[4096];
    char *text = NULL;
    size_t len = 0;
    struct model_config tmp;

    snprintf(what, sizeof(what), "%s%sconfig.json", dir, sep);
    int rc = ejson_read_file(dirfd, "config.json", what, CFG_JSON_MAX, &text, &len, err);
    if (rc < 0)
        goto out;
    rc = model_config_parse(text, len, what, &tmp, err);
    free(text);
    text = NULL;
    if (rc < 0)
        goto out;

    snprintf(what, sizeof(what), "%s%sgeneration_config.json", dir, sep);
    if (faccessat(dirfd, "generation_config.json", F_OK, 0) == 0) {
        rc = ejson_read_file(dirfd, "generation_config.json", what, CFG_JSON_MAX, &text, &len, err);
        if (rc < 0)
            goto out;
        rc = model_config_parse_generation(text, len, what, &tmp, err);
        free(text);
        if (rc < 0)
            goto out;
    }
    *cfg = tmp;
out:
    close(dirfd);
    return rc;
}
