/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fd store round trip as systemd does it: build a container from a fake
 * model directory, seal it, push it to a fake NOTIFY_SOCKET (FDSTORE=1 +
 * FDNAME + SCM_RIGHTS), then hand the received fd to a forked "restarted
 * daemon" through LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, which must find,
 * validate and map it.  Then the rejections: model file touched (stale),
 * other payload layout, unsealed/foreign memfd, a fill that never finished,
 * a bad magic, a newer container version, a tiny memfd; and that a rejected
 * entry is removed from the store (FDSTOREREMOVE=1).
 */
#include "daemon/svc-activate.h"
#include "daemon/svc-fdstore.h"
#include "daemon/svc-testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define PAYLOAD_BYTES  (1024u * 1024u + 123u)
#define PAYLOAD_LAYOUT 3u

static const char config_json[] = "{\"model_type\":\"qwen3_5_moe\",\"hidden_size\":2048}";

static void write_file(int dirfd, const char *name, const char *text)
{
    int fd = openat(dirfd, name, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);

    T_CHECK(fd >= 0);
    T_CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
}

static void identity_of(int dirfd, uint32_t layout, struct svc_fdstore_identity *id)
{
    svc_fdstore_identity_init(id, layout);
    svc_fdstore_identity_add_config(id, config_json, sizeof(config_json) - 1);
    T_CHECK(svc_fdstore_identity_add_file(id, dirfd, "model-00001-of-00002.safetensors") == 0);
    T_CHECK(svc_fdstore_identity_add_file(id, dirfd, "model-00002-of-00002.safetensors") == 0);
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 31u + (i >> 12));
}

/* The restarted daemon: collect, take, open, check the bytes. */
static void restarted_daemon(int stored_fd, const struct svc_fdstore_identity *id)
{
    struct svc_activation a;
    struct svc_fdstore_region r;
    char v[32];
    int fd, tmp;
    const unsigned char *p;

    tmp = fcntl(stored_fd, F_DUPFD_CLOEXEC, 100);
    T_CHECK(dup2(tmp, 3) == 3);
    setenv("LISTEN_FDS", "1", 1);
    snprintf(v, sizeof(v), "%d", (int)getpid());
    setenv("LISTEN_PID", v, 1);
    setenv("LISTEN_FDNAMES", SVC_FDSTORE_WEIGHTS_NAME, 1);
    T_CHECK(svc_activation_collect(&a, NULL) == 1);
    T_CHECK(a.listen_fd < 0);                 /* no socket passed this time */
    fd = svc_activation_take_fd(&a, SVC_FDSTORE_WEIGHTS_NAME);
    T_CHECK(fd == 3);
    T_CHECK(svc_fdstore_open(fd, id, &r) == 0);
    T_CHECK(r.payload_size == PAYLOAD_BYTES && !r.writable);
    T_CHECK(((uintptr_t)r.payload & 4095u) == 0);
    p = r.payload;
    for (size_t i = 0; i < PAYLOAD_BYTES; i++)
        T_CHECKF(p[i] == pattern(i), "payload byte %zu differs", i);
    svc_fdstore_region_close(&r);
    svc_activation_release(&a);
    _exit(T_PASS);
}

