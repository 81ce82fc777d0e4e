/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libresident against daemons with different WELCOME capability flags.
 * A stand-in daemon (a forked child speaking only the handshake) sends a
 * WELCOME with chosen flags and a region the test itself created, so the
 * test can read back exactly what libresident wrote into the request ring:
 *   - flags 0 (a daemon from before the capability bits): a request that
 *     uses nothing new is the old 80-byte SUBMIT without the extension;
 *     penalties, model defaults and RESIDENT_REQ_NO_CACHE are refused with
 *     -EOPNOTSUPP and a message naming the feature, and nothing is sent;
 *   - all bits (plus an unknown one): resident_features() reports the known
 *     ones, and the SUBMIT carries the extension with the values asked for
 *     (a field left to the model travels as 0, as the decoder demands).
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/resident.h"
#include "shm/layout.h"
#include "shm/proto.h"
#include "shm/region.h"
#include "shm/ring.h"
#include "shm/wire.h"
#include "tests/integration/harness.h"

struct fake {
    char              path[108];
    int               listen_fd;
    struct shm_region region;
    pid_t             pid;
};

/* The child: accept one client, answer its HELLO with WELCOME(flags), then
 * hold the connection until the client hangs up. */
static void fake_serve(struct fake *f, uint32_t flags)
{
    int c = accept(f->listen_fd, NULL, NULL);
    if (c < 0)
        _exit(2);
    uint8_t buf[SHM_WIRE_MAX];
    if (recv(c, buf, sizeof(buf), 0) <= 0)
        _exit(3);
    struct shm_wire_welcome w = {
        .session_id = 1, .abi_version = SHM_ABI_VERSION, .flags = flags,
        .region_size = f->region.layout.region_size, .max_new_tokens = 64, .max_prompt_tokens = 1024,
        .max_inflight = 4, .vocab_size = 64,
    };
    snprintf(w.generator, sizeof(w.generator), "null");
    int n = shm_wire_encode(buf, SHM_WIRE_WELCOME, SHM_WELCOME_NFDS, &w, sizeof(w));
    int fds[SHM_WELCOME_NFDS] = { f->region.fd, eventfd(0, 0), eventfd(0, 0) };
    if (n < 0 || th_send_raw(c, buf, (size_t)n, fds, SHM_WELCOME_NFDS) < 0)
        _exit(4);
    while (read(c, buf, sizeof(buf)) > 0)
        ;
    _exit(0);
}

static int fake_start(struct fake *f, uint32_t flags)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->path, sizeof(f->path), "/tmp/it-caps-%d-%u.sock", (int)getpid(), flags);
    unlink(f->path);
    f->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, f->path, strlen(f->path));
    if (f->listen_fd < 0 || bind(f->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(f->listen_fd, 1) < 0)
        return -errno;
    int r = shm_region_create(&f->region, 1, SHM_REQ_RING_DEFAULT, SHM_EVT_RING_DEFAULT, 1u << 20);
    if (r < 0)
        return r;
    f->pid = fork();
    if (f->pid < 0)
        return -errno;
    if (f->pid == 0)
        fake_serve(f, flags);
    return 0;
}

