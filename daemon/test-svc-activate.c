/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Socket activation and the by-hand socket.
 *
 *   test-svc-activate            LISTEN_FDS sorting and the by-hand socket
 *   test-svc-activate systemd-socket-activate
 *                                a real activation (integration suite)
 *   test-svc-activate serve P    the "daemon" that systemd-socket-activate
 *                                execs: takes the passed socket, serves one
 *                                connection (ping -> pong), exits
 *
 * Checks: a real `systemd-socket-activate --seqpacket --fdname=resident`
 * round trip (skipped if the tool is absent); a simulated manager passing
 * socket + fd-store entry + a foreign name; a stream socket under our name
 * refused; an unnamed socket accepted; the by-hand socket's mode, group,
 * stale-socket cleanup, refusal to replace a live socket or a plain file.
 */
#include "daemon/svc-activate.h"
#include "daemon/svc-testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

static int unix_socket_at(const char *path, int type, bool do_listen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);

    T_CHECK(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    T_CHECKF(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", path, strerror(errno));
    if (do_listen)
        T_CHECK(listen(fd, 4) == 0);
    return fd;
}

static int client_connect(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    T_CHECK(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -errno;
    }
    return fd;
}

/* ------------------------------------------------- the "daemon" mode --- */
static int serve(const char *path)
{
    struct svc_listen_config cfg = { .path = path, .owner = (uid_t)-1, .group = (gid_t)-1 };
    struct svc_activation a;
    char buf[64], reply[80];
    ssize_t n;
    int c;

    T_CHECK(svc_activation_listen(&a, &cfg) == 0);
    T_CHECKF(a.listen_inherited, "systemd-socket-activate's socket was not picked up");
    T_CHECK(getenv("LISTEN_FDS") == NULL && getenv("LISTEN_PID") == NULL);
    c = accept4(a.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    T_CHECK(c >= 0);
    n = recv(c, buf, sizeof(buf) - 1, 0);
    T_CHECK(n > 0);
    buf[n] = '\0';
    snprintf(reply, sizeof(reply), "pong:%s", buf);
    T_CHECK(send(c, reply, strlen(reply), 0) == (ssize_t)strlen(reply));
    close(c);
    svc_activation_release(&a);
    return T_PASS;
}

static bool test_systemd_socket_activate(const char *dir)
{
    char path[300], self[4096], buf[64];
    const char *tool = "/usr/bin/systemd-socket-activate";
    ssize_t n;
    pid_t pid;
    int fd = -1, st;

    if (access(tool, X_OK) != 0)
        return false;
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    T_CHECK(n > 0);
    self[n] = '\0';
    snprintf(path, sizeof(path), "%s/resident.sock", dir);
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        execl(tool, tool, "--seqpacket", "-l", path, "--fdname=resident", self, "serve", path, (char *)NULL);
        _exit(127);
    }
    /* The tool binds, then waits for a connection before exec'ing us. */
    for (int i = 0; i < 500 && fd < 0; i++) {
        struct timespec ts = { 0, 10 * 1000000L };

        fd = client_connect(path);
        if (fd < 0)
            nanosleep(&ts, NULL);
    }
    T_CHECKF(fd >= 0, "could not connect to %s", path);
    T_CHECK(send(fd, "ping", 4, 0) == 4);
    n = recv(fd, buf, sizeof(buf) - 1, 0);
    T_CHECKF(n > 0, "no reply from the activated daemon");
    buf[n] = '\0';
    T_CHECKF(!strcmp(buf, "pong:ping"), "reply \"%s\"", buf);
    close(fd);
    st = svc_testlib_wait(pid);
    T_CHECKF(st == 0, "activated daemon exited %d", st);
    unlink(path);
    printf("systemd-socket-activate --seqpacket round trip: ok\n");
    return true;
}

/* -------------------------------------------- simulated service manager --- */
/* In a child: place `fds` at 3.. and export LISTEN_* as systemd does. */
static void pass_fds(const int *fds, int n, const char *names)
{
    int tmp[8];
    char v[32];

    for (int i = 0; i < n; i++)
        tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 100);
    for (int i = 0; i < n; i++)
        T_CHECK(dup2(tmp[i], 3 + i) == 3 + i);
    snprintf(v, sizeof(v), "%d", n);
    setenv("LISTEN_FDS", v, 1);
    snprintf(v, sizeof(v), "%d", (int)getpid());
    setenv("LISTEN_PID", v, 1);
    if (names)
        setenv("LISTEN_FDNAMES", names, 1);
    else
        unsetenv("LISTEN_FDNAMES");
}

