/* SPDX-License-Identifier: Apache-2.0 */
/*
 * resident-engine: the offline command-line face of the engine. The public
 * `resident` tool execs it for these subcommands, so their arguments and
 * outputs are a contract:
 *
 *   resident-engine logits --model DIR --ids 1,2,3 --out FILE [--threads N]
 *       one prefill; FILE = float32 little-endian [n_ids][vocab_size]
 *   logits, generate and info also take [--backend NAME] [--kernel-dir DIR]:
 *       NAME cpu-ref, cpu, cpu-exact, auto (a usable GPU, else cpu; says
 *       why on stderr) or, where built with the GPU backends, cuda / hip
 *       (device 0, kernels NAME.sm_90.cubin / NAME.gfx1151.hsaco from DIR,
 *       default $RESIDENT_GPU_KERNEL_DIR, else the installed folder);
 *       engine/backend-open.h. Without --backend: the fast CPU backend.
 *   resident-engine generate --model DIR --ids 1,2,3 -n N
 *       [--temp T] [--top-p P] [--top-k K] [--min-p P] [--seed S]
 *       [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]
 *       [--stop ID,...] [--real-vocab N] [--threads N]
 *       prints the generated ids on one line, comma-separated (greedy when no
 *       sampling flag is given; stops after an eos / stop id, which is printed)
 *   resident-engine info --model DIR [--threads N]
 *       the loader report and per-sequence state size
 *
 * Exit status 0 on success, 1 on any error (message on stderr), 2 on usage
 * errors. Subcommands live in one table; add a row to add one.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "engine/backend-open.h"
#include "engine/model.h"
#include "engine/sample.h"
#include "engine/text/text-cli-chat.h"
#include "engine/text/text-cli-tok.h"
#include "engine/text/tokenizer.h"
#include "kernels/backend.h"
#if defined(RESIDENT_HAVE_CUDA) || defined(RESIDENT_HAVE_HIP)
#endif

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "logits files are written as native little-endian floats");

#define EXIT_USAGE 2

struct cmd {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
};

static int parse_i64(const char *s, const char *what, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "resident-engine: %s '%s' is not an integer in %" PRId64 "..%" PRId64 "\n",
                what, s, lo, hi);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

static int parse_f32(const char *s, const char *what, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) {
        fprintf(stderr, "resident-engine: %s '%s' is not a number\n", what, s);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* "1,2,3" -> ids (malloc'd). */
