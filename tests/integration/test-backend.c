/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd's backend choice (config keys backend / kernel_dir; the engine's
 * engine/backend-open.c), on the bundled model (tests/data/default-model):
 *
 *   test-it-backend errors   backend = cuda and backend = hip with a kernel
 *                            folder that does not exist refuse to start, and
 *                            the log says what is missing (the driver, this
 *                            build's support, or the folder) and how to fix
 *                            it; backend = auto with that folder starts on
 *                            the fast CPU backend and logs why no GPU.
 *                            Holds on any machine, with or without a GPU.
 *   test-it-backend gpu NAME DIR
 *                            (suite gpu) residentd with backend = NAME
 *                            (cuda or hip), kernel_dir = DIR: the log names
 *                            the GPU, and a greedy reply equals the offline
 *                            `resident-engine generate --backend NAME`
 *                            token for token. Skips (77) where the engine
 *                            cannot open that GPU (no driver, no device).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "engine/backend-open.h"
#include "engine/text/tokenizer.h"
#include "tests/integration/harness.h"

#define N_PROMPT 24
#define N_NEW    16

static char model_dir[512], engine_exe[512];

/* The daemon's log (up to 64 KiB), NUL-terminated, into buf. */
static void read_log(const struct th_daemon *d, char *buf, size_t len)
{
    buf[0] = '\0';
    int fd = open(d->log, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t k = read(fd, buf, len - 1);
    buf[k > 0 ? k : 0] = '\0';
    close(fd);
}

/* The socket accepts connections while the model loads, so "started" is
 * not "ready": wait for the daemon's "ready" line (1) or its exit (0, the
 * status in *status; d->pid is then reaped). -1 after timeout_ms. */
static int wait_ready(struct th_daemon *d, int timeout_ms, int *status)
{
    static char log[65536];
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    while (th_now_ms() < end) {
        read_log(d, log, sizeof(log));
        if (strstr(log, "residentd: ready"))
            return 1;
        if (d->pid > 0 && waitpid(d->pid, status, WNOHANG) == d->pid) {
            d->pid = 0;
            return 0;
        }
        usleep(20000);
    }
    return -1;
}

static int has(const char *log, const char *what)
{
    if (strstr(log, what))
        return 1;
    fprintf(stderr, "the log lacks \"%s\":\n%s\n", what, log);
    return 0;
}

/* backend = NAME with a missing kernel folder must not start. */
static void check_refused(const char *name)
{
    static char log[65536];
    struct th_daemon d = { 0 };
    char opt_model[600], opt_backend[64];
    snprintf(opt_model, sizeof(opt_model), "model=%s", model_dir);
    snprintf(opt_backend, sizeof(opt_backend), "backend=%s", name);
    const char *opts[] = { "generator=engine", opt_model, opt_backend,
                           "kernel_dir=/nonexistent/resident-gpu", "memlock=off", NULL };
    int status = 0, rc = th_daemon_start(&d, opts);
    if (rc == 0) {
        rc = wait_ready(&d, 60000, &status);
        TH_CHECK(rc == 0);               /* exited before ready */
        TH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
        if (rc != 0)
            th_daemon_stop(&d, 5000);
    }
    read_log(&d, log, sizeof(log));
    char want[128];
    snprintf(want, sizeof(want), "backend = %s (config key backend, --backend): cannot use the %s backend: ",
             name, name);
    TH_CHECK(has(log, want));
    TH_CHECK(has(log, "or choose backend = auto or cpu"));
    /* what is missing, one of: the driver / runtime device, this build's
     * support, the folder (a machine with the GPU); each with its fix */
    const int cuda = !strcmp(name, "cuda");
    int why = strstr(log, cuda ? "no NVIDIA driver" : "reports no GPU") ||
              strstr(log, "this build has no") ||
              strstr(log, "kernel folder /nonexistent/resident-gpu: No such file or directory; set kernel_dir");
    if (!why)
        fprintf(stderr, "no reason in the log:\n%s\n", log);
    TH_CHECK(why);
    TH_CHECK(strstr(log, cuda ? "install the" : "ROCm") || strstr(log, "reconfigure") ||
             strstr(log, "set kernel_dir"));
    printf("backend = %s refused: ok\n", name);
}

/* backend = auto with a missing kernel folder: the fast CPU, and why. */
static void check_auto_fallback(void)
{
    static char log[65536];
    struct th_daemon d = { 0 };
    char opt_model[600];
    snprintf(opt_model, sizeof(opt_model), "model=%s", model_dir);
    const char *opts[] = { "generator=engine", opt_model, "backend=auto", "threads=1",
                           "kernel_dir=/nonexistent/resident-gpu", "memlock=off", NULL };
    if (th_daemon_start(&d, opts) < 0) {
        read_log(&d, log, sizeof(log));
        fprintf(stderr, "backend = auto did not start:\n%s\n", log);
        th_failures++;
        return;
    }
    int status = 0;
    TH_CHECK(wait_ready(&d, 60000, &status) == 1);
    TH_CHECK(th_daemon_alive(&d));
    read_log(&d, log, sizeof(log));      /* stopping removes the folder */
    TH_CHECK(th_daemon_stop(&d, 10000) == 0);
    TH_CHECK(has(log, "backend auto: no usable GPU, using the fast CPU backend: "));
    TH_CHECK(has(log, ", backend cpu with "));
    printf("backend = auto without a GPU: the fast CPU backend, reason logged: ok\n");
}

/* Offline greedy ids: resident-engine generate on backend NAME. */
static int offline(const char *name, const char *dir, const uint32_t *ids, size_t n, size_t real_vocab,
                   int32_t im_end, uint32_t *out, uint32_t *n_out)
{
    char cmd[4096];
    int k = snprintf(cmd, sizeof(cmd), "'%s' generate --model '%s' --backend %s --kernel-dir '%s' "
                     "--real-vocab %zu --stop %d -n %d --ids ", engine_exe, model_dir, name, dir,
                     real_vocab, (int)im_end, N_NEW);
    for (size_t i = 0; i < n && k > 0 && (size_t)k < sizeof(cmd) - 16; i++)
        k += snprintf(cmd + k, sizeof(cmd) - (size_t)k, "%s%u", i ? "," : "", ids[i]);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -errno;
    *n_out = 0;
    unsigned v;
    while (*n_out < N_NEW + 1 && fscanf(p, "%u", &v) == 1) {
        out[(*n_out)++] = v;
        if (fgetc(p) != ',')
            break;
    }
    return pclose(p) == 0 && *n_out > 0 ? 0 : -EIO;
}

static int check_gpu(const char *name, const char *dir)
{
    /* The engine's own opener decides whether this machine can run it. */
    struct engine_backend be;
    struct engine_error e = { 0 };
    const struct engine_backend_params bp = { .name = name, .kernel_dir = dir, .device = 0 };
    int rc = engine_backend_open(&bp, &be, &e);
    if (rc == -ENODEV || rc == -ENOTSUP) {
        printf("SKIP: %s\n", e.msg);
        return 77;
    }
    if (rc) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    printf("device: %s\n", be.device);
    engine_backend_close(&be);

    struct tokenizer *tok = NULL;
    if (tokenizer_load(model_dir, &tok, &e) < 0) {
        printf("SKIP: no bundled model at %s: %s\n", model_dir, e.msg);
        return 77;
    }
    size_t real_vocab = tokenizer_token_count(tok);
    int32_t im_end = tokenizer_token_to_id(tok, "<|im_end|>");
    tokenizer_free(tok);

    uint32_t prompt[N_PROMPT], want[N_NEW + 1], n_want = 0;
    for (size_t i = 0; i < N_PROMPT; i++)
        prompt[i] = (uint32_t)((i * 7919u + 17u) % 150000u) + 10u;
    if (offline(name, dir, prompt, N_PROMPT, real_vocab, im_end, want, &n_want) < 0) {
        fprintf(stderr, "offline resident-engine generate --backend %s failed\n", name);
        return 1;
    }

    struct th_daemon d = { 0 };
    char opt_model[600], opt_backend[64], opt_dir[600];
    snprintf(opt_model, sizeof(opt_model), "model=%s", model_dir);
    snprintf(opt_backend, sizeof(opt_backend), "backend=%s", name);
    snprintf(opt_dir, sizeof(opt_dir), "kernel_dir=%s", dir);
    const char *opts[] = { "generator=engine", opt_model, opt_backend, opt_dir, "memlock=off", NULL };
    if (th_daemon_start(&d, opts) < 0) {
        fprintf(stderr, "residentd did not start with backend = %s\n", name);
        return 1;
    }
    int status = 0;
    if (wait_ready(&d, 120000, &status) != 1) {
        static char early[65536];
        read_log(&d, early, sizeof(early));
        fprintf(stderr, "residentd with backend = %s did not get ready:\n%s\n", name, early);
        th_daemon_stop(&d, 5000);
        return 1;
    }
    struct resident *r = th_connect(d.sock, "it-backend-gpu", 0);
    TH_CHECK(r != NULL);
    uint32_t got[N_NEW + 1], n_got = 0;
    int done = 0;
    if (r) {
        struct resident_request q;
        resident_request_init(&q);
        q.max_tokens = N_NEW;
        q.temperature = 0.0f;
        uint64_t id;
        TH_CHECK(resident_submit_ids(r, &q, prompt, N_PROMPT, &id) == 0);
        uint64_t end = th_now_ms() + 120000;
        struct resident_event ev;
        while (!done && th_now_ms() < end) {
            int w = resident_wait(r, &ev, 1000);
            if (w < 0)
                break;
            if (w == 0 || ev.id != id)
                continue;
            if (ev.type == RESIDENT_EVENT_TOKENS) {
                for (uint32_t i = 0; i < ev.n_tokens && n_got < N_NEW + 1; i++)
                    got[n_got++] = ev.tokens[i];
            } else if (ev.type != RESIDENT_EVENT_QUEUED) {
                done = 1;
                if (ev.error)
                    fprintf(stderr, "request failed: %d %s\n", ev.error, ev.message);
                TH_CHECK(ev.error == 0);
            }
        }
        resident_close(r);
    }
    TH_CHECK(done);
    int same = n_got == n_want && !memcmp(got, want, n_want * sizeof(uint32_t));
    if (!same) {
        fprintf(stderr, "daemon %u ids vs offline %u:\n", n_got, n_want);
        for (uint32_t i = 0; i < n_got || i < n_want; i++)
            fprintf(stderr, "  %u: %d %d\n", i, i < n_got ? (int)got[i] : -1, i < n_want ? (int)want[i] : -1);
    }
    TH_CHECK(same);
    TH_CHECK(th_daemon_alive(&d));
    static char log[65536];
    read_log(&d, log, sizeof(log));      /* stopping removes the folder */
    TH_CHECK(th_daemon_stop(&d, 10000) == 0);
    char on[64];
    snprintf(on, sizeof(on), ", backend %s on ", name);
    TH_CHECK(has(log, on));
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed; daemon log:\n%s\n", th_failures, log);
        return 1;
    }
    printf("residentd backend = %s: greedy reply equals resident-engine generate --backend %s "
           "(%u tokens): ok\n", name, name, n_got);
    return 0;
}

int main(int argc, char **argv)
{
    const char *src = getenv("RESIDENT_SOURCE_ROOT"), *build = getenv("RESIDENT_BUILD_ROOT");
    snprintf(model_dir, sizeof(model_dir), "%s/tests/data/default-model", src ? src : ".");
    snprintf(engine_exe, sizeof(engine_exe), "%s/engine/resident-engine", build ? build : ".");
    const int gpu = argc == 4 && !strcmp(argv[1], "gpu");
    if (!gpu && !(argc == 2 && !strcmp(argv[1], "errors"))) {
        fprintf(stderr, "usage: test-it-backend errors | gpu cuda|hip KERNEL_DIR\n");
        return 2;
    }
    if (access(model_dir, R_OK) != 0) {
        printf("SKIP: no bundled model at %s\n", model_dir);
        return 77;
    }
    th_require_uring();
    if (gpu)
        return check_gpu(argv[2], argv[3]);
    check_refused("cuda");
    check_refused("hip");
    check_auto_fallback();
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed\n", th_failures);
        return 1;
    }
    return 0;
}
