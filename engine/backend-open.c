/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Backend choice by name (engine/backend-open.h). The GPU backends are
 * optional parts of the build (RESIDENT_HAVE_CUDA / RESIDENT_HAVE_HIP, set
 * where kernels/gpu/meson.build built their libraries), so every GPU path
 * here is conditional and a name the build lacks says how to get it.
 *
 * Before asking the driver for a device the code objects are looked for in
 * the kernel folder: a missing folder is the most likely mistake of an
 * installation, and the device layer's own message ("cannot open FILE")
 * does not say which setting to change. The device is still opened when
 * the files are missing, because "no driver" is the more basic problem
 * and is the one the message names.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/backend-open.h"
#include "kernels/backend.h"
#include "kernels/cuda/gpu-backend.h"

#ifndef RESIDENT_GPU_KERNEL_DIR
#define RESIDENT_GPU_KERNEL_DIR "/usr/local/lib/resident/gpu"
#endif

/* The modules kernels/cuda/gpu-backend.c loads (gb_load); one missing file
 * there would fail the create with a less helpful message. */
/* Messages here are truncated, never overflowed: vsnprintf keeps GCC's
 * truncation warnings (which cannot know the path lengths) quiet. */
__attribute__((format(printf, 3, 4)))
static void say(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static const char *const gpu_modules[] = { "gemv-w4", "mmq-w4", "moe", "norm", "gdn", "attn", "misc" };

const char *engine_backend_default_kernel_dir(void)
{
    return RESIDENT_GPU_KERNEL_DIR;
}

const char *engine_backend_available(void)
{
    return "auto, cpu, cpu-ref, cpu-exact"
#ifdef RESIDENT_HAVE_CUDA
           ", cuda"
#endif
#ifdef RESIDENT_HAVE_HIP
           ", hip"
#endif
        ;
}

/* 0 when every code object of `suffix` is readable in dir; else -ENOENT
 * and the reason in why. */
static int gpu_files_check(const char *dir, const char *suffix, char *why, size_t len)
{
    struct stat st;
    errno = 0;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        say(why, len, "kernel folder %s: %s; set kernel_dir (residentd) or --kernel-dir "
                 "(resident-engine) to the folder with the NAME.%s files (ninja installs them in "
                 "%s; a build tree has them in BUILD/kernels/gpu)", dir,
                 errno ? strerror(errno) : "not a directory", suffix, RESIDENT_GPU_KERNEL_DIR);
        return -ENOENT;
    }
    for (size_t i = 0; i < sizeof(gpu_modules) / sizeof(gpu_modules[0]); i++) {
        char path[1024];
        int n = snprintf(path, sizeof(path), "%s/%s.%s", dir, gpu_modules[i], suffix);
        if (n < 0 || (size_t)n >= sizeof(path)) {
            say(why, len, "kernel folder %s: path longer than %zu bytes", dir, sizeof(path) - 1);
            return -ENAMETOOLONG;
        }
        if (access(path, R_OK) != 0) {
            int e = errno;
            say(why, len, "code object %s: %s; build it (meson with %s, target gpu-%s-*) or "
                     "point kernel_dir / --kernel-dir at a folder that has all %zu", path,
                     strerror(e), strstr(suffix, "cubin") ? "-Dgpu_cuda=enabled and nvcc" :
                     "-Dgpu_hip=enabled, clang-19 and lld-19", gpu_modules[i],
                     sizeof(gpu_modules) / sizeof(gpu_modules[0]));
            return -ENOENT;
        }
    }
    return 0;
}

