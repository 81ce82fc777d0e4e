/* SPDX-License-Identifier: Apache-2.0 */
/*
 * `resident`: command-line client.
 *
 *   resident [--socket PATH] run [-n MAX] [--seed S] [SAMPLING] [--raw] [--json] [--stats] PROMPT
 *   resident [--socket PATH] chat [-n MAX] [--seed S] [SAMPLING] [--system TEXT]
 *   SAMPLING: --temperature T --top-p P --top-k K --min-p P --repetition-penalty R
 *             --presence-penalty P --frequency-penalty F; a value not given is
 *             the loaded model's generation_config.json default (applied by residentd)
 *   resident logits|generate|tokenize|detokenize|render|parse|bench ARGS...
 *
 * The offline subcommands run the engine in-process in the helper
 * `resident-engine`, found at $RESIDENT_ENGINE, else next to this
 * executable's build tree (../engine/resident-engine), else in
 * RESIDENT_LIBEXECDIR; this tool never links the engine.
 */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/resident.h"

#ifndef RESIDENT_LIBEXECDIR
#define RESIDENT_LIBEXECDIR "/usr/libexec/resident"
#endif

static const char *const offline_cmds[] = {
    "logits", "generate", "tokenize", "detokenize", "render", "parse", "bench",
};

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: resident [--socket PATH] COMMAND [ARGS]\n"
        "\n"
        "  run [-n MAX_TOKENS] [--seed S] [--raw] [--json] [--stats] PROMPT\n"
        "        stream a completion (--raw: no chat template; --json: events as JSON lines;\n"
        "        --stats: TTFT and tokens/s on stderr)\n"
        "  chat [-n MAX_TOKENS] [--seed S] [--system TEXT]\n"
        "        interactive multi-turn chat on stdin/stdout (empty line or EOF ends)\n"
        "  run and chat also take the sampling options --temperature T, --top-p P, --top-k K,\n"
        "        --min-p P, --repetition-penalty R, --presence-penalty P, --frequency-penalty F\n"
        "        (-2..2); each one not given is the model's generation_config.json default\n"
        "  logits|generate|tokenize|detokenize|render|parse|bench ...\n"
        "        offline engine commands (run by the resident-engine helper)\n"
        "\n"
        "The socket defaults to $RESIDENT_SOCKET, else %s.\n", RESIDENT_SOCKET_DEFAULT);
}

static int exec_engine(int argc, char **argv)
{
    char path[PATH_MAX];
    const char *env = getenv("RESIDENT_ENGINE");
    const char *cands[3];
    size_t nc = 0;
    if (env && *env)
        cands[nc++] = env;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        snprintf(path, sizeof(path), "%s/../engine/resident-engine", dirname(self));
        cands[nc++] = path;
    }
    cands[nc++] = RESIDENT_LIBEXECDIR "/resident-engine";
    char **av = calloc((size_t)argc + 2, sizeof(char *));
    if (!av)
        return 1;
    av[0] = "resident-engine";
    for (int i = 0; i < argc; i++)
        av[i + 1] = argv[i];
    for (size_t i = 0; i < nc; i++) {
        if (access(cands[i], X_OK) == 0) {
            execv(cands[i], av);
            fprintf(stderr, "resident: cannot run %s: %s\n", cands[i], strerror(errno));
            free(av);
            return 127;
        }
    }
    fprintf(stderr, "resident: '%s' needs the resident-engine helper; not found at", argv[0]);
    for (size_t i = 0; i < nc; i++)
        fprintf(stderr, "%s %s", i ? "," : "", cands[i]);
    fprintf(stderr, " (set RESIDENT_ENGINE=/path/to/resident-engine)\n");
    free(av);
    return 127;
}

struct gen_opts {
    uint32_t max_tokens;
    uint64_t seed;
    int      raw, json, stats;
    const char *system;
    struct resident_request req;    /* sampling; unset fields stay model defaults */
};

