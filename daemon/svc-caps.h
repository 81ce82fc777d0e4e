/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-caps: identity and capabilities of residentd.
 *
 * What residentd needs once it serves: nothing privileged.  It accepts on a
 * socket it was given (or created while root), maps memfds it created, and
 * talks to /dev/kfd and the DRM render node through the "render" group.  The
 * only privileged act is locking 20 GB of weights, and that happens before
 * we serve:
 *
 *   under systemd: LimitMEMLOCK= gives the budget, so no capability at all
 *       (CapabilityBoundingSet= empty in residentd.service);
 *   by hand as root: we lock while still root (CAP_IPC_LOCK), then drop.
 *
 * Locks survive the drop (checked: VmLck unchanged), so the final set is
 * empty.  keep_ipc_lock=true keeps CAP_IPC_LOCK in the *permitted* set only
 * (never effective): svc_memlock_range() raises it around an mlock when a
 * reload swaps the weights, and lowers it again.
 *
 * Two modes, chosen by svc_caps_init():
 *
 * VERIFY (started by a service manager: INVOCATION_ID, NOTIFY_SOCKET or
 *   LISTEN_PID=us; or started by an unprivileged user).  The unit decides
 *   identity (User=residentd), capabilities (CapabilityBoundingSet=) and
 *   NoNewPrivileges=.  We only check: running as root, or holding any
 *   capability other than CAP_IPC_LOCK / CAP_SYS_NICE (CAP_SYS_ADMIN,
 *   CAP_SYS_PTRACE, CAP_DAC_OVERRIDE, CAP_SETUID, ...), is refused with the
 *   unit line to fix.  Then we trim what we do not keep from permitted and
 *   effective (lowering needs no privilege) and set PR_SET_NO_NEW_PRIVS.
 *
 * DROP (started by hand as root, no service manager).  In this order, each
 *   step needing what the previous ones still allow:
 *   1. securebits NOROOT | NO_SETUID_FIXUP | KEEP_CAPS(off) |
 *      NO_CAP_AMBIENT_RAISE, each with its _LOCKED bit (needs CAP_SETPCAP):
 *      uid 0 never means "all capabilities" again, even across execve;
 *   2. clear the ambient set;
 *   3. drop every capability from the bounding set except the kept ones
 *      (needs CAP_SETPCAP; does not touch our permitted set yet);
 *   4. setgroups(), setresgid(), setresuid() to the service user (glibc
 *      applies these to every thread; NO_SETUID_FIXUP keeps caps for step 5);
 *   5. cap_set_proc(): permitted = kept, effective = inheritable = empty;
 *   6. PR_SET_NO_NEW_PRIVS;
 *   7. check: getresuid() is the user in all three slots, and setresuid(0)
 *      now fails.  Log the result (cap_to_text, bounding set, securebits).
 *   Capabilities are per thread, so DROP refuses to run in a process that
 *   already has several threads (-EBUSY): drop before the GPU runtime starts
 *   its threads.  Name lookups (getpwnam/getgrnam) happen in svc_caps_init(),
 *   before anything is locked down.
 *
 * After the uid change the kernel also clears the "dumpable" flag: no core
 * dumps of the weights, no ptrace by other processes of the same user.
 */
#ifndef RESIDENT_DAEMON_SVC_CAPS_H
#define RESIDENT_DAEMON_SVC_CAPS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define SVC_CAPS_USER_DEFAULT  "residentd"
#define SVC_CAPS_GROUPS_MAX    16

enum svc_caps_mode {
    SVC_CAPS_AUTO   = 0,   /* VERIFY under a service manager or as non-root, else DROP */
    SVC_CAPS_DROP   = 1,
    SVC_CAPS_VERIFY = 2,
};

struct svc_caps_config {
    enum svc_caps_mode  mode;
    const char         *user;            /* DROP target; NULL = "residentd"            */
    const char *const  *groups;          /* supplementary groups for DROP, NULL-
                                            terminated, e.g. {"render", NULL}; a group
                                            missing on this host is skipped with a log */
    bool                keep_ipc_lock;   /* keep CAP_IPC_LOCK permitted (re-lock on reload) */
};

struct svc_caps {
    enum svc_caps_mode mode;             /* resolved: DROP or VERIFY     */
    bool   managed;                      /* a service manager started us */
    bool   keep_ipc_lock;
    uid_t  uid;                          /* DROP target ids              */
    gid_t  gid;
    size_t n_groups;
    gid_t  groups[SVC_CAPS_GROUPS_MAX];
};

/* True if a service manager started us (INVOCATION_ID, NOTIFY_SOCKET, or
 * LISTEN_PID equal to our pid).  Call before svc_activation_collect(),
 * which unsets LISTEN_PID. */
bool svc_caps_managed(void);

/* Resolve the mode and, for DROP, the user and groups (NSS lookups happen
 * here, while /etc is still readable). -ENOENT names a missing user and
 * how to create it (systemd-sysusers). */
int svc_caps_init(struct svc_caps *c, const struct svc_caps_config *cfg);

/* DROP or VERIFY as described above.  Call after the weights are locked and
 * the socket exists, before any thread is started.  On failure the process
 * may be half-way through a drop: log and exit, never continue serving. */
int svc_caps_apply(struct svc_caps *c);

/* One line describing the current credentials:
 * "uid=... gid=... groups=... caps=\"=\" bounding=... securebits=0x.. no_new_privs=1".
 * Returns 0 and writes into buf (truncated to len). */
int svc_caps_describe(char *buf, size_t len);

#endif
