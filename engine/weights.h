/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Weight binding: turns the tensors of a mapped checkpoint (engine/
 * safetensors.h) into backend weight descriptors (struct kb_weight) laid out
 * by layer, after validating every one against the config.
 *
 * Each Linear module is detected by which keys exist (spec model.md §4.2):
 *   X.weight_packed + X.weight_scale + X.weight_shape  -> W4A16 g32 symmetric
 *   X.weight                                           -> dense BF16/F16/F32
 * Routed experts come per expert (mlp.experts.{e}.gate_proj...) or fused
 * 3-D (mlp.experts.gate_up_proj[.weight_packed], mlp.experts.down_proj...);
 * fused tensors are presented to the backend as per-expert views into the
 * mapping. Nothing is copied: descriptors point into the read-only mmap.
 *
 * Names: prefix "model.language_model." (the multimodal checkpoint) or
 * "model." (a CausalLM one); "model.visual.*" is skipped; "mtp.*" is bound
 * when present (validated, not used by the forward pass yet).
 */
#ifndef RESIDENT_ENGINE_WEIGHTS_H
#define RESIDENT_ENGINE_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "kernels/backend.h"

struct wt_attn {                          /* full_attention layer (§2.5)      */
    struct kb_weight q_proj;              /* [nh*hd*2][H] q|gate per head     */
    struct kb_weight k_proj;              /* [nkv*hd][H]                      */
    struct kb_weight v_proj;              /* [nkv*hd][H]                      */
    struct kb_weight o_proj;              /* [H][nh*hd]                       */
    struct kb_weight q_norm;              /* [1][hd] zero-centred             */
    struct kb_weight k_norm;              /* [1][hd] zero-centred             */
    struct kb_attn   op;
};

struct wt_gdn {                           /* linear_attention layer (§2.4)    */
    struct kb_weight in_qkv;              /* [conv_dim][H]                    */
    struct kb_weight in_z;                /* [nv*dv][H]                       */
    struct kb_weight in_b;                /* [nv][H]                          */
    struct kb_weight in_a;                /* [nv][H]                          */
    struct kb_weight conv1d;              /* [conv_dim][K]                    */
    struct kb_weight A_log;               /* [1][nv]                          */
    struct kb_weight dt_bias;             /* [1][nv]                          */
    struct kb_weight norm;                /* [1][dv] plain (no +1)            */
    struct kb_weight out_proj;            /* [H][nv*dv]                       */
    struct kb_gdn    op;
};

struct wt_moe {                           /* every layer (§2.6)               */
    struct kb_weight  router;             /* [E][H]                           */
    struct kb_weight *experts;            /* [3][E]: gate, up, down           */
    struct kb_weight  shared_gate, shared_up, shared_down;
    struct kb_weight  shared_expert_gate; /* [1][H]                           */
    struct kb_moe     op;
};

struct wt_layer {
    enum model_layer_type type;
    struct kb_weight input_norm;          /* [1][H] zero-centred              */
    struct kb_weight post_norm;           /* [1][H] zero-centred              */
    struct wt_attn   attn;                /* when type == FULL_ATTENTION      */
    struct wt_gdn    gdn;                 /* when type == LINEAR_ATTENTION    */
    struct wt_moe    moe;
};

struct wt_mtp {                           /* §3, bound when present           */
    struct kb_weight fc;                  /* [H][2H]                          */
    struct kb_weight pre_fc_norm_embedding, pre_fc_norm_hidden, norm;
    struct wt_layer  layer;               /* full attention + MoE             */
};

struct wt_report {
    uint32_t n_tensors;                   /* in the checkpoint                */
    uint32_t n_bound;                     /* tensors bound (trunk + mtp)      */
    uint32_t n_skipped_vision;
    uint32_t n_unused;                    /* neither bound nor vision         */
    uint32_t n_quant_linear;              /* W4 g32 matrices (experts counted)*/
    uint32_t n_dense_linear;
    uint32_t n_vectors;                   /* norms, conv, A_log, dt_bias      */
    uint64_t quant_bytes;                 /* packed + scales + g_idx          */
    uint64_t dense_bytes;                 /* dense matrices incl. embedding   */
    uint64_t vector_bytes;
    uint64_t mapped_bytes;                /* whole mapping                    */
    bool     fused_experts;
    bool     has_mtp;
    char     prefix[32];
    char     first_unused[160];           /* name of one unused tensor        */
};

struct model_weights {
    struct kb_weight  embed;              /* [V][H]                           */
    struct kb_weight  final_norm;         /* [1][H] zero-centred              */
    struct kb_weight  lm_head;            /* [V][H] (embed when tied)         */
    struct wt_layer  *layers;             /* [n_layers]                       */
    int32_t           n_layers;
    struct wt_mtp     mtp;
    struct wt_report  report;
};

/* Bind and validate every tensor of `st` against `cfg`. On failure returns
 * -errno with `err` naming the tensor, the expected and the actual value. */
int model_weights_bind(struct model_weights *w, const struct st_set *st,
                       const struct model_config *cfg, struct engine_error *err);

/* Free the descriptor arrays (the mapping belongs to the st_set). */
void model_weights_release(struct model_weights *w);

/* Call fn on every kb_weight (for backend weight_prepare / release). */
int model_weights_foreach(struct model_weights *w,
                          int (*fn)(void *ctx, struct kb_weight *kw), void *ctx);

#endif
