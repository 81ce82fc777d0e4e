/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-testlib.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

int svc_testlib_tmpdir(char *dir, size_t len)
{
    const char *base = getenv("TMPDIR");

    snprintf(dir, len, "%s/svc-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir))
        return -errno;
    return 0;
}

int svc_testlib_notify_listen(const char *dir)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd, one = 1;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* systemd's own notify socket has SO_PASSCRED; sd_notify does not
     * depend on it, but behave like the real thing. */
    setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
    /* the kernel's arrival time of each datagram: timing checks must not
     * depend on when this (possibly descheduled) listener gets to read */
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMP, &one, sizeof(one));
    unlink(sa.sun_path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    return fd;
}

static uint64_t last_arrival_ms;

uint64_t svc_testlib_notify_arrival_ms(void)
{
    return last_arrival_ms;
}

int svc_testlib_notify_recv(int fd, char *buf, size_t len, int timeout_ms, int *fds, size_t *n_fds)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 16) + CMSG_SPACE(sizeof(struct ucred)) +
                 CMSG_SPACE(sizeof(struct timeval))];
    } control;
    struct iovec iov = { .iov_base = buf, .iov_len = len - 1 };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = &control, .msg_controllen = sizeof(control),
    };
    size_t max_fds = n_fds ? *n_fds : 0, got = 0;
    ssize_t n;
    int r;

    r = poll(&pfd, 1, timeout_ms);
    if (r < 0)
        return -errno;
    if (r == 0)
        return 0;
    n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    last_arrival_ms = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMP) {
            struct timeval tv;

            memcpy(&tv, CMSG_DATA(c), sizeof(tv));
            last_arrival_ms = (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
            continue;
        }
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *in = (int *)(void *)CMSG_DATA(c);

        for (size_t i = 0; i < k; i++) {
            if (got < max_fds)
                fds[got++] = in[i];
            else
                close(in[i]);     /* e.g. BARRIER=1's fd: closing it answers */
        }
    }
    if (n_fds)
        *n_fds = got;
    return (int)n;
}

int svc_testlib_proc_status(pid_t pid, const char *key, char *out, size_t len)
{
    char path[64], line[512];
    size_t klen = strlen(key);
    FILE *f;
    int r = -ENOENT;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            char *v = line + klen + 1;

            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = '\0';
            /* "Groups:" ends in a blank; values never do. */
            for (size_t e = strlen(v); e > 0 && (v[e - 1] == ' ' || v[e - 1] == '\t'); e--)
                v[e - 1] = '\0';
            snprintf(out, len, "%s", v);
            r = 0;
            break;
        }
    }
    fclose(f);
    return r;
}

int svc_testlib_wait(pid_t pid)
{
    int st;

    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

uint64_t svc_testlib_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