static void fake_stop(struct fake *f)
{
    int st;
    TH_CHECK(waitpid(f->pid, &st, 0) == f->pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(f->listen_fd);
    unlink(f->path);
    shm_region_destroy(&f->region);
}

static struct resident *open_client(const struct fake *f)
{
    return th_connect(f->path, "it-caps", 0);
}

/* Read the SUBMITs libresident published into @n views (copies in @bufs). */
static size_t read_submits(struct fake *f, struct shm_ring_cons *c, struct shm_submit_view *v, uint8_t bufs[][512],
                           size_t max)
{
    size_t n = 0;
    struct shm_rec_hdr h;
    while (n < max && shm_ring_cons_next(c, &h, bufs[n], 512) == 1) {
        const char *why = "";
        TH_CHECK(h.type == SHM_REQ_SUBMIT);
        int rc = shm_proto_decode_submit(bufs[n], h.len - SHM_REC_HDR, f->region.layout.data_size, &v[n], &why);
        if (rc < 0)
            fprintf(stderr, "SUBMIT %zu does not decode: %s\n", n, why);
        TH_CHECK(rc == 0);
        TH_CHECK(rc < 0 || h.len - SHM_REC_HDR <= ((shm_proto_submit_size(v[n].fixed.flags, 0, 0, 2) + 7) & ~7ul));
        n++;
    }
    return n;
}

static void test_old_daemon(void)
{
    struct fake f;
    TH_CHECK(fake_start(&f, 0) == 0);
    struct resident *r = open_client(&f);
    TH_CHECK(r != NULL);
    if (!r) {
        kill(f.pid, SIGKILL);
        fake_stop(&f);
        return;
    }
    struct shm_ring_cons c;
    shm_ring_cons_init(&c, shm_region_req_ctl(&f.region), f.region.base + f.region.layout.req_data_off,
                       f.region.layout.req_cap);
    TH_CHECK(resident_features(r) == 0);
    struct resident_request q;
    uint64_t id;
    resident_request_init(&q);
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == 0);

    resident_request_init(&q);
    q.presence_penalty = 1.0f;
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == -EOPNOTSUPP);
    TH_CHECK(strstr(resident_last_error(r), "SUBMIT_EXT") != NULL);
    resident_request_init(&q);
    q.model_defaults = RESIDENT_DEFAULT_TEMPERATURE;
    q.temperature = 0.0f;
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == -EOPNOTSUPP);
    resident_request_init(&q);
    q.flags = RESIDENT_REQ_NO_CACHE;
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == -EOPNOTSUPP);
    TH_CHECK(strstr(resident_last_error(r), "NO_CACHE") != NULL);

    struct shm_submit_view v[4];
    static uint8_t bufs[4][512];
    TH_CHECK(read_submits(&f, &c, v, bufs, 4) == 1);            /* the refused ones were never sent */
    TH_CHECK(v[0].fixed.flags == 0 && v[0].ext.size == 0);
    TH_CHECK(v[0].fixed.temperature == 0.7f && v[0].fixed.top_k == 20);
    resident_close(r);
    fake_stop(&f);
}

static void test_new_daemon(void)
{
    struct fake f;
    uint32_t all = SHM_WELCOME_F_NO_PREFIX_CACHE | SHM_WELCOME_F_SUBMIT_EXT | SHM_WELCOME_F_TOOL_CHOICE;
    TH_CHECK(fake_start(&f, all | 0x100) == 0);
    struct resident *r = open_client(&f);
    TH_CHECK(r != NULL);
    if (!r) {
        kill(f.pid, SIGKILL);
        fake_stop(&f);
        return;
    }
    struct shm_ring_cons c;
    shm_ring_cons_init(&c, shm_region_req_ctl(&f.region), f.region.base + f.region.layout.req_data_off,
                       f.region.layout.req_cap);
    TH_CHECK(resident_features(r) == (RESIDENT_FEATURE_NO_CACHE | RESIDENT_FEATURE_SUBMIT_EXT |
                                      RESIDENT_FEATURE_TOOL_CHOICE));
    struct resident_request q;
    uint64_t id;
    resident_request_init(&q);
    q.flags = RESIDENT_REQ_NO_CACHE;
    q.presence_penalty = -1.25f;
    q.frequency_penalty = 0.5f;
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == 0);
    resident_request_init(&q);
    q.presence_penalty = 1.0f;          /* left to the model below: sent as 0 */
    q.model_defaults = RESIDENT_DEFAULT_ALL;
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == 0);
    resident_request_init(&q);          /* nothing new: no extension */
    TH_CHECK(resident_submit_text(r, &q, "hi", 2, 1, &id) == 0);

    struct shm_submit_view v[4];
    static uint8_t bufs[4][512];
    TH_CHECK(read_submits(&f, &c, v, bufs, 4) == 3);
    TH_CHECK(v[0].fixed.flags == (SHM_REQ_F_NO_PREFIX_CACHE | SHM_REQ_F_EXT) && v[0].ext.size == 16);
    TH_CHECK(v[0].ext.presence_penalty == -1.25f && v[0].ext.frequency_penalty == 0.5f &&
             v[0].ext.model_defaults == 0 && v[0].fixed.temperature == 0.7f);
    TH_CHECK(v[1].fixed.flags == SHM_REQ_F_EXT && v[1].ext.model_defaults == SHM_DEF_ALL);
    TH_CHECK(v[1].ext.presence_penalty == 0.0f && v[1].fixed.temperature == 0.0f && v[1].fixed.top_k == 0 &&
             v[1].fixed.top_p == 0.0f && v[1].fixed.repeat_penalty == 0.0f);
    TH_CHECK(v[2].fixed.flags == 0 && v[2].ext.size == 0);
    resident_close(r);
    fake_stop(&f);
}

int main(void)
{
    test_old_daemon();
    test_new_daemon();
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed\n", th_failures);
        return 1;
    }
    printf("test-caps: ok\n");
    return 0;
}
