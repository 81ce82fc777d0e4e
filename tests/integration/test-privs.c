/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd as a service, started by hand as root (CI runs as root without
 * systemd as PID 1; everything else skips with 77):
 *
 *  drop:     privileges = drop, user = nobody: /proc/PID/status shows
 *            Uid/Gid 65534, CapEff/CapPrm/CapBnd/CapInh/CapAmb 0,
 *            NoNewPrivs 1, VmLck >= the checkpoint's bytes; a fake
 *            NOTIFY_SOCKET sees STATUS= with VmLck before READY=1; a client
 *            outside allow_groups is refused (-EPERM), one whose
 *            *supplementary* group is allowed (named, not numeric) is served.
 *            keep_cap_ipc_lock = yes: CapPrm = CapBnd = CAP_IPC_LOCK, CapEff 0.
 *            With the engine generator: it loads after the drop, every thread
 *            has Uid 65534 and no capability, a request is served.
 *  verify:   under a fake manager, root and CAP_SYS_ADMIN are refused.
 *  default:  no privileges key (auto): root by hand drops to `user` (caps 0,
 *            NoNewPrivs 1) or refuses when the user is missing; root under a
 *            manager is refused; nobody by hand verifies. Every other test
 *            passes privileges = keep unless it sets privileges itself.
 *  memlock:  as nobody under RLIMIT_MEMLOCK 1 MiB the start fails before
 *            READY naming LimitMEMLOCK= and CAP_IPC_LOCK and the bytes.
 *  fd store: fd_store = yes hands a sealed memfd to the fake manager
 *            (FDSTORE=1, FDNAME=resident-weights); a restart given it in
 *            LISTEN_FDS/LISTEN_FDNAMES is ready without reading the model
 *            files (/proc/PID/io rchar); a touched shard (mtime) and a foreign
 *            memfd are discarded (FDSTOREREMOVE=1) and the files re-read.
 *            Prints start-to-READY times with and without the store.
 *            With the engine generator: it loads from the container, a restart
 *            maps no shard file (/proc/PID/maps), opens none (the engine's
 *            counter in the log), reads less than the first start by 3/4 of
 *            the shards (rchar), and the greedy output equals a start from
 *            the files. The tokenizer's cache image (resident-tokenizer):
 *            stored on the first start, reused by the restart without
 *            reading tokenizer.json (rchar < 1/4 of it), discarded when
 *            stale (mtime) or refused by the engine (new inode), rebuilt and
 *            reused; with CACHE_DIRECTORY the cache file is written, then used.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "client/resident.h"
#include "daemon/svc-testlib.h"

#define NOBODY 65534u

static char exe[512], src_model[512], dir[256], model[512], nsock_path[300];
static int nsock = -1;
static uint64_t shard_bytes;        /* all *.safetensors of the model copy */

struct run {
    pid_t    pid;
    char     log[512];
    char     sock[300];
    uint64_t t_start_ms, t_ready_ms;
    int      status_vmlck_before_ready;
    int      ready;
    int      store_fd;              /* fd received with FDSTORE=1, or -1 */
    int      store_removed;         /* FDSTOREREMOVE=1 seen */
    int      tok_fd;                /* fd received with FDNAME=resident-tokenizer, or -1 */
    int      tok_removed;           /* FDSTOREREMOVE=1 for resident-tokenizer seen */
    int      exit_status;           /* when wait_ready() saw it exit */
};

struct spawn_opts {
    const char *const *args;        /* extra arguments */
    int  notify;                    /* export NOTIFY_SOCKET */
    int  pass_fd;                   /* >= 0: pass as LISTEN_FDS=1 */
    const char *pass_name;          /* its LISTEN_FDNAMES */
    int  pass_tok_fd;               /* > 0: also pass this one, as resident-tokenizer */
    uid_t as_uid;                   /* != 0: become this uid before exec */
    uint64_t memlock_limit;         /* != 0: RLIMIT_MEMLOCK */
    int  ambient_sys_admin;         /* with as_uid: keep CAP_SYS_ADMIN as ambient */
    int  default_privileges;        /* no -o privileges=keep: the compiled-in default */
};

static void copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC);
    int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    T_CHECKF(in >= 0 && out >= 0, "copy %s -> %s: %s", from, to, strerror(errno));
    char buf[1 << 16];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        T_CHECK(write(out, buf, (size_t)n) == n);
    T_CHECK(n == 0);
    close(in);
    close(out);
}

/* A copy the tests may touch (mtime) and nobody may read. */
static void make_model_copy(void)
{
    static const char *files[] = { "config.json", "model.safetensors.index.json", "model.safetensors",
                                   "model_mtp.safetensors", NULL };
    /* RESIDENT_PRIVS_MODEL: time the fd store on a larger checkpoint. */
    const char *from = getenv("RESIDENT_PRIVS_MODEL") ? getenv("RESIDENT_PRIVS_MODEL") : src_model;
    snprintf(model, sizeof(model), "%s/model", dir);
    T_CHECK(mkdir(model, 0755) == 0);
    shard_bytes = 0;
    for (int i = 0; files[i]; i++) {
        char a[1024], b[1024];
        snprintf(a, sizeof(a), "%s/%s", from, files[i]);
        snprintf(b, sizeof(b), "%s/%s", model, files[i]);
        if (access(a, R_OK) != 0)
            continue;
        copy_file(a, b);
        struct stat st;
        T_CHECK(stat(b, &st) == 0);
        if (strstr(files[i], ".safetensors") && !strstr(files[i], ".json"))
            shard_bytes += (uint64_t)st.st_size;
    }
    T_CHECKF(shard_bytes > 1000000, "model copy has only %" PRIu64 " shard bytes", shard_bytes);
}

static void drain_notify(void)
{
    char buf[4096];
    int fds[4];
    size_t nf = 4;
    while (svc_testlib_notify_recv(nsock, buf, sizeof(buf), 0, fds, &nf) > 0) {
        for (size_t i = 0; i < nf; i++)
            close(fds[i]);
        nf = 4;
    }
}

