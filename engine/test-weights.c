/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Weight binding on synthetic checkpoints written by this test (no
 * fixtures needed): a small valid W4A16 model loads and runs; every kind of
 * bad tensor (shape, dtype, packed/scale shape, weight_shape, NaN/Inf scale,
 * missing scale, zero point, g_idx range, in_features % 32) is refused with
 * an error naming the tensor; and the forward pass keeps its invariants:
 * decode-with-state equals recompute-from-scratch, a batch of sequences of
 * different lengths equals each run alone, chunked prefill equals one call.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "engine/model.h"
#include "engine/sample.h"
#include "kernels/backend.h"

/* ---- a tiny safetensors writer ---- */

struct tent {
    char     name[160];
    char     dtype[8];
    int64_t  shape[4];
    int      nd;
    uint8_t *data;
    size_t   bytes;
};

struct ckpt {
    struct tent *t;
    int          n, cap;
    uint64_t     rng;
};

/* Model dims: hidden 64, 4 layers (full attention at 3), 2 heads x 32 (kv 1),
 * GDN 1 k-head / 2 v-heads x 32, conv 4, 4 experts top-2, inter 32, vocab 80. */
enum { H = 64, NL = 4, NH = 2, NKV = 1, HD = 32, NK = 1, NV = 2, DK = 32, DV = 32, KC = 4,
       E = 4, TOPK = 2, I = 32, SI = 32, V = 80 };

static uint32_t rnd(struct ckpt *c)
{
    c->rng = c->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(c->rng >> 33);
}

static float rndf(struct ckpt *c, float scale)
{
    return scale * ((float)(rnd(c) % 20001) / 10000.0f - 1.0f);
}