static int parse_ids(const char *s, int32_t **out, int64_t *n_out)
{
    int64_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *ids = malloc((size_t)cap * sizeof(*ids));
    char *copy = strdup(s);
    if (!ids || !copy) {
        free(ids);
        free(copy);
        fprintf(stderr, "resident-engine: out of memory\n");
        return -ENOMEM;
    }
    int64_t n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int64_t v;
        if (parse_i64(tok, "token id", 0, INT32_MAX, &v)) {
            free(ids);
            free(copy);
            return -EINVAL;
        }
        ids[n++] = (int32_t)v;
    }
    free(copy);
    if (n == 0) {
        free(ids);
        fprintf(stderr, "resident-engine: --ids needs at least one id\n");
        return -EINVAL;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

struct common {
    const char *model;
    const char *ids_arg;
    int32_t     threads;
    int32_t     real_vocab;
    const char *backend;                 /* NULL: the engine's default        */
    const char *kernel_dir;              /* GPU backends                      */
};

/* The backend load() opened (a GPU one is not owned by the model: unload
 * frees it after the model). */
static struct engine_backend backend_opened;

/* Resolve --backend through the engine's one implementation
 * (engine/backend-open.c); NULL keeps the model's default (the fast CPU). */
static int backend_open(const char *name, const char *kernel_dir, struct model_params *p)
{
    if (!name)
        return 0;
    struct engine_error err = { 0 };
    const struct engine_backend_params bp = {
        .name = name,
        .kernel_dir = kernel_dir ? kernel_dir : getenv("RESIDENT_GPU_KERNEL_DIR"),
        .device = 0,
    };
    int rc = engine_backend_open(&bp, &backend_opened, &err);
    if (rc) {
        fprintf(stderr, "resident-engine: %s\n", err.msg);
        return rc;
    }
    if (backend_opened.fallback[0])
        fprintf(stderr, "resident-engine: backend auto: no usable GPU (%s); using the fast CPU backend\n",
                backend_opened.fallback);
    p->backend = backend_opened.name;
    p->backend_instance = backend_opened.gpu;
    return 0;
}

static int load(const struct common *c, int64_t capacity, struct model **m)
{
    struct model_params p = MODEL_PARAMS_DEFAULT;
    struct engine_error err = { 0 };
    p.n_threads = c->threads;
    p.real_vocab = c->real_vocab;
    p.max_context = capacity;
    int rc = backend_open(c->backend, c->kernel_dir, &p);
    if (rc < 0)
        return rc;
    rc = model_load(c->model, &p, m, &err);
    if (rc) {
        fprintf(stderr, "resident-engine: cannot load model '%s': %s\n", c->model, err.msg);
        engine_backend_close(&backend_opened);
    }
    return rc;
}

static void unload(struct model *m)
{
    model_free(m);
    engine_backend_close(&backend_opened);
}

enum {
    OPT_MODEL = 1000, OPT_IDS, OPT_OUT, OPT_THREADS, OPT_TEMP, OPT_TOP_P, OPT_TOP_K,
    OPT_MIN_P, OPT_SEED, OPT_REP, OPT_PRES, OPT_FREQ, OPT_STOP, OPT_REAL_VOCAB,
    OPT_BACKEND, OPT_KERNEL_DIR, OPT_TEXT,
};

static const struct option long_opts[] = {
    { "model", required_argument, NULL, OPT_MODEL },
    { "ids", required_argument, NULL, OPT_IDS },
    { "out", required_argument, NULL, OPT_OUT },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "temp", required_argument, NULL, OPT_TEMP },
    { "top-p", required_argument, NULL, OPT_TOP_P },
    { "top-k", required_argument, NULL, OPT_TOP_K },
    { "min-p", required_argument, NULL, OPT_MIN_P },
    { "seed", required_argument, NULL, OPT_SEED },
    { "repetition-penalty", required_argument, NULL, OPT_REP },
    { "presence-penalty", required_argument, NULL, OPT_PRES },
    { "frequency-penalty", required_argument, NULL, OPT_FREQ },
    { "stop", required_argument, NULL, OPT_STOP },
    { "real-vocab", required_argument, NULL, OPT_REAL_VOCAB },
    { "backend", required_argument, NULL, OPT_BACKEND },
    { "kernel-dir", required_argument, NULL, OPT_KERNEL_DIR },
    { "text", no_argument, NULL, OPT_TEXT },
    { NULL, 0, NULL, 0 },
};

struct opts {
    struct common        c;
    const char          *out;
    int64_t              n;                /* -1 = not given                 */
    struct sample_params sp;
    bool                 sampling;         /* any sampling flag given        */
    bool                 temp_given;
    const char          *stop;
    bool                 text;             /* generate --text                */
};

