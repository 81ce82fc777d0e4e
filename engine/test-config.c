/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.json / generation_config.json tests. A 35B-A3B-shaped wrapper
 * config is the base; each bad case is one mutation of it (a field set,
 * replaced or deleted through json-c), and the error message must name
 * the file and the JSON field path. Fixture directories under tests/data/models
 * are loaded when present.
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "engine/config.h"
#include "engine/safetensors.h"

static const char base_config[] =
    "{"
    "\"architectures\":[\"Qwen3_5MoeForConditionalGeneration\"],"
    "\"model_type\":\"qwen3_5_moe\","
    "\"tie_word_embeddings\":false,"
    "\"image_token_id\":248056,"
    "\"text_config\":{"
    "  \"model_type\":\"qwen3_5_moe_text\","
    "  \"hidden_size\":2048,\"num_hidden_layers\":8,\"vocab_size\":248320,"
    "  \"layer_types\":[\"linear_attention\",\"linear_attention\",\"linear_attention\",\"full_attention\","
    "                   \"linear_attention\",\"linear_attention\",\"linear_attention\",\"full_attention\"],"
    "  \"full_attention_interval\":4,"
    "  \"num_attention_heads\":16,\"num_key_value_heads\":2,\"head_dim\":256,"
    "  \"attn_output_gate\":true,\"attention_bias\":false,"
    "  \"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":10000000,\"partial_rotary_factor\":0.25,"
    "                      \"mrope_section\":[11,11,10],\"mrope_interleaved\":true},"
    "  \"max_position_embeddings\":262144,\"rms_norm_eps\":1e-06,\"hidden_act\":\"silu\","
    "  \"linear_num_key_heads\":16,\"linear_num_value_heads\":32,"
    "  \"linear_key_head_dim\":128,\"linear_value_head_dim\":128,\"linear_conv_kernel_dim\":4,"
    "  \"num_experts\":256,\"num_experts_per_tok\":8,\"moe_intermediate_size\":512,"
    "  \"shared_expert_intermediate_size\":512,\"mtp_num_hidden_layers\":1,"
    "  \"eos_token_id\":248044,\"mamba_ssm_dtype\":\"float32\""
    "},"
    "\"vision_config\":{\"depth\":27,\"hidden_size\":1152},"
    "\"quantization_config\":{"
    "  \"quant_method\":\"compressed-tensors\",\"format\":\"pack-quantized\",\"quantization_status\":\"compressed\","
    "  \"config_groups\":{\"group_0\":{\"targets\":[\"Linear\"],\"format\":\"pack-quantized\","
    "    \"weights\":{\"num_bits\":4,\"type\":\"int\",\"symmetric\":true,\"strategy\":\"group\",\"group_size\":32,"
    "                 \"dynamic\":false,\"actorder\":\"static\",\"block_structure\":null,\"observer\":\"minmax\","
    "                 \"observer_kwargs\":{}},"
    "    \"input_activations\":null,\"output_activations\":null}},"
    "  \"ignore\":[\"lm_head\",\"re:^mtp.*\"],\"kv_cache_scheme\":null,\"sparsity_config\":{},\"version\":\"0.12\""
    "}"
    "}";

/* Return base with the dotted `path` set to the JSON `value` (NULL: the
 * key is deleted). Intermediate objects are created as needed. */
static char *mutate(const char *base, const char *path, const char *value)
{
    struct json_object *root = json_tokener_parse(base);
    assert_non_null(root);
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    struct json_object *obj = root;
    char *key = buf, *dot;
    while ((dot = strchr(key, '.')) != NULL) {
        *dot = '\0';
        struct json_object *next;
        if (!json_object_object_get_ex(obj, key, &next) || !json_object_is_type(next, json_type_object)) {
            next = json_object_new_object();
            json_object_object_add(obj, key, next);
        }
        obj = next;
        key = dot + 1;
    }
    if (value) {
        struct json_object *v = json_tokener_parse(value);
        assert_true(v != NULL || strcmp(value, "null") == 0);
        json_object_object_add(obj, key, v);
    } else {
        json_object_object_del(obj, key);
    }
    char *out = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
    json_object_put(root);
    assert_non_null(out);
    return out;
}

static void parse_ok(const char *text, struct model_config *cfg)
{
    struct engine_error err = { 0 };
    int rc = model_config_parse(text, strlen(text), "config.json", cfg, &err);
    if (rc != 0)
        fail_msg("config.json should parse: rc=%d %s", rc, err.msg);
}