static struct tent *add(struct ckpt *c, const char *name, const char *dtype, size_t esz,
                        int nd, const int64_t *shape)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->t = realloc(c->t, (size_t)c->cap * sizeof(*c->t));
        assert_non_null(c->t);
    }
    struct tent *t = &c->t[c->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(t->dtype, sizeof(t->dtype), "%s", dtype);
    t->nd = nd;
    size_t numel = 1;
    for (int i = 0; i < nd; i++) {
        t->shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    t->bytes = numel * esz;
    t->data = calloc(1, t->bytes ? t->bytes : 1);
    assert_non_null(t->data);
    return t;
}

static void add_bf16(struct ckpt *c, const char *name, int nd, const int64_t *shape, float scale,
                     float offset)
{
    struct tent *t = add(c, name, "BF16", 2, nd, shape);
    uint16_t *d = (uint16_t *)t->data;
    for (size_t i = 0; i < t->bytes / 2; i++)
        d[i] = kb_f32_to_bf16(offset + rndf(c, scale));
}

static void add_q4(struct ckpt *c, const char *base, int64_t rows, int64_t cols)
{
    char name[256];
    int64_t sp[2] = { rows, cols / 8 }, ss[2] = { rows, cols / 32 }, sw[1] = { 2 };
    snprintf(name, sizeof(name), "%s.weight_packed", base);
    struct tent *t = add(c, name, "I32", 4, 2, sp);
    for (size_t i = 0; i < t->bytes / 4; i++) {
        uint32_t w = rnd(c) ^ (rnd(c) << 16);
        memcpy(t->data + 4 * i, &w, 4);
    }
    snprintf(name, sizeof(name), "%s.weight_scale", base);
    t = add(c, name, "BF16", 2, 2, ss);
    for (size_t i = 0; i < t->bytes / 2; i++) {
        uint16_t s = kb_f32_to_bf16((0.5f + rndf(c, 0.4f)) / sqrtf((float)cols) / 4.0f);
        memcpy(t->data + 2 * i, &s, 2);
    }
    snprintf(name, sizeof(name), "%s.weight_shape", base);
    t = add(c, name, "I64", 8, 1, sw);
    int64_t v[2] = { rows, cols };
    memcpy(t->data, v, 16);
}

static void build(struct ckpt *c, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    c->rng = seed;
    char n[256], b[180];
    const char *P = "model.language_model.";
    int64_t s2[2], s1[1], s3[3];
    s2[0] = V; s2[1] = H;
    snprintf(n, sizeof(n), "%sembed_tokens.weight", P);
    add_bf16(c, n, 2, s2, 1.0f, 0.0f);
    add_bf16(c, "lm_head.weight", 2, s2, 0.2f, 0.0f);
    s1[0] = H;
    snprintf(n, sizeof(n), "%snorm.weight", P);
    add_bf16(c, n, 1, s1, 0.3f, 0.0f);
    for (int l = 0; l < NL; l++) {
        char L[120];
        snprintf(L, sizeof(L), "%slayers.%d.", P, l);
        snprintf(n, sizeof(n), "%sinput_layernorm.weight", L);
        add_bf16(c, n, 1, s1, 0.3f, 0.0f);
        snprintf(n, sizeof(n), "%spost_attention_layernorm.weight", L);
        add_bf16(c, n, 1, s1, 0.3f, 0.0f);
        if (l % 4 == 3) {
            snprintf(b, sizeof(b), "%sself_attn.q_proj", L);
            add_q4(c, b, 2 * NH * HD, H);
            snprintf(b, sizeof(b), "%sself_attn.k_proj", L);
            add_q4(c, b, NKV * HD, H);
            snprintf(b, sizeof(b), "%sself_attn.v_proj", L);
            add_q4(c, b, NKV * HD, H);
            snprintf(b, sizeof(b), "%sself_attn.o_proj", L);
            add_q4(c, b, H, NH * HD);
            int64_t sh[1] = { HD };
            snprintf(n, sizeof(n), "%sself_attn.q_norm.weight", L);
            add_bf16(c, n, 1, sh, 0.3f, 0.0f);
            snprintf(n, sizeof(n), "%sself_attn.k_norm.weight", L);
            add_bf16(c, n, 1, sh, 0.3f, 0.0f);
        } else {
            const int64_t conv_dim = 2 * NK * DK + NV * DV;
            snprintf(b, sizeof(b), "%slinear_attn.in_proj_qkv", L);
            add_q4(c, b, conv_dim, H);
            snprintf(b, sizeof(b), "%slinear_attn.in_proj_z", L);
            add_q4(c, b, NV * DV, H);
            snprintf(b, sizeof(b), "%slinear_attn.in_proj_b", L);
            s2[0] = NV; s2[1] = H;
            snprintf(n, sizeof(n), "%s.weight", b);
            add_bf16(c, n, 2, s2, 0.2f, 0.0f);
            snprintf(n, sizeof(n), "%slinear_attn.in_proj_a.weight", L);
            add_bf16(c, n, 2, s2, 0.2f, 0.0f);
            snprintf(b, sizeof(b), "%slinear_attn.out_proj", L);
            add_q4(c, b, H, NV * DV);
            s3[0] = conv_dim; s3[1] = 1; s3[2] = KC;
            snprintf(n, sizeof(n), "%slinear_attn.conv1d.weight", L);
            add_bf16(c, n, 3, s3, 0.5f, 0.0f);
            int64_t sv[1] = { NV }, sd[1] = { DV };
            snprintf(n, sizeof(n), "%slinear_attn.A_log", L);
            struct tent *t = add(c, n, "F32", 4, 1, sv);
            for (int i = 0; i < NV; i++) {
                float a = rndf(c, 1.0f);
                memcpy(t->data + 4 * i, &a, 4);
            }
            snprintf(n, sizeof(n), "%slinear_attn.dt_bias", L);
            add_bf16(c, n, 1, sv, 0.5f, 0.0f);
            snprintf(n, sizeof(n), "%slinear_attn.norm.weight", L);
            add_bf16(c, n, 1, sd, 0.3f, 1.0f);
        }
        s2[0] = E; s2[1] = H;
        snprintf(n, sizeof(n), "%smlp.gate.weight", L);
        add_bf16(c, n, 2, s2, 0.5f, 0.0f);
        for (int e = 0; e < E; e++) {
            snprintf(b, sizeof(b), "%smlp.experts.%d.gate_proj", L, e);
            add_q4(c, b, I, H);
            snprintf(b, sizeof(b), "%smlp.experts.%d.up_proj", L, e);
            add_q4(c, b, I, H);
            snprintf(b, sizeof(b), "%smlp.experts.%d.down_proj", L, e);
            add_q4(c, b, H, I);
        }
        snprintf(b, sizeof(b), "%smlp.shared_expert.gate_proj", L);
        add_q4(c, b, SI, H);
        snprintf(b, sizeof(b), "%smlp.shared_expert.up_proj", L);
        add_q4(c, b, SI, H);
        snprintf(b, sizeof(b), "%smlp.shared_expert.down_proj", L);
        add_q4(c, b, H, SI);
        s2[0] = 1; s2[1] = H;
        snprintf(n, sizeof(n), "%smlp.shared_expert_gate.weight", L);
        add_bf16(c, n, 2, s2, 0.3f, 0.0f);
    }
    /* a vision tensor the loader must skip */
    s2[0] = 4; s2[1] = 4;
    add_bf16(c, "model.visual.blocks.0.norm1.weight", 2, s2, 1.0f, 0.0f);
}

static struct tent *find(struct ckpt *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->t[i].name, name))
            return &c->t[i];
    fail_msg("test checkpoint has no tensor %s", name);
    return NULL;
}

static void drop(struct ckpt *c, const char *name)
{
    struct tent *t = find(c, name);
    free(t->data);
    *t = c->t[--c->n];
}

static void ckpt_free(struct ckpt *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->t[i].data);
    free(c->t);
}

