/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The GPU backend's MoE block (kernels/cuda/gpu-backend.c: routing on the
 * device, experts found through the address table, no host round trip)
 * EXECUTED on the CPU: gpu-backend.c is linked, unchanged, against a fake
 * of the device layer (cuda-device.h) whose memory is host memory and whose
 * launches run the kernel sources of gemv-w4.cu, mmq-w4.cu, moe.cu and
 * misc.cu under the CPU emulation of compat.h (kernels/gpu/emu.h). The
 * whole MoE block is compared with the scalar CPU reference's.
 *
 * What this proves: the backend's launch sequences, argument lists, grid
 * sizes, scratch sizes and the expert table as written, including its
 * rebuild when the weights are prepared again at new addresses (freed
 * device memory is poisoned and never reused here, so a stale table reads
 * NaN). What it cannot: anything about a real device (tools/gpu/check).
 *
 * Checked: 16 experts top 4 with renormalisation and a gated shared
 * expert; n = 1, 3, 8 tokens (decode: GEMV per (token, slot), 8 is
 * GB_MOE_DEVICE_MAX) within rel. L2 4e-3 of the reference (the GEMV sums
 * fp32 products of q * s where the reference rounds every q * s to bf16),
 * and n = 9, 37 (prefill: moe_sort + grouped int8 MMQ) within 3e-2 (int8
 * activations); one expert chosen differently would be far outside either.
 * All of it twice: the second time after every weight was released and
 * prepared again. A launch of a kernel without an emulation here fails the
 * test by name. Exit 0 pass, 1 fail.
 */
#define GPU_EMU 1
#include "kernels/gpu/compat.h"
#include "kernels/gpu/gemv-w4.cu"
#include "kernels/gpu/misc.cu"
#include "kernels/gpu/mmq-w4.cu"
#include "kernels/gpu/moe.cu"

#include <errno.h>
#include <vector>

extern "C" {
#include "kernels/backend.h"
#include "kernels/cpu/ref.h"
#include "kernels/cuda/cuda-device.h"
#include "kernels/cuda/gpu-backend.h"
}

/* ---- the fake device layer ---- */

typedef void (*emu_launcher)(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block);
struct emu_fn { char name[64]; emu_launcher run; };
struct gpu_cuda { char err[256]; };

static std::vector<emu_fn *> emu_fns;
static int launches;

#define A_PTR(T, i) ((T)(uintptr_t)(*(const uint64_t *)args[i]))
#define A_VAL(T, i) (*(const T *)args[i])

struct gemv_a {
    const unsigned int *wq; const unsigned short *ws; const float *x; float *y;
    int rows, k, lpr; const int *ids; const unsigned long long *wtab; int xg; long long xs, ys;
};
template <int B, int R> static void gemv_body(const void *p)
{
    const gemv_a *a = (const gemv_a *)p;
    gemv_w4g32<B, R>(a->wq, a->ws, a->x, a->y, a->rows, a->k, a->lpr, a->ids, a->wtab, a->xg, a->xs,
                     a->ys);
}
template <int B, int R> static void gemv_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    gemv_a a = { A_PTR(const unsigned int *, 0), A_PTR(const unsigned short *, 1),
                 A_PTR(const float *, 2), A_PTR(float *, 3), A_VAL(int, 4), A_VAL(int, 5),
                 A_VAL(int, 6), A_PTR(const int *, 7), A_PTR(const unsigned long long *, 8),
                 A_VAL(int, 9), A_VAL(long long, 10), A_VAL(long long, 11) };
    emu_run(gx, gy, (int)block, gemv_body<B, R>, &a, true, gz);
}

struct dense_a { const void *w; int type, rows, cols; const float *x; int n; float *y; };
static void dense_body(const void *p)
{
    const dense_a *a = (const dense_a *)p;
    dense_matmul(a->w, a->type, a->rows, a->cols, a->x, a->n, a->y);
}
static void dense_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    dense_a a = { A_PTR(const void *, 0), A_VAL(int, 1), A_VAL(int, 2), A_VAL(int, 3),
                  A_PTR(const float *, 4), A_VAL(int, 5), A_PTR(float *, 6) };
    emu_run(gx, gy, (int)block, dense_body, &a, true, gz);
}

