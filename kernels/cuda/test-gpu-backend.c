/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The GPU backend against the CPU reference backend, op by op, through the
 * kernels/backend.h interface only (as the engine uses it): same random
 * inputs, device outputs downloaded and compared by relative RMS error and
 * NaN count (outputs are poisoned with NaN first). Tolerances (relative RMS):
 *   W4 matmul, n <= 8 (fp32-activation GEMV)  4e-3  (bf16 rounding of the
 *                                                    reference's weights)
 *   W4 matmul, n > 8 (int8 activations, MMQ)  3e-2
 *   MoE block                                  as its matmuls (n <= 8 / n > 8)
 *   dense matmul, norms, RoPE, GDN, attention  1e-4  (fp32, other order; GDN
 *                                                    also in the chunked form)
 *   embed, add, copy                           exact
 *
 *   test-gpu-backend KERNEL_DIR       exit 0 pass, 1 fail, 77 no device
 * Built twice: CUDA (kb_cuda_create) and, with -DGPU_BACKEND_HIP, HIP.
 */
#include "kernels/backend.h"
#include "kernels/cuda/gpu-backend.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GPU_BACKEND_HIP
#define TB_CREATE kb_hip_create
#define TB_CREATE_ERROR kb_hip_create_error
#else
#define TB_CREATE kb_cuda_create
#define TB_CREATE_ERROR kb_cuda_create_error
#endif

static struct kb_backend *ref, *gpu;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static int failures, checks;

static float rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test-gpu-backend: out of memory\n");
        exit(2);
    }
    return p;
}

static float *rnd_vec(size_t n, float scale)
{
    float *v = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = scale * rnd();
    return v;
}