static int parse_opts(int argc, char **argv, struct opts *o)
{
    struct sample_params sp = SAMPLE_PARAMS_DEFAULT;
    *o = (struct opts){ .c = { .threads = 1 }, .n = -1, .sp = sp };
    int64_t v = 0;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "n:", long_opts, NULL)) != -1) {
        int rc = 0;
        switch (ch) {
        case OPT_MODEL: o->c.model = optarg; break;
        case OPT_IDS:   o->c.ids_arg = optarg; break;
        case OPT_OUT:   o->out = optarg; break;
        case OPT_STOP:  o->stop = optarg; break;
        case OPT_TEXT:  o->text = true; break;
        case OPT_BACKEND: o->c.backend = optarg; break;
        case OPT_KERNEL_DIR: o->c.kernel_dir = optarg; break;
        case OPT_THREADS:
            rc = parse_i64(optarg, "--threads", 1, 64, &v);
            o->c.threads = (int32_t)v;
            break;
        case OPT_REAL_VOCAB:
            rc = parse_i64(optarg, "--real-vocab", 1, INT32_MAX, &v);
            o->c.real_vocab = (int32_t)v;
            break;
        case 'n':
            rc = parse_i64(optarg, "-n", 0, INT32_MAX, &o->n);
            break;
        case OPT_TEMP:
            rc = parse_f32(optarg, "--temp", &o->sp.temperature);
            o->sampling = o->temp_given = true;
            break;
        case OPT_TOP_P: rc = parse_f32(optarg, "--top-p", &o->sp.top_p); o->sampling = true; break;
        case OPT_MIN_P: rc = parse_f32(optarg, "--min-p", &o->sp.min_p); o->sampling = true; break;
        case OPT_TOP_K:
            rc = parse_i64(optarg, "--top-k", 0, INT32_MAX, &v);
            o->sp.top_k = (int32_t)v;
            o->sampling = true;
            break;
        case OPT_SEED:
            rc = parse_i64(optarg, "--seed", 0, INT64_MAX, &v);
            o->sp.seed = (uint64_t)v;
            o->sampling = true;
            break;
        case OPT_REP:  rc = parse_f32(optarg, "--repetition-penalty", &o->sp.repetition_penalty); break;
        case OPT_PRES: rc = parse_f32(optarg, "--presence-penalty", &o->sp.presence_penalty); break;
        case OPT_FREQ: rc = parse_f32(optarg, "--frequency-penalty", &o->sp.frequency_penalty); break;
        default:
            return -EINVAL;
        }
        if (rc)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "resident-engine: unexpected argument '%s'\n", argv[optind]);
        return -EINVAL;
    }
    if (!o->c.model) {
        fprintf(stderr, "resident-engine: --model DIR is required\n");
        return -EINVAL;
    }
    /* a sampling flag without --temp samples at temperature 1 */
    if (o->sampling && !o->temp_given)
        o->sp.temperature = 1.0f;
    return 0;
}

static int cmd_logits(int argc, char **argv)
{
    struct opts o;
    if (parse_opts(argc, argv, &o))
        return EXIT_USAGE;
    if (!o.c.ids_arg || !o.out) {
        fprintf(stderr, "resident-engine logits: --ids and --out are required\n");
        return EXIT_USAGE;
    }
    int32_t *ids;
    int64_t n;
    if (parse_ids(o.c.ids_arg, &ids, &n))
        return EXIT_USAGE;
    struct model *m = NULL;
    struct model_seq *s = NULL;
    float *logits = NULL;
    FILE *f = NULL;
    int status = EXIT_FAILURE;
    struct engine_error err = { 0 };
    if (load(&o.c, n, &m))
        goto out;
    const size_t V = (size_t)model_vocab(m);
    logits = malloc((size_t)n * V * sizeof(float));
    if (!logits) {
        fprintf(stderr, "resident-engine: out of memory for %" PRId64 " x %zu logits\n", n, V);
        goto out;
    }
    if (model_seq_new(m, n, &s, &err) ||
        model_prefill(m, s, ids, n, &(struct model_prefill_params){ .logits = logits, .all_logits = true },
                      &err)) {
        fprintf(stderr, "resident-engine logits: %s\n", err.msg);
        goto out;
    }
    f = fopen(o.out, "wb");
    if (!f || fwrite(logits, sizeof(float) * V, (size_t)n, f) != (size_t)n || fflush(f)) {
        fprintf(stderr, "resident-engine logits: cannot write '%s': %s\n", o.out, strerror(errno));
        goto out;
    }
    status = fclose(f) ? EXIT_FAILURE : EXIT_SUCCESS;
    f = NULL;
    if (status)
        fprintf(stderr, "resident-engine logits: cannot write '%s': %s\n", o.out, strerror(errno));
out:
    if (f)
        fclose(f);
    free(logits);
    free(ids);
    model_seq_free(s);
    unload(m);
    return status;
}

