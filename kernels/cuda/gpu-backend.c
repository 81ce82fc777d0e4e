/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The GPU backend: kernels/backend.h ops mapped onto the kernels of
 * kernels/gpu. One source for both vendors (like gpu-check.c): gbd_* names
 * map to the CUDA driver layer, or with -DGPU_BACKEND_HIP to the HIP one.
 *
 * Dispatch (chosen from the H200 measurements in docs/performance.md):
 *   matmul, W4 g32   n <= 8: decode GEMV with fp32 activations (A16, the
 *                    reference's numerics); n > 8: activations quantised to
 *                    int8 per 32-group + MMQ, tile 32x64 for n <= 64, else
 *                    128x128 (128x64 when the weight has < 128 rows);
 *                    in_features % 128 != 0 (the tiny test models) takes
 *                    the "_kt" (K tail) variant of 32x64 or 128x64.
 *   matmul, dense    dense_matmul (f32/f16/bf16 weights, fp32 math).
 *   attention        k, v copied into the cache, then split-KV decode
 *                    attention once per new token (causal by construction).
 *   moe              router logits -> moe_route on the device, then
 *                    decode (n <= GB_MOE_DEVICE_MAX tokens): no host round
 *                    trip at all. The GEMV reads each (token, slot)'s
 *                    expert id from the routing output and the expert's
 *                    addresses from a per-block table on the device
 *                    (gb_moe_table), so gate, up, SwiGLU, down and the
 *                    weighted combine are 5 launches for all n * top-k
 *                    slices, whatever the routing. Prefill: ids and
 *                    weights to the host -> per active expert: gather its
 *                    tokens, gate/up/down through matmul (MMQ), weighted
 *                    scatter-add (one sync per expert; the expert-sorted
 *                    grouped MMQ in one launch is the planned prefill
 *                    path). Then the shared expert with its sigmoid gate.
 *
 * Scratch memory grows on demand in a few named slots; nothing is freed
 * between ops. All launches go to one stream, so ops are ordered; download
 * is synchronous.
 */
#include "kernels/backend.h"
#include "kernels/cuda/gpu-backend.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GPU_BACKEND_HIP
#include "kernels/hip/hip-device.h"
#define gbd_dev gpu_hip
#define gbd_ptr gpu_hip_ptr
#define gbd_module gpu_hip_module
#define gbd_function gpu_hip_function
#define gbd_open gpu_hip_open
#define gbd_close gpu_hip_close
#define gbd_last_error gpu_hip_last_error
#define gbd_module_load gpu_hip_module_load
#define gbd_function_get gpu_hip_function_get
#define gbd_mem_alloc gpu_hip_mem_alloc
#define gbd_mem_free gpu_hip_mem_free
#define gbd_mem_upload gpu_hip_mem_upload
#define gbd_mem_download gpu_hip_mem_download
#define gbd_mem_zero gpu_hip_mem_zero
#define gbd_mem_copy gpu_hip_mem_copy
#define gbd_launch gpu_hip_launch
#define gbd_sync gpu_hip_sync
#define GBD_OBJ "gfx1151.hsaco"
#define GBD_NAME "hip"
#define gbd_create kb_hip_create
#define gbd_create_error kb_hip_create_error
#define gbd_describe gpu_hip_describe
#define gbd_backend_describe kb_hip_describe
#else
#include "kernels/cuda/cuda-device.h"
#define gbd_dev gpu_cuda
#define gbd_ptr gpu_cuda_ptr
#define gbd_module gpu_cuda_module
#define gbd_function gpu_cuda_function
#define gbd_open gpu_cuda_open
#define gbd_close gpu_cuda_close
#define gbd_last_error gpu_cuda_last_error
#define gbd_module_load gpu_cuda_module_load
#define gbd_function_get gpu_cuda_function_get
#define gbd_mem_alloc gpu_cuda_mem_alloc
#define gbd_mem_free gpu_cuda_mem_free
#define gbd_mem_upload gpu_cuda_mem_upload
#define gbd_mem_download gpu_cuda_mem_download
#define gbd_mem_zero gpu_cuda_mem_zero
#define gbd_mem_copy gpu_cuda_mem_copy
#define gbd_launch gpu_cuda_launch
#define gbd_sync gpu_cuda_sync
#define GBD_OBJ "sm_90.cubin"
#define GBD_NAME "cuda"
#define gbd_create kb_cuda_create
#define gbd_create_error kb_cuda_create_error
#define gbd_describe gpu_cuda_describe
#define gbd_backend_describe kb_cuda_describe
#endif

/* ------------------------------------------------------------------ */
/* State                                                                */

enum gb_fn {
    GB_GEMV1, GB_GEMV4 = GB_GEMV1 + 8, GB_QUANT = GB_GEMV4 + 8,
    GB_MMQ_SMALL, GB_MMQ_WIDE, GB_MMQ_BIG, GB_MMQ_SMALL_KT, GB_MMQ_WIDE_KT,
    GB_ROUTE, GB_RMSNORM, GB_RMSNORM_GATED, GB_ROPE, GB_MUL_SIGMOID,
    GB_GDN_CONV, GB_GDN_REC, GB_GDN_REC_ANY, GB_GDN_PREP, GB_GDN_SCAN, GB_GDN_OUT, GB_ATTN_SPLIT, GB_ATTN_MERGE,
    GB_EMBED, GB_DENSE, GB_ADD, GB_SWIGLU2, GB_ADD_SIGMOID, GB_SORT, GB_COMBINE,
    GB_N_FN
};

/* Scratch slots: one buffer each, grown on demand. */
enum gb_slot {
    GB_S_XQ, GB_S_XD, GB_S_X, GB_S_POS, GB_S_FREQ, GB_S_U, GB_S_O, GB_S_PART, GB_S_MS,
    GB_S_LOGITS, GB_S_IDS, GB_S_W, GB_S_SEG, GB_S_ROWTOK, GB_S_SORTPOS, GB_S_G, GB_S_UP, GB_S_A,
    GB_S_YD, GB_S_SH, GB_S_SG, GB_S_GDNC, GB_N_SLOT
};

/* Up to this many tokens per MoE call take the GEMV path (decode). */
#define GB_MOE_DEVICE_MAX 8

/* One MoE block's expert addresses on the device: [3][E][2] of u64
 * (gate, up, down; packed words, scales), and the host copy they were
 * built from, compared on every call so that re-prepared weights (a new
 * model at the same addresses) rebuild the table instead of using it. */
struct gb_moe_tab {
    const struct kb_weight *key;         /* kb_moe.gate                       */
    int32_t                 n_experts;
    gbd_ptr                 dev;
    unsigned long long     *host;
};

struct gb {
    struct gbd_dev *d;
    gbd_function fn[GB_N_FN];
    gbd_ptr slot[GB_N_SLOT];
    size_t slot_size[GB_N_SLOT];
    struct gb_moe_tab *moe_tab;          /* one per MoE block seen (grows)    */
    int n_moe_tab, cap_moe_tab;
    char err[384];
};

/* Device copies of one weight (kb_weight.backend_data). */
struct gb_weight {
    gbd_ptr data;                        /* as in the checkpoint              */
    gbd_ptr scales;                      /* Q4: bf16 [rows][cols/32]          */
    gbd_ptr f32;                         /* dense, small: fp32 copy (norms,
                                            conv taps, per-head constants)   */
};

#define GB_F32_COPY_MAX (1 << 20)        /* elements                          */

static char gb_create_err[384];

static struct gb *gb_of(struct kb_backend *be)
{
    return (struct gb *)be->impl;
}

static int gb_fail(struct kb_backend *be, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(gb_of(be)->err, sizeof(gb_of(be)->err), fmt, ap);
    va_end(ap);
    return code;
}

/* Device failures keep the layer's message. */
static int gb_dev(struct kb_backend *be, int rc, const char *op)
{
    if (rc)
        gb_fail(be, rc, GBD_NAME ": %s: %s", op, gbd_last_error(gb_of(be)->d));
    return rc;
}

static gbd_ptr gb_p(const void *p)
{
    return (gbd_ptr)(uintptr_t)p;
}

static int gb_scratch(struct kb_backend *be, enum gb_slot s, size_t bytes, gbd_ptr *out)
{
    struct gb *g = gb_of(be);
    if (bytes > g->slot_size[s]) {
        size_t want = bytes + bytes / 4 + 256;
        gbd_ptr p;
        int rc = gbd_mem_alloc(g->d, want, &p);
        if (rc)
            return gb_dev(be, rc, "scratch allocation");
        /* the old buffer may still be read by queued launches */
        if (g->slot[s]) {
            rc = gbd_sync(g->d);
            if (rc)
                return gb_dev(be, rc, "sync");
            gbd_mem_free(g->d, g->slot[s]);
        }
        g->slot[s] = p;
        g->slot_size[s] = want;
    }
    *out = g->slot[s];
    return 0;
}

static unsigned gb_blocks(long long n, int per)
{
    return (unsigned)((n + per - 1) / per);
}

static int gb_launch(struct kb_backend *be, enum gb_fn f, unsigned gx, unsigned gy, unsigned gz,
                     unsigned block, void **args)
{
    return gb_dev(be, gbd_launch(gb_of(be)->d, gb_of(be)->fn[f], gx, gy, gz, block, 0, args),
                  "kernel launch");
}

static const struct gb_weight *gb_w(const struct kb_weight *w)
{
    return w ? (const struct gb_weight *)w->backend_data : NULL;
}

/* ------------------------------------------------------------------ */
/* Memory                                                               */

/* No KB_CAP_KV_F16: the KV cache is fp32 (attn.cu reads float rows). */
static uint32_t gb_caps(struct kb_backend *be)
{
    return KB_CAP_Q4G32 | KB_CAP_DENSE_BF16 | KB_CAP_DENSE_F16 | KB_CAP_DENSE_F32;
}

static const char *gb_last_error(struct kb_backend *be)
{
    return gb_of(be)->err;
}

static void *gb_alloc(struct kb_backend *be, size_t bytes)
{
    gbd_ptr p;
    if (gbd_mem_alloc(gb_of(be)->d, bytes, &p))
        return NULL;
    if (gbd_mem_zero(gb_of(be)->d, p, bytes)) {
        gbd_mem_free(gb_of(be)->d, p);
        return NULL;
    }
    return (void *)(uintptr_t)p;
}

static void gb_free(struct kb_backend *be, void *p)
{
    gbd_mem_free(gb_of(be)->d, gb_p(p));
}

static int gb_upload(struct kb_backend *be, void *dst, const void *src, size_t bytes)
{
    return gb_dev(be, gbd_mem_upload(gb_of(be)->d, gb_p(dst), src, bytes), "upload");
}

static int gb_download(struct kb_backend *be, void *dst, const void *src, size_t bytes)
{
    int rc = gbd_sync(gb_of(be)->d);
    if (!rc)
        rc = gbd_mem_download(gb_of(be)->d, dst, gb_p(src), bytes);
    return gb_dev(be, rc, "download");
}

static int gb_copy(struct kb_backend *be, void *dst, const void *src, size_t bytes)
{
    return gb_dev(be, gbd_mem_copy(gb_of(be)->d, gb_p(dst), gb_p(src), bytes), "copy");
}

static int gb_zero(struct kb_backend *be, void *dst, size_t bytes)
{
    return gb_dev(be, gbd_mem_zero(gb_of(be)->d, gb_p(dst), bytes), "zero");
}

static int gb_sync(struct kb_backend *be)
{
    return gb_dev(be, gbd_sync(gb_of(be)->d), "sync");
}

static size_t gb_type_size(enum kb_wtype t)
{
    return t == KB_WTYPE_F32 ? 4 : 2;
}

static float gb_host_dense(const struct kb_weight *w, int64_t i)
{
    if (w->type == KB_WTYPE_F32)
        return ((const float *)w->data)[i];
    if (w->type == KB_WTYPE_F16)
        return kb_f16_to_f32(((const uint16_t *)w->data)[i]);
    return kb_bf16_to_f32(((const uint16_t *)w->data)[i]);
}

static void gb_weight_release(struct kb_backend *be, struct kb_weight *w)
{
    struct gb_weight *gw = w->backend_data;
    if (!gw)
        return;
    gbd_mem_free(gb_of(be)->d, gw->data);
    gbd_mem_free(gb_of(be)->d, gw->scales);
    gbd_mem_free(gb_of(be)->d, gw->f32);
    free(gw);
    w->backend_data = NULL;
}

static int gb_weight_prepare(struct kb_backend *be, struct kb_weight *w)
{
    struct gb *g = gb_of(be);
    if (w->backend_data)
        return 0;
    if (w->rows <= 0 || w->cols <= 0 || !w->data)
        return gb_fail(be, -EINVAL, GBD_NAME ": weight_prepare: empty weight");
    if (w->type == KB_WTYPE_Q4G32) {
        /* in_features % 32: the GEMV takes any number of groups and MMQ
         * zero-fills a partial last stage (the K tail) */
        if (w->cols % 32 || w->scale_type != KB_WTYPE_BF16 || w->g_idx || !w->scales)
            return gb_fail(be, -EINVAL, GBD_NAME ": W4 weight %lldx%lld: the GPU kernels need "
                           "in_features %% 32 == 0, bf16 scales and no g_idx (act-order); "
                           "use the cpu backend for this checkpoint",
                           (long long)w->rows, (long long)w->cols);
    } else if (w->type != KB_WTYPE_F32 && w->type != KB_WTYPE_F16 && w->type != KB_WTYPE_BF16) {
        return gb_fail(be, -EINVAL, GBD_NAME ": weight_prepare: unknown weight type %d", (int)w->type);
    }
    struct gb_weight *gw = calloc(1, sizeof(*gw));
    if (!gw)
        return gb_fail(be, -ENOMEM, GBD_NAME ": out of host memory");
    w->backend_data = gw;
    const int64_t n = w->rows * w->cols;
    int rc;
    if (w->type == KB_WTYPE_Q4G32) {
        size_t wb = (size_t)n / 2, sb = (size_t)n / 32 * 2;
        if ((rc = gbd_mem_alloc(g->d, wb, &gw->data)) || (rc = gbd_mem_upload(g->d, gw->data, w->data, wb)) ||
            (rc = gbd_mem_alloc(g->d, sb, &gw->scales)) ||
            (rc = gbd_mem_upload(g->d, gw->scales, w->scales, sb)))
            goto fail;
        return 0;
    }
    size_t bytes = (size_t)n * gb_type_size(w->type);
    if ((rc = gbd_mem_alloc(g->d, bytes, &gw->data)) || (rc = gbd_mem_upload(g->d, gw->data, w->data, bytes)))
        goto fail;
    if (n <= GB_F32_COPY_MAX) {
        float *h = malloc((size_t)n * sizeof(float));
        if (!h) {
            gb_weight_release(be, w);
            return gb_fail(be, -ENOMEM, GBD_NAME ": out of host memory");
        }
        for (int64_t i = 0; i < n; i++)
            h[i] = gb_host_dense(w, i);
        rc = gbd_mem_alloc(g->d, (size_t)n * 4, &gw->f32);
        if (!rc)
            rc = gbd_mem_upload(g->d, gw->f32, h, (size_t)n * 4);
        free(h);
        if (rc)
            goto fail;
    }
    return 0;
fail:
    gb_dev(be, rc, "weight_prepare");
    gb_weight_release(be, w);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Matrix products                                                      */

/* x must be 16-byte aligned for the vector loads; engine views at odd
 * element offsets are copied to scratch first. */
static int gb_aligned_x(struct kb_backend *be, const float *x, size_t floats, gbd_ptr *out)
{
    if ((gb_p(x) & 15) == 0) {
        *out = gb_p(x);
        return 0;
    }
    int rc = gb_scratch(be, GB_S_X, floats * 4, out);
    if (!rc)
        rc = gb_dev(be, gbd_mem_copy(gb_of(be)->d, *out, gb_p(x), floats * 4), "copy");
    return rc;
}

/* The W4 GEMV (gemv-w4.cu) over `slices` grid rows: nb batch columns per
 * slice; ids / wtab / x_group select each slice's expert and x row. */
static int gb_gemv(struct kb_backend *be, gbd_ptr wq, gbd_ptr ws, gbd_ptr x, gbd_ptr y, int rows,
                   int k, int nb, gbd_ptr ids, gbd_ptr wtab, int x_group, int slices,
                   long long x_slice, long long y_slice)
{
    int lpr = 32, big = rows >= 4096;
    while (lpr > k / 32 && lpr > 1)
        lpr >>= 1;
    int rows_per_block = 4 * (32 / lpr) * (big ? 4 : 1);
    void *a[] = { &wq, &ws, &x, &y, &rows, &k, &lpr, &ids, &wtab, &x_group, &x_slice, &y_slice };
    return gb_launch(be, (enum gb_fn)((big ? GB_GEMV4 : GB_GEMV1) + nb - 1),
                     gb_blocks(rows, rows_per_block), (unsigned)slices, 1, 128, a);
}

/* MMQ over m quantised rows (xq, xd) -> y [m][rows]. Tile: 32x64 for <= 64
 * rows and for grouped experts (a routed expert gets ~n * top / E rows:
 * 16 of a 512-token chunk on the real model), else 128x128 (128x64 for
 * narrow outputs), the "_kt" twin when k % 128 != 0. Grouped (seg): grid.z
 * = experts, grid.y covers max_rows rows of one expert. */
static int gb_mmq(struct kb_backend *be, gbd_ptr xq, gbd_ptr xd, gbd_ptr wq, gbd_ptr ws, gbd_ptr y,
                  int m, int rows, int k, gbd_ptr seg, gbd_ptr wtab, int experts, int max_rows)
{
    enum gb_fn f = max_rows <= 64 || seg ? GB_MMQ_SMALL
                 : rows < 128 || k % 128 ? GB_MMQ_WIDE : GB_MMQ_BIG;
    int bm = f == GB_MMQ_SMALL ? 32 : 128, bn = f == GB_MMQ_SMALL ? 64 : f == GB_MMQ_WIDE ? 64 : 128;
    unsigned threads = f == GB_MMQ_SMALL ? 128 : 256;
    if (k % 128)                         /* the "_kt" (K tail) twin of the tile */
        f = f == GB_MMQ_SMALL ? GB_MMQ_SMALL_KT : GB_MMQ_WIDE_KT;
    void *ma[] = { &xq, &xd, &wq, &ws, &y, &m, &rows, &k, &seg, &wtab };
    return gb_launch(be, f, gb_blocks(rows, bn), gb_blocks(max_rows, bm), (unsigned)experts,
                     threads, ma);
}

/* activations x [m][k] (row stride ld; with map, row i reads x[map[i]])
 * -> int8 per 32-group in the GB_S_XQ / GB_S_XD slots */
static int gb_quantize(struct kb_backend *be, gbd_ptr x, long long ld, gbd_ptr map, int m, int k,
                       gbd_ptr *xq, gbd_ptr *xd)
{
    int rc;
    if ((rc = gb_scratch(be, GB_S_XQ, (size_t)m * k, xq)) ||
        (rc = gb_scratch(be, GB_S_XD, (size_t)m * (k / 32) * 4, xd)))
        return rc;
    void *qa[] = { &x, &ld, &map, &m, &k, xq, xd };
    return gb_launch(be, GB_QUANT, gb_blocks((long long)m * (k / 32), 256), 1, 1, 256, qa);
}

static int gb_matmul(struct kb_backend *be, const struct kb_weight *w, const float *x, int32_t n,
                     float *y)
{
    const struct gb_weight *gw = gb_w(w);
    if (!gw || n < 0 || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return gb_fail(be, -EINVAL, GBD_NAME ": matmul: weight not prepared or too large");
    if (n == 0)
        return 0;
    int rows = (int)w->rows, k = (int)w->cols, rc;
    gbd_ptr dy = gb_p(y);
    if (w->type != KB_WTYPE_Q4G32) {
        int type = (int)w->type;
        gbd_ptr dw = gw->data, dx = gb_p(x);
        void *a[] = { &dw, &type, &rows, &k, &dx, &n, &dy };
        return gb_launch(be, GB_DENSE, gb_blocks(rows, 4), 1, 1, 128, a);
    }
    gbd_ptr dwq = gw->data, dws = gw->scales, dx, ids = 0;
    if ((rc = gb_aligned_x(be, x, (size_t)n * k, &dx)))
        return rc;
    if (n <= 8)
        return gb_gemv(be, dwq, dws, dx, dy, rows, k, n, ids, 0, 1, 1, 0, 0);
    gbd_ptr xq, xd, seg = 0;
    if ((rc = gb_quantize(be, dx, k, 0, n, k, &xq, &xd)))
        return rc;
    return gb_mmq(be, xq, xd, dwq, dws, dy, n, rows, k, seg, 0, 1, n);
}

static int gb_embed(struct kb_backend *be, const struct kb_weight *table, const int32_t *ids,
                    int32_t n, float *out)
{
    const struct gb_weight *gw = gb_w(table);
    if (!gw || table->type == KB_WTYPE_Q4G32 || n < 0)
        return gb_fail(be, -EINVAL, GBD_NAME ": embed: dense prepared table needed");
    for (int32_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= table->rows)
            return gb_fail(be, -EINVAL, GBD_NAME ": embed: token id %d out of range", ids[t]);
    if (n == 0)
        return 0;
    gbd_ptr dids, dt = gw->data, dout = gb_p(out);
    int rc = gb_scratch(be, GB_S_POS, (size_t)n * 4, &dids);
    if (!rc)
        rc = gb_dev(be, gbd_mem_upload(gb_of(be)->d, dids, ids, (size_t)n * 4), "upload");
    if (rc)
        return rc;
    int type = (int)table->type, cols = (int)table->cols;
    void *a[] = { &dt, &type, &cols, &dids, &n, &dout };
    return gb_launch(be, GB_EMBED, gb_blocks((long long)n * cols, 256), 1, 1, 256, a);
}

/* ------------------------------------------------------------------ */
/* Norms, RoPE, element-wise                                            */

static int gb_rmsnorm(struct kb_backend *be, float *y, int64_t y_stride, const float *x,
                      int64_t x_stride, int64_t rows, int32_t dim, const struct kb_weight *w,
                      float eps, bool plus_one)
{
    const struct gb_weight *gw = gb_w(w);
    if (!gw || !gw->f32 || w->rows * w->cols != dim || rows < 0 || rows > INT32_MAX)
        return gb_fail(be, -EINVAL, GBD_NAME ": rmsnorm: weight not prepared or size differs from dim");
    if (rows == 0)
        return 0;
    gbd_ptr dy = gb_p(y), dx = gb_p(x), dw = gw->f32;
    long long yl = y_stride, xl = x_stride;
    float po = plus_one ? 1.0f : 0.0f;
    void *a[] = { &dy, &yl, &dx, &xl, &dim, &dw, &eps, &po };
    return gb_launch(be, GB_RMSNORM, (unsigned)rows, 1, 1, 256, a);
}

static int gb_rope(struct kb_backend *be, float *x, int32_t n, int32_t rows_per_token,
                   int64_t stride, int32_t rot_dim, const int32_t *pos, double theta)
{
    if (rot_dim <= 0 || rot_dim % 2 || rot_dim > stride || rot_dim > 1024 || n < 0)
        return gb_fail(be, -EINVAL, GBD_NAME ": rope: rot_dim must be even, <= head size, <= 1024");
    if (n == 0)
        return 0;
    float freq[512];
    for (int32_t i = 0; i < rot_dim / 2; i++)   /* as the reference: fp32 powf */
        freq[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)rot_dim);
    gbd_ptr dpos, dfreq, dx = gb_p(x);
    int rc;
    if ((rc = gb_scratch(be, GB_S_POS, (size_t)n * 4, &dpos)) ||
        (rc = gb_scratch(be, GB_S_FREQ, (size_t)rot_dim / 2 * 4, &dfreq)) ||
        (rc = gb_dev(be, gbd_mem_upload(gb_of(be)->d, dpos, pos, (size_t)n * 4), "upload")) ||
        (rc = gb_dev(be, gbd_mem_upload(gb_of(be)->d, dfreq, freq, (size_t)rot_dim / 2 * 4), "upload")))
        return rc;
    long long st = stride;
    void *a[] = { &dx, &n, &rows_per_token, &st, &rot_dim, &dpos, &dfreq };
    return gb_launch(be, GB_ROPE, gb_blocks((long long)n * rows_per_token * (rot_dim / 2), 256), 1, 1,
                     256, a);
}

static int gb_add(struct kb_backend *be, float *y, const float *a, const float *b, int64_t count)
{
    if (count <= 0)
        return count < 0 ? gb_fail(be, -EINVAL, GBD_NAME ": add: negative count") : 0;
    gbd_ptr dy = gb_p(y), da = gb_p(a), db = gb_p(b);
    long long c = count;
    void *args[] = { &dy, &da, &db, &c };
    return gb_launch(be, GB_ADD, gb_blocks(count, 256), 1, 1, 256, args);
}

static int gb_mul_sigmoid(struct kb_backend *be, float *y, int64_t y_stride, const float *x,
                          int64_t x_stride, const float *gate, int64_t gate_stride, int64_t rows,
                          int32_t dim)
{
    if (rows < 0 || rows > INT32_MAX)
        return gb_fail(be, -EINVAL, GBD_NAME ": mul_sigmoid: bad rows");
    if (rows == 0 || dim == 0)
        return 0;
    gbd_ptr dy = gb_p(y), dx = gb_p(x), dg = gb_p(gate);
    long long yl = y_stride, xl = x_stride, gl = gate_stride;
    int r = (int)rows;
    void *a[] = { &dy, &yl, &dx, &xl, &dg, &gl, &r, &dim };
    return gb_launch(be, GB_MUL_SIGMOID, gb_blocks((long long)rows * dim, 256), 1, 1, 256, a);
}

/* ------------------------------------------------------------------ */
/* Gated DeltaNet, attention                                            */

/* From this many tokens on, d_k = d_v = 128 takes the chunked form
 * (gdn.cu: gdn_chunk_prep / scan / out) instead of gdn_recurrent, whose
 * one block per value head walks every token in sequence; the chunked
 * form walks n / 64 chunks and does the rest in parallel over chunks. */
#define GB_GDN_CHUNK_MIN 64
#define GB_GDN_C 64                       /* tokens per chunk (GDN_C)          */

/* The chunked form on the conv output du, state dss in place, outputs
 * to dyo. Scratch (one slot), per value head and chunk: W, U (then D), Qd,
 * Kd [64][128], P [64][64], S0 [128][128]; e^{G_last} per head and chunk. */
static int gb_gdn_chunked(struct kb_backend *be, gbd_ptr du, int n, int nk, int nv, gbd_ptr db,
                          gbd_ptr da, gbd_ptr dal, gbd_ptr ddt, gbd_ptr dss, gbd_ptr dyo)
{
    const int nc = (n + GB_GDN_C - 1) / GB_GDN_C;
    const size_t hc = (size_t)nv * nc, rows = hc * GB_GDN_C * 128 * 4;
    const size_t pbytes = hc * GB_GDN_C * GB_GDN_C * 4, sbytes = hc * 128 * 128 * 4;
    gbd_ptr base;
    int rc = gb_scratch(be, GB_S_GDNC, 4 * rows + pbytes + sbytes + hc * 4, &base);
    if (rc)
        return rc;
    gbd_ptr dw = base, dU = dw + rows, dq = dU + rows, dkd = dq + rows, dp = dkd + rows;
    gbd_ptr ds0 = dp + pbytes, deg = ds0 + sbytes;
    int n_ = n, nk_ = nk, nv_ = nv;
    void *pa[] = { &du, &n_, &nk_, &nv_, &db, &da, &dal, &ddt, &dw, &dU, &dq, &dkd, &dp, &deg };
    if ((rc = gb_launch(be, GB_GDN_PREP, (unsigned)nc, (unsigned)nv, 1, 256, pa)))
        return rc;
    void *sa[] = { &n_, &dw, &dU, &dkd, &deg, &dss, &ds0 };
    if ((rc = gb_launch(be, GB_GDN_SCAN, (unsigned)nv, 2, 1, 256, sa)))
        return rc;
    void *oa[] = { &n_, &nv_, &dq, &dp, &dU, &ds0, &dyo };
    return gb_launch(be, GB_GDN_OUT, (unsigned)nc, (unsigned)nv, 1, 256, oa);
}

static int gb_gdn(struct kb_backend *be, const struct kb_gdn *g, struct kb_gdn_state *st,
                  const float *qkv, const float *z, const float *b, const float *a, int32_t n,
                  float *y)
{
    const int32_t nk = g->n_k_heads, nv = g->n_v_heads, K = g->conv_kernel, dk = g->d_k, dv = g->d_v;
    const struct gb_weight *cw = gb_w(g->conv1d), *al = gb_w(g->A_log), *dt = gb_w(g->dt_bias),
                           *nw = gb_w(g->norm);
    /* d_k = d_v = 128 (the real model) takes the register-resident kernel,
     * or the chunked form from GB_GDN_CHUNK_MIN tokens on; other head
     * sizes the general one (gdn_recurrent_any: d_k <= 256) */
    if (nk <= 0 || nv <= 0 || nv % nk || dk <= 0 || dk > 256 || dv <= 0 || dv > 4096 || K < 1 ||
        K > 8 || n < 0)
        return gb_fail(be, -EINVAL, GBD_NAME ": gdn: the kernels need d_k <= 256, d_v <= 4096, "
                       "n_v %% n_k == 0 and a conv kernel of 1..8 (got d_k %d, d_v %d, %d/%d heads, "
                       "kernel %d)", (int)dk, (int)dv, (int)nk, (int)nv, (int)K);
    const int64_t conv_dim64 = 2 * (int64_t)nk * dk + (int64_t)nv * dv;
    if (conv_dim64 > INT32_MAX / 8)
        return gb_fail(be, -EINVAL, GBD_NAME ": gdn: %lld channels is too many", (long long)conv_dim64);
    const int conv_dim = (int)conv_dim64, vd = nv * dv;
    if (!cw || !cw->f32 || !al || !al->f32 || !dt || !dt->f32 || !nw || !nw->f32 ||
        g->conv1d->rows * g->conv1d->cols != (int64_t)conv_dim * K ||
        g->norm->rows * g->norm->cols != dv)
        return gb_fail(be, -EINVAL, GBD_NAME ": gdn: constants not prepared or of the wrong size");
    if (n == 0)
        return 0;
    gbd_ptr du, dyo;
    int rc;
    if ((rc = gb_scratch(be, GB_S_U, (size_t)n * conv_dim * 4, &du)) ||
        (rc = gb_scratch(be, GB_S_O, (size_t)n * vd * 4, &dyo)))
        return rc;
    gbd_ptr dqkv = gb_p(qkv), dcs = gb_p(st->conv), dcw = cw->f32;
    int cd = conv_dim, kk = K;
    void *ca[] = { &dqkv, &n, &cd, &kk, &dcs, &dcw, &du };
    if ((rc = gb_launch(be, GB_GDN_CONV, gb_blocks(conv_dim, 256), 1, 1, 256, ca)))
        return rc;
    gbd_ptr db = gb_p(b), da = gb_p(a), dal = al->f32, ddt = dt->f32, dss = gb_p(st->ssm);
    int nk_ = nk, nv_ = nv, dk_ = dk, dv_ = dv;
    if (dk == 128 && dv == 128 && n >= GB_GDN_CHUNK_MIN) {
        rc = gb_gdn_chunked(be, du, n, nk, nv, db, da, dal, ddt, dss, dyo);
    } else if (dk == 128 && dv == 128) {
        void *ra[] = { &du, &n, &nk_, &nv_, &db, &da, &dal, &ddt, &dss, &dyo };
        rc = gb_launch(be, GB_GDN_REC, (unsigned)nv, 1, 1, 512, ra);   /* gdn.cu GDN_REC_THREADS */
    } else {
        void *ra[] = { &du, &n, &nk_, &nv_, &dk_, &dv_, &db, &da, &dal, &ddt, &dss, &dyo };
        rc = gb_launch(be, GB_GDN_REC_ANY, (unsigned)nv, 1, 1, 128, ra);
    }
    if (rc)
        return rc;
    gbd_ptr dy = gb_p(y), dz = gb_p(z), dn = nw->f32;
    int hd = dv;
    float eps = g->norm_eps;
    void *na[] = { &dy, &dyo, &dz, &hd, &dn, &eps };
    return gb_launch(be, GB_RMSNORM_GATED, (unsigned)(n * nv), 1, 1, 128, na);
}

static int gb_attention(struct kb_backend *be, const struct kb_attn *at, struct kb_kv *kv,
                        int64_t past, const float *q, int64_t q_stride, const float *k,
                        const float *v, int32_t n, float *out)
{
    const int32_t nh = at->n_heads, nkv = at->n_kv_heads, hd = at->head_dim;
    if (nh <= 0 || nkv <= 0 || nh % nkv || hd <= 0 || hd > 256 || q_stride < hd)
        return gb_fail(be, -EINVAL, GBD_NAME ": attention: bad head configuration (head_dim <= 256)");
    if (past < 0 || n < 0 || past + n > kv->capacity || past + n > INT32_MAX)
        return gb_fail(be, -EINVAL, GBD_NAME ": attention: KV cache capacity exceeded");
    if (n == 0)
        return 0;
    const size_t row = (size_t)nkv * hd * 4;
    struct gb *g = gb_of(be);
    int rc;
    if ((rc = gb_dev(be, gbd_mem_copy(g->d, gb_p(kv->k) + (gbd_ptr)(past * (int64_t)row), gb_p(k),
                                      (size_t)n * row), "copy")) ||
        (rc = gb_dev(be, gbd_mem_copy(g->d, gb_p(kv->v) + (gbd_ptr)(past * (int64_t)row), gb_p(v),
                                      (size_t)n * row), "copy")))
        return rc;
    const int max_chunks = (int)((past + n + 255) / 256);
    gbd_ptr dpo, dms;
    if ((rc = gb_scratch(be, GB_S_PART, (size_t)nh * max_chunks * hd * 4, &dpo)) ||
        (rc = gb_scratch(be, GB_S_MS, (size_t)nh * max_chunks * 8, &dms)))
        return rc;
    gbd_ptr dk = gb_p(kv->k), dv = gb_p(kv->v);
    int nh_ = nh, nkv_ = nkv, hd_ = hd;
    float sc = at->scale;
    long long qld = q_stride;
    for (int32_t t = 0; t < n; t++) {
        int len = (int)(past + t + 1);
        gbd_ptr dq = gb_p(q) + (gbd_ptr)((int64_t)t * nh * q_stride * 4);
        gbd_ptr dout = gb_p(out) + (gbd_ptr)((int64_t)t * nh * hd * 4);
        void *sa[] = { &dq, &qld, &dk, &dv, &len, &nh_, &nkv_, &hd_, &sc, &dpo, &dms };
        if ((rc = gb_launch(be, GB_ATTN_SPLIT, (unsigned)((len + 255) / 256), (unsigned)nh, 1, 256, sa)))
            return rc;
        void *ma[] = { &dpo, &dms, &len, &hd_, &dout };
        if ((rc = gb_launch(be, GB_ATTN_MERGE, (unsigned)nh, 1, 1, 256, ma)))
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* MoE                                                                  */

static int gb_elementwise(struct kb_backend *be, enum gb_fn f, long long count, void **args)
{
    return count > 0 ? gb_launch(be, f, gb_blocks(count, 256), 1, 1, 256, args) : 0;
}

/* y[rows][hidden] = down(silu(gate x) * up x) for x [rows][hidden] at dx. */
static int gb_mlp(struct kb_backend *be, const struct kb_weight *gw, const struct kb_weight *uw,
                  const struct kb_weight *dw, gbd_ptr dx, int rows, int inter, gbd_ptr dy)
{
    gbd_ptr dg, du, da;
    int rc;
    if ((rc = gb_scratch(be, GB_S_G, (size_t)rows * inter * 4, &dg)) ||
        (rc = gb_scratch(be, GB_S_UP, (size_t)rows * inter * 4, &du)) ||
        (rc = gb_scratch(be, GB_S_A, (size_t)rows * inter * 4, &da)) ||
        (rc = gb_matmul(be, gw, (const float *)(uintptr_t)dx, rows, (float *)(uintptr_t)dg)) ||
        (rc = gb_matmul(be, uw, (const float *)(uintptr_t)dx, rows, (float *)(uintptr_t)du)))
        return rc;
    long long cnt = (long long)rows * inter;
    void *sa[] = { &dg, &du, &cnt, &da };
    if ((rc = gb_elementwise(be, GB_SWIGLU2, cnt, sa)))
        return rc;
    return gb_matmul(be, dw, (const float *)(uintptr_t)da, rows, (float *)(uintptr_t)dy);
}

/* The expert address table of MoE block m (see struct gb_moe_tab), built
 * on first use and rebuilt when the experts' device addresses changed. */
static int gb_moe_table(struct kb_backend *be, const struct kb_moe *m, gbd_ptr *tab)
{
    struct gb *g = gb_of(be);
    const int E = m->n_experts;
    const size_t words = (size_t)6 * E;
    struct gb_moe_tab *t = NULL;
    *tab = 0;
    for (int i = 0; i < g->n_moe_tab && !t; i++)
        if (g->moe_tab[i].key == m->gate && g->moe_tab[i].n_experts == E)
            t = &g->moe_tab[i];
    unsigned long long cur[6 * 256];
    for (int e = 0; e < E; e++) {
        const struct kb_weight *w[3] = { &m->gate[e], &m->up[e], &m->down[e] };
        for (int j = 0; j < 3; j++) {
            const struct gb_weight *gw = gb_w(w[j]);
            if (!gw || w[j]->type != KB_WTYPE_Q4G32)
                return gb_fail(be, -EINVAL, GBD_NAME ": moe: expert %d is not a prepared W4 "
                               "weight", e);
            cur[(size_t)(j * E + e) * 2] = (unsigned long long)gw->data;
            cur[(size_t)(j * E + e) * 2 + 1] = (unsigned long long)gw->scales;
        }
    }
    if (t && !memcmp(t->host, cur, words * sizeof(cur[0]))) {
        *tab = t->dev;
        return 0;
    }
    if (!t) {
        if (g->n_moe_tab == g->cap_moe_tab) {
            int cap = g->cap_moe_tab ? 2 * g->cap_moe_tab : 64;
            struct gb_moe_tab *nt = realloc(g->moe_tab, (size_t)cap * sizeof(*nt));
            if (!nt)
                return gb_fail(be, -ENOMEM, GBD_NAME ": moe: out of host memory");
            g->moe_tab = nt;
            g->cap_moe_tab = cap;
        }
        t = &g->moe_tab[g->n_moe_tab];
        t->host = malloc(words * sizeof(cur[0]));
        if (!t->host)
            return gb_fail(be, -ENOMEM, GBD_NAME ": moe: out of host memory");
        int rc = gbd_mem_alloc(g->d, words * sizeof(cur[0]), &t->dev);
        if (rc) {
            free(t->host);
            t->host = NULL;
            return gb_dev(be, rc, "moe table allocation");
        }
        t->key = m->gate;
        t->n_experts = E;
        g->n_moe_tab++;
    }
    memcpy(t->host, cur, words * sizeof(cur[0]));
    int rc = gb_dev(be, gbd_mem_upload(g->d, t->dev, cur, words * sizeof(cur[0])), "upload");
    if (!rc)
        *tab = t->dev;
    return rc;
}

/* Projection proj's part (0 gate, 1 up, 2 down) of an expert table: E
 * pairs of u64 addresses. */
static gbd_ptr gb_moe_tab_at(gbd_ptr tab, int E, int proj)
{
    return tab + (gbd_ptr)((size_t)proj * (size_t)E * 16);
}

/* Routed experts of n <= GB_MOE_DEVICE_MAX tokens, all on the device:
 * slice z = t * top + j is token t's j-th expert ids[z]; gate and up read
 * x row t (x_group = top), down reads slice z's SwiGLU row; dy[t] = the
 * weighted sum over j in a fixed order (deterministic). */
static int gb_moe_device(struct kb_backend *be, const struct kb_moe *m, gbd_ptr tab, gbd_ptr dx,
                         int n, gbd_ptr dids, gbd_ptr dwts, gbd_ptr dy)
{
    const int E = m->n_experts, top = m->top_k, H = m->hidden, I = m->inter, S = n * top;
    const gbd_ptr tg = gb_moe_tab_at(tab, E, 0), tu = gb_moe_tab_at(tab, E, 1), td = gb_moe_tab_at(tab, E, 2);
    gbd_ptr dg, du, da, dyd;
    int rc;
    if ((rc = gb_scratch(be, GB_S_G, (size_t)S * I * 4, &dg)) ||
        (rc = gb_scratch(be, GB_S_UP, (size_t)S * I * 4, &du)) ||
        (rc = gb_scratch(be, GB_S_A, (size_t)S * I * 4, &da)) ||
        (rc = gb_scratch(be, GB_S_YD, (size_t)S * H * 4, &dyd)) ||
        (rc = gb_gemv(be, 0, 0, dx, dg, I, H, 1, dids, tg, top, S, H, I)) ||
        (rc = gb_gemv(be, 0, 0, dx, du, I, H, 1, dids, tu, top, S, H, I)))
        return rc;
    long long cnt = (long long)S * I;
    void *sa[] = { &dg, &du, &cnt, &da };
    if ((rc = gb_elementwise(be, GB_SWIGLU2, cnt, sa)) ||
        (rc = gb_gemv(be, 0, 0, da, dyd, H, I, 1, dids, td, 1, S, I, H)))
        return rc;
    gbd_ptr nopos = 0;
    int top_ = top, H_ = H, acc = 0;
    void *ca[] = { &dyd, &nopos, &dwts, &top_, &H_, &dy, &acc };
    return gb_launch(be, GB_COMBINE, (unsigned)n, 1, 1, 256, ca);
}

/* Routed experts of n > GB_MOE_DEVICE_MAX tokens (prefill), all on the
 * device as well: moe_sort orders the n * top assignments by expert (seg,
 * the source token of every sorted row, and each assignment's sorted row),
 * the sorted rows are quantised once, and each projection is ONE grouped
 * MMQ launch over all experts (grid.z = expert, weights through the table)
 * that reads every routed expert's weights once per 32 of its rows; then
 * SwiGLU, quantise, grouped down, and the weighted combine in assignment
 * order (deterministic: no sum crosses rows, whatever order the sort's
 * atomics put one expert's rows in). */
static int gb_moe_grouped(struct kb_backend *be, const struct kb_moe *m, gbd_ptr tab, gbd_ptr dx,
                          int n, gbd_ptr dids, gbd_ptr dwts, gbd_ptr dy)
{
    const int E = m->n_experts, top = m->top_k, H = m->hidden, I = m->inter, S = n * top;
    const gbd_ptr tg = gb_moe_tab_at(tab, E, 0), tu = gb_moe_tab_at(tab, E, 1), td = gb_moe_tab_at(tab, E, 2);
    gbd_ptr seg, rowtok, pos, dg, du, da, dyd, xq, xd;
    int rc;
    if ((rc = gb_scratch(be, GB_S_SEG, (size_t)(E + 1) * 4, &seg)) ||
        (rc = gb_scratch(be, GB_S_ROWTOK, (size_t)S * 4, &rowtok)) ||
        (rc = gb_scratch(be, GB_S_SORTPOS, (size_t)S * 4, &pos)) ||
        (rc = gb_scratch(be, GB_S_G, (size_t)S * I * 4, &dg)) ||
        (rc = gb_scratch(be, GB_S_UP, (size_t)S * I * 4, &du)) ||
        (rc = gb_scratch(be, GB_S_A, (size_t)S * I * 4, &da)) ||
        (rc = gb_scratch(be, GB_S_YD, (size_t)S * H * 4, &dyd)))
        return rc;
    int S_ = S, top_ = top, E_ = E;
    void *sa[] = { &dids, &S_, &top_, &E_, &seg, &rowtok, &pos };
    if ((rc = gb_launch(be, GB_SORT, 1, 1, 1, 1024, sa)) ||
        (rc = gb_quantize(be, dx, H, rowtok, S, H, &xq, &xd)) ||
        (rc = gb_mmq(be, xq, xd, 0, 0, dg, S, I, H, seg, tg, E, n)) ||
        (rc = gb_mmq(be, xq, xd, 0, 0, du, S, I, H, seg, tu, E, n)))
        return rc;
    long long cnt = (long long)S * I;
    void *wa[] = { &dg, &du, &cnt, &da };
    if ((rc = gb_elementwise(be, GB_SWIGLU2, cnt, wa)) ||
        (rc = gb_quantize(be, da, I, 0, S, I, &xq, &xd)) ||
        (rc = gb_mmq(be, xq, xd, 0, 0, dyd, S, H, I, seg, td, E, n)))
        return rc;
    int H_ = H, acc = 0;
    void *ca[] = { &dyd, &pos, &dwts, &top_, &H_, &dy, &acc };
    return gb_launch(be, GB_COMBINE, (unsigned)n, 1, 1, 256, ca);
}

/* dy += the shared expert (times its sigmoid gate when there is one). */
static int gb_moe_shared(struct kb_backend *be, const struct kb_moe *m, const float *x, gbd_ptr dxa,
                         int32_t n, gbd_ptr dy)
{
    const int H = m->hidden;
    int rc;
    if (m->shared_inter <= 0)
        return 0;
    gbd_ptr dsh, dsg;
    if ((rc = gb_scratch(be, GB_S_SH, (size_t)n * H * 4, &dsh)) ||
        (rc = gb_mlp(be, m->shared_gate, m->shared_up, m->shared_down, dxa, n, m->shared_inter, dsh)))
        return rc;
    long long cnt = (long long)n * H;
    if (m->shared_expert_gate) {
        if ((rc = gb_scratch(be, GB_S_SG, (size_t)n * 4, &dsg)) ||
            (rc = gb_matmul(be, m->shared_expert_gate, x, n, (float *)(uintptr_t)dsg)))
            return rc;
        void *aa[] = { &dy, &dsh, &dsg, &n, (void *)&H };
        return gb_elementwise(be, GB_ADD_SIGMOID, cnt, aa);
    }
    void *aa[] = { &dy, &dy, &dsh, &cnt };
    return gb_elementwise(be, GB_ADD, cnt, aa);
}

static int gb_moe(struct kb_backend *be, const struct kb_moe *m, const float *x, int32_t n, float *y)
{
    const int E = m->n_experts, top = m->top_k, H = m->hidden, I = m->inter;
    if (E <= 0 || E > 256 || top <= 0 || top > 16 || top > E || H <= 0 || I <= 0 || n < 0 ||
        !gb_w(m->router))
        return gb_fail(be, -EINVAL, GBD_NAME ": moe: the kernels need <= 256 experts, top-k <= 16 "
                       "and a prepared router");
    if (n == 0)
        return 0;
    int rc;
    gbd_ptr dlog, dids, dwts, dy = gb_p(y);
    if ((rc = gb_scratch(be, GB_S_LOGITS, (size_t)n * E * 4, &dlog)) ||
        (rc = gb_scratch(be, GB_S_IDS, (size_t)n * top * 4, &dids)) ||
        (rc = gb_scratch(be, GB_S_W, (size_t)n * top * 4, &dwts)) ||
        (rc = gb_matmul(be, m->router, x, n, (float *)(uintptr_t)dlog)))
        return rc;
    int renorm = m->norm_topk ? 1 : 0;
    void *ra[] = { &dlog, &n, (void *)&E, (void *)&top, &renorm, &dids, &dwts };
    if ((rc = gb_launch(be, GB_ROUTE, gb_blocks(n, 4), 1, 1, 128, ra)))
        return rc;
    gbd_ptr tab, dxa;
    if ((rc = gb_moe_table(be, m, &tab)) ||
        (rc = gb_aligned_x(be, x, (size_t)n * H, &dxa)))
        return rc;
    rc = n <= GB_MOE_DEVICE_MAX ? gb_moe_device(be, m, tab, dxa, n, dids, dwts, dy)
                                : gb_moe_grouped(be, m, tab, dxa, n, dids, dwts, dy);
    return rc ? rc : gb_moe_shared(be, m, x, dxa, n, dy);
}

/* ------------------------------------------------------------------ */
/* Creation                                                             */

static void gb_destroy(struct kb_backend *be)
{
    if (!be)
        return;
    struct gb *g = gb_of(be);
    if (g) {
        for (int i = 0; i < GB_N_SLOT; i++)
            gbd_mem_free(g->d, g->slot[i]);
        for (int i = 0; i < g->n_moe_tab; i++) {
            gbd_mem_free(g->d, g->moe_tab[i].dev);
            free(g->moe_tab[i].host);
        }
        free(g->moe_tab);
        gbd_close(g->d);
        free(g);
    }
    free(be);
}

static const struct kb_backend_ops gb_ops = {
    .api_version = KB_API_VERSION,
    .name = GBD_NAME,
    .caps = gb_caps,
    .last_error = gb_last_error,
    .destroy = gb_destroy,
    .alloc = gb_alloc,
    .free = gb_free,
    .upload = gb_upload,
    .download = gb_download,
    .copy = gb_copy,
    .zero = gb_zero,
    .sync = gb_sync,
    .weight_prepare = gb_weight_prepare,
    .weight_release = gb_weight_release,
    .embed = gb_embed,
    .matmul = gb_matmul,
    .rmsnorm = gb_rmsnorm,
    .rope = gb_rope,
    .add = gb_add,
    .mul_sigmoid = gb_mul_sigmoid,
    .gdn = gb_gdn,
    .attention = gb_attention,
    .moe = gb_moe,
};

static const struct {
    enum gb_fn fn;
    const char *module, *name;
} gb_kernels[] = {
    { GB_QUANT, "mmq-w4", "quantize_q8g32" },
    { GB_MMQ_SMALL, "mmq-w4", "mmq_w4g32_32x64_w2x2" },
    { GB_MMQ_WIDE, "mmq-w4", "mmq_w4g32_128x64_w4x2" },
    { GB_MMQ_BIG, "mmq-w4", "mmq_w4g32_128x128_w4x2" },
    { GB_MMQ_SMALL_KT, "mmq-w4", "mmq_w4g32_32x64_w2x2_kt" },
    { GB_MMQ_WIDE_KT, "mmq-w4", "mmq_w4g32_128x64_w4x2_kt" },
    { GB_ROUTE, "moe", "moe_route" },
    { GB_RMSNORM, "norm", "rmsnorm" },
    { GB_RMSNORM_GATED, "norm", "rmsnorm_gated" },
    { GB_ROPE, "norm", "rope_neox" },
    { GB_MUL_SIGMOID, "norm", "mul_sigmoid" },
    { GB_GDN_CONV, "gdn", "gdn_conv" },
    { GB_GDN_REC, "gdn", "gdn_recurrent" },
    { GB_GDN_REC_ANY, "gdn", "gdn_recurrent_any" },
    { GB_GDN_PREP, "gdn", "gdn_chunk_prep" },
    { GB_GDN_SCAN, "gdn", "gdn_chunk_scan" },
    { GB_GDN_OUT, "gdn", "gdn_chunk_out" },
    { GB_ATTN_SPLIT, "attn", "attn_decode_split" },
    { GB_ATTN_MERGE, "attn", "attn_decode_merge" },
    { GB_EMBED, "misc", "embed_rows" },
    { GB_DENSE, "misc", "dense_matmul" },
    { GB_ADD, "misc", "add" },
    { GB_SWIGLU2, "misc", "swiglu2" },
    { GB_ADD_SIGMOID, "misc", "add_sigmoid_rows" },
    { GB_SORT, "moe", "moe_sort" },
    { GB_COMBINE, "moe", "moe_combine" },
};

static int gb_load(struct gb *g, const char *dir)
{
    static const char *const modules[] = { "gemv-w4", "mmq-w4", "moe", "norm", "gdn", "attn", "misc" };
    gbd_module mod[7];
    char path[1024], name[64];
    for (int i = 0; i < 7; i++) {
        snprintf(path, sizeof(path), "%s/%s." GBD_OBJ, dir, modules[i]);
        int rc = gbd_module_load(g->d, path, &mod[i]);
        if (rc)
            return rc;
    }
    for (int b = 1; b <= 8; b++) {
        snprintf(name, sizeof(name), "gemv_w4g32_b%d_r1", b);
        int rc = gbd_function_get(g->d, mod[0], name, &g->fn[GB_GEMV1 + b - 1]);
        snprintf(name, sizeof(name), "gemv_w4g32_b%d_r4", b);
        if (!rc)
            rc = gbd_function_get(g->d, mod[0], name, &g->fn[GB_GEMV4 + b - 1]);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < sizeof(gb_kernels) / sizeof(gb_kernels[0]); i++) {
        int m = 0;
        while (strcmp(modules[m], gb_kernels[i].module))
            m++;
        int rc = gbd_function_get(g->d, mod[m], gb_kernels[i].name, &g->fn[gb_kernels[i].fn]);
        if (rc)
            return rc;
    }
    return 0;
}

const char *gbd_create_error(void)
{
    return gb_create_err;
}

const char *gbd_backend_describe(const struct kb_backend *be)
{
    const struct gb *g = be ? be->impl : NULL;
    return g && g->d ? gbd_describe(g->d) : "";
}

int gbd_create(const struct kb_gpu_params *params, struct kb_backend **out)
{
    *out = NULL;
    gb_create_err[0] = 0;
    struct kb_backend *be = calloc(1, sizeof(*be));
    struct gb *g = calloc(1, sizeof(*g));
    if (!be || !g) {
        free(be);
        free(g);
        snprintf(gb_create_err, sizeof(gb_create_err), GBD_NAME ": out of host memory");
        return -ENOMEM;
    }
    be->ops = &gb_ops;
    be->impl = g;
    int rc = gbd_open(params ? params->device : 0, &g->d, gb_create_err, sizeof(gb_create_err));
    if (!rc) {
        rc = gb_load(g, params && params->kernel_dir ? params->kernel_dir : ".");
        if (rc)
            snprintf(gb_create_err, sizeof(gb_create_err), "%s", gbd_last_error(g->d));
    }
    if (rc) {
        gb_destroy(be);
        return rc;
    }
    *out = be;
    return 0;
}
