/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd: serve a model to local clients over a SEQPACKET control socket
 * and per-session shared-memory rings. Runs in the foreground, logs to
 * stderr. See docs/protocol.md; start-up order in docs/service.md:
 *
 *   config -> svc_caps_init (who we are, whom to become) -> svc_notify_init
 *   -> svc_activation_listen (systemd's socket + fd-store entries, or our
 *   own socket while still root) -> weights: svc_memlock_check, fd-store
 *   reuse or load (+ store), svc_memlock_range -> STATUS= with VmLck ->
 *   svc_caps_apply (single-threaded) -> generator create -> daemon_run
 *   (io_uring, worker thread, READY=1, watchdog in the loop).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/daemon.h"
#include "daemon/gen.h"
#include "daemon/svc-activate.h"
#include "daemon/svc-caps.h"
#include "daemon/svc-fdstore.h"
#include "daemon/svc-log.h"
#include "daemon/svc-memlock.h"
#include "daemon/svc-notify.h"
#include "engine/safetensors.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: residentd [--model DIR] [--socket PATH] [--config FILE] [--generator NAME]\n"
        "                 [--backend auto|cpu|cpu-ref|cuda|hip] [--kernel-dir DIR] [--threads N]\n"
        "                 [--no-lock] [-o KEY=VALUE]...\n"
        "\n"
        "  --model DIR        model directory (loaded by the engine generator)\n"
        "  --socket PATH      control socket (default %s)\n"
        "  --config FILE      configuration file (default %s, optional)\n"
        "  --generator NAME   'null' = deterministic synthetic tokens, not a model\n"
        "  --backend NAME     engine backend: auto (default: a usable GPU, else the fast CPU\n"
        "                     backend), cpu, cpu-ref, cuda, hip (that GPU or refuse to start)\n"
        "  --kernel-dir DIR   GPU code objects (default: where meson installs them)\n"
        "  --threads N        compute threads (default 0 = the CPUs residentd may run on)\n"
        "  --no-lock          do not lock the weights in RAM (= -o memlock=off)\n"
        "  -o KEY=VALUE       override one configuration key\n"
        "\n"
        "configuration keys: socket socket_mode socket_group model generator allow_uids allow_gids\n"
        "  allow_groups max_sessions max_sessions_per_uid max_inflight_per_uid max_prompt_tokens\n"
        "  max_new_tokens max_prompt_tokens_per_uid max_new_tokens_per_uid max_ring_bytes_per_uid\n"
        "  max_fds_per_uid max_batch prefill_chunk\n"
        "  slow_client_ms handshake_ms shutdown_grace_ms privileges user supplementary_groups\n"
        "  keep_cap_ipc_lock memlock fd_store status_interval_sec backend kernel_dir gpu_device\n"
        "  threads prefix_cache prefix_cache_bytes\n",
        DAEMON_SOCKET_DEFAULT, DAEMON_CONFIG_DEFAULT_PATH);
}

/* ---- weights: mapped, locked, and kept in the fd store ----
 *
 * residentd locks the checkpoint before READY=1, whichever generator runs:
 * the engine generator maps the same files, and the page-cache pages locked
 * through our mapping are the ones it reads (the null generator ignores the
 * model, but the locking, the fd store and their tests still apply).
 *
 * Without the fd store: st_set_open_dir() maps every shard read-only and
 * each mapping is locked (mlock populates it from disk or the page cache).
 *
 * With the fd store: every *.safetensors file of the model directory is
 * copied once into one sealed memfd (svc-fdstore.h), behind a table of
 * names, offsets and sizes (the payload, version WEIGHTS_PAYLOAD_VERSION);
 * the memfd is handed to systemd (FDSTORE=1, FDNAME=resident-weights) and
 * locked. A restart gets it back in LISTEN_FDS, checks the container
 * (seals, header, identity = config.json + index bytes, every shard's
 * name/size/mtime) and the table and each shard's safetensors header
 * (st_parse_buffer), and locks it without reading the files.
 *
 * The engine generator then loads from the container too (st_image per
 * table entry -> model_params.shard_images): no shard file is opened, and
 * RAM holds one copy of the weights, the locked container. The CPU backends
 * use the safetensors bytes as they are (no repacked layout exists to
 * store instead); a backend that uploads to device memory uploads from the
 * container. */

#define WEIGHTS_PAYLOAD_VERSION 1u
#define WEIGHTS_TABLE_MAGIC     "RSDWGT1"
#define WEIGHTS_FILES_MAX       256u

struct weights_table_entry {
    char     name[232];
    uint64_t offset;            /* from the payload start, page aligned */
    uint64_t size;
    uint64_t reserved;
};
_Static_assert(sizeof(struct weights_table_entry) == 256, "table entry is 256 bytes");

struct weights_table {
    char     magic[8];
    uint32_t n_files;
    uint32_t reserved;
    struct weights_table_entry e[];
};