static void spawn(struct run *r, const char *name, const struct spawn_opts *o)
{
    const char *argv[64];
    int n = 0;
    memset(r, 0, sizeof(*r));
    r->store_fd = -1;
    r->tok_fd = -1;
    snprintf(r->log, sizeof(r->log), "%s/%s.log", dir, name);
    snprintf(r->sock, sizeof(r->sock), "%s/sock-%s/s.sock", dir, name);
    char sdir[300];
    snprintf(sdir, sizeof(sdir), "%s/sock-%s", dir, name);
    T_CHECK(mkdir(sdir, 0755) == 0);
    if (o->as_uid)
        T_CHECK(chown(sdir, o->as_uid, (gid_t)-1) == 0);
    argv[n++] = exe;
    argv[n++] = "--socket";
    argv[n++] = r->sock;
    argv[n++] = "--config";
    argv[n++] = "/dev/null";
    argv[n++] = "--generator";
    argv[n++] = "null";
    argv[n++] = "-o";
    argv[n++] = "socket_mode=0666";
    if (!o->default_privileges) {       /* tests that do not test privileges */
        argv[n++] = "-o";
        argv[n++] = "privileges=keep";
    }
    for (int i = 0; o->args && o->args[i] && n < 60; i++)
        argv[n++] = o->args[i];
    argv[n] = NULL;
    drain_notify();
    r->t_start_ms = svc_testlib_now_ms();
    pid_t pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int lf = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (lf >= 0)
            dup2(lf, 2);
        /* After the drop the process is not dumpable: LeakSanitizer could
         * not inspect it at exit. */
        setenv("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1", 1);
        if (!o->notify)
            unsetenv("NOTIFY_SOCKET");
        if (o->memlock_limit) {
            struct rlimit rl = { o->memlock_limit, o->memlock_limit };
            if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
                _exit(125);
        }
        if (o->pass_fd >= 0 && o->pass_tok_fd > 0) {
            /* Out of the way first: either may already be 3 or 4. */
            int a = fcntl(o->pass_fd, F_DUPFD, 10), b = fcntl(o->pass_tok_fd, F_DUPFD, 10);
            if (a < 0 || b < 0 || dup2(a, 3) < 0 || dup2(b, 4) < 0)
                _exit(126);
            char pid_s[32], names[300];
            snprintf(pid_s, sizeof(pid_s), "%d", (int)getpid());
            snprintf(names, sizeof(names), "%s:resident-tokenizer", o->pass_name);
            setenv("LISTEN_FDS", "2", 1);
            setenv("LISTEN_PID", pid_s, 1);
            setenv("LISTEN_FDNAMES", names, 1);
        } else if (o->pass_fd >= 0) {
            if (o->pass_fd != 3 && dup2(o->pass_fd, 3) < 0)
                _exit(126);
            char pid_s[32];
            snprintf(pid_s, sizeof(pid_s), "%d", (int)getpid());
            setenv("LISTEN_FDS", "1", 1);
            setenv("LISTEN_PID", pid_s, 1);
            setenv("LISTEN_FDNAMES", o->pass_name, 1);
        }
        if (o->as_uid) {
            gid_t g = NOBODY;
            if (o->ambient_sys_admin && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
                _exit(123);
            if (setgroups(1, &g) < 0 || setresgid(g, g, g) < 0 || setresuid(o->as_uid, o->as_uid, o->as_uid) < 0)
                _exit(124);
            if (o->ambient_sys_admin) {
                /* What a unit with AmbientCapabilities=CAP_SYS_ADMIN gives. */
                cap_t c = cap_init();
                cap_value_t v = CAP_SYS_ADMIN;
                if (!c || cap_set_flag(c, CAP_PERMITTED, 1, &v, CAP_SET) < 0 ||
                    cap_set_flag(c, CAP_EFFECTIVE, 1, &v, CAP_SET) < 0 ||
                    cap_set_flag(c, CAP_INHERITABLE, 1, &v, CAP_SET) < 0 || cap_set_proc(c) < 0 ||
                    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0) < 0)
                    _exit(122);
                cap_free(c);
            }
        }
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
}

/* Collect notify messages until READY=1 (1) or exit/timeout (0). */
static int wait_ready(struct run *r, int timeout_ms)
{
    uint64_t end = svc_testlib_now_ms() + (uint64_t)timeout_ms;
    int seen_vmlck = 0;
    while (svc_testlib_now_ms() < end) {
        char buf[4096];
        int fds[4];
        size_t nf = 4;
        int n = svc_testlib_notify_recv(nsock, buf, sizeof(buf), 100, fds, &nf);
        if (n > 0) {
            if (strstr(buf, "STATUS=") && strstr(buf, "VmLck") && !r->ready)
                seen_vmlck = 1;
            if (strstr(buf, "FDSTOREREMOVE=1") && strstr(buf, "FDNAME=resident-weights"))
                r->store_removed = 1;
            if (strstr(buf, "FDSTOREREMOVE=1") && strstr(buf, "FDNAME=resident-tokenizer"))
                r->tok_removed = 1;
            if (strstr(buf, "FDSTORE=1") && strstr(buf, "FDNAME=resident-tokenizer") && nf == 1) {
                if (r->tok_fd >= 0)
                    close(r->tok_fd);
                r->tok_fd = fds[0];
                nf = 0;
            }
            if (strstr(buf, "FDSTORE=1") && strstr(buf, "FDNAME=resident-weights") && nf == 1) {
                if (r->store_fd >= 0)
                    close(r->store_fd);
                r->store_fd = fds[0];
                nf = 0;
            }
            for (size_t i = 0; i < nf; i++)
                close(fds[i]);
            if (strstr(buf, "READY=1")) {
                r->ready = 1;
                r->t_ready_ms = svc_testlib_now_ms();
                r->status_vmlck_before_ready = seen_vmlck;
                return 1;
            }
            continue;
        }
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            r->pid = 0;
            return 0;
        }
    }
    return 0;
}

static void dump_log(const struct run *r)
{
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "cat '%s' >&2", r->log);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
}

static int log_has(const struct run *r, const char *what)
{
    FILE *f = fopen(r->log, "re");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

static void stop(struct run *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        int st = svc_testlib_wait(r->pid);
        T_CHECKF(st == 0, "residentd exited with %d after SIGTERM", st);
        r->pid = 0;
    }
}

static uint64_t proc_u64(pid_t pid, const char *file, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    FILE *f = fopen(path, "re");
    T_CHECKF(f, "%s: %s", path, strerror(errno));
    uint64_t v = UINT64_MAX;
    size_t kl = strlen(key);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':')
            v = strtoull(line + kl + 1, NULL, 10);
    fclose(f);
    T_CHECKF(v != UINT64_MAX, "%s has no %s", path, key);
    return v;
}

static void expect_status(pid_t pid, const char *key, const char *want)
{
    char v[256];
    T_CHECKF(svc_testlib_proc_status(pid, key, v, sizeof(v)) == 0, "no %s", key);
    T_CHECKF(strcmp(v, want) == 0, "%s is '%s', expected '%s'", key, v, want);
}

/* Connect as uid/gid with `groups` and run one request. Returns 0 when
 * served, else the connect error (-EPERM when the policy refuses). */
