/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sampling controls through residentd (engine generator, bundled model with
 * random weights), each checked token for token against the offline
 * `resident-engine generate` given the same explicit values:
 *   - presence/frequency penalties (the SUBMIT extension) change greedy
 *     output, equal the offline run with the same penalties, and repeat
 *     exactly on a second request;
 *   - fields left unset (model_defaults) take the model's
 *     generation_config.json: the daemon runs on a copy of the bundled
 *     model whose generation_config.json names sampling values, and a
 *     request leaving every field unset equals the offline run given those
 *     values explicitly; leaving only some unset mixes the two;
 *   - a caller built against the older, smaller struct resident_request
 *     (size without the new fields) gets exactly the old behaviour, even
 *     with garbage where the new fields would be;
 *   - WELCOME advertises NO_PREFIX_CACHE and SUBMIT_EXT, not TOOL_CHOICE.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "client/resident.h"
#include "tests/integration/harness-model.h"
#include "tests/integration/harness.h"

#define MAX_OUT 32
#define N_NEW   24u

static struct th_daemon D;
static struct th_model M;
static char copy_dir[128];

/* The sampling values written into the copy's generation_config.json. */
#define GC_TEMP   0.8f
#define GC_TOP_P  0.9f
#define GC_TOP_K  40u
#define GC_MIN_P  0.05f
#define GC_REP    1.3f
#define GC_PRES   0.5f

struct sampling {
    float    temperature, top_p, min_p, rep, presence, frequency;
    uint32_t top_k;
    uint64_t seed;
};

struct out {
    uint32_t ids[MAX_OUT];
    uint32_t n;
};

/* A model directory that differs from the bundled one only in its
 * generation_config.json: symlinks to every other file. */
static int make_model_copy(void)
{
    int rc = th_model_copy(M.model_dir, "it-sampling", copy_dir, sizeof(copy_dir));
    if (rc < 0)
        return rc;
    char src[1100], dst[400];
    /* Keep the token ids of the original; replace its sampling fields. */
    snprintf(src, sizeof(src), "%s/generation_config.json", M.model_dir);
    struct json_object *gc = json_object_from_file(src);
    if (!gc)
        return -EIO;
    json_object_object_add(gc, "do_sample", json_object_new_boolean(1));
    json_object_object_add(gc, "temperature", json_object_new_double(GC_TEMP));
    json_object_object_add(gc, "top_p", json_object_new_double(GC_TOP_P));
    json_object_object_add(gc, "top_k", json_object_new_int(GC_TOP_K));
    json_object_object_add(gc, "min_p", json_object_new_double(GC_MIN_P));
    json_object_object_add(gc, "repetition_penalty", json_object_new_double(GC_REP));
    json_object_object_add(gc, "presence_penalty", json_object_new_double(GC_PRES));
    snprintf(dst, sizeof(dst), "%s/generation_config.json", copy_dir);
    rc = json_object_to_file(dst, gc);
    json_object_put(gc);
    return rc < 0 ? -EIO : 0;
}

/* The offline reference with every value explicit. */
static int offline(const uint32_t *ids, size_t n, const struct sampling *s, struct out *o)
{
    char cmd[4096];
    int k = snprintf(cmd, sizeof(cmd),
                     "'%s' generate --model '%s' --real-vocab %zu --stop %d -n %u --temp %g --top-p %g "
                     "--top-k %u --min-p %g --repetition-penalty %g --presence-penalty %g "
                     "--frequency-penalty %g --seed %" PRIu64 " --ids ",
                     M.engine_exe, M.model_dir, M.real_vocab, M.im_end_id, N_NEW, (double)s->temperature,
                     (double)s->top_p, s->top_k, (double)s->min_p, (double)s->rep, (double)s->presence,
                     (double)s->frequency, s->seed);
    for (size_t i = 0; i < n && k < (int)sizeof(cmd) - 16; i++)
        k += snprintf(cmd + k, sizeof(cmd) - (size_t)k, "%s%u", i ? "," : "", ids[i]);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -errno;
    o->n = 0;
    unsigned v;
    while (o->n < MAX_OUT && fscanf(p, "%u", &v) == 1) {
        o->ids[o->n++] = v;
        if (fgetc(p) != ',')
            break;
    }
    int st = pclose(p);
    return st == 0 && o->n > 0 ? 0 : -EIO;
}

