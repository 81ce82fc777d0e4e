/* SPDX-License-Identifier: Apache-2.0 */
/*
 * svc-fdstore: survive a crash or `systemctl restart` without re-reading
 * 20 GB of weights.
 *
 * systemd keeps fds a service hands it (sd_pid_notify_with_fds
 * "FDSTORE=1\nFDNAME=resident-weights", FileDescriptorStoreMax= in the unit;
 * residentd also stores "resident-tokenizer", the tokenizer's cache image)
 * and passes them back on the next start in LISTEN_FDS/LISTEN_FDNAMES, next
 * to the listening socket (svc-activate.h sorts them).  The store survives
 * Restart=on-failure and `systemctl restart`; it is discarded when the
 * service is stopped for good (systemd 252).
 *
 * The container is a sealed memfd:
 *
 *   offset 0               struct svc_fdstore_header (128 bytes, below)
 *   offset payload_offset  payload (page aligned), written by the engine:
 *                          its business what the bytes mean
 *
 * Lifecycle:
 *   svc_fdstore_create()   memfd (MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL when the
 *                          kernel has it), sized, sealed SHRINK|GROW at once,
 *                          mapped read-write; the engine fills the payload
 *   svc_fdstore_finish()   mark COMPLETE, checksum the header, seal
 *                          FUTURE_WRITE|SEAL, replace our mapping in place by
 *                          a read-only one: from here on nobody, us included,
 *                          can change a byte (lock the payload after this)
 *   svc_fdstore_push()     hand it to systemd's fd store
 *   --- crash / restart ---
 *   svc_activation_take_fd(&act, "resident-weights")
 *   svc_fdstore_open()     validate and map read-only; -ESTALE / -EBADMSG
 *                          on a mismatch, then svc_fdstore_discard()
 *
 * Why the checks are enough: only the service's main process can add to its
 * fd store (NotifyAccess=main), so a stored memfd was made by an earlier
 * residentd.  The danger is staleness (model files replaced, a newer daemon
 * with a different payload layout) and a crash mid-fill, not forgery.
 * Identity = FNV-1a 64 of the model's config bytes + FNV-1a 64 over each
 * weight file's name, size and mtime (ns) + total bytes + file count + the
 * engine's payload layout version; COMPLETE is set only after the payload
 * is written, and the header hash catches a torn header.  The seals are
 * checked too: an unsealed or writable memfd was not made by this code.
 * FNV is not a cryptographic hash; it does not need to be here.
 *
 * A restart re-maps but must re-lock: mlock belongs to the mapping, not to
 * the memfd (svc-memlock.h).
 */
#ifndef RESIDENT_DAEMON_SVC_FDSTORE_H
#define RESIDENT_DAEMON_SVC_FDSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SVC_FDSTORE_WEIGHTS_NAME  "resident-weights"
#define SVC_FDSTORE_TOKENIZER_NAME "resident-tokenizer"   /* the tokenizer's cache image */
#define SVC_FDSTORE_MAGIC         "RSDFDST"           /* 7 chars + NUL = 8 bytes */
#define SVC_FDSTORE_VERSION       1u
#define SVC_FDSTORE_F_COMPLETE    (1u << 0)

/* The on-memfd header.  Host byte order: the memfd never leaves this
 * machine, let alone this kernel. */
