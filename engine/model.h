/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The model contract. One `struct model` holds the read-only weights (mapped,
 * never copied) and the backend; any number of `struct model_seq` hold the
 * per-sequence state (KV cache, GDN conv + recurrent state) and share it.
 *
 *   model_load(dir)                     -> model     (validates every tensor)
 *   model_seq_new(model, capacity)      -> seq       (state sized from config)
 *   model_prefill(model, seq, ids[n])   -> logits [n][V] or [V] (last)
 *   model_decode(model, seqs[b], ids[b])-> logits [b][V] (one token each)
 *
 * Shapes (35B-A3B values): V = vocab_size 248320 (logit rows are always V
 * wide; ids >= real_vocab are never sampled, see sample.h), H = 2048.
 * Positions are implicit: a sequence's next token sits at model_seq_len().
 * Calls on one model are serialised internally (one backend stream); a
 * sequence must not be used by two calls at once. If a step fails midway the
 * sequence is marked broken and refuses further steps until model_seq_reset.
 */
#ifndef RESIDENT_ENGINE_MODEL_H
#define RESIDENT_ENGINE_MODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/config.h"
#include "engine/error.h"
#include "engine/safetensors.h"

struct model;
struct model_seq;
struct kb_backend;                       /* kernels/backend.h                 */

struct model_params {
    const char *backend;                 /* "auto" (default): the fast CPU
                                            backend, its AVX-512 VNNI kernels
                                            where the CPU has them; "cpu",
                                            "cpu-exact", or "cpu-ref" (the
                                            scalar oracle: tests comparing
                                            against goldens name it)         */
    struct kb_backend *backend_instance; /* or a ready backend (e.g. a GPU
                                            one); not owned, outlives model  */
    int32_t     n_threads;               /* backend threads, 1                */
    int64_t     max_context;             /* default seq capacity, 4096 tokens */
    int32_t     real_vocab;              /* tokenizer size, 0 = vocab_size    */
    /* NULL: map the shard files. Else the shards' contents already in
     * memory (st_set_open_dir_images(); borrowed, must outlive the model):
     * the files are not opened. The logits are those of a file load. */
    const struct st_image *shard_images;
    uint32_t    n_shard_images;
};
#define MODEL_PARAMS_DEFAULT { .backend = "auto", .backend_instance = NULL, \
                               .n_threads = 1, .max_context = 4096, .real_vocab = 0 }

int  model_load(const char *dir, const struct model_params *params,
                struct model **out, struct engine_error *err);
void model_free(struct model *m);

const struct model_config *model_get_config(const struct model *m);
int32_t model_vocab(const struct model *m);          /* logits row width V   */
int32_t model_real_vocab(const struct model *m);     /* ids < this sampled   */
int32_t model_hidden(const struct model *m);         /* H                    */
int32_t model_n_layers(const struct model *m);

/* Loader report: tensors by kind, bytes mapped / quantised / dense, time. */
void model_report_write(const struct model *m, FILE *f);
uint64_t model_mapped_bytes(const struct model *m);
/* Shard files the loader opened from the file system (0 when every shard
 * came from model_params.shard_images): proof a restart read no checkpoint. */
uint32_t model_files_opened(const struct model *m);

/**
 * model_backend_describe() - what runs the model, for logs
 * @m: model
 * @buf: receives e.g. "cpu with avx512-vnni, 16 threads" or
 *       "cpu-ref, 1 thread"
 * @len: its size
 */
void model_backend_describe(const struct model *m, char *buf, size_t len);

/* capacity 0 = params.max_context. State starts empty (len 0). */
int  model_seq_new(struct model *m, int64_t capacity, struct model_seq **out,
                   struct engine_error *err);
void model_seq_free(struct model_seq *s);
int  model_seq_reset(struct model_seq *s);           /* back to len 0        */
int64_t model_seq_len(const struct model_seq *s);
int64_t model_seq_capacity(const struct model_seq *s);
uint64_t model_seq_bytes(const struct model_seq *s); /* state memory         */

struct model_prefill_params {
    float *logits;                       /* NULL, [n][V] (all) or [V] (last)  */
    bool   all_logits;
    float *hidden;                       /* NULL or [n_layers+1][n][H]: the
                                            embeddings, then the residual
                                            stream after each layer           */
};

/* Append ids[0..n) to the sequence (any n >= 1 up to the capacity left). */
int model_prefill(struct model *m, struct model_seq *s, const int32_t *ids, int64_t n,
                  const struct model_prefill_params *p, struct engine_error *err);

/* Advance n_seq distinct sequences by one token each; logits [n_seq][V]. */
int model_decode(struct model *m, struct model_seq *const *seqs, const int32_t *ids,
                 int32_t n_seq, float *logits, struct engine_error *err);

#endif