/* One request through the daemon; @q is sent as it is (its size too). */
static int daemon_run(struct resident *r, const struct resident_request *q, const uint32_t *ids, size_t n,
                      struct out *o)
{
    uint64_t id;
    int rc = resident_submit_ids(r, q, ids, n, &id);
    if (rc < 0) {
        fprintf(stderr, "submit: %s\n", resident_last_error(r));
        return rc;
    }
    o->n = 0;
    struct resident_event ev;
    uint64_t end = th_now_ms() + 60000;
    while (th_now_ms() < end) {
        rc = resident_wait(r, &ev, 1000);
        if (rc < 0)
            return rc;
        if (rc == 0 || ev.id != id)
            continue;
        if (ev.type == RESIDENT_EVENT_TOKENS)
            for (uint32_t i = 0; i < ev.n_tokens && o->n < MAX_OUT; i++)
                o->ids[o->n++] = ev.tokens[i];
        if (ev.type == RESIDENT_EVENT_DONE) {
            if (ev.error)
                fprintf(stderr, "request failed: %d %s\n", ev.error, ev.message);
            return ev.error;
        }
    }
    return -ETIMEDOUT;
}

static void explicit_request(struct resident_request *q, const struct sampling *s)
{
    resident_request_init(q);
    q->max_tokens = N_NEW;
    q->temperature = s->temperature;
    q->top_p = s->top_p;
    q->top_k = s->top_k;
    q->min_p = s->min_p;
    q->repeat_penalty = s->rep;
    q->presence_penalty = s->presence;
    q->frequency_penalty = s->frequency;
    q->seed = s->seed;
}

static int same(const char *what, const struct out *a, const struct out *b)
{
    int eq = a->n == b->n && memcmp(a->ids, b->ids, a->n * sizeof(a->ids[0])) == 0;
    if (!eq) {
        fprintf(stderr, "%s: daemon %u tokens, offline %u:", what, a->n, b->n);
        for (uint32_t i = 0; i < a->n || i < b->n; i++)
            fprintf(stderr, " %d/%d", i < a->n ? (int)a->ids[i] : -1, i < b->n ? (int)b->ids[i] : -1);
        fprintf(stderr, "\n");
    }
    return eq;
}

static void make_prompt(uint32_t *ids, size_t n, uint32_t v)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = (uint32_t)((i * 7919u + v * 104729u + 17u) % 150000u) + 10u;
}

static const struct sampling GREEDY = { 0.0f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0, 0 };

static void test_penalties(struct resident *r)
{
    const struct sampling pen = { 0.0f, 1.0f, 0.0f, 1.0f, 1.5f, 1.0f, 0, 0 };
    const struct sampling neg = { 0.0f, 1.0f, 0.0f, 1.0f, -2.0f, -0.5f, 0, 0 };
    int differs = 0;
    for (uint32_t v = 0; v < 3; v++) {
        uint32_t ids[12];
        make_prompt(ids, 12, v);
        struct out d0, dp, dp2, dn, o0, op, on;
        struct resident_request q;
        explicit_request(&q, &GREEDY);
        TH_CHECK(daemon_run(r, &q, ids, 12, &d0) == 0);
        explicit_request(&q, &pen);
        TH_CHECK(daemon_run(r, &q, ids, 12, &dp) == 0);
        TH_CHECK(daemon_run(r, &q, ids, 12, &dp2) == 0);
        explicit_request(&q, &neg);
        TH_CHECK(daemon_run(r, &q, ids, 12, &dn) == 0);
        TH_CHECK(offline(ids, 12, &GREEDY, &o0) == 0);
        TH_CHECK(offline(ids, 12, &pen, &op) == 0);
        TH_CHECK(offline(ids, 12, &neg, &on) == 0);
        TH_CHECK(same("greedy", &d0, &o0));
        TH_CHECK(same("presence 1.5 frequency 1", &dp, &op));
        TH_CHECK(same("penalties, second run", &dp2, &dp));
        TH_CHECK(same("presence -2 frequency -0.5", &dn, &on));
        differs += !(d0.n == dp.n && memcmp(d0.ids, dp.ids, d0.n * 4) == 0);
    }
    /* Greedy output of random weights repeats tokens; a penalty that
     * changed none of three outputs would not be applied at all. */
    printf("penalties changed %d of 3 greedy outputs\n", differs);
    TH_CHECK(differs > 0);
}