#define OK(expr)                                                                              \
    do {                                                                                      \
        int rc_ = (expr);                                                                     \
        if (rc_) {                                                                            \
            fprintf(stderr, "test-gpu-backend: %s:%d: %s = %d: %s / %s\n", __FILE__, __LINE__, \
                    #expr, rc_, gpu->ops->last_error(gpu), ref->ops->last_error(ref));        \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void *dev_of(const void *host, size_t bytes)
{
    void *d = gpu->ops->alloc(gpu, bytes);
    if (!d) {
        fprintf(stderr, "test-gpu-backend: device alloc of %zu bytes failed: %s\n", bytes,
                gpu->ops->last_error(gpu));
        exit(1);
    }
    if (host) {
        OK(gpu->ops->upload(gpu, d, host, bytes));
    } else {
        /* outputs start as NaN: an element the op forgets to write fails */
        uint32_t *nan = xmalloc(bytes);
        for (size_t i = 0; i < bytes / 4; i++)
            nan[i] = 0x7fc00000u;
        OK(gpu->ops->upload(gpu, d, nan, bytes / 4 * 4));
        free(nan);
    }
    return d;
}

static float *host_of(const void *dev, size_t floats)
{
    float *h = xmalloc(floats * sizeof(float));
    OK(gpu->ops->download(gpu, h, dev, floats * sizeof(float)));
    return h;
}

static void compare(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double se = 0.0, sr = 0.0;
    size_t nan = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        if (isnan(d))
            nan++;
        se += d * d;
        sr += (double)want[i] * want[i];
    }
    double rel = sr > 0 ? sqrt(se / sr) : sqrt(se);
    bool ok = nan == 0 && rel <= tol;
    checks++;
    failures += !ok;
    printf("%s %-44s rel. RMS err %.2e (tolerance %.0e), %zu NaN\n", ok ? "PASS" : "FAIL", what, rel,
           tol, nan);
}

/* W4 g32 weight with bf16 scales, random nibbles. */
static struct kb_weight q4_weight(int64_t rows, int64_t cols)
{
    uint32_t *p = xmalloc((size_t)(rows * cols / 8) * 4);
    uint16_t *s = xmalloc((size_t)(rows * cols / 32) * 2);
    for (int64_t i = 0; i < rows * cols / 8; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (uint32_t)(rng >> 32);
    }
    for (int64_t i = 0; i < rows * cols / 32; i++)
        s[i] = kb_f32_to_bf16(0.005f + 0.01f * fabsf(rnd()));
    struct kb_weight w = { .type = KB_WTYPE_Q4G32, .rows = rows, .cols = cols, .data = p,
                           .scales = s, .scale_type = KB_WTYPE_BF16 };
    return w;
}

static struct kb_weight f32_weight(int64_t rows, int64_t cols, float scale, float offset)
{
    float *v = rnd_vec((size_t)(rows * cols), scale);
    for (int64_t i = 0; i < rows * cols; i++)
        v[i] += offset;
    struct kb_weight w = { .type = KB_WTYPE_F32, .rows = rows, .cols = cols, .data = v };
    return w;
}

static struct kb_weight bf16_weight(int64_t rows, int64_t cols)
{
    uint16_t *v = xmalloc((size_t)(rows * cols) * 2);
    for (int64_t i = 0; i < rows * cols; i++)
        v[i] = kb_f32_to_bf16(rnd());
    struct kb_weight w = { .type = KB_WTYPE_BF16, .rows = rows, .cols = cols, .data = v };
    return w;
}

static void weight_free(struct kb_weight *w)
{
    gpu->ops->weight_release(gpu, w);
    free((void *)w->data);
    free((void *)w->scales);
}

static void test_matmul(const struct kb_weight *w0, int n, double tol, const char *what)
{
    struct kb_weight w = *w0;
    OK(gpu->ops->weight_prepare(gpu, &w));
    const size_t xs = (size_t)n * w.cols, ys = (size_t)n * w.rows;
    float *x = rnd_vec(xs, 1.0f), *want = xmalloc(ys * sizeof(float));
    OK(ref->ops->matmul(ref, &w, x, n, want));
    void *dx = dev_of(x, xs * 4), *dy = dev_of(NULL, ys * 4);
    OK(gpu->ops->matmul(gpu, &w, dx, n, dy));
    float *got = host_of(dy, ys);
    char name[96];
    snprintf(name, sizeof(name), "%s %lldx%lld n=%d", what, (long long)w.rows, (long long)w.cols, n);
    compare(name, got, want, ys, tol);
    gpu->ops->weight_release(gpu, &w);
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x);
    free(want);
    free(got);
}

static void test_small_ops(void)
{
    /* embed (bf16 table) */
    struct kb_weight tab = bf16_weight(100, 64);
    OK(gpu->ops->weight_prepare(gpu, &tab));
    int32_t ids[5] = { 3, 99, 0, 42, 3 };
    float *want = xmalloc(5 * 64 * 4);
    OK(ref->ops->embed(ref, &tab, ids, 5, want));
    void *dout = dev_of(NULL, 5 * 64 * 4);
    OK(gpu->ops->embed(gpu, &tab, ids, 5, dout));
    float *got = host_of(dout, 5 * 64);
    compare("embed bf16 100x64, 5 ids", got, want, 5 * 64, 0.0);
    free(got);
    free(want);
    gpu->ops->free(gpu, dout);
    weight_free(&tab);

    /* rmsnorm zero-centred, strided rows */
    const int rows = 7, dim = 256;
    struct kb_weight nw = f32_weight(1, dim, 0.2f, 0.0f);
    OK(gpu->ops->weight_prepare(gpu, &nw));
    /* one buffer big enough for every sub-test below (rope uses 3072) */
    float *x = rnd_vec(4096, 2.0f);
    want = xmalloc(4096 * 4);
    OK(ref->ops->rmsnorm(ref, want, dim, x, 300, rows, dim, &nw, 1e-6f, true));
    void *dx = dev_of(x, 4096 * 4), *dy = dev_of(NULL, (size_t)rows * dim * 4);
    OK(gpu->ops->rmsnorm(gpu, dy, dim, dx, 300, rows, dim, &nw, 1e-6f, true));
    got = host_of(dy, (size_t)rows * dim);
    compare("rmsnorm (1+w) 7x256, x stride 300", got, want, (size_t)rows * dim, 1e-4);
    free(got);

    /* mul_sigmoid, add */
    OK(ref->ops->mul_sigmoid(ref, want, dim, x, 300, x + 40, 300, rows, dim));
    OK(gpu->ops->mul_sigmoid(gpu, dy, dim, dx, 300, (float *)dx + 40, 300, rows, dim));
    got = host_of(dy, (size_t)rows * dim);
    compare("mul_sigmoid 7x256 strided", got, want, (size_t)rows * dim, 1e-4);
    free(got);
    OK(ref->ops->add(ref, want, x, x + 5, rows * dim));
    OK(gpu->ops->add(gpu, dy, dx, (float *)dx + 5, rows * dim));
    got = host_of(dy, (size_t)rows * dim);
    compare("add (odd offsets)", got, want, (size_t)rows * dim, 0.0);
    free(got);

    /* rope: 3 tokens x 4 heads x 256, rot 64 */
    int32_t pos[3] = { 5, 1000, 150000 };
    memcpy(want, x, 3 * 4 * 256 * 4);
    OK(ref->ops->rope(ref, want, 3, 4, 256, 64, pos, 1e7));
    OK(gpu->ops->rope(gpu, dx, 3, 4, 256, 64, pos, 1e7));
    got = host_of(dx, 3 * 4 * 256);
    compare("rope 3 tok x 4 heads, rot 64/256", got, want, 3 * 4 * 256, 1e-4);
    free(got);
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x);
    free(want);
    weight_free(&nw);
}

