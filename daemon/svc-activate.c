/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-activate.h"
#include "daemon/svc-log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

static const char *cfg_path(const struct svc_listen_config *cfg)
{
    return cfg && cfg->path ? cfg->path : SVC_LISTEN_PATH_DEFAULT;
}

static const char *cfg_name(const struct svc_listen_config *cfg)
{
    return cfg && cfg->fdname ? cfg->fdname : SVC_LISTEN_NAME_DEFAULT;
}

static void svc_activation_init(struct svc_activation *a)
{
    memset(a, 0, sizeof(*a));
    a->listen_fd = -1;
    for (size_t i = 0; i < SVC_ACTIVATION_STORE_MAX; i++)
        a->store_fd[i] = -1;
}

/* 1 = a listening AF_UNIX SOCK_SEQPACKET socket, 0 = something else. */
static int is_seqpacket_listener(int fd)
{
    int r = sd_is_socket(fd, AF_UNIX, SOCK_SEQPACKET, 1);

    return r > 0;
}

int svc_activation_collect(struct svc_activation *a, const struct svc_listen_config *cfg)
{
    const char *want = cfg_name(cfg);
    char **names = NULL;
    struct stat st;
    int n, ret;

    svc_activation_init(a);
    /* unset_environment=1: LISTEN_* must not leak into helper processes. */
    n = sd_listen_fds_with_names(1, &names);
    if (n < 0)
        return svc_log_errno(n, "LISTEN_FDS/LISTEN_FDNAMES from the service manager are malformed: %s "
                             "(check residentd.socket and FileDescriptorStoreMax= in residentd.service)",
                             strerror(-n));
    ret = n;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";

        if (strcmp(name, want) == 0) {
            if (!is_seqpacket_listener(fd)) {
                ret = svc_log_errno(-EINVAL, "fd %d named \"%s\" is not a listening AF_UNIX SOCK_SEQPACKET "
                                    "socket: residentd.socket must use ListenSequentialPacket=%s "
                                    "(not ListenStream=/ListenDatagram=) with Accept=no",
                                    fd, name, cfg_path(cfg));
                close(fd);
                continue;
            }
            if (a->listen_fd >= 0) {
                svc_log(LOG_WARNING, "a second listening socket named \"%s\" (fd %d) was passed; "
                        "residentd serves one socket, closing it (remove the extra Listen*= line)", name, fd);
                close(fd);
                continue;
            }
            a->listen_fd = fd;
            a->listen_inherited = true;
        } else if (strcmp(name, "unknown") == 0 && a->listen_fd < 0 && is_seqpacket_listener(fd)) {
            /* No LISTEN_FDNAMES (a manager or tool that does not name fds):
             * a listening SEQPACKET socket can only be meant as ours. */
            a->listen_fd = fd;
            a->listen_inherited = true;
        } else if (strcmp(name, "unknown") == 0 && a->listen_fd < 0 && fstat(fd, &st) == 0 &&
                   S_ISSOCK(st.st_mode)) {
            /* An unnamed socket of the wrong kind: a misconfigured socket
             * unit, not something to ignore while we bind our own. */
            ret = svc_log_errno(-EINVAL, "fd %d (unnamed) is not a listening AF_UNIX SOCK_SEQPACKET socket: "
                                "residentd.socket must use ListenSequentialPacket=%s (not ListenStream=/"
                                "ListenDatagram=) with Accept=no", fd, cfg_path(cfg));
            close(fd);
        } else if (strncmp(name, SVC_FDSTORE_PREFIX, strlen(SVC_FDSTORE_PREFIX)) == 0 &&
                   a->n_store < SVC_ACTIVATION_STORE_MAX) {
            a->store_fd[a->n_store] = fd;
            snprintf(a->store_name[a->n_store], sizeof(a->store_name[0]), "%s", name);
            a->n_store++;
        } else {
            svc_log(LOG_WARNING, "closing passed fd %d named \"%s\": not a name this residentd version "
                    "uses (left over from another version's fd store; it disappears from the store once "
                    "the service is stopped)", fd, name);
            close(fd);
        }
    }
    if (names) {
        for (int i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    if (ret < 0) {
        svc_activation_release(a);
        return ret;
    }
    return n;
}

int svc_activation_take_fd(struct svc_activation *a, const char *name)
{
    for (size_t i = 0; i < a->n_store; i++) {
        if (a->store_fd[i] >= 0 && strcmp(a->store_name[i], name) == 0) {
            int fd = a->store_fd[i];

            a->store_fd[i] = -1;
            return fd;
        }
    }
    return -ENOENT;
}

/* Is something answering on `path`?  1 = yes (live daemon), 0 = stale
 * (ECONNREFUSED: nobody listens), <0 = could not tell. */
static int svc_listen_probe(const struct sockaddr_un *sa, socklen_t len)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int r;

    if (fd < 0)
        return -errno;
    r = connect(fd, (const struct sockaddr *)sa, len);
    if (r == 0 || errno == EAGAIN || errno == EINPROGRESS) {
        close(fd);
        return 1;
    }
    r = errno;
    close(fd);
    if (r == ECONNREFUSED || r == ENOENT)
        return 0;
    /* EPROTOTYPE: a stream socket lives there; treat as "someone else's". */
    return r == EPROTOTYPE ? 1 : -r;
}

