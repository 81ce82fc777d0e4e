/* SPDX-License-Identifier: Apache-2.0 */
/* Session regions: layout arithmetic, memfd creation and sealing, attach. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/region.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

uint64_t shm_layout_round_ring(uint64_t want, uint64_t dflt)
{
    if (want == 0)
        want = dflt;
    if (want <= SHM_RING_MIN)
        return SHM_RING_MIN;
    if (want >= SHM_RING_MAX)
        return SHM_RING_MAX;
    uint64_t v = SHM_RING_MIN;
    while (v < want)
        v <<= 1;
    return v;
}

int shm_layout_compute(uint64_t req_cap, uint64_t evt_cap, uint64_t data_size, struct shm_layout *out)
{
    if (!is_pow2(req_cap) || req_cap < SHM_RING_MIN || req_cap > SHM_RING_MAX ||
        !is_pow2(evt_cap) || evt_cap < SHM_RING_MIN || evt_cap > SHM_RING_MAX ||
        data_size > SHM_DATA_MAX || data_size % SHM_PAGE)
        return -EINVAL;
    /* All terms are bounded far below 2^63, so the sums cannot overflow. */
    out->req_cap = req_cap;
    out->evt_cap = evt_cap;
    out->data_size = data_size;
    out->req_data_off = SHM_RINGS_OFF;
    out->evt_data_off = out->req_data_off + req_cap;
    out->data_off = out->evt_data_off + evt_cap;
    out->region_size = out->data_off + data_size;
    return 0;
}

int shm_region_hdr_validate(const struct shm_region_hdr *h, uint64_t map_size,
                            struct shm_layout *out, const char **why)
{
    const char *w = NULL;
    struct shm_layout l;

    if (h->magic != SHM_REGION_MAGIC)
        w = "region header: bad magic";
    else if (h->abi_version != SHM_ABI_VERSION)
        w = "region header: abi_version differs from this library's SHM_ABI_VERSION (upgrade the client)";
    else if (h->hdr_size != sizeof(*h))
        w = "region header: hdr_size mismatch";
    else if (h->flags != 0 || h->reserved[0] || h->reserved[1] || h->reserved[2] || h->reserved[3])
        w = "region header: flags/reserved must be 0";
    else if (h->req_ctl_off != SHM_REQ_CTL_OFF || h->evt_ctl_off != SHM_EVT_CTL_OFF)
        w = "region header: control block offsets are not the ABI's";
    else if (shm_layout_compute(h->req_cap, h->evt_cap, h->data_size, &l) != 0)
        w = "region header: ring or data sizes out of range";
    else if (l.req_data_off != h->req_data_off || l.evt_data_off != h->evt_data_off ||
             l.data_off != h->data_off || l.region_size != h->region_size)
        w = "region header: offsets disagree with the sizes";
    else if (h->region_size > map_size)
        w = "region header: region_size exceeds the memfd size";
    if (w) {
        if (why)
            *why = w;
        return -EPROTO;
    }
    *out = l;
    return 0;
}

static int memfd_make(void)
{
    int fd = memfd_create("resident-session", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd < 0 && errno == EINVAL)   /* kernel < 6.3 */
        fd = memfd_create("resident-session", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd < 0 ? -errno : fd;
}

int shm_region_create(struct shm_region *r, uint64_t session_id, uint64_t req_cap,
                      uint64_t evt_cap, uint64_t data_size)
{
    struct shm_layout l;
    int ret = shm_layout_compute(req_cap, evt_cap, data_size, &l);
    if (ret < 0)
        return ret;
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    int fd = memfd_make();
    if (fd < 0)
        return fd;
    if (ftruncate(fd, (off_t)l.region_size) < 0) {
        ret = -errno;
        close(fd);
        return ret;
    }
    void *m = mmap(NULL, l.region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        ret = -errno;
        close(fd);
        return ret;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        ret = -errno;
        munmap(m, l.region_size);
        close(fd);
        return ret;
    }
    r->fd = fd;
    r->base = m;
    r->layout = l;

    struct shm_region_hdr h = {
        .magic = SHM_REGION_MAGIC,
        .abi_version = SHM_ABI_VERSION,
        .hdr_size = sizeof(h),
        .region_size = l.region_size,
        .session_id = session_id,
        .req_ctl_off = SHM_REQ_CTL_OFF,
        .req_data_off = l.req_data_off,
        .req_cap = l.req_cap,
        .evt_ctl_off = SHM_EVT_CTL_OFF,
        .evt_data_off = l.evt_data_off,
        .evt_cap = l.evt_cap,
        .data_off = l.data_off,
        .data_size = l.data_size,
    };
    memcpy(r->base, &h, sizeof(h));
    shm_ring_ctl_init(shm_region_req_ctl(r));
    shm_ring_ctl_init(shm_region_evt_ctl(r));
    return 0;
}

int shm_region_attach(struct shm_region *r, int fd, const char **why)
{
    struct stat st;
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size < (off_t)SHM_RINGS_OFF) {
        if (why)
            *why = "region fd is not a regular file of at least one page";
        return -EPROTO;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
        if (why)
            *why = "region fd is not sealed against shrink/grow";
        return -EPROTO;
    }
    uint64_t size = (uint64_t)st.st_size;
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return -errno;
    struct shm_region_hdr h;
    memcpy(&h, m, sizeof(h));
    int ret = shm_region_hdr_validate(&h, size, &r->layout, why);
    if (ret < 0) {
        munmap(m, size);
        return ret;
    }
    const struct shm_ring_ctl *rc = (const void *)((uint8_t *)m + SHM_REQ_CTL_OFF);
    const struct shm_ring_ctl *ec = (const void *)((uint8_t *)m + SHM_EVT_CTL_OFF);
    if (rc->magic != SHM_RING_MAGIC || ec->magic != SHM_RING_MAGIC ||
        rc->size != sizeof(*rc) || ec->size != sizeof(*ec)) {
        munmap(m, size);
        if (why)
            *why = "region: ring control block magic/size mismatch";
        return -EPROTO;
    }
    /* Map exactly what the header describes from here on. */
    /* region_size is a page multiple (layout rules), so the tail beyond
     * it can be unmapped exactly. */
    if (size > r->layout.region_size)
        munmap((uint8_t *)m + r->layout.region_size, size - r->layout.region_size);
    r->base = m;
    r->fd = fd;
    return 0;
}

void shm_region_destroy(struct shm_region *r)
{
    if (r->base)
        munmap(r->base, r->layout.region_size);
    if (r->fd >= 0)
        close(r->fd);
    r->base = NULL;
    r->fd = -1;
}
