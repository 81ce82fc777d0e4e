/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Engine-internal runtime objects behind the opaque handles of model.h:
 * the loaded model (config + mapped weights + backend + forward scratch) and
 * one sequence's state. Only engine/ C files include this.
 *
 * Sequence state per layer, all in backend memory (kernels/backend.h):
 *   linear_attention: conv  [K-1][conv_dim] fp32 (last K-1 pre-conv qkv rows)
 *                     ssm   [n_v_heads][d_k][d_v] fp32 (HF layout)
 *   full_attention:   k, v  [capacity][n_kv_heads][head_dim] each, fp32 or
 *                     f16 as the backend stores them (KB_CAP_KV_F16)
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

/*
 * Snapshot / restore / copy of a sequence's state (engine/prefix-cache.c,
 * forking a sequence). Host images are the backend's bytes, in these
 * layouts:
 *   GDN image: for each linear_attention layer, in layer order,
 *              conv [K-1][conv_dim] then ssm [n_v_heads][d_k][d_v] (fp32);
 *   KV rows:   for each full_attention layer, in layer order,
 *              K [n][kv_dim] then V [n][kv_dim] of positions pos..pos+n-1
 *              (kv_dim = num_key_value_heads * head_dim elements of
 *              kv_elem_bytes each: 2 (f16) under KB_CAP_KV_F16, else 4).
 * Nothing converts them, so a restore is byte-exact; an image is only
 * meaningful to a model on the same kind of backend.
 * The GDN state cannot be rolled back, so an image is only ever taken at
 * the sequence's current length; KV rows are position-addressed and can be
 * taken for any range below it. Transfers go through the backend
 * (download/upload/copy) under the model lock, so they are serialised with
 * forward passes exactly like model_prefill/model_decode.
 *
 * Restoring onto a sequence is three steps: model_seq_reset (len 0), then
 * model_seq_kv_load for every range of [0, len), then model_seq_gdn_load,
 * which sets the length. A failed load marks the sequence broken.
 */
struct model_state_geom {
    int32_t  n_gdn_layers;                /* linear_attention layers          */
    int32_t  n_attn_layers;               /* full_attention layers            */
    int64_t  kv_dim;                      /* elements of K (or V) per token/layer */
    uint32_t kv_elem_bytes;               /* 4 (fp32) or 2 (KB_CAP_KV_F16)    */
    uint64_t kv_token_bytes;              /* K+V of one token, all attn layers */
    uint64_t gdn_bytes;                   /* one GDN image                    */
};

void model_state_geom_get(const struct model *m, struct model_state_geom *g);

/* Copy the GDN state at the current length into dst (gdn_bytes). */
int model_seq_gdn_save(struct model_seq *s, void *dst, struct engine_error *err);

/* Copy KV rows [pos, pos+n) (pos+n <= len) into dst (n * kv_token_bytes). */
int model_seq_kv_save(struct model_seq *s, int64_t pos, int64_t n, void *dst,
                      struct engine_error *err);

/* Write KV rows [pos, pos+n) from src; pos must be >= len (rows in use are
 * never overwritten) and pos+n <= capacity. */
int model_seq_kv_load(struct model_seq *s, int64_t pos, int64_t n, const void *src,
                      struct engine_error *err);

/* Set the GDN state from src and the length to len (1..capacity) on a
 * sequence of length 0 whose KV rows [0, len) were loaded. */
int model_seq_gdn_load(struct model_seq *s, const void *src, int64_t len,
                       struct engine_error *err);

/* Make dst an exact copy of src (GDN state, KV rows [0, len), len) inside
 * the backend, without a host round trip. Same model; dst capacity must
 * hold src's length; dst != src. */
int model_seq_copy(struct model_seq *dst, struct model_seq *src, struct engine_error *err);

#endif