struct weights {
    struct st_set             *st;      /* no fd store: the shard mappings  */
    struct svc_fdstore_region  store;   /* fd store: the container           */
    int                        from_store;  /* reused after a restart        */
    uint64_t                   bytes;   /* bytes locked (or to lock)         */
    uint64_t                   read_bytes;  /* bytes read from the files     */
    unsigned                   n_files;
    struct st_image           *images;  /* fd store: the shards in the container */
    unsigned                   n_images;
};

struct shard_list {
    char     name[WEIGHTS_FILES_MAX][232];
    uint64_t size[WEIGHTS_FILES_MAX];
    unsigned n;
    uint64_t total;
};

static int shard_filter(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 12 && strcmp(e->d_name + n - 12, ".safetensors") == 0;
}

/* Every *.safetensors file in the model directory, sorted by name. */
static int shards_list(int dirfd, const char *dir, struct shard_list *l)
{
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, shard_filter, alphasort);
    int r = 0;
    if (n < 0) {
        r = -errno;
        daemon_log("cannot list model directory %s: %s (model = in residentd.conf)", dir, strerror(-r));
        return r;
    }
    l->n = 0;
    l->total = 0;
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (r == 0 && (l->n == WEIGHTS_FILES_MAX || strlen(ents[i]->d_name) >= sizeof(l->name[0]))) {
            daemon_log("model directory %s: more than %u shards or a shard name longer than %zu bytes",
                       dir, WEIGHTS_FILES_MAX, sizeof(l->name[0]) - 1);
            r = -E2BIG;
        } else if (r == 0 && fstatat(dirfd, ents[i]->d_name, &st, 0) < 0) {
            r = -errno;
            daemon_log("%s/%s: %s", dir, ents[i]->d_name, strerror(-r));
        } else if (r == 0 && S_ISREG(st.st_mode)) {
            memcpy(l->name[l->n], ents[i]->d_name, strlen(ents[i]->d_name) + 1);   /* length checked */
            l->size[l->n] = (uint64_t)st.st_size;
            l->total += (uint64_t)st.st_size;
            l->n++;
        }
        free(ents[i]);
    }
    free(ents);
    if (r == 0 && l->n == 0) {
        daemon_log("model directory %s has no *.safetensors files", dir);
        r = -ENOENT;
    }
    return r;
}

/* Feed a small file (config.json, the index) into the identity; absent = skipped. */
static int identity_add_small(struct svc_fdstore_identity *id, int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    char buf[65536];
    uint64_t h = SVC_FDSTORE_FNV_INIT;
    ssize_t n;
    svc_fdstore_identity_add_config(id, name, strlen(name) + 1);
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        h = svc_fdstore_fnv1a(h, buf, (size_t)n);
    int r = n < 0 ? -errno : 0;
    close(fd);
    svc_fdstore_identity_add_config(id, &h, sizeof(h));
    return r;
}

static int count_tensor(void *ctx, const struct st_tensor *t)
{
    (void)t;
    (*(uint64_t *)ctx)++;
    return 0;
}

static uint64_t table_bytes(unsigned n_files)
{
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t t = sizeof(struct weights_table) + (uint64_t)n_files * sizeof(struct weights_table_entry);
    return (t + pg - 1) & ~(pg - 1);
}

static uint64_t payload_bytes(const struct shard_list *l)
{
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off = table_bytes(l->n);
    for (unsigned i = 0; i < l->n; i++)
        off += (l->size[i] + pg - 1) & ~(pg - 1);
    return off;
}

/* The payload describes exactly the current shards and each is a valid
 * safetensors image. Returns 0 or -ESTALE / -EBADMSG (logged). */
static int payload_check(const struct svc_fdstore_region *r, const struct shard_list *l, uint64_t *tensors)
{
    const struct weights_table *t = r->payload;
    *tensors = 0;
    if (r->payload_size < table_bytes(0) || memcmp(t->magic, WEIGHTS_TABLE_MAGIC, 8) != 0 ||
        r->payload_size < table_bytes(t->n_files)) {
        daemon_log("fd store: resident-weights has no shard table this version understands; discarding it");
        return -EBADMSG;
    }
    if (t->n_files != l->n) {
        daemon_log("fd store: resident-weights holds %u shards, the model directory has %u; discarding it",
                   t->n_files, l->n);
        return -ESTALE;
    }
    for (unsigned i = 0; i < l->n; i++) {
        const struct weights_table_entry *e = &t->e[i];
        if (strncmp(e->name, l->name[i], sizeof(e->name)) != 0 || e->size != l->size[i] ||
            e->offset > r->payload_size || e->size > r->payload_size - e->offset) {
            daemon_log("fd store: shard %u of resident-weights is not %s (%" PRIu64 " bytes); discarding it",
                       i, l->name[i], l->size[i]);
            return -ESTALE;
        }
        struct engine_error ee = { 0 };
        int rc = st_parse_buffer((const uint8_t *)r->payload + e->offset, e->size, e->name, count_tensor,
                                 tensors, &ee);
        if (rc < 0) {
            daemon_log("fd store: shard %s in resident-weights is not a valid safetensors image (%s); "
                       "discarding it", e->name, ee.msg);
            return -EBADMSG;
        }
    }
    return 0;
}

