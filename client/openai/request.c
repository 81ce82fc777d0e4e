/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client/openai/request.h"

#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
#define JSON_DEPTH 64

/* A present, non-null field (OpenAI treats null as "unset"). */
static struct json_object *field(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

static int is_number(struct json_object *v)
{
    return json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
}

/* Number in [lo, hi]; *set = 0 when absent or null. */
static int get_number(struct json_object *o, const char *key, double lo, double hi, double *out, bool *set,
                      struct oai_error *e)
{
    struct json_object *v = field(o, key);
    *set = false;
    if (!v)
        return 0;
    if (!is_number(v))
        return oai_error_invalid(e, key, "'%s' must be a number", key);
    double d = json_object_get_double(v);
    if (!isfinite(d) || d < lo || d > hi)
        return oai_error_invalid(e, key, "'%s' must be between %g and %g (got %g)", key, lo, hi, d);
    *out = d;
    *set = true;
    return 0;
}

/* Integer in [lo, hi]. A double is accepted when it is integral (5.0). */
static int get_int(struct json_object *o, const char *key, int64_t lo, int64_t hi, int64_t *out, bool *set,
                   struct oai_error *e)
{
    struct json_object *v = field(o, key);
    *set = false;
    if (!v)
        return 0;
    int64_t x;
    if (json_object_is_type(v, json_type_int)) {
        errno = 0;
        x = json_object_get_int64(v);
        /* json-c clamps out-of-range integers to INT64_MIN/MAX. */
        if (x == INT64_MAX || x == INT64_MIN)
            return oai_error_invalid(e, key, "'%s' is out of range", key);
    } else if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        if (!isfinite(d) || d != floor(d) || d < -9.0e15 || d > 9.0e15)
            return oai_error_invalid(e, key, "'%s' must be an integer", key);
        x = (int64_t)d;
    } else {
        return oai_error_invalid(e, key, "'%s' must be an integer", key);
    }
    if (x < lo || x > hi)
        return oai_error_invalid(e, key, "'%s' must be between %lld and %lld (got %lld)", key, (long long)lo,
                                 (long long)hi, (long long)x);
    *out = x;
    *set = true;
    return 0;
}

static int get_bool(struct json_object *o, const char *key, bool *out, bool *set, struct oai_error *e)
{
    struct json_object *v = field(o, key);
    *set = false;
    if (!v)
        return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return oai_error_invalid(e, key, "'%s' must be a boolean", key);
    *out = json_object_get_boolean(v);
    *set = true;
    return 0;
}

static int trailing_ws_only(const char *s, size_t len, size_t end)
{
    for (size_t i = end; i < len; i++)
        if (s[i] != ' ' && s[i] != '\n' && s[i] != '\r' && s[i] != '\t')
            return 0;
    return 1;
}