int svc_listen_create(const struct svc_listen_config *cfg)
{
    const char *path = cfg_path(cfg);
    mode_t mode = cfg && cfg->mode ? cfg->mode : 0660;
    int backlog = cfg && cfg->backlog > 0 ? cfg->backlog : SOMAXCONN;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    socklen_t salen;
    struct stat st;
    mode_t old_umask;
    int fd, r;

    if (path[0] != '/' || strlen(path) >= sizeof(sa.sun_path))
        return svc_log_errno(-ENAMETOOLONG, "socket path \"%s\" must be absolute and shorter than %zu bytes "
                             "(socket = in residentd.conf)", path, sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);

    /* The parent directory: created 0755 so group members can reach the
     * socket; the socket's own mode is the access control. */
    {
        char dir[sizeof(sa.sun_path)];
        char *slash;

        memcpy(dir, path, strlen(path) + 1);
        slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            if (mkdir(dir, 0755) == 0) {
                /* mkdir() applied our umask (0077 under UMask=): group
                 * members could not traverse to the socket. */
                chmod(dir, 0755);
            } else if (errno != EEXIST) {
                return svc_log_errno(-errno, "cannot create socket directory %s: %s "
                                     "(start residentd as root, or point socket = in residentd.conf at a "
                                     "writable directory)", dir, strerror(errno));
            }
        }
    }

    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return svc_log_errno(-EEXIST, "%s exists and is not a socket; refusing to replace it "
                                 "(remove it or change socket = in residentd.conf)", path);
        /* A listener that answers may be a daemon that is already dead:
         * a killed residentd's io_uring instance is torn down by a kernel
         * worker after the process is reaped, and until then the pending
         * multishot accept keeps the old listening socket alive (connect()
         * succeeds into its backlog).  Ask again for up to 2 s before
         * calling the path taken; a live daemon keeps answering. */
        r = svc_listen_probe(&sa, salen);
        for (int i = 0; i < 20 && r > 0; i++) {
            usleep(100 * 1000);
            r = svc_listen_probe(&sa, salen);
        }
        if (r > 0)
            return svc_log_errno(-EADDRINUSE, "another process is listening on %s; is residentd already "
                                 "running (systemctl status residentd.socket residentd.service)?", path);
        if (r < 0)
            return svc_log_errno(r, "cannot tell whether %s is in use: %s", path, strerror(-r));
        /* Stale socket from a crashed run: nobody accepts on it. */
        if (unlink(path) < 0 && errno != ENOENT)
            return svc_log_errno(-errno, "cannot remove stale socket %s: %s", path, strerror(errno));
        svc_log(LOG_INFO, "removed stale socket %s", path);
    }

    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return svc_log_errno(-errno, "socket(AF_UNIX, SOCK_SEQPACKET): %s "
                             "(RestrictAddressFamilies= must include AF_UNIX)", strerror(errno));
    /* bind() creates the inode with mode 0777 & ~umask.  Bind under 0177 so
     * the socket is owner-only until chown/chmod below give the group
     * access: never a moment where anyone may connect. */
    old_umask = umask(0177);
    r = bind(fd, (struct sockaddr *)&sa, salen);
    umask(old_umask);
    if (r < 0) {
        r = -errno;
        close(fd);
        return svc_log_errno(r, "bind(%s): %s", path, strerror(-r));
    }
    if (cfg && (cfg->owner != (uid_t)-1 || cfg->group != (gid_t)-1) &&
        chown(path, cfg->owner, cfg->group) < 0) {
        r = -errno;
        goto fail;
    }
    if (chmod(path, mode) < 0) {
        r = -errno;
        goto fail;
    }
    if (listen(fd, backlog) < 0) {
        r = -errno;
        goto fail;
    }
    return fd;

fail:
    svc_log(LOG_ERR, "setting up %s (owner %d, group %d, mode %04o) failed: %s "
            "(chown needs root or CAP_CHOWN; the group must exist: systemd-sysusers creates \"resident\")",
            path, cfg ? (int)cfg->owner : -1, cfg ? (int)cfg->group : -1, (unsigned)mode, strerror(-r));
    unlink(path);
    close(fd);
    return r;
}

int svc_activation_listen(struct svc_activation *a, const struct svc_listen_config *cfg)
{
    int r = svc_activation_collect(a, cfg);

    if (r < 0)
        return r;
    if (a->listen_fd >= 0) {
        svc_log(LOG_INFO, "using the listening socket passed by the service manager (fd %d)", a->listen_fd);
        return 0;
    }
    r = svc_listen_create(cfg);
    if (r < 0) {
        svc_activation_release(a);
        return r;
    }
    a->listen_fd = r;
    a->listen_created = true;
    snprintf(a->listen_path, sizeof(a->listen_path), "%s", cfg_path(cfg));
    svc_log(LOG_INFO, "listening on %s (created by residentd, not socket-activated)", a->listen_path);
    return 0;
}

void svc_activation_release(struct svc_activation *a)
{
    for (size_t i = 0; i < a->n_store; i++) {
        if (a->store_fd[i] < 0)
            continue;
        svc_log(LOG_INFO, "fd-store entry \"%s\" was not used; closing our copy", a->store_name[i]);
        close(a->store_fd[i]);
        a->store_fd[i] = -1;
    }
    a->n_store = 0;
    if (a->listen_fd >= 0) {
        close(a->listen_fd);
        a->listen_fd = -1;
    }
    if (a->listen_created && a->listen_path[0]) {
        unlink(a->listen_path);
        a->listen_created = false;
    }
}
