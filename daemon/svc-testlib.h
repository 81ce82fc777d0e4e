/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-testlib: helpers shared by the daemon/test-svc-*.c programs (built only
 * into tests).  Exit codes follow meson/automake: 0 pass, 1 fail, 77 skip.
 * Checks call _exit(), never exit(): several run in forked children that
 * have dropped privileges, where LeakSanitizer's atexit pass cannot ptrace
 * the (now non-dumpable) process and would turn a pass into an error.
 */
#ifndef RESIDENT_DAEMON_SVC_TESTLIB_H
#define RESIDENT_DAEMON_SVC_TESTLIB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <unistd.h>

#define T_PASS 0
#define T_FAIL 1
#define T_SKIP 77

#define T_CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            fflush(stderr); \
            _exit(T_FAIL); \
        } \
    } while (0)

#define T_CHECKF(cond, ...) do { \
        if (!(cond)) { \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
            fflush(stderr); \
            _exit(T_FAIL); \
        } \
    } while (0)

#define T_SKIP_BECAUSE(...) do { \
        printf("SKIP: "); printf(__VA_ARGS__); printf("\n"); fflush(stdout); \
        _exit(T_SKIP); \
    } while (0)

/* A fresh private directory under $TMPDIR (or /tmp); path into dir (>= 64). */
int svc_testlib_tmpdir(char *dir, size_t len);

/* Fake systemd notify socket: an AF_UNIX SOCK_DGRAM socket bound to
 * <dir>/notify with SO_PASSCRED; exports NOTIFY_SOCKET.  Returns the fd. */
int svc_testlib_notify_listen(const char *dir);

/* Receive one datagram (NUL-terminated into buf) with up to *n_fds passed
 * fds.  timeout_ms < 0 waits forever.  Returns bytes, 0 on timeout, -errno. */
int svc_testlib_notify_recv(int fd, char *buf, size_t len, int timeout_ms, int *fds, size_t *n_fds);

/* When the last datagram svc_testlib_notify_recv returned reached the
 * socket (kernel timestamp, CLOCK_REALTIME ms; 0 if none came with it). */
uint64_t svc_testlib_notify_arrival_ms(void);

/* The value of "Key:" in /proc/PID/status (leading blanks stripped). */
int svc_testlib_proc_status(pid_t pid, const char *key, char *out, size_t len);

/* Wait for pid; returns its exit status, or 128+signal. */
int svc_testlib_wait(pid_t pid);

/* CLOCK_MONOTONIC in ms. */
uint64_t svc_testlib_now_ms(void);

#endif
