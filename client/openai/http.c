/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The HTTP side: routing, auth, body limits, error JSON, and the
 * suspend/resume dance with the runner (gateway.h).
 */
#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/openai/gateway.h"
#include "client/resident.h"

#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

/* Per HTTP request (MHD's con_cls). */
struct conn_state {
    enum oai_endpoint ep;
    struct oai_buf    body;
    bool              too_big;
    bool              answered;
    struct oai_job   *job;
};

static enum MHD_Result send_buf(struct MHD_Connection *c, struct conn_state *cs, unsigned status,
                                const char *ctype, const char *body, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, cs->ep == OAI_EP_CHAT || cs->ep == OAI_EP_COMPLETIONS
                                                                 ? "POST" : "GET");
    enum MHD_Result r = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    cs->answered = true;
    oai_metrics_request(cs->ep, status);
    return r;
}

static enum MHD_Result send_error(struct MHD_Connection *c, struct conn_state *cs, const struct oai_error *e)
{
    struct oai_buf b = { 0 };
    if (oai_error_json(e, &b) < 0) {
        oai_buf_free(&b);
        return MHD_NO;
    }
    enum MHD_Result r = send_buf(c, cs, e->status, "application/json", b.p, b.len);
    oai_buf_free(&b);
    return r;
}

static enum MHD_Result send_json(struct MHD_Connection *c, struct conn_state *cs, unsigned status,
                                 struct json_object *o)
{
    if (!o)
        return MHD_NO;
    size_t len = 0;
    const char *s = json_object_to_json_string_length(o, JSON_FLAGS, &len);
    enum MHD_Result r = s ? send_buf(c, cs, status, "application/json", s, len) : MHD_NO;
    json_object_put(o);
    return r;
}

static enum oai_endpoint route(const char *url)
{
    if (strcmp(url, "/v1/chat/completions") == 0)
        return OAI_EP_CHAT;
    if (strcmp(url, "/v1/completions") == 0)
        return OAI_EP_COMPLETIONS;
    if (strcmp(url, "/v1/models") == 0 || strncmp(url, "/v1/models/", 11) == 0)
        return OAI_EP_MODELS;
    if (strcmp(url, "/health") == 0)
        return OAI_EP_HEALTH;
    if (strcmp(url, "/metrics") == 0)
        return OAI_EP_METRICS;
    return OAI_EP_OTHER;
}

/* Constant-time: the comparison must not leak the key's prefix. */
static bool auth_ok(const struct oai_gateway *gw, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    size_t n = strlen(h);
    unsigned char diff = n != gw->api_key_len;
    for (size_t i = 0; i < gw->api_key_len; i++)
        diff |= (unsigned char)(gw->api_key[i] ^ (i < n ? h[i] : 0));
    return diff == 0;
}

static const char *model_id(const struct oai_gateway *gw)
{
    return gw->model_name;
}

static enum MHD_Result do_models(struct MHD_Connection *c, struct conn_state *cs, struct oai_gateway *gw,
                                 const char *url)
{
    /* GET /v1/models/{id}: the id may hold '/' (Qwen/...). */
    const char *one = strlen(url) > 11 ? url + 11 : NULL;
    if (one && strcmp(one, model_id(gw)) != 0) {
        struct oai_error e;
        oai_error_set(&e, 404, "invalid_request_error", "model_not_found", "model",
                      "The model `%.200s` does not exist; this server serves `%.200s`", one, model_id(gw));
        return send_error(c, cs, &e);
    }
    struct json_object *o = json_object_new_object();
    struct json_object *data = json_object_new_array();
    struct json_object *m = json_object_new_object();
    if (!o || !data || !m) {
        json_object_put(o);
        json_object_put(data);
        json_object_put(m);
        return MHD_NO;
    }
    json_object_object_add(m, "id", json_object_new_string(model_id(gw)));
    json_object_object_add(m, "object", json_object_new_string("model"));
    json_object_object_add(m, "created", json_object_new_int64(gw->started));
    json_object_object_add(m, "owned_by", json_object_new_string("resident"));
    pthread_mutex_lock(&gw->lock);
    if (gw->generator[0]) {
        /* Say so when the tokens are synthetic (no model loaded). */
        json_object_object_add(m, "resident_generator", json_object_new_string(gw->generator));
        json_object_object_add(m, "resident_synthetic", json_object_new_boolean(gw->synthetic));
    }
    pthread_mutex_unlock(&gw->lock);
    if (one) {
        json_object_put(o);
        json_object_put(data);
        return send_json(c, cs, 200, m);
    }
    json_object_array_add(data, m);
    json_object_object_add(o, "object", json_object_new_string("list"));
    json_object_object_add(o, "data", data);
    return send_json(c, cs, 200, o);
}