static int cmd_generate(int argc, char **argv)
{
    struct opts o;
    if (parse_opts(argc, argv, &o))
        return EXIT_USAGE;
    if (!o.c.ids_arg || o.n < 0) {
        fprintf(stderr, "resident-engine generate: --ids and -n are required\n");
        return EXIT_USAGE;
    }
    int32_t *ids;
    int64_t n_ids;
    if (parse_ids(o.c.ids_arg, &ids, &n_ids))
        return EXIT_USAGE;
    int32_t *stop_ids = NULL;
    int64_t n_stop = 0;
    if (o.stop && parse_ids(o.stop, &stop_ids, &n_stop)) {
        free(ids);
        return EXIT_USAGE;
    }
    struct model *m = NULL;
    struct model_seq *s = NULL;
    struct sampler *smp = NULL;
    float *logits = NULL;
    int status = EXIT_FAILURE;
    struct engine_error err = { 0 };
    struct sample_stop stop;
    struct tokenizer *tkz = NULL;
    int32_t *out_ids = NULL;
    int64_t n_out = 0;
    if (o.text) {
        /* --text: the model directory's tokenizer decodes the output, and
         * (unless --real-vocab says otherwise) bounds the sampled ids. */
        if (tokenizer_load(o.c.model, &tkz, &err)) {
            fprintf(stderr, "resident-engine generate --text: %s\n", err.msg);
            goto out;
        }
        if (!o.c.real_vocab)
            o.c.real_vocab = (int32_t)tokenizer_token_count(tkz);
        out_ids = malloc((size_t)(o.n > 0 ? o.n : 1) * sizeof(*out_ids));
        if (!out_ids) {
            fprintf(stderr, "resident-engine: out of memory\n");
            goto out;
        }
    }
    if (load(&o.c, n_ids + (o.n > 0 ? o.n : 1), &m))
        goto out;
    sample_stop_init(&stop, model_get_config(m));
    for (int64_t i = 0; i < n_stop; i++)
        if (sample_stop_add(&stop, stop_ids[i])) {
            fprintf(stderr, "resident-engine generate: more than %d stop ids\n", SAMPLE_MAX_STOP);
            goto out;
        }
    o.sp.vocab_limit = model_real_vocab(m);
    if (!o.sampling)
        o.sp.temperature = 0.0f;
    logits = malloc((size_t)model_vocab(m) * sizeof(float));
    if (!logits) {
        fprintf(stderr, "resident-engine: out of memory\n");
        goto out;
    }
    if (sampler_new(&o.sp, model_vocab(m), &smp, &err) ||
        model_seq_new(m, n_ids + (o.n > 0 ? o.n : 1), &s, &err) ||
        model_prefill(m, s, ids, n_ids, &(struct model_prefill_params){ .logits = logits }, &err)) {
        fprintf(stderr, "resident-engine generate: %s\n", err.msg);
        goto out;
    }
    sampler_accept_prompt(smp, ids, n_ids);
    for (int64_t i = 0; i < o.n; i++) {
        int32_t tok;
        if (sampler_sample(smp, logits, &tok)) {
            fprintf(stderr, "resident-engine generate: no token can be sampled (all logits NaN)\n");
            goto out;
        }
        sampler_accept(smp, tok);
        printf("%s%d", i ? "," : "", tok);
        if (out_ids)
            out_ids[n_out++] = tok;
        if (sample_stop_hit(&stop, tok) || i + 1 == o.n)
            break;
        if (model_decode(m, &s, &tok, 1, logits, &err)) {
            printf("\n");
            fprintf(stderr, "resident-engine generate: %s\n", err.msg);
            goto out;
        }
    }
    printf("\n");
    if (tkz) {
        char *text = NULL;
        size_t len = 0;
        if (tokenizer_decode(tkz, out_ids, (size_t)n_out, true, &text, &len, &err)) {
            fprintf(stderr, "resident-engine generate --text: %s\n", err.msg);
            goto out;
        }
        fwrite(text, 1, len, stdout);
        printf("\n");
        free(text);
    }
    status = fflush(stdout) ? EXIT_FAILURE : EXIT_SUCCESS;
out:
    tokenizer_free(tkz);
    free(out_ids);
    free(logits);
    free(ids);
    free(stop_ids);
    sampler_free(smp);
    model_seq_free(s);
    unload(m);
    return status;
}