/* d = 128: the register-resident kernel below 64 tokens, the chunked
 * form (gdn_chunk_*) from 64 on; other sizes the general one. split > 0:
 * the GPU gets the n tokens as two calls (split, then n - split; the conv
 * and recurrent state carried on the device) against one reference call. */
static void test_gdn(int n, int d, int split)
{
    const int nk = 2, nv = 4, K = 4, cd = 2 * nk * d + nv * d, vd = nv * d;
    struct kb_weight cw = f32_weight(cd, K, 0.5f, 0.0f), al = f32_weight(1, nv, 1.0f, 0.5f),
                     dt = f32_weight(1, nv, 1.0f, 0.0f), nw = f32_weight(1, d, 0.2f, 1.0f);
    struct kb_weight *ws[] = { &cw, &al, &dt, &nw };
    for (int i = 0; i < 4; i++)
        OK(gpu->ops->weight_prepare(gpu, ws[i]));
    struct kb_gdn g = { .n_k_heads = nk, .n_v_heads = nv, .d_k = d, .d_v = d, .conv_kernel = K,
                        .norm_eps = 1e-6f, .conv1d = &cw, .A_log = &al, .dt_bias = &dt, .norm = &nw };
    float *qkv = rnd_vec((size_t)n * cd, 1.0f), *z = rnd_vec((size_t)n * vd, 1.0f);
    float *b = rnd_vec((size_t)n * nv, 2.0f), *a = rnd_vec((size_t)n * nv, 2.0f);
    float *conv = rnd_vec((size_t)(K - 1) * cd, 1.0f), *ssm = rnd_vec((size_t)nv * d * d, 0.05f);
    void *dconv = dev_of(conv, (size_t)(K - 1) * cd * 4), *dssm = dev_of(ssm, (size_t)nv * d * d * 4);
    void *dqkv = dev_of(qkv, (size_t)n * cd * 4), *dz = dev_of(z, (size_t)n * vd * 4);
    void *db = dev_of(b, (size_t)n * nv * 4), *da = dev_of(a, (size_t)n * nv * 4);
    void *dy = dev_of(NULL, (size_t)n * vd * 4);
    struct kb_gdn_state hs = { conv, ssm }, ds = { dconv, dssm };
    float *want = xmalloc((size_t)n * vd * 4);
    OK(ref->ops->gdn(ref, &g, &hs, qkv, z, b, a, n, want));
    if (split > 0) {
        const int m = n - split;
        OK(gpu->ops->gdn(gpu, &g, &ds, dqkv, dz, db, da, split, dy));
        OK(gpu->ops->gdn(gpu, &g, &ds, (float *)dqkv + (size_t)split * cd, (float *)dz + (size_t)split * vd,
                         (float *)db + (size_t)split * nv, (float *)da + (size_t)split * nv, m,
                         (float *)dy + (size_t)split * vd));
    } else {
        OK(gpu->ops->gdn(gpu, &g, &ds, dqkv, dz, db, da, n, dy));
    }
    float *got = host_of(dy, (size_t)n * vd), *gs = host_of(dssm, (size_t)nv * d * d);
    float *gc = host_of(dconv, (size_t)(K - 1) * cd);
    char name[128], calls[32] = "";
    if (split > 0)
        snprintf(calls, sizeof(calls), " as %d+%d", split, n - split);
    snprintf(name, sizeof(name), "gdn d %d, %d tokens%s (output)", d, n, calls);
    compare(name, got, want, (size_t)n * vd, 1e-4);
    snprintf(name, sizeof(name), "gdn d %d, %d tokens%s (recurrent state)", d, n, calls);
    compare(name, gs, ssm, (size_t)nv * d * d, 1e-4);
    snprintf(name, sizeof(name), "gdn d %d, %d tokens%s (conv state)", d, n, calls);
    compare(name, gc, conv, (size_t)(K - 1) * cd, 0.0);
    void *ptrs[] = { dconv, dssm, dqkv, dz, db, da, dy };
    for (int i = 0; i < 7; i++)
        gpu->ops->free(gpu, ptrs[i]);
    void *hp[] = { qkv, z, b, a, conv, ssm, want, got, gs, gc };
    for (int i = 0; i < 10; i++)
        free(hp[i]);
    for (int i = 0; i < 4; i++)
        weight_free(ws[i]);
}

