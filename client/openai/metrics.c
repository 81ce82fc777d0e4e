/* SPDX-License-Identifier: Apache-2.0 */
#include <pthread.h>
#include <string.h>

#include "client/openai/metrics.h"

#define HIST_MAX 24

struct hist {
    const char *name, *help;
    const double *bounds;
    unsigned n;
    uint64_t counts[HIST_MAX + 1];  /* per bucket, +Inf last */
    double sum;
    uint64_t count;
};

/* Seconds; the shape of vLLM's buckets, trimmed to a local service. */
static const double ttft_bounds[] = { 0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                      0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0 };
static const double itl_bounds[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                                     0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5 };
static const double e2e_bounds[] = { 0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
                                     20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0 };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t requests[OAI_EP_COUNT][6];     /* by status class: 2xx..5xx, other */
static uint64_t prompt_tokens, generation_tokens, disconnects;
static uint64_t cache_hits, cached_tokens_total;
static uint64_t finished[OAI_OUT_COUNT];
static int64_t running, waiting, sessions;
static struct hist ttft = { "resident_openai_time_to_first_token_seconds",
                            "Time from the HTTP request to the first generated token",
                            ttft_bounds, sizeof(ttft_bounds) / sizeof(ttft_bounds[0]), { 0 }, 0, 0 };
static struct hist itl = { "resident_openai_inter_token_latency_seconds",
                           "Time between generated tokens (an event of n tokens counts n times, gap/n each)",
                           itl_bounds, sizeof(itl_bounds) / sizeof(itl_bounds[0]), { 0 }, 0, 0 };
static struct hist e2e = { "resident_openai_request_duration_seconds",
                           "Time from the HTTP request to the end of generation",
                           e2e_bounds, sizeof(e2e_bounds) / sizeof(e2e_bounds[0]), { 0 }, 0, 0 };

static const char *const ep_names[OAI_EP_COUNT] = { "chat_completions", "completions", "models", "health",
                                                    "metrics", "other" };
static const char *const out_names[OAI_OUT_COUNT] = { "stop", "length", "tool_calls", "cancelled", "error" };
static const char *const class_names[6] = { "1xx", "2xx", "3xx", "4xx", "5xx", "other" };

void oai_metrics_init(void)
{
    pthread_mutex_lock(&lock);
    memset(requests, 0, sizeof(requests));
    pthread_mutex_unlock(&lock);
}

void oai_metrics_request(enum oai_endpoint ep, unsigned status)
{
    unsigned c = status >= 100 && status < 600 ? status / 100 - 1 : 5;
    pthread_mutex_lock(&lock);
    requests[ep < OAI_EP_COUNT ? ep : OAI_EP_OTHER][c]++;
    pthread_mutex_unlock(&lock);
}

void oai_metrics_tokens(uint64_t prompt, uint64_t completion)
{
    pthread_mutex_lock(&lock);
    prompt_tokens += prompt;
    generation_tokens += completion;
    pthread_mutex_unlock(&lock);
}

void oai_metrics_prefix_cache(uint32_t cached)
{
    pthread_mutex_lock(&lock);
    cache_hits += cached > 0;
    cached_tokens_total += cached;
    pthread_mutex_unlock(&lock);
}

static void hist_observe(struct hist *h, double v, uint64_t times)
{
    unsigned b = 0;
    while (b < h->n && v > h->bounds[b])
        b++;
    h->counts[b] += times;
    h->sum += v * (double)times;
    h->count += times;
}

void oai_metrics_ttft(double s)
{
    pthread_mutex_lock(&lock);
    hist_observe(&ttft, s, 1);
    pthread_mutex_unlock(&lock);
}

void oai_metrics_itl(double s, uint32_t n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&lock);
    hist_observe(&itl, s / n, n);
    pthread_mutex_unlock(&lock);
}

void oai_metrics_e2e(double s)
{
    pthread_mutex_lock(&lock);
    hist_observe(&e2e, s, 1);
    pthread_mutex_unlock(&lock);
}

void oai_metrics_finished(enum oai_outcome o)
{
    pthread_mutex_lock(&lock);
    if (o < OAI_OUT_COUNT)
        finished[o]++;
    pthread_mutex_unlock(&lock);
}

void oai_metrics_disconnect(void)
{
    pthread_mutex_lock(&lock);
    disconnects++;
    pthread_mutex_unlock(&lock);
}

static void gauge_add(int64_t *g, int delta)
{
    pthread_mutex_lock(&lock);
    *g += delta;
    pthread_mutex_unlock(&lock);
}

