/* SPDX-License-Identifier: Apache-2.0 */
/* residentd configuration parsing (see daemon/config.h for the keys). */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"

void daemon_config_defaults(struct daemon_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->socket, sizeof(c->socket), "%s", DAEMON_SOCKET_DEFAULT);
    c->socket_mode = 0660;
    snprintf(c->generator, sizeof(c->generator), "null");
    c->allow_uids[0] = 0;
    c->n_allow_uids = 1;
    c->max_sessions = 256;
    c->max_sessions_per_uid = 32;
    c->max_inflight_per_uid = 64;
    c->max_prompt_tokens = 32768;
    c->max_new_tokens = 4096;
    c->max_prompt_tokens_per_uid = 131072;
    c->max_new_tokens_per_uid = 262144;
    c->max_ring_bytes_per_uid = 64ull << 20;
    c->max_fds_per_uid = 128;
    c->max_batch = 64;
    c->prefill_chunk = 512;
    c->slow_client_ms = 10000;
    c->handshake_ms = 5000;
    c->shutdown_grace_ms = 2000;
    c->status_interval_sec = 5;
    c->privileges = DAEMON_PRIV_AUTO;
    snprintf(c->user, sizeof(c->user), "residentd");
    snprintf(c->supplementary_groups, sizeof(c->supplementary_groups), "render");
    c->keep_cap_ipc_lock = 0;
    c->memlock = DAEMON_MEMLOCK_LOCK;
    c->fd_store = DAEMON_FD_STORE_AUTO;
    c->prefix_cache = 1;
    c->prefix_cache_bytes = 0;
    snprintf(c->backend, sizeof(c->backend), "auto");
    snprintf(c->kernel_dir, sizeof(c->kernel_dir), "%s", RESIDENT_GPU_KERNEL_DIR);
    c->gpu_device = 0;
    c->threads = 0;
}

static int parse_u64(const char *v, uint64_t lo, uint64_t hi, int base, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!*v || *v == '-')
        return -EINVAL;
    unsigned long long x = strtoull(v, &end, base);
    if (errno || *end || x < lo || x > hi)
        return -EINVAL;
    *out = x;
    return 0;
}

static int parse_id_list(const char *v, uint32_t *ids, size_t *n)
{
    char buf[1024];
    size_t k = 0;
    if (strlen(v) >= sizeof(buf))
        return -EINVAL;
    snprintf(buf, sizeof(buf), "%s", v);
    for (char *save = NULL, *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        uint64_t x;
        if (k == DAEMON_ALLOW_MAX || parse_u64(t, 0, UINT32_MAX - 1, 10, &x) < 0)
            return -EINVAL;
        ids[k++] = (uint32_t)x;
    }
    *n = k;
    return 0;
}

/* Group names or numeric gids. sysusers picks the gid of "resident" per
 * machine, so the shipped configuration names the group. */
static int parse_group_list(const char *v, gid_t *ids, size_t *n, char *bad, size_t badlen)
{
    char buf[1024];
    size_t k = 0;
    bad[0] = '\0';
    if (strlen(v) >= sizeof(buf))
        return -EINVAL;
    snprintf(buf, sizeof(buf), "%s", v);
    for (char *save = NULL, *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        uint64_t x;
        if (k == DAEMON_ALLOW_MAX)
            return -E2BIG;
        if (parse_u64(t, 0, UINT32_MAX - 1, 10, &x) == 0) {
            ids[k++] = (gid_t)x;
            continue;
        }
        struct group gr, *res = NULL;
        char grbuf[16384];
        if (getgrnam_r(t, &gr, grbuf, sizeof(grbuf), &res) != 0 || !res) {
            snprintf(bad, badlen, "%s", t);
            return -ENOENT;
        }
        ids[k++] = res->gr_gid;
    }
    *n = k;
    return 0;
}

struct word {
    const char *name;
    int         value;
};

static int parse_word(const char *v, const struct word *words, int *out)
{
    for (; words->name; words++)
        if (strcmp(v, words->name) == 0) {
            *out = words->value;
            return 0;
        }
    return -EINVAL;
}

static const struct word privilege_words[] = {
    { "keep", DAEMON_PRIV_KEEP }, { "auto", DAEMON_PRIV_AUTO },
    { "drop", DAEMON_PRIV_DROP }, { "verify", DAEMON_PRIV_VERIFY }, { NULL, 0 },
};
static const struct word memlock_words[] = {
    { "lock", DAEMON_MEMLOCK_LOCK }, { "on", DAEMON_MEMLOCK_LOCK },
    { "onfault", DAEMON_MEMLOCK_ONFAULT }, { "off", DAEMON_MEMLOCK_OFF }, { NULL, 0 },
};
static const struct word fd_store_words[] = {
    { "auto", DAEMON_FD_STORE_AUTO }, { "yes", DAEMON_FD_STORE_YES }, { "no", DAEMON_FD_STORE_NO },
    { NULL, 0 },
};
static const struct word bool_words[] = {
    { "yes", 1 }, { "true", 1 }, { "on", 1 }, { "1", 1 },
    { "no", 0 }, { "false", 0 }, { "off", 0 }, { "0", 0 }, { NULL, 0 },
};

