/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd configuration: defaults, /etc/resident/residentd.conf
 * (simple `key = value` lines, `#` comments) and command-line overrides
 * (`-o key=value`, plus the dedicated --socket/--model/--generator flags).
 * Later settings win: defaults < config file < command line. SIGHUP
 * rebuilds the whole stack and applies what can change live
 * (daemon_config_apply_live()).
 *
 * Keys, defaults and meaning (also in docs/protocol.md, "Policy"):
 *   socket                   /run/resident/resident.sock
 *   socket_mode              0660   (octal) permission bits of the socket
 *   socket_group             ""     group owning the socket (name or gid); "" = ours
 *   model                    ""     model directory (the engine loads it)
 *   generator                null   "null" = synthetic deterministic output
 *   allow_uids               "0"    comma list; the daemon's own uid is always allowed
 *   allow_gids               ""     comma list of group names or gids; the peer's
 *                                   primary or any supplementary group (SO_PEERGROUPS)
 *   allow_groups                    synonym of allow_gids (names resolved at load)
 *   max_sessions             256    all users together
 *   max_sessions_per_uid     32
 *   max_inflight_per_uid     64     requests queued or running
 *   max_prompt_tokens        32768  per request
 *   max_new_tokens           4096   per request (also the default max_tokens)
 *   max_prompt_tokens_per_uid 131072 prompt tokens of all of a uid's requests in flight
 *   max_new_tokens_per_uid   262144 max_tokens reserved by all of a uid's requests in flight
 *                                   (daemon/quota.c explains the accounting)
 *   max_ring_bytes_per_uid   67108864  rings + data areas of all of a uid's sessions
 *   max_fds_per_uid          128    daemon-side fds held for a uid (4 per session)
 *   max_batch                64     sequences per compute step
 *   prefill_chunk            512    prompt tokens per compute step (all sequences)
 *   slow_client_ms           10000  event ring full this long => cancel + disconnect
 *   handshake_ms             5000   connect -> HELLO deadline
 *   shutdown_grace_ms        2000   SIGTERM: in-flight work may finish this long
 *   status_interval_sec      5      STATUS= refresh while serving (sessions, tok/s,
 *                                   VmLck, prefix cache); 0 = only at READY/reload
 *
 * Compute (engine generator; restart to change):
 *   backend                  auto   auto: a usable GPU (cuda, then hip, where built and a
 *                                   driver, a device and the code objects are present),
 *                                   else the fast CPU backend, logging why;
 *                                   cpu: the fast CPU backend (AVX-512 VNNI, AVX2 +
 *                                   AVX-VNNI or AVX2 kernels by CPUID, the reference
 *                                   kernels elsewhere; RESIDENT_CPU_ISA forces one);
 *                                   cpu-ref: the scalar oracle; cuda / hip: that GPU or
 *                                   refuse to start (engine/backend-open.h, docs/gpu.md)
 *   kernel_dir               (installed) the GPU code objects NAME.sm_90.cubin /
 *                                   NAME.gfx1151.hsaco; default PREFIX/LIBDIR/resident/gpu
 *                                   where meson installs them
 *   gpu_device               0      GPU ordinal for cuda / hip / auto
 *   threads                  0      compute threads; 0 = the CPUs in residentd's
 *                                   affinity mask (sched_getaffinity) at start
 *
 * Prefix cache (engine generator; restart to change; docs/prefix-cache.md):
 *   prefix_cache             on     on / off: reuse prompt prefixes across a uid's requests
 *   prefix_cache_bytes       0      host memory budget; 0 = min(25% of MemAvailable, 8 GiB)
 *
 * Service keys (docs/service.md; all need a restart to change):
 *   privileges               auto   auto: verify under a service manager or as
 *                                   non-root, drop to `user` when started by hand
 *                                   as root; keep: no change (tests, development);
 *                                   drop / verify: force that mode (svc-caps.h)
 *   user                     residentd  by-hand root start: the user to drop to
 *   supplementary_groups     render comma list of group names kept after the drop
 *   keep_cap_ipc_lock        no     keep CAP_IPC_LOCK permitted (not effective)
 *   memlock                  lock   lock | onfault | off: lock the weight mappings
 *                                   before READY=1 (--no-lock = off)
 *   fd_store                 auto   auto | yes | no: keep the weights in a sealed
 *                                   memfd in systemd's fd store (auto: when
 *                                   NOTIFY_SOCKET is set) and reuse it on restart;
 *                                   the engine loads from it, no second copy
 *
 * Errors: 0 or -EINVAL; the message buffer names the key, the file and line
 * and the accepted range.
 */