static int client_as(const char *sock, uid_t uid, gid_t gid, gid_t suppl, size_t n_filler)
{
    pid_t p = fork();
    T_CHECK(p >= 0);
    if (p == 0) {
        /* n_filler unrelated groups first: the allowed one is past what a
         * 256-entry SO_PEERGROUPS buffer holds. */
        static gid_t gl[1024];
        size_t n = 0;
        for (; n < n_filler && n + 1 < sizeof(gl) / sizeof(gl[0]); n++)
            gl[n] = (gid_t)(50000 + n);
        gl[n++] = suppl;
        if (setgroups(n, gl) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
            _exit(100);
        struct resident_connect_params cp;
        resident_connect_params_init(&cp);
        cp.socket_path = sock;
        struct resident *h = NULL;
        int rc = resident_connect(&cp, &h);
        if (rc < 0)
            _exit(rc == -EPERM ? 2 : 3);
        struct resident_request q;
        resident_request_init(&q);
        q.max_tokens = 4;
        uint64_t id;
        int ok = resident_submit_text(h, &q, "hi", 2, 1, &id) == 0, done = 0;
        struct resident_event ev;
        while (ok && !done && resident_wait(h, &ev, 5000) == 1)
            done = ev.type == RESIDENT_EVENT_DONE && ev.error == 0 && ev.completion_tokens >= 1 &&
                   ev.completion_tokens <= 4;
        resident_close(h);
        _exit(done ? 0 : 4);
    }
    int st = svc_testlib_wait(p);
    return st == 0 ? 0 : st == 2 ? -EPERM : -EIO - st;
}

/* A group that exists, is not nobody's, and is not root's. */
static const struct group *pick_group(void)
{
    static const char *names[] = { "users", "staff", "games", "audio", "video", "plugdev", NULL };
    for (int i = 0; names[i]; i++) {
        struct group *g = getgrnam(names[i]);
        if (g && g->gr_gid != 0 && g->gr_gid != NOBODY)
            return g;
    }
    return NULL;
}

static void test_drop(void)
{
    const struct group *g = pick_group();
    if (!g)
        T_SKIP_BECAUSE("no group users/staff/games/audio/video/plugdev to allow");
    static char gname[64], allow[96], suppl[96];
    snprintf(gname, sizeof(gname), "%s", g->gr_name);
    gid_t ggid = g->gr_gid;
    snprintf(allow, sizeof(allow), "allow_groups=%s", gname);
    snprintf(suppl, sizeof(suppl), "supplementary_groups=%s", gname);
    char model_arg[600];
    snprintf(model_arg, sizeof(model_arg), "model=%s", src_model);
    const char *args[] = { "-o", model_arg, "-o", "privileges=drop", "-o", "user=nobody", "-o", suppl,
                           "-o", "fd_store=no", "-o", allow, "-o", "allow_uids=0", NULL };
    struct run r;
    spawn(&r, "drop", &(struct spawn_opts){ .args = args, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "residentd (privileges = drop) did not send READY=1");
    }
    T_CHECKF(r.status_vmlck_before_ready, "no STATUS= with VmLck before READY=1");

    expect_status(r.pid, "Uid", "65534\t65534\t65534\t65534");
    expect_status(r.pid, "Gid", "65534\t65534\t65534\t65534");
    char groups[256], want_groups[64];
    svc_testlib_proc_status(r.pid, "Groups", groups, sizeof(groups));
    snprintf(want_groups, sizeof(want_groups), "%u", (unsigned)ggid);
    T_CHECKF(strstr(groups, want_groups), "Groups '%s' lacks %s (supplementary_groups)", groups, want_groups);
    expect_status(r.pid, "CapInh", "0000000000000000");
    expect_status(r.pid, "CapPrm", "0000000000000000");
    expect_status(r.pid, "CapEff", "0000000000000000");
    expect_status(r.pid, "CapBnd", "0000000000000000");
    expect_status(r.pid, "CapAmb", "0000000000000000");
    expect_status(r.pid, "NoNewPrivs", "1");
    uint64_t vmlck_kb = proc_u64(r.pid, "status", "VmLck");
    /* st_set_open_dir maps the shards the index names; model.safetensors at least. */
    struct stat st;
    char shard[600];
    snprintf(shard, sizeof(shard), "%s/model.safetensors", src_model);
    T_CHECK(stat(shard, &st) == 0);
    T_CHECKF(vmlck_kb * 1024 >= (uint64_t)st.st_size, "VmLck %" PRIu64 " kB < model.safetensors %lld bytes",
             vmlck_kb, (long long)st.st_size);
    T_CHECKF(log_has(&r, "dropped privileges: uid=65534/65534/65534"), "final credentials not logged");
    printf("drop: Uid/Gid 65534, CapInh/Prm/Eff/Bnd/Amb 0, NoNewPrivs 1, Groups %s, VmLck %" PRIu64 " kB "
           "(model.safetensors %lld bytes); start to READY %" PRIu64 " ms\n", groups, vmlck_kb,
           (long long)st.st_size, r.t_ready_ms - r.t_start_ms);

    /* Peer groups: uid 4242 in no allowed group is refused; uid 4243 whose
     * supplementary group is the allowed (named) one is served. */
    int rc = client_as(r.sock, 4242, 4242, 4242, 300);
    T_CHECKF(rc == -EPERM, "client outside allow_groups: %d, expected -EPERM", rc);
    rc = client_as(r.sock, 4243, 4243, ggid, 0);
    T_CHECKF(rc == 0, "client with supplementary group %s (allowed): %d", gname, rc);
    rc = client_as(r.sock, 4245, 4245, ggid, 300);
    T_CHECKF(rc == 0, "client with 301 supplementary groups, the last %s (allowed): %d", gname, rc);
    rc = client_as(r.sock, 4244, ggid, 4244, 0);
    T_CHECKF(rc == 0, "client with primary group %s (allowed): %d", gname, rc);
    printf("policy: uid 4242 refused (-EPERM); uid 4243 via supplementary group %s (%u) served, also as "
           "the 301st group; uid 4244 via primary group served\n", gname, (unsigned)ggid);
    stop(&r);

    /* keep_cap_ipc_lock = yes: CAP_IPC_LOCK (bit 14) permitted + bounding only. */
    const char *args2[] = { "-o", model_arg, "-o", "privileges=drop", "-o", "user=nobody",
                            "-o", "supplementary_groups=", "-o", "fd_store=no", "-o", "keep_cap_ipc_lock=yes", NULL };
    spawn(&r, "drop-keep", &(struct spawn_opts){ .args = args2, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "residentd (keep_cap_ipc_lock) did not send READY=1");
    }
    expect_status(r.pid, "CapPrm", "0000000000004000");
    expect_status(r.pid, "CapBnd", "0000000000004000");
    expect_status(r.pid, "CapEff", "0000000000000000");
    expect_status(r.pid, "NoNewPrivs", "1");
    printf("keep_cap_ipc_lock: CapPrm = CapBnd = 0x4000, CapEff 0\n");
    stop(&r);
}

/* The engine generator after the drop: it loads as nobody, every thread of
 * the serving process (main, worker) has no capability, a request is served. */
static void test_drop_engine(void)
{
    char em[400], cmd[2048], model_arg[600];
    snprintf(em, sizeof(em), "%s/engine-model", dir);
    snprintf(cmd, sizeof(cmd), "cp -r '%s' '%s' && chmod -R a+rX '%s'", src_model, em, em);
    T_CHECK(system(cmd) == 0);
    snprintf(model_arg, sizeof(model_arg), "model=%s", em);
    const char *args[] = { "--generator", "engine", "-o", model_arg, "-o", "privileges=drop", "-o", "user=nobody",
                           "-o", "supplementary_groups=", "-o", "fd_store=no", NULL };
    struct run r;
    spawn(&r, "drop-engine", &(struct spawn_opts){ .args = args, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "residentd (engine generator, privileges = drop) did not send READY=1");
    }
    T_CHECK(r.status_vmlck_before_ready);
    char task_dir[64];
    snprintf(task_dir, sizeof(task_dir), "/proc/%d/task", (int)r.pid);
    DIR *td = opendir(task_dir);
    T_CHECK(td);
    int n_threads = 0;
    for (struct dirent *e; (e = readdir(td));) {
        if (e->d_name[0] == '.')
            continue;
        char path[384], line[256];
        snprintf(path, sizeof(path), "%s/%s/status", task_dir, e->d_name);
        FILE *f = fopen(path, "re");
        T_CHECK(f);
        while (fgets(line, sizeof(line), f))
            if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapPrm:", 7) || !strncmp(line, "CapBnd:", 7))
                T_CHECKF(strstr(line, "0000000000000000"), "thread %s: %s", e->d_name, line);
            else if (!strncmp(line, "Uid:", 4))
                T_CHECKF(strstr(line, "65534\t65534\t65534\t65534"), "thread %s: %s", e->d_name, line);
        fclose(f);
        n_threads++;
    }
    closedir(td);
    T_CHECKF(n_threads >= 2, "expected the loop and the worker thread, saw %d", n_threads);
    int rc = client_as(r.sock, 0, 0, 0, 0);
    T_CHECKF(rc == 0, "request to the engine generator after the drop: %d", rc);
    printf("drop + engine generator: %d threads, each with Uid 65534 and CapPrm/CapEff/CapBnd 0; request served; "
           "start to READY %" PRIu64 " ms\n", n_threads, r.t_ready_ms - r.t_start_ms);
    stop(&r);
}

static void test_memlock_refused(void)
{
    char model_arg[600];
    snprintf(model_arg, sizeof(model_arg), "model=%s", model);
    const char *args[] = { "-o", model_arg, "-o", "privileges=auto", "-o", "fd_store=no", NULL };
    struct run r;
    spawn(&r, "memlock", &(struct spawn_opts){ .args = args, .notify = 1, .pass_fd = -1, .as_uid = NOBODY,
                                              .memlock_limit = 1 << 20 });
    T_CHECKF(!wait_ready(&r, 20000), "READY=1 although the weights could not be locked");
    T_CHECKF(r.pid == 0, "residentd neither became ready nor exited");
    int st = r.exit_status;
    if (st != 1)
        dump_log(&r);
    T_CHECKF(st == 1, "residentd under RLIMIT_MEMLOCK 1 MiB exited %d, expected 1", st);
    T_CHECKF(log_has(&r, "LimitMEMLOCK=") && log_has(&r, "CAP_IPC_LOCK") && log_has(&r, "cannot lock "),
             "the memlock failure does not name LimitMEMLOCK= / CAP_IPC_LOCK and the bytes");
    T_CHECKF(!log_has(&r, "residentd: ready\n"), "residentd became ready without locking");
    printf("memlock: as nobody with RLIMIT_MEMLOCK 1 MiB the start fails (no READY=1) naming LimitMEMLOCK= and "
           "CAP_IPC_LOCK\n");
    /* --no-lock: the same start succeeds, unlocked. */
    const char *args2[] = { "-o", model_arg, "-o", "privileges=auto", "-o", "fd_store=no", "--no-lock", NULL };
    spawn(&r, "nolock", &(struct spawn_opts){ .args = args2, .pass_fd = -1, .as_uid = NOBODY,
                                             .memlock_limit = 1 << 20 });
    for (int i = 0; i < 500 && !log_has(&r, "residentd: ready\n"); i++)
        usleep(20000);
    if (!log_has(&r, "residentd: ready\n"))
        dump_log(&r);
    T_CHECKF(log_has(&r, "residentd: ready\n"), "--no-lock start did not become ready");
    T_CHECK(proc_u64(r.pid, "status", "VmLck") == 0);
    stop(&r);
}

/* Under a service manager (NOTIFY_SOCKET set) privileges = auto verifies:
 * root is refused (User=), so is a non-root process holding CAP_SYS_ADMIN
 * (CapabilityBoundingSet=/AmbientCapabilities=); a clean non-root start
 * serves with NoNewPrivs set. */
static void test_verify(void)
{
    const char *args[] = { "-o", "privileges=auto", NULL };
    struct run r;

    /* Bad values are refused at start, naming the key and what is accepted. */
    static const char *bad[][3] = {
        { "privileges=bogus", "keep, auto, drop or verify", NULL },
        { "memlock=maybe", "lock, onfault or off", NULL },
        { "allow_groups=no-such-group-resident-test", "group 'no-such-group-resident-test' does not exist", NULL },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *bargs[] = { "-o", bad[i][0], NULL };
        spawn(&r, i == 0 ? "bad0" : i == 1 ? "bad1" : "bad2", &(struct spawn_opts){ .args = bargs, .pass_fd = -1 });
        int bst = svc_testlib_wait(r.pid);
        r.pid = 0;
        if (bst != 2 || !log_has(&r, bad[i][1]))
            dump_log(&r);
        T_CHECKF(bst == 2 && log_has(&r, bad[i][1]), "-o %s: exit %d", bad[i][0], bst);
    }
    spawn(&r, "verify-root", &(struct spawn_opts){ .args = args, .notify = 1, .pass_fd = -1 });
    int st = svc_testlib_wait(r.pid);
    r.pid = 0;
    if (st != 1 || !log_has(&r, "User="))
        dump_log(&r);
    T_CHECKF(st == 1 && log_has(&r, "User="), "root under a service manager was not refused naming User= (%d)", st);

    spawn(&r, "verify-admin", &(struct spawn_opts){ .args = args, .notify = 1, .pass_fd = -1, .as_uid = NOBODY,
                                                   .ambient_sys_admin = 1 });
    st = svc_testlib_wait(r.pid);
    r.pid = 0;
    if (st != 1 || !log_has(&r, "CapabilityBoundingSet="))
        dump_log(&r);
    T_CHECKF(st == 1 && log_has(&r, "CapabilityBoundingSet=") && log_has(&r, "cap_sys_admin"),
             "CAP_SYS_ADMIN under a service manager was not refused naming CapabilityBoundingSet= (%d)", st);

    spawn(&r, "verify-ok", &(struct spawn_opts){ .args = args, .notify = 1, .pass_fd = -1, .as_uid = NOBODY });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "clean non-root start under a service manager: no READY=1");
    }
    expect_status(r.pid, "NoNewPrivs", "1");
    expect_status(r.pid, "CapEff", "0000000000000000");
    T_CHECK(log_has(&r, "credentials (verified)"));
    stop(&r);
    printf("verify: root under a manager refused (User=), CAP_SYS_ADMIN refused (CapabilityBoundingSet=), "
           "clean start served with NoNewPrivs 1\n");
}