/* Open the named GPU backend into out; why gets the reason of a failure. */
static int gpu_open(const char *vendor, const char *dir, int32_t device, struct engine_backend *out,
                    char *why, size_t len)
{
    const bool cuda = !strcmp(vendor, "cuda");
    char files_why[640] = "";
    int files_rc = gpu_files_check(dir, cuda ? "sm_90.cubin" : "gfx1151.hsaco", files_why,
                                   sizeof(files_why));
    struct kb_gpu_params gp = { .device = device, .kernel_dir = dir };
    struct kb_backend *be = NULL;
    int rc = -ENOTSUP;
    const char *create_why = NULL, *desc = "";
    if (cuda) {
#ifdef RESIDENT_HAVE_CUDA
        if ((rc = kb_cuda_create(&gp, &be)))
            create_why = kb_cuda_create_error();
        else
            desc = kb_cuda_describe(be);
#else
        say(why, len, "this build has no cuda backend (meson found no cuda.h: install the "
                 "CUDA toolkit in /usr/local/cuda and reconfigure with -Dgpu_cuda=enabled)");
        return -ENOTSUP;
#endif
    } else {
#ifdef RESIDENT_HAVE_HIP
        if ((rc = kb_hip_create(&gp, &be)))
            create_why = kb_hip_create_error();
        else
            desc = kb_hip_describe(be);
#else
        say(why, len, "this build has no hip backend (meson found no libamdhip64: apt-get "
                 "install libamdhip64-dev clang-19 lld-19, reconfigure with -Dgpu_hip=enabled)");
        return -ENOTSUP;
#endif
    }
    if (rc == -ENODEV) {
        /* no driver or device: the basic problem, named first */
        say(why, len, "%s", create_why ? create_why : "no device");
        return rc;
    }
    if (files_rc) {
        say(why, len, "%s", files_why);
        return files_rc;
    }
    if (rc) {
        say(why, len, "%s (code objects from %s)", create_why ? create_why : "create failed", dir);
        return rc;
    }
    out->gpu = be;
    say(out->name, sizeof(out->name), "%s", vendor);
    say(out->device, sizeof(out->device), "%s", desc ? desc : "");
    say(out->kernel_dir, sizeof(out->kernel_dir), "%s", dir);
    return 0;
}

int engine_backend_open(const struct engine_backend_params *p, struct engine_backend *out,
                        struct engine_error *err)
{
    memset(out, 0, sizeof(*out));
    const char *name = p && p->name && p->name[0] ? p->name : "auto";
    const char *dir = p && p->kernel_dir && p->kernel_dir[0] ? p->kernel_dir : RESIDENT_GPU_KERNEL_DIR;
    const int32_t device = p ? p->device : 0;
    if (device < 0)
        return engine_error_set(err, -EINVAL, "GPU device %d: must be 0 or more", (int)device);

    if (!strcmp(name, "cpu-ref") || !strcmp(name, "cpu") || !strcmp(name, "cpu-exact")) {
        say(out->name, sizeof(out->name), "%s", name);
        return 0;                        /* model_load() makes these */
    }
    char why[1024];
    if (!strcmp(name, "cuda") || !strcmp(name, "hip")) {
        int rc = gpu_open(name, dir, device, out, why, sizeof(why));
        if (rc)
            return engine_error_set(err, rc, "cannot use the %s backend: %s", name, why);
        return 0;
    }
    if (strcmp(name, "auto"))
        return engine_error_set(err, -EINVAL, "unknown backend '%s' (this build has: %s)", name,
                                engine_backend_available());

    /* auto: the GPUs this build knows, in order, then the fast CPU. */
    size_t used = 0;
    static const char *const gpus[] = {
#ifdef RESIDENT_HAVE_CUDA
        "cuda",
#endif
#ifdef RESIDENT_HAVE_HIP
        "hip",
#endif
        NULL,
    };
    for (size_t i = 0; gpus[i]; i++) {
        if (!gpu_open(gpus[i], dir, device, out, why, sizeof(why)))
            return 0;
        int n = snprintf(out->fallback + used, sizeof(out->fallback) - used, "%s%s", used ? "; " : "", why);
        if (n > 0)
            used = used + (size_t)n < sizeof(out->fallback) ? used + (size_t)n : sizeof(out->fallback) - 1;
    }
    if (!used)
        say(out->fallback, sizeof(out->fallback), "this build has no GPU backend (meson found "
                 "neither cuda.h nor libamdhip64)");
    say(out->name, sizeof(out->name), "cpu");
    return 0;
}

void engine_backend_close(struct engine_backend *b)
{
    if (b && b->gpu) {
        b->gpu->ops->destroy(b->gpu);
        b->gpu = NULL;
    }
}
