/* SPDX-License-Identifier: Apache-2.0 */
#include "engine/json-util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int ejson_read_file(int dirfd, const char *name, const char *what, size_t max,
                    char **out, size_t *out_len, struct engine_error *err)
{
    *out = NULL;
    *out_len = 0;

    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s: cannot open: %s", what, strerror(e));
    }

    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return engine_error_set(err, -e, "%s: cannot stat: %s", what, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return engine_error_set(err, -EINVAL, "%s: not a regular file", what);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > max) {
        close(fd);
        return engine_error_set(err, -EFBIG,
                                "%s: %lld bytes exceeds the %zu byte limit for this file",
                                what, (long long)st.st_size, max);
    }

    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return engine_error_set(err, -ENOMEM, "%s: out of memory for %zu bytes", what, size);
    }

    /* Read exactly the size fstat reported; a file that shrinks meanwhile is
     * an error, one that grows is read up to the size seen. */
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return engine_error_set(err, -e, "%s: read failed: %s", what, strerror(e));
        }
        if (n == 0) {
            free(buf);
            close(fd);
            return engine_error_set(err, -EIO, "%s: file shrank while reading (%zu of %zu bytes)",
                                    what, got, size);
        }
        got += (size_t)n;
    }
    close(fd);
    buf[size] = '\0';
    *out = buf;
    *out_len = size;
    return 0;
}

int ejson_parse(const char *text, size_t len, int max_depth, const char *what,
                struct json_object **out, struct engine_error *err)
{
    *out = NULL;
    if (len > (size_t)INT_MAX)
        return engine_error_set(err, -EFBIG, "%s: JSON text of %zu bytes is too large", what, len);
    const char *nul = memchr(text, '\0', len);
    if (nul)
        return engine_error_set(err, -EINVAL, "%s: NUL byte in JSON text at offset %zu",
                                what, (size_t)(nul - text));

    struct json_tokener *tok = json_tokener_new_ex(max_depth);
    if (!tok)
        return engine_error_set(err, -ENOMEM, "%s: out of memory for the JSON parser", what);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

    struct json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);

    if (jerr == json_tokener_continue || (!obj && jerr == json_tokener_success)) {
        json_object_put(obj);
        return engine_error_set(err, -EINVAL, "%s: JSON text ends early (truncated after %zu bytes?)",
                                what, len);
    }
    if (jerr != json_tokener_success) {
        json_object_put(obj);
        if (jerr == json_tokener_error_depth)
            return engine_error_set(err, -EINVAL, "%s: JSON nested deeper than %d levels near offset %zu",
                                    what, max_depth, end);
        return engine_error_set(err, -EINVAL, "%s: malformed JSON near offset %zu: %s",
                                what, end, json_tokener_error_desc(jerr));
    }
    /* json-c stops after the first complete value; only whitespace may
     * follow (safetensors headers are space-padded). */
    for (size_t i = end; i < len; i++) {
        char c = text[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            json_object_put(obj);
            return engine_error_set(err, -EINVAL, "%s: trailing data after the JSON value at offset %zu",
                                    what, i);
        }
    }
    *out = obj;
    return 0;
}

struct json_object *ejson_get(struct json_object *obj, const char *key)
{
    struct json_object *v = NULL;
    if (!obj || !json_object_is_type(obj, json_type_object))
        return NULL;
    if (!json_object_object_get_ex(obj, key, &v))
        return NULL;
    return v;                           /* NULL for JSON null too */
}

int ejson_get_int(struct json_object *obj, const char *key, const char *what,
                  const char *path, int64_t lo, int64_t hi, int64_t *out,
                  struct engine_error *err)
{
    struct json_object *v = ejson_get(obj, key);
    if (!v)
        return 1;
    if (json_object_is_type(v, json_type_double)) {
        /* Accept 4.0 but not 4.5: some writers emit integral floats. */
        double d = json_object_get_double(v);
        /* Beyond 2^53 doubles are not exact and beyond 2^63 the cast below
         * would be undefined, so such values never count as integers. */
        if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0 ||
            d < (double)lo || d > (double)hi)
            return engine_error_set(err, -EINVAL, "%s: %s%s (%g) must be an integer in [%lld, %lld]",
                                    what, path, key, d, (long long)lo, (long long)hi);
        *out = (int64_t)d;
        return 0;
    }
    if (!json_object_is_type(v, json_type_int))
        return engine_error_set(err, -EINVAL, "%s: %s%s must be an integer, got %s",
                                what, path, key, json_type_to_name(json_object_get_type(v)));
    /* json-c clamps out-of-range literals to INT64_MIN/MAX, which then fail
     * the range check below. */
    int64_t x = json_object_get_int64(v);
    if (x < lo || x > hi)
        return engine_error_set(err, -ERANGE, "%s: %s%s (%lld) is outside the supported range [%lld, %lld]",
                                what, path, key, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

int ejson_get_double(struct json_object *obj, const char *key, const char *what,
                     const char *path, double lo, double hi, double *out,
                     struct engine_error *err)
{
    struct json_object *v = ejson_get(obj, key);
    if (!v)
        return 1;
    double d;
    if (json_object_is_type(v, json_type_double))
        d = json_object_get_double(v);
    else if (json_object_is_type(v, json_type_int))
        d = (double)json_object_get_int64(v);
    else
        return engine_error_set(err, -EINVAL, "%s: %s%s must be a number, got %s",
                                what, path, key, json_type_to_name(json_object_get_type(v)));
    if (!isfinite(d) || d < lo || d > hi)
        return engine_error_set(err, -ERANGE, "%s: %s%s (%g) is outside the supported range [%g, %g]",
                                what, path, key, d, lo, hi);
    *out = d;
    return 0;
}

int ejson_get_bool(struct json_object *obj, const char *key, const char *what,
                   const char *path, bool *out, struct engine_error *err)
{
    struct json_object *v = ejson_get(obj, key);
    if (!v)
        return 1;
    if (!json_object_is_type(v, json_type_boolean))
        return engine_error_set(err, -EINVAL, "%s: %s%s must be true or false, got %s",
                                what, path, key, json_type_to_name(json_object_get_type(v)));
    *out = json_object_get_boolean(v);
    return 0;
}

int ejson_get_string(struct json_object *obj, const char *key, const char *what,
                     const char *path, const char **out, size_t *out_len,
                     struct engine_error *err)
{
    struct json_object *v = ejson_get(obj, key);
    if (!v)
        return 1;
    if (!json_object_is_type(v, json_type_string))
        return engine_error_set(err, -EINVAL, "%s: %s%s must be a string, got %s",
                                what, path, key, json_type_to_name(json_object_get_type(v)));
    *out = json_object_get_string(v);
    if (out_len)
        *out_len = (size_t)json_object_get_string_len(v);
    return 0;
}

bool ejson_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 1; cp = c & 0x1F; min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2; cp = c & 0x0F; min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3; cp = c & 0x07; min = 0x10000;
        } else {
            return false;
        }
        if (len - i <= n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}