struct route_a { const float *l; int n, e, top, renorm; int *ids; float *w; };
static void route_body(const void *p)
{
    const route_a *a = (const route_a *)p;
    moe_route(a->l, a->n, a->e, a->top, a->renorm, a->ids, a->w);
}
static void route_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    route_a a = { A_PTR(const float *, 0), A_VAL(int, 1), A_VAL(int, 2), A_VAL(int, 3),
                  A_VAL(int, 4), A_PTR(int *, 5), A_PTR(float *, 6) };
    emu_run(gx, gy, (int)block, route_body, &a, true, gz);
}

struct combine_a { const float *ys; const int *pos; const float *w; int top, h; float *out; int acc; };
static void combine_body(const void *p)
{
    const combine_a *a = (const combine_a *)p;
    moe_combine(a->ys, a->pos, a->w, a->top, a->h, a->out, a->acc);
}
static void combine_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    combine_a a = { A_PTR(const float *, 0), A_PTR(const int *, 1), A_PTR(const float *, 2),
                    A_VAL(int, 3), A_VAL(int, 4), A_PTR(float *, 5), A_VAL(int, 6) };
    emu_run(gx, gy, (int)block, combine_body, &a, false, gz);
}

struct ew_a { const float *p0, *p1, *p2; float *out; long long cnt; int n, cols; };
static void swiglu_body(const void *p)
{
    const ew_a *a = (const ew_a *)p;
    swiglu2(a->p0, a->p1, a->cnt, a->out);
}
static void swiglu_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    ew_a a = { A_PTR(const float *, 0), A_PTR(const float *, 1), nullptr, A_PTR(float *, 3),
               A_VAL(long long, 2), 0, 0 };
    emu_run(gx, gy, (int)block, swiglu_body, &a, false, gz);
}
static void add_sigmoid_body(const void *p)
{
    const ew_a *a = (const ew_a *)p;
    add_sigmoid_rows(a->out, a->p0, a->p1, a->n, a->cols);
}
static void add_sigmoid_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    ew_a a = { A_PTR(const float *, 1), A_PTR(const float *, 2), nullptr, A_PTR(float *, 0), 0,
               A_VAL(int, 3), A_VAL(int, 4) };
    emu_run(gx, gy, (int)block, add_sigmoid_body, &a, false, gz);
}

struct quant_a { const float *x; long long ld; const int *map; int m, k; signed char *xq; float *xd; };
static void quant_body(const void *p)
{
    const quant_a *a = (const quant_a *)p;
    quantize_q8g32(a->x, a->ld, a->map, a->m, a->k, a->xq, a->xd);
}
static void quant_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    quant_a a = { A_PTR(const float *, 0), A_VAL(long long, 1), A_PTR(const int *, 2),
                  A_VAL(int, 3), A_VAL(int, 4), A_PTR(signed char *, 5), A_PTR(float *, 6) };
    emu_run(gx, gy, (int)block, quant_body, &a, false, gz);
}

/* grouped (seg): grid.z is the expert */
struct mmq_a {
    const signed char *xq; const float *xd; const unsigned int *wq; const unsigned short *ws;
    float *y; int m, n, k; const int *seg; const unsigned long long *wtab;
};
typedef void (*mmq_fn)(const signed char *, const float *, const unsigned int *,
                       const unsigned short *, float *, int, int, int, const int *,
                       const unsigned long long *);
template <mmq_fn F> static void mmq_body(const void *p)
{
    const mmq_a *a = (const mmq_a *)p;
    F(a->xq, a->xd, a->wq, a->ws, a->y, a->m, a->n, a->k, a->seg, a->wtab);
}
template <mmq_fn F> static void mmq_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    mmq_a a = { A_PTR(const signed char *, 0), A_PTR(const float *, 1),
                A_PTR(const unsigned int *, 2), A_PTR(const unsigned short *, 3), A_PTR(float *, 4),
                A_VAL(int, 5), A_VAL(int, 6), A_VAL(int, 7), A_PTR(const int *, 8),
                A_PTR(const unsigned long long *, 9) };
    emu_run(gx, gy, (int)block, mmq_body<F>, &a, true, gz);
}

