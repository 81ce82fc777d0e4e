/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-caps.h"
#include "daemon/svc-log.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <linux/securebits.h>
#include <sys/capability.h>

/* Capabilities a unit may give us without being refused: CAP_IPC_LOCK
 * (memory locking instead of LimitMEMLOCK=) and CAP_SYS_NICE (scheduling
 * priority instead of CPUSchedulingPolicy=).  Anything else is an error in
 * the unit, not something we silently ignore. */
static bool cap_tolerated(cap_value_t v)
{
    return v == CAP_IPC_LOCK || v == CAP_SYS_NICE;
}

static bool cap_kept(const struct svc_caps *c, cap_value_t v)
{
    return c->keep_ipc_lock && v == CAP_IPC_LOCK;
}

static int cap_last(void)
{
    /* cap_max_bits() is what the running kernel supports (41 on 6.x). */
    return (int)cap_max_bits() - 1;
}

bool svc_caps_managed(void)
{
    const char *lp = getenv("LISTEN_PID");

    if (getenv("INVOCATION_ID") || getenv("NOTIFY_SOCKET"))
        return true;
    return lp && strtol(lp, NULL, 10) == (long)getpid();
}

int svc_caps_init(struct svc_caps *c, const struct svc_caps_config *cfg)
{
    const char *user = cfg && cfg->user ? cfg->user : SVC_CAPS_USER_DEFAULT;
    struct passwd *pw;

    memset(c, 0, sizeof(*c));
    c->managed = svc_caps_managed();
    c->keep_ipc_lock = cfg && cfg->keep_ipc_lock;
    c->mode = cfg ? cfg->mode : SVC_CAPS_AUTO;
    if (c->mode == SVC_CAPS_AUTO)
        c->mode = (!c->managed && geteuid() == 0) ? SVC_CAPS_DROP : SVC_CAPS_VERIFY;
    if (c->mode != SVC_CAPS_DROP)
        return 0;

    errno = 0;
    pw = getpwnam(user);
    if (!pw)
        return svc_log_errno(errno ? -errno : -ENOENT,
                             "user \"%s\" to drop privileges to does not exist: run `systemd-sysusers "
                             "residentd.conf` (installed into sysusers.d) or set user= in residentd.conf", user);
    if (pw->pw_uid == 0)
        return svc_log_errno(-EINVAL, "user \"%s\" is uid 0; dropping privileges to root is no drop "
                             "(set user= in residentd.conf to the residentd system user)", user);
    c->uid = pw->pw_uid;
    c->gid = pw->pw_gid;
    for (size_t i = 0; cfg && cfg->groups && cfg->groups[i]; i++) {
        struct group *gr = getgrnam(cfg->groups[i]);

        if (!gr) {
            svc_log(LOG_WARNING, "supplementary group \"%s\" does not exist on this host, skipping it "
                    "(the GPU backend needs it for /dev/kfd and /dev/dri/renderD*)", cfg->groups[i]);
            continue;
        }
        if (c->n_groups == SVC_CAPS_GROUPS_MAX)
            return svc_log_errno(-E2BIG, "more than %d supplementary groups configured", SVC_CAPS_GROUPS_MAX);
        c->groups[c->n_groups++] = gr->gr_gid;
    }
    return 0;
}