static void expect_fail_text(const char *text, const char *sub1, const char *sub2)
{
    struct engine_error err = { 0 };
    struct model_config cfg;
    model_config_init(&cfg);
    cfg.hidden_size = 12345;
    int rc = model_config_parse(text, strlen(text), "config.json", &cfg, &err);
    if (rc >= 0 || !strstr(err.msg, sub1) || (sub2 && !strstr(err.msg, sub2)))
        fail_msg("expected failure with \"%s\"%s%s, got rc=%d msg=\"%s\"", sub1,
                 sub2 ? " and " : "", sub2 ? sub2 : "", rc, err.msg);
    assert_int_equal(err.code, rc);
    assert_int_equal(cfg.hidden_size, 12345);   /* untouched on failure */
}

/* One mutation of the base config must fail naming `sub1` (and `sub2`). */
static void expect_fail(const char *path, const char *value, const char *sub1, const char *sub2)
{
    char *text = mutate(base_config, path, value);
    expect_fail_text(text, sub1, sub2);
    free(text);
}

static void test_base(void **state)
{
    struct model_config cfg;
    parse_ok(base_config, &cfg);
    assert_int_equal(cfg.hidden_size, 2048);
    assert_int_equal(cfg.num_hidden_layers, 8);
    assert_int_equal(cfg.vocab_size, 248320);
    assert_int_equal(cfg.layer_types[0], MODEL_LAYER_LINEAR_ATTENTION);
    assert_int_equal(cfg.layer_types[3], MODEL_LAYER_FULL_ATTENTION);
    assert_int_equal(cfg.layer_types[7], MODEL_LAYER_FULL_ATTENTION);
    assert_int_equal(cfg.num_attention_heads, 16);
    assert_int_equal(cfg.num_key_value_heads, 2);
    assert_int_equal(cfg.head_dim, 256);
    assert_int_equal(cfg.rotary_dim, 64);
    assert_true(cfg.partial_rotary_factor == 0.25f);
    assert_true(cfg.rope_theta == 1e7);
    assert_true(cfg.rms_norm_eps == 1e-6f);
    assert_true(cfg.attn_output_gate);
    assert_false(cfg.tie_word_embeddings);
    assert_int_equal(cfg.max_position_embeddings, 262144);
    assert_int_equal(cfg.linear_num_key_heads, 16);
    assert_int_equal(cfg.linear_num_value_heads, 32);
    assert_int_equal(cfg.linear_key_head_dim, 128);
    assert_int_equal(cfg.linear_value_head_dim, 128);
    assert_int_equal(cfg.linear_conv_kernel_dim, 4);
    assert_int_equal(cfg.num_experts, 256);
    assert_int_equal(cfg.num_experts_per_tok, 8);
    assert_int_equal(cfg.moe_intermediate_size, 512);
    assert_int_equal(cfg.shared_expert_intermediate_size, 512);
    assert_true(cfg.norm_topk_prob);
    assert_int_equal(cfg.mtp_num_hidden_layers, 1);
    assert_int_equal(cfg.intermediate_size, 0);
    assert_true(cfg.quant.present);
    assert_int_equal(cfg.quant.num_bits, 4);
    assert_int_equal(cfg.quant.group_size, 32);
    assert_true(cfg.quant.symmetric);
    assert_string_equal(cfg.quant.format, "pack-quantized");
    assert_string_equal(cfg.quant.actorder, "static");
    assert_int_equal(cfg.n_eos, 1);
    assert_int_equal(cfg.eos_token_ids[0], 248044);
    assert_int_equal(cfg.bos_token_id, -1);
    assert_true(cfg.gen_temperature < 0);
    assert_int_equal(cfg.gen_top_k, -1);
}