/* Started by hand (no NOTIFY_SOCKET): READY is the "ready" log line. */
static int wait_log_ready(struct run *r, int timeout_ms)
{
    uint64_t end = svc_testlib_now_ms() + (uint64_t)timeout_ms;
    while (svc_testlib_now_ms() < end) {
        if (log_has(r, "residentd: ready\n"))
            return 1;
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            r->pid = 0;
            return 0;
        }
        usleep(10000);
    }
    return 0;
}

/* The compiled-in default (no privileges key, no residentd.conf) is auto:
 * root by hand drops to `user` (Uid 65534, no capability in any set,
 * NoNewPrivs), and refuses to start when that user does not exist; root
 * under a service manager is refused (User=); a non-root start verifies
 * (NoNewPrivs, no capability). */
static void test_default_privileges(void)
{
    char model_arg[600];
    snprintf(model_arg, sizeof(model_arg), "model=%s", model);
    const char *drop_args[] = { "-o", model_arg, "-o", "user=nobody", "-o", "supplementary_groups=",
                                "-o", "fd_store=no", NULL };
    struct run r;
    spawn(&r, "default-root", &(struct spawn_opts){ .args = drop_args, .pass_fd = -1, .default_privileges = 1 });
    if (!wait_log_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "root by hand with the default privileges did not become ready");
    }
    expect_status(r.pid, "Uid", "65534\t65534\t65534\t65534");
    expect_status(r.pid, "CapPrm", "0000000000000000");
    expect_status(r.pid, "CapEff", "0000000000000000");
    expect_status(r.pid, "CapBnd", "0000000000000000");
    expect_status(r.pid, "CapAmb", "0000000000000000");
    expect_status(r.pid, "NoNewPrivs", "1");
    T_CHECK(proc_u64(r.pid, "status", "VmLck") * 1024 >= shard_bytes);
    T_CHECK(log_has(&r, "dropped privileges: uid=65534"));
    T_CHECK(client_as(r.sock, 0, 0, 0, 0) == 0);
    stop(&r);

    const char *nouser_args[] = { "-o", "user=no-such-user-resident-test", NULL };
    spawn(&r, "default-nouser", &(struct spawn_opts){ .args = nouser_args, .pass_fd = -1, .default_privileges = 1 });
    int st = svc_testlib_wait(r.pid);
    r.pid = 0;
    if (st != 1 || !log_has(&r, "does not exist"))
        dump_log(&r);
    T_CHECKF(st == 1 && log_has(&r, "no-such-user-resident-test") && log_has(&r, "systemd-sysusers"),
             "root by hand with a missing user: exit %d, expected 1 naming the user and systemd-sysusers", st);

    spawn(&r, "default-managed-root", &(struct spawn_opts){ .notify = 1, .pass_fd = -1, .default_privileges = 1 });
    st = svc_testlib_wait(r.pid);
    r.pid = 0;
    T_CHECKF(st == 1 && log_has(&r, "User="), "root under a manager with the default privileges: exit %d", st);

    spawn(&r, "default-nobody", &(struct spawn_opts){ .pass_fd = -1, .as_uid = NOBODY, .default_privileges = 1 });
    if (!wait_log_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "nobody by hand with the default privileges did not become ready");
    }
    expect_status(r.pid, "NoNewPrivs", "1");
    expect_status(r.pid, "CapEff", "0000000000000000");
    T_CHECK(log_has(&r, "credentials (verified)"));
    stop(&r);
    printf("default privileges (auto): root by hand dropped to nobody (caps 0, NoNewPrivs 1, weights locked, "
           "served); missing user refused naming systemd-sysusers; root under a manager refused (User=); "
           "nobody by hand verified (NoNewPrivs 1)\n");
}

