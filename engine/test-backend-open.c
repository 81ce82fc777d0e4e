/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine_backend_open() by name (engine/backend-open.h): the CPU names
 * resolve without a GPU backend, unknown names and negative devices are
 * refused naming what this build has, a GPU name this machine cannot run
 * fails with a reason and its fix, and "auto" never fails: without a usable
 * GPU it is the fast CPU backend with the reasons in `fallback`. Where a GPU
 * does open, the GPU half checks the device description instead.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "engine/backend-open.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); \
                                  failures++; } } while (0)

int main(void)
{
    struct engine_backend b;
    struct engine_error e = { 0 };
    static const char *const cpu[] = { "cpu-ref", "cpu", "cpu-exact" };
    for (int i = 0; i < 3; i++) {
        struct engine_backend_params p = { .name = cpu[i] };
        CHECK(engine_backend_open(&p, &b, &e) == 0 && !b.gpu && !strcmp(b.name, cpu[i]) && !b.fallback[0]);
        engine_backend_close(&b);
    }

    struct engine_backend_params bad = { .name = "vulkan" };
    engine_error_clear(&e);
    CHECK(engine_backend_open(&bad, &b, &e) == -EINVAL && strstr(e.msg, "unknown backend 'vulkan'") &&
          strstr(e.msg, engine_backend_available()));
    struct engine_backend_params neg = { .name = "auto", .device = -1 };
    engine_error_clear(&e);
    CHECK(engine_backend_open(&neg, &b, &e) == -EINVAL && strstr(e.msg, "device -1"));
    CHECK(engine_backend_default_kernel_dir()[0] == '/' &&
          strstr(engine_backend_default_kernel_dir(), "/resident/gpu"));

    /* A missing kernel folder: a GPU name fails whatever the machine has
     * (no driver, no build support, or the folder itself). */
    static const char *const gpus[] = { "cuda", "hip" };
    for (int i = 0; i < 2; i++) {
        struct engine_backend_params p = { .name = gpus[i], .kernel_dir = "/nonexistent/resident-gpu" };
        engine_error_clear(&e);
        int rc = engine_backend_open(&p, &b, &e);
        CHECK(rc < 0 && !b.gpu);
        CHECK(strstr(e.msg, "cannot use the") && strstr(e.msg, gpus[i]));
        CHECK(rc == -ENODEV || rc == -ENOTSUP || (rc == -ENOENT && strstr(e.msg, "/nonexistent/resident-gpu")));
        printf("%s: %d, %s\n", gpus[i], rc, e.msg);
    }

    /* auto with that folder: always the fast CPU, with every reason. */
    struct engine_backend_params a = { .name = NULL, .kernel_dir = "/nonexistent/resident-gpu" };
    engine_error_clear(&e);
    CHECK(engine_backend_open(&a, &b, &e) == 0 && !b.gpu && !strcmp(b.name, "cpu") && b.fallback[0]);
    printf("auto: %s (%s)\n", b.name, b.fallback);
    engine_backend_close(&b);
    engine_backend_close(&b);                /* idempotent */

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("engine_backend_open: names, refusals, auto fallback: ok\n");
    return 0;
}
