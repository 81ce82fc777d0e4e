/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Engine-internal runtime objects behind the opaque handles of model.h:
 * the loaded model (config + mapped weights + backend + forward scratch) and
 * one sequence's state. Only engine/ C files include this.
 *
 * Sequence state per layer, all in backend memory (kernels/backend.h):
 *   linear_attention: conv  [K-1][conv_dim] fp32 (last K-1 pre-conv qkv rows)
 *                     ssm   [n_v_heads][d_k][d_v] fp32 (HF layout)
 *   full_attention:   k, v  [capacity][n_kv_heads][head_dim] fp32 each
 * Zeroed at creation and on reset (spec model.md §2.4: zero at start).
 */
#ifndef RESIDENT_ENGINE_STATE_H
#define RESIDENT_ENGINE_STATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/config.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "kernels/backend.h"

/* Rows (tokens) per forward call; longer prefills run in chunks. */
#define MODEL_CHUNK_ROWS 64

struct fwd_scratch {                      /* backend memory, [rows][...]      */
    float *h;                             /* [H] residual stream              */
    float *x;                             /* [H] normed input of a block      */
    float *o;                             /* [H] block output                 */
    float *p0;                            /* qkv (GDN) | q+gate (attn)        */
    float *p1;                            /* z (GDN)   | q normed+rotated     */
    float *p2;                            /* b (GDN)   | k                    */
    float *p3;                            /* a (GDN)   | v                    */
    float *p4;                            /* y (GDN)   | attention output     */
    float *logits;                        /* [V]                              */
    int64_t rows;
};

struct model {
    struct model_config  cfg;
    struct model_params  params;
    struct st_set       *st;
    struct model_weights w;
    struct kb_backend   *be;
    bool                 be_owned;        /* created here (else the caller's) */
    bool                 prepared;        /* weight_prepare ran               */
    int32_t              real_vocab;
    double               load_ms;
    pthread_mutex_t      lock;            /* one forward at a time            */
    struct fwd_scratch   scratch;
};

struct model_seq {
    struct model        *model;
    int64_t              len;             /* tokens consumed                  */
    int64_t              capacity;        /* KV cache tokens                  */
    bool                 broken;          /* a step failed midway             */
    struct kb_gdn_state *gdn;             /* [n_layers] (GDN layers only)     */
    struct kb_kv        *kv;              /* [n_layers] (attention layers)    */
    uint64_t             bytes;
};

/* forward.c */
int  forward_scratch_alloc(struct model *m, struct engine_error *err);
void forward_scratch_release(struct model *m);

#endif