static uint64_t rchar_at_ready(const struct run *r)
{
    return proc_u64(r->pid, "io", "rchar");
}

static void test_fd_store(void)
{
    char model_arg[600];
    snprintf(model_arg, sizeof(model_arg), "model=%s", model);
    const char *plain_args[] = { "-o", model_arg, "-o", "fd_store=no", NULL };
    const char *store_args[] = { "-o", model_arg, "-o", "fd_store=yes", NULL };
    struct run r;

    /* Without the store: mapped + locked from the files. */
    spawn(&r, "plain", &(struct spawn_opts){ .args = plain_args, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "plain start: no READY=1");
    }
    uint64_t t_plain = r.t_ready_ms - r.t_start_ms;
    T_CHECK(r.store_fd < 0);
    stop(&r);

    /* First start with the store: copies the shards and hands the memfd over. */
    spawn(&r, "fill", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "fd-store start: no READY=1");
    }
    uint64_t t_fill = r.t_ready_ms - r.t_start_ms, rchar_fill = rchar_at_ready(&r);
    T_CHECKF(r.store_fd >= 0, "no FDSTORE=1 with FDNAME=resident-weights and an fd before READY=1");
    T_CHECKF(rchar_fill >= shard_bytes, "fill read %" PRIu64 " bytes < shards %" PRIu64, rchar_fill, shard_bytes);
    T_CHECK(proc_u64(r.pid, "status", "VmLck") * 1024 >= shard_bytes);
    int store = r.store_fd;
    stop(&r);

    /* Restart with it: no model file is read. */
    spawn(&r, "restart", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                              .pass_name = "resident-weights" });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "restart from the fd store: no READY=1");
    }
    uint64_t t_restart = r.t_ready_ms - r.t_start_ms, rchar_restart = rchar_at_ready(&r);
    uint64_t vmlck = proc_u64(r.pid, "status", "VmLck") * 1024;
    if (!log_has(&r, "reusing resident-weights"))
        dump_log(&r);
    T_CHECK(log_has(&r, "reusing resident-weights"));
    T_CHECKF(rchar_restart < shard_bytes / 4, "restart read %" PRIu64 " bytes (shards %" PRIu64 ")",
             rchar_restart, shard_bytes);
    T_CHECKF(vmlck >= shard_bytes, "VmLck %" PRIu64 " < %" PRIu64 " after the restart", vmlck, shard_bytes);
    T_CHECK(!r.store_removed && r.store_fd < 0);
    T_CHECK(r.status_vmlck_before_ready);
    stop(&r);
    printf("fd store: shards %" PRIu64 " bytes; start to READY: no store %" PRIu64 " ms, first start with "
           "store %" PRIu64 " ms (rchar %" PRIu64 "), restart from store %" PRIu64 " ms (rchar %" PRIu64
           ", VmLck %" PRIu64 " kB)\n", shard_bytes, t_plain, t_fill, rchar_fill, t_restart, rchar_restart,
           vmlck / 1024);

    /* Stale: a shard's mtime changed -> discarded (FDSTOREREMOVE=1), re-read, stored anew. */
    char shard[600];
    snprintf(shard, sizeof(shard), "%s/model.safetensors", model);
    struct timespec ts[2] = { { 0, UTIME_OMIT }, { 0, 0 } };
    clock_gettime(CLOCK_REALTIME, &ts[1]);
    ts[1].tv_sec += 5;
    T_CHECK(utimensat(AT_FDCWD, shard, ts, 0) == 0);
    spawn(&r, "stale", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                            .pass_name = "resident-weights" });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "restart with a stale store entry: no READY=1");
    }
    T_CHECKF(r.store_removed, "stale entry: no FDSTOREREMOVE=1");
    T_CHECK(log_has(&r, "stale or foreign"));
    T_CHECK(rchar_at_ready(&r) >= shard_bytes);
    T_CHECKF(r.store_fd >= 0, "stale entry: no fresh FDSTORE=1");
    close(r.store_fd);
    stop(&r);
    close(store);

    /* Foreign: an unsealed memfd under our name. */
    int foreign = memfd_create("resident-weights", MFD_CLOEXEC);
    T_CHECK(foreign >= 0 && ftruncate(foreign, 1 << 20) == 0);
    spawn(&r, "foreign", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = foreign,
                                              .pass_name = "resident-weights" });
    if (!wait_ready(&r, 20000)) {
        dump_log(&r);
        T_CHECKF(0, "restart with a foreign store entry: no READY=1");
    }
    T_CHECK(r.store_removed && log_has(&r, "stale or foreign"));
    if (r.store_fd >= 0)
        close(r.store_fd);
    stop(&r);
    close(foreign);
    printf("fd store: touched shard (mtime) and foreign memfd discarded with FDSTOREREMOVE=1, files re-read\n");
}