static const char *config_json =
    "{\"architectures\":[\"Qwen3_5MoeForConditionalGeneration\"],\"model_type\":\"qwen3_5_moe\","
    "\"tie_word_embeddings\":false,"
    "\"quantization_config\":{\"quant_method\":\"compressed-tensors\",\"format\":\"pack-quantized\","
    "\"quantization_status\":\"compressed\",\"config_groups\":{\"group_0\":{\"targets\":[\"Linear\"],"
    "\"format\":\"pack-quantized\",\"weights\":{\"num_bits\":4,\"type\":\"int\",\"symmetric\":true,"
    "\"strategy\":\"group\",\"group_size\":32,\"dynamic\":false,\"actorder\":null},"
    "\"input_activations\":null,\"output_activations\":null}},\"ignore\":[\"lm_head\"]},"
    "\"text_config\":{\"model_type\":\"qwen3_5_moe_text\",\"vocab_size\":80,\"hidden_size\":64,"
    "\"num_hidden_layers\":4,\"layer_types\":[\"linear_attention\",\"linear_attention\","
    "\"linear_attention\",\"full_attention\"],\"full_attention_interval\":4,"
    "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"head_dim\":32,\"attention_bias\":false,"
    "\"attn_output_gate\":true,\"partial_rotary_factor\":0.25,\"rope_parameters\":{\"rope_type\":"
    "\"default\",\"rope_theta\":10000.0,\"partial_rotary_factor\":0.25,\"mrope_section\":[1,1,2],"
    "\"mrope_interleaved\":true},\"max_position_embeddings\":512,\"rms_norm_eps\":1e-06,"
    "\"hidden_act\":\"silu\",\"linear_num_key_heads\":1,\"linear_num_value_heads\":2,"
    "\"linear_key_head_dim\":32,\"linear_value_head_dim\":32,\"linear_conv_kernel_dim\":4,"
    "\"num_experts\":4,\"num_experts_per_tok\":2,\"moe_intermediate_size\":32,"
    "\"shared_expert_intermediate_size\":32,\"norm_topk_prob\":true,\"eos_token_id\":79}}";

static char tmpdir[64];
static const char *cur_config;                 /* NULL = config_json */

static size_t esize(const struct tent *t)
{
    return !strcmp(t->dtype, "I64") ? 8 : (!strcmp(t->dtype, "I32") || !strcmp(t->dtype, "F32")) ? 4 : 2;
}

/* Wider elements first: with every size a multiple of its element size and
 * the header padded to 8, every tensor is then naturally aligned. */
static int by_esize(const void *a, const void *b)
{
    return (int)esize(b) - (int)esize(a);
}

static void write_ckpt(struct ckpt *c)
{
    qsort(c->t, (size_t)c->n, sizeof(*c->t), by_esize);
    char path[128];
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(cur_config ? cur_config : config_json, f);
    fclose(f);
    /* header JSON */
    size_t cap = 1 << 20, o = 0;
    char *h = malloc(cap);
    assert_non_null(h);
    o += (size_t)snprintf(h + o, cap - o, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < c->n; i++) {
        struct tent *t = &c->t[i];
        o += (size_t)snprintf(h + o, cap - o, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, t->dtype);
        for (int d = 0; d < t->nd; d++)
            o += (size_t)snprintf(h + o, cap - o, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        o += (size_t)snprintf(h + o, cap - o, "],\"data_offsets\":[%llu,%llu]}",
                              (unsigned long long)off, (unsigned long long)(off + t->bytes));
        off += t->bytes;
        assert_true(o < cap - 512);
    }
    o += (size_t)snprintf(h + o, cap - o, "}");
    while (o % 8)
        h[o++] = ' ';
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = o;
    fwrite(&hl, 8, 1, f);
    fwrite(h, 1, o, f);
    for (int i = 0; i < c->n; i++)
        fwrite(c->t[i].data, 1, c->t[i].bytes, f);
    assert_int_equal(fclose(f), 0);
    free(h);
}

static int setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/resident-test-weights-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    return 0;
}

static int try_load(struct ckpt *c, struct model **m, struct engine_error *err)
{
    write_ckpt(c);
    engine_error_clear(err);
    struct model_params p = MODEL_PARAMS_DEFAULT;
    p.max_context = 256;
    return model_load(tmpdir, &p, m, err);
}

/* Build, mutate, load: must fail with `code` and a message containing both
 * `needle1` (usually the tensor) and `needle2`. */
static void expect_refused(void (*mut)(struct ckpt *), int code, const char *needle1,
                           const char *needle2)
{
    struct ckpt c;
    build(&c, 11);
    mut(&c);
    struct model *m = NULL;
    struct engine_error err;
    int rc = try_load(&c, &m, &err);
    print_message("  refused (%d): %s\n", rc, err.msg);
    assert_int_equal(rc, code);
    assert_null(m);
    assert_non_null(strstr(err.msg, needle1));
    assert_non_null(strstr(err.msg, needle2));
    ckpt_free(&c);
}

#define L0 "model.language_model.layers.0."
#define L3 "model.language_model.layers.3."

