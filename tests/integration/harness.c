/* SPDX-License-Identifier: Apache-2.0 */
/* Integration-test harness (see harness.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/resident.h"
#include "shm/proto.h"
#include "shm/wire.h"
#include "tests/integration/harness.h"

int th_failures;

uint64_t th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int th_model_copy(const char *model_dir, const char *prefix, char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/%s-XXXXXX", prefix);
    if (!mkdtemp(dir))
        return -errno;
    DIR *d = opendir(model_dir);
    if (!d)
        return -errno;
    struct dirent *de;
    char src[1280], dst[1280];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, "generation_config.json") == 0)
            continue;
        snprintf(src, sizeof(src), "%s/%s", model_dir, de->d_name);
        snprintf(dst, sizeof(dst), "%s/%s", dir, de->d_name);
        if (symlink(src, dst) < 0) {
            closedir(d);
            return -errno;
        }
    }
    closedir(d);
    return 0;
}

void th_model_copy_remove(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[1280];
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

struct resident *th_connect(const char *sock, const char *name, uint32_t evt_ring_bytes)
{
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = sock;
    cp.client_name = name;
    cp.evt_ring_bytes = evt_ring_bytes;
    struct resident *r = NULL;
    if (resident_connect(&cp, &r) < 0) {
        fprintf(stderr, "connect %s: %s\n", name, resident_last_error(NULL));
        return NULL;
    }
    return r;
}

struct resident *th_connect_or_exit(const char *sock, const char *name)
{
    struct resident *r = th_connect(sock, name, 0);
    if (!r)
        exit(1);
    return r;
}

int th_collect(struct resident *r, const uint64_t *ids, size_t n, int timeout_ms,
               int (*absorb)(void *ctx, size_t i, const struct resident_event *ev), void *ctx)
{
    size_t left = n;
    struct resident_event ev;
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    while (left && th_now_ms() < end) {
        int ret = resident_wait(r, &ev, 1000);
        if (ret < 0)
            return ret;
        for (size_t i = 0; ret == 1 && i < n; i++)
            if (ids[i] == ev.id && absorb(ctx, i, &ev))
                left--;
    }
    return left ? -ETIMEDOUT : 0;
}

void th_require_uring(void)
{
    struct io_uring ring;
    int r = io_uring_queue_init(4, &ring, 0);
    if (r < 0) {
        printf("SKIP: io_uring unavailable here (%s); check sysctl kernel.io_uring_disabled and seccomp\n",
               strerror(-r));
        exit(77);
    }
    io_uring_queue_exit(&ring);
}

int th_daemon_start(struct th_daemon *d, const char *const *opts)
{
    const char *root = getenv("RESIDENT_BUILD_ROOT");
    char exe[512];
    snprintf(exe, sizeof(exe), "%s/daemon/residentd", root ? root : ".");
    if (access(exe, X_OK) != 0) {
        fprintf(stderr, "harness: %s not found (RESIDENT_BUILD_ROOT unset?)\n", exe);
        return -1;
    }
    snprintf(d->dir, sizeof(d->dir), "/tmp/resident-it-XXXXXX");
    if (!mkdtemp(d->dir))
        return -1;
    chmod(d->dir, 0755);
    snprintf(d->sock, sizeof(d->sock), "%s/s.sock", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/residentd.log", d->dir);
    const char *argv[64];
    int n = 0;
    argv[n++] = exe;
    argv[n++] = "--socket";
    argv[n++] = d->sock;
    argv[n++] = "--config";
    argv[n++] = "/dev/null";
    argv[n++] = "-o";
    argv[n++] = "socket_mode=0666";
    /* CI runs as root: without this residentd would drop to its service
     * user (privileges = auto, the default), which a test host lacks. */
    argv[n++] = "-o";
    argv[n++] = "privileges=keep";
    /* The default backend = auto would take a GPU where one and installed
     * code objects exist, while the offline references (resident-engine
     * without --backend) run the fast CPU backend: pin it; a test's own
     * "backend=..." comes later and wins. */
    argv[n++] = "-o";
    argv[n++] = "backend=cpu";
    for (int i = 0; opts && opts[i] && n < 60; i++) {
        argv[n++] = "-o";
        argv[n++] = opts[i];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    /* Ready when a connection succeeds. */
    for (int i = 0; i < 500; i++) {
        int s = th_raw_connect(d->sock);
        if (s >= 0) {
            close(s);
            return 0;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char buf[2048] = "";
            int fd = open(d->log, O_RDONLY);
            if (fd >= 0) {
                ssize_t k = read(fd, buf, sizeof(buf) - 1);
                buf[k > 0 ? k : 0] = '\0';
                close(fd);
            }
            if (strstr(buf, "io_uring is unavailable")) {
                printf("SKIP: %s", buf);
                exit(77);
            }
            fprintf(stderr, "harness: residentd exited early:\n%s", buf);
            d->pid = 0;
            return -1;
        }
        usleep(10000);
    }
    return -1;
}

