/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The GPU backend's MoE block (kernels/cuda/gpu-backend.c: routing on the
 * device, experts found through the address table, no host round trip)
 * EXECUTED on the CPU: gpu-backend.c is linked, unchanged, against the fake
 * device layer of kernels/gpu/emu-device.cc (host memory; launches run the
 * kernel sources under the CPU emulation of compat.h, kernels/gpu/emu.h).
 * The whole MoE block is compared with the scalar CPU reference's. (The
 * other ops run the same way in gpu-emu-backend-ops: test-gpu-backend.c
 * against this fake device.)
 *
 * What this proves: the backend's launch sequences, argument lists, grid
 * sizes, scratch sizes and the expert table as written, including its
 * rebuild when the weights are prepared again at new addresses (freed
 * device memory is poisoned and never reused by the fake, so a stale table
 * reads NaN). What it cannot: anything about a real device
 * (tools/gpu/check).
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
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

extern "C" {
#include "kernels/backend.h"
#include "kernels/cpu/ref.h"
#include "kernels/cuda/gpu-backend.h"
}

#include "kernels/gpu/emu-device.h"

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
            emu_device_launches = 0;
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
                   emu_device_launches);
            gpu->ops->free(gpu, dx);
            gpu->ops->free(gpu, dy);
        }
    }
    for (kb_weight *w : all)
        gpu->ops->weight_release(gpu, w);
    gpu->ops->destroy(gpu);
    ref->ops->destroy(ref);
    emu_device_shutdown();
    printf("RESULT: %d/%d checks passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