/* Greedy output token ids of one request ("hello", up to 8 tokens) as a
 * comma list in out (the child writes them through a pipe). 0 or -EIO. */
static int client_tokens(const char *sock, char *out, size_t outlen)
{
    int pfd[2];
    T_CHECK(pipe(pfd) == 0);
    pid_t p = fork();
    T_CHECK(p >= 0);
    if (p == 0) {
        close(pfd[0]);
        struct resident_connect_params cp;
        resident_connect_params_init(&cp);
        cp.socket_path = sock;
        struct resident *h = NULL;
        if (resident_connect(&cp, &h) < 0)
            _exit(3);
        struct resident_request q;
        resident_request_init(&q);
        q.max_tokens = 8;
        q.temperature = 0.0f;
        uint64_t id;
        int ok = resident_submit_text(h, &q, "hello", 5, 1, &id) == 0, done = 0;
        struct resident_event ev;
        char buf[512];
        size_t n = 0;
        while (ok && !done && resident_wait(h, &ev, 30000) == 1) {
            for (uint32_t i = 0; ev.type == RESIDENT_EVENT_TOKENS && i < ev.n_tokens && n + 16 < sizeof(buf); i++)
                n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%u,", ev.tokens[i]);
            done = ev.type == RESIDENT_EVENT_DONE;
            ok = !done || ev.error == 0;
        }
        resident_close(h);
        if (!ok || !done || n == 0 || write(pfd[1], buf, n) != (ssize_t)n)
            _exit(4);
        _exit(0);
    }
    close(pfd[1]);
    ssize_t n = read(pfd[0], out, outlen - 1);
    close(pfd[0]);
    out[n > 0 ? n : 0] = '\0';
    return svc_testlib_wait(p) == 0 && n > 0 ? 0 : -EIO;
}

/* Whether /proc/PID/maps has a mapping whose path contains `what`. */
static int maps_has(pid_t pid, const char *what)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "re");
    T_CHECKF(f, "%s: %s", path, strerror(errno));
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

/* The engine generator through the fd store: it loads from the container's
 * shard images, so a restart neither maps nor reads a shard file (no shard
 * path in /proc/PID/maps, the engine's own counter says 0 files opened,
 * rchar lower than the first start's by at least 3/4 of the shard bytes),
 * the weights are locked before READY, and
 * the greedy output equals that of a start from the files (the logits are
 * bit-identical: engine-images). A stale entry is discarded. */