static int cmd_info(int argc, char **argv)
{
    struct opts o;
    if (parse_opts(argc, argv, &o))
        return EXIT_USAGE;
    struct model *m = NULL;
    struct model_seq *s = NULL, *s2 = NULL;
    struct engine_error err = { 0 };
    if (load(&o.c, 1, &m))
        return EXIT_FAILURE;
    model_report_write(m, stdout);
    int status = EXIT_SUCCESS;
    if (model_seq_new(m, 1, &s, &err) || model_seq_new(m, 2, &s2, &err)) {
        fprintf(stderr, "resident-engine info: %s\n", err.msg);
        status = EXIT_FAILURE;
    } else {
        /* measured, not derived from the config: the KV element size is the
         * backend's (f16 on the fast "cpu" backend, else fp32) */
        const uint64_t per_tok = model_seq_bytes(s2) - model_seq_bytes(s);
        printf("sequence state: %" PRIu64 " bytes fixed + %" PRIu64 " bytes per token of context\n",
               model_seq_bytes(s) - per_tok, per_tok);
    }
    model_seq_free(s);
    model_seq_free(s2);
    unload(m);
    return status;
}

/* ---- bench: prefill / decode throughput (docs/performance.md, CPU) ---- */

static double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The widths both estimates below count: hidden size, the GDN key / value
 * widths and value heads, the attention query and key/value widths, the
 * routed and shared experts' intermediate sizes. */
struct bench_dims {
    uint64_t H, key, val, nv, q, kv, I, SI;
};

static struct bench_dims bench_dims_of(const struct model_config *c)
{
    return (struct bench_dims){
        .H   = (uint64_t)c->hidden_size,
        .key = (uint64_t)c->linear_num_key_heads * (uint64_t)c->linear_key_head_dim,
        .val = (uint64_t)c->linear_num_value_heads * (uint64_t)c->linear_value_head_dim,
        .nv  = (uint64_t)c->linear_num_value_heads,
        .q   = (uint64_t)c->num_attention_heads * (uint64_t)c->head_dim,
        .kv  = (uint64_t)c->num_key_value_heads * (uint64_t)c->head_dim,
        .I   = (uint64_t)c->moe_intermediate_size,
        .SI  = (uint64_t)c->shared_expert_intermediate_size,
    };
}

/* Bytes of weights one decoded token reads: every dense / attention / GDN
 * projection, the router, the shared expert, top_k of num_experts routed
 * experts, the final norm and lm_head, one embedding row. W4 g32 matrices
 * cost rows*cols/2 + rows*cols/32*2 (bf16 scales); bf16 ones 2 bytes each. */