/* Copy every shard into a new container with pread() (counted in
 * /proc/PID/io rchar: the tests measure that a restart reads nothing). */
static int payload_fill(struct svc_fdstore_region *r, int dirfd, const char *dir, const struct shard_list *l,
                        struct svc_notify *notify, uint64_t *read_bytes)
{
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off = table_bytes(l->n), done = 0, next_extend = 1ull << 30;
    struct weights_table *t = r->payload;
    /* Allocate the shmem pages in one call (huge ones where
     * shmem_enabled=advise allows) instead of one fault per 4 KiB page. */
    (void)madvise(r->base, r->size, MADV_HUGEPAGE);
    if (fallocate(r->fd, 0, 0, (off_t)r->size) < 0) {
        int err = errno;
        daemon_log("cannot allocate %zu bytes for the fd-store container: %s (free RAM, MemoryMax= of "
                   "the unit, or set fd_store = no)", r->size, strerror(err));
        return -err;
    }
    memcpy(t->magic, WEIGHTS_TABLE_MAGIC, 8);
    t->n_files = l->n;
    for (unsigned i = 0; i < l->n; i++) {
        struct weights_table_entry *e = &t->e[i];
        snprintf(e->name, sizeof(e->name), "%s", l->name[i]);
        e->offset = off;
        e->size = l->size[i];
        int fd = openat(dirfd, l->name[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            daemon_log("cannot open %s/%s: %s", dir, l->name[i], strerror(err));
            return -err;
        }
        uint64_t pos = 0;
        while (pos < e->size) {
            size_t want = e->size - pos > (64u << 20) ? (64u << 20) : (size_t)(e->size - pos);
            ssize_t n = pread(fd, (char *)r->payload + off + pos, want, (off_t)pos);
            if (n <= 0) {
                int err = n < 0 ? errno : EIO;
                daemon_log("reading %s/%s at %" PRIu64 ": %s%s", dir, l->name[i], pos,
                           n < 0 ? strerror(err) : "file shrank while loading", "");
                close(fd);
                return -err;
            }
            pos += (uint64_t)n;
            done += (uint64_t)n;
            if (done >= next_extend) {
                next_extend += 1ull << 30;
                svc_notify_status(notify, "loading weights into the fd-store container: %" PRIu64 "%%",
                                  done * 100 / (l->total ? l->total : 1));
                svc_notify_extend_timeout(notify, 60ull * 1000000u);
            }
        }
        close(fd);
        off += (e->size + pg - 1) & ~(pg - 1);
    }
    *read_bytes = done;
    return 0;
}

static int lock_store(struct weights *w, struct svc_memlock *ml)
{
    w->bytes = w->store.payload_size;
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
    /* Map the (resident) shmem pages in one pass first: on a 6.18 VM with
     * 4 KiB shmem pages, mlock() of 1 GiB took 1.8 s alone, 0.7 s after
     * populating. Before Linux 5.14 this fails with EINVAL: mlock does it. */
    if (ml->mode != SVC_MEMLOCK_OFF)
        (void)madvise(w->store.payload, w->store.payload_size, MADV_POPULATE_READ);
    return svc_memlock_range(ml, w->store.payload, w->store.payload_size, SVC_MEMLOCK_HUGEPAGE, "weights");
}

/* The container's shards as engine images; names are copied (the table
 * was checked against the directory, but the copies need no trust). */
static int weights_images(struct weights *w)
{
    const struct weights_table *t = w->store.payload;
    w->images = calloc(t->n_files ? t->n_files : 1, sizeof(*w->images));
    if (!w->images)
        return -ENOMEM;
    for (unsigned i = 0; i < t->n_files; i++) {
        char *name = strndup(t->e[i].name, sizeof(t->e[i].name) - 1);
        if (!name)
            return -ENOMEM;
        w->images[i] = (struct st_image){ .name = name,
                                          .data = (const uint8_t *)w->store.payload + t->e[i].offset,
                                          .size = t->e[i].size };
        w->n_images = i + 1;
    }
    return 0;
}

static int weights_from_store(struct weights *w, struct svc_activation *act, const struct shard_list *l,
                              const struct svc_fdstore_identity *id, struct svc_memlock *ml, int use_store)
{
    int fd = svc_activation_take_fd(act, SVC_FDSTORE_WEIGHTS_NAME);
    if (fd < 0)
        return 0;
    if (!use_store) {
        daemon_log("fd store: discarding resident-weights (the store is not used: fd_store = no, or auto "
                   "with a generator that reads the model files itself)");
        svc_fdstore_discard(fd, SVC_FDSTORE_WEIGHTS_NAME);
        return 0;
    }
    int r = svc_fdstore_open(fd, id, &w->store);
    if (r < 0) {
        daemon_log("fd store: resident-weights is stale or foreign (%s); discarded, reading the model files",
                   strerror(-r));
        svc_fdstore_discard(fd, SVC_FDSTORE_WEIGHTS_NAME);
        return 0;
    }
    uint64_t tensors;
    if (payload_check(&w->store, l, &tensors) < 0) {
        int sfd = w->store.fd;
        w->store.fd = -1;
        svc_fdstore_region_close(&w->store);
        svc_fdstore_discard(sfd, SVC_FDSTORE_WEIGHTS_NAME);
        return 0;
    }
    r = lock_store(w, ml);
    if (r == 0)
        r = weights_images(w);
    if (r < 0)
        return r;
    w->from_store = 1;
    w->n_files = l->n;
    daemon_log("fd store: reusing resident-weights (%u shards, %" PRIu64 " tensors, %" PRIu64
               " bytes); the model files were not read", l->n, tensors, w->store.payload_size);
    return 1;
}

static int weights_load(struct weights *w, const char *dir, int use_store, struct svc_activation *act,
                        struct svc_memlock *ml, struct svc_notify *notify)
{
    memset(w, 0, sizeof(*w));
    w->store.fd = -1;
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        int e = errno;
        daemon_log("cannot open model directory %s: %s (model = in residentd.conf; the service user "
                   "needs read access: tmpfiles.d makes it root:residentd 0750)", dir, strerror(e));
        return -e;
    }
    static struct shard_list l;
    struct svc_fdstore_identity id;
    int r = shards_list(dirfd, dir, &l);
    svc_fdstore_identity_init(&id, WEIGHTS_PAYLOAD_VERSION);
    if (r == 0)
        r = identity_add_small(&id, dirfd, "config.json");
    if (r == 0)
        r = identity_add_small(&id, dirfd, "model.safetensors.index.json");
    for (unsigned i = 0; r == 0 && i < l.n; i++)
        r = svc_fdstore_identity_add_file(&id, dirfd, l.name[i]);
    if (r < 0)
        goto out;