static void test_model_defaults(struct resident *r)
{
    uint32_t ids[9];
    make_prompt(ids, 9, 7);
    const struct sampling gc = { GC_TEMP, GC_TOP_P, GC_MIN_P, GC_REP, GC_PRES, 0.0f, GC_TOP_K, 4242 };
    struct out d, o, g;

    /* Everything unset: the copy's generation_config.json. */
    struct resident_request q;
    resident_request_init(&q);
    q.max_tokens = N_NEW;
    q.seed = gc.seed;
    q.model_defaults = RESIDENT_DEFAULT_ALL;
    TH_CHECK(daemon_run(r, &q, ids, 9, &d) == 0);
    TH_CHECK(offline(ids, 9, &gc, &o) == 0);
    TH_CHECK(same("all model defaults", &d, &o));
    TH_CHECK(offline(ids, 9, &GREEDY, &g) == 0);
    TH_CHECK(!(d.n == g.n && memcmp(d.ids, g.ids, d.n * 4) == 0));   /* it did sample */

    /* Some unset: explicit temperature 0 and frequency penalty, the
     * model's repetition and presence penalties. */
    resident_request_init(&q);
    q.max_tokens = N_NEW;
    q.temperature = 0.0f;
    q.frequency_penalty = 0.75f;
    q.model_defaults = RESIDENT_DEFAULT_ALL & ~RESIDENT_DEFAULT_TEMPERATURE;
    struct sampling mix = gc;
    mix.temperature = 0.0f;
    mix.frequency = 0.75f;
    TH_CHECK(daemon_run(r, &q, ids, 9, &d) == 0);
    TH_CHECK(offline(ids, 9, &mix, &o) == 0);
    TH_CHECK(same("greedy with the model's penalties", &d, &o));
}

/* A caller compiled against the header before the extension. */
static void test_old_struct(struct resident *r)
{
    uint32_t ids[12];
    make_prompt(ids, 12, 1);
    struct resident_request q;
    explicit_request(&q, &GREEDY);
    q.size = (uint32_t)offsetof(struct resident_request, presence_penalty);
    q.presence_penalty = 2.0f;      /* not part of the caller's struct */
    q.frequency_penalty = 2.0f;
    q.model_defaults = RESIDENT_DEFAULT_ALL;
    struct out d, o;
    TH_CHECK(daemon_run(r, &q, ids, 12, &d) == 0);
    TH_CHECK(offline(ids, 12, &GREEDY, &o) == 0);
    TH_CHECK(same("old-size request", &d, &o));
    /* Garbage in the new fields of a current-size request is refused
     * before it is sent, naming the field. */
    explicit_request(&q, &GREEDY);
    q.presence_penalty = 3.0f;
    uint64_t id;
    TH_CHECK(resident_submit_ids(r, &q, ids, 12, &id) == -EINVAL);
    TH_CHECK(strstr(resident_last_error(r), "presence_penalty") != NULL);
    q.presence_penalty = 0.0f;
    q.model_defaults = 0x80;
    TH_CHECK(resident_submit_ids(r, &q, ids, 12, &id) == -EINVAL);
    TH_CHECK(strstr(resident_last_error(r), "model_defaults") != NULL);
}

int main(void)
{
    th_model_require(&M);
    int rc = make_model_copy();
    if (rc < 0) {
        fprintf(stderr, "cannot make the model copy in %s: %s\n", copy_dir, strerror(-rc));
        th_model_copy_remove(copy_dir);
        return 1;
    }
    char opt_model[600];
    snprintf(opt_model, sizeof(opt_model), "model=%s", copy_dir);
    const char *opts[] = { "generator=engine", opt_model, "prefix_cache=0", NULL };
    if (th_daemon_start(&D, opts) < 0) {
        fprintf(stderr, "cannot start residentd with the engine generator\n");
        th_model_copy_remove(copy_dir);
        return 1;
    }
    struct resident *r = th_connect(D.sock, "it-sampling", 0);
    if (!r) {
        th_failures++;
    } else {
        uint32_t f = resident_features(r);
        /* the engine generator honours everything this libresident knows */
        TH_CHECK((f & RESIDENT_FEATURE_NO_CACHE) && (f & RESIDENT_FEATURE_SUBMIT_EXT) &&
                 (f & RESIDENT_FEATURE_TOOL_CHOICE));
        test_penalties(r);
        test_model_defaults(r);
        test_old_struct(r);
        resident_close(r);
    }
    TH_CHECK(th_daemon_alive(&D));
    TH_CHECK(th_daemon_stop(&D, 10000) == 0);
    th_model_copy_remove(copy_dir);
    if (th_failures) {
        fprintf(stderr, "%d check(s) failed; daemon log: %s\n", th_failures, D.log);
        return 1;
    }
    printf("it-sampling: ok\n");
    return 0;
}