void oai_metrics_running(int d)
{
    gauge_add(&running, d);
}

void oai_metrics_waiting(int d)
{
    gauge_add(&waiting, d);
}

void oai_metrics_sessions(int d)
{
    gauge_add(&sessions, d);
}

int64_t oai_metrics_running_now(void)
{
    pthread_mutex_lock(&lock);
    int64_t v = running;
    pthread_mutex_unlock(&lock);
    return v;
}

static int hist_render(const struct hist *h, struct oai_buf *o)
{
    int r = oai_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    uint64_t cum = 0;
    for (unsigned b = 0; r == 0 && b <= h->n; b++) {
        cum += h->counts[b];
        if (b < h->n)
            r = oai_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[b], (unsigned long long)cum);
        else
            r = oai_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", h->name, (unsigned long long)cum);
    }
    if (r == 0)
        r = oai_buf_printf(o, "%s_sum %.9g\n%s_count %llu\n", h->name, h->sum, h->name, (unsigned long long)h->count);
    return r;
}

int oai_metrics_render(struct oai_buf *o)
{
    pthread_mutex_lock(&lock);
    int r = oai_buf_puts(o, "# HELP resident_openai_requests_total HTTP requests answered, by endpoint and status class\n"
                            "# TYPE resident_openai_requests_total counter\n");
    for (int e = 0; r == 0 && e < OAI_EP_COUNT; e++)
        for (int c = 0; r == 0 && c < 6; c++)
            if (requests[e][c])
                r = oai_buf_printf(o, "resident_openai_requests_total{endpoint=\"%s\",code=\"%s\"} %llu\n",
                                   ep_names[e], class_names[c], (unsigned long long)requests[e][c]);
    if (r == 0)
        r = oai_buf_printf(o,
            "# HELP resident_openai_prompt_tokens_total Prompt tokens of finished generations (as residentd counted them)\n"
            "# TYPE resident_openai_prompt_tokens_total counter\n"
            "resident_openai_prompt_tokens_total %llu\n"
            "# HELP resident_openai_generation_tokens_total Generated tokens of finished generations\n"
            "# TYPE resident_openai_generation_tokens_total counter\n"
            "resident_openai_generation_tokens_total %llu\n"
            "# HELP resident_openai_prefix_cache_hits_total Finished generations whose prompt reused tokens from residentd's prefix cache\n"
            "# TYPE resident_openai_prefix_cache_hits_total counter\n"
            "resident_openai_prefix_cache_hits_total %llu\n"
            "# HELP resident_openai_prefix_cache_cached_tokens_total Prompt tokens restored from residentd's prefix cache instead of computed (part of prompt_tokens_total)\n"
            "# TYPE resident_openai_prefix_cache_cached_tokens_total counter\n"
            "resident_openai_prefix_cache_cached_tokens_total %llu\n"
            "# HELP resident_openai_client_disconnects_total Generations cancelled because the HTTP client went away\n"
            "# TYPE resident_openai_client_disconnects_total counter\n"
            "resident_openai_client_disconnects_total %llu\n"
            "# HELP resident_openai_requests_running Generations in flight (submitted to residentd, not yet done)\n"
            "# TYPE resident_openai_requests_running gauge\n"
            "resident_openai_requests_running %lld\n"
            "# HELP resident_openai_queue_depth Generations submitted that have not produced a token yet\n"
            "# TYPE resident_openai_queue_depth gauge\n"
            "resident_openai_queue_depth %lld\n"
            "# HELP resident_openai_daemon_sessions Open libresident sessions with residentd (in use + idle)\n"
            "# TYPE resident_openai_daemon_sessions gauge\n"
            "resident_openai_daemon_sessions %lld\n"
            "# HELP resident_openai_finished_total Generations ended, by reason\n"
            "# TYPE resident_openai_finished_total counter\n",
            (unsigned long long)prompt_tokens, (unsigned long long)generation_tokens,
            (unsigned long long)cache_hits, (unsigned long long)cached_tokens_total,
            (unsigned long long)disconnects, (long long)running, (long long)waiting, (long long)sessions);
    for (int k = 0; r == 0 && k < OAI_OUT_COUNT; k++)
        r = oai_buf_printf(o, "resident_openai_finished_total{reason=\"%s\"} %llu\n", out_names[k],
                           (unsigned long long)finished[k]);
    if (r == 0)
        r = hist_render(&ttft, o);
    if (r == 0)
        r = hist_render(&itl, o);
    if (r == 0)
        r = hist_render(&e2e, o);
    pthread_mutex_unlock(&lock);
    return r;
}
