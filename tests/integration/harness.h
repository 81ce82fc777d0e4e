/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Integration-test harness: start residentd (null generator) on a private
 * socket, inspect its fds and memory, and speak the raw protocol for tests
 * that must misbehave in ways libresident never would.
 *
 * Exit codes follow meson/automake: 0 pass, 1 fail, 77 skip (io_uring or a
 * kernel feature is missing; the reason is printed).
 */
#ifndef RESIDENT_TESTS_INTEGRATION_HARNESS_H
#define RESIDENT_TESTS_INTEGRATION_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "shm/region.h"
#include "shm/ring.h"

extern int th_failures;

#define TH_CHECK(cond) do { \
    if (!(cond)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); th_failures++; } \
} while (0)

struct th_daemon {
    pid_t pid;
    char  dir[64];
    char  sock[108];
    char  log[128];
};

/* Skip (exit 77) when this kernel or sandbox has no usable io_uring. */
void th_require_uring(void);

/* Start residentd with extra "-o key=value" options (NULL-terminated list). */
int th_daemon_start(struct th_daemon *d, const char *const *opts);

/* SIGTERM and reap; returns the exit status (or -1 on timeout/kill). */
int th_daemon_stop(struct th_daemon *d, int timeout_ms);

/* Daemon still running? */
int th_daemon_alive(const struct th_daemon *d);

int  th_fd_count(pid_t pid);
long th_rss_kb(pid_t pid);

/* Wait until the daemon's fd count drops to `want` (teardown is async). */
int th_wait_fds(pid_t pid, int want, int timeout_ms);

uint64_t th_now_ms(void);

/* A temporary copy of the model directory `model_dir` for a test's own
 * generation_config.json: mkdtemp("/tmp/PREFIX-XXXXXX") into dir (cap
 * bytes) holding a symlink to every file but generation_config.json, which
 * the caller then writes. Returns 0 or -errno. */
int th_model_copy(const char *model_dir, const char *prefix, char *dir, size_t cap);

/* Remove such a copy: its entries, then the directory. */
void th_model_copy_remove(const char *dir);

struct resident;

/* The sampling values a test sets on its requests. */
struct th_sampling {
    float    temperature, top_p;
    uint32_t top_k;
    uint64_t seed;
};

/* Greedy decoding. */
static const struct th_sampling TH_GREEDY = { 0.0f, 1.0f, 0, 0 };

/* A libresident session on `sock` as client `name`, with an event ring of
 * `evt_ring_bytes` (0 = the daemon's default). On failure prints
 * "connect NAME: <libresident's error>" and returns NULL. */
struct resident *th_connect(const char *sock, const char *name, uint32_t evt_ring_bytes);

struct resident_event;

/* Wait for the events of requests ids[0..n), up to timeout_ms in all, and
 * hand each to absorb(ctx, i, ev), i the index of its request; absorb
 * returns 1 when the event completed request i (its DONE). Returns 0 once
 * every request is complete, -ETIMEDOUT, or resident_wait's error. */
int th_collect(struct resident *r, const uint64_t *ids, size_t n, int timeout_ms,
               int (*absorb)(void *ctx, size_t i, const struct resident_event *ev), void *ctx);

/* th_connect with the daemon's default rings; on failure the test ends
 * (exit 1). */
struct resident *th_connect_or_exit(const char *sock, const char *name);

/* One uid's accounting as residentd logs it at SIGHUP (daemon/quota.c). */
struct th_acct {
    unsigned           sessions, inflight, fds;
    unsigned long long prompt_tokens, new_tokens, ring_bytes;
};

/* SIGHUP the daemon and read `uid`'s counters from the dump it logs (all
 * zero when the uid has no entry). Returns 0, or -1 on timeout. */
int th_daemon_acct(const struct th_daemon *d, uid_t uid, struct th_acct *out, int timeout_ms);

/* A session opened by hand (raw HELLO/WELCOME), for hostile tests. */
struct th_raw {
    int                  sock, doorbell, wake;
    struct shm_region    region;
    struct shm_ring_prod req;
    struct shm_ring_cons evt;
};

int  th_raw_connect(const char *sock_path);
int  th_raw_open(const char *sock_path, struct th_raw *r, uint32_t evt_ring, uint32_t data_bytes);
void th_raw_close(struct th_raw *r);
int  th_raw_submit(struct th_raw *r, uint64_t id, const char *prompt, uint32_t max_tokens);
void th_raw_ring(struct th_raw *r);

/* Wait for the daemon to close `sock` (EOF, possibly after an ERROR
 * frame). Returns 1 when closed, 0 on timeout. *err gets the ERROR code
 * when one came (else 0). */
int th_wait_closed(int sock, int timeout_ms, int *err);

/* Send one raw frame with optional fds. */
int th_send_raw(int sock, const void *buf, size_t len, const int *fds, int n_fds);

/* 1 when s[0..n) is a sequence of complete UTF-8 characters (lead bytes
 * C2-F4 and their continuation bytes; 3- and 4-byte overlongs and
 * surrogates are not checked), else 0: event text must never split a
 * character. */
int th_utf8_valid(const char *s, size_t n);

#endif