int th_daemon_alive(const struct th_daemon *d)
{
    return d->pid > 0 && kill(d->pid, 0) == 0 && waitpid(d->pid, NULL, WNOHANG) == 0;
}

int th_daemon_stop(struct th_daemon *d, int timeout_ms)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, SIGTERM);
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    int st = 0, ret = -1;
    for (;;) {
        pid_t p = waitpid(d->pid, &st, WNOHANG);
        if (p == d->pid) {
            ret = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            break;
        }
        if (th_now_ms() > end) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &st, 0);
            fprintf(stderr, "harness: residentd did not exit within %d ms of SIGTERM\n", timeout_ms);
            break;
        }
        usleep(5000);
    }
    d->pid = 0;
    if (ret != 0 || getenv("TH_SHOW_LOG")) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "tail -n %d %s >&2", ret != 0 ? 30 : 100000, d->log);
        if (system(cmd) < 0)
            perror("system");
    }
    unlink(d->log);
    unlink(d->sock);
    rmdir(d->dir);
    return ret;
}

int th_daemon_acct(const struct th_daemon *d, uid_t uid, struct th_acct *out, int timeout_ms)
{
    memset(out, 0, sizeof(*out));
    struct stat st;
    if (stat(d->log, &st) < 0 || kill(d->pid, SIGHUP) < 0)
        return -1;
    off_t from = st.st_size;
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    char want[64];
    snprintf(want, sizeof(want), "SIGHUP: uid %u: ", (unsigned)uid);
    while (th_now_ms() < end) {
        FILE *f = fopen(d->log, "r");
        if (!f)
            return -1;
        fseeko(f, from, SEEK_SET);
        char line[1024];
        int complete = 0;
        struct th_acct a = { 0 };
        while (fgets(line, sizeof(line), f)) {
            char *p = strstr(line, want);
            unsigned u;
            if (p && sscanf(p + strlen(want), "sessions %u/%*u inflight %u/%*u prompt_tokens %llu/%*u "
                            "new_tokens %llu/%*u fds %u/%*u ring_bytes %llu/", &a.sessions, &a.inflight,
                            &a.prompt_tokens, &a.new_tokens, &a.fds, &a.ring_bytes) != 6)
                fprintf(stderr, "harness: cannot parse accounting line: %s", line);
            if ((p = strstr(line, "SIGHUP: accounting of ")) && sscanf(p, "SIGHUP: accounting of %u", &u) == 1) {
                complete = 1;
                break;
            }
        }
        fclose(f);
        if (complete) {
            *out = a;
            return 0;
        }
        usleep(10000);
    }
    fprintf(stderr, "harness: no accounting dump in %s within %d ms of SIGHUP\n", d->log, timeout_ms);
    return -1;
}

int th_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

long th_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

int th_wait_fds(pid_t pid, int want, int timeout_ms)
{
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    int n;
    while ((n = th_fd_count(pid)) != want && th_now_ms() < end)
        usleep(5000);
    return n;
}

int th_raw_connect(const char *sock_path)
{
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(s);
        return -1;
    }
    return s;
}

int th_send_raw(int sock, const void *buf, size_t len, const int *fds, int n_fds)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    _Alignas(struct cmsghdr) uint8_t cbuf[CMSG_SPACE(sizeof(int) * 64)];
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (n_fds) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n_fds);
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