static void test_fd_store_engine(void)
{
    char em[400], cmd[1024], model_arg[600], shard[600];
    snprintf(em, sizeof(em), "%s/store-engine-model", dir);
    snprintf(cmd, sizeof(cmd), "cp -r '%s' '%s'", src_model, em);
    T_CHECK(system(cmd) == 0);
    snprintf(model_arg, sizeof(model_arg), "model=%s", em);
    snprintf(shard, sizeof(shard), "%s/model.safetensors", em);
    uint64_t shards = 0;
    const char *names[] = { "model.safetensors", "model_mtp.safetensors" };
    for (int i = 0; i < 2; i++) {
        char pth[700];
        struct stat st;
        snprintf(pth, sizeof(pth), "%s/%s", em, names[i]);
        if (stat(pth, &st) == 0)
            shards += (uint64_t)st.st_size;
    }
    char tokjson[600];
    struct stat tst;
    snprintf(tokjson, sizeof(tokjson), "%s/tokenizer.json", em);
    T_CHECK(stat(tokjson, &tst) == 0);
    uint64_t tok_bytes = (uint64_t)tst.st_size;
    const char *plain_args[] = { "--generator", "engine", "-o", model_arg, "-o", "fd_store=no", NULL };
    const char *store_args[] = { "--generator", "engine", "-o", model_arg, "-o", "fd_store=yes", NULL };
    char want[512], got[512];
    struct run r;

    /* From the files: the shard is mapped (what the restart must not do). */
    spawn(&r, "engine-plain", &(struct spawn_opts){ .args = plain_args, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator from the files: no READY=1");
    }
    T_CHECKF(maps_has(r.pid, shard), "the file start does not map %s: the maps check proves nothing", shard);
    T_CHECK(log_has(&r, "weights from the model files; 2 shard files opened"));
    T_CHECKF(r.tok_fd < 0, "fd_store = no stored a tokenizer cache image");
    T_CHECK(client_tokens(r.sock, want, sizeof(want)) == 0);
    uint64_t t_plain = r.t_ready_ms - r.t_start_ms;
    stop(&r);

    /* First start with the store: the engine already loads from the container. */
    spawn(&r, "engine-fill", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = -1 });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator, fd_store = yes: no READY=1");
    }
    T_CHECKF(r.store_fd >= 0, "no FDSTORE=1 with the container before READY=1");
    uint64_t rchar_fill = rchar_at_ready(&r);
    T_CHECKF(r.tok_fd >= 0, "no FDSTORE=1 with FDNAME=resident-tokenizer before READY=1");
    T_CHECK(log_has(&r, "tokenizer") && log_has(&r, "parsed from its files"));
    T_CHECKF(rchar_fill >= shards + tok_bytes, "first start read %" PRIu64 " bytes < shards + tokenizer.json",
             rchar_fill);
    int tok_store = r.tok_fd;
    T_CHECK(!maps_has(r.pid, shard));
    T_CHECK(log_has(&r, "weights from the fd-store container; 0 shard files opened"));
    T_CHECK(client_tokens(r.sock, got, sizeof(got)) == 0);
    T_CHECKF(strcmp(got, want) == 0, "output from the container %s != from the files %s", got, want);
    uint64_t t_fill = r.t_ready_ms - r.t_start_ms;
    int store = r.store_fd;
    stop(&r);

    /* Restart: nothing of the checkpoint is read or mapped. */
    spawn(&r, "engine-restart", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                                     .pass_name = "resident-weights", .pass_tok_fd = tok_store });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator restart from the fd store: no READY=1");
    }
    uint64_t rchar_restart = rchar_at_ready(&r), vmlck = proc_u64(r.pid, "status", "VmLck") * 1024;
    if (!log_has(&r, "reusing resident-weights") || !log_has(&r, "0 shard files opened"))
        dump_log(&r);
    T_CHECK(log_has(&r, "reusing resident-weights"));
    T_CHECK(log_has(&r, "weights from the fd-store container; 0 shard files opened"));
    T_CHECKF(!maps_has(r.pid, shard), "the restarted daemon maps %s", shard);
    T_CHECK(maps_has(r.pid, "resident-weights"));
    T_CHECKF(rchar_restart + shards * 3 / 4 <= rchar_fill, "restart read %" PRIu64 " bytes, the first start %"
             PRIu64 " (shards %" PRIu64 ")", rchar_restart, rchar_fill, shards);
    T_CHECKF(vmlck >= shards, "VmLck %" PRIu64 " < shards %" PRIu64, vmlck, shards);
    T_CHECK(r.status_vmlck_before_ready && !r.store_removed);
    /* The tokenizer came from its stored image: tokenizer.json (11 MB) was
     * not read. rchar counts every read() of the process, so the JSON
     * path alone would put it above tok_bytes. */
    if (!log_has(&r, "reusing resident-tokenizer"))
        dump_log(&r);
    T_CHECK(log_has(&r, "reusing resident-tokenizer") && log_has(&r, "from the stored cache image"));
    T_CHECKF(rchar_restart < tok_bytes / 4, "restart read %" PRIu64 " bytes; tokenizer.json has %" PRIu64,
             rchar_restart, tok_bytes);
    T_CHECK(!r.tok_removed && r.tok_fd < 0);
    T_CHECK(client_tokens(r.sock, got, sizeof(got)) == 0);
    T_CHECKF(strcmp(got, want) == 0, "output after the restart %s != from the files %s", got, want);
    printf("fd store + engine generator: start to READY from the files %" PRIu64 " ms, first start with the "
           "store %" PRIu64 " ms, restart from the store %" PRIu64 " ms; rchar %" PRIu64 " (first start %"
           PRIu64 ", shards %" PRIu64 ", tokenizer.json %" PRIu64 "), VmLck %" PRIu64 " kB, no shard file "
           "mapped, greedy tokens %s equal to a start from the files\n", t_plain, t_fill,
           r.t_ready_ms - r.t_start_ms, rchar_restart, rchar_fill, shards, tok_bytes, vmlck / 1024, got);
    stop(&r);

    /* Stale tokenizer entry, container level: tokenizer.json's mtime
     * changed. The weights are reused; the tokenizer entry is discarded,
     * the JSON parsed again (rchar), a fresh image stored, same output. */
    struct timespec tts[2] = { { 0, UTIME_OMIT }, { 0, 0 } };
    clock_gettime(CLOCK_REALTIME, &tts[1]);
    tts[1].tv_sec += 3;
    T_CHECK(utimensat(AT_FDCWD, tokjson, tts, 0) == 0);
    spawn(&r, "engine-tok-stale", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                                       .pass_name = "resident-weights", .pass_tok_fd = tok_store });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator with a stale tokenizer entry: no READY=1");
    }
    T_CHECK(log_has(&r, "reusing resident-weights") && !r.store_removed);
    T_CHECKF(r.tok_removed && log_has(&r, "resident-tokenizer is stale or foreign"),
             "stale tokenizer entry not discarded");
    T_CHECK(rchar_at_ready(&r) >= tok_bytes && log_has(&r, "parsed from its files"));
    T_CHECKF(r.tok_fd >= 0, "stale tokenizer entry: no fresh resident-tokenizer stored");
    T_CHECK(client_tokens(r.sock, got, sizeof(got)) == 0);
    T_CHECK(strcmp(got, want) == 0);
    close(tok_store);
    tok_store = r.tok_fd;
    r.tok_fd = -1;
    stop(&r);

    /* Stale at the image level only: tokenizer.json replaced by a copy
     * with the same size and mtime (cp -p, new inode). The container's
     * identity (size, mtime) still matches; the image's own (device,
     * inode) does not, so the engine refuses it and the entry is rebuilt. */
    char cpcmd[2600];
    snprintf(cpcmd, sizeof(cpcmd), "cp -p '%s' '%s.new' && mv '%s.new' '%s'", tokjson, tokjson, tokjson, tokjson);
    T_CHECK(system(cpcmd) == 0);
    spawn(&r, "engine-tok-inode", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                                       .pass_name = "resident-weights", .pass_tok_fd = tok_store });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator with a replaced tokenizer.json: no READY=1");
    }
    if (!log_has(&r, "refused by the generator"))
        dump_log(&r);
    T_CHECKF(r.tok_removed && log_has(&r, "resident-tokenizer refused by the generator"),
             "image of a replaced tokenizer.json not refused");
    T_CHECK(rchar_at_ready(&r) >= tok_bytes && r.tok_fd >= 0);
    close(tok_store);
    tok_store = r.tok_fd;
    r.tok_fd = -1;
    stop(&r);

    /* The rebuilt entry is used again: tokenizer.json not read. */
    spawn(&r, "engine-tok-rebuilt", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                                         .pass_name = "resident-weights", .pass_tok_fd = tok_store });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator with the rebuilt tokenizer entry: no READY=1");
    }
    uint64_t rchar_rebuilt = rchar_at_ready(&r);
    T_CHECK(log_has(&r, "reusing resident-tokenizer") && !r.tok_removed);
    T_CHECKF(rchar_rebuilt < tok_bytes / 4, "restart with the rebuilt entry read %" PRIu64 " bytes", rchar_rebuilt);
    T_CHECK(client_tokens(r.sock, got, sizeof(got)) == 0);
    T_CHECK(strcmp(got, want) == 0);
    stop(&r);
    close(tok_store);
    /* Cold start with CacheDirectory= ($CACHE_DIRECTORY), no store: the
     * first start writes the tokenizer's cache file, the second loads it
     * instead of parsing tokenizer.json, with the same output. */
    char cdir[700];
    snprintf(cdir, sizeof(cdir), "%s/cache", dir);
    T_CHECK(mkdir(cdir, 0700) == 0);
    T_CHECK(setenv("CACHE_DIRECTORY", cdir, 1) == 0);
    for (int k = 0; k < 2; k++) {
        spawn(&r, k ? "engine-cachedir-2" : "engine-cachedir-1",
              &(struct spawn_opts){ .args = plain_args, .notify = 1, .pass_fd = -1 });
        if (!wait_ready(&r, 60000)) {
            dump_log(&r);
            T_CHECKF(0, "engine generator with CACHE_DIRECTORY: no READY=1");
        }
        if (!log_has(&r, k ? "(from the cache file)" : "(parsed from its files)"))
            dump_log(&r);
        T_CHECKF(log_has(&r, k ? "(from the cache file)" : "(parsed from its files)"),
                 "CACHE_DIRECTORY start %d: the tokenizer did not come from where expected", k + 1);
        T_CHECK(client_tokens(r.sock, got, sizeof(got)) == 0);
        T_CHECK(strcmp(got, want) == 0);
        stop(&r);
    }
    unsetenv("CACHE_DIRECTORY");

    printf("fd store + engine generator: tokenizer entry stale by mtime discarded (FDSTOREREMOVE=1) and by "
           "inode refused by the engine, both rebuilt from tokenizer.json; the rebuilt entry reused (rchar %"
           PRIu64 ")\n", rchar_rebuilt);

    /* Stale (a shard's mtime changed): discarded, re-read, same output. */
    struct timespec ts[2] = { { 0, UTIME_OMIT }, { 0, 0 } };
    clock_gettime(CLOCK_REALTIME, &ts[1]);
    ts[1].tv_sec += 5;
    T_CHECK(utimensat(AT_FDCWD, shard, ts, 0) == 0);
    spawn(&r, "engine-stale", &(struct spawn_opts){ .args = store_args, .notify = 1, .pass_fd = store,
                                                   .pass_name = "resident-weights" });
    if (!wait_ready(&r, 60000)) {
        dump_log(&r);
        T_CHECKF(0, "engine generator with a stale store entry: no READY=1");
    }
    T_CHECK(r.store_removed && log_has(&r, "stale or foreign"));
    T_CHECK(rchar_at_ready(&r) >= shards);
    T_CHECK(client_tokens(r.sock, got, sizeof(got)) == 0);
    T_CHECK(strcmp(got, want) == 0);
    if (r.store_fd >= 0)
        close(r.store_fd);
    stop(&r);
    close(store);
    printf("fd store + engine generator: stale entry (touched mtime) discarded, files re-read\n");
}

