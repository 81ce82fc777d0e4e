/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Session regions: creating (daemon) and attaching (client) the sealed memfd
 * described in shm/layout.h.
 *
 * The daemon creates the memfd with MFD_CLOEXEC|MFD_ALLOW_SEALING (and
 * MFD_NOEXEC_SEAL where the kernel has it, retrying without on EINVAL as on
 * Debian 12's 6.1), ftruncate()s it, writes header and control blocks,
 * then seals F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL. Both sides then map it
 * MAP_SHARED read-write: the rings need writes in both directions, so
 * F_SEAL_FUTURE_WRITE cannot be used; the safety comes from the ring rules
 * instead (shm/ring.h). With the size sealed, no access inside the mapping
 * can SIGBUS.
 *
 * Errors: 0 or -errno; messages in @why name the field or limit.
 */
#ifndef RESIDENT_SHM_REGION_H
#define RESIDENT_SHM_REGION_H

#include <stddef.h>
#include <stdint.h>

#include "shm/layout.h"
#include "shm/ring.h"

struct shm_region {
    int               fd;      /* memfd, -1 when not owned */
    uint8_t          *base;    /* mapping */
    struct shm_layout layout;
};

/**
 * shm_region_create() - create, size, initialise and seal a session region
 * @r: filled on success (fd owned by @r)
 * @session_id: written into the header
 * @req_cap: request ring bytes (power of two within SHM_RING_MIN..SHM_RING_MAX)
 * @evt_cap: event ring bytes (same rules)
 * @data_size: data area bytes (multiple of SHM_PAGE, <= SHM_DATA_MAX)
 *
 * Return: 0 or -errno (memfd_create, ftruncate, mmap or F_ADD_SEALS failure;
 * -EINVAL on illegal sizes).
 */
int shm_region_create(struct shm_region *r, uint64_t session_id, uint64_t req_cap,
                      uint64_t evt_cap, uint64_t data_size);

/**
 * shm_region_attach() - map and validate a region received from the daemon
 * @r: filled on success; takes ownership of @fd on success only
 * @fd: the memfd
 * @why: set to a static message on failure (may be NULL)
 *
 * Checks that @fd is a sealed regular file (F_SEAL_SHRINK and F_SEAL_GROW),
 * maps it and validates the header against the mapped size.
 *
 * Return: 0 or -errno (-EPROTO for a header this ABI does not understand).
 */
int shm_region_attach(struct shm_region *r, int fd, const char **why);

/**
 * shm_region_destroy() - unmap and close
 * @r: region (may be zeroed / partially set up; fd -1 and base NULL are skipped)
 */
void shm_region_destroy(struct shm_region *r);

static inline struct shm_ring_ctl *shm_region_req_ctl(const struct shm_region *r)
{
    return (struct shm_ring_ctl *)(void *)(r->base + SHM_REQ_CTL_OFF);
}

static inline struct shm_ring_ctl *shm_region_evt_ctl(const struct shm_region *r)
{
    return (struct shm_ring_ctl *)(void *)(r->base + SHM_EVT_CTL_OFF);
}

#endif