struct sort_a { const int *ids; int n, top, e; int *seg, *rowtok, *pos; };
static void sort_body(const void *p)
{
    const sort_a *a = (const sort_a *)p;
    moe_sort(a->ids, a->n, a->top, a->e, a->seg, a->rowtok, a->pos);
}
static void sort_run(void **args, unsigned gx, unsigned gy, unsigned gz, unsigned block)
{
    sort_a a = { A_PTR(const int *, 0), A_VAL(int, 1), A_VAL(int, 2), A_VAL(int, 3),
                 A_PTR(int *, 4), A_PTR(int *, 5), A_PTR(int *, 6) };
    emu_run(gx, gy, (int)block, sort_body, &a, true, gz);
}

static const struct { const char *name; emu_launcher run; } emu_table[] = {
    { "quantize_q8g32", quant_run }, { "moe_sort", sort_run },
    { "mmq_w4g32_32x64_w2x2", mmq_run<mmq_w4g32_32x64_w2x2> },
    { "mmq_w4g32_32x64_w2x2_kt", mmq_run<mmq_w4g32_32x64_w2x2_kt> },
    { "mmq_w4g32_128x64_w4x2", mmq_run<mmq_w4g32_128x64_w4x2> },
    { "mmq_w4g32_128x64_w4x2_kt", mmq_run<mmq_w4g32_128x64_w4x2_kt> },
    { "mmq_w4g32_128x128_w4x2", mmq_run<mmq_w4g32_128x128_w4x2> },
    { "gemv_w4g32_b1_r1", gemv_run<1, 1> }, { "gemv_w4g32_b2_r1", gemv_run<2, 1> },
    { "gemv_w4g32_b3_r1", gemv_run<3, 1> }, { "gemv_w4g32_b4_r1", gemv_run<4, 1> },
    { "gemv_w4g32_b5_r1", gemv_run<5, 1> }, { "gemv_w4g32_b6_r1", gemv_run<6, 1> },
    { "gemv_w4g32_b7_r1", gemv_run<7, 1> }, { "gemv_w4g32_b8_r1", gemv_run<8, 1> },
    { "gemv_w4g32_b1_r4", gemv_run<1, 4> }, { "gemv_w4g32_b8_r4", gemv_run<8, 4> },
    { "dense_matmul", dense_run }, { "moe_route", route_run }, { "moe_combine", combine_run },
    { "swiglu2", swiglu_run }, { "add_sigmoid_rows", add_sigmoid_run },
};