static void test_variants(void **state)
{
    struct model_config cfg;
    char *t, *u;

    /* layer_types derived from full_attention_interval. */
    t = mutate(base_config, "text_config.layer_types", NULL);
    u = mutate(t, "text_config.full_attention_interval", "2");
    parse_ok(u, &cfg);
    for (int i = 0; i < 8; i++)
        assert_int_equal(cfg.layer_types[i], (i % 2 == 1) ? MODEL_LAYER_FULL_ATTENTION
                                                          : MODEL_LAYER_LINEAR_ATTENTION);
    free(t);
    free(u);

    /* Pre-v5 RoPE keys at the top level of text_config. */
    t = mutate(base_config, "text_config.rope_parameters", NULL);
    u = mutate(t, "text_config.rope_theta", "1000000.0");
    free(t);
    t = mutate(u, "text_config.partial_rotary_factor", "0.5");
    parse_ok(t, &cfg);
    assert_true(cfg.rope_theta == 1e6);
    assert_int_equal(cfg.rotary_dim, 128);
    free(t);
    free(u);

    /* rope_scaling as the last resort, mrope type accepted. */
    t = mutate(base_config, "text_config.rope_parameters", NULL);
    u = mutate(t, "text_config.rope_scaling",
               "{\"type\":\"mrope\",\"rope_theta\":5e6,\"partial_rotary_factor\":0.25,\"mrope_section\":[16,8,8]}");
    parse_ok(u, &cfg);
    assert_true(cfg.rope_theta == 5e6);
    free(t);
    free(u);

    /* v5 per-layer-type rope_parameters. */
    t = mutate(base_config, "text_config.rope_parameters",
               "{\"full_attention\":{\"rope_type\":\"default\",\"rope_theta\":20000,\"partial_rotary_factor\":0.125}}");
    parse_ok(t, &cfg);
    assert_int_equal(cfg.rotary_dim, 32);
    assert_true(cfg.rope_theta == 20000);
    free(t);

    /* quantization_config nested in text_config. */
    struct json_object *root = json_tokener_parse(base_config), *qc;
    assert_true(json_object_object_get_ex(root, "quantization_config", &qc));
    u = strdup(json_object_to_json_string(qc));
    json_object_put(root);
    t = mutate(base_config, "quantization_config", NULL);
    char *w = mutate(t, "text_config.quantization_config", u);
    parse_ok(w, &cfg);
    assert_true(cfg.quant.present);
    free(w);
    /* And no quantization at all: a bf16 checkpoint. */
    parse_ok(t, &cfg);
    assert_false(cfg.quant.present);
    free(t);
    free(u);

    /* Old compressed-tensors wrote actorder as a bool. */
    t = mutate(base_config, "quantization_config.config_groups.group_0.weights.actorder", "true");
    parse_ok(t, &cfg);
    assert_string_equal(cfg.quant.actorder, "group");
    free(t);
    t = mutate(base_config, "quantization_config.config_groups.group_0.weights.actorder", "null");
    parse_ok(t, &cfg);
    assert_string_equal(cfg.quant.actorder, "");
    free(t);

    /* A text-only export: the text fields at the top level. */
    root = json_tokener_parse(base_config);
    struct json_object *tc;
    assert_true(json_object_object_get_ex(root, "text_config", &tc));
    t = strdup(json_object_to_json_string(tc));
    json_object_put(root);
    parse_ok(t, &cfg);
    assert_int_equal(cfg.hidden_size, 2048);
    assert_false(cfg.quant.present);
    free(t);

    /* tie_word_embeddings: the wrapper's value wins over text_config's. */
    t = mutate(base_config, "text_config.tie_word_embeddings", "true");
    parse_ok(t, &cfg);
    assert_false(cfg.tie_word_embeddings);
    u = mutate(t, "tie_word_embeddings", NULL);
    parse_ok(u, &cfg);
    assert_true(cfg.tie_word_embeddings);
    free(t);
    free(u);

    /* eos as a list; integral floats are accepted as integers. */
    t = mutate(base_config, "text_config.eos_token_id", "[248044, 248046]");
    u = mutate(t, "text_config.hidden_size", "2048.0");
    parse_ok(u, &cfg);
    assert_int_equal(cfg.n_eos, 2);
    assert_int_equal(cfg.eos_token_ids[1], 248046);
    free(t);
    free(u);
}

