/* SPDX-License-Identifier: Apache-2.0 */
#include "daemon/svc-fdstore.h"
#include "daemon/svc-log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U   /* Linux 6.3; Debian 12's headers predate it */
#endif

/* Seals a finished container carries. */
#define SEALS_FINISHED (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)

uint64_t svc_fdstore_fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

void svc_fdstore_identity_init(struct svc_fdstore_identity *id, uint32_t payload_version)
{
    memset(id, 0, sizeof(*id));
    id->config_hash = SVC_FDSTORE_FNV_INIT;
    id->files_hash = SVC_FDSTORE_FNV_INIT;
    id->payload_version = payload_version;
}

void svc_fdstore_identity_add_config(struct svc_fdstore_identity *id, const void *data, size_t len)
{
    id->config_hash = svc_fdstore_fnv1a(id->config_hash, data, len);
}

int svc_fdstore_identity_add_file(struct svc_fdstore_identity *id, int dirfd, const char *name)
{
    struct stat st;
    uint64_t v[3];

    if (fstatat(dirfd, name, &st, 0) < 0)
        return svc_log_errno(-errno, "stat of weight file %s: %s", name, strerror(errno));
    v[0] = (uint64_t)st.st_size;
    v[1] = (uint64_t)st.st_mtim.tv_sec;
    v[2] = (uint64_t)st.st_mtim.tv_nsec;
    /* Name with its NUL, so "ab"+"c" and "a"+"bc" hash differently. */
    id->files_hash = svc_fdstore_fnv1a(id->files_hash, name, strlen(name) + 1);
    id->files_hash = svc_fdstore_fnv1a(id->files_hash, v, sizeof(v));
    id->files_bytes += (uint64_t)st.st_size;
    id->n_files++;
    return 0;
}

static uint64_t header_hash(const struct svc_fdstore_header *h)
{
    struct svc_fdstore_header copy = *h;

    copy.header_hash = 0;
    return svc_fdstore_fnv1a(SVC_FDSTORE_FNV_INIT, &copy, sizeof(copy));
}

static void region_reset(struct svc_fdstore_region *r)
{
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}

int svc_fdstore_create(const char *name, const struct svc_fdstore_identity *id,
                       size_t payload_size, struct svc_fdstore_region *out)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    /* Page-aligned payload: the engine may mmap the payload alone, and huge
     * pages want alignment anyway. */
    size_t off = (sizeof(struct svc_fdstore_header) + pg - 1) & ~(pg - 1);
    struct svc_fdstore_header *h;
    struct timespec ts;
    void *base;
    int fd, r;

    region_reset(out);
    if (payload_size > SIZE_MAX - off)
        return svc_log_errno(-EOVERFLOW, "fd-store payload of %zu bytes is too large", payload_size);
    fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
    if (fd < 0 && errno == EINVAL)
        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);   /* kernel < 6.3 */
    if (fd < 0)
        return svc_log_errno(-errno, "memfd_create(%s): %s (SystemCallFilter= must allow @ipc)",
                             name, strerror(errno));
    if (ftruncate(fd, (off_t)(off + payload_size)) < 0) {
        r = svc_log_errno(-errno, "sizing fd-store memfd to %zu bytes: %s (MemoryMax= of the unit or "
                          "/dev/shm limits?)", off + payload_size, strerror(errno));
        close(fd);
        return r;
    }
    /* Fix the size at once: from here on nothing can shrink it under a
     * mapping (SIGBUS) or grow it (RAM). */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        r = svc_log_errno(-errno, "sealing fd-store memfd: %s", strerror(errno));
        close(fd);
        return r;
    }
    base = mmap(NULL, off + payload_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        r = svc_log_errno(-errno, "mapping fd-store memfd (%zu bytes): %s", off + payload_size, strerror(errno));
        close(fd);
        return r;
    }
    h = base;
    memcpy(h->magic, SVC_FDSTORE_MAGIC, sizeof(h->magic));
    h->version = SVC_FDSTORE_VERSION;
    h->header_size = sizeof(*h);
    h->region_size = off + payload_size;
    h->payload_offset = off;
    h->payload_size = payload_size;
    h->config_hash = id->config_hash;
    h->files_hash = id->files_hash;
    h->files_bytes = id->files_bytes;
    h->n_files = id->n_files;
    h->payload_version = id->payload_version;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->created_realtime_usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    h->flags = 0;                       /* not COMPLETE until finish() */

    out->fd = fd;
    out->base = base;
    out->size = off + payload_size;
    out->payload = (char *)base + off;
    out->payload_size = payload_size;
    out->writable = true;
    return 0;
}