extern "C" {
int gpu_cuda_open(int, gpu_cuda **out, char *, size_t)
{
    *out = new gpu_cuda();
    return 0;
}
void gpu_cuda_close(gpu_cuda *d) { delete d; }
const char *gpu_cuda_last_error(const gpu_cuda *d) { return d->err; }
const char *gpu_cuda_describe(const gpu_cuda *) { return "CPU emulation (test-gpu-emu-backend)"; }
int gpu_cuda_sm_count(const gpu_cuda *) { return 1; }
int gpu_cuda_module_load(gpu_cuda *, const char *, gpu_cuda_module *out)
{
    *out = (void *)&emu_fns;
    return 0;
}
/* every name resolves; a launch of one without an emulation fails by name */
int gpu_cuda_function_get(gpu_cuda *, gpu_cuda_module, const char *name, gpu_cuda_function *out)
{
    emu_fn *f = new emu_fn();
    snprintf(f->name, sizeof(f->name), "%s", name);
    for (const auto &e : emu_table)
        if (!strcmp(e.name, name))
            f->run = e.run;
    emu_fns.push_back(f);
    *out = f;
    return 0;
}
/* Freed memory is poisoned (NaN) and never handed out again, so a stale
 * device address (an expert table that was not rebuilt) reads NaN. */
static std::vector<void *> emu_freed;
int gpu_cuda_mem_alloc(gpu_cuda *, size_t bytes, gpu_cuda_ptr *out)
{
    const size_t size = (bytes + 255) / 256 * 256 + 256;
    unsigned char *p = (unsigned char *)aligned_alloc(256, size);
    if (!p)
        return -ENOMEM;
    memset(p, 0xff, size);                       /* poisoned: NaN floats */
    memcpy(p, &size, sizeof(size));
    *out = (gpu_cuda_ptr)(uintptr_t)(p + 256);
    return 0;
}
void gpu_cuda_mem_free(gpu_cuda *, gpu_cuda_ptr ptr)
{
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)(uintptr_t)ptr - 256;
    size_t size;
    memcpy(&size, p, sizeof(size));
    memset(p + 256, 0xff, size - 256);
    emu_freed.push_back(p);
}
int gpu_cuda_mem_upload(gpu_cuda *, gpu_cuda_ptr dst, const void *src, size_t bytes)
{
    memcpy((void *)(uintptr_t)dst, src, bytes);
    return 0;
}
int gpu_cuda_mem_download(gpu_cuda *, void *dst, gpu_cuda_ptr src, size_t bytes)
{
    memcpy(dst, (const void *)(uintptr_t)src, bytes);
    return 0;
}
int gpu_cuda_mem_fill32(gpu_cuda *, gpu_cuda_ptr dst, uint32_t v, size_t count)
{
    for (size_t i = 0; i < count; i++)
        ((uint32_t *)(uintptr_t)dst)[i] = v;
    return 0;
}
int gpu_cuda_mem_zero(gpu_cuda *, gpu_cuda_ptr dst, size_t bytes)
{
    memset((void *)(uintptr_t)dst, 0, bytes);
    return 0;
}
int gpu_cuda_mem_copy(gpu_cuda *, gpu_cuda_ptr dst, gpu_cuda_ptr src, size_t bytes)
{
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
    return 0;
}
int gpu_cuda_launch(gpu_cuda *d, gpu_cuda_function fn, unsigned gx, unsigned gy, unsigned gz,
                    unsigned block, unsigned, void **args)
{
    emu_fn *f = (emu_fn *)fn;
    if (!f->run) {
        snprintf(d->err, sizeof(d->err), "kernel %s is not emulated by test-gpu-emu-backend", f->name);
        return -ENOSYS;
    }
    launches++;
    f->run(args, gx, gy, gz, block);
    return 0;
}
int gpu_cuda_sync(gpu_cuda *) { return 0; }
int gpu_cuda_timer_start(gpu_cuda *) { return -ENOSYS; }
int gpu_cuda_timer_stop(gpu_cuda *, float *) { return -ENOSYS; }
}

/* ---- the test ---- */

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t next()
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float rnd() { return (float)((double)(next() >> 11) * (2.0 / 9007199254740992.0) - 1.0); }

struct w4buf { std::vector<uint32_t> q; std::vector<uint16_t> s; };

static kb_weight make_w4(w4buf &b, int rows, int cols, float scale)
{
    b.q.resize((size_t)rows * cols / 8);
    b.s.resize((size_t)rows * cols / 32);
    for (auto &v : b.q)
        v = (uint32_t)next();
    for (auto &v : b.s)
        v = kb_f32_to_bf16(scale * (0.5f + 0.5f * std::fabs(rnd())));
    kb_weight w = {};
    w.type = KB_WTYPE_Q4G32;
    w.rows = rows;
    w.cols = cols;
    w.data = b.q.data();
    w.scales = b.s.data();
    w.scale_type = KB_WTYPE_BF16;
    return w;
}

static kb_weight make_bf16(std::vector<uint16_t> &b, int rows, int cols, float scale)
{
    b.resize((size_t)rows * cols);
    for (auto &v : b)
        v = kb_f32_to_bf16(scale * rnd());
    kb_weight w = {};
    w.type = KB_WTYPE_BF16;
    w.rows = rows;
    w.cols = cols;
    w.data = b.data();
    return w;
}

static void die(const char *what, kb_backend *be)
{
    fprintf(stderr, "test-gpu-emu-backend: %s: %s\n", what, be && be->ops->last_error ? be->ops->last_error(be) : "");
    exit(2);
}