static uint64_t bench_bytes_per_token(const struct model_config *c)
{
    const struct bench_dims d = bench_dims_of(c);
    const uint64_t H = d.H, V = (uint64_t)c->vocab_size;
#define Q4(r, cc) ((uint64_t)(r) * (uint64_t)(cc) / 2 + (uint64_t)(r) * (uint64_t)(cc) / 32 * 2)
    uint64_t b = H * 2 + V * H * 2 + H * 2;                /* embed row, lm_head, norm */
    for (int i = 0; i < c->num_hidden_layers; i++) {
        b += 2 * H * 2;                                    /* two norms      */
        if (c->layer_types[i] == MODEL_LAYER_FULL_ATTENTION)
            b += Q4(2 * d.q, H) + 2 * Q4(d.kv, H) + Q4(H, d.q);
        else
            b += Q4(2 * d.key + d.val, H) + Q4(d.val, H) + 2 * Q4(d.nv, H) + Q4(H, d.val);
        b += (uint64_t)c->num_experts * H * 2 + H * 2;     /* router, shared gate */
        b += (uint64_t)c->num_experts_per_tok * 3 * Q4(d.I, H) + 3 * Q4(d.SI, H);
    }
#undef Q4
    return b;
}

/* Multiply-adds x 2 of the matrix products one prefill token costs (every
 * projection, router, shared expert, top_k routed experts; not lm_head,
 * which prefill runs for the last position only): the yardstick for the
 * prefill projection in tools/gpu/check (ops / s vs the int8 peak). */
static uint64_t bench_ops_per_token(const struct model_config *c)
{
    const struct bench_dims d = bench_dims_of(c);
    const uint64_t H = d.H;
    uint64_t p = 0;                                        /* weights used   */
    for (int i = 0; i < c->num_hidden_layers; i++) {
        if (c->layer_types[i] == MODEL_LAYER_FULL_ATTENTION)
            p += 2 * d.q * H + 2 * d.kv * H + H * d.q;
        else
            p += (2 * d.key + d.val) * H + d.val * H + 2 * d.nv * H + H * d.val;
        p += (uint64_t)c->num_experts * H + H;
        p += (uint64_t)c->num_experts_per_tok * 3 * d.I * H + 3 * d.SI * H;
    }
    return 2 * p;
}