static void test_collect(const char *dir)
{
    char p1[300], p2[300];
    pid_t pid;

    snprintf(p1, sizeof(p1), "%s/seq.sock", dir);
    snprintf(p2, sizeof(p2), "%s/stream.sock", dir);

    /* socket + fd-store entry + a name from another daemon version */
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        int fds[3], stored;
        struct svc_activation a;

        fds[0] = unix_socket_at(p1, SOCK_SEQPACKET, true);
        fds[1] = memfd_create("resident-weights", MFD_CLOEXEC);
        fds[2] = memfd_create("other", MFD_CLOEXEC);
        pass_fds(fds, 3, "resident:resident-weights:resident2-state");
        T_CHECK(svc_activation_collect(&a, NULL) == 3);
        T_CHECK(a.listen_fd == 3 && a.listen_inherited && !a.listen_created);
        T_CHECK(a.n_store == 1 && !strcmp(a.store_name[0], "resident-weights"));
        T_CHECKF(fcntl(5, F_GETFD) < 0 && errno == EBADF, "the unknown name's fd was not closed");
        T_CHECK(fcntl(3, F_GETFD) & FD_CLOEXEC);
        T_CHECK(getenv("LISTEN_FDS") == NULL && getenv("LISTEN_FDNAMES") == NULL);
        stored = svc_activation_take_fd(&a, "resident-weights");
        T_CHECK(stored == 4);
        T_CHECK(svc_activation_take_fd(&a, "resident-weights") == -ENOENT);
        close(stored);
        svc_activation_release(&a);
        T_CHECK(fcntl(3, F_GETFD) < 0);
        T_CHECKF(access(p1, F_OK) == 0, "release unlinked a socket systemd owns");
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == 0);
    unlink(p1);

    /* our name on a SOCK_STREAM socket: a unit written with ListenStream= */
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        int fds[1];
        struct svc_activation a;

        fds[0] = unix_socket_at(p2, SOCK_STREAM, true);
        pass_fds(fds, 1, "resident");
        T_CHECK(svc_activation_collect(&a, NULL) == -EINVAL);
        T_CHECK(a.listen_fd < 0);
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == 0);
    unlink(p2);

    /* a listening socket that is not listening (bound only): refused too */
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        int fds[1];
        struct svc_activation a;

        fds[0] = unix_socket_at(p1, SOCK_SEQPACKET, false);
        pass_fds(fds, 1, "resident");
        T_CHECK(svc_activation_collect(&a, NULL) == -EINVAL);
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == 0);
    unlink(p1);

    /* no LISTEN_FDNAMES at all: a SEQPACKET listener is taken as ours */
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        int fds[1];
        struct svc_activation a;

        fds[0] = unix_socket_at(p1, SOCK_SEQPACKET, true);
        pass_fds(fds, 1, NULL);
        T_CHECK(svc_activation_collect(&a, NULL) == 1);
        T_CHECK(a.listen_fd == 3);
        svc_activation_release(&a);
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == 0);
    unlink(p1);

    /* LISTEN_PID of another process: not for us (and nothing is closed) */
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        int fds[1];
        struct svc_activation a;

        fds[0] = unix_socket_at(p1, SOCK_SEQPACKET, true);
        pass_fds(fds, 1, "resident");
        setenv("LISTEN_PID", "1", 1);
        T_CHECK(svc_activation_collect(&a, NULL) == 0);
        T_CHECK(a.listen_fd < 0);
        T_CHECK(fcntl(3, F_GETFD) >= 0);
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == 0);
    unlink(p1);
    printf("LISTEN_FDS sorting: ok\n");
}