static void mut_packed_shape(struct ckpt *c)
{
    find(c, L0 "mlp.experts.1.up_proj.weight_packed")->shape[0] = 16;
    find(c, L0 "mlp.experts.1.up_proj.weight_packed")->shape[1] = 16;
}
static void mut_scale_shape(struct ckpt *c)
{
    struct tent *t = find(c, L3 "self_attn.k_proj.weight_scale");
    t->shape[0] = 16;
    t->shape[1] = 4;
}
static void mut_weight_shape(struct ckpt *c)
{
    int64_t v[2] = { 32, 96 };
    memcpy(find(c, L0 "linear_attn.out_proj.weight_shape")->data, v, 16);
}
static void mut_nan_scale(struct ckpt *c)
{
    uint16_t nan = 0x7fc0;
    memcpy(find(c, L0 "mlp.shared_expert.down_proj.weight_scale")->data + 6, &nan, 2);
}
static void mut_inf_scale(struct ckpt *c)
{
    uint16_t inf = 0x7f80;
    memcpy(find(c, L0 "mlp.experts.2.gate_proj.weight_scale")->data, &inf, 2);
}
static void mut_missing_scale(struct ckpt *c)
{
    drop(c, L0 "mlp.experts.3.down_proj.weight_scale");
}
static void mut_zero_point(struct ckpt *c)
{
    int64_t s[2] = { 32, 2 };
    add(c, L0 "mlp.experts.0.gate_proj.weight_zero_point", "I32", 4, 2, s);
}
static void mut_dense_shape(struct ckpt *c)
{
    struct tent *t = find(c, "model.language_model.layers.1.linear_attn.in_proj_a.weight");
    t->shape[0] = 4;
    t->shape[1] = 32;
}
static void mut_dtype(struct ckpt *c)
{
    struct tent *t = find(c, "model.language_model.norm.weight");
    snprintf(t->dtype, sizeof(t->dtype), "I16");
}
static void mut_packed_dtype(struct ckpt *c)
{
    struct tent *t = find(c, L3 "self_attn.q_proj.weight_packed");
    snprintf(t->dtype, sizeof(t->dtype), "F32");
}
static void mut_gidx(struct ckpt *c)
{
    int64_t s[1] = { H };
    struct tent *t = add(c, L0 "mlp.experts.0.gate_proj.weight_g_idx", "I32", 4, 1, s);
    int32_t bad = 2;                           /* only groups 0..1 exist */
    memcpy(t->data + 4 * 10, &bad, 4);
}
static void mut_missing(struct ckpt *c)
{
    drop(c, "model.language_model.layers.2.linear_attn.A_log");
}
static void mut_conv_shape(struct ckpt *c)
{
    find(c, "model.language_model.layers.1.linear_attn.conv1d.weight")->shape[2] = 2;
    find(c, "model.language_model.layers.1.linear_attn.conv1d.weight")->shape[1] = 2;
}

static void test_refusals(void **state)
{
    expect_refused(mut_packed_shape, -EINVAL, "experts.1.up_proj.weight_packed", "[32, 8] expected, found [16, 16]");
    expect_refused(mut_scale_shape, -EINVAL, "self_attn.k_proj.weight_scale", "[32, 2] expected, found [16, 4]");
    expect_refused(mut_weight_shape, -EINVAL, "out_proj.weight_shape", "records shape value 32");
    expect_refused(mut_nan_scale, -EINVAL, "shared_expert.down_proj.weight_scale", "NaN");
    expect_refused(mut_inf_scale, -EINVAL, "experts.2.gate_proj.weight_scale", "Inf");
    expect_refused(mut_missing_scale, -ENOENT, "experts.3.down_proj.weight_scale", "W4 needs");
    expect_refused(mut_zero_point, -ENOTSUP, "weight_zero_point", "asymmetric");
    expect_refused(mut_dense_shape, -EINVAL, "in_proj_a.weight", "[2, 64] expected, found [4, 32]");
    expect_refused(mut_dtype, -EINVAL, "norm.weight", "I16");
    expect_refused(mut_packed_dtype, -EINVAL, "q_proj.weight_packed", "expected I32");
    expect_refused(mut_gidx, -EINVAL, "weight_g_idx", "column 10");
    expect_refused(mut_missing, -ENOENT, "layers.2.linear_attn.A_log", "missing");
    expect_refused(mut_conv_shape, -EINVAL, "conv1d.weight", "[128, 1, 4] expected");
}

static struct model *load_ok(uint64_t seed)
{
    struct ckpt c;
    build(&c, seed);
    struct model *m = NULL;
    struct engine_error err;
    int rc = try_load(&c, &m, &err);
    if (rc)
        fail_msg("load failed: %s", err.msg);
    ckpt_free(&c);
    return m;
}

static double rel_l2(const float *a, const float *b, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(d / (r > 0 ? r : 1));
}