static int cmd_bench(int argc, char **argv)
{
    static const struct option bopts[] = {
        { "model", required_argument, NULL, 'm' }, { "threads", required_argument, NULL, 't' },
        { "backend", required_argument, NULL, 'b' }, { "pp", required_argument, NULL, 'p' },
        { "tg", required_argument, NULL, 'g' }, { "depth", required_argument, NULL, 'd' },
        { "reps", required_argument, NULL, 'r' }, { "json", no_argument, NULL, 'j' },
        { "kernel-dir", required_argument, NULL, 'k' }, { NULL, 0, NULL, 0 },
    };
    const char *model = NULL, *backend = "cpu", *pp_arg = "512,4096", *depth_arg = "0,4096";
    const char *kernel_dir = NULL;
    int64_t threads = 0, tg = 128, reps = 1;
    bool json = false;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", bopts, NULL)) != -1) {
        int rc = 0;
        switch (ch) {
        case 'm': model = optarg; break;
        case 'b': backend = optarg; break;
        case 'k': kernel_dir = optarg; break;
        case 'p': pp_arg = optarg; break;
        case 'd': depth_arg = optarg; break;
        case 'j': json = true; break;
        case 't': rc = parse_i64(optarg, "--threads", 1, 256, &threads); break;
        case 'g': rc = parse_i64(optarg, "--tg", 1, 1 << 20, &tg); break;
        case 'r': rc = parse_i64(optarg, "--reps", 1, 100, &reps); break;
        default: return EXIT_USAGE;
        }
        if (rc)
            return EXIT_USAGE;
    }
    if (!model) {
        fprintf(stderr, "resident-engine bench: --model is required\n");
        return EXIT_USAGE;
    }
    if (!threads) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > 64 ? 64 : n;
    }
    int32_t *pp = NULL, *depth = NULL;
    int64_t n_pp = 0, n_depth = 0;
    if (parse_ids(pp_arg, &pp, &n_pp) || parse_ids(depth_arg, &depth, &n_depth)) {
        free(pp);
        return EXIT_USAGE;
    }
    int64_t cap = 1;
    for (int64_t i = 0; i < n_pp; i++)
        cap = pp[i] + 1 > cap ? pp[i] + 1 : cap;
    for (int64_t i = 0; i < n_depth; i++)
        cap = depth[i] + tg + 1 > cap ? depth[i] + tg + 1 : cap;

    struct model_params p = MODEL_PARAMS_DEFAULT;
    struct engine_error err = { 0 };
    p.n_threads = (int32_t)threads;
    p.max_context = cap;
    struct model *m = NULL;
    struct model_seq *s = NULL;
    int status = EXIT_FAILURE;
    double t_load = bench_now();
    /* cuda / hip: the backend instance comes from here (as load() does) */
    if (backend_open(backend, kernel_dir, &p) < 0)
        goto out;
    if (model_load(model, &p, &m, &err)) {
        fprintf(stderr, "resident-engine bench: cannot load model '%s': %s\n", model, err.msg);
        goto out;
    }
    t_load = bench_now() - t_load;
    const struct model_config *c = model_get_config(m);
    const int32_t V = model_vocab(m), real = model_real_vocab(m);
    float *logits = malloc((size_t)V * sizeof(float));
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    double *samp = malloc((size_t)reps * sizeof(double));
    double *pp_tps = calloc((size_t)n_pp, sizeof(double));
    double *tg_tps = calloc((size_t)n_depth, sizeof(double));
    if (!logits || !ids || !samp || !pp_tps || !tg_tps || model_seq_new(m, cap, &s, &err)) {
        fprintf(stderr, "resident-engine bench: out of memory or %s\n", err.msg);
        goto out2;
    }
    uint64_t rs = 0x2545f4914f6cdd1dull;
    for (int64_t i = 0; i < cap; i++) {
        rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
        ids[i] = (int32_t)(rs % (uint64_t)real);
    }
    struct model_prefill_params lp = { .logits = logits };
    double ttft = 0.0;
    /* warm-up: one short prefill pages in the dense weights and sizes the
     * backend's scratch */
    if (model_prefill(m, s, ids, 8, &lp, &err))
        goto fail;
    for (int64_t i = 0; i < n_pp; i++) {
        for (int64_t r = 0; r < reps; r++) {
            model_seq_reset(s);
            double t0 = bench_now();
            if (model_prefill(m, s, ids, pp[i], &lp, &err))
                goto fail;
            samp[r] = bench_now() - t0;
        }
        qsort(samp, (size_t)reps, sizeof(double), bench_cmp_double);
        pp_tps[i] = pp[i] / samp[reps / 2];
        if (i == n_pp - 1)
            ttft = samp[reps / 2] * 1e3;
        if (!json)
            printf("prefill %6d tokens: %8.2f tok/s (median of %" PRId64 ")\n", pp[i], pp_tps[i], reps);
    }
    for (int64_t i = 0; i < n_depth; i++) {
        for (int64_t r = 0; r < reps; r++) {
            model_seq_reset(s);
            if (depth[i] > 0 && model_prefill(m, s, ids, depth[i], &lp, &err))
                goto fail;
            int32_t tok = ids[depth[i]];
            double t0 = bench_now();
            for (int64_t k = 0; k < tg; k++) {
                struct model_seq *one = s;
                if (model_decode(m, &one, &tok, 1, logits, &err))
                    goto fail;
                tok = ids[(depth[i] + k + 1) % cap];
            }
            samp[r] = bench_now() - t0;
        }
        qsort(samp, (size_t)reps, sizeof(double), bench_cmp_double);
        tg_tps[i] = (double)tg / samp[reps / 2];
        if (!json)
            printf("decode  %6" PRId64 " tokens at depth %d: %8.2f tok/s\n", tg, depth[i], tg_tps[i]);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const uint64_t bpt = bench_bytes_per_token(c);
    if (json) {
        printf("{\"model\":\"%s\",\"backend\":\"%s\",\"threads\":%" PRId64 ",\"layers\":%d,"
               "\"load_s\":%.3f,\"prefill\":[", model, backend, threads, c->num_hidden_layers, t_load);
        for (int64_t i = 0; i < n_pp; i++)
            printf("%s{\"tokens\":%d,\"tok_s\":%.3f}", i ? "," : "", pp[i], pp_tps[i]);
        printf("],\"decode\":[");
        for (int64_t i = 0; i < n_depth; i++)
            printf("%s{\"depth\":%d,\"tokens\":%" PRId64 ",\"tok_s\":%.3f,\"gb_s\":%.3f}", i ? "," : "",
                   depth[i], tg, tg_tps[i], tg_tps[i] * (double)bpt * 1e-9);
        printf("],\"ttft_ms\":%.1f,\"ttft_tokens\":%d,\"peak_rss_mib\":%.1f,\"bytes_per_token\":%" PRIu64
               ",\"ops_per_token\":%" PRIu64 "}\n", ttft, n_pp ? pp[n_pp - 1] : 0,
               (double)ru.ru_maxrss / 1024.0, bpt, bench_ops_per_token(c));
    } else {
        printf("matrix ops per prefill token: %.3f GOP\n", (double)bench_ops_per_token(c) * 1e-9);
        printf("TTFT (%d-token prompt): %.1f ms\npeak RSS: %.1f MiB\n"
               "weights read per decoded token: %.1f MiB (%.2f GB/s at depth %d)\n",
               n_pp ? pp[n_pp - 1] : 0, ttft, (double)ru.ru_maxrss / 1024.0,
               (double)bpt / 1048576.0, n_depth ? tg_tps[0] * (double)bpt * 1e-9 : 0.0,
               n_depth ? depth[0] : 0);
    }
    status = EXIT_SUCCESS;
    goto out2;
fail:
    fprintf(stderr, "resident-engine bench: %s\n", err.msg);
out2:
    free(logits); free(ids); free(samp); free(pp_tps); free(tg_tps);
out:
    model_seq_free(s);
    unload(m);                           /* also the GPU backend, if any */
    free(pp);
    free(depth);
    return status;
}