struct u32_key {
    const char *name;
    size_t      off;
    uint64_t    lo, hi;
};

#define K(f, lo, hi) { #f, offsetof(struct daemon_config, f), lo, hi }
static const struct u32_key u32_keys[] = {
    K(max_sessions, 1, 65536),
    K(max_sessions_per_uid, 1, 65536),
    K(max_inflight_per_uid, 1, 1u << 20),
    K(max_prompt_tokens, 1, 1u << 24),
    K(max_new_tokens, 1, 1u << 24),
    K(max_prompt_tokens_per_uid, 1, 1u << 30),
    K(max_new_tokens_per_uid, 1, 1u << 30),
    K(max_fds_per_uid, 4, 1u << 20),
    K(max_batch, 1, 4096),
    K(prefill_chunk, 1, 1u << 20),
    K(slow_client_ms, 1, 3600000),
    K(handshake_ms, 1, 3600000),
    K(shutdown_grace_ms, 0, 3600000),
    K(status_interval_sec, 0, 86400),
    K(threads, 0, 256),
    K(gpu_device, 0, 255),
};
#undef K

int daemon_config_set(struct daemon_config *c, const char *key, const char *value, char *err, size_t errlen)
{
    uint64_t x;
    for (size_t i = 0; i < sizeof(u32_keys) / sizeof(u32_keys[0]); i++) {
        const struct u32_key *k = &u32_keys[i];
        if (strcmp(key, k->name) != 0)
            continue;
        if (parse_u64(value, k->lo, k->hi, 10, &x) < 0) {
            snprintf(err, errlen, "%s = '%s': expected an integer in %llu..%llu", key, value,
                     (unsigned long long)k->lo, (unsigned long long)k->hi);
            return -EINVAL;
        }
        *(uint32_t *)(void *)((char *)c + k->off) = (uint32_t)x;
        return 0;
    }
    if (strcmp(key, "max_ring_bytes_per_uid") == 0) {
        if (parse_u64(value, 16384, 1ull << 40, 10, &x) < 0) {
            snprintf(err, errlen, "%s = '%s': expected bytes in 16384..2^40", key, value);
            return -EINVAL;
        }
        c->max_ring_bytes_per_uid = x;
        return 0;
    }
    if (strcmp(key, "prefix_cache_bytes") == 0) {
        if (parse_u64(value, 0, 1ull << 50, 10, &x) < 0) {
            snprintf(err, errlen, "%s = '%s': expected bytes in 0..2^50 (0 = the cache's default, "
                     "min(25%% of MemAvailable, 8 GiB))", key, value);
            return -EINVAL;
        }
        c->prefix_cache_bytes = x;
        return 0;
    }
    if (strcmp(key, "prefix_cache") == 0) {
        int v;
        if (parse_word(value, bool_words, &v) < 0) {
            snprintf(err, errlen, "%s = '%s': expected on or off", key, value);
            return -EINVAL;
        }
        c->prefix_cache = (uint32_t)v;
        return 0;
    }
    if (strcmp(key, "backend") == 0) {
        if (strcmp(value, "auto") != 0 && strcmp(value, "cpu") != 0 && strcmp(value, "cpu-ref") != 0 &&
            strcmp(value, "cuda") != 0 && strcmp(value, "hip") != 0) {
            snprintf(err, errlen, "%s = '%s': expected auto, cpu, cpu-ref, cuda or hip", key, value);
            return -EINVAL;
        }
        snprintf(c->backend, sizeof(c->backend), "%s", value);
        return 0;
    }
    if (strcmp(key, "kernel_dir") == 0) {
        /* whether the folder holds the right code objects is checked when
         * the backend opens, where the message can name the GPU */
        if (value[0] != '/' || strlen(value) >= sizeof(c->kernel_dir)) {
            snprintf(err, errlen, "%s = '%s': expected an absolute path of at most %zu bytes", key, value,
                     sizeof(c->kernel_dir) - 1);
            return -EINVAL;
        }
        snprintf(c->kernel_dir, sizeof(c->kernel_dir), "%s", value);
        return 0;
    }
    if (strcmp(key, "socket_mode") == 0) {
        if (parse_u64(value, 0, 0777, 8, &x) < 0) {
            snprintf(err, errlen, "%s = '%s': expected octal permission bits like 0660", key, value);
            return -EINVAL;
        }
        c->socket_mode = (uint32_t)x;
        return 0;
    }
    if (strcmp(key, "socket_group") == 0) {
        if (strlen(value) >= sizeof(c->socket_group)) {
            snprintf(err, errlen, "%s = '%s': group names are at most %zu bytes", key, value,
                     sizeof(c->socket_group) - 1);
            return -EINVAL;
        }
        snprintf(c->socket_group, sizeof(c->socket_group), "%s", value);
        return 0;
    }
    if (strcmp(key, "socket") == 0 || strcmp(key, "model") == 0 || strcmp(key, "generator") == 0) {
        char *dst = key[0] == 's' ? c->socket : key[0] == 'm' ? c->model : c->generator;
        size_t cap = key[0] == 's' ? sizeof(c->socket) : key[0] == 'm' ? sizeof(c->model) : sizeof(c->generator);
        if (strlen(value) >= cap || (key[0] == 's' && value[0] == '\0')) {
            snprintf(err, errlen, "%s = '%s': must be 1..%zu bytes", key, value, cap - 1);
            return -EINVAL;
        }
        snprintf(dst, cap, "%s", value);
        return 0;
    }
    if (strcmp(key, "allow_uids") == 0) {
        if (parse_id_list(value, c->allow_uids, &c->n_allow_uids) < 0) {
            snprintf(err, errlen, "%s = '%s': expected up to %d comma-separated numeric ids", key, value,
                     DAEMON_ALLOW_MAX);
            return -EINVAL;
        }
        return 0;
    }
    if (strcmp(key, "allow_gids") == 0 || strcmp(key, "allow_groups") == 0) {
        char bad[256];
        int r = parse_group_list(value, c->allow_gids, &c->n_allow_gids, bad, sizeof(bad));
        if (r == -ENOENT)
            snprintf(err, errlen, "%s = '%s': group '%s' does not exist on this host (create it, e.g. "
                     "with systemd-sysusers, or give a numeric gid)", key, value, bad);
        else if (r < 0)
            snprintf(err, errlen, "%s = '%s': expected up to %d comma-separated group names or gids",
                     key, value, DAEMON_ALLOW_MAX);
        return r < 0 ? -EINVAL : 0;
    }
    if (strcmp(key, "privileges") == 0 || strcmp(key, "memlock") == 0 || strcmp(key, "fd_store") == 0 ||
        strcmp(key, "keep_cap_ipc_lock") == 0) {
        const struct word *w = key[0] == 'p' ? privilege_words : key[0] == 'm' ? memlock_words
                             : key[0] == 'f' ? fd_store_words : bool_words;
        const char *accepted = key[0] == 'p' ? "keep, auto, drop or verify"
                             : key[0] == 'm' ? "lock, onfault or off"
                             : key[0] == 'f' ? "auto, yes or no" : "yes or no";
        int v;
        if (parse_word(value, w, &v) < 0) {
            snprintf(err, errlen, "%s = '%s': expected %s", key, value, accepted);
            return -EINVAL;
        }
        if (key[0] == 'p')
            c->privileges = (enum daemon_privileges)v;
        else if (key[0] == 'm')
            c->memlock = (enum daemon_memlock)v;
        else if (key[0] == 'f')
            c->fd_store = (enum daemon_fd_store)v;
        else
            c->keep_cap_ipc_lock = v;
        return 0;
    }
    if (strcmp(key, "user") == 0 || strcmp(key, "supplementary_groups") == 0) {
        char *dst = key[0] == 'u' ? c->user : c->supplementary_groups;
        size_t cap = key[0] == 'u' ? sizeof(c->user) : sizeof(c->supplementary_groups);
        if (strlen(value) >= cap || (key[0] == 'u' && value[0] == '\0')) {
            snprintf(err, errlen, "%s = '%s': must be %s..%zu bytes", key, value, key[0] == 'u' ? "1" : "0",
                     cap - 1);
            return -EINVAL;
        }
        snprintf(dst, cap, "%s", value);
        return 0;
    }
    snprintf(err, errlen, "unknown key '%s' (see residentd --help for the list)", key);
    return -EINVAL;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

int daemon_config_load(struct daemon_config *c, const char *path, int must_exist, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT && !must_exist)
            return 0;
        int e = errno;
        snprintf(err, errlen, "cannot open config %s: %s", path, strerror(e));
        return -e;
    }
    char line[4608];
    unsigned lineno = 0;
    int ret = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%u: expected 'key = value'", path, lineno);
            ret = -EINVAL;
            break;
        }
        *eq = '\0';
        char msg[512];
        if (daemon_config_set(c, trim(s), trim(eq + 1), msg, sizeof(msg)) < 0) {
            snprintf(err, errlen, "%s:%u: %s", path, lineno, msg);
            ret = -EINVAL;
            break;
        }
    }
    fclose(f);
    return ret;
}