static void test_load_report(void **state)
{
    struct model *m = load_ok(11);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    model_report_write(m, f);
    fclose(f);
    print_message("%s", buf);
    assert_non_null(strstr(buf, "1 vision skipped, 0 unused"));
    assert_non_null(strstr(buf, "per-expert"));
    free(buf);
    assert_int_equal(model_vocab(m), V);
    /* eos from config.json becomes a stop id */
    struct sample_stop st;
    sample_stop_init(&st, model_get_config(m));
    assert_true(sample_stop_hit(&st, 79));
    assert_false(sample_stop_hit(&st, 78));
    model_free(m);
}

/* All rows of a prefill vs. token-by-token decode vs. prefill in pieces. */
static void test_decode_equals_recompute(void **state)
{
    struct model *m = load_ok(5);
    enum { T = 150 };                          /* > 2 chunks of 64 rows */
    int32_t ids[T];
    for (int i = 0; i < T; i++)
        ids[i] = (i * 37 + 11) % V;
    float *full = malloc(sizeof(float) * T * V), *step = malloc(sizeof(float) * T * V);
    struct model_seq *a, *b;
    struct engine_error err = { 0 };
    assert_int_equal(model_seq_new(m, 0, &a, &err), 0);
    assert_int_equal(model_seq_new(m, T, &b, &err), 0);
    struct model_prefill_params pp = { .logits = full, .all_logits = true };
    assert_int_equal(model_prefill(m, a, ids, T, &pp, &err), 0);
    assert_int_equal(model_seq_len(a), T);
    /* b: 1-token prefill, then pieces of 5 and 1, then decode steps */
    pp.logits = step;
    assert_int_equal(model_prefill(m, b, ids, 1, &pp, &err), 0);
    pp.logits = step + V;
    assert_int_equal(model_prefill(m, b, ids + 1, 70, &pp, &err), 0);
    for (int t = 71; t < T; t++)
        assert_int_equal(model_decode(m, &b, &ids[t], 1, step + (int64_t)t * V, &err), 0);
    double worst = 0;
    for (int t = 0; t < T; t++) {
        double e = rel_l2(step + (int64_t)t * V, full + (int64_t)t * V, V);
        worst = e > worst ? e : worst;
    }
    print_message("decode-with-state vs recompute: max rel L2 %.3g (tolerance 1e-5)\n", worst);
    assert_true(worst <= 1e-5);
    /* the sequence is full: one more token is refused, not written */
    assert_int_equal(model_decode(m, &b, &ids[0], 1, step, &err), -ENOSPC);
    /* reset gives the same first logits again */
    assert_int_equal(model_seq_reset(a), 0);
    pp = (struct model_prefill_params){ .logits = step };
    assert_int_equal(model_prefill(m, a, ids, 1, &pp, &err), 0);
    assert_true(rel_l2(step, full, V) == 0.0);
    model_seq_free(a);
    model_seq_free(b);
    free(full);
    free(step);
    model_free(m);
}

/* Three sequences of different lengths decoded as one batch equal each
 * decoded alone. */
static void test_batched_decode(void **state)
{
    struct model *m = load_ok(9);
    enum { NS = 3, STEPS = 6 };
    const int plen[NS] = { 1, 9, 70 };
    struct model_seq *bs[NS], *solo[NS];
    struct engine_error err = { 0 };
    int32_t prompt[70 + NS];                   /* sequence s starts at prompt + s */
    for (int i = 0; i < 70 + NS; i++)
        prompt[i] = (i * 13 + 5) % V;
    float *lb = malloc(sizeof(float) * NS * V), *ls = malloc(sizeof(float) * V);
    for (int s = 0; s < NS; s++) {
        assert_int_equal(model_seq_new(m, 128, &bs[s], &err), 0);
        assert_int_equal(model_seq_new(m, 128, &solo[s], &err), 0);
        assert_int_equal(model_prefill(m, bs[s], prompt + s, plen[s], NULL, &err), 0);
        assert_int_equal(model_prefill(m, solo[s], prompt + s, plen[s], NULL, &err), 0);
    }
    double worst = 0;
    for (int step = 0; step < STEPS; step++) {
        int32_t ids[NS];
        for (int s = 0; s < NS; s++)
            ids[s] = (step * 7 + s * 3) % V;
        assert_int_equal(model_decode(m, bs, ids, NS, lb, &err), 0);
        for (int s = 0; s < NS; s++) {
            assert_int_equal(model_decode(m, &solo[s], &ids[s], 1, ls, &err), 0);
            double e = rel_l2(lb + (int64_t)s * V, ls, V);
            worst = e > worst ? e : worst;
        }
    }
    print_message("batched vs alone: max rel L2 %.3g (tolerance 1e-6)\n", worst);
    assert_true(worst <= 1e-6);
    /* the same sequence twice in one batch is refused */
    struct model_seq *dup[2] = { bs[0], bs[0] };
    int32_t ids2[2] = { 1, 2 };
    assert_int_equal(model_decode(m, dup, ids2, 2, lb, &err), -EINVAL);
    /* ids outside the vocabulary are refused before anything runs */
    int32_t bad = V;
    engine_error_clear(&err);
    assert_int_equal(model_decode(m, bs, &bad, 1, lb, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "vocab_size"));
    for (int s = 0; s < NS; s++) {
        model_seq_free(bs[s]);
        model_seq_free(solo[s]);
    }
    free(lb);
    free(ls);
    model_free(m);
}