static enum MHD_Result do_health(struct MHD_Connection *c, struct conn_state *cs, struct oai_gateway *gw)
{
    char why[400];
    if (atomic_load(&gw->stopping)) {
        struct oai_error e;
        oai_error_set(&e, 503, "server_error", "service_unavailable", NULL, "resident-openai is stopping");
        return send_error(c, cs, &e);
    }
    if (oai_gateway_probe(gw, why, sizeof(why)) < 0) {
        struct oai_error e;
        oai_error_set(&e, 503, "server_error", "service_unavailable", NULL, "%s", why);
        return send_error(c, cs, &e);
    }
    struct json_object *o = json_object_new_object();
    if (!o)
        return MHD_NO;
    json_object_object_add(o, "status", json_object_new_string("ok"));
    pthread_mutex_lock(&gw->lock);
    json_object_object_add(o, "generator", json_object_new_string(gw->generator));
    json_object_object_add(o, "synthetic", json_object_new_boolean(gw->synthetic));
    pthread_mutex_unlock(&gw->lock);
    return send_json(c, cs, 200, o);
}

static enum MHD_Result do_metrics(struct MHD_Connection *c, struct conn_state *cs)
{
    struct oai_buf b = { 0 };
    int r = oai_metrics_render(&b);
    enum MHD_Result ret = r == 0 ? send_buf(c, cs, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len)
                                 : MHD_NO;
    oai_buf_free(&b);
    return ret;
}

/* ---- generations ---- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct oai_job *j = cls;
    pthread_mutex_lock(&j->lock);
    ssize_t n;
    if (j->st.out.len) {
        size_t k = j->st.out.len < max ? j->st.out.len : max;
        memcpy(buf, j->st.out.p, k);
        oai_buf_consume(&j->st.out, k);
        if (j->st.out.len < OAI_SSE_LOW)
            pthread_cond_broadcast(&j->cond);
        n = (ssize_t)k;
    } else if (j->done) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing to send yet: park the connection until the runner has
         * more (returning 0 without suspending would spin). */
        j->suspended = true;
        MHD_suspend_connection(j->conn);
        n = 0;
    }
    pthread_mutex_unlock(&j->lock);
    return n;
}

static void sse_free(void *cls)
{
    oai_job_unref(cls);
}

static void add_common_headers(struct MHD_Response *resp, struct oai_gateway *gw)
{
    pthread_mutex_lock(&gw->lock);
    if (gw->generator[0])
        MHD_add_response_header(resp, "X-Resident-Generator", gw->generator);
    pthread_mutex_unlock(&gw->lock);
}

/* The runner woke us (or this is the first look): answer if we can. */
static enum MHD_Result gen_continue(struct MHD_Connection *c, struct conn_state *cs)
{
    struct oai_job *j = cs->job;
    struct oai_gateway *gw = j->gw;
    pthread_mutex_lock(&j->lock);
    if (j->failed) {
        struct oai_error e = j->err;
        pthread_mutex_unlock(&j->lock);
        return send_error(c, cs, &e);
    }
    if (j->done) {
        struct oai_error e;
        if (j->st.proto_err[0]) {
            oai_error_set(&e, 502, "server_error", NULL, NULL, "%s", j->st.proto_err);
            pthread_mutex_unlock(&j->lock);
            return send_error(c, cs, &e);
        }
        if (oai_finish_failed(&j->fin, j->req.api, &e) && !(j->req.stream && j->started)) {
            pthread_mutex_unlock(&j->lock);
            return send_error(c, cs, &e);
        }
    }
    if (j->req.stream && (j->started || j->done)) {
        oai_stream_begin(&j->st);
        j->refs++;      /* the response's reader */
        pthread_mutex_unlock(&j->lock);
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, j,
                                                                      sse_free);
        if (!resp) {
            oai_job_unref(j);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        add_common_headers(resp, gw);
        enum MHD_Result r = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        cs->answered = true;
        oai_metrics_request(cs->ep, 200);
        return r;
    }
    if (!j->req.stream && j->done) {
        struct oai_buf b = { 0 };
        int rc = oai_stream_body(&j->st, &j->fin, &b);
        pthread_mutex_unlock(&j->lock);
        if (rc < 0) {
            oai_buf_free(&b);
            return MHD_NO;
        }
        struct MHD_Response *resp = MHD_create_response_from_buffer(b.len, b.p, MHD_RESPMEM_MUST_COPY);
        oai_buf_free(&b);
        if (!resp)
            return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        add_common_headers(resp, gw);
        enum MHD_Result r = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        cs->answered = true;
        oai_metrics_request(cs->ep, 200);
        return r;
    }
    /* Not yet: wait for the runner. */
    j->suspended = true;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&j->lock);
    return MHD_YES;
}