/* ---------------------------------------------------- socket by hand --- */
static void test_by_hand(const char *dir)
{
    char path[400], sub[300];
    struct svc_listen_config cfg = { .owner = (uid_t)-1, .group = (gid_t)-1, .mode = 0660 };
    struct svc_activation a;
    struct stat st;
    int fd, c, busy;

    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    snprintf(sub, sizeof(sub), "%s/run", dir);
    snprintf(path, sizeof(path), "%s/resident.sock", sub);
    cfg.path = path;
    if (geteuid() == 0) {
        struct group *g = getgrnam("nogroup");

        cfg.group = g ? g->gr_gid : 65534;
    }

    /* fresh: parent directory created 0755 even under UMask=0077, socket
     * mode and group applied */
    umask(0077);
    T_CHECK(svc_activation_listen(&a, &cfg) == 0);
    T_CHECK(stat(sub, &st) == 0);
    T_CHECKF((st.st_mode & 07777) == 0755, "socket directory mode %04o", (unsigned)(st.st_mode & 07777));
    T_CHECK(a.listen_created && !a.listen_inherited && a.listen_fd >= 0);
    T_CHECK(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
    T_CHECKF((st.st_mode & 07777) == 0660, "mode %04o", (unsigned)(st.st_mode & 07777));
    if (cfg.group != (gid_t)-1)
        T_CHECKF(st.st_gid == cfg.group, "group %u, wanted %u", st.st_gid, cfg.group);
    c = client_connect(path);
    T_CHECK(c >= 0);
    close(c);

    /* a second instance must not steal the live socket */
    busy = svc_listen_create(&cfg);
    T_CHECKF(busy == -EADDRINUSE, "got %d", busy);
    T_CHECK(lstat(path, &st) == 0);

    /* release unlinks what we created */
    svc_activation_release(&a);
    T_CHECK(lstat(path, &st) < 0 && errno == ENOENT);

    /* stale socket of a crashed run: bound, listener gone, file left */
    fd = unix_socket_at(path, SOCK_SEQPACKET, true);
    close(fd);
    T_CHECK(lstat(path, &st) == 0);
    fd = svc_listen_create(&cfg);
    T_CHECKF(fd >= 0, "stale socket not replaced: %d", fd);
    c = client_connect(path);
    T_CHECK(c >= 0);
    close(c);
    close(fd);
    unlink(path);

    /* a plain file where the socket should be: refuse, keep the file */
    fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    T_CHECK(fd >= 0);
    close(fd);
    T_CHECK(svc_listen_create(&cfg) == -EEXIST);
    T_CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
    unlink(path);

    /* a relative path is refused */
    cfg.path = "relative.sock";
    T_CHECK(svc_listen_create(&cfg) < 0);
    rmdir(sub);
    printf("by-hand socket: ok\n");
}

int main(int argc, char **argv)
{
    char dir[256];

    setvbuf(stdout, NULL, _IOLBF, 0);   /* forked children _exit() */
    if (argc == 3 && !strcmp(argv[1], "serve"))
        return serve(argv[2]);
    T_CHECK(svc_testlib_tmpdir(dir, sizeof(dir)) == 0);
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    if (argc == 2 && !strcmp(argv[1], "systemd-socket-activate")) {
        /* the integration test: a real activation by systemd's tool */
        bool ran = test_systemd_socket_activate(dir);

        rmdir(dir);
        if (!ran)
            T_SKIP_BECAUSE("systemd-socket-activate not installed (Debian package systemd)");
        return T_PASS;
    }
    test_collect(dir);
    test_by_hand(dir);
    rmdir(dir);
    printf("activate: ok\n");
    return T_PASS;
}