static void test_attention(int past, int n)
{
    const int nh = 4, nkv = 2, hd = 64, cap = past + n + 3;
    const size_t row = (size_t)nkv * hd;
    struct kb_attn at = { .n_heads = nh, .n_kv_heads = nkv, .head_dim = hd, .scale = 0.125f };
    float *kc = rnd_vec((size_t)cap * row, 1.0f), *vc = rnd_vec((size_t)cap * row, 1.0f);
    float *q = rnd_vec((size_t)n * nh * hd, 1.0f), *k = rnd_vec((size_t)n * row, 1.0f);
    float *v = rnd_vec((size_t)n * row, 1.0f), *want = xmalloc((size_t)n * nh * hd * 4);
    void *dk = dev_of(kc, (size_t)cap * row * 4), *dv = dev_of(vc, (size_t)cap * row * 4);
    void *dq = dev_of(q, (size_t)n * nh * hd * 4), *dkn = dev_of(k, (size_t)n * row * 4);
    void *dvn = dev_of(v, (size_t)n * row * 4), *dout = dev_of(NULL, (size_t)n * nh * hd * 4);
    struct kb_kv hkv = { kc, vc, cap }, dkv = { dk, dv, cap };
    OK(ref->ops->attention(ref, &at, &hkv, past, q, hd, k, v, n, want));
    OK(gpu->ops->attention(gpu, &at, &dkv, past, dq, hd, dkn, dvn, n, dout));
    float *got = host_of(dout, (size_t)n * nh * hd);
    char name[64];
    snprintf(name, sizeof(name), "attention past %d, %d new tokens", past, n);
    compare(name, got, want, (size_t)n * nh * hd, 1e-4);
    void *ptrs[] = { dk, dv, dq, dkn, dvn, dout };
    for (int i = 0; i < 6; i++)
        gpu->ops->free(gpu, ptrs[i]);
    void *hp[] = { kc, vc, q, k, v, want, got };
    for (int i = 0; i < 7; i++)
        free(hp[i]);
}