/* Fused 3-D experts are bound as views: same packed bytes as per-expert ->
 * identical logits. The two builders draw random numbers in a different
 * order, so compare each against a per-expert checkpoint re-laid-out here. */
static void test_fused_equals_per_expert(void **state)
{
    struct ckpt c;
    build(&c, 21);
    /* re-lay-out the per-expert tensors into fused ones */
    struct ckpt f;
    memset(&f, 0, sizeof(f));
    for (int i = 0; i < c.n; i++) {
        struct tent *t = &c.t[i];
        if (!strstr(t->name, ".mlp.experts.")) {
            struct tent *n = add(&f, t->name, t->dtype, 1, 1, (int64_t[]){ (int64_t)t->bytes });
            memcpy(n->data, t->data, t->bytes);
            n->nd = t->nd;
            memcpy(n->shape, t->shape, sizeof(t->shape));
        }
    }
    for (int l = 0; l < NL; l++) {
        static const char *sfx[3] = { "weight_packed", "weight_scale", "weight_shape" };
        for (int k = 0; k < 3; k++) {
            char name[200], src[200];
            size_t gb = 0, db = 0;
            for (int e = 0; e < E; e++) {
                snprintf(src, sizeof(src), "model.language_model.layers.%d.mlp.experts.%d.gate_proj.%s", l, e, sfx[k]);
                gb = find(&c, src)->bytes;
                snprintf(src, sizeof(src), "model.language_model.layers.%d.mlp.experts.%d.down_proj.%s", l, e, sfx[k]);
                db = find(&c, src)->bytes;
            }
            if (k == 2) {
                snprintf(name, sizeof(name), "model.language_model.layers.%d.mlp.experts.gate_up_proj.%s", l, sfx[k]);
                struct tent *t = add(&f, name, "I64", 8, 1, (int64_t[]){ 3 });
                memcpy(t->data, (int64_t[]){ E, 2 * I, H }, 24);
                snprintf(name, sizeof(name), "model.language_model.layers.%d.mlp.experts.down_proj.%s", l, sfx[k]);
                t = add(&f, name, "I64", 8, 1, (int64_t[]){ 3 });
                memcpy(t->data, (int64_t[]){ E, H, I }, 24);
                continue;
            }
            const char *dt = k == 0 ? "I32" : "BF16";
            size_t es = k == 0 ? 4 : 2;
            int64_t cols_gu = k == 0 ? H / 8 : H / 32, cols_d = k == 0 ? I / 8 : I / 32;
            snprintf(name, sizeof(name), "model.language_model.layers.%d.mlp.experts.gate_up_proj.%s", l, sfx[k]);
            add(&f, name, dt, es, 3, (int64_t[]){ E, 2 * I, cols_gu });
            snprintf(name, sizeof(name), "model.language_model.layers.%d.mlp.experts.down_proj.%s", l, sfx[k]);
            add(&f, name, dt, es, 3, (int64_t[]){ E, H, cols_d });
            /* add() may move the array: take both pointers afterwards */
            struct tent *gu = &f.t[f.n - 2], *dn = &f.t[f.n - 1];
            for (int e = 0; e < E; e++) {
                snprintf(src, sizeof(src), "model.language_model.layers.%d.mlp.experts.%d.gate_proj.%s", l, e, sfx[k]);
                memcpy(gu->data + (size_t)e * 2 * gb, find(&c, src)->data, gb);
                snprintf(src, sizeof(src), "model.language_model.layers.%d.mlp.experts.%d.up_proj.%s", l, e, sfx[k]);
                memcpy(gu->data + (size_t)e * 2 * gb + gb, find(&c, src)->data, gb);
                snprintf(src, sizeof(src), "model.language_model.layers.%d.mlp.experts.%d.down_proj.%s", l, e, sfx[k]);
                memcpy(dn->data + (size_t)e * db, find(&c, src)->data, db);
            }
        }
    }
    int32_t ids[5] = { 3, 1, 4, 1, 5 };
    float *la = malloc(sizeof(float) * 5 * V), *lf = malloc(sizeof(float) * 5 * V);
    struct engine_error err = { 0 };
    struct model_prefill_params pp = { .all_logits = true };
    for (int pass = 0; pass < 2; pass++) {
        struct model *m = NULL;
        int rc = try_load(pass ? &f : &c, &m, &err);
        if (rc)
            fail_msg("load failed: %s", err.msg);
        struct model_seq *s;
        assert_int_equal(model_seq_new(m, 8, &s, &err), 0);
        pp.logits = pass ? lf : la;
        assert_int_equal(model_prefill(m, s, ids, 5, &pp, &err), 0);
        model_seq_free(s);
        model_free(m);
    }
    print_message("fused vs per-expert: rel L2 %.3g (must be 0)\n", rel_l2(lf, la, 5 * V));
    assert_memory_equal(la, lf, sizeof(float) * 5 * V);
    free(la);
    free(lf);
    ckpt_free(&c);
    ckpt_free(&f);
}

