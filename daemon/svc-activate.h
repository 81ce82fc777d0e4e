/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-activate: where the listening socket and the fd-store entries come from.
 *
 * Under systemd, residentd.socket owns /run/resident/resident.sock and passes
 * it as LISTEN_FDS with FileDescriptorName=resident.  On a restart systemd
 * also passes back whatever we put into the fd store (FDSTORE=1, names
 * "resident-*", see svc-fdstore.h), after the socket, in the same
 * LISTEN_FDS/LISTEN_FDNAMES list.  svc_activation_collect() sorts them:
 *
 *   name == listen name ("resident")  -> must be AF_UNIX SOCK_SEQPACKET
 *                                        listening; else refuse (-EINVAL)
 *   name == "unknown" (no names given,  -> accepted as the listening socket if
 *   e.g. an older manager)               it is one (only the first such fd)
 *   name starts with "resident-"       -> fd-store entry, kept for
 *                                        svc_activation_take_fd()
 *   anything else                      -> closed with a log line (a newer
 *                                        daemon version stored something we
 *                                        do not understand: live downgrade)
 *
 * Started by hand (no LISTEN_FDS), svc_listen_create() makes the socket
 * itself: refuses to replace a live socket or a non-socket file, unlinks a
 * stale one, binds with a private umask (no window where the socket is
 * world-connectable), chowns/chmods it per configuration, then listens.
 *
 * Ownership: every fd in struct svc_activation belongs to it until taken;
 * svc_activation_release() closes what nobody took.
 */
#ifndef RESIDENT_DAEMON_SVC_ACTIVATE_H
#define RESIDENT_DAEMON_SVC_ACTIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define SVC_LISTEN_NAME_DEFAULT   "resident"    /* FileDescriptorName= in residentd.socket */
#define SVC_LISTEN_PATH_DEFAULT   "/run/resident/resident.sock"
#define SVC_FDSTORE_PREFIX        "resident-"   /* names we put into the fd store */
#define SVC_ACTIVATION_STORE_MAX  16

struct svc_listen_config {
    const char *path;         /* socket path; NULL = SVC_LISTEN_PATH_DEFAULT        */
    const char *fdname;       /* LISTEN_FDNAMES name; NULL = SVC_LISTEN_NAME_DEFAULT */
    uid_t       owner;        /* chown() target when created by hand; (uid_t)-1 = keep */
    gid_t       group;        /* (gid_t)-1 = keep; normally the "resident" group     */
    mode_t      mode;         /* 0 = 0660                                            */
    int         backlog;      /* 0 = SOMAXCONN                                       */
};

struct svc_activation {
    int  listen_fd;           /* -1 until found or created                */
    bool listen_inherited;    /* true: came from systemd (do not unlink)  */
    bool listen_created;      /* true: we bound it and unlink it on exit  */
    char listen_path[108];    /* sun_path of the created socket           */
    size_t n_store;
    int  store_fd[SVC_ACTIVATION_STORE_MAX];
    char store_name[SVC_ACTIVATION_STORE_MAX][256];
};

/* Sort the fds systemd passed (see the table above).  Unsets LISTEN_FDS,
 * LISTEN_PID and LISTEN_FDNAMES so children never see them, and sets
 * FD_CLOEXEC on every passed fd.  Returns the number of passed fds (0 when
 * not socket-activated) or -errno. */
int svc_activation_collect(struct svc_activation *a, const struct svc_listen_config *cfg);

/* Remove the fd-store entry called `name` from `a` and return its fd (the
 * caller owns it), or -ENOENT. */
int svc_activation_take_fd(struct svc_activation *a, const char *name);

/* Create, bind and listen on cfg->path (started by hand).  Returns the fd
 * (SOCK_CLOEXEC, blocking) or -errno: -EADDRINUSE if a live daemon answers
 * on the path, -EEXIST if the path is not a socket. */
int svc_listen_create(const struct svc_listen_config *cfg);

/* The usual pair: collect; if systemd gave no listening socket, create one.
 * On success a->listen_fd >= 0. */
int svc_activation_listen(struct svc_activation *a, const struct svc_listen_config *cfg);

/* Close every fd still held (unclaimed store entries are logged) and unlink
 * the socket path if we created it. */
void svc_activation_release(struct svc_activation *a);

#endif