static void test_moe(int n, double tol, int I)
{
    const int E = 16, top = 4, H = 256;
    struct kb_weight router = f32_weight(E, H, 1.0f, 0.0f);
    struct kb_weight *gate = xmalloc(sizeof(*gate) * E), *up = xmalloc(sizeof(*up) * E),
                     *down = xmalloc(sizeof(*down) * E);
    for (int e = 0; e < E; e++) {
        gate[e] = q4_weight(I, H);
        up[e] = q4_weight(I, H);
        down[e] = q4_weight(H, I);
    }
    struct kb_weight sg = q4_weight(I, H), su = q4_weight(I, H), sd = q4_weight(H, I);
    struct kb_weight seg = bf16_weight(1, H);
    OK(gpu->ops->weight_prepare(gpu, &router));
    for (int e = 0; e < E; e++) {
        OK(gpu->ops->weight_prepare(gpu, &gate[e]));
        OK(gpu->ops->weight_prepare(gpu, &up[e]));
        OK(gpu->ops->weight_prepare(gpu, &down[e]));
    }
    OK(gpu->ops->weight_prepare(gpu, &sg));
    OK(gpu->ops->weight_prepare(gpu, &su));
    OK(gpu->ops->weight_prepare(gpu, &sd));
    OK(gpu->ops->weight_prepare(gpu, &seg));
    struct kb_moe m = { .n_experts = E, .top_k = top, .hidden = H, .inter = I, .shared_inter = I,
                        .norm_topk = true, .router = &router, .gate = gate, .up = up, .down = down,
                        .shared_gate = &sg, .shared_up = &su, .shared_down = &sd,
                        .shared_expert_gate = &seg };
    float *x = rnd_vec((size_t)n * H, 1.0f), *want = xmalloc((size_t)n * H * 4);
    OK(ref->ops->moe(ref, &m, x, n, want));
    void *dx = dev_of(x, (size_t)n * H * 4), *dy = dev_of(NULL, (size_t)n * H * 4);
    OK(gpu->ops->moe(gpu, &m, dx, n, dy));
    float *got = host_of(dy, (size_t)n * H);
    char name[80];
    snprintf(name, sizeof(name), "moe 16 experts top 4 + shared, %d tokens", n);
    compare(name, got, want, (size_t)n * H, tol);
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x);
    free(want);
    free(got);
    for (int e = 0; e < E; e++) {
        weight_free(&gate[e]);
        weight_free(&up[e]);
        weight_free(&down[e]);
    }
    free(gate);
    free(up);
    free(down);
    weight_free(&router);
    weight_free(&sg);
    weight_free(&su);
    weight_free(&sd);
    weight_free(&seg);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-gpu-backend KERNEL_DIR\n");
        return 2;
    }
    struct kb_gpu_params gp = { .device = 0, .kernel_dir = argv[1] };
    int rc = TB_CREATE(&gp, &gpu);
    if (rc == -ENODEV) {
        printf("SKIP: %s\n", TB_CREATE_ERROR());
        return 77;
    }
    if (rc) {
        fprintf(stderr, "test-gpu-backend: cannot create the GPU backend: %s\n", TB_CREATE_ERROR());
        return 1;
    }
    struct kb_cpu_params cp = { .n_threads = 4 };
    if (kb_cpu_ref_create(&cp, &ref)) {
        fprintf(stderr, "test-gpu-backend: cannot create the CPU reference\n");
        return 2;
    }
    struct kb_weight w = q4_weight(300, 512), wbig = q4_weight(4096, 256), wd = bf16_weight(64, 256);
    const int ns[] = { 1, 3, 8, 9, 40, 100 };
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
        test_matmul(&w, ns[i], ns[i] <= 8 ? 4e-3 : 3e-2, "matmul W4");
    test_matmul(&wbig, 2, 4e-3, "matmul W4");
    test_matmul(&wbig, 200, 3e-2, "matmul W4");
    test_matmul(&wd, 5, 1e-4, "matmul dense bf16");
    /* in_features 96 and 64 (the tiny models' expert down projections):
     * GEMV with 2 lanes per row, MMQ with a partial last stage */
    struct kb_weight w96 = q4_weight(130, 96), w64 = q4_weight(128, 64);
    test_matmul(&w96, 3, 4e-3, "matmul W4");
    test_matmul(&w96, 40, 3e-2, "matmul W4");
    test_matmul(&w96, 100, 3e-2, "matmul W4");
    test_matmul(&w64, 8, 4e-3, "matmul W4");
    test_matmul(&w64, 70, 3e-2, "matmul W4");
    weight_free(&w96);
    weight_free(&w64);
    weight_free(&w);
    weight_free(&wbig);
    weight_free(&wd);
    test_small_ops();
    test_gdn(1, 128, 0);
    test_gdn(5, 128, 0);
    test_gdn(64, 128, 0);                   /* the chunked form: one chunk */
    test_gdn(100, 128, 0);                  /* a partial last chunk */
    test_gdn(300, 128, 0);
    test_gdn(300, 128, 100);                /* chunked twice, state carried */
    test_gdn(71, 128, 7);                   /* recurrent (7), then chunked (64) */
    test_gdn(1, 32, 0);
    test_gdn(9, 32, 0);
    test_attention(0, 1);
    test_attention(300, 3);
    test_moe(3, 4e-3, 128);
    test_moe(37, 3e-2, 128);
    test_moe(3, 4e-3, 96);                  /* expert width of the tiny models */
    test_moe(37, 3e-2, 96);
    printf("RESULT: %d/%d passed\n", checks - failures, checks);
    gpu->ops->destroy(gpu);
    ref->ops->destroy(ref);
    return failures ? 1 : 0;
}