/* One sampling option: its range, where it goes, which model default it replaces. */
static int parse_sampling_opt(int c, const char *arg, struct resident_request *q)
{
    static const struct {
        int         c;
        const char *name;
        float       lo, hi;
        int         lo_open;
        uint32_t    bit;
    } spec[] = {
        { 'T', "--temperature", 0.0f, 100.0f, 0, RESIDENT_DEFAULT_TEMPERATURE },
        { 'P', "--top-p", 0.0f, 1.0f, 1, RESIDENT_DEFAULT_TOP_P },
        { 'K', "--top-k", 0.0f, 1048576.0f, 0, RESIDENT_DEFAULT_TOP_K },
        { 'M', "--min-p", 0.0f, 1.0f, 0, RESIDENT_DEFAULT_MIN_P },
        { 'R', "--repetition-penalty", 0.0f, 100.0f, 1, RESIDENT_DEFAULT_REPEAT_PENALTY },
        { 'E', "--presence-penalty", -2.0f, 2.0f, 0, RESIDENT_DEFAULT_PRESENCE_PENALTY },
        { 'F', "--frequency-penalty", -2.0f, 2.0f, 0, 0 },
    };
    for (size_t i = 0; i < sizeof(spec) / sizeof(spec[0]); i++) {
        if (spec[i].c != c)
            continue;
        char *end;
        errno = 0;
        float v = strtof(arg, &end);
        /* Written so that NaN fails as well. */
        if (errno || end == arg || *end || !(v >= spec[i].lo && v <= spec[i].hi) ||
            (spec[i].lo_open && v == spec[i].lo) || (c == 'K' && v != (float)(uint32_t)v)) {
            fprintf(stderr, "resident: %s %s: expected %s %g..%g\n", spec[i].name, arg,
                    c == 'K' ? "an integer" : "a number", (double)spec[i].lo, (double)spec[i].hi);
            return -1;
        }
        switch (c) {
        case 'T': q->temperature = v; break;
        case 'P': q->top_p = v; break;
        case 'K': q->top_k = (uint32_t)v; break;
        case 'M': q->min_p = v; break;
        case 'R': q->repeat_penalty = v; break;
        case 'E': q->presence_penalty = v; break;
        default: q->frequency_penalty = v; break;
        }
        q->model_defaults &= ~spec[i].bit;
        return 1;
    }
    return 0;
}