#ifndef RESIDENT_DAEMON_CONFIG_H
#define RESIDENT_DAEMON_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DAEMON_CONFIG_DEFAULT_PATH "/etc/resident/residentd.conf"
#define DAEMON_SOCKET_DEFAULT      "/run/resident/resident.sock"
#define DAEMON_ALLOW_MAX           64

enum daemon_privileges {
    DAEMON_PRIV_KEEP = 0,
    DAEMON_PRIV_AUTO,
    DAEMON_PRIV_DROP,
    DAEMON_PRIV_VERIFY,
};

enum daemon_memlock {
    DAEMON_MEMLOCK_LOCK = 0,
    DAEMON_MEMLOCK_ONFAULT,
    DAEMON_MEMLOCK_OFF,
};

enum daemon_fd_store {
    DAEMON_FD_STORE_AUTO = 0,
    DAEMON_FD_STORE_YES,
    DAEMON_FD_STORE_NO,
};

struct daemon_config {
    char     socket[108];
    uint32_t socket_mode;
    char     socket_group[64];
    char     model[4096];
    char     generator[32];
    uid_t    allow_uids[DAEMON_ALLOW_MAX];
    size_t   n_allow_uids;
    gid_t    allow_gids[DAEMON_ALLOW_MAX];
    size_t   n_allow_gids;
    uint32_t max_sessions;
    uint32_t max_sessions_per_uid;
    uint32_t max_inflight_per_uid;
    uint32_t max_prompt_tokens;
    uint32_t max_new_tokens;
    uint32_t max_prompt_tokens_per_uid;
    uint32_t max_new_tokens_per_uid;
    uint64_t max_ring_bytes_per_uid;
    uint32_t max_fds_per_uid;
    uint32_t max_batch;
    uint32_t prefill_chunk;
    uint32_t slow_client_ms;
    uint32_t handshake_ms;
    uint32_t shutdown_grace_ms;
    uint32_t status_interval_sec;
    /* service (restart-only) */
    enum daemon_privileges privileges;
    char     user[64];
    char     supplementary_groups[256];
    int      keep_cap_ipc_lock;
    enum daemon_memlock memlock;
    enum daemon_fd_store fd_store;
    /* compute (restart-only) */
    char     backend[16];
    char     kernel_dir[512];
    uint32_t gpu_device;
    uint32_t threads;
    /* prefix cache (restart-only) */
    uint32_t prefix_cache;
    uint64_t prefix_cache_bytes;
};

/* One command-line override, applied after the config file (and again on
 * every reload). */
struct daemon_setting {
    const char *key;
    const char *value;
};

/* How the configuration was assembled, so SIGHUP can do it again. */
struct daemon_config_source {
    const char                  *path;          /* config file */
    int                          must_exist;    /* given with --config */
    const struct daemon_setting *overrides;
    size_t                       n_overrides;
};

/**
 * daemon_config_build() - defaults, then the file, then the overrides
 * @c: result (untouched on failure)
 * @src: where the settings come from
 * @err: message naming file:line or the override
 * @errlen: its size
 *
 * Return: 0 or -errno.
 */
int daemon_config_build(struct daemon_config *c, const struct daemon_config_source *src, char *err, size_t errlen);

/**
 * daemon_config_apply_live() - take over the settings a running daemon can change
 * @cur: running configuration
 * @next: freshly built one
 * @restart_keys: receives a space-separated list of changed keys that only
 *                take effect after a restart ("" if none)
 * @len: its size
 *
 * Live: allow_uids, allow_gids, every max_* limit except max_batch,
 * prefill_chunk, slow_client_ms, handshake_ms, shutdown_grace_ms,
 * status_interval_sec. Sessions
 * keep what they were granted; new requests and sessions see new limits.
 */
void daemon_config_apply_live(struct daemon_config *cur, const struct daemon_config *next,
                              char *restart_keys, size_t len);

/**
 * daemon_config_defaults() - fill @c with the documented defaults
 */
void daemon_config_defaults(struct daemon_config *c);

/**
 * daemon_config_set() - apply one `key = value` setting
 * @c: configuration
 * @key: key name
 * @value: value text
 * @err: message buffer
 * @errlen: its size
 *
 * Return: 0 or -EINVAL (unknown key or bad value, message in @err).
 */
int daemon_config_set(struct daemon_config *c, const char *key, const char *value, char *err, size_t errlen);

/**
 * daemon_config_load() - apply a config file
 * @c: configuration
 * @path: file
 * @must_exist: false: a missing file is not an error (the default path)
 * @err: message buffer naming file:line
 * @errlen: its size
 *
 * Return: 0, -ENOENT (only with @must_exist), -EINVAL on a bad line.
 */
int daemon_config_load(struct daemon_config *c, const char *path, int must_exist, char *err, size_t errlen);

#endif
