/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Privileges, checked from the outside: a forked child locks memory, drops
 * to nobody with svc_caps_apply(), and the parent reads /proc/CHILD/status
 * (Uid, Gid, Groups, CapInh/Prm/Eff/Bnd/Amb, NoNewPrivs, VmLck) while the
 * child waits.  Then the VERIFY mode: root under a service manager is
 * refused, a unit handing out CAP_SYS_ADMIN is refused with the unit line
 * to fix, CAP_IPC_LOCK alone is accepted and trimmed.
 *
 * Needs root (CI runs tests as root); as another user only the unprivileged
 * VERIFY case runs and the test exits 77.
 */
#include "daemon/svc-caps.h"
#include "daemon/svc-log.h"
#include "daemon/svc-testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <linux/securebits.h>
#include <sys/capability.h>

#define LOCK_BYTES (1024u * 1024u)

static char last_log[2048];

static void capture(int prio, const char *line, void *ud)
{
    (void)ud;
    if (prio <= LOG_ERR)
        snprintf(last_log, sizeof(last_log), "%s", line);
    fprintf(stderr, "log<%d>: %s\n", prio, line);
}

static void clear_manager_env(void)
{
    unsetenv("INVOCATION_ID");
    unsetenv("NOTIFY_SOCKET");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
}

static void expect_status(pid_t pid, const char *key, const char *want)
{
    char got[256];

    T_CHECKF(svc_testlib_proc_status(pid, key, got, sizeof(got)) == 0, "no %s in /proc/%d/status", key, (int)pid);
    printf("  %-10s %s\n", key, got);
    T_CHECKF(!strcmp(got, want), "%s is \"%s\", expected \"%s\"", key, got, want);
}