    r = weights_from_store(w, act, &l, &id, ml, use_store);
    if (r != 0)
        goto out;

    if (use_store) {
        uint64_t pb = payload_bytes(&l), tensors;
        r = svc_memlock_check(ml, pb);
        if (r < 0)
            goto out;
        svc_notify_status(notify, "loading weights into the fd-store container (%" PRIu64 " bytes)", l.total);
        r = svc_fdstore_create("resident-weights", &id, (size_t)pb, &w->store);
        if (r == 0)
            r = payload_fill(&w->store, dirfd, dir, &l, notify, &w->read_bytes);
        if (r == 0)
            r = svc_fdstore_finish(&w->store);
        if (r == 0 && payload_check(&w->store, &l, &tensors) < 0)
            r = -EBADMSG;
        if (r == 0)
            r = lock_store(w, ml);
        if (r == 0)
            r = weights_images(w);
        if (r == 0) {
            int pushed = svc_fdstore_push(&w->store, SVC_FDSTORE_WEIGHTS_NAME);
            w->n_files = l.n;
            daemon_log("fd store: %u shards (%" PRIu64 " tensors, %" PRIu64 " bytes) copied into "
                       "resident-weights%s", l.n, tensors, l.total,
                       pushed > 0 ? " and handed to the service manager (FDSTORE=1)"
                                  : "; no service manager keeps it");
        }
        goto out;
    }

    struct engine_error ee = { 0 };
    r = st_set_open_dir(dir, &w->st, &ee);
    if (r < 0) {
        daemon_log("model %s: %s", dir, ee.msg);
        goto out;
    }
    /* mlock charges whole pages: ask for the page-rounded sum, so the bytes
     * a failure prints are enough for LimitMEMLOCK=. */
    w->n_files = st_set_file_count(w->st);
    uint64_t need = 0, pg = (uint64_t)sysconf(_SC_PAGESIZE);
    for (uint32_t i = 0; i < w->n_files; i++) {
        const void *addr;
        size_t len;
        if (st_set_file_mapping(w->st, i, &addr, &len) == 0)
            need += ((uint64_t)len + pg - 1) & ~(pg - 1);
    }
    r = svc_memlock_check(ml, need);
    for (uint32_t i = 0; r == 0 && i < w->n_files; i++) {
        const void *addr;
        size_t len;
        r = st_set_file_mapping(w->st, i, &addr, &len);
        if (r == 0)
            r = svc_memlock_range(ml, (void *)(uintptr_t)addr, len, SVC_MEMLOCK_HUGEPAGE, st_set_file_path(w->st, i));
        w->bytes += len;
    }
out:
    close(dirfd);
    return r;
}

static void weights_free(struct weights *w)
{
    for (unsigned i = 0; i < w->n_images; i++)
        free((char *)w->images[i].name);
    free(w->images);
    w->images = NULL;
    w->n_images = 0;
    if (w->st)
        st_set_free(w->st);
    w->st = NULL;
    svc_fdstore_region_close(&w->store);
}