int svc_fdstore_finish(struct svc_fdstore_region *r)
{
    struct svc_fdstore_header *h = r->base;

    if (!r->writable)
        return -EALREADY;
    h->flags |= SVC_FDSTORE_F_COMPLETE;
    h->header_hash = header_hash(h);
    /* FUTURE_WRITE: no new writable mapping, no write(2).  Our own mapping
     * predates the seal and could still be mprotect()ed back to writable,
     * so replace it, at the same address, by a read-only mapping made after
     * the seal (the kernel then withholds VM_MAYWRITE).  The pages are the
     * same shmem pages: nothing is copied.  Any mlock on the old mapping is
     * gone with it, so lock after finish(). */
    if (fcntl(r->fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0)
        return svc_log_errno(-errno, "sealing fd-store memfd read-only: %s (needs Linux 5.1)", strerror(errno));
    if (mmap(r->base, r->size, PROT_READ, MAP_SHARED | MAP_FIXED, r->fd, 0) == MAP_FAILED)
        return svc_log_errno(-errno, "remapping fd-store container read-only: %s", strerror(errno));
    r->writable = false;
    return 0;
}

int svc_fdstore_push(const struct svc_fdstore_region *r, const char *fdname)
{
    static bool told;
    char msg[300];
    int fd = r->fd, ret;

    if (strncmp(fdname, "resident-", 9) != 0 || strlen(fdname) > 255 || strchr(fdname, ':') ||
        strchr(fdname, '\n'))
        return svc_log_errno(-EINVAL, "fd-store name \"%s\" must start with \"resident-\", be at most "
                             "255 bytes and contain no ':' or newline", fdname);
    if (r->writable)
        return svc_log_errno(-EINVAL, "fd-store container \"%s\" must be finished (sealed) before it is "
                             "stored", fdname);
    if (!getenv("NOTIFY_SOCKET")) {
        if (!told)
            svc_log(LOG_INFO, "no service manager (NOTIFY_SOCKET unset): \"%s\" is not kept across "
                    "restarts", fdname);
        told = true;
        return 0;
    }
    snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", fdname);
    ret = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
    if (ret < 0)
        return svc_log_errno(ret, "storing \"%s\" in the fd store failed: %s (FileDescriptorStoreMax= "
                             "in residentd.service must be > 0 and NotifyAccess=main)", fdname, strerror(-ret));
    return 1;
}

int svc_fdstore_discard(int fd, const char *fdname)
{
    char msg[300];
    int r;

    if (fd >= 0)
        close(fd);
    if (!getenv("NOTIFY_SOCKET"))
        return 0;
    snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", fdname);
    r = sd_notify(0, msg);
    return r < 0 ? r : 0;
}

int svc_fdstore_open(int fd, const struct svc_fdstore_identity *expect, struct svc_fdstore_region *out)
{
    struct svc_fdstore_header h;
    struct stat st;
    void *base;
    int seals;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);

    region_reset(out);
    if (fstat(fd, &st) < 0)
        return -errno;
    seals = fcntl(fd, F_GET_SEALS);
    /* Only shmem supports seals: this also rules out files on FUSE/NFS. */
    if (!S_ISREG(st.st_mode) || seals < 0 || (seals & SEALS_FINISHED) != SEALS_FINISHED) {
        svc_log(LOG_WARNING, "fd-store entry is not a sealed memfd (seals 0x%x); not made by residentd, "
                "discarding it", seals < 0 ? 0 : seals);
        return -EBADMSG;
    }
    if ((uint64_t)st.st_size < sizeof(h) || (uint64_t)st.st_size > SIZE_MAX) {
        svc_log(LOG_WARNING, "fd-store entry has %jd bytes, too small for a header; discarding it",
                (intmax_t)st.st_size);
        return -EBADMSG;
    }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return svc_log_errno(-errno, "mapping fd-store entry (%jd bytes): %s", (intmax_t)st.st_size,
                             strerror(errno));
    memcpy(&h, base, sizeof(h));

    {
        const char *why = NULL;
        int err = -EBADMSG;
        bool reserved_zero = true;

        for (size_t i = 0; i < sizeof(h.reserved); i++)
            reserved_zero &= h.reserved[i] == 0;
        if (memcmp(h.magic, SVC_FDSTORE_MAGIC, sizeof(h.magic)) != 0)
            why = "bad magic";
        else if (h.version != SVC_FDSTORE_VERSION)
            why = "container version differs", err = -EPROTO;
        else if (h.header_size != sizeof(h) || !reserved_zero)
            why = "header size or reserved bytes differ";
        else if (h.header_hash != header_hash(&h))
            why = "header checksum mismatch";
        else if (h.region_size != (uint64_t)st.st_size)
            why = "region size differs from the memfd size";
        else if (h.payload_offset < sizeof(h) || h.payload_offset % pg || h.payload_offset > h.region_size ||
                 h.payload_size > h.region_size - h.payload_offset)
            why = "payload out of bounds";
        else if (!(h.flags & SVC_FDSTORE_F_COMPLETE))
            why = "payload incomplete (previous residentd died while filling it)", err = -EINPROGRESS;
        else if (h.config_hash != expect->config_hash || h.files_hash != expect->files_hash ||
                 h.files_bytes != expect->files_bytes || h.n_files != expect->n_files)
            why = "built from other model files (config, sizes or mtimes changed)", err = -ESTALE;
        else if (h.payload_version != expect->payload_version)
            why = "built by an engine with another payload layout", err = -ESTALE;
        if (why) {
            svc_log(LOG_NOTICE, "fd-store container (v%u, %" PRIu64 " payload bytes, %u files) rejected: %s; "
                    "loading from disk instead", h.version, h.payload_size, h.n_files, why);
            munmap(base, (size_t)st.st_size);
            return err;
        }
    }

    out->fd = fd;
    out->base = base;
    out->size = (size_t)st.st_size;
    out->payload = (char *)base + h.payload_offset;
    out->payload_size = (size_t)h.payload_size;
    out->writable = false;
    svc_log(LOG_INFO, "reusing fd-store container: %" PRIu64 " payload bytes from %u files", h.payload_size,
            h.n_files);
    return 0;
}

void svc_fdstore_region_close(struct svc_fdstore_region *r)
{
    if (r->base)
        munmap(r->base, r->size);
    if (r->fd >= 0)
        close(r->fd);
    region_reset(r);
}