static void test_missing_fields(void **state)
{
    static const char *req[] = {
        "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
        "num_key_value_heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
        "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
        "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    };
    for (size_t i = 0; i < sizeof(req) / sizeof(req[0]); i++) {
        char path[128], want[160];
        snprintf(path, sizeof(path), "text_config.%s", req[i]);
        snprintf(want, sizeof(want), "config.json: text_config.%s is missing", req[i]);
        expect_fail(path, NULL, want, NULL);
    }
    expect_fail("text_config.rope_parameters", NULL,
                "config.json: text_config.rope_parameters.rope_theta is missing", NULL);
    expect_fail("text_config.rope_parameters.partial_rotary_factor", NULL,
                "text_config.rope_parameters.partial_rotary_factor is missing", NULL);
    char *t = mutate(base_config, "text_config.layer_types", NULL);
    char *u = mutate(t, "text_config.full_attention_interval", NULL);
    expect_fail_text(u, "text_config.layer_types is missing and so is text_config.full_attention_interval", NULL);
    free(t);
    free(u);
    expect_fail("quantization_config.quant_method", NULL, "quantization_config.quant_method is missing", NULL);
    expect_fail("quantization_config.config_groups", "{}", "quantization_config.config_groups is missing or empty", NULL);
    expect_fail("quantization_config.config_groups.group_0.weights", NULL,
                "quantization_config.config_groups.group_0.weights. is missing", NULL);
    expect_fail("quantization_config.config_groups.group_0.weights.group_size", NULL,
                "config_groups.group_0.weights.group_size is missing", NULL);
}

static void test_inconsistent(void **state)
{
    expect_fail("text_config.num_key_value_heads", "3",
                "config.json: text_config.num_key_value_heads (3) must divide num_attention_heads (16)", NULL);
    expect_fail("text_config.linear_num_value_heads", "24",
                "config.json: text_config.linear_num_value_heads (24) must be a multiple of linear_num_key_heads (16)", NULL);
    expect_fail("text_config.num_experts_per_tok", "300",
                "config.json: text_config.num_experts_per_tok (300) must not exceed num_experts (256)", NULL);
    expect_fail("text_config.num_hidden_layers", "6",
                "config.json: text_config.layer_types has 8 entries but text_config.num_hidden_layers is 6", NULL);
    char *t = mutate(base_config, "text_config.layer_types",
                     "[\"linear_attention\",\"linear_attention\",\"linear_attention\",\"sliding_attention\","
                     "\"linear_attention\",\"linear_attention\",\"linear_attention\",\"full_attention\"]");
    expect_fail_text(t, "text_config.layer_types[3] must be \"linear_attention\" or \"full_attention\"",
                     "sliding_attention");
    free(t);
    expect_fail("text_config.layer_types", "{}", "text_config.layer_types must be an array", NULL);
    /* head_dim 256 x 0.3 = 76.8: not an integer. */
    expect_fail("text_config.rope_parameters.partial_rotary_factor", "0.3",
                "text_config.head_dim (256) x partial_rotary_factor (0.3)", "even integer");
    /* 256 x 0.01171875 = 3: odd. */
    expect_fail("text_config.rope_parameters.partial_rotary_factor", "0.01171875", "even integer", NULL);
    expect_fail("text_config.rope_parameters.partial_rotary_factor", "1.5",
                "text_config.rope_parameters.partial_rotary_factor (1.5) is outside", NULL);
    expect_fail("text_config.rope_parameters.mrope_section", "[11,11,11]",
                "mrope_section sums to 33 but rotary_dim / 2 is 32", NULL);
    expect_fail("text_config.rope_parameters.rope_type", "\"yarn\"",
                "text_config.rope_parameters.rope_type \"yarn\" is not supported", NULL);
    t = mutate(base_config, "text_config.layer_types", NULL);
    char *u = mutate(t, "text_config.full_attention_interval", "9");
    expect_fail_text(u, "text_config.full_attention_interval (9) is outside the supported range [1, 8]", NULL);
    free(t);
    free(u);
    expect_fail("text_config.hidden_act", "\"gelu\"", "text_config.hidden_act \"gelu\" is not supported", NULL);
    expect_fail("text_config.attention_bias", "true", "text_config.attention_bias is true", NULL);
    expect_fail("text_config.eos_token_id", "248320", "text_config.eos_token_id (248320) is outside", NULL);
    expect_fail("text_config.eos_token_id", "[1,2,3,4,5,6,7,8,9]", "eos_token_id lists 9 ids", NULL);
    expect_fail("text_config.eos_token_id", "[1,-2]", "text_config.eos_token_id[1] must be a token id", NULL);
}

static void test_limits_and_types(void **state)
{
    expect_fail("text_config.hidden_size", "1000000000",
                "config.json: text_config.hidden_size (1000000000) is outside the supported range", NULL);
    expect_fail("text_config.hidden_size", "99999999999999999999999", "text_config.hidden_size", "outside");
    expect_fail("text_config.hidden_size", "-1", "text_config.hidden_size (-1) is outside", NULL);
    expect_fail("text_config.hidden_size", "0", "text_config.hidden_size (0) is outside", NULL);
    expect_fail("text_config.hidden_size", "\"2048\"", "text_config.hidden_size must be an integer, got string", NULL);
    expect_fail("text_config.hidden_size", "2048.5", "text_config.hidden_size (2048.5) must be an integer", NULL);
    expect_fail("text_config.num_hidden_layers", "257", "text_config.num_hidden_layers (257)", "outside");
    expect_fail("text_config.vocab_size", "5000000", "text_config.vocab_size", "outside");
    expect_fail("text_config.num_experts", "100000", "text_config.num_experts", "outside");
    expect_fail("text_config.head_dim", "4096", "text_config.head_dim", "outside");
    expect_fail("text_config.rms_norm_eps", "0", "text_config.rms_norm_eps (0) is outside", NULL);
    expect_fail("text_config.rope_parameters.rope_theta", "-5", "rope_parameters.rope_theta (-5) is outside", NULL);
    expect_fail("text_config.attn_output_gate", "1", "text_config.attn_output_gate must be true or false", NULL);
    expect_fail("text_config", "[]", "config.json: text_config must be an object", NULL);
    expect_fail_text("[]", "config.json: must be a JSON object", NULL);
    expect_fail_text("{\"text_config\": {", "config.json", "ends early");
    expect_fail_text("{\"a\":1} x", "config.json: malformed JSON", NULL);
    expect_fail_text("", "config.json", NULL);

    char deep[300];
    size_t k = 0;
    for (int i = 0; i < 100; i++)
        deep[k++] = '[';
    for (int i = 0; i < 100; i++)
        deep[k++] = ']';
    deep[k] = '\0';
    expect_fail_text(deep, "config.json: JSON nested deeper than 64 levels", NULL);

    char nul[] = "{\"a\":\"x\0y\"}";
    struct engine_error err = { 0 };
    struct model_config cfg;
    assert_true(model_config_parse(nul, sizeof(nul) - 1, "config.json", &cfg, &err) < 0);
    assert_non_null(strstr(err.msg, "config.json: NUL byte"));

    engine_error_clear(&err);
    assert_int_equal(model_config_parse("{}", (16u << 20) + 1, "config.json", &cfg, &err), -EFBIG);
    assert_non_null(strstr(err.msg, "byte limit"));
}

static void test_quant_refusals(void **state)
{
    const char *w = "quantization_config.config_groups.group_0.weights.";
    char p[160];
#define Q(field) (snprintf(p, sizeof(p), "%s%s", w, field), p)
    expect_fail(Q("group_size"), "128",
                "config.json: quantization_config.config_groups.group_0.weights.group_size is 128; only group_size 32", NULL);
    expect_fail(Q("num_bits"), "8", "weights.num_bits is 8; only 4-bit", NULL);
    expect_fail(Q("symmetric"), "false", "weights.symmetric is false", "asymmetric");
    expect_fail(Q("strategy"), "\"channel\"", "weights.strategy \"channel\" is not supported", NULL);
    expect_fail(Q("type"), "\"float\"", "weights.type \"float\" is not supported", NULL);
    expect_fail(Q("actorder"), "\"random\"", "weights.actorder \"random\" is not supported", NULL);
    expect_fail(Q("dynamic"), "true", "weights.dynamic is true", NULL);
#undef Q
    expect_fail("quantization_config.config_groups.group_0.input_activations",
                "{\"num_bits\":8,\"type\":\"float\"}",
                "quantization_config.config_groups.group_0.input_activations is set: activation quantisation is not supported",
                NULL);
    expect_fail("quantization_config.quant_method", "\"gptq\"",
                "quantization_config.quant_method \"gptq\" is not supported", NULL);
    expect_fail("quantization_config.format", "\"float-quantized\"",
                "quantization_config.format \"float-quantized\" is not supported", NULL);
    expect_fail("quantization_config.kv_cache_scheme", "{\"num_bits\":8}", "kv_cache_scheme is set", NULL);
    expect_fail("quantization_config.sparsity_config", "{\"format\":\"sparse-24-bitmask\"}",
                "sparsity_config.format \"sparse-24-bitmask\" is not supported", NULL);
    expect_fail("quantization_config", "7", "config.json: quantization_config must be an object", NULL);
    /* The same refusal when the block is nested in text_config. */
    char *t = mutate(base_config, "quantization_config", NULL);
    char *u = mutate(t, "text_config.quantization_config",
                     "{\"quant_method\":\"compressed-tensors\",\"config_groups\":{\"g\":{\"weights\":"
                     "{\"num_bits\":4,\"symmetric\":true,\"group_size\":64}}}}");
    expect_fail_text(u, "text_config.quantization_config.config_groups.g.weights.group_size is 64", NULL);
    free(t);
    free(u);
}

static void gen_ok(const char *text, struct model_config *cfg)
{
    struct engine_error err = { 0 };
    int rc = model_config_parse_generation(text, strlen(text), "generation_config.json", cfg, &err);
    if (rc != 0)
        fail_msg("generation_config.json should parse: %s", err.msg);
}

static void gen_fail(const char *text, const char *sub)
{
    struct model_config cfg;
    parse_ok(base_config, &cfg);
    struct model_config before = cfg;
    struct engine_error err = { 0 };
    int rc = model_config_parse_generation(text, strlen(text), "generation_config.json", &cfg, &err);
    if (rc >= 0 || !strstr(err.msg, sub))
        fail_msg("expected failure with \"%s\", got rc=%d msg=\"%s\"", sub, rc, err.msg);
    assert_memory_equal(&before, &cfg, sizeof(cfg));
}

static void test_generation(void **state)
{
    struct model_config cfg;
    parse_ok(base_config, &cfg);
    gen_ok("{\"bos_token_id\":248044,\"eos_token_id\":[248046,248044],\"pad_token_id\":248044,"
           "\"do_sample\":true,\"temperature\":0.6,\"top_p\":0.95,\"top_k\":20,\"min_p\":0.0,"
           "\"repetition_penalty\":1.0,\"presence_penalty\":1.5,\"transformers_version\":\"5.2.0\"}", &cfg);
    assert_int_equal(cfg.bos_token_id, 248044);
    assert_int_equal(cfg.n_eos, 2);
    assert_int_equal(cfg.eos_token_ids[0], 248046);
    assert_int_equal(cfg.pad_token_id, 248044);
    assert_true(cfg.gen_do_sample);
    assert_true(cfg.gen_temperature == 0.6f);
    assert_true(cfg.gen_top_p == 0.95f);
    assert_int_equal(cfg.gen_top_k, 20);
    assert_true(cfg.gen_min_p == 0.0f);
    assert_true(cfg.gen_repetition_penalty == 1.0f);
    assert_true(cfg.gen_presence_penalty == 1.5f);
    assert_int_equal(cfg.hidden_size, 2048);    /* config fields untouched */

    parse_ok(base_config, &cfg);
    gen_ok("{\"eos_token_id\":7,\"temperature\":null}", &cfg);
    assert_int_equal(cfg.n_eos, 1);
    assert_int_equal(cfg.eos_token_ids[0], 7);
    assert_true(cfg.gen_temperature < 0);

    parse_ok(base_config, &cfg);
    gen_ok("{\"eos_token_id\":[]}", &cfg);
    assert_int_equal(cfg.n_eos, 1);
    assert_int_equal(cfg.eos_token_ids[0], 248044);

    gen_fail("{\"eos_token_id\":248320}", "generation_config.json: eos_token_id (248320) is outside");
    gen_fail("{\"eos_token_id\":[1,\"x\"]}", "generation_config.json: eos_token_id[1] must be a token id");
    gen_fail("{\"temperature\":-1}", "generation_config.json: temperature (-1) is outside");
    gen_fail("{\"top_p\":1.5}", "generation_config.json: top_p (1.5) is outside");
    gen_fail("{\"top_k\":-3}", "generation_config.json: top_k (-3) is outside");
    gen_fail("{\"do_sample\":\"yes\"}", "generation_config.json: do_sample must be true or false");
    gen_fail("{\"repetition_penalty\":0}", "repetition_penalty (0) is outside");
    gen_fail("{\"bos_token_id\":\"1\"}", "bos_token_id must be an integer");
    gen_fail("[1]", "generation_config.json: must be a JSON object");
    gen_fail("{", "generation_config.json");
}

/* ------------------------------------------------------------------------ */
/* model_config_load on directories                                         */

static char tmpdir[256];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup_dir(void **state)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/test-config-XXXXXX", t && *t ? t : "/tmp");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state)
{
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void put(const char *dir, const char *name, const char *text)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_load_dir(void **state)
{
    char dir[400];
    struct model_config cfg;
    struct engine_error err = { 0 };

    snprintf(dir, sizeof(dir), "%s/empty", tmpdir);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_true(model_config_load(dir, &cfg, &err) < 0);
    assert_non_null(strstr(err.msg, "empty/config.json: cannot open"));

    put(dir, "config.json", base_config);
    engine_error_clear(&err);
    if (model_config_load(dir, &cfg, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(cfg.n_eos, 1);
    assert_true(cfg.gen_top_p < 0);

    put(dir, "generation_config.json", "{\"eos_token_id\":[1,2],\"top_p\":0.8}");
    if (model_config_load(dir, &cfg, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(cfg.n_eos, 2);
    assert_true(cfg.gen_top_p == 0.8f);

    put(dir, "generation_config.json", "{\"top_p\":2}");
    assert_true(model_config_load(dir, &cfg, &err) < 0);
    assert_non_null(strstr(err.msg, "empty/generation_config.json: top_p (2) is outside"));

    put(dir, "config.json", "{\"text_config\":{}}");
    engine_error_clear(&err);
    assert_true(model_config_load(dir, &cfg, &err) < 0);
    assert_non_null(strstr(err.msg, "empty/config.json: text_config.hidden_size is missing"));

    /* Over the 16 MiB limit: refused from the size (sparse file). */
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    assert_int_equal(truncate(path, (16 << 20) + 1), 0);
    engine_error_clear(&err);
    assert_int_equal(model_config_load(dir, &cfg, &err), -EFBIG);
    assert_non_null(strstr(err.msg, "empty/config.json: 16777217 bytes exceeds the 16777216 byte limit"));

    engine_error_clear(&err);
    assert_true(model_config_load("/nonexistent-dir", &cfg, &err) < 0);
    assert_non_null(strstr(err.msg, "/nonexistent-dir: cannot open model directory"));
}

static void check_fixture(const char *name)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/tests/data/models/%s", root ? root : ".", name);
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("SKIP %s: fixture directory %s is absent\n", name, dir);
        skip();
    }
    struct model_config cfg;
    struct engine_error err = { 0 };
    if (model_config_load(dir, &cfg, &err) < 0)
        fail_msg("%s: %s", name, err.msg);
    printf("%s: hidden %d, layers %d, experts %d/%d, quant %s g%d\n", name, cfg.hidden_size,
           cfg.num_hidden_layers, cfg.num_experts_per_tok, cfg.num_experts,
           cfg.quant.present ? cfg.quant.format : "none", cfg.quant.group_size);
    if (strstr(name, "w4g32")) {
        assert_true(cfg.quant.present);
        assert_int_equal(cfg.quant.group_size, 32);
    }
    /* The config and the weights must agree on the embedding shape. */
    struct st_set *set = NULL;
    if (st_set_open_dir(dir, &set, &err) < 0)
        fail_msg("%s: %s", name, err.msg);
    const struct st_tensor *emb = st_set_find(set, "model.language_model.embed_tokens.weight");
    assert_non_null(emb);
    assert_int_equal(emb->ndim, 2);
    assert_int_equal(emb->shape[0], cfg.vocab_size);
    assert_int_equal(emb->shape[1], cfg.hidden_size);
    st_set_free(set);
}

static void test_fixture_w4g32(void **state)
{
    check_fixture("tiny-w4g32");
}

static void test_fixture_bf16(void **state)
{
    check_fixture("tiny-bf16");
}

static void test_fixture_w4g32_fused(void **state)
{
    check_fixture("tiny-w4g32-fused");
}

static void test_fixture_w4g32_partial(void **state)
{
    check_fixture("tiny-w4g32-partial");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base),
        cmocka_unit_test(test_variants),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_inconsistent),
        cmocka_unit_test(test_limits_and_types),
        cmocka_unit_test(test_quant_refusals),
        cmocka_unit_test(test_generation),
        cmocka_unit_test(test_load_dir),
        cmocka_unit_test(test_fixture_w4g32),
        cmocka_unit_test(test_fixture_bf16),
        cmocka_unit_test(test_fixture_w4g32_fused),
        cmocka_unit_test(test_fixture_w4g32_partial),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