static const struct cmd cmds[] = {
    { "logits", cmd_logits, "--model DIR --ids 1,2,3 --out FILE [--threads N]\n"
      "        [--backend auto|cpu-ref|cpu|cpu-exact|cuda|hip --kernel-dir DIR]" },
    { "generate", cmd_generate,
      "--model DIR --ids 1,2,3 -n N [--temp T --top-p P --top-k K --min-p P --seed S\n"
      "        --repetition-penalty R --presence-penalty P --frequency-penalty F\n"
      "        --stop ID,... --real-vocab N --threads N --backend NAME --kernel-dir DIR --text]" },
    { "info", cmd_info, "--model DIR [--threads N --backend NAME --kernel-dir DIR]" },
    { "bench", cmd_bench,
      "--model DIR [--threads N] [--backend auto|cpu|cpu-exact|cpu-ref|cuda|hip --kernel-dir DIR]\n"
      "        [--pp 512,4096] [--tg 128] [--depth 0,4096] [--reps R] [--json]   (throughput report)" },
    { "tokenize", text_cli_tokenize, "--model DIR   (UTF-8 text on stdin -> JSON array of ids)" },
    { "detokenize", text_cli_detokenize, "--model DIR   (JSON array of ids on stdin -> text)" },
    { "render", text_cli_render,
      "--model DIR   ({\"messages\", \"tools\", \"chat_template_kwargs\", ...} on stdin -> prompt)" },
    { "parse", text_cli_parse,
      "--model DIR [--tools FILE] [--thinking on|off]   (model output on stdin -> JSON)" },
};

static void usage(FILE *f)
{
    fprintf(f, "usage:\n");
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        fprintf(f, "  resident-engine %s %s\n", cmds[i].name, cmds[i].usage);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : EXIT_SUCCESS;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (!strcmp(argv[1], cmds[i].name))
            return cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "resident-engine: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
