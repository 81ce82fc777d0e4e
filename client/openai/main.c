/* SPDX-License-Identifier: Apache-2.0 */
/*
 * resident-openai: an OpenAI-compatible HTTP gateway in front of residentd.
 *
 * An unprivileged libresident client. Listens on loopback TCP (default
 * 127.0.0.1:8000) and/or a Unix socket, or on the sockets systemd passes
 * (LISTEN_FDS). See docs/openai.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "client/openai/gateway.h"

#define LISTEN_MAX 8
#define API_KEY_MAX 4096

static void usage(FILE *f)
{
    fprintf(f,
        "usage: resident-openai [--socket DAEMON_SOCKET] [--listen HOST:PORT | --listen unix:PATH]...\n"
        "                       [--api-key-file FILE] [--model-name NAME] [--generation-config FILE]\n"
        "                       [--max-concurrent N] [--max-body-bytes N]\n"
        "\n"
        "  --socket PATH            residentd's socket (default $RESIDENT_SOCKET or " RESIDENT_SOCKET_DEFAULT ")\n"
        "  --listen HOST:PORT       loopback TCP listener (default 127.0.0.1:8000; port 0 = any free port)\n"
        "  --listen unix:PATH       Unix-socket listener (access = file permissions, no API key)\n"
        "  --api-key-file FILE      require 'Authorization: Bearer <key>' on TCP for /v1/* (key = the file's first line)\n"
        "  --model-name NAME        the model id clients name (default Qwen/Qwen3.6-35B-A3B)\n"
        "  --served-model-name NAME same as --model-name (vLLM's spelling)\n"
        "  --generation-config FILE sampling defaults for unset fields (the model's generation_config.json)\n"
        "  --max-concurrent N       generations in flight before 429 (default 16)\n"
        "  --max-body-bytes N       largest request body before 413 (default 1048576)\n"
        "\n"
        "Without --listen, sockets passed by systemd (LISTEN_FDS) are used when present.\n");
}

static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
    }
    return 0;
}

static void print_bound(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    char host[INET6_ADDRSTRLEN] = "";
    unsigned port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        printf("resident-openai: listening on http://%s:%u\n", host, port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        printf("resident-openai: listening on http://[%s]:%u\n", host, port);
    } else if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        printf("resident-openai: listening on unix:%s\n", un->sun_path);
    }
    fflush(stdout);
}

static int listen_unix(const char *path)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(un.sun_path)) {
        fprintf(stderr, "resident-openai: unix socket path too long: %s\n", path);
        return -ENAMETOOLONG;
    }
    strcpy(un.sun_path, path);
    /* Replace a stale socket of a previous run, never another kind of file. */
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            fprintf(stderr, "resident-openai: %s exists and is not a socket\n", path);
            return -EEXIST;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&un, sizeof(un)) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        fprintf(stderr, "resident-openai: cannot listen on unix:%s: %s\n", path, strerror(e));
        close(fd);
        return -e;
    }
    return fd;
}

static int listen_tcp(const char *spec)
{
    char host[256];
    const char *colon;
    const char *port;
    if (spec[0] == '[') {
        const char *close_br = strchr(spec, ']');
        if (!close_br || close_br[1] != ':' || (size_t)(close_br - spec - 1) >= sizeof(host))
            goto bad;
        memcpy(host, spec + 1, (size_t)(close_br - spec - 1));
        host[close_br - spec - 1] = 0;
        port = close_br + 2;
    } else {
        colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof(host))
            goto bad;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = 0;
        port = colon + 1;
    }
    if (!*host || !*port)
        goto bad;
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
    struct addrinfo *res;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0) {
        fprintf(stderr, "resident-openai: --listen %s: %s\n", spec, gai_strerror(g));
        return -EINVAL;
    }
    int fd = -EADDRNOTAVAIL;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if (!is_loopback(a->ai_addr)) {
            fprintf(stderr, "resident-openai: --listen %s: not a loopback address; resident-openai serves "
                            "this machine only\n", spec);
            fd = -EPERM;
            break;
        }
        int s = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (s < 0)
            continue;
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, a->ai_addr, a->ai_addrlen) == 0 && listen(s, 128) == 0) {
            fd = s;
            break;
        }
        fprintf(stderr, "resident-openai: --listen %s: %s\n", spec, strerror(errno));
        close(s);
    }
    freeaddrinfo(res);
    return fd;