int th_wait_closed(int sock, int timeout_ms, int *err)
{
    uint64_t end = th_now_ms() + (uint64_t)timeout_ms;
    if (err)
        *err = 0;
    for (;;) {
        int left = (int)(end - th_now_ms());
        if (left <= 0)
            return 0;
        struct pollfd p = { .fd = sock, .events = POLLIN };
        if (poll(&p, 1, left) <= 0)
            return 0;
        uint8_t buf[SHM_WIRE_MAX];
        _Alignas(struct cmsghdr) uint8_t cbuf[CMSG_SPACE(sizeof(int) * 4)];
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
        ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return 1;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_type == SCM_RIGHTS)
                for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                    close(fd);
                }
        struct shm_wire_msg m;
        if (shm_wire_decode(buf, (size_t)n, 0, &m, NULL) == 0 && m.type == SHM_WIRE_ERROR && err)
            *err = m.u.error.code;
    }
}

int th_raw_open(const char *sock_path, struct th_raw *r, uint32_t evt_ring, uint32_t data_bytes)
{
    memset(r, 0, sizeof(*r));
    r->doorbell = r->wake = -1;
    r->region.fd = -1;
    r->sock = th_raw_connect(sock_path);
    if (r->sock < 0)
        return -errno;
    struct shm_wire_hello h = { .proto_version = SHM_WIRE_VERSION, .evt_ring_bytes = evt_ring,
                                .req_ring_bytes = 4096, .data_bytes = data_bytes };
    snprintf(h.client_name, sizeof(h.client_name), "raw-test");
    uint8_t buf[SHM_WIRE_MAX];
    int n = shm_wire_encode(buf, SHM_WIRE_HELLO, 0, &h, sizeof(h));
    if (th_send_raw(r->sock, buf, (size_t)n, NULL, 0) < 0)
        return -EIO;
    _Alignas(struct cmsghdr) uint8_t cbuf[CMSG_SPACE(sizeof(int) * 3)];
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    ssize_t k = recvmsg(r->sock, &mh, MSG_CMSG_CLOEXEC);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    struct shm_wire_msg m;
    if (k <= 0 || !cm || cm->cmsg_len != CMSG_LEN(sizeof(int) * 3) ||
        shm_wire_decode(buf, (size_t)k, 3, &m, NULL) < 0 || m.type != SHM_WIRE_WELCOME)
        return -EPROTO;
    int fds[3];
    memcpy(fds, CMSG_DATA(cm), sizeof(fds));
    r->doorbell = fds[SHM_WELCOME_FD_DOORBELL];
    r->wake = fds[SHM_WELCOME_FD_WAKE];
    if (shm_region_attach(&r->region, fds[SHM_WELCOME_FD_REGION], NULL) < 0)
        return -EPROTO;
    const struct shm_layout *L = &r->region.layout;
    shm_ring_prod_init(&r->req, shm_region_req_ctl(&r->region), r->region.base + L->req_data_off, L->req_cap);
    shm_ring_cons_init(&r->evt, shm_region_evt_ctl(&r->region), r->region.base + L->evt_data_off, L->evt_cap);
    return 0;
}

void th_raw_close(struct th_raw *r)
{
    if (r->sock >= 0)
        close(r->sock);
    if (r->doorbell >= 0)
        close(r->doorbell);
    if (r->wake >= 0)
        close(r->wake);
    shm_region_destroy(&r->region);
    r->sock = r->doorbell = r->wake = -1;
}

void th_raw_ring(struct th_raw *r)
{
    uint64_t one = 1;
    if (write(r->doorbell, &one, 8) != 8)
        perror("doorbell");
}

int th_raw_submit(struct th_raw *r, uint64_t id, const char *prompt, uint32_t max_tokens)
{
    size_t len = strlen(prompt);
    void *body;
    int ret = shm_ring_prod_alloc(&r->req, SHM_REQ_SUBMIT, shm_proto_submit_size(0, 0, 0, (uint32_t)len), &body);
    if (ret < 0)
        return ret;
    struct shm_req_submit s = { .req_id = id, .kind = SHM_PROMPT_RAW, .max_tokens = max_tokens, .top_p = 1,
                                .repeat_penalty = 1, .payload_len = (uint32_t)len };
    memcpy(body, &s, sizeof(s));
    memcpy((uint8_t *)body + sizeof(s), prompt, len);
    shm_ring_prod_publish(&r->req);
    th_raw_ring(r);
    return 0;
}

int th_utf8_valid(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!l || i + l > n)
            return 0;
        for (size_t k = 1; k < l; k++)
            if (((unsigned char)s[i + k] & 0xc0) != 0x80)
                return 0;
        i += l;
    }
    return 1;
}