static int getpwnam_ok(void)
{
    struct passwd *pw = getpwnam("nobody");
    return pw && pw->pw_uid == NOBODY && pw->pw_gid == NOBODY;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);     /* checks _exit(): keep what was printed */
    if (geteuid() != 0)
        T_SKIP_BECAUSE("needs root (starts residentd by hand as root and drops to nobody)");
    const char *b = getenv("RESIDENT_BUILD_ROOT"), *s = getenv("RESIDENT_SOURCE_ROOT");
    if (!b || !s)
        T_SKIP_BECAUSE("RESIDENT_BUILD_ROOT / RESIDENT_SOURCE_ROOT unset (run through meson test)");
    snprintf(exe, sizeof(exe), "%s/daemon/residentd", b);
    snprintf(src_model, sizeof(src_model), "%s/tests/data/default-model", s);
    if (access(exe, X_OK) != 0)
        T_SKIP_BECAUSE("%s not built", exe);
    char probe[600];
    snprintf(probe, sizeof(probe), "%s/model.safetensors", src_model);
    if (access(probe, R_OK) != 0)
        T_SKIP_BECAUSE("%s missing", probe);
    if (!getpwnam_ok())
        T_SKIP_BECAUSE("no user nobody (65534)");
    T_CHECK(svc_testlib_tmpdir(dir, sizeof(dir)) == 0);
    T_CHECK(chmod(dir, 0755) == 0);
    nsock = svc_testlib_notify_listen(dir);
    T_CHECK(nsock >= 0);
    snprintf(nsock_path, sizeof(nsock_path), "%s/notify", dir);
    /* The daemon sends READY=1 after dropping to nobody. */
    T_CHECK(chmod(nsock_path, 0666) == 0);
    make_model_copy();

    test_drop();
    test_drop_engine();
    test_memlock_refused();
    test_verify();
    test_default_privileges();
    test_fd_store();
    test_fd_store_engine();

    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    printf("PASS\n");
    return 0;
}