bad:
    fprintf(stderr, "resident-openai: --listen wants HOST:PORT, [V6]:PORT or unix:PATH, got '%s'\n", spec);
    return -EINVAL;
}

static int read_api_key(const char *path, struct oai_gateway *gw)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "resident-openai: --api-key-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & S_IROTH))
        fprintf(stderr, "resident-openai: warning: %s is readable by every user\n", path);
    char buf[API_KEY_MAX + 2];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        fprintf(stderr, "resident-openai: --api-key-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    buf[n] = 0;
    size_t len = strcspn(buf, "\r\n");
    while (len && (buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        len--;
    if (len == 0 || len > API_KEY_MAX) {
        fprintf(stderr, "resident-openai: --api-key-file %s: the first line must hold a key of 1-%d bytes\n", path,
                API_KEY_MAX);
        return -1;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] <= ' ' || (unsigned char)buf[i] >= 0x7f) {
            fprintf(stderr, "resident-openai: --api-key-file %s: the key must be printable ASCII without spaces\n",
                    path);
            return -1;
        }
    gw->api_key = strndup(buf, len);
    gw->api_key_len = len;
    return gw->api_key ? 0 : -1;
}

static int parse_uint(const char *s, unsigned long long lo, unsigned long long hi, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static struct oai_gateway gw;
    const char *listens[LISTEN_MAX];
    int n_listen = 0;
    const char *key_file = NULL, *genconf = NULL;
    snprintf(gw.model_name, sizeof(gw.model_name), "Qwen/Qwen3.6-35B-A3B");
    gw.max_concurrent = 16;
    gw.max_body = 1u << 20;
    pthread_mutex_init(&gw.lock, NULL);
    enum { O_SOCKET = 1, O_LISTEN, O_KEY, O_MODEL, O_GENCONF, O_CONC, O_BODY, O_HELP };
    static const struct option opts[] = {
        { "socket", required_argument, NULL, O_SOCKET },
        { "listen", required_argument, NULL, O_LISTEN },
        { "api-key-file", required_argument, NULL, O_KEY },
        { "model-name", required_argument, NULL, O_MODEL },
        { "served-model-name", required_argument, NULL, O_MODEL },
        { "generation-config", required_argument, NULL, O_GENCONF },
        { "max-concurrent", required_argument, NULL, O_CONC },
        { "max-body-bytes", required_argument, NULL, O_BODY },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    int c;
    unsigned long long v;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_SOCKET:
            gw.daemon_socket = optarg;
            break;
        case O_LISTEN:
            if (n_listen == LISTEN_MAX) {
                fprintf(stderr, "resident-openai: at most %d --listen\n", LISTEN_MAX);
                return 2;
            }
            listens[n_listen++] = optarg;
            break;
        case O_KEY:
            key_file = optarg;
            break;
        case O_MODEL:
            if (!*optarg || strlen(optarg) >= sizeof(gw.model_name)) {
                fprintf(stderr, "resident-openai: --model-name must be 1-255 bytes\n");
                return 2;
            }
            snprintf(gw.model_name, sizeof(gw.model_name), "%s", optarg);
            break;
        case O_GENCONF:
            genconf = optarg;
            break;
        case O_CONC:
            if (parse_uint(optarg, 1, 1024, &v) < 0) {
                fprintf(stderr, "resident-openai: --max-concurrent must be 1-1024\n");
                return 2;
            }
            gw.max_concurrent = (unsigned)v;
            break;
        case O_BODY:
            if (parse_uint(optarg, 1024, 64u << 20, &v) < 0) {
                fprintf(stderr, "resident-openai: --max-body-bytes must be 1024-67108864\n");
                return 2;
            }
            gw.max_body = (size_t)v;
            break;
        case O_HELP:
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    /* The forwarded chat JSON can outgrow the body (json-c escapes control
     * characters as \u00XX): twice the body, rounded to 64 KiB. */
    size_t data = (gw.max_body * 2 + 65535) & ~(size_t)65535;
    gw.data_bytes = (uint32_t)(data < (1u << 20) ? (1u << 20) : data);
    if (key_file && read_api_key(key_file, &gw) < 0)
        return 1;
    if (genconf) {
        char why[512];
        if (oai_defaults_load(genconf, &gw.defaults, why, sizeof(why)) < 0) {
            fprintf(stderr, "resident-openai: --generation-config %s\n", why);
            return 1;
        }
        gw.has_defaults = true;
    }
    gw.started = (long long)time(NULL);
    oai_metrics_init();

    /* Threads created from here on inherit the mask: only sigwait() below
     * sees SIGTERM/SIGINT; SIGPIPE is off (a client can vanish mid-write). */
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    struct oai_listener ls[LISTEN_MAX];
    int fds[LISTEN_MAX];
    int n = 0;
    int activated = sd_listen_fds(1);
    if (activated < 0) {
        fprintf(stderr, "resident-openai: LISTEN_FDS: %s\n", strerror(-activated));
        return 1;
    }
    if (n_listen && activated > 0) {
        fprintf(stderr, "resident-openai: --listen and socket activation are exclusive\n");
        return 2;
    }
    if (activated > LISTEN_MAX) {
        fprintf(stderr, "resident-openai: systemd passed %d sockets; at most %d\n", activated, LISTEN_MAX);
        return 1;
    }
    for (int i = 0; i < activated; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
            fprintf(stderr, "resident-openai: passed fd %d is not a listening stream socket\n", fd);
            return 1;
        }
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
            return 1;
        if (ss.ss_family != AF_UNIX && !is_loopback((struct sockaddr *)&ss)) {
            fprintf(stderr, "resident-openai: passed fd %d is not on loopback; refusing it\n", fd);
            return 1;
        }
        fds[n] = fd;
        ls[n] = (struct oai_listener){ .gw = &gw, .need_auth = ss.ss_family != AF_UNIX };
        n++;
    }
    if (!activated) {
        if (!n_listen)
            listens[n_listen++] = "127.0.0.1:8000";
        for (int i = 0; i < n_listen; i++) {
            bool unix_sock = strncmp(listens[i], "unix:", 5) == 0;
            int fd = unix_sock ? listen_unix(listens[i] + 5) : listen_tcp(listens[i]);
            if (fd < 0)
                return 1;
            fds[n] = fd;
            ls[n] = (struct oai_listener){ .gw = &gw, .need_auth = !unix_sock };
            n++;
        }
    }
    for (int i = 0; i < n; i++) {
        if (oai_http_start(&ls[i], fds[i]) < 0) {
            fprintf(stderr, "resident-openai: libmicrohttpd failed to start on fd %d\n", fds[i]);
            return 1;
        }
        print_bound(fds[i]);
    }
    if (!gw.api_key)
        fprintf(stderr, "resident-openai: no --api-key-file: TCP clients are not authenticated\n");
    sd_notify(0, "READY=1\nSTATUS=serving");

    int sig = 0;
    sigwait(&set, &sig);
    sd_notify(0, "STOPPING=1");
    fprintf(stderr, "resident-openai: %s, stopping\n", strsignal(sig));
    for (int i = 0; i < n; i++)
        oai_http_quiesce(&ls[i]);
    /* Longer than a runner's cancel grace (job.c), so every runner ends and
     * resumes its connection: libmicrohttpd must not be stopped with
     * suspended connections. */
    if (oai_gateway_shutdown(&gw, 7000) < 0) {
        fprintf(stderr, "resident-openai: generations still running after 7 s; exiting without draining\n");
        return 1;
    }
    for (int i = 0; i < n; i++)
        oai_http_drain(&ls[i], 2000);
    for (int i = 0; i < n; i++) {
        oai_http_stop(&ls[i]);
        close(fds[i]);
    }
    free(gw.api_key);
    return 0;
}