static enum MHD_Result gen_start(struct MHD_Connection *c, struct conn_state *cs, struct oai_gateway *gw)
{
    enum oai_api api = cs->ep == OAI_EP_CHAT ? OAI_API_CHAT : OAI_API_COMPLETION;
    struct oai_error e;
    if (cs->too_big) {
        oai_error_set(&e, 413, "invalid_request_error", NULL, NULL, "the request body exceeds %zu bytes", gw->max_body);
        return send_error(c, cs, &e);
    }
    if (atomic_load(&gw->stopping)) {
        oai_error_set(&e, 503, "server_error", "service_unavailable", NULL, "resident-openai is stopping");
        return send_error(c, cs, &e);
    }
    struct oai_job *j = calloc(1, sizeof(*j));
    if (!j)
        return MHD_NO;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cond, NULL);
    j->refs = 1;        /* the connection */
    j->gw = gw;
    j->ep = cs->ep;
    j->conn_fd = -1;
    j->t0_ns = oai_now_ns();
    int rc = oai_request_parse(api, cs->body.p ? cs->body.p : "", cs->body.len,
                               gw->has_defaults ? &gw->defaults : NULL, &j->req, &e);
    oai_buf_free(&cs->body);
    if (rc == 0 && j->req.model && strcmp(j->req.model, model_id(gw)) != 0)
        rc = oai_error_set(&e, 404, "invalid_request_error", "model_not_found", "model",
                           "The model `%.200s` does not exist; this server serves `%.200s`", j->req.model,
                           model_id(gw));
    if (rc == 0 && atomic_fetch_add(&gw->active, 1) >= gw->max_concurrent) {
        atomic_fetch_sub(&gw->active, 1);
        rc = oai_error_set(&e, 429, "rate_limit_error", "rate_limit_exceeded", NULL,
                           "too many concurrent requests (limit %u); retry later", gw->max_concurrent);
    }
    if (rc < 0) {
        /* Never started: the job has no other owner. */
        oai_job_unref(j);
        return send_error(c, cs, &e);
    }
    cs->job = j;
    char id[64];
    unsigned char rnd[12];
    if (getentropy(rnd, sizeof(rnd)) != 0)
        memset(rnd, 0, sizeof(rnd));
    int k = snprintf(id, sizeof(id), "%s", api == OAI_API_CHAT ? "chatcmpl-" : "cmpl-");
    for (size_t i = 0; i < sizeof(rnd); i++)
        k += snprintf(id + k, sizeof(id) - (size_t)k, "%02x", rnd[i]);
    /* system_fingerprint is filled in by the runner once its session says
     * which generator residentd runs. */
    struct oai_stream_params sp = {
        .api = api, .stream = j->req.stream, .include_usage = j->req.include_usage, .id = id,
        .model = model_id(gw), .created = (long long)time(NULL), .fingerprint = NULL,
    };
    oai_stream_init(&j->st, &sp);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->conn_fd = ci ? ci->connect_fd : -1;
    j->conn = c;
    pthread_mutex_lock(&j->lock);
    /* Suspend before the runner can want to resume us. */
    j->suspended = true;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&j->lock);
    if (oai_job_start(j) < 0) {
        atomic_fetch_sub(&gw->active, 1);
        oai_error_set(&e, 503, "server_error", "service_unavailable", NULL, "cannot start a runner thread");
        pthread_mutex_lock(&j->lock);
        j->released = true;
        j->failed = true;
        j->err = e;
        oai_job_wake(j);
        pthread_mutex_unlock(&j->lock);
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    struct oai_listener *l = cls;
    struct oai_gateway *gw = l->gw;
    struct conn_state *cs = *con_cls;
    struct oai_error e;
    if (!cs) {
        cs = calloc(1, sizeof(*cs));
        if (!cs)
            return MHD_NO;
        *con_cls = cs;
        cs->ep = route(url);
        bool post = cs->ep == OAI_EP_CHAT || cs->ep == OAI_EP_COMPLETIONS;
        if (cs->ep == OAI_EP_OTHER) {
            oai_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no route for %.100s %.200s", method, url);
            return send_error(c, cs, &e);
        }
        if (strcmp(method, post ? "POST" : "GET") != 0 && !(strcmp(method, "HEAD") == 0 && !post)) {
            oai_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                          "%.200s takes %s", url, post ? "POST" : "GET");
            return send_error(c, cs, &e);
        }
        /* /health and /metrics stay open for probes and scrapers (loopback). */
        if (l->need_auth && gw->api_key && (post || cs->ep == OAI_EP_MODELS) && !auth_ok(gw, c)) {
            oai_error_set(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                          "missing or incorrect API key (Authorization: Bearer ...)");
            return send_error(c, cs, &e);
        }
        if (post) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl) {
                char *end;
                errno = 0;
                unsigned long long v = strtoull(cl, &end, 10);
                if (errno || *end || v > gw->max_body) {
                    oai_error_set(&e, 413, "invalid_request_error", NULL, NULL,
                                  "the request body exceeds %zu bytes", gw->max_body);
                    return send_error(c, cs, &e);
                }
            }
            return MHD_YES;
        }
        if (cs->ep == OAI_EP_MODELS)
            return do_models(c, cs, gw, url);
        if (cs->ep == OAI_EP_HEALTH)
            return do_health(c, cs, gw);
        return do_metrics(c, cs);
    }
    if (cs->answered) {
        /* Body of a request already refused: discard it. */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->too_big && (*upload_size > gw->max_body - cs->body.len || cs->body.len > gw->max_body))
            cs->too_big = true;
        if (cs->too_big)
            oai_buf_free(&cs->body);
        else if (oai_buf_append(&cs->body, upload, *upload_size) < 0)
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (cs->job)
        return gen_continue(c, cs);
    return gen_start(c, cs, gw);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    struct conn_state *cs = *con_cls;
    if (!cs)
        return;
    *con_cls = NULL;
    struct oai_job *j = cs->job;
    if (j) {
        pthread_mutex_lock(&j->lock);
        j->conn = NULL;
        j->conn_fd = -1;
        if (!j->done && !j->cancel) {
            /* The client went away before the end: cancel in residentd. */
            j->cancel = true;
            if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                oai_metrics_disconnect();
        }
        pthread_cond_broadcast(&j->cond);
        pthread_mutex_unlock(&j->lock);
        oai_job_unref(j);
    }
    oai_buf_free(&cs->body);
    free(cs);
}

