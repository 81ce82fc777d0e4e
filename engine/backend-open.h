/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Choosing and opening the compute backend by name, for every program that
 * runs the engine (residentd, resident-engine): one place knows which
 * backends this build has, where the GPU code objects live and how "auto"
 * decides.
 *
 *   cpu-ref    the scalar reference kernels (the oracle)
 *   cpu        the fast CPU backend (AVX-512 VNNI kernels where the CPU has them)
 *   cpu-exact  the fast CPU backend with fp32 activations (checks)
 *   cuda       NVIDIA through the CUDA driver API, NAME.sm_90.cubin files
 *   hip        AMD through the HIP module API, NAME.gfx1151.hsaco files
 *   auto       the first usable GPU (cuda, then hip, where built: a driver, a
 *              device and the code objects present), else the fast CPU
 *              backend; `fallback` then says why no GPU was taken
 *
 * The CPU backends are made by model_load() from model_params.backend; the
 * GPU ones here, handed over as model_params.backend_instance (model_load
 * does not own them: engine_backend_close() after model_free()).
 */
#ifndef RESIDENT_ENGINE_BACKEND_OPEN_H
#define RESIDENT_ENGINE_BACKEND_OPEN_H

#include <stdint.h>

#include "engine/error.h"

struct kb_backend;

struct engine_backend_params {
    const char *name;                    /* see above; NULL = "auto"           */
    const char *kernel_dir;              /* GPU code objects; NULL or "" =
                                            engine_backend_default_kernel_dir() */
    int32_t     device;                  /* GPU ordinal, 0 = first             */
};

struct engine_backend {
    struct kb_backend *gpu;              /* NULL for the CPU backends          */
    char name[16];                       /* for model_params.backend: cpu-ref,
                                            cpu, cpu-exact, cuda or hip        */
    char device[160];                    /* GPU: "NVIDIA H200, sm_90, ..."     */
    char kernel_dir[512];                /* GPU: where the code objects came from */
    char fallback[1024];                 /* auto on the CPU: why no GPU        */
};

/**
 * engine_backend_default_kernel_dir() - where meson installs the code objects
 *
 * Return: the compiled-in folder (PREFIX/LIBDIR/resident/gpu).
 */
const char *engine_backend_default_kernel_dir(void);

/**
 * engine_backend_available() - the backend names this build knows
 *
 * Return: e.g. "auto, cpu, cpu-ref, cpu-exact, cuda, hip".
 */
const char *engine_backend_available(void);

/**
 * engine_backend_open() - resolve a backend name and open a GPU backend
 * @p: name, kernel folder, device
 * @out: filled on success; pass to engine_backend_close() when done
 * @err: on failure, what is missing and how to fix it
 *
 * Return: 0; -EINVAL unknown name; -ENOTSUP a GPU backend this build lacks;
 * -ENODEV no driver or device; -ENOENT the kernel folder or a code object
 * missing; other -errno from the device layer (e.g. a code object built for
 * another GPU). "auto" never fails for lack of a GPU: it falls back to cpu.
 */
int engine_backend_open(const struct engine_backend_params *p, struct engine_backend *out,
                        struct engine_error *err);

/**
 * engine_backend_close() - free a GPU backend opened by engine_backend_open()
 * @b: the result; call after model_free() of every model using it. Idempotent.
 */
void engine_backend_close(struct engine_backend *b);

#endif