static void test_round_trip(const char *dir, int dirfd, int notify_fd)
{
    struct svc_fdstore_identity id, touched, relayout;
    struct svc_fdstore_region r, chk;
    struct stat a, b;
    struct timespec ts[2] = { { 0, UTIME_OMIT }, { 1000000000, 0 } };
    char msg[512];
    int fds[2];
    size_t nfds = 2;
    unsigned char *p;
    pid_t pid;
    int got;

    (void)dir;
    identity_of(dirfd, PAYLOAD_LAYOUT, &id);
    T_CHECK(id.n_files == 2 && id.files_bytes > 0);
    T_CHECK(svc_fdstore_create("resident-weights", &id, PAYLOAD_BYTES, &r) == 0);
    T_CHECK(r.writable && r.payload_size == PAYLOAD_BYTES);
    p = r.payload;
    for (size_t i = 0; i < PAYLOAD_BYTES; i++)
        p[i] = pattern(i);
    /* not finished yet: refused by push */
    T_CHECK(svc_fdstore_push(&r, SVC_FDSTORE_WEIGHTS_NAME) == -EINVAL);
    T_CHECK(svc_fdstore_finish(&r) == 0);
    T_CHECK(svc_fdstore_finish(&r) == -EALREADY);

    /* sealed: nobody can change a byte or the size */
    T_CHECK(write(r.fd, "x", 1) < 0 && errno == EPERM);
    T_CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0) == MAP_FAILED && errno == EPERM);
    T_CHECK(ftruncate(r.fd, 4096) < 0 && errno == EPERM);
    T_CHECK(mprotect(r.base, 4096, PROT_READ | PROT_WRITE) < 0);
    T_CHECK(svc_fdstore_push(&r, "weights") == -EINVAL);     /* our prefix only */

    /* push: exactly what systemd would receive */
    T_CHECK(svc_fdstore_push(&r, SVC_FDSTORE_WEIGHTS_NAME) == 1);
    got = svc_testlib_notify_recv(notify_fd, msg, sizeof(msg), 2000, fds, &nfds);
    T_CHECK(got > 0);
    T_CHECKF(!strcmp(msg, "FDSTORE=1\nFDNAME=resident-weights"), "message \"%s\"", msg);
    T_CHECKF(nfds == 1, "%zu fds attached", nfds);
    T_CHECK(fstat(fds[0], &a) == 0 && fstat(r.fd, &b) == 0);
    T_CHECK(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
    svc_fdstore_region_close(&r);            /* the old process is gone */

    /* restart: only the stored fd keeps the memfd alive now */
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0)
        restarted_daemon(fds[0], &id);
    T_CHECK(svc_testlib_wait(pid) == T_PASS);
    printf("round trip: %u payload bytes survived via the fd store\n", PAYLOAD_BYTES);

    /* a model file replaced (mtime changed): stale */
    T_CHECK(utimensat(dirfd, "model-00002-of-00002.safetensors", ts, 0) == 0);
    identity_of(dirfd, PAYLOAD_LAYOUT, &touched);
    T_CHECK(touched.files_hash != id.files_hash && touched.config_hash == id.config_hash);
    T_CHECK(svc_fdstore_open(fds[0], &touched, &chk) == -ESTALE);
    /* an engine with another payload layout: stale too */
    identity_of(dirfd, PAYLOAD_LAYOUT + 1, &relayout);
    relayout.files_hash = id.files_hash;
    T_CHECK(svc_fdstore_open(fds[0], &relayout, &chk) == -ESTALE);
    /* discard: our copy closed, systemd told to forget the name */
    T_CHECK(svc_fdstore_discard(fds[0], SVC_FDSTORE_WEIGHTS_NAME) == 0);
    T_CHECK(fcntl(fds[0], F_GETFD) < 0);
    nfds = 0;
    got = svc_testlib_notify_recv(notify_fd, msg, sizeof(msg), 2000, NULL, NULL);
    T_CHECK(got > 0);
    T_CHECKF(!strcmp(msg, "FDSTOREREMOVE=1\nFDNAME=resident-weights"), "message \"%s\"", msg);
    printf("stale entry: rejected and removed from the store\n");
}

static int sealed_memfd(const void *data, size_t len, size_t size, unsigned seals)
{
    int fd = memfd_create("foreign", MFD_CLOEXEC | MFD_ALLOW_SEALING);

    T_CHECK(fd >= 0);
    T_CHECK(ftruncate(fd, (off_t)size) == 0);
    if (len)
        T_CHECK(pwrite(fd, data, len, 0) == (ssize_t)len);
    if (seals)
        T_CHECK(fcntl(fd, F_ADD_SEALS, seals) == 0);
    return fd;
}