static int thread_count(void)
{
    char line[128];
    FILE *f = fopen("/proc/self/status", "re");
    int n = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

int svc_caps_describe(char *buf, size_t len)
{
    size_t off = 0;
    uid_t ru, eu, su;
    gid_t rg, eg, sg, groups[64];
    int ng;
    cap_t caps;
    char *txt;

#define APPEND(...) do { \
        int w_ = snprintf(buf + off, off < len ? len - off : 0, __VA_ARGS__); \
        if (w_ > 0) off += (size_t)w_; \
    } while (0)

    if (len)
        buf[0] = '\0';
    getresuid(&ru, &eu, &su);
    getresgid(&rg, &eg, &sg);
    APPEND("uid=%u/%u/%u gid=%u/%u/%u groups=", ru, eu, su, rg, eg, sg);
    ng = getgroups(64, groups);
    for (int i = 0; i < ng; i++)
        APPEND("%s%u", i ? "," : "", groups[i]);
    if (ng <= 0)
        APPEND("-");
    caps = cap_get_proc();
    txt = caps ? cap_to_text(caps, NULL) : NULL;
    APPEND(" caps=\"%s\" bounding=", txt ? txt : "?");
    cap_free(txt);
    cap_free(caps);
    {
        bool any = false;

        for (int v = 0; v <= cap_last(); v++) {
            if (cap_get_bound((cap_value_t)v) > 0) {
                char *name = cap_to_name((cap_value_t)v);

                APPEND("%s%s", any ? "," : "", name ? name : "?");
                cap_free(name);
                any = true;
            }
        }
        if (!any)
            APPEND("-");
    }
    APPEND(" securebits=0x%x no_new_privs=%d", cap_get_secbits(), prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
#undef APPEND
    return 0;
}

/* Lower permitted/effective/inheritable to the kept set (needs no privilege). */
static int caps_trim(const struct svc_caps *c)
{
    cap_t caps = cap_init();
    cap_value_t v = CAP_IPC_LOCK;
    int r = 0;

    if (!caps)
        return -errno;
    if (c->keep_ipc_lock) {
        cap_flag_value_t have = CAP_CLEAR;
        cap_t cur = cap_get_proc();

        if (cur) {
            cap_get_flag(cur, CAP_IPC_LOCK, CAP_PERMITTED, &have);
            cap_free(cur);
        }
        if (have == CAP_SET)
            cap_set_flag(caps, CAP_PERMITTED, 1, &v, CAP_SET);
    }
    /* Skip capset(2) when nothing changes: residentd.service filters it out
     * (SystemCallFilter=~@privileged), and the unit already gave us the
     * empty set, so the usual verify path never needs it. */
    {
        cap_t cur = cap_get_proc();
        bool same = cur && cap_compare(cur, caps) == 0;

        cap_free(cur);
        if (!same && cap_set_proc(caps) < 0)
            r = -errno;
    }
    cap_free(caps);
    return r;
}

static int caps_verify(struct svc_caps *c)
{
    char bad[512] = "", line[1024];
    size_t off = 0;
    cap_t caps;
    int r;

    if (geteuid() == 0 || getuid() == 0)
        return svc_log_errno(-EPERM, "residentd runs as root under a service manager; it must run as its "
                             "own user: set User=residentd in residentd.service (and keep "
                             "CapabilityBoundingSet= empty), or start it by hand as root without "
                             "NOTIFY_SOCKET/LISTEN_FDS so it drops privileges itself");
    caps = cap_get_proc();
    if (!caps)
        return svc_log_errno(-errno, "cap_get_proc: %s", strerror(errno));
    for (int v = 0; v <= cap_last(); v++) {
        cap_flag_value_t p = CAP_CLEAR, e = CAP_CLEAR, i = CAP_CLEAR;

        cap_get_flag(caps, (cap_value_t)v, CAP_PERMITTED, &p);
        cap_get_flag(caps, (cap_value_t)v, CAP_EFFECTIVE, &e);
        cap_get_flag(caps, (cap_value_t)v, CAP_INHERITABLE, &i);
        if ((p == CAP_SET || e == CAP_SET || i == CAP_SET) && !cap_tolerated((cap_value_t)v)) {
            char *name = cap_to_name((cap_value_t)v);
            int w = snprintf(bad + off, sizeof(bad) - off, "%s%s", off ? " " : "", name ? name : "?");

            cap_free(name);
            if (w > 0 && (size_t)w < sizeof(bad) - off)
                off += (size_t)w;
        }
    }
    cap_free(caps);
    if (off)
        return svc_log_errno(-EPERM, "refusing to run with capabilities residentd never needs: %s. Fix "
                             "residentd.service: CapabilityBoundingSet= (empty; or CAP_IPC_LOCK if you use it "
                             "instead of LimitMEMLOCK=) and remove them from AmbientCapabilities=", bad);

    r = caps_trim(c);
    if (r < 0)
        return svc_log_errno(r, "lowering capabilities failed: %s", strerror(-r));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return svc_log_errno(-errno, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
    for (int v = 0; v <= cap_last(); v++) {
        if (cap_get_bound((cap_value_t)v) > 0 && !cap_tolerated((cap_value_t)v)) {
            /* With NO_NEW_PRIVS the bounding set cannot be used to gain
             * anything, so this is advice, not a refusal. */
            svc_log(LOG_NOTICE, "bounding set still holds capabilities; CapabilityBoundingSet= "
                    "in residentd.service would remove them (harmless with NoNewPrivileges=yes)");
            break;
        }
    }
    svc_caps_describe(line, sizeof(line));
    svc_log(LOG_INFO, "credentials verified: %s", line);
    return 0;
}

static int caps_drop(struct svc_caps *c)
{
    const unsigned secbits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
                             SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
                             SECBIT_KEEP_CAPS_LOCKED |
                             SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    uid_t ru, eu, su;
    char line[1024];
    int n, r;

    if (geteuid() != 0)
        return svc_log_errno(-EPERM, "dropping privileges needs root (euid is %u); start residentd as root "
                             "or as the service user with privileges = verify", geteuid());
    n = thread_count();
    if (n != 1)
        return svc_log_errno(-EBUSY, "dropping privileges with %d threads would leave the other threads' "
                             "capabilities behind; call svc_caps_apply() before starting threads", n);

    /* 1. securebits: needs CAP_SETPCAP, which root has. */
    if (cap_set_secbits(secbits) < 0)
        return svc_log_errno(-errno, "setting securebits 0x%x: %s (needs CAP_SETPCAP; a container may "
                             "withhold it: start residentd as its own user with privileges = verify)",
                             secbits, strerror(errno));
    /* 2. ambient set: could otherwise re-enter permitted across execve. */
    if (CAP_AMBIENT_SUPPORTED() && cap_reset_ambient() < 0)
        return svc_log_errno(-errno, "clearing ambient capabilities: %s", strerror(errno));
    /* 3. bounding set. */
    for (int v = 0; v <= cap_last(); v++) {
        if (cap_kept(c, (cap_value_t)v) || cap_get_bound((cap_value_t)v) <= 0)
            continue;
        if (cap_drop_bound((cap_value_t)v) < 0)
            return svc_log_errno(-errno, "dropping capability %d from the bounding set: %s", v, strerror(errno));
    }
    /* 4. identity: groups first, while CAP_SETGID is still effective. */
    if (setgroups(c->n_groups, c->groups) < 0)
        return svc_log_errno(-errno, "setgroups: %s", strerror(errno));
    if (setresgid(c->gid, c->gid, c->gid) < 0)
        return svc_log_errno(-errno, "setresgid(%u): %s", c->gid, strerror(errno));
    if (setresuid(c->uid, c->uid, c->uid) < 0)
        return svc_log_errno(-errno, "setresuid(%u): %s", c->uid, strerror(errno));
    /* 5. capability sets. */
    r = caps_trim(c);
    if (r < 0)
        return svc_log_errno(r, "cap_set_proc after the uid change: %s", strerror(-r));
    /* 6. no gains through execve, ever. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return svc_log_errno(-errno, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
    /* 7. prove the drop. */
    if (getresuid(&ru, &eu, &su) < 0 || ru != c->uid || eu != c->uid || su != c->uid)
        return svc_log_errno(-EPERM, "uid is %u/%u/%u after the drop, expected %u", ru, eu, su, c->uid);
    if (setresuid(0, 0, 0) == 0)
        return svc_log_errno(-EPERM, "setresuid(0) still succeeds after the drop; refusing to continue");
    svc_caps_describe(line, sizeof(line));
    svc_log(LOG_INFO, "dropped privileges: %s", line);
    return 0;
}

int svc_caps_apply(struct svc_caps *c)
{
    return c->mode == SVC_CAPS_DROP ? caps_drop(c) : caps_verify(c);
}