int main()
{
    enum { E = 16, TOP = 4, H = 256, I = 128, SI = 128 };
    kb_backend *ref = nullptr, *gpu = nullptr;
    kb_cpu_params cp = {};
    cp.n_threads = 1;
    if (kb_cpu_ref_create(&cp, &ref))
        die("cannot create the CPU reference backend", nullptr);
    kb_gpu_params gp = {};
    gp.kernel_dir = ".";
    if (kb_cuda_create(&gp, &gpu)) {
        fprintf(stderr, "test-gpu-emu-backend: kb_cuda_create: %s\n", kb_cuda_create_error());
        return 2;
    }
    std::vector<w4buf> bufs(3 * E + 3);
    std::vector<kb_weight> gate(E), up(E), down(E);
    for (int e = 0; e < E; e++) {
        gate[e] = make_w4(bufs[3 * e], I, H, 0.02f);
        up[e] = make_w4(bufs[3 * e + 1], I, H, 0.02f);
        down[e] = make_w4(bufs[3 * e + 2], H, I, 0.02f);
    }
    kb_weight sg = make_w4(bufs[3 * E], SI, H, 0.02f), su = make_w4(bufs[3 * E + 1], SI, H, 0.02f);
    kb_weight sd = make_w4(bufs[3 * E + 2], H, SI, 0.02f);
    std::vector<uint16_t> rb, gb;
    kb_weight router = make_bf16(rb, E, H, 0.2f), seg = make_bf16(gb, 1, H, 0.2f);
    kb_moe m = {};
    m.n_experts = E;
    m.top_k = TOP;
    m.hidden = H;
    m.inter = I;
    m.shared_inter = SI;
    m.norm_topk = true;
    m.router = &router;
    m.gate = gate.data();
    m.up = up.data();
    m.down = down.data();
    m.shared_gate = &sg;
    m.shared_up = &su;
    m.shared_down = &sd;
    m.shared_expert_gate = &seg;
    std::vector<kb_weight *> all = { &router, &sg, &su, &sd, &seg };
    for (int e = 0; e < E; e++) {
        all.push_back(&gate[e]);
        all.push_back(&up[e]);
        all.push_back(&down[e]);
    }
    int failures = 0, checks = 0;
    for (int round = 0; round < 2; round++) {
        /* round 1: every weight released and prepared again, i.e. new
         * device addresses behind the same kb_moe: the table is rebuilt */
        for (kb_weight *w : all) {
            if (round)
                gpu->ops->weight_release(gpu, w);
            if (gpu->ops->weight_prepare(gpu, w))
                die("weight_prepare", gpu);
        }
        for (int n : { 1, 3, 8, 9, 37 }) {
            /* n <= 8: GEMV path, fp32 activations; n > 8: grouped int8 MMQ
             * (activations rounded to int8 per 32-group: rel. L2 ~1e-2 on
             * random data, the tolerance of test-gpu-backend's int8 path) */
            const double tol = n <= 8 ? 4e-3 : 3e-2;
            std::vector<float> x((size_t)n * H), want((size_t)n * H), got((size_t)n * H);
            for (auto &v : x)
                v = rnd();
            if (ref->ops->moe(ref, &m, x.data(), n, want.data()))
                die("reference moe", ref);
            float *dx = (float *)gpu->ops->alloc(gpu, x.size() * 4);
            float *dy = (float *)gpu->ops->alloc(gpu, x.size() * 4);
            if (!dx || !dy || gpu->ops->upload(gpu, dx, x.data(), x.size() * 4))
                die("device memory", gpu);
            launches = 0;
            if (gpu->ops->moe(gpu, &m, dx, n, dy))
                die("moe on the emulated device", gpu);
            if (gpu->ops->download(gpu, got.data(), dy, got.size() * 4))
                die("download", gpu);
            double num = 0, den = 0;
            for (size_t i = 0; i < got.size(); i++) {
                double d = (double)got[i] - want[i];
                num += d * d;
                den += (double)want[i] * want[i];
            }
            double rel = std::isfinite(num) && den > 0 ? std::sqrt(num / den) : INFINITY;
            bool ok = rel <= tol;
            checks++;
            failures += !ok;
            printf("%s moe on the device (%s), round %d, n %2d: rel L2 %.3g (<= %.0e), %d launches\n",
                   ok ? "ok  " : "FAIL", n <= 8 ? "GEMV" : "grouped MMQ", round, n, rel, tol,
                   launches);
            gpu->ops->free(gpu, dx);
            gpu->ops->free(gpu, dy);
        }
    }
    for (kb_weight *w : all)
        gpu->ops->weight_release(gpu, w);
    gpu->ops->destroy(gpu);
    ref->ops->destroy(ref);
    for (emu_fn *f : emu_fns)
        delete f;
    for (void *p : emu_freed)
        free(p);
    emu_pool_stop();
    printf("RESULT: %d/%d checks passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