static int parse_gen_opts(int argc, char **argv, struct gen_opts *o, int allow_prompt)
{
    static const struct option opts[] = {
        { "seed", required_argument, NULL, 's' },
        { "raw", no_argument, NULL, 'r' },
        { "json", no_argument, NULL, 'j' },
        { "stats", no_argument, NULL, 'S' },
        { "system", required_argument, NULL, 'y' },
        { "temperature", required_argument, NULL, 'T' },
        { "top-p", required_argument, NULL, 'P' },
        { "top-k", required_argument, NULL, 'K' },
        { "min-p", required_argument, NULL, 'M' },
        { "repetition-penalty", required_argument, NULL, 'R' },
        { "presence-penalty", required_argument, NULL, 'E' },
        { "frequency-penalty", required_argument, NULL, 'F' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 1;
    resident_request_init(&o->req);
    o->req.model_defaults = RESIDENT_DEFAULT_ALL;
    while ((c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        char *end;
        int sr = parse_sampling_opt(c, optarg, &o->req);
        if (sr < 0)
            return -1;
        if (sr > 0)
            continue;
        switch (c) {
        case 'n':
            errno = 0;
            o->max_tokens = (uint32_t)strtoul(optarg, &end, 10);
            if (errno || *end || !o->max_tokens) {
                fprintf(stderr, "resident: -n %s: expected a positive integer\n", optarg);
                return -1;
            }
            break;
        case 's':
            errno = 0;
            o->seed = strtoull(optarg, &end, 10);
            if (errno || *end) {
                fprintf(stderr, "resident: --seed %s: expected an integer\n", optarg);
                return -1;
            }
            break;
        case 'r': o->raw = 1; break;
        case 'j': o->json = 1; break;
        case 'S': o->stats = 1; break;
        case 'y': o->system = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (allow_prompt ? optind != argc - 1 : optind != argc) {
        fprintf(stderr, allow_prompt ? "resident run: expected exactly one PROMPT argument\n"
                                     : "resident chat: unexpected argument\n");
        return -1;
    }
    return optind;
}

static void print_json_event(const struct resident_event *ev)
{
    struct json_object *o = json_object_new_object();
    switch (ev->type) {
    case RESIDENT_EVENT_QUEUED:
        json_object_object_add(o, "event", json_object_new_string("queued"));
        json_object_object_add(o, "id", json_object_new_uint64(ev->id));
        json_object_object_add(o, "prompt_tokens", json_object_new_int64(ev->prompt_tokens));
        break;
    case RESIDENT_EVENT_TOKENS: {
        json_object_object_add(o, "event", json_object_new_string("tokens"));
        json_object_object_add(o, "id", json_object_new_uint64(ev->id));
        struct json_object *a = json_object_new_array();
        for (uint32_t i = 0; i < ev->n_tokens; i++)
            json_object_array_add(a, json_object_new_int64(ev->tokens[i]));
        json_object_object_add(o, "tokens", a);
        json_object_object_add(o, "text", json_object_new_string_len(ev->text, (int)ev->text_len));
        json_object_object_add(o, "channel", json_object_new_int(ev->channel));
        break;
    }
    case RESIDENT_EVENT_DONE:
        json_object_object_add(o, "event", json_object_new_string("done"));
        json_object_object_add(o, "id", json_object_new_uint64(ev->id));
        json_object_object_add(o, "finish", json_object_new_string(resident_finish_name(ev->finish)));
        if (ev->error) {
            json_object_object_add(o, "error", json_object_new_int(ev->error));
            json_object_object_add(o, "message", json_object_new_string(ev->message));
        }
        json_object_object_add(o, "prompt_tokens", json_object_new_int64(ev->prompt_tokens));
        json_object_object_add(o, "completion_tokens", json_object_new_int64(ev->completion_tokens));
        json_object_object_add(o, "queue_us", json_object_new_uint64(ev->queue_us));
        json_object_object_add(o, "ttft_us", json_object_new_uint64(ev->ttft_us));
        json_object_object_add(o, "total_us", json_object_new_uint64(ev->total_us));
        json_object_object_add(o, "decode_us", json_object_new_uint64(ev->decode_us));
        break;
    }
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

/* Stream one request to completion. Appends the text to *acc when given. */
static int stream(struct resident *r, uint64_t id, const struct gen_opts *o, char **acc, size_t *acc_len)
{
    struct resident_event ev;
    int cancelled = 0;
    uint32_t chan = RESIDENT_CHANNEL_CONTENT;
    static const char *const chan_names[] = { "content", "reasoning", "tool call" };
    for (;;) {
        if (interrupted && !cancelled) {
            resident_cancel(r, id);
            cancelled = 1;
        }
        int ret = resident_wait(r, &ev, 200);
        if (ret == 0)
            continue;
        if (ret < 0) {
            fprintf(stderr, "\nresident: %s\n", resident_last_error(r));
            return 1;
        }
        if (ev.id != id)
            continue;
        if (o->json) {
            print_json_event(&ev);
        } else if (ev.type == RESIDENT_EVENT_TOKENS) {
            /* Channels other than content are labelled where they begin. */
            if (ev.channel != chan && ev.text_len && ev.channel <= RESIDENT_CHANNEL_TOOL_CALL) {
                chan = ev.channel;
                printf("\n[%s]\n", chan_names[chan]);
            }
            fwrite(ev.text, 1, ev.text_len, stdout);
            fflush(stdout);
        }
        if (ev.type == RESIDENT_EVENT_TOKENS && acc && ev.channel == RESIDENT_CHANNEL_CONTENT) {
            char *n = realloc(*acc, *acc_len + ev.text_len + 1);
            if (n) {
                memcpy(n + *acc_len, ev.text, ev.text_len);
                *acc_len += ev.text_len;
                n[*acc_len] = '\0';
                *acc = n;
            }
        }
        if (ev.type == RESIDENT_EVENT_DONE) {
            if (!o->json)
                putchar('\n');
            fflush(stdout);     /* before the stats / error on stderr */
            if (ev.error)
                fprintf(stderr, "resident: request failed: %s\n", ev.message);
            if (o->stats) {
                double decode_s = (double)ev.decode_us / 1e6;
                fprintf(stderr, "prompt %u tokens, completion %u tokens (%s); queue %.3f ms, TTFT %.3f ms, "
                        "%.1f tok/s\n", ev.prompt_tokens, ev.completion_tokens, resident_finish_name(ev.finish),
                        (double)ev.queue_us / 1e3, (double)ev.ttft_us / 1e3,
                        ev.completion_tokens > 1 && decode_s > 0 ? (ev.completion_tokens - 1) / decode_s : 0.0);
            }
            return ev.error ? 1 : 0;
        }
    }
}

static int submit_retry(struct resident *r, int (*fn)(struct resident *, const struct resident_request *,
                                                      const char *, size_t, uint64_t *),
                        const struct resident_request *q, const char *s, size_t n, uint64_t *id)
{
    for (;;) {
        int ret = fn(r, q, s, n, id);
        if (ret != -EAGAIN)
            return ret;
        struct resident_event ev;
        if (resident_wait(r, &ev, 100) < 0)
            return -ECONNRESET;
    }
}

static int submit_text_fn(struct resident *r, const struct resident_request *q, const char *s, size_t n, uint64_t *id)
{
    return resident_submit_text(r, q, s, n, 0, id);
}

static int submit_raw_fn(struct resident *r, const struct resident_request *q, const char *s, size_t n, uint64_t *id)
{
    return resident_submit_text(r, q, s, n, 1, id);
}

static int open_session(const char *socket_path, struct resident **r)
{
    struct resident_connect_params cp;
    resident_connect_params_init(&cp);
    cp.socket_path = socket_path;
    cp.client_name = "resident";
    int ret = resident_connect(&cp, r);
    if (ret < 0) {
        fprintf(stderr, "resident: %s\n", resident_last_error(NULL));
        return -1;
    }
    if (resident_is_synthetic(*r))
        fprintf(stderr, "resident: note: residentd runs the '%s' generator: output is synthetic, not a model\n",
                resident_generator(*r));
    return 0;
}

static int cmd_run(const char *socket_path, int argc, char **argv)
{
    struct gen_opts o = { 0 };
    int pi = parse_gen_opts(argc, argv, &o, 1);
    if (pi < 0)
        return 2;
    const char *prompt = argv[pi];
    struct resident *r;
    if (open_session(socket_path, &r) < 0)
        return 1;
    struct resident_request q = o.req;
    q.max_tokens = o.max_tokens;
    q.seed = o.seed;
    uint64_t id;
    int ret = submit_retry(r, o.raw ? submit_raw_fn : submit_text_fn, &q, prompt, strlen(prompt), &id);
    if (ret < 0) {
        fprintf(stderr, "resident: %s\n", resident_last_error(r));
        resident_close(r);
        return 1;
    }
    ret = stream(r, id, &o, NULL, NULL);
    resident_close(r);
    return ret;
}

static int cmd_chat(const char *socket_path, int argc, char **argv)
{
    struct gen_opts o = { 0 };
    if (parse_gen_opts(argc, argv, &o, 0) < 0)
        return 2;
    struct resident *r;
    if (open_session(socket_path, &r) < 0)
        return 1;
    struct json_object *msgs = json_object_new_array();
    if (o.system) {
        struct json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("system"));
        json_object_object_add(m, "content", json_object_new_string(o.system));
        json_object_array_add(msgs, m);
    }
    char *line = NULL;
    size_t cap = 0;
    int status = 0;
    int tty = isatty(0);
    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        interrupted = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n <= 0)
            break;
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        if (n == 0)
            break;
        struct json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("user"));
        json_object_object_add(m, "content", json_object_new_string(line));
        json_object_array_add(msgs, m);
        struct json_object *doc = json_object_new_object();
        json_object_object_add(doc, "messages", json_object_get(msgs));
        const char *js = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
        struct resident_request q = o.req;
        q.max_tokens = o.max_tokens;
        q.seed = o.seed;
        uint64_t id;
        int ret;
        for (;;) {
            ret = resident_submit_chat(r, &q, js, strlen(js), &id);
            if (ret != -EAGAIN)
                break;
            struct resident_event ev;
            if (resident_wait(r, &ev, 100) < 0)
                break;
        }
        json_object_put(doc);
        if (ret < 0) {
            fprintf(stderr, "resident: %s\n", resident_last_error(r));
            status = 1;
            break;
        }
        char *reply = NULL;
        size_t reply_len = 0;
        if (stream(r, id, &o, &reply, &reply_len) != 0)
            status = 1;
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "role", json_object_new_string("assistant"));
        json_object_object_add(a, "content", json_object_new_string_len(reply ? reply : "", (int)reply_len));
        json_object_array_add(msgs, a);
        free(reply);
        if (status)
            break;
    }
    free(line);
    json_object_put(msgs);
    resident_close(r);
    return status;
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL;
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            socket_path = argv[i + 1];
            i += 2;
        } else if (strncmp(argv[i], "--socket=", 9) == 0) {
            socket_path = argv[i] + 9;
            i++;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "resident: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    for (size_t k = 0; k < sizeof(offline_cmds) / sizeof(offline_cmds[0]); k++)
        if (strcmp(cmd, offline_cmds[k]) == 0)
            return exec_engine(argc - i, argv + i);
    struct sigaction sa = { .sa_handler = on_sigint };
    sigaction(SIGINT, &sa, NULL);
    /* Subcommand options may follow the subcommand; --socket too. */
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    for (int k = 1; k < sub_argc; k++) {
        if (strcmp(sub_argv[k], "--socket") == 0 && k + 1 < sub_argc) {
            socket_path = sub_argv[k + 1];
            memmove(&sub_argv[k], &sub_argv[k + 2], sizeof(char *) * (size_t)(sub_argc - k - 2));
            sub_argc -= 2;
            k--;
        }
    }
    if (strcmp(cmd, "run") == 0)
        return cmd_run(socket_path, sub_argc, sub_argv);
    if (strcmp(cmd, "chat") == 0)
        return cmd_chat(socket_path, sub_argc, sub_argv);
    fprintf(stderr, "resident: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