/* Child side of a drop: lock, drop, self-checks, report, wait for "exit". */
static void drop_child(int ready_w, int done_r, bool keep_ipc_lock, gid_t nogroup)
{
    static const char *groups[] = { "nogroup", "no-such-group-resident-test", NULL };
    struct svc_caps_config cfg = { .mode = SVC_CAPS_AUTO, .user = "nobody", .groups = groups,
                                   .keep_ipc_lock = keep_ipc_lock };
    struct svc_caps c;
    char *p, buf[1];

    clear_manager_env();
    p = mmap(NULL, LOCK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    T_CHECK(p != MAP_FAILED);
    T_CHECK(mlock2(p, LOCK_BYTES, 0) == 0);     /* ASan makes mlock() a no-op */
    T_CHECK(svc_caps_init(&c, &cfg) == 0);
    T_CHECK(c.mode == SVC_CAPS_DROP && !c.managed);
    T_CHECK(c.n_groups == 1 && c.groups[0] == nogroup);      /* missing group skipped */
    T_CHECK(svc_caps_apply(&c) == 0);
    /* From the inside: no way back. */
    T_CHECK(setresuid(0, 0, 0) < 0 && errno == EPERM);
    T_CHECK(setgroups(0, NULL) < 0);
    T_CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
    T_CHECKF((cap_get_secbits() & (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
                                   SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)) ==
             (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
              SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED), "securebits 0x%x", cap_get_secbits());
    T_CHECK(cap_set_secbits(0) < 0);                          /* locked */
    T_CHECK(write(ready_w, "r", 1) == 1);
    T_CHECK(read(done_r, buf, 1) >= 0);
    _exit(T_PASS);
}

static void test_drop(bool keep_ipc_lock)
{
    struct passwd *pw = getpwnam("nobody");
    struct group *gr = getgrnam("nogroup");
    int ready[2], done[2];
    char buf[1], ids[64], vmlck[64];
    unsigned long long kb = 0;
    pid_t pid;

    if (!pw || !gr)
        T_SKIP_BECAUSE("user nobody / group nogroup missing on this host");
    T_CHECK(pipe2(ready, O_CLOEXEC) == 0 && pipe2(done, O_CLOEXEC) == 0);
    pid = fork();
    T_CHECK(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(done[1]);
        drop_child(ready[1], done[0], keep_ipc_lock, gr->gr_gid);
    }
    close(ready[1]);
    close(done[0]);
    T_CHECKF(read(ready[0], buf, 1) == 1, "child failed before reporting (exit %d)", svc_testlib_wait(pid));

    printf("after drop%s (pid %d):\n", keep_ipc_lock ? " keeping CAP_IPC_LOCK permitted" : "", (int)pid);
    snprintf(ids, sizeof(ids), "%u\t%u\t%u\t%u", pw->pw_uid, pw->pw_uid, pw->pw_uid, pw->pw_uid);
    expect_status(pid, "Uid", ids);
    snprintf(ids, sizeof(ids), "%u\t%u\t%u\t%u", pw->pw_gid, pw->pw_gid, pw->pw_gid, pw->pw_gid);
    expect_status(pid, "Gid", ids);
    snprintf(ids, sizeof(ids), "%u", gr->gr_gid);
    expect_status(pid, "Groups", ids);
    expect_status(pid, "CapInh", "0000000000000000");
    expect_status(pid, "CapPrm", keep_ipc_lock ? "0000000000004000" : "0000000000000000");
    expect_status(pid, "CapEff", "0000000000000000");
    expect_status(pid, "CapBnd", keep_ipc_lock ? "0000000000004000" : "0000000000000000");
    expect_status(pid, "CapAmb", "0000000000000000");
    expect_status(pid, "NoNewPrivs", "1");
    T_CHECK(svc_testlib_proc_status(pid, "VmLck", vmlck, sizeof(vmlck)) == 0);
    sscanf(vmlck, "%llu", &kb);
    printf("  %-10s %s (locked before the drop, kept after it)\n", "VmLck", vmlck);
    T_CHECKF(kb * 1024 >= LOCK_BYTES, "VmLck %s", vmlck);

    T_CHECK(write(done[1], "x", 1) == 1);
    T_CHECK(svc_testlib_wait(pid) == T_PASS);
    close(ready[0]);
    close(done[1]);
}

static void *sleeper(void *arg)
{
    (void)arg;
    pause();
    return NULL;
}

/* Capabilities are per thread: a drop with a second thread alive is refused. */
static void test_drop_threads(void)
{
    pid_t pid = fork();

    T_CHECK(pid >= 0);
    if (pid == 0) {
        struct svc_caps_config cfg = { .mode = SVC_CAPS_DROP, .user = "nobody" };
        struct svc_caps c;
        pthread_t t;

        clear_manager_env();
        svc_log_set_sink(capture, NULL);
        T_CHECK(pthread_create(&t, NULL, sleeper, NULL) == 0);
        T_CHECK(svc_caps_init(&c, &cfg) == 0);
        T_CHECK(svc_caps_apply(&c) == -EBUSY);
        T_CHECK(geteuid() == 0);                  /* nothing half-done */
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == T_PASS);
}

/* Root under a service manager: the unit forgot User=. */
static void test_verify_root(void)
{
    pid_t pid = fork();

    T_CHECK(pid >= 0);
    if (pid == 0) {
        struct svc_caps c;

        clear_manager_env();
        setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef", 1);
        svc_log_set_sink(capture, NULL);
        T_CHECK(svc_caps_init(&c, NULL) == 0);
        T_CHECK(c.managed && c.mode == SVC_CAPS_VERIFY);
        T_CHECK(svc_caps_apply(&c) == -EPERM);
        T_CHECKF(strstr(last_log, "User=residentd"), "message: %s", last_log);
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == T_PASS);
}

/* Become nobody holding `caps` (what User=nobody + AmbientCapabilities=
 * would give), then run VERIFY as if systemd had started us. */
static void verify_child(const char *caps, bool keep_ipc_lock, int want, const char *want_msg,
                         const char *want_prm)
{
    pid_t pid = fork();

    T_CHECK(pid >= 0);
    if (pid == 0) {
        struct svc_caps_config cfg = { .mode = SVC_CAPS_AUTO, .keep_ipc_lock = keep_ipc_lock };
        struct svc_caps c;
        char got[64];
        cap_t set;
        int r;

        clear_manager_env();
        T_CHECK(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0);
        T_CHECK(setgroups(0, NULL) == 0 && setresgid(65534, 65534, 65534) == 0);
        T_CHECK(setresuid(65534, 65534, 65534) == 0);
        set = cap_from_text(caps);
        T_CHECK(set && cap_set_proc(set) == 0);
        cap_free(set);
        setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1);
        svc_log_set_sink(capture, NULL);
        T_CHECK(svc_caps_init(&c, &cfg) == 0);
        T_CHECK(c.mode == SVC_CAPS_VERIFY);
        r = svc_caps_apply(&c);
        T_CHECKF(r == want, "apply with \"%s\" returned %d", caps, r);
        if (want_msg)
            T_CHECKF(strstr(last_log, want_msg), "message lacks \"%s\": %s", want_msg, last_log);
        if (want_prm) {
            T_CHECK(svc_testlib_proc_status(getpid(), "CapPrm", got, sizeof(got)) == 0);
            T_CHECKF(!strcmp(got, want_prm), "CapPrm %s, expected %s", got, want_prm);
            T_CHECK(svc_testlib_proc_status(getpid(), "CapEff", got, sizeof(got)) == 0);
            T_CHECKF(!strcmp(got, "0000000000000000"), "CapEff %s", got);
            T_CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
        }
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == T_PASS);
}

