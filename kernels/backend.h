/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The backend boundary: every heavy operation of the forward pass goes
 * through one small, versioned table of function pointers (after
 * ggml-backend and PipeWire's method tables). The forward pass in engine/
 * contains no ISA- or vendor-specific code; it only calls these ops.
 *
 * Memory contract
 * ---------------
 * - Activations and sequence state (KV cache, conv and recurrent state) live
 *   in memory the BACKEND owns: `alloc` returns it, `free` releases it. For
 *   the CPU backend that is plain host memory; a GPU backend returns device
 *   pointers. The engine never dereferences such a pointer: it only does
 *   pointer arithmetic inside one allocation (views at element offsets) and
 *   moves bytes with `upload` / `download` / `copy` / `zero`.
 * - All activations are fp32, row-major, rows = tokens. A "row stride" is in
 *   elements (floats), so a view of every 512-float row's first 256 floats is
 *   (ptr, stride 512, dim 256).
 * - The KV cache is the exception: its element type is the backend's
 *   (fp32, or f16 where caps() has KB_CAP_KV_F16; struct kb_kv). caps()
 *   is per instance and must not change over the instance's life: the
 *   engine sizes sequence state and prefix-cache images from it once.
 * - Weights are described by `struct kb_weight`: host pointers into the
 *   read-only mmap'd checkpoint (never copied by the engine). A backend that
 *   cannot read host memory implements `weight_prepare` to copy a weight into
 *   its own memory and keep the handle in `kb_weight.backend_data`;
 *   `weight_release` frees it. The CPU backend reads the mapping directly.
 * - Small host inputs (token ids, positions) are passed as host pointers and
 *   are consumed before the op returns.
 * - Ops may run asynchronously (in stream order); `sync` waits for all of
 *   them. `download` is synchronous: it returns when the bytes are on the
 *   host. Ops may use backend-private scratch memory.
 * - Shapes come from the engine, which validated them against the config at
 *   load; a backend still rejects impossible arguments with -EINVAL instead
 *   of reading out of bounds (cheap checks only, never abort()).
 *
 * Errors: every op returns 0 or a negative errno (-EINVAL bad arguments,
 * -ENOMEM, -EIO device failure). `last_error` (optional) gives a message.
 *
 * Versioning: `api_version` is KB_API_VERSION of the header the backend was
 * built against; the engine refuses a different major version. Members marked
 * (optional) may be NULL; the engine then uses the stated default. At load
 * the engine checks that every other member is set, that `caps` covers the
 * checkpoint's weight kinds (KB_CAP_Q4G32, KB_CAP_G_IDX, KB_CAP_DENSE_*),
 * and that a backend without KB_CAP_READS_MAPPING has weight_prepare. A GPU
 * backend is handed to the engine ready-made (engine/model.h,
 * model_params.backend_instance); the engine never destroys it.
 *
 * Calling pattern (engine/forward.c): per batch of up to 64 token rows, one
 * `matmul` per Linear over all rows, `gdn` and `attention` once per sequence
 * segment (prefill: one segment of n tokens; decode: n segments of 1).
 *
 * Quantised weights (W4A16, compressed-tensors "pack-quantized", symmetric,
 * group 32): element (r, c) is
 *     word = (uint32_t)packed[r * cols/8 + c/8]
 *     q    = ((word >> (4 * (c % 8))) & 0xF) - 8          (-8..7)
 *     w    = bf16_round((float)q * scale[r * cols/32 + g])  g = c/32, or
 *                                                          g_idx[c] if set
 * i.e. the lowest nibble is the lowest column, and the product is rounded to
 * bf16 as compressed-tensors does (it dequantises in the scale dtype).
 */
#ifndef RESIDENT_KERNELS_BACKEND_H
#define RESIDENT_KERNELS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KB_API_VERSION_MAJOR 1
#define KB_API_VERSION_MINOR 1          /* 1: KB_CAP_KV_F16, untyped kb_kv */
#define KB_API_VERSION       ((KB_API_VERSION_MAJOR << 16) | KB_API_VERSION_MINOR)

#define KB_Q4_GROUP          32          /* input columns per scale          */

enum kb_wtype {
    KB_WTYPE_F32  = 0,                   /* dense float32                    */
    KB_WTYPE_F16  = 1,                   /* dense IEEE half                  */
    KB_WTYPE_BF16 = 2,                   /* dense bfloat16                   */
    KB_WTYPE_Q4G32 = 3,                  /* packed int4 + per-group scales   */
};

/* A 2-D weight [rows = out_features][cols = in_features], or a vector
 * (rows = 1) for norms, biases-like parameters and per-head constants. */
struct kb_weight {
    enum kb_wtype  type;
    int64_t        rows;
    int64_t        cols;
    const void    *data;                 /* dense: rows*cols elements;
                                            Q4: int32 [rows][cols/8]         */
    const void    *scales;               /* Q4: [rows][cols/32] of scale_type */
    enum kb_wtype  scale_type;           /* Q4: F32, F16 or BF16             */
    const int32_t *g_idx;                /* Q4 (optional): [cols] group ids  */
    void          *backend_data;         /* owned by the backend (prepare)   */
};

/* One MoE block (spec model.md §2.6). Expert e's matrices are gate[e],
 * up[e] ([inter][hidden]) and down[e] ([hidden][inter]); fused 3-D
 * checkpoints are presented as per-expert views. The shared expert and its
 * scalar sigmoid gate are optional (shared_inter == 0). */
struct kb_moe {
    int32_t                 n_experts;   /* 256                              */
    int32_t                 top_k;       /* 8                                */
    int32_t                 hidden;      /* 2048                             */
    int32_t                 inter;       /* 512                              */
    int32_t                 shared_inter;/* 512, 0 = no shared expert        */
    bool                    norm_topk;   /* renormalise the top-k weights    */
    const struct kb_weight *router;      /* [n_experts][hidden]              */
    const struct kb_weight *gate;        /* array [n_experts]                */
    const struct kb_weight *up;          /* array [n_experts]                */
    const struct kb_weight *down;        /* array [n_experts]                */
    const struct kb_weight *shared_gate; /* [shared_inter][hidden]           */
    const struct kb_weight *shared_up;   /* [shared_inter][hidden]           */
    const struct kb_weight *shared_down; /* [hidden][shared_inter]           */
    const struct kb_weight *shared_expert_gate; /* [1][hidden]; NULL = 1.0  */
};

/* One Gated DeltaNet layer's constants (spec model.md §2.4). */
struct kb_gdn {
    int32_t                 n_k_heads;   /* 16 (q/k heads)                   */
    int32_t                 n_v_heads;   /* 32; v head j uses k head j / (n_v/n_k) */
    int32_t                 d_k;         /* 128                              */
    int32_t                 d_v;         /* 128                              */
    int32_t                 conv_kernel; /* 4                                */
    float                   norm_eps;    /* rms_norm_eps for the gated norm  */
    const struct kb_weight *conv1d;      /* [conv_dim][conv_kernel], conv_dim = 2*nk*dk + nv*dv */
    const struct kb_weight *A_log;       /* [1][n_v_heads]                   */
    const struct kb_weight *dt_bias;     /* [1][n_v_heads]                   */
    const struct kb_weight *norm;        /* [1][d_v], plain (no +1)          */
};

/* One sequence's GDN state for one layer (backend memory). */
struct kb_gdn_state {
    float *conv;                         /* [conv_kernel-1][conv_dim], oldest first */
    float *ssm;                          /* [n_v_heads][d_k][d_v]            */
};

/* One sequence's KV cache for one attention layer (backend memory).
 * Token p's key for kv head h is element (p * n_kv_heads + h) * head_dim
 * of k. The element type is the backend's choice, fixed per instance:
 * fp32, or IEEE f16 (round to nearest even) where caps() has
 * KB_CAP_KV_F16. The engine only sizes, copies and moves these bytes
 * (kb_kv_elem_bytes), never reads them as numbers, so the storage is
 * untyped here. */
struct kb_kv {
    void    *k;                          /* [capacity][n_kv_heads][head_dim] */
    void    *v;                          /* [capacity][n_kv_heads][head_dim] */
    int64_t  capacity;                   /* tokens                           */
};

struct kb_attn {
    int32_t n_heads;                     /* 16                               */
    int32_t n_kv_heads;                  /* 2; q head h uses kv head h / (n_heads/n_kv) */
    int32_t head_dim;                    /* 256                              */
    float   scale;                       /* 1/sqrt(head_dim)                 */
};

enum kb_cap {
    KB_CAP_HOST_MEMORY   = 1u << 0,      /* alloc'd pointers are host memory */
    KB_CAP_READS_MAPPING = 1u << 1,      /* reads weights in the host mmap   */
    KB_CAP_Q4G32         = 1u << 2,
    KB_CAP_DENSE_BF16    = 1u << 3,
    KB_CAP_DENSE_F16     = 1u << 4,
    KB_CAP_DENSE_F32     = 1u << 5,
    KB_CAP_G_IDX         = 1u << 6,      /* Q4 with act-order group ids      */
    KB_CAP_KV_F16        = 1u << 7,      /* K and V rows are stored as IEEE
                                          * f16: the engine allocates, saves
                                          * and copies 2 bytes per element
                                          * (else 4: fp32) */
};

/* Bytes of one K (or V) element in a backend with these caps. */
static inline size_t kb_kv_elem_bytes(uint32_t caps)
{
    return caps & KB_CAP_KV_F16 ? 2 : 4;
}

struct kb_backend;

struct kb_backend_ops {
    uint32_t    api_version;             /* KB_API_VERSION                   */
    const char *name;                    /* "cpu-ref", "cuda", ...           */

    /* Capability bits (enum kb_cap). */
    uint32_t (*caps)(struct kb_backend *be);
    const char *(*last_error)(struct kb_backend *be);       /* (optional) */
    void (*destroy)(struct kb_backend *be);

    /* ---- memory (backend-owned; see the contract above) ---- */
    void *(*alloc)(struct kb_backend *be, size_t bytes);   /* zeroed; NULL on failure */
    void  (*free)(struct kb_backend *be, void *p);
    int   (*upload)(struct kb_backend *be, void *dst, const void *host_src, size_t bytes);
    int   (*download)(struct kb_backend *be, void *host_dst, const void *src, size_t bytes);
    int   (*copy)(struct kb_backend *be, void *dst, const void *src, size_t bytes);
    int   (*zero)(struct kb_backend *be, void *dst, size_t bytes);
    int   (*sync)(struct kb_backend *be);                    /* (optional): no-op */

    /* (optional) make a weight usable by this backend; default: nothing. */
    int   (*weight_prepare)(struct kb_backend *be, struct kb_weight *w);
    void  (*weight_release)(struct kb_backend *be, struct kb_weight *w);

    /* ---- ops; n = rows (tokens). ---- */

    /* out[t][:] = table row ids[t] (ids are host memory, validated < rows). */
    int (*embed)(struct kb_backend *be, const struct kb_weight *table,
                 const int32_t *ids, int32_t n, float *out);

    /* y[t][r] = sum_c W[r][c] * x[t][c];  x [n][W.cols], y [n][W.rows]. */
    int (*matmul)(struct kb_backend *be, const struct kb_weight *w,
                  const float *x, int32_t n, float *y);

    /* RMSNorm over `dim` for `rows` rows (y may equal x):
     *   y = x * rsqrt(mean(x^2) + eps) * (w + (plus_one ? 1 : 0))
     * plus_one selects the zero-centred form (weights stored as w-1). */
    int (*rmsnorm)(struct kb_backend *be, float *y, int64_t y_stride,
                   const float *x, int64_t x_stride, int64_t rows, int32_t dim,
                   const struct kb_weight *w, float eps, bool plus_one);

    /* Partial NeoX RoPE in place on the first rot_dim dims of `rows_per_token`
     * heads of each token: x[t] has rows_per_token rows of `stride` floats.
     * Pair (i, i + rot_dim/2), angle pos[t] * theta^(-2i/rot_dim);
     * pos is host memory. */
    int (*rope)(struct kb_backend *be, float *x, int32_t n, int32_t rows_per_token,
                int64_t stride, int32_t rot_dim, const int32_t *pos, double theta);

    /* y[i] = a[i] + b[i] for count elements (y may alias a or b). */
    int (*add)(struct kb_backend *be, float *y, const float *a, const float *b,
               int64_t count);

    /* y[r][i] = x[r][i] * sigmoid(gate[r][i]) for `rows` rows of `dim`. */
    int (*mul_sigmoid)(struct kb_backend *be, float *y, int64_t y_stride,
                       const float *x, int64_t x_stride,
                       const float *gate, int64_t gate_stride,
                       int64_t rows, int32_t dim);

    /* Gated DeltaNet for n consecutive tokens of ONE sequence (spec §2.4
     * steps 2-8 without the projections): qkv [n][conv_dim] pre-conv,
     * z [n][nv*dv], b and a [n][nv] (pre-activation), state updated in
     * place; y [n][nv*dv] = GatedRMSNorm(o, z). */
    int (*gdn)(struct kb_backend *be, const struct kb_gdn *g,
               struct kb_gdn_state *st, const float *qkv, const float *z,
               const float *b, const float *a, int32_t n, float *y);

    /* Causal attention for n new tokens of ONE sequence at positions
     * past .. past+n-1: stores k, v ([n][n_kv][head_dim], already normed and
     * rotated) into the cache (as f16 under KB_CAP_KV_F16), then
     * out[t][h] = softmax(q.K^T * scale) V over cache positions 0 .. past+t. q [n][n_heads][head_dim] with row stride
     * q_stride floats per head; out [n][n_heads][head_dim] contiguous. */
    int (*attention)(struct kb_backend *be, const struct kb_attn *a,
                     struct kb_kv *kv, int64_t past,
                     const float *q, int64_t q_stride,
                     const float *k, const float *v, int32_t n, float *out);

    /* Whole MoE block (router softmax over all experts, top-k, optional
     * renormalisation, routed experts, shared expert with sigmoid gate):
     * y [n][hidden] = MoE(x [n][hidden]) (written, not accumulated). */
    int (*moe)(struct kb_backend *be, const struct kb_moe *m,
               const float *x, int32_t n, float *y);
};

struct kb_backend {
    const struct kb_backend_ops *ops;
    void                        *impl;   /* backend private                   */
};

/* Parameters for creating the CPU reference backend (kernels/cpu/). */
struct kb_cpu_params {
    int32_t n_threads;                   /* 0 or 1 = single-threaded          */
};
#define KB_CPU_PARAMS_DEFAULT { .n_threads = 1 }

/* Create the portable scalar reference backend (the oracle). Returns 0 or
 * -errno; *out is freed with (*out)->ops->destroy(*out). */
int kb_cpu_ref_create(const struct kb_cpu_params *params, struct kb_backend **out);

/* Helpers shared by every backend and test (defined in kernels/cpu/ref.c). */
float kb_bf16_to_f32(uint16_t h);
uint16_t kb_f32_to_bf16(float f);        /* round to nearest even; NaN kept  */
float kb_f16_to_f32(uint16_t h);

#endif
