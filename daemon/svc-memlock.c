/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-memlock.h"
#include "daemon/svc-log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <sys/capability.h>

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif

int svc_memlock_mode_parse(const char *s, enum svc_memlock_mode *ret)
{
    if (!strcmp(s, "on") || !strcmp(s, "lock") || !strcmp(s, "yes"))
        *ret = SVC_MEMLOCK_NOW;
    else if (!strcmp(s, "onfault"))
        *ret = SVC_MEMLOCK_ONFAULT;
    else if (!strcmp(s, "off") || !strcmp(s, "no"))
        *ret = SVC_MEMLOCK_OFF;
    else
        return svc_log_errno(-EINVAL, "memlock = %s: expected on, onfault or off", s);
    return 0;
}

void svc_memlock_init(struct svc_memlock *m, enum svc_memlock_mode mode)
{
    memset(m, 0, sizeof(*m));
    m->mode = mode;
}

uint64_t svc_memlock_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return UINT64_MAX;
    return (uint64_t)rl.rlim_cur;
}

int svc_memlock_vmlck(pid_t pid, uint64_t *ret_bytes)
{
    char path[64], line[256];
    FILE *f;
    int r = -ENODATA;

    if (pid == 0)
        snprintf(path, sizeof(path), "/proc/self/status");
    else
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f)) {
        unsigned long long kb;

        /* "VmLck:\t    1024 kB"; kernel threads have no Vm* lines. */
        if (sscanf(line, "VmLck: %llu kB", &kb) == 1) {
            *ret_bytes = (uint64_t)kb * 1024u;
            r = 0;
            break;
        }
    }
    fclose(f);
    return r;
}

/* CAP_IPC_LOCK state of this thread: 'e' effective, 'p' permitted only, 0 none. */
static int ipc_lock_state(void)
{
    cap_t caps = cap_get_proc();
    cap_flag_value_t eff = CAP_CLEAR, prm = CAP_CLEAR;

    if (!caps)
        return 0;
    cap_get_flag(caps, CAP_IPC_LOCK, CAP_EFFECTIVE, &eff);
    cap_get_flag(caps, CAP_IPC_LOCK, CAP_PERMITTED, &prm);
    cap_free(caps);
    return eff == CAP_SET ? 'e' : prm == CAP_SET ? 'p' : 0;
}

static int ipc_lock_raise(bool on)
{
    cap_t caps = cap_get_proc();
    cap_value_t v = CAP_IPC_LOCK;
    int r = 0;

    if (!caps)
        return -errno;
    if (cap_set_flag(caps, CAP_EFFECTIVE, 1, &v, on ? CAP_SET : CAP_CLEAR) < 0 || cap_set_proc(caps) < 0)
        r = -errno;
    cap_free(caps);
    return r;
}

static uint64_t page_round(const void *addr, size_t len, uintptr_t *start)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)addr & ~(pg - 1);
    uintptr_t e = ((uintptr_t)addr + len + pg - 1) & ~(pg - 1);

    *start = a;
    return (uint64_t)(e - a);
}

static int memlock_explain(int err, uint64_t need_total, uint64_t more, const char *what)
{
    uint64_t lim = svc_memlock_limit();
    char limtxt[32];

    if (lim == UINT64_MAX)
        snprintf(limtxt, sizeof(limtxt), "infinity");
    else
        snprintf(limtxt, sizeof(limtxt), "%" PRIu64, lim);
    return svc_log_errno(err, "cannot lock %" PRIu64 " bytes of %s: %" PRIu64 " bytes would be locked in "
                         "total but RLIMIT_MEMLOCK is %s bytes and CAP_IPC_LOCK is not effective. Fix: set "
                         "LimitMEMLOCK=%" PRIu64 " (or more) in residentd.service (drop-in: systemctl edit "
                         "residentd.service), or for a by-hand start `ulimit -l %" PRIu64 "` as root, or "
                         "set memlock = off in residentd.conf to run unlocked",
                         more, what, need_total, limtxt, need_total, (need_total + 1023) / 1024);
}

int svc_memlock_check(const struct svc_memlock *m, uint64_t bytes)
{
    uint64_t locked = 0, lim;

    if (m->mode == SVC_MEMLOCK_OFF)
        return 0;
    if (ipc_lock_state() != 0)
        return 0;   /* CAP_IPC_LOCK (raised around the lock if only permitted) ignores RLIMIT_MEMLOCK */
    lim = svc_memlock_limit();
    if (lim == UINT64_MAX)
        return 0;
    svc_memlock_vmlck(0, &locked);
    if (bytes > UINT64_MAX - locked || locked + bytes > lim)
        return memlock_explain(-ENOMEM, locked + bytes, bytes, "model memory");
    return 0;
}

int svc_memlock_range(struct svc_memlock *m, void *addr, size_t len, unsigned flags, const char *what)
{
    uintptr_t start;
    uint64_t bytes = page_round(addr, len, &start);
    bool raised = false;
    int r = 0;

    if (m->mode == SVC_MEMLOCK_OFF) {
        if (!m->off_logged)
            svc_log(LOG_NOTICE, "memlock = off: %s and later ranges stay pageable "
                    "(latency spikes under memory pressure)", what);
        m->off_logged = true;
        return 0;
    }
    if (len == 0)
        return 0;

    if (flags & SVC_MEMLOCK_HUGEPAGE) {
        /* Advisory: EINVAL = this mapping type cannot use THP; not an error. */
        if (madvise((void *)start, (size_t)bytes, MADV_HUGEPAGE) < 0 && errno != EINVAL)
            svc_log(LOG_INFO, "MADV_HUGEPAGE on %s: %s (continuing with small pages)", what, strerror(errno));
    }

    if (ipc_lock_state() == 'p') {
        /* Kept in permitted only for this moment (see svc-caps.h). */
        raised = ipc_lock_raise(true) == 0;
    }
    /* mlock2(…, 0) is mlock(); called this way because AddressSanitizer
     * turns mlock()/munlock() into silent no-ops, and the CI sanitizer build
     * must lock for real to test VmLck. */
    r = mlock2((void *)start, (size_t)bytes, m->mode == SVC_MEMLOCK_ONFAULT ? MLOCK_ONFAULT : 0);
    if (r < 0)
        r = -errno;
    if (raised)
        ipc_lock_raise(false);

    if (r == -ENOMEM || r == -EPERM || r == -EAGAIN) {
        uint64_t locked = 0;

        svc_memlock_vmlck(0, &locked);
        return memlock_explain(r, locked + bytes, bytes, what);
    }
    if (r < 0)
        return svc_log_errno(r, "mlock of %s (%" PRIu64 " bytes) failed: %s "
                             "(SystemCallFilter= must allow @memlock)", what, bytes, strerror(-r));
    m->locked_bytes += bytes;
    m->n_ranges++;
    return 0;
}

int svc_memlock_unlock_range(struct svc_memlock *m, void *addr, size_t len)
{
    uintptr_t start;
    uint64_t bytes = page_round(addr, len, &start);

    if (m->mode == SVC_MEMLOCK_OFF || len == 0)
        return 0;
    if (syscall(SYS_munlock, (void *)start, (size_t)bytes) < 0)   /* see mlock2 above */
        return -errno;
    m->locked_bytes = m->locked_bytes >= bytes ? m->locked_bytes - bytes : 0;
    if (m->n_ranges)
        m->n_ranges--;
    return 0;
}