static struct json_object *parse_json(const char *body, size_t len, struct oai_error *e)
{
    if (len > INT32_MAX) {
        oai_error_set(e, 413, "invalid_request_error", NULL, NULL, "request body too large");
        return NULL;
    }
    struct json_tokener *tok = json_tokener_new_ex(JSON_DEPTH);
    if (!tok) {
        oai_error_set(e, 503, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *o = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error je = json_tokener_get_error(tok);
    if (je == json_tokener_continue) {
        /* Complete the parse: a truncated document is an error. */
        json_object_put(o);
        o = json_tokener_parse_ex(tok, "", 1);
        je = json_tokener_get_error(tok);
        if (je == json_tokener_success)
            je = json_tokener_error_parse_eof;
    }
    if (!o || je != json_tokener_success) {
        oai_error_invalid(e, NULL, "the request body is not valid JSON: %s",
                          json_tokener_error_desc(je == json_tokener_success ? json_tokener_error_parse_eof : je));
        json_object_put(o);
        o = NULL;
    } else if (!trailing_ws_only(body, len, json_tokener_get_parse_end(tok))) {
        oai_error_invalid(e, NULL, "the request body has data after the JSON document");
        json_object_put(o);
        o = NULL;
    } else if (!json_object_is_type(o, json_type_object)) {
        oai_error_invalid(e, NULL, "the request body must be a JSON object");
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

/* ---- chat messages ---- */

static int check_text_parts(struct json_object *content, const char *param, struct oai_error *e)
{
    size_t n = json_object_array_length(content);
    for (size_t k = 0; k < n; k++) {
        struct json_object *p = json_object_array_get_idx(content, k);
        struct json_object *type, *text;
        if (!json_object_is_type(p, json_type_object) || !(type = field(p, "type")) ||
            !json_object_is_type(type, json_type_string))
            return oai_error_invalid(e, param, "%s[%zu] must be an object with a string 'type'", param, k);
        if (strcmp(json_object_get_string(type), "text") != 0)
            return oai_error_invalid(e, param,
                                     "%s[%zu]: content part type '%s' is not supported (resident serves text only)",
                                     param, k, json_object_get_string(type));
        if (!(text = field(p, "text")) || !json_object_is_type(text, json_type_string))
            return oai_error_invalid(e, param, "%s[%zu].text must be a string", param, k);
    }
    return 0;
}

/* An object parses from a JSON string (vLLM json.loads the arguments; "" = {}). */
static int check_arguments(struct json_object *args, const char *param, struct oai_error *e)
{
    if (json_object_is_type(args, json_type_object))
        return 0;
    if (!json_object_is_type(args, json_type_string))
        return oai_error_invalid(e, param, "%s must be a JSON string", param);
    const char *s = json_object_get_string(args);
    size_t n = (size_t)json_object_get_string_len(args);
    if (n == 0)
        return 0;
    struct oai_error inner;
    struct json_object *o = parse_json(s, n, &inner);
    if (!o)
        return oai_error_invalid(e, param, "%s must hold a JSON object", param);
    json_object_put(o);
    return 0;
}

static int check_tool_calls(struct json_object *calls, size_t i, struct oai_error *e)
{
    char param[96];
    snprintf(param, sizeof(param), "messages[%zu].tool_calls", i);
    if (!json_object_is_type(calls, json_type_array))
        return oai_error_invalid(e, param, "%s must be an array", param);
    size_t n = json_object_array_length(calls);
    for (size_t k = 0; k < n; k++) {
        struct json_object *c = json_object_array_get_idx(calls, k);
        struct json_object *type, *fn, *name, *args, *id;
        snprintf(param, sizeof(param), "messages[%zu].tool_calls[%zu]", i, k);
        if (!json_object_is_type(c, json_type_object))
            return oai_error_invalid(e, param, "%s must be an object", param);
        if ((type = field(c, "type")) && (!json_object_is_type(type, json_type_string) ||
                                          strcmp(json_object_get_string(type), "function") != 0))
            return oai_error_invalid(e, param, "%s.type must be \"function\"", param);
        if ((id = field(c, "id")) && !json_object_is_type(id, json_type_string))
            return oai_error_invalid(e, param, "%s.id must be a string", param);
        if (!(fn = field(c, "function")) || !json_object_is_type(fn, json_type_object))
            return oai_error_invalid(e, param, "%s.function must be an object", param);
        if (!(name = field(fn, "name")) || !json_object_is_type(name, json_type_string) ||
            json_object_get_string_len(name) == 0)
            return oai_error_invalid(e, param, "%s.function.name must be a non-empty string", param);
        if ((args = field(fn, "arguments"))) {
            snprintf(param, sizeof(param), "messages[%zu].tool_calls[%zu].function.arguments", i, k);
            if (check_arguments(args, param, e) < 0)
                return -EINVAL;
        }
    }
    return 0;
}

static int check_messages(struct json_object *msgs, struct oai_error *e)
{
    if (!msgs)
        return oai_error_invalid(e, "messages", "'messages' is required");
    if (!json_object_is_type(msgs, json_type_array))
        return oai_error_invalid(e, "messages", "'messages' must be an array");
    size_t n = json_object_array_length(msgs);
    if (n == 0)
        return oai_error_invalid(e, "messages", "'messages' must not be empty");
    if (n > OAI_MESSAGES_MAX)
        return oai_error_invalid(e, "messages", "'messages' has %zu entries; at most %u", n, OAI_MESSAGES_MAX);
    for (size_t i = 0; i < n; i++) {
        struct json_object *m = json_object_array_get_idx(msgs, i);
        char param[64];
        snprintf(param, sizeof(param), "messages[%zu]", i);
        if (!json_object_is_type(m, json_type_object))
            return oai_error_invalid(e, param, "%s must be an object", param);
        struct json_object *role = field(m, "role");
        if (!role || !json_object_is_type(role, json_type_string))
            return oai_error_invalid(e, param, "%s.role must be a string", param);
        const char *r = json_object_get_string(role);
        if (strcmp(r, "developer") == 0) {
            /* OpenAI's newer name for the system role; the template knows
             * only "system". */
            json_object_object_add(m, "role", json_object_new_string("system"));
            r = "system";
        }
        int assistant = strcmp(r, "assistant") == 0;
        if (!assistant && strcmp(r, "system") != 0 && strcmp(r, "user") != 0 && strcmp(r, "tool") != 0)
            return oai_error_invalid(e, param, "%s.role '%s' is not one of system, developer, user, assistant, tool",
                                     param, r);
        struct json_object *content = field(m, "content");
        snprintf(param, sizeof(param), "messages[%zu].content", i);
        if (!content) {
            if (!assistant)
                return oai_error_invalid(e, param, "%s is required for role '%s'", param, r);
        } else if (json_object_is_type(content, json_type_array)) {
            if (check_text_parts(content, param, e) < 0)
                return -EINVAL;
        } else if (!json_object_is_type(content, json_type_string)) {
            return oai_error_invalid(e, param, "%s must be a string or an array of text parts", param);
        }
        struct json_object *v;
        if ((v = field(m, "name")) && !json_object_is_type(v, json_type_string))
            return oai_error_invalid(e, "name", "messages[%zu].name must be a string", i);
        if ((v = field(m, "tool_call_id")) && !json_object_is_type(v, json_type_string))
            return oai_error_invalid(e, "tool_call_id", "messages[%zu].tool_call_id must be a string", i);
        static const char *const rkeys[] = { "reasoning_content", "reasoning" };
        for (size_t k = 0; k < 2; k++)
            if ((v = field(m, rkeys[k])) && !json_object_is_type(v, json_type_string))
                return oai_error_invalid(e, rkeys[k], "messages[%zu].%s must be a string", i, rkeys[k]);
        if ((v = field(m, "tool_calls"))) {
            if (!assistant)
                return oai_error_invalid(e, "tool_calls", "messages[%zu]: only assistant messages carry tool_calls", i);
            if (check_tool_calls(v, i, e) < 0)
                return -EINVAL;
        }
    }
    return 0;
}

static int tool_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return 0;
    }
    return 1;
}

static int check_tools(struct json_object *tools, struct oai_error *e)
{
    if (!json_object_is_type(tools, json_type_array))
        return oai_error_invalid(e, "tools", "'tools' must be an array");
    size_t n = json_object_array_length(tools);
    if (n > OAI_TOOLS_MAX)
        return oai_error_invalid(e, "tools", "'tools' has %zu entries; at most %u", n, OAI_TOOLS_MAX);
    for (size_t i = 0; i < n; i++) {
        struct json_object *t = json_object_array_get_idx(tools, i);
        struct json_object *type, *fn, *name, *v;
        if (!json_object_is_type(t, json_type_object))
            return oai_error_invalid(e, "tools", "tools[%zu] must be an object", i);
        if (!(type = field(t, "type")) || !json_object_is_type(type, json_type_string) ||
            strcmp(json_object_get_string(type), "function") != 0)
            return oai_error_invalid(e, "tools", "tools[%zu].type must be \"function\"", i);
        if (!(fn = field(t, "function")) || !json_object_is_type(fn, json_type_object))
            return oai_error_invalid(e, "tools", "tools[%zu].function must be an object", i);
        if (!(name = field(fn, "name")) || !json_object_is_type(name, json_type_string) ||
            !tool_name_ok(json_object_get_string(name), (size_t)json_object_get_string_len(name)))
            return oai_error_invalid(e, "tools",
                                     "tools[%zu].function.name must be 1-64 characters of a-z, A-Z, 0-9, _ . -", i);
        if ((v = field(fn, "description")) && !json_object_is_type(v, json_type_string))
            return oai_error_invalid(e, "tools", "tools[%zu].function.description must be a string", i);
        if ((v = field(fn, "parameters")) && !json_object_is_type(v, json_type_object))
            return oai_error_invalid(e, "tools", "tools[%zu].function.parameters must be an object", i);
        if ((v = field(fn, "strict")) && !json_object_is_type(v, json_type_boolean))
            return oai_error_invalid(e, "tools", "tools[%zu].function.strict must be a boolean", i);
    }
    return 0;
}

/* tool_choice: "auto" and "none" are the template's business; "required"
 * and named force the call's opening by constrained decoding in residentd
 * (daemon/force.c, docs/openai.md "tool_choice"), so they travel in the
 * CHAT payload next to the tools, and a daemon that does not advertise
 * SHM_WELCOME_F_TOOL_CHOICE gets them refused before submission (job.c). */
enum tool_choice { TC_AUTO, TC_NONE, TC_REQUIRED, TC_NAMED };

static int tool_listed(struct json_object *tools, const char *name)
{
    size_t n = tools ? json_object_array_length(tools) : 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *fn = field(json_object_array_get_idx(tools, i), "function");
        struct json_object *nm = fn ? field(fn, "name") : NULL;
        if (nm && json_object_is_type(nm, json_type_string) && strcmp(json_object_get_string(nm), name) == 0)
            return 1;
    }
    return 0;
}

/* Called after check_tools(): @tools is NULL or a valid array. */
static int check_tool_choice(struct json_object *tc, struct json_object *tools, enum tool_choice *out,
                             struct oai_error *e)
{
    *out = TC_AUTO;
    if (!tc)
        return 0;
    size_t n_tools = tools ? json_object_array_length(tools) : 0;
    if (json_object_is_type(tc, json_type_string)) {
        const char *s = json_object_get_string(tc);
        if (strcmp(s, "auto") == 0)
            return 0;
        if (strcmp(s, "none") == 0) {
            *out = TC_NONE;
            return 0;
        }
        if (strcmp(s, "required") == 0) {
            if (n_tools == 0)
                return oai_error_invalid(e, "tool_choice", "tool_choice \"required\" needs a non-empty 'tools' list");
            *out = TC_REQUIRED;
            return 0;
        }
        return oai_error_invalid(e, "tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or an object");
    }
    if (!json_object_is_type(tc, json_type_object))
        return oai_error_invalid(e, "tool_choice", "tool_choice must be a string or an object");
    struct json_object *type = field(tc, "type"), *fn = field(tc, "function"), *name = NULL;
    if (!type || !json_object_is_type(type, json_type_string) || strcmp(json_object_get_string(type), "function") != 0)
        return oai_error_invalid(e, "tool_choice", "tool_choice.type must be \"function\"");
    if (!fn || !json_object_is_type(fn, json_type_object) || !(name = field(fn, "name")) ||
        !json_object_is_type(name, json_type_string))
        return oai_error_invalid(e, "tool_choice", "tool_choice.function.name must be a string");
    if (!tool_listed(tools, json_object_get_string(name)))
        return oai_error_invalid(e, "tool_choice", "tool_choice names function '%.64s', which is not in 'tools'",
                                 json_object_get_string(name));
    *out = TC_NAMED;
    return 0;
}

/* ---- shared sampling fields ---- */

static int parse_stop(struct json_object *o, struct oai_request *r, struct oai_error *e)
{
    struct json_object *stop = field(o, "stop");
    if (stop) {
        size_t n = 1;
        int arr = json_object_is_type(stop, json_type_array);
        if (arr)
            n = json_object_array_length(stop);
        else if (!json_object_is_type(stop, json_type_string))
            return oai_error_invalid(e, "stop", "'stop' must be a string or an array of strings");
        if (n > OAI_STOP_MAX)
            return oai_error_invalid(e, "stop", "'stop' has %zu entries; at most %u", n, OAI_STOP_MAX);
        for (size_t i = 0; i < n; i++) {
            struct json_object *s = arr ? json_object_array_get_idx(stop, i) : stop;
            if (!json_object_is_type(s, json_type_string))
                return oai_error_invalid(e, "stop", "'stop' entries must be strings");
            size_t len = (size_t)json_object_get_string_len(s);
            if (len == 0 || len > OAI_STOP_LEN_MAX)
                return oai_error_invalid(e, "stop", "stop strings must be 1-%u bytes", OAI_STOP_LEN_MAX);
            if (memchr(json_object_get_string(s), 0, len))
                return oai_error_invalid(e, "stop", "stop strings must not contain NUL");
            r->stops[r->n_stops] = strdup(json_object_get_string(s));
            if (!r->stops[r->n_stops])
                return -ENOMEM;
            r->n_stops++;
        }
    }
    struct json_object *ids = field(o, "stop_token_ids");
    if (ids) {
        if (!json_object_is_type(ids, json_type_array))
            return oai_error_invalid(e, "stop_token_ids", "'stop_token_ids' must be an array of integers");
        size_t n = json_object_array_length(ids);
        if (n > OAI_STOP_IDS_MAX)
            return oai_error_invalid(e, "stop_token_ids", "'stop_token_ids' has %zu entries; at most %u", n,
                                     OAI_STOP_IDS_MAX);
        for (size_t i = 0; i < n; i++) {
            struct json_object *v = json_object_array_get_idx(ids, i);
            int64_t x = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
            if (x < 0 || x > UINT32_MAX)
                return oai_error_invalid(e, "stop_token_ids", "'stop_token_ids' entries must be token ids");
            r->stop_ids[r->n_stop_ids++] = (uint32_t)x;
        }
    }
    return 0;
}

/* Fields resident cannot honour: accepted at their neutral value only. */
static int refuse_unsupported(struct json_object *o, enum oai_api api, struct oai_error *e)
{
    int64_t i;
    bool set, b;
    if (get_int(o, "n", 1, 128, &i, &set, e) < 0)
        return -EINVAL;
    if (set && i != 1)
        return oai_error_invalid(e, "n", "only n = 1 is supported (one choice per request)");
    if (api == OAI_API_CHAT) {
        if (get_bool(o, "logprobs", &b, &set, e) < 0)
            return -EINVAL;
        if (set && b)
            return oai_error_invalid(e, "logprobs", "logprobs are not supported: residentd does not expose them");
        if (get_int(o, "top_logprobs", 0, 20, &i, &set, e) < 0)
            return -EINVAL;
        if (set && i > 0)
            return oai_error_invalid(e, "top_logprobs", "logprobs are not supported: residentd does not expose them");
    } else {
        if (get_int(o, "logprobs", 0, 5, &i, &set, e) < 0)
            return -EINVAL;
        if (set && i > 0)
            return oai_error_invalid(e, "logprobs", "logprobs are not supported: residentd does not expose them");
        if (get_bool(o, "echo", &b, &set, e) < 0)
            return -EINVAL;
        if (set && b)
            return oai_error_invalid(e, "echo", "echo is not supported");
        if (get_int(o, "best_of", 1, 128, &i, &set, e) < 0)
            return -EINVAL;
        if (set && i != 1)
            return oai_error_invalid(e, "best_of", "only best_of = 1 is supported");
        struct json_object *suffix = field(o, "suffix");
        if (suffix && (!json_object_is_type(suffix, json_type_string) || json_object_get_string_len(suffix) > 0))
            return oai_error_invalid(e, "suffix", "suffix is not supported");
    }
    struct json_object *bias = field(o, "logit_bias");
    if (bias) {
        if (!json_object_is_type(bias, json_type_object))
            return oai_error_invalid(e, "logit_bias", "'logit_bias' must be an object");
        if (json_object_object_length(bias) > 0)
            return oai_error_invalid(e, "logit_bias", "logit_bias is not supported by residentd's sampler");
    }
    struct json_object *rf = field(o, "response_format");
    if (rf) {
        struct json_object *t;
        if (!json_object_is_type(rf, json_type_object) || !(t = field(rf, "type")) ||
            !json_object_is_type(t, json_type_string))
            return oai_error_invalid(e, "response_format", "'response_format' must be an object with a string 'type'");
        if (strcmp(json_object_get_string(t), "text") != 0)
            return oai_error_invalid(e, "response_format",
                                     "response_format '%s' is not supported: it needs constrained decoding",
                                     json_object_get_string(t));
    }
    return 0;
}

static int parse_sampling(struct json_object *o, const struct oai_defaults *df, struct oai_request *r,
                          struct oai_error *e)
{
    struct resident_request *q = &r->params;
    double d;
    int64_t i;
    bool set;
    /* Precedence: the request, then --generation-config, then the model's
     * own generation_config.json, which residentd applies to every field
     * still marked in model_defaults. */
    q->model_defaults = RESIDENT_DEFAULT_ALL;
    if (df) {
        if (df->has_temperature) {
            q->temperature = df->temperature;
            q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_TEMPERATURE;
        }
        if (df->has_top_p) {
            q->top_p = df->top_p;
            q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_TOP_P;
        }
        if (df->has_top_k) {
            q->top_k = df->top_k;
            q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_TOP_K;
        }
        if (df->has_min_p) {
            q->min_p = df->min_p;
            q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_MIN_P;
        }
        if (df->has_repetition_penalty) {
            q->repeat_penalty = df->repetition_penalty;
            q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_REPEAT_PENALTY;
        }
        if (df->has_presence_penalty) {
            q->presence_penalty = df->presence_penalty;
            q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_PRESENCE_PENALTY;
        }
    }
    if (get_number(o, "temperature", 0.0, 2.0, &d, &set, e) < 0)
        return -EINVAL;
    if (set) {
        q->temperature = (float)d;
        q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_TEMPERATURE;
    }
    if (get_number(o, "top_p", 0.0, 1.0, &d, &set, e) < 0)
        return -EINVAL;
    if (set) {
        if (d <= 0.0)
            return oai_error_invalid(e, "top_p", "'top_p' must be greater than 0");
        q->top_p = (float)d;
        q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_TOP_P;
    }
    if (get_int(o, "top_k", -1, 1 << 20, &i, &set, e) < 0)
        return -EINVAL;
    if (set) {
        q->top_k = i <= 0 ? 0 : (uint32_t)i;    /* vLLM: -1 (and 0) = off */
        q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_TOP_K;
    }
    if (get_number(o, "min_p", 0.0, 1.0, &d, &set, e) < 0)
        return -EINVAL;
    if (set) {
        q->min_p = (float)d;
        q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_MIN_P;
    }
    if (get_number(o, "repetition_penalty", 0.0, 10.0, &d, &set, e) < 0)
        return -EINVAL;
    if (set) {
        if (d <= 0.0)
            return oai_error_invalid(e, "repetition_penalty", "'repetition_penalty' must be greater than 0");
        q->repeat_penalty = (float)d;
        q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_REPEAT_PENALTY;
    }
    /* OpenAI's range; residentd's sampler subtracts presence once for a
     * token already generated and frequency x its count (as vLLM). */
    if (get_number(o, "presence_penalty", -2.0, 2.0, &d, &set, e) < 0)
        return -EINVAL;
    if (set) {
        q->presence_penalty = (float)d;
        q->model_defaults &= ~(uint32_t)RESIDENT_DEFAULT_PRESENCE_PENALTY;
    }
    if (get_number(o, "frequency_penalty", -2.0, 2.0, &d, &set, e) < 0)
        return -EINVAL;
    if (set)
        q->frequency_penalty = (float)d;
    if (get_int(o, "seed", INT64_MIN + 1, INT64_MAX - 1, &i, &set, e) < 0)
        return -EINVAL;
    if (set) {
        q->seed = (uint64_t)i;
        r->seed_set = true;
    } else if (getrandom(&q->seed, sizeof(q->seed), GRND_NONBLOCK) != sizeof(q->seed)) {
        /* An unseeded request must not repeat the previous one's sample. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        q->seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
    }
    bool set2;
    int64_t i2;
    if (get_int(o, "max_tokens", 1, UINT32_MAX, &i, &set, e) < 0)
        return -EINVAL;
    if (get_int(o, "max_completion_tokens", 1, UINT32_MAX, &i2, &set2, e) < 0)
        return -EINVAL;
    if (set2)
        q->max_tokens = (uint32_t)i2;
    else if (set)
        q->max_tokens = (uint32_t)i;
    bool b;
    if (get_bool(o, "ignore_eos", &b, &set, e) < 0)
        return -EINVAL;
    if (set && b)
        q->flags |= RESIDENT_REQ_IGNORE_EOS;
    if (parse_stop(o, r, e) < 0)
        return -EINVAL;
    q->stop_strings = (const char *const *)r->stops;
    q->n_stop_strings = r->n_stops;
    q->stop_ids = r->stop_ids;
    q->n_stop_ids = r->n_stop_ids;
    return 0;
}

static int parse_stream(struct json_object *o, struct oai_request *r, struct oai_error *e)
{
    bool set;
    if (get_bool(o, "stream", &r->stream, &set, e) < 0)
        return -EINVAL;
    struct json_object *so = field(o, "stream_options");
    if (!so)
        return 0;
    if (!json_object_is_type(so, json_type_object))
        return oai_error_invalid(e, "stream_options", "'stream_options' must be an object");
    if (!r->stream)
        return oai_error_invalid(e, "stream_options", "'stream_options' is only allowed when 'stream' is true");
    bool b;
    if (get_bool(so, "include_usage", &b, &set, e) < 0)
        return -EINVAL;
    r->include_usage = set && b;
    return 0;
}

/* ---- endpoints ---- */

static int chat_payload(struct json_object *o, struct oai_request *r, struct oai_error *e)
{
    struct json_object *msgs = field(o, "messages");
    if (check_messages(msgs, e) < 0)
        return -EINVAL;
    struct json_object *tools = field(o, "tools");
    if (tools && check_tools(tools, e) < 0)
        return -EINVAL;
    enum tool_choice tc;
    if (check_tool_choice(field(o, "tool_choice"), tools, &tc, e) < 0)
        return -EINVAL;
    r->forced_tool = tc == TC_REQUIRED || tc == TC_NAMED;
    bool b, set;
    if (get_bool(o, "parallel_tool_calls", &b, &set, e) < 0)
        return -EINVAL;
    struct json_object *kw = field(o, "chat_template_kwargs");
    struct json_object *fkw = json_object_new_object();
    if (!fkw)
        return -ENOMEM;
    r->thinking = true;
    if (kw) {
        if (!json_object_is_type(kw, json_type_object)) {
            json_object_put(fkw);
            return oai_error_invalid(e, "chat_template_kwargs", "'chat_template_kwargs' must be an object");
        }
        static const char *const keys[] = { "enable_thinking", "preserve_thinking" };
        for (size_t k = 0; k < 2; k++) {
            if (get_bool(kw, keys[k], &b, &set, e) < 0) {
                json_object_put(fkw);
                return -EINVAL;
            }
            if (set) {
                json_object_object_add(fkw, keys[k], json_object_new_boolean(b));
                if (k == 0)
                    r->thinking = b;
            }
        }
    }
    struct json_object *p = json_object_new_object();
    if (!p) {
        json_object_put(fkw);
        return -ENOMEM;
    }
    json_object_object_add(p, "messages", json_object_get(msgs));
    /* tool_choice "none": the tools are left out of the prompt (vLLM's
     * --exclude-tools-when-tool-choice-none), so the model is not invited
     * to call and residentd's tool parser has nothing to match. */
    if (tools && json_object_array_length(tools) > 0 && tc != TC_NONE) {
        json_object_object_add(p, "tools", json_object_get(tools));
        json_object_object_add(p, "tool_choice", tc == TC_AUTO ? json_object_new_string("auto")
                                                               : json_object_get(field(o, "tool_choice")));
    }
    /* The engine's renderer reads "chat_template_kwargs" (vLLM's name);
     * resident.h documents "template_kwargs". Both carry the same object
     * until the two agree. */
    json_object_object_add(p, "template_kwargs", json_object_get(fkw));
    json_object_object_add(p, "chat_template_kwargs", fkw);
    size_t len = 0;
    const char *s = json_object_to_json_string_length(p, JSON_FLAGS, &len);
    r->payload = s ? strndup(s, len) : NULL;
    r->payload_len = len;
    json_object_put(p);
    return r->payload ? 0 : -ENOMEM;
}

static int completion_prompt(struct json_object *o, struct oai_request *r, struct oai_error *e)
{
    struct json_object *p = field(o, "prompt");
    if (!p)
        return oai_error_invalid(e, "prompt", "'prompt' is required");
    if (json_object_is_type(p, json_type_array)) {
        size_t n = json_object_array_length(p);
        if (n == 0)
            return oai_error_invalid(e, "prompt", "'prompt' must not be empty");
        struct json_object *first = json_object_array_get_idx(p, 0);
        if (json_object_is_type(first, json_type_string) || json_object_is_type(first, json_type_array)) {
            if (n != 1)
                return oai_error_invalid(e, "prompt", "batched prompts are not supported; send one prompt per request");
            p = first;
        }
    }
    if (json_object_is_type(p, json_type_string)) {
        size_t n = (size_t)json_object_get_string_len(p);
        if (n == 0)
            return oai_error_invalid(e, "prompt", "'prompt' must not be empty");
        r->payload = strndup(json_object_get_string(p), n);
        r->payload_len = n;
        return r->payload ? 0 : -ENOMEM;
    }
    if (!json_object_is_type(p, json_type_array))
        return oai_error_invalid(e, "prompt", "'prompt' must be a string, an array of token ids, or an array of one of those");
    size_t n = json_object_array_length(p);
    if (n == 0)
        return oai_error_invalid(e, "prompt", "'prompt' must not be empty");
    r->prompt_ids = calloc(n, sizeof(uint32_t));
    if (!r->prompt_ids)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct json_object *v = json_object_array_get_idx(p, i);
        int64_t x = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
        if (x < 0 || x > UINT32_MAX)
            return oai_error_invalid(e, "prompt", "prompt[%zu] is not a token id", i);
        r->prompt_ids[i] = (uint32_t)x;
    }
    r->n_prompt_ids = n;
    return 0;
}

int oai_request_parse(enum oai_api api, const char *body, size_t len, const struct oai_defaults *defaults,
                      struct oai_request *r, struct oai_error *e)
{
    memset(r, 0, sizeof(*r));
    r->api = api;
    resident_request_init(&r->params);
    struct json_object *o = parse_json(body, len, e);
    if (!o)
        return -EINVAL;
    int ret = 0;
    struct json_object *model = field(o, "model");
    if (model) {
        if (!json_object_is_type(model, json_type_string)) {
            ret = oai_error_invalid(e, "model", "'model' must be a string");
            goto out;
        }
        r->model = strdup(json_object_get_string(model));
        if (!r->model) {
            ret = -ENOMEM;
            goto out;
        }
    }
    if ((ret = parse_stream(o, r, e)) < 0 || (ret = refuse_unsupported(o, api, e)) < 0 ||
        (ret = parse_sampling(o, defaults, r, e)) < 0)
        goto out;
    ret = api == OAI_API_CHAT ? chat_payload(o, r, e) : completion_prompt(o, r, e);
out:
    json_object_put(o);
    if (ret == -ENOMEM)
        oai_error_set(e, 503, "server_error", NULL, NULL, "out of memory");
    return ret;
}

void oai_request_free(struct oai_request *r)
{
    free(r->model);
    for (uint32_t i = 0; i < r->n_stops; i++)
        free(r->stops[i]);
    free(r->payload);
    free(r->prompt_ids);
    memset(r, 0, sizeof(*r));
}

int oai_defaults_load(const char *path, struct oai_defaults *d, char *why, size_t whylen)
{
    memset(d, 0, sizeof(*d));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        snprintf(why, whylen, "%s: %s", path, strerror(err));
        return -err;
    }
    char buf[65536];
    size_t n = 0;
    for (;;) {
        ssize_t k = read(fd, buf + n, sizeof(buf) - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int err = errno;
            close(fd);
            snprintf(why, whylen, "%s: %s", path, strerror(err));
            return -err;
        }
        if (k == 0)
            break;
        n += (size_t)k;
        if (n == sizeof(buf)) {
            close(fd);
            snprintf(why, whylen, "%s: larger than 64 KiB", path);
            return -EFBIG;
        }
    }
    close(fd);
    struct oai_error e;
    struct json_object *o = parse_json(buf, n, &e);
    if (!o) {
        snprintf(why, whylen, "%s: %s", path, e.message);
        return -EINVAL;
    }
    int ret = -EINVAL;
    double x;
    int64_t i;
    bool set, b;
    if (get_number(o, "temperature", 0.0, 100.0, &x, &set, &e) < 0)
        goto bad;
    if ((d->has_temperature = set))
        d->temperature = (float)x;
    if (get_number(o, "top_p", 0.0, 1.0, &x, &set, &e) < 0)
        goto bad;
    if ((d->has_top_p = set && x > 0))
        d->top_p = (float)x;
    if (get_int(o, "top_k", -1, 1 << 20, &i, &set, &e) < 0)
        goto bad;
    if ((d->has_top_k = set))
        d->top_k = i <= 0 ? 0 : (uint32_t)i;
    if (get_number(o, "min_p", 0.0, 1.0, &x, &set, &e) < 0)
        goto bad;
    if ((d->has_min_p = set))
        d->min_p = (float)x;
    if (get_number(o, "repetition_penalty", 0.0, 10.0, &x, &set, &e) < 0)
        goto bad;
    if ((d->has_repetition_penalty = set && x > 0))
        d->repetition_penalty = (float)x;
    if (get_number(o, "presence_penalty", -2.0, 2.0, &x, &set, &e) < 0)
        goto bad;
    if ((d->has_presence_penalty = set))
        d->presence_penalty = (float)x;
    /* transformers: do_sample false = greedy, whatever temperature says. */
    if (get_bool(o, "do_sample", &b, &set, &e) < 0)
        goto bad;
    if (set && !b) {
        d->has_temperature = true;
        d->temperature = 0.0f;
    }
    ret = 0;
bad:
    if (ret < 0)
        snprintf(why, whylen, "%s: %s", path, e.message);
    json_object_put(o);
    return ret;
}