/* A CausalLM checkpoint names the trunk "model.*" instead of
 * "model.language_model.*": same weights, same logits. */
static void test_causal_lm_prefix(void **state)
{
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    int32_t ids[3] = { 7, 8, 9 };
    for (int pass = 0; pass < 2; pass++) {
        struct ckpt c;
        build(&c, 17);
        if (pass)
            for (int i = 0; i < c.n; i++)
                if (!strncmp(c.t[i].name, "model.language_model.", 21)) {
                    char tmp[160];
                    snprintf(tmp, sizeof(tmp), "model.%s", c.t[i].name + 21);
                    memcpy(c.t[i].name, tmp, sizeof(tmp));
                }
        struct model *m = NULL;
        struct engine_error err;
        if (try_load(&c, &m, &err))
            fail_msg("load: %s", err.msg);
        ckpt_free(&c);
        struct model_seq *s;
        assert_int_equal(model_seq_new(m, 4, &s, &err), 0);
        struct model_prefill_params pp = { .logits = pass ? lb : la };
        assert_int_equal(model_prefill(m, s, ids, 3, &pp, &err), 0);
        model_seq_free(s);
        model_free(m);
    }
    assert_memory_equal(la, lb, sizeof(float) * V);
    free(la);
    free(lb);
}

/* Hostile checkpoints: 300 random, size-preserving corruptions (swapped
 * dims, same-size dtype swaps, garbage in weight_shape / scales / g_idx).
 * Each must load or be refused with a message; a model that loads must
 * run. ASan/UBSan builds turn any out-of-bounds access into a failure. */
static void test_random_corruption(void **state)
{
    int loaded = 0, refused = 0;
    for (int it = 0; it < 300; it++) {
        struct ckpt c;
        build(&c, 1000 + (uint64_t)it);
        uint64_t r = (uint64_t)it * 0x9e3779b97f4a7c15ULL + 1;
        int n_mut = 1 + it % 3;
        for (int k = 0; k < n_mut; k++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            struct tent *t = &c.t[(r >> 33) % (uint64_t)c.n];
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            switch ((r >> 40) % 5) {
            case 0:                                /* swap two dims */
                if (t->nd >= 2) {
                    int64_t x = t->shape[0];
                    t->shape[0] = t->shape[t->nd - 1];
                    t->shape[t->nd - 1] = x;
                }
                break;
            case 1:                                /* same-size dtype swap */
                if (!strcmp(t->dtype, "BF16"))
                    snprintf(t->dtype, sizeof(t->dtype), "F16");
                else if (!strcmp(t->dtype, "I32"))
                    snprintf(t->dtype, sizeof(t->dtype), "F32");
                else if (!strcmp(t->dtype, "F32"))
                    snprintf(t->dtype, sizeof(t->dtype), "I32");
                else if (!strcmp(t->dtype, "I64"))
                    snprintf(t->dtype, sizeof(t->dtype), "F64");
                break;
            case 2:                                /* garbage bytes */
            case 3:
                for (size_t i = 0; i < t->bytes && i < 64; i++)
                    t->data[(i * 7919 + (r >> 20)) % t->bytes] = (uint8_t)(r >> (i % 56));
                break;
            case 4:                                /* reshape to [numel] */
                if (t->nd >= 2) {
                    int64_t numel = 1;
                    for (int d = 0; d < t->nd; d++)
                        numel *= t->shape[d];
                    t->shape[0] = numel;
                    t->nd = 1;
                }
                break;
            }
        }
        struct model *m = NULL;
        struct engine_error err;
        int rc = try_load(&c, &m, &err);
        ckpt_free(&c);
        if (rc) {
            assert_true(rc < 0);
            assert_true(err.msg[0] != 0);
            refused++;
            continue;
        }
        loaded++;
        struct model_seq *s;
        int32_t ids[3] = { 0, 1, V - 1 };
        float *lg = malloc(sizeof(float) * V);
        assert_int_equal(model_seq_new(m, 8, &s, &err), 0);
        struct model_prefill_params pp = { .logits = lg };
        assert_int_equal(model_prefill(m, s, ids, 3, &pp, &err), 0);
        assert_int_equal(model_decode(m, &s, ids, 1, lg, &err), 0);
        free(lg);
        model_seq_free(s);
        model_free(m);
    }
    print_message("random corruption: %d loaded and ran, %d refused with a message\n", loaded, refused);
    assert_int_equal(loaded + refused, 300);
    assert_true(refused > 0);
}

static uint32_t caps_dense_only(struct kb_backend *be)
{
    return KB_CAP_HOST_MEMORY | KB_CAP_READS_MAPPING | KB_CAP_DENSE_BF16 | KB_CAP_DENSE_F32;
}