/* ---- the tokenizer's cache image in the fd store ----
 *
 * Measured on an engine-generator start (docs/performance.md "Service
 * restart"): parsing tokenizer.json is ~90% of the time from exec to
 * READY once the weights come from the store (180-360 ms for the 11 MB
 * fixture, more for Qwen3.6's 20 MB); the model binding takes ~5 ms. So
 * the engine's binary cache of the parsed tables (tokenizer.h,
 * tokenizer_cache_image()) goes into a second container,
 * "resident-tokenizer", next to the weights.
 *
 * Two identities guard it, because it is hostile input like every stored
 * entry: the container's (svc_fdstore_open(): seals, header, and the
 * tokenizer files' names, sizes and mtimes, absent ones by name) and the
 * image's own (magic, version, payload hash, the source files' device,
 * inode, size and mtime, then every table index and offset, checked by the
 * engine as for its cache file). A refusal at either level discards the
 * entry (FDSTOREREMOVE=1) and the engine parses the files; the fresh image
 * is stored. Not locked: it is copied into the tokenizer's own tables and
 * unmapped right after create(); systemd keeps the memfd. */

#define TOKENIZER_PAYLOAD_VERSION 1u

static int tokenizer_identity(const char *model, struct svc_fdstore_identity *id)
{
    static const char *const names[] = { "tokenizer.json", "vocab.json", "merges.txt",
                                         "tokenizer_config.json" };
    int dirfd = open(model, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return -errno;
    svc_fdstore_identity_init(id, TOKENIZER_PAYLOAD_VERSION);
    int r = 0;
    for (size_t i = 0; r == 0 && i < sizeof(names) / sizeof(names[0]); i++) {
        struct stat st;
        if (fstatat(dirfd, names[i], &st, 0) == 0)
            r = svc_fdstore_identity_add_file(id, dirfd, names[i]);
        else    /* which files are absent is identity too */
            svc_fdstore_identity_add_config(id, names[i], strlen(names[i]) + 1);
    }
    close(dirfd);
    return r;
}

/* Take and validate "resident-tokenizer"; on success tc->image points into
 * reg's read-only mapping. `use` = 0 discards it. */
static void tokenizer_store_take(struct svc_activation *act, int use, const struct svc_fdstore_identity *id,
                                 struct svc_fdstore_region *reg, struct gen_tokenizer_cache *tc)
{
    int fd = svc_activation_take_fd(act, SVC_FDSTORE_TOKENIZER_NAME);
    if (fd < 0)
        return;
    if (!use) {
        daemon_log("fd store: discarding resident-tokenizer (the store is not used)");
        svc_fdstore_discard(fd, SVC_FDSTORE_TOKENIZER_NAME);
        return;
    }
    int r = svc_fdstore_open(fd, id, reg);
    if (r < 0) {
        daemon_log("fd store: resident-tokenizer is stale or foreign (%s); discarded, parsing the tokenizer files",
                   strerror(-r));
        svc_fdstore_discard(fd, SVC_FDSTORE_TOKENIZER_NAME);
        return;
    }
    tc->image = reg->payload;
    tc->image_len = reg->payload_size;
}

/* After create(): report what the generator did with the image, unmap it,
 * and store a fresh one when it was absent or refused. */
static void tokenizer_store_finish(int use, const struct svc_fdstore_identity *id, struct svc_fdstore_region *reg,
                                   struct gen_tokenizer_cache *tc)
{
    if (tc->image && tc->image_used) {
        daemon_log("fd store: reusing resident-tokenizer (%zu bytes); the tokenizer files were not read",
                   tc->image_len);
    } else if (tc->image) {
        daemon_log("fd store: resident-tokenizer refused by the generator (%s); discarded",
                   tc->image_refused[0] ? tc->image_refused : "it keeps no tokenizer cache");
        svc_fdstore_discard(-1, SVC_FDSTORE_TOKENIZER_NAME);
    }
    tc->image = NULL;
    svc_fdstore_region_close(reg);
    if (!use || !tc->fresh)
        return;
    struct svc_fdstore_region out;
    int r = svc_fdstore_create("resident-tokenizer", id, tc->fresh_len, &out);
    if (r == 0) {
        memcpy(out.payload, tc->fresh, tc->fresh_len);
        r = svc_fdstore_finish(&out);
    }
    int pushed = r == 0 ? svc_fdstore_push(&out, SVC_FDSTORE_TOKENIZER_NAME) : r;
    if (pushed > 0)
        daemon_log("fd store: tokenizer cache image (%zu bytes) handed to the service manager as "
                   "resident-tokenizer", tc->fresh_len);
    else if (pushed < 0)
        daemon_log("fd store: tokenizer cache image not stored (%s); the next start parses the tokenizer "
                   "files", strerror(-pushed));
    svc_fdstore_region_close(&out);
}

/* "render,video" -> NULL-terminated array of pointers into buf. */
static void split_groups(char *buf, const char **out, size_t max)
{
    size_t n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ", ", &save); t && n + 1 < max; t = strtok_r(NULL, ", ", &save))
        out[n++] = t;
    out[n] = NULL;
}

