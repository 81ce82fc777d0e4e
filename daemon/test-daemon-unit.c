/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for daemon/: configuration parsing and the null generator. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/config.h"
#include "daemon/gen.h"

static int failures;
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); failures++; } } while (0)

static void test_config(void)
{
    struct daemon_config c;
    char err[512];
    daemon_config_defaults(&c);
    CHECK(c.max_new_tokens == 4096 && c.socket_mode == 0660 && c.n_allow_uids == 1);
    CHECK(daemon_config_set(&c, "max_batch", "8", err, sizeof(err)) == 0 && c.max_batch == 8);
    CHECK(daemon_config_set(&c, "max_batch", "0", err, sizeof(err)) == -EINVAL && strstr(err, "max_batch"));
    CHECK(daemon_config_set(&c, "max_batch", "12x", err, sizeof(err)) == -EINVAL);
    CHECK(daemon_config_set(&c, "max_batch", "-1", err, sizeof(err)) == -EINVAL);
    CHECK(daemon_config_set(&c, "nope", "1", err, sizeof(err)) == -EINVAL && strstr(err, "nope"));
    CHECK(daemon_config_set(&c, "allow_uids", "0, 1000,65534", err, sizeof(err)) == 0 && c.n_allow_uids == 3 &&
          c.allow_uids[2] == 65534);
    CHECK(daemon_config_set(&c, "allow_gids", "abc", err, sizeof(err)) == -EINVAL);
    CHECK(daemon_config_set(&c, "socket_mode", "0666", err, sizeof(err)) == 0 && c.socket_mode == 0666);
    CHECK(daemon_config_set(&c, "socket_mode", "0999", err, sizeof(err)) == -EINVAL);
    CHECK(daemon_config_set(&c, "socket_group", "resident", err, sizeof(err)) == 0 &&
          strcmp(c.socket_group, "resident") == 0);

    char path[] = "/tmp/residentd-conf-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *txt = "# comment\n  max_new_tokens = 77  # trailing\n\nsocket=/tmp/x.sock\n";
    CHECK(write(fd, txt, strlen(txt)) == (ssize_t)strlen(txt));
    close(fd);
    CHECK(daemon_config_load(&c, path, 1, err, sizeof(err)) == 0 && c.max_new_tokens == 77 &&
          strcmp(c.socket, "/tmp/x.sock") == 0);
    FILE *f = fopen(path, "w");
    fputs("max_new_tokens = 5\nbogus line\n", f);
    fclose(f);
    CHECK(daemon_config_load(&c, path, 1, err, sizeof(err)) == -EINVAL && strstr(err, ":2:"));
    unlink(path);
    CHECK(daemon_config_load(&c, path, 0, err, sizeof(err)) == 0);
    CHECK(daemon_config_load(&c, path, 1, err, sizeof(err)) == -ENOENT);
}

/* The per-uid token totals: documented defaults, range checks, and a
 * SIGHUP reload takes them over live (no restart named). */
static void test_quota_keys(void)
{
    struct daemon_config cur, next;
    char err[512], restart[256];
    daemon_config_defaults(&cur);
    CHECK(cur.max_prompt_tokens_per_uid == 131072 && cur.max_new_tokens_per_uid == 262144);
    /* the default reservation of max_inflight_per_uid default-sized requests fits */
    CHECK((uint64_t)cur.max_inflight_per_uid * cur.max_new_tokens <= cur.max_new_tokens_per_uid);
    next = cur;
    CHECK(daemon_config_set(&next, "max_new_tokens_per_uid", "0", err, sizeof(err)) == -EINVAL &&
          strstr(err, "max_new_tokens_per_uid"));
    CHECK(daemon_config_set(&next, "max_prompt_tokens_per_uid", "2000000000", err, sizeof(err)) == -EINVAL);
    CHECK(daemon_config_set(&next, "max_new_tokens_per_uid", "1000", err, sizeof(err)) == 0);
    CHECK(daemon_config_set(&next, "max_prompt_tokens_per_uid", "500", err, sizeof(err)) == 0);
    daemon_config_apply_live(&cur, &next, restart, sizeof(restart));
    CHECK(cur.max_new_tokens_per_uid == 1000 && cur.max_prompt_tokens_per_uid == 500 && restart[0] == '\0');
}

/* backend / kernel_dir / gpu_device / threads: defaults, accepted values,
 * restart-only on reload. */