static void on_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    fputs("resident-openai: http: ", stderr);
    vfprintf(stderr, fmt, ap);
}

int oai_http_start(struct oai_listener *l, int listen_fd)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    l->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_access, l,
                              MHD_OPTION_EXTERNAL_LOGGER, on_log, NULL,
                              MHD_OPTION_LISTEN_SOCKET, listen_fd,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                              MHD_OPTION_END);
    return l->mhd ? 0 : -EIO;
}

void oai_http_quiesce(struct oai_listener *l)
{
    if (l->mhd)
        MHD_quiesce_daemon(l->mhd);
}

void oai_http_drain(struct oai_listener *l, int timeout_ms)
{
    /* Finished generations may still have queued SSE data (the rest of the
     * stream, the error event and [DONE]) that libmicrohttpd sends as the
     * client reads; stopping the daemon now would cut those responses. Wait
     * for open connections to go, bounded (idle keep-alive clients would
     * otherwise hold the shutdown). */
    if (!l->mhd)
        return;
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        const union MHD_DaemonInfo *info =
            MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (!info || info->num_connections == 0)
            return;
        struct timespec ts = { 0, 10 * 1000000L };
        nanosleep(&ts, NULL);
    }
}

void oai_http_stop(struct oai_listener *l)
{
    if (l->mhd)
        MHD_stop_daemon(l->mhd);
    l->mhd = NULL;
}