static void test_rejections(int dirfd)
{
    const unsigned all = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;
    struct svc_fdstore_identity id;
    struct svc_fdstore_region r, chk;
    struct svc_fdstore_header h;
    int fd;

    identity_of(dirfd, PAYLOAD_LAYOUT, &id);

    /* a good container, copied byte for byte into an unsealed memfd */
    T_CHECK(svc_fdstore_create("resident-weights", &id, 4096, &r) == 0);
    T_CHECK(svc_fdstore_finish(&r) == 0);
    memcpy(&h, r.base, sizeof(h));
    fd = sealed_memfd(r.base, r.size, r.size, 0);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EBADMSG);
    close(fd);
    /* ... sealed, it validates (the seals plus the header make it ours) */
    fd = sealed_memfd(r.base, r.size, r.size, all);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == 0);
    svc_fdstore_region_close(&chk);
    /* bad magic */
    h.magic[0] ^= 1;
    fd = sealed_memfd(&h, sizeof(h), r.size, all);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EBADMSG);
    close(fd);
    h.magic[0] ^= 1;
    /* a flipped identity bit without a matching checksum: torn header */
    h.n_files ^= 1;
    fd = sealed_memfd(&h, sizeof(h), r.size, all);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EBADMSG);
    close(fd);
    h.n_files ^= 1;
    /* a newer container version */
    h.version = SVC_FDSTORE_VERSION + 1;
    fd = sealed_memfd(&h, sizeof(h), r.size, all);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EPROTO);
    close(fd);
    h.version = SVC_FDSTORE_VERSION;
    /* region size that does not match the memfd */
    fd = sealed_memfd(&h, sizeof(h), r.size + 4096, all);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EBADMSG);
    close(fd);
    /* too small for a header */
    fd = sealed_memfd("RSDFDST", 8, 16, all);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EBADMSG);
    close(fd);
    /* a regular file is no memfd */
    fd = openat(dirfd, "config.json", O_RDONLY | O_CLOEXEC);
    T_CHECK(fd >= 0);
    T_CHECK(svc_fdstore_open(fd, &id, &chk) == -EBADMSG);
    close(fd);
    svc_fdstore_region_close(&r);

    /* the previous process died mid-fill: sealed but never COMPLETE */
    T_CHECK(svc_fdstore_create("resident-weights", &id, 4096, &r) == 0);
    {
        struct svc_fdstore_header *hp = r.base;

        hp->header_hash = 0;
        memcpy(&h, hp, sizeof(h));
        h.header_hash = svc_fdstore_fnv1a(SVC_FDSTORE_FNV_INIT, &h, sizeof(h));
        hp->header_hash = h.header_hash;
    }
    T_CHECK(fcntl(r.fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) == 0);
    T_CHECK(svc_fdstore_open(r.fd, &id, &chk) == -EINPROGRESS);
    svc_fdstore_region_close(&r);

    /* no service manager: push is a logged no-op */
    unsetenv("NOTIFY_SOCKET");
    T_CHECK(svc_fdstore_create("resident-weights", &id, 1, &r) == 0);
    T_CHECK(svc_fdstore_finish(&r) == 0);
    T_CHECK(svc_fdstore_push(&r, SVC_FDSTORE_WEIGHTS_NAME) == 0);
    T_CHECK(svc_fdstore_discard(-1, SVC_FDSTORE_WEIGHTS_NAME) == 0);
    svc_fdstore_region_close(&r);
    printf("rejections: ok\n");
}

int main(void)
{
    char dir[256], path[300];
    int dirfd, notify_fd;

    setvbuf(stdout, NULL, _IOLBF, 0);   /* forked children _exit() */
    T_CHECK(svc_testlib_tmpdir(dir, sizeof(dir)) == 0);
    dirfd = open(dir, O_DIRECTORY | O_CLOEXEC);
    T_CHECK(dirfd >= 0);
    write_file(dirfd, "config.json", config_json);
    write_file(dirfd, "model-00001-of-00002.safetensors", "first shard bytes");
    write_file(dirfd, "model-00002-of-00002.safetensors", "second shard, longer bytes");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    notify_fd = svc_testlib_notify_listen(dir);
    T_CHECK(notify_fd >= 0);

    test_round_trip(dir, dirfd, notify_fd);
    test_rejections(dirfd);

    close(notify_fd);
    unlinkat(dirfd, "config.json", 0);
    unlinkat(dirfd, "model-00001-of-00002.safetensors", 0);
    unlinkat(dirfd, "model-00002-of-00002.safetensors", 0);
    unlinkat(dirfd, "notify", 0);
    close(dirfd);
    snprintf(path, sizeof(path), "%s", dir);
    rmdir(path);
    printf("fdstore: ok\n");
    return T_PASS;
}