static bool moe_fail;
static const struct kb_backend_ops *real_ops;

static int flaky_moe(struct kb_backend *be, const struct kb_moe *mo, const float *x, int32_t n,
                     float *y)
{
    if (moe_fail)
        return -EIO;
    return real_ops->moe(be, mo, x, n, y);
}

/* A backend failure midway: the error names the op and the layer, the
 * sequence refuses further steps until reset, then works again. */
static void test_backend_failure(void **state)
{
    struct ckpt c;
    build(&c, 4);
    write_ckpt(&c);
    ckpt_free(&c);
    struct kb_backend *be = NULL;
    assert_int_equal(kb_cpu_ref_create(NULL, &be), 0);
    real_ops = be->ops;
    struct kb_backend_ops ops = *be->ops;
    ops.moe = flaky_moe;
    struct kb_backend flaky = { .ops = &ops, .impl = be->impl };
    struct model_params p = MODEL_PARAMS_DEFAULT;
    p.max_context = 16;
    p.backend_instance = &flaky;
    struct model *m = NULL;
    struct engine_error err = { 0 };
    if (model_load(tmpdir, &p, &m, &err))
        fail_msg("load: %s", err.msg);
    struct model_seq *s;
    int32_t ids[2] = { 5, 6 };
    assert_int_equal(model_seq_new(m, 0, &s, &err), 0);
    assert_int_equal(model_prefill(m, s, ids, 2, NULL, &err), 0);
    moe_fail = true;
    assert_int_equal(model_decode(m, &s, ids, 1, NULL, &err), -EIO);
    print_message("  failure: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "moe failed in layer 0"));
    moe_fail = false;
    engine_error_clear(&err);
    assert_int_equal(model_decode(m, &s, ids, 1, NULL, &err), -EBADFD);
    assert_non_null(strstr(err.msg, "reset"));
    assert_int_equal(model_seq_reset(s), 0);
    assert_int_equal(model_prefill(m, s, ids, 2, NULL, &err), 0);
    assert_int_equal(model_seq_len(s), 2);
    model_seq_free(s);
    model_free(m);
    be->ops->destroy(be);
}

/* max_position_embeddings is optional: absent means no model limit. */
static void test_no_max_position(void **state)
{
    static char cfg[4096];
    const char *key = "\"max_position_embeddings\":512,";
    const char *at = strstr(config_json, key);
    assert_non_null(at);
    snprintf(cfg, sizeof(cfg), "%.*s%s", (int)(at - config_json), config_json, at + strlen(key));
    cur_config = cfg;
    struct model *m = load_ok(2);
    cur_config = NULL;
    struct model_seq *s;
    struct engine_error err = { 0 };
    assert_int_equal(model_seq_new(m, 1000, &s, &err), 0);
    model_seq_free(s);
    model_free(m);
}

/* A caller-supplied backend is used, checked, and not destroyed by the
 * model; one missing a required op is refused by name. */
static void test_backend_instance(void **state)
{
    struct ckpt c;
    build(&c, 3);
    write_ckpt(&c);
    ckpt_free(&c);
    struct kb_backend *be = NULL;
    struct kb_cpu_params cp = KB_CPU_PARAMS_DEFAULT;
    assert_int_equal(kb_cpu_ref_create(&cp, &be), 0);
    struct model_params p = MODEL_PARAMS_DEFAULT;
    p.max_context = 16;
    p.backend_instance = be;
    struct model *m = NULL;
    struct engine_error err = { 0 };
    if (model_load(tmpdir, &p, &m, &err))
        fail_msg("load: %s", err.msg);
    struct model_seq *s;
    int32_t ids[2] = { 1, 2 };
    assert_int_equal(model_seq_new(m, 0, &s, &err), 0);
    assert_int_equal(model_prefill(m, s, ids, 2, NULL, &err), 0);
    model_seq_free(s);
    model_free(m);                              /* must not destroy `be` */

    struct kb_backend_ops ops = *be->ops;
    ops.gdn = NULL;
    struct kb_backend crippled = { .ops = &ops, .impl = be->impl };
    p.backend_instance = &crippled;
    engine_error_clear(&err);
    assert_int_equal(model_load(tmpdir, &p, &m, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "'gdn'"));

    /* a backend without W4 support is refused before any work */
    ops = *be->ops;
    ops.caps = caps_dense_only;
    engine_error_clear(&err);
    assert_int_equal(model_load(tmpdir, &p, &m, &err), -ENOTSUP);
    assert_non_null(strstr(err.msg, "W4A16"));
    be->ops->destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_report),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_decode_equals_recompute),
        cmocka_unit_test(test_batched_decode),
        cmocka_unit_test(test_fused_equals_per_expert),
        cmocka_unit_test(test_backend_instance),
        cmocka_unit_test(test_causal_lm_prefix),
        cmocka_unit_test(test_random_corruption),
        cmocka_unit_test(test_no_max_position),
        cmocka_unit_test(test_backend_failure),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
