/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "client/openai/error.h"

static void error_fill(struct oai_error *e, unsigned status, const char *type, const char *code,
                       const char *param, const char *fmt, va_list ap)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
}

int oai_error_set(struct oai_error *e, unsigned status, const char *type, const char *code,
                  const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_fill(e, status, type, code, param, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

int oai_error_invalid(struct oai_error *e, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_fill(e, 400, "invalid_request_error", NULL, param, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

int oai_error_json(const struct oai_error *e, struct oai_buf *out)
{
    struct json_object *root = json_object_new_object();
    struct json_object *err = json_object_new_object();
    if (!root || !err) {
        json_object_put(root);
        json_object_put(err);
        return -ENOMEM;
    }
    json_object_object_add(root, "error", err);
    json_object_object_add(err, "message", json_object_new_string(e->message));
    json_object_object_add(err, "type", json_object_new_string(e->type ? e->type : "server_error"));
    json_object_object_add(err, "param", e->param[0] ? json_object_new_string(e->param) : NULL);
    json_object_object_add(err, "code", e->code ? json_object_new_string(e->code) : NULL);
    const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    int r = s ? oai_buf_puts(out, s) : -ENOMEM;
    json_object_put(root);
    return r;
}