int daemon_config_build(struct daemon_config *c, const struct daemon_config_source *src, char *err, size_t errlen)
{
    struct daemon_config *n = malloc(sizeof(*n));
    if (!n) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    daemon_config_defaults(n);
    int r = daemon_config_load(n, src->path, src->must_exist, err, errlen);
    for (size_t i = 0; r == 0 && i < src->n_overrides; i++) {
        char msg[900];
        r = daemon_config_set(n, src->overrides[i].key, src->overrides[i].value, msg, sizeof(msg));
        if (r < 0)
            snprintf(err, errlen, "command line: %s", msg);
    }
    if (r == 0)
        *c = *n;
    free(n);
    return r;
}

static void note_restart(char *buf, size_t len, const char *key)
{
    size_t used = strlen(buf);
    snprintf(buf + used, len - used, "%s%s", used ? " " : "", key);
}

void daemon_config_apply_live(struct daemon_config *cur, const struct daemon_config *next,
                              char *restart_keys, size_t len)
{
    restart_keys[0] = '\0';
    if (strcmp(cur->socket, next->socket) != 0)
        note_restart(restart_keys, len, "socket");
    if (cur->socket_mode != next->socket_mode)
        note_restart(restart_keys, len, "socket_mode");
    if (strcmp(cur->socket_group, next->socket_group) != 0)
        note_restart(restart_keys, len, "socket_group");
    if (strcmp(cur->model, next->model) != 0)
        note_restart(restart_keys, len, "model");
    if (strcmp(cur->generator, next->generator) != 0)
        note_restart(restart_keys, len, "generator");
    if (cur->max_batch != next->max_batch)
        note_restart(restart_keys, len, "max_batch");
    if (cur->privileges != next->privileges)
        note_restart(restart_keys, len, "privileges");
    if (strcmp(cur->user, next->user) != 0)
        note_restart(restart_keys, len, "user");
    if (strcmp(cur->supplementary_groups, next->supplementary_groups) != 0)
        note_restart(restart_keys, len, "supplementary_groups");
    if (cur->keep_cap_ipc_lock != next->keep_cap_ipc_lock)
        note_restart(restart_keys, len, "keep_cap_ipc_lock");
    if (cur->memlock != next->memlock)
        note_restart(restart_keys, len, "memlock");
    if (cur->fd_store != next->fd_store)
        note_restart(restart_keys, len, "fd_store");
    if (cur->prefix_cache != next->prefix_cache)
        note_restart(restart_keys, len, "prefix_cache");
    if (cur->prefix_cache_bytes != next->prefix_cache_bytes)
        note_restart(restart_keys, len, "prefix_cache_bytes");
    if (strcmp(cur->backend, next->backend) != 0)
        note_restart(restart_keys, len, "backend");
    if (cur->threads != next->threads)
        note_restart(restart_keys, len, "threads");
    if (strcmp(cur->kernel_dir, next->kernel_dir) != 0)
        note_restart(restart_keys, len, "kernel_dir");
    if (cur->gpu_device != next->gpu_device)
        note_restart(restart_keys, len, "gpu_device");
    memcpy(cur->allow_uids, next->allow_uids, sizeof(cur->allow_uids));
    cur->n_allow_uids = next->n_allow_uids;
    memcpy(cur->allow_gids, next->allow_gids, sizeof(cur->allow_gids));
    cur->n_allow_gids = next->n_allow_gids;
    cur->max_sessions = next->max_sessions;
    cur->max_sessions_per_uid = next->max_sessions_per_uid;
    cur->max_inflight_per_uid = next->max_inflight_per_uid;
    cur->max_prompt_tokens = next->max_prompt_tokens;
    cur->max_new_tokens = next->max_new_tokens;
    cur->max_prompt_tokens_per_uid = next->max_prompt_tokens_per_uid;
    cur->max_new_tokens_per_uid = next->max_new_tokens_per_uid;
    cur->max_ring_bytes_per_uid = next->max_ring_bytes_per_uid;
    cur->max_fds_per_uid = next->max_fds_per_uid;
    cur->prefill_chunk = next->prefill_chunk;
    cur->slow_client_ms = next->slow_client_ms;
    cur->handshake_ms = next->handshake_ms;
    cur->shutdown_grace_ms = next->shutdown_grace_ms;
    cur->status_interval_sec = next->status_interval_sec;
}
