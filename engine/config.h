/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Model configuration: config.json (multimodal wrapper with text_config,
 * top-level or nested quantization_config) and generation_config.json.
 * Every field the forward pass needs is read, range-checked and checked for
 * consistency; errors name the file and the field.
 */
#ifndef RESIDENT_ENGINE_CONFIG_H
#define RESIDENT_ENGINE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"

#define MODEL_MAX_LAYERS     256
#define MODEL_MAX_EOS        8

enum model_layer_type {
    MODEL_LAYER_LINEAR_ATTENTION = 0,   /* Gated DeltaNet */
    MODEL_LAYER_FULL_ATTENTION   = 1,   /* gated softmax attention */
};

struct model_quant_config {
    bool     present;                   /* quantization_config found          */
    int      num_bits;                  /* 4                                  */
    int      group_size;                /* 32                                 */
    bool     symmetric;                 /* true                               */
    char     format[32];                /* "pack-quantized"                   */
    char     actorder[16];              /* "static", "group", "" (null)       */
};

struct model_config {
    /* text_config */
    int      hidden_size;               /* 2048                               */
    int      num_hidden_layers;         /* 40                                 */
    int      vocab_size;                /* 248320 (padded embedding rows)     */
    int      intermediate_size;         /* unused by MoE layers (0 if absent) */
    float    rms_norm_eps;              /* 1e-6                               */
    bool     tie_word_embeddings;       /* false                              */
    enum model_layer_type layer_types[MODEL_MAX_LAYERS];

    /* gated full attention */
    int      num_attention_heads;       /* 16                                 */
    int      num_key_value_heads;       /* 2                                  */
    int      head_dim;                  /* 256                                */
    int      rotary_dim;                /* head_dim * partial_rotary_factor   */
    float    partial_rotary_factor;     /* 0.25                               */
    double   rope_theta;                /* 1e7                                */
    bool     attn_output_gate;          /* true                               */
    int      max_position_embeddings;   /* 262144                             */

    /* Gated DeltaNet */
    int      linear_num_key_heads;      /* 16                                 */
    int      linear_num_value_heads;    /* 32                                 */
    int      linear_key_head_dim;       /* 128                                */
    int      linear_value_head_dim;     /* 128                                */
    int      linear_conv_kernel_dim;    /* 4                                  */

    /* MoE */
    int      num_experts;               /* 256                                */
    int      num_experts_per_tok;       /* 8                                  */
    int      moe_intermediate_size;     /* 512                                */
    int      shared_expert_intermediate_size; /* 512                          */
    bool     norm_topk_prob;            /* true                               */

    /* MTP */
    int      mtp_num_hidden_layers;     /* 1 (0 when absent)                  */

    struct model_quant_config quant;

    /* generation_config.json (all optional; -1 / 0 = unset) */
    int      bos_token_id;
    int      eos_token_ids[MODEL_MAX_EOS];
    int      n_eos;
    int      pad_token_id;
    float    gen_temperature;           /* < 0: unset                         */
    float    gen_top_p;                 /* < 0: unset                         */
    int      gen_top_k;                 /* < 0: unset                         */
    float    gen_min_p;                 /* < 0: unset                         */
    float    gen_repetition_penalty;    /* < 0: unset                         */
    float    gen_presence_penalty;      /* < 0: unset                         */
    bool     gen_do_sample;
    bool     gen_do_sample_set;         /* the file has "do_sample"           */
};

/* Reset to "nothing parsed": zeros, token ids -1, gen_* unset (< 0). */
void model_config_init(struct model_config *cfg);

/* Parse config.json text (the fuzz entry point). `what` names the file in
 * messages. */
int model_config_parse(const char *json, size_t len, const char *what,
                       struct model_config *cfg, struct engine_error *err);

/* Parse generation_config.json text into the gen_* / token id fields. */
int model_config_parse_generation(const char *json, size_t len, const char *what,
                                  struct model_config *cfg, struct engine_error *err);

/* Read DIR/config.json (required) and DIR/generation_config.json (optional). */
int model_config_load(const char *dir, struct model_config *cfg, struct engine_error *err);

#endif
