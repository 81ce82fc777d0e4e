/* SPDX-License-Identifier: Apache-2.0 */
/*
 * residentd: serve a model to local clients over a SEQPACKET control socket
 * and per-session shared-memory rings. Runs in the foreground, logs to
 * stderr. See docs/protocol.md.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/daemon.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: residentd [--model DIR] [--socket PATH] [--config FILE] [--generator NAME]\n"
        "                 [-o KEY=VALUE]...\n"
        "\n"
        "  --model DIR        model directory (loaded by the engine generator)\n"
        "  --socket PATH      control socket (default %s)\n"
        "  --config FILE      configuration file (default %s, optional)\n"
        "  --generator NAME   'null' = deterministic synthetic tokens, not a model\n"
        "  -o KEY=VALUE       override one configuration key\n"
        "\n"
        "configuration keys: socket socket_mode socket_group model generator allow_uids allow_gids\n"
        "  max_sessions max_sessions_per_uid max_inflight_per_uid max_prompt_tokens\n"
        "  max_new_tokens max_ring_bytes_per_uid max_fds_per_uid max_batch prefill_chunk\n"
        "  slow_client_ms handshake_ms shutdown_grace_ms\n",
        DAEMON_SOCKET_DEFAULT, DAEMON_CONFIG_DEFAULT_PATH);
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
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
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
    if (d.gen->synthetic && d.cfg.model[0])
        daemon_log("--model %s is ignored by the null generator", d.cfg.model);
    r = d.gen->create(d.cfg.model, &d.gen_ctx, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "residentd: generator %s: %s\n", d.gen->name, err);
        free(settings);
        free(ov);
        return 1;
    }
    if (d.gen->synthetic)
        daemon_log("generator: null (deterministic synthetic tokens, vocabulary %u; NOT a model)",
                   d.gen->vocab_size(d.gen_ctx));
    else
        daemon_log("generator: %s, model %s", d.gen->name, d.cfg.model);

    d.listen_fd = -1;
    d.signal_fd = -1;
    r = daemon_run(&d, err, sizeof(err));
    d.gen->destroy(d.gen_ctx);
    free(settings);
    free(ov);
    if (r < 0) {
        fprintf(stderr, "residentd: %s\n", err);
        return 1;
    }
    daemon_log("stopped after %llu compute steps", (unsigned long long)d.steps);
    return 0;
}
