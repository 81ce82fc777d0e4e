/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-memlock: keep the weights in RAM.
 *
 * A 20 GB model that the kernel may page out under memory pressure turns a
 * 30 ms token into seconds of disk reads, so residentd locks the weight
 * mappings before it reports READY=1.  Two ways to be allowed to:
 *
 *   LimitMEMLOCK=<bytes> (the unit; chosen): PID 1 raises RLIMIT_MEMLOCK for
 *       us, no capability is needed, and the budget is bounded, so a bug
 *       cannot lock the whole machine.
 *   CAP_IPC_LOCK: unbounded.  Only for the by-hand root start (where we lock
 *       while still root, then drop it) or if hot reload must re-lock after
 *       the drop (svc_privs keep_ipc_lock).
 *
 * svc_memlock_check() runs before the load and fails early with the exact
 * byte count to put into LimitMEMLOCK=, instead of failing after minutes of
 * reading.  Locks are per mapping and survive dropping CAP_IPC_LOCK; they
 * die with the process, so a restart re-locks (svc-fdstore saves the read,
 * not the lock).
 *
 * Modes:
 *   SVC_MEMLOCK_NOW      mlock(): populate and lock now.  For weights, which
 *                        are read in full anyway.
 *   SVC_MEMLOCK_ONFAULT  mlock2(MLOCK_ONFAULT): lock pages as they are first
 *                        touched.  For arenas sized for the worst case (KV
 *                        cache, rings) that must not be paged out but should
 *                        not cost RAM before use.
 *   SVC_MEMLOCK_OFF      explicit no-lock mode (memlock = off): for desktops
 *                        without the budget; logged once, never an error.
 *
 * SVC_MEMLOCK_HUGEPAGE additionally asks for transparent huge pages
 * (MADV_HUGEPAGE) before locking: fewer TLB misses when a decode step walks
 * 3 GB of expert weights.  It applies to anonymous and shmem/memfd mappings
 * (needs /sys/kernel/mm/transparent_hugepage/shmem_enabled=advise for memfd)
 * and is skipped quietly where the kernel refuses it (page-cache-backed files).
 */
#ifndef RESIDENT_DAEMON_SVC_MEMLOCK_H
#define RESIDENT_DAEMON_SVC_MEMLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum svc_memlock_mode {
    SVC_MEMLOCK_OFF     = 0,
    SVC_MEMLOCK_NOW     = 1,
    SVC_MEMLOCK_ONFAULT = 2,
};

#define SVC_MEMLOCK_HUGEPAGE  (1u << 0)

struct svc_memlock {
    enum svc_memlock_mode mode;
    uint64_t locked_bytes;    /* page-rounded bytes this object locked */
    unsigned n_ranges;
    bool     off_logged;
};

/* Parse "on"/"lock", "onfault", "off" (residentd.conf memlock =). -EINVAL else. */
int svc_memlock_mode_parse(const char *s, enum svc_memlock_mode *ret);

void svc_memlock_init(struct svc_memlock *m, enum svc_memlock_mode mode);

/* Before loading: can `bytes` more be locked on top of what is locked now?
 * 0 = yes (or mode off); -ENOMEM with a message naming LimitMEMLOCK= and
 * CAP_IPC_LOCK and the exact byte count otherwise. */
int svc_memlock_check(const struct svc_memlock *m, uint64_t bytes);

/* Lock [addr, addr+len) per m->mode (rounded out to pages).  `what` names
 * the range in messages ("weights", "kv arena").  If CAP_IPC_LOCK is
 * permitted but not effective (kept for re-locks), it is raised around the
 * call and lowered again. */
int svc_memlock_range(struct svc_memlock *m, void *addr, size_t len, unsigned flags,
                      const char *what);

/* Undo svc_memlock_range() for a range being replaced (reload). */
int svc_memlock_unlock_range(struct svc_memlock *m, void *addr, size_t len);

/* VmLck of `pid` (0 = self) from /proc/PID/status, in bytes. */
int svc_memlock_vmlck(pid_t pid, uint64_t *ret_bytes);

/* RLIMIT_MEMLOCK soft limit in bytes (UINT64_MAX = unlimited). */
uint64_t svc_memlock_limit(void);

#endif