/* threads = 0: as many compute threads as CPUs this process may run on
 * (a systemd CPUAffinity= or taskset restriction counts, not the machine). */
static int32_t affinity_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set) > 256 ? 256 : CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int32_t)n;
}

struct override {
    const char *key;
    const char *value;
    char        buf[4200];
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "socket", required_argument, NULL, 's' },
        { "config", required_argument, NULL, 'c' },
        { "generator", required_argument, NULL, 'g' },
        { "backend", required_argument, NULL, 'b' },
        { "threads", required_argument, NULL, 't' },
        { "kernel-dir", required_argument, NULL, 'k' },
        { "no-lock", no_argument, NULL, 'L' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    /* SIGHUP's default action would end the daemon: a reload asked for
     * before the loop's signalfd exists (the socket already accepts
     * connections while the model loads) waits for the loop instead. */
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    sigprocmask(SIG_BLOCK, &hup, NULL);
    const char *config_path = NULL;
    struct override *ov = calloc((size_t)argc + 1, sizeof(*ov));
    size_t n_ov = 0;
    int c;
    if (!ov)
        return 1;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': ov[n_ov].key = "model"; ov[n_ov++].value = optarg; break;
        case 's': ov[n_ov].key = "socket"; ov[n_ov++].value = optarg; break;
        case 'g': ov[n_ov].key = "generator"; ov[n_ov++].value = optarg; break;
        case 'b': ov[n_ov].key = "backend"; ov[n_ov++].value = optarg; break;
        case 't': ov[n_ov].key = "threads"; ov[n_ov++].value = optarg; break;
        case 'k': ov[n_ov].key = "kernel_dir"; ov[n_ov++].value = optarg; break;
        case 'L': ov[n_ov].key = "memlock"; ov[n_ov++].value = "off"; break;
        case 'c': config_path = optarg; break;
        case 'o': {
            struct override *o = &ov[n_ov];
            snprintf(o->buf, sizeof(o->buf), "%s", optarg);
            char *eq = strchr(o->buf, '=');
            if (!eq) {
                fprintf(stderr, "residentd: -o %s: expected KEY=VALUE\n", optarg);
                free(ov);
                return 2;
            }
            *eq = '\0';
            o->key = o->buf;
            o->value = eq + 1;
            n_ov++;
            break;
        }
        case 'h':
            usage(stdout);
            free(ov);
            return 0;
        default:
            usage(stderr);
            free(ov);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "residentd: unexpected argument '%s'\n", argv[optind]);
        free(ov);
        return 2;
    }

    static struct daemon d;
    char err[1024];
    /* The overrides stay alive for the daemon's lifetime: SIGHUP re-applies them. */
    struct daemon_setting *settings = calloc(n_ov + 1, sizeof(*settings));
    if (!settings) {
        free(ov);
        return 1;
    }
    for (size_t i = 0; i < n_ov; i++) {
        settings[i].key = ov[i].key;
        settings[i].value = ov[i].value;
    }
    d.cfg_src.path = config_path ? config_path : DAEMON_CONFIG_DEFAULT_PATH;
    d.cfg_src.must_exist = config_path != NULL;
    d.cfg_src.overrides = settings;
    d.cfg_src.n_overrides = n_ov;
    int r = daemon_config_build(&d.cfg, &d.cfg_src, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "residentd: %s\n", err);
        free(settings);
        free(ov);
        return 2;
    }

    d.gen = gen_lookup(d.cfg.generator);
    if (!d.gen) {
        fprintf(stderr, "residentd: generator '%s' is unknown; available: null%s\n", d.cfg.generator,
                gen_lookup("engine") ? ", engine" : " (this build has no engine generator)");
        free(settings);
        free(ov);
        return 2;
    }

    /* 1. Who started us and whom to become (before svc_activation_*, which
     *    unsets LISTEN_PID; NSS lookups while /etc is readable). */
    struct svc_caps caps;
    int change_privs = d.cfg.privileges != DAEMON_PRIV_KEEP;
    if (change_privs) {
        static char group_buf[sizeof(d.cfg.supplementary_groups)];
        static const char *groups[SVC_CAPS_GROUPS_MAX + 1];
        snprintf(group_buf, sizeof(group_buf), "%s", d.cfg.supplementary_groups);
        split_groups(group_buf, groups, SVC_CAPS_GROUPS_MAX + 1);
        struct svc_caps_config cc = {
            .mode = d.cfg.privileges == DAEMON_PRIV_DROP ? SVC_CAPS_DROP
                  : d.cfg.privileges == DAEMON_PRIV_VERIFY ? SVC_CAPS_VERIFY : SVC_CAPS_AUTO,
            .user = d.cfg.user,
            .groups = groups,
            .keep_ipc_lock = d.cfg.keep_cap_ipc_lock != 0,
        };
        if (svc_caps_init(&caps, &cc) < 0)
            goto fail_early;
    } else if (geteuid() == 0) {
        daemon_log("privileges = keep: running as uid 0 with every capability; set privileges = auto "
                   "in residentd.conf to drop to user %s after locking the weights", d.cfg.user);
    }

    /* 2. sd_notify state (no-op without NOTIFY_SOCKET). */
    struct svc_notify notify;
    if (svc_notify_init(&notify) < 0)
        goto fail_early;

    /* 3. The listening socket: systemd's, or ours (created while still root). */
    gid_t sock_gid = (gid_t)-1;
    if (d.cfg.socket_group[0]) {
        char *end;
        errno = 0;
        unsigned long g = strtoul(d.cfg.socket_group, &end, 10);
        struct group *gr = (*end || errno) ? getgrnam(d.cfg.socket_group) : NULL;
        if ((*end || errno) && !gr) {
            fprintf(stderr, "residentd: socket_group '%s' is not a known group (create it, e.g. with "
                    "systemd-sysusers, or give a numeric gid)\n", d.cfg.socket_group);
            goto fail_early;
        }
        sock_gid = gr ? gr->gr_gid : (gid_t)g;
    }
    struct svc_activation act;
    struct svc_listen_config lc = {
        .path = d.cfg.socket, .owner = (uid_t)-1, .group = sock_gid, .mode = d.cfg.socket_mode,
    };
    if (svc_activation_listen(&act, &lc) < 0)
        goto fail_early;
    if (act.listen_inherited) {
        int fl = fcntl(act.listen_fd, F_GETFL);
        if (fl >= 0)
            fcntl(act.listen_fd, F_SETFL, fl & ~O_NONBLOCK);
    }

    /* 4-6. Weights: memlock budget, fd-store reuse or load (+ store), lock. */
    static struct weights w = { .store.fd = -1 };
    struct svc_memlock ml;
    svc_memlock_init(&ml, d.cfg.memlock == DAEMON_MEMLOCK_OFF ? SVC_MEMLOCK_OFF
                        : d.cfg.memlock == DAEMON_MEMLOCK_ONFAULT ? SVC_MEMLOCK_ONFAULT : SVC_MEMLOCK_NOW);
    /* auto: keep the weights in the fd store when a service manager can
     * hold them (NOTIFY_SOCKET). By hand nobody keeps the memfd across a
     * restart, so copying the files into it would only cost a pass over
     * them. Every generator uses the container when there is one (the
     * engine loads from it), so it is the only copy of the weights. */
    int use_store = d.cfg.fd_store == DAEMON_FD_STORE_YES ||
                    (d.cfg.fd_store == DAEMON_FD_STORE_AUTO && notify.connected);
    if (d.cfg.model[0]) {
        uint64_t t0 = daemon_now_us();
        svc_notify_status(&notify, "loading weights from %s", d.cfg.model);
        r = weights_load(&w, d.cfg.model, use_store, &act, &ml, &notify);
        if (r < 0) {
            fprintf(stderr, "residentd: cannot load the weights of %s: %s\n", d.cfg.model, strerror(-r));
            goto fail;
        }
        uint64_t vmlck = 0;
        svc_memlock_vmlck(0, &vmlck);
        const char *how = d.cfg.memlock == DAEMON_MEMLOCK_OFF ? "not locked (memlock = off)"
                        : d.cfg.memlock == DAEMON_MEMLOCK_ONFAULT ? "locked on fault" : "locked";
        daemon_log("weights: %u files, %" PRIu64 " bytes %s%s, ready in %" PRIu64 " ms (%" PRIu64
                   " bytes read from the model files); VmLck %" PRIu64 " kB",
                   w.n_files, w.bytes, how, w.from_store ? " from the fd store" : use_store ? " in the fd-store container" : "",
                   (daemon_now_us() - t0) / 1000, w.read_bytes, vmlck / 1024);
        svc_notify_status(&notify, "weights %s: %" PRIu64 " bytes%s, VmLck %" PRIu64 " kB", how, w.bytes,
                          w.from_store ? " (from the fd store)" : "", vmlck / 1024);
    } else {
        int fd = svc_activation_take_fd(&act, SVC_FDSTORE_WEIGHTS_NAME);
        if (fd >= 0) {
            daemon_log("fd store: discarding resident-weights (no model configured)");
            svc_fdstore_discard(fd, SVC_FDSTORE_WEIGHTS_NAME);
        }
    }

    /* 7. Privileges: drop (by hand as root) or verify (service manager),
     *    after the lock and before any thread exists. */
    if (change_privs) {
        if (svc_caps_apply(&caps) < 0) {
            fprintf(stderr, "residentd: refusing to serve with these privileges (see above)\n");
            goto fail;
        }
    }
    if (!change_privs || caps.mode != SVC_CAPS_DROP) {     /* the drop logs its own result */
        char desc[512];
        svc_caps_describe(desc, sizeof(desc));
        daemon_log("credentials (%s): %s", !change_privs ? "privileges = keep" : "verified", desc);
    }

    /* 8. The generator (the engine may start GPU runtime threads). */
    if (d.gen->synthetic && d.cfg.model[0])
        daemon_log("the synthetic %s generator does not run the model in --model %s (its weights are only mapped and locked)",
                   d.gen->name, d.cfg.model);
    /* The tokenizer's cache image goes the way of the weights: stored
     * whenever they are (use_store), for a generator that runs a model. */
    struct svc_fdstore_identity tok_id;
    struct svc_fdstore_region tok_reg = { .fd = -1 };
    struct gen_tokenizer_cache tc = { 0 };
    int tok_store = use_store && d.cfg.model[0] && !d.gen->synthetic &&
                    tokenizer_identity(d.cfg.model, &tok_id) == 0;
    tokenizer_store_take(&act, tok_store, &tok_id, &tok_reg, &tc);
    /* CacheDirectory= in the unit: the tokenizer's cache file for cold
     * starts (an empty store). systemd sets one absolute path here. */
    const char *cache_dir = getenv("CACHE_DIRECTORY");
    if (cache_dir && cache_dir[0] == '/' && !strchr(cache_dir, ':'))
        tc.cache_dir = cache_dir;
    struct gen_create_params gp = { .backend = d.cfg.backend, .kernel_dir = d.cfg.kernel_dir,
                                    .gpu_device = (int32_t)d.cfg.gpu_device,
                                    .n_threads = (int32_t)d.cfg.threads };
    if (!gp.n_threads)
        gp.n_threads = affinity_cpus();
    /* Threads the generator starts (the fast backend's pool, GPU runtime
     * threads) inherit this mask: SIGTERM/SIGINT/SIGHUP must reach the
     * loop's signalfd, never a compute thread, where their default action
     * would kill the daemon without a clean shutdown. The main thread gets
     * its mask back, so it stays killable while the model loads. */
    sigset_t loop_sigs, old_sigs;
    sigemptyset(&loop_sigs);
    sigaddset(&loop_sigs, SIGTERM);
    sigaddset(&loop_sigs, SIGINT);
    sigaddset(&loop_sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &loop_sigs, &old_sigs);
    gp.tokenizer_cache = &tc;
    gp.shards = w.images;
    gp.n_shards = w.n_images;
    r = d.gen->create(d.cfg.model, &gp, &d.gen_ctx, err, sizeof(err));
    if (r < 0 && w.n_images) {
        /* weights_load() checked the container against the directory; a
         * shard replaced since then makes the engine refuse it (-ESTALE).
         * The files are the truth: load from them. */
        daemon_log("generator %s: the fd-store container was refused (%s); loading from the model files",
                   d.gen->name, err);
        free(tc.fresh);
        tc.fresh = NULL;
        gp.shards = NULL;
        gp.n_shards = 0;
        r = d.gen->create(d.cfg.model, &gp, &d.gen_ctx, err, sizeof(err));
    }
    pthread_sigmask(SIG_SETMASK, &old_sigs, NULL);
    if (r == 0)
        tokenizer_store_finish(tok_store, &tok_id, &tok_reg, &tc);
    svc_fdstore_region_close(&tok_reg);
    free(tc.fresh);
    if (r < 0) {
        fprintf(stderr, "residentd: generator %s: %s\n", d.gen->name, err);
        goto fail;
    }
    char gdesc[768] = "";
    if (d.gen->describe)
        d.gen->describe(d.gen_ctx, gdesc, sizeof(gdesc));
    if (d.gen->synthetic)
        daemon_log("generator: null (deterministic synthetic tokens, vocabulary %u; NOT a model)",
                   d.gen->vocab_size(d.gen_ctx));
    else if (d.gen->files_opened)
        daemon_log("generator: %s, model %s (weights from %s; %u shard files opened)%s%s", d.gen->name,
                   d.cfg.model, w.n_images ? "the fd-store container" : "the model files",
                   d.gen->files_opened(d.gen_ctx), gdesc[0] ? ", " : "", gdesc);
    else
        daemon_log("generator: %s, model %s%s%s", d.gen->name, d.cfg.model, gdesc[0] ? ", " : "", gdesc);

    /* 9. The loop: io_uring, worker thread, READY=1, watchdog. It takes the
     *    socket; act keeps the path to unlink (when we created it). */
    d.listen_fd = act.listen_fd;
    d.listen_inherited = 1;
    act.listen_fd = -1;
    d.signal_fd = -1;
    r = daemon_run(&d, err, sizeof(err));
    d.gen->destroy(d.gen_ctx);
    svc_activation_release(&act);
    weights_free(&w);
    free(settings);
    free(ov);
    if (r < 0) {
        fprintf(stderr, "residentd: %s\n", err);
        return 1;
    }
    daemon_log("stopped after %llu compute steps", (unsigned long long)d.steps);
    return 0;

fail:
    svc_activation_release(&act);
    weights_free(&w);
fail_early:
    free(settings);
    free(ov);
    return 1;
}