/* Not root: VERIFY on a plain user (the desktop / user-unit case). */
static void test_verify_plain_user(void)
{
    pid_t pid = fork();

    T_CHECK(pid >= 0);
    if (pid == 0) {
        struct svc_caps c;
        char line[1024];

        clear_manager_env();
        if (geteuid() == 0) {
            /* become an ordinary user: without KEEPCAPS setresuid clears all caps */
            T_CHECK(setgroups(0, NULL) == 0 && setresgid(65534, 65534, 65534) == 0);
            T_CHECK(setresuid(65534, 65534, 65534) == 0);
        }
        T_CHECK(svc_caps_init(&c, NULL) == 0);
        T_CHECK(c.mode == SVC_CAPS_VERIFY);
        T_CHECK(svc_caps_apply(&c) == 0);
        T_CHECK(svc_caps_describe(line, sizeof(line)) == 0);
        printf("plain user: %s\n", line);
        T_CHECK(strstr(line, "no_new_privs=1") && strstr(line, "caps=\"=\""));
        _exit(T_PASS);
    }
    T_CHECK(svc_testlib_wait(pid) == T_PASS);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);   /* forked children _exit() */
    if (geteuid() != 0) {
        test_verify_plain_user();
        T_SKIP_BECAUSE("not root: the privilege drop and the capability checks need root (CI runs as root)");
    }
    {
        cap_t c = cap_get_proc();
        cap_flag_value_t v = CAP_CLEAR;

        cap_get_flag(c, CAP_SETPCAP, CAP_EFFECTIVE, &v);
        cap_free(c);
        if (v != CAP_SET)
            T_SKIP_BECAUSE("root without CAP_SETPCAP (a restricted container): securebits cannot be set");
    }
    test_drop(false);
    test_drop(true);
    test_drop_threads();
    test_verify_root();
    verify_child("cap_sys_admin,cap_ipc_lock=ep", false, -EPERM, "cap_sys_admin", NULL);
    verify_child("cap_dac_override,cap_setuid=ep", false, -EPERM, "CapabilityBoundingSet=", NULL);
    verify_child("cap_ipc_lock=ep", false, 0, NULL, "0000000000000000");
    verify_child("cap_ipc_lock=ep", true, 0, NULL, "0000000000004000");
    verify_child("=", false, 0, NULL, "0000000000000000");
    test_verify_plain_user();
    printf("caps: ok\n");
    return T_PASS;
}