static void test_compute_keys(void)
{
    struct daemon_config cur, next;
    char err[512], restart[256];
    daemon_config_defaults(&cur);
    CHECK(strcmp(cur.backend, "auto") == 0 && cur.threads == 0);
    next = cur;
    CHECK(daemon_config_set(&next, "backend", "cpu-ref", err, sizeof(err)) == 0 && strcmp(next.backend, "cpu-ref") == 0);
    CHECK(daemon_config_set(&next, "backend", "cpu", err, sizeof(err)) == 0);
    CHECK(daemon_config_set(&next, "backend", "gpu", err, sizeof(err)) == -EINVAL &&
          strstr(err, "auto, cpu, cpu-ref, cuda or hip"));
    CHECK(daemon_config_set(&next, "backend", "hip", err, sizeof(err)) == 0 && strcmp(next.backend, "hip") == 0);
    CHECK(daemon_config_set(&next, "backend", "cuda", err, sizeof(err)) == 0 && strcmp(next.backend, "cuda") == 0);
    CHECK(daemon_config_set(&next, "threads", "257", err, sizeof(err)) == -EINVAL && strstr(err, "threads"));
    CHECK(daemon_config_set(&next, "threads", "16", err, sizeof(err)) == 0 && next.threads == 16);
    /* kernel_dir: the installed folder by default, absolute paths only */
    CHECK(strstr(cur.kernel_dir, "/resident/gpu") && cur.kernel_dir[0] == '/' && cur.gpu_device == 0);
    CHECK(daemon_config_set(&next, "kernel_dir", "build/kernels/gpu", err, sizeof(err)) == -EINVAL &&
          strstr(err, "kernel_dir") && strstr(err, "absolute"));
    CHECK(daemon_config_set(&next, "kernel_dir", "/opt/gpu", err, sizeof(err)) == 0 &&
          strcmp(next.kernel_dir, "/opt/gpu") == 0);
    CHECK(daemon_config_set(&next, "gpu_device", "256", err, sizeof(err)) == -EINVAL && strstr(err, "gpu_device"));
    CHECK(daemon_config_set(&next, "gpu_device", "1", err, sizeof(err)) == 0 && next.gpu_device == 1);
    daemon_config_apply_live(&cur, &next, restart, sizeof(restart));
    CHECK(strstr(restart, "backend") && strstr(restart, "threads") && strcmp(cur.backend, "auto") == 0 &&
          cur.threads == 0);
    CHECK(strstr(restart, "kernel_dir") && strstr(restart, "gpu_device") && cur.gpu_device == 0 &&
          strcmp(cur.kernel_dir, "/opt/gpu") != 0);
}

static void test_null(void)
{
    const struct gen_ops *g = gen_lookup("null");
    CHECK(g && g->synthetic && gen_lookup("qwen") == NULL);
    void *ctx, *seq;
    char err[128];
    CHECK(g->create(NULL, NULL, &ctx, err, sizeof(err)) == 0);
    struct gen_prompt p = { .kind = 2, .bytes = (const uint8_t *)"hello world", .len = 11, .seed = 5 };
    uint32_t pt;
    CHECK(g->seq_new(ctx, &p, &seq, &pt, err, sizeof(err)) == 0 && pt == 3);
    struct gen_item it = { .seq = seq, .n_prefill = 2, .sample = 0 };
    CHECK(g->step(ctx, &it, 1) == 0 && it.error == 0);
    it.n_prefill = 1;
    it.sample = 1;
    CHECK(g->step(ctx, &it, 1) == 0 && it.error == 0);
    uint64_t h = gen_null_prompt_hash(2, p.bytes, p.len);
    CHECK(it.token == gen_null_token(h, 5, 0) && it.token > 0 && it.token < GEN_NULL_VOCAB);
    uint32_t n;
    const char *piece = gen_null_piece(it.token, &n);
    CHECK(n == it.piece_len && memcmp(piece, it.piece, n) == 0);
    it.n_prefill = 1;   /* more prompt than there is: reported, not crashed */
    CHECK(g->step(ctx, &it, 1) == 0 && it.error == -EINVAL);
    g->seq_free(ctx, seq);
    /* Distribution touches the whole vocabulary. */
    int seen[GEN_NULL_VOCAB] = { 0 };
    for (uint32_t i = 0; i < 5000; i++)
        seen[gen_null_token(h, 1, i)] = 1;
    int cnt = 0;
    for (uint32_t i = 0; i < GEN_NULL_VOCAB; i++)
        cnt += seen[i];
    CHECK(cnt == GEN_NULL_VOCAB - 1 && !seen[0]);
    g->destroy(ctx);
}

int main(void)
{
    test_config();
    test_quota_keys();
    test_compute_keys();
    test_null();
    if (failures) {
        fprintf(stderr, "test-daemon-unit: %d failures\n", failures);
        return 1;
    }
    printf("test-daemon-unit: ok\n");
    return 0;
}