struct svc_fdstore_header {
    char     magic[8];              /* SVC_FDSTORE_MAGIC incl. NUL          */
    uint32_t version;               /* SVC_FDSTORE_VERSION                  */
    uint32_t header_size;           /* sizeof(struct svc_fdstore_header)    */
    uint64_t region_size;           /* bytes, == fstat().st_size            */
    uint64_t payload_offset;        /* bytes, page aligned, >= header_size  */
    uint64_t payload_size;          /* bytes, <= region_size - offset       */
    uint64_t config_hash;           /* identity: FNV-1a 64 of config bytes  */
    uint64_t files_hash;            /* identity: FNV-1a 64 of name/size/mtime */
    uint64_t files_bytes;           /* identity: sum of weight file sizes   */
    uint32_t n_files;               /* identity: number of weight files     */
    uint32_t flags;                 /* SVC_FDSTORE_F_*                      */
    uint64_t created_realtime_usec; /* CLOCK_REALTIME µs, for log lines     */
    uint64_t header_hash;           /* FNV-1a 64 of this header, field = 0  */
    uint32_t payload_version;       /* identity: engine's payload layout    */
    uint8_t  reserved[36];          /* must be zero                         */
};
_Static_assert(sizeof(struct svc_fdstore_header) == 128, "fd-store header is 128 bytes");
_Static_assert(offsetof(struct svc_fdstore_header, header_hash) == 80, "fd-store header layout");
_Static_assert(offsetof(struct svc_fdstore_header, reserved) == 92, "fd-store header layout");

/* What the stored content must match to be reused. */
struct svc_fdstore_identity {
    uint64_t config_hash;
    uint64_t files_hash;
    uint64_t files_bytes;
    uint32_t n_files;
    uint32_t payload_version;
};

struct svc_fdstore_region {
    int          fd;            /* the memfd (owned by the region)        */
    void        *base;          /* mapping of the whole memfd             */
    size_t       size;          /* region_size                            */
    void        *payload;       /* base + payload_offset                  */
    size_t       payload_size;
    bool         writable;      /* between create() and finish()          */
};

/* FNV-1a 64; `h` = previous value (SVC_FDSTORE_FNV_INIT to start). */
#define SVC_FDSTORE_FNV_INIT 0xcbf29ce484222325ULL
uint64_t svc_fdstore_fnv1a(uint64_t h, const void *data, size_t len);

void svc_fdstore_identity_init(struct svc_fdstore_identity *id, uint32_t payload_version);
/* Feed the model configuration bytes (config.json, quantization config). */
void svc_fdstore_identity_add_config(struct svc_fdstore_identity *id, const void *data, size_t len);
/* Feed one weight file: name, size and mtime from fstatat(dirfd, name). */
int svc_fdstore_identity_add_file(struct svc_fdstore_identity *id, int dirfd, const char *name);

/* New container with `payload_size` writable bytes.  `name` shows up in
 * /proc/PID/maps as "memfd:<name>". */
int svc_fdstore_create(const char *name, const struct svc_fdstore_identity *id,
                       size_t payload_size, struct svc_fdstore_region *out);

/* Payload complete: seal and make read-only (see above).  r->base and
 * r->payload keep their addresses; an mlock taken before is dropped. */
int svc_fdstore_finish(struct svc_fdstore_region *r);

/* FDSTORE=1 + FDNAME=<fdname> (must start with "resident-").  Without a
 * service manager (NOTIFY_SOCKET unset) this logs once and returns 0.
 * Returns 1 when systemd got the fd. */
int svc_fdstore_push(const struct svc_fdstore_region *r, const char *fdname);

/* Validate an fd from the store against `expect` and map it read-only.
 * On success `out` owns `fd`.  On failure `fd` stays the caller's:
 *   -EBADMSG  not a container made by this code (seals, magic, bounds, hash)
 *   -EPROTO   another container version
 *   -ESTALE   a container for other model files / payload layout
 *   -EINPROGRESS  the previous process died while filling it (not COMPLETE)
 * and one log line says which. */
int svc_fdstore_open(int fd, const struct svc_fdstore_identity *expect,
                     struct svc_fdstore_region *out);

/* Close `fd` and ask systemd to forget every stored fd named `fdname`
 * (FDSTOREREMOVE=1), so a stale container stops costing RAM. */
int svc_fdstore_discard(int fd, const char *fdname);

/* Unmap and close. */
void svc_fdstore_region_close(struct svc_fdstore_region *r);

#endif
