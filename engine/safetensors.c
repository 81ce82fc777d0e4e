/* SPDX-License-Identifier: Apache-2.0 */
/*
 * safetensors reader.
 *
 * Layout of one file: `[u64 LE N][N bytes JSON header][data area]`. The
 * header maps tensor names to {"dtype", "shape", "data_offsets": [b, e]}
 * with offsets relative to the data area (e exclusive), plus an optional
 * "__metadata__" object of string -> string.
 *
 * Why it looks the way it does:
 *  - The checkpoint is ~20 GB and the vision tower alone is hundreds of
 *    MB we never use, so files are mapped (PROT_READ, MAP_PRIVATE) and a
 *    tensor is a pointer into the mapping. Loading reads the header pages
 *    only (read-around is switched off while parsing, see
 *    st_set_map_file); data pages are faulted in by whoever first uses a
 *    tensor, so the unused model.visual.* tensors are never read from disk.
 *  - The header is hostile input. Everything a later stage relies on is
 *    proven here with overflow-checked arithmetic: header length within
 *    the file and ST_HEADER_MAX, strict JSON with a nesting limit, known
 *    dtype, ndim <= ST_MAX_DIMS, dims >= 0, numel * dtype size without
 *    overflow and equal to e - b, b <= e <= data size, no two tensors
 *    overlapping (sorted by begin), names unique, valid UTF-8 and free of
 *    NUL, and every tensor's data aligned to its element size (so kernels
 *    may read it through typed pointers without undefined behaviour; the
 *    reference writer pads the header to 8 bytes and orders tensors by
 *    dtype size, so real files always satisfy this).
 *  - json-c keeps the last of duplicate object keys silently, so the
 *    header's top-level keys are also counted on the raw text; a count
 *    that differs from the parsed object means a duplicate name.
 *  - Lookups go through an open-addressing hash table (FNV-1a) because the
 *    W4A16 export has ~100k tensors (per-expert linears) and the binder
 *    looks each of them up by name.
 *
 * The mapping is only valid while nobody truncates the files underneath;
 * model files are expected to be read-only for the daemon's lifetime.
 */
#include "engine/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/json-util.h"

#define ST_JSON_DEPTH      8            /* header needs 3, metadata 2       */
#define ST_INDEX_NAME      "model.safetensors.index.json"
#define ST_SINGLE_NAME     "model.safetensors"

static const struct {
    const char *name;
    size_t      size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_DTYPE_F64]  = { "F64",  8 },
    [ST_DTYPE_F32]  = { "F32",  4 },
    [ST_DTYPE_F16]  = { "F16",  2 },
    [ST_DTYPE_BF16] = { "BF16", 2 },
    [ST_DTYPE_I64]  = { "I64",  8 },
    [ST_DTYPE_I32]  = { "I32",  4 },
    [ST_DTYPE_I16]  = { "I16",  2 },
    [ST_DTYPE_I8]   = { "I8",   1 },
    [ST_DTYPE_U8]   = { "U8",   1 },
    [ST_DTYPE_BOOL] = { "BOOL", 1 },
};

size_t st_dtype_size(enum st_dtype dtype)
{
    if ((unsigned)dtype >= ST_DTYPE_COUNT)
        return 0;
    return st_dtypes[dtype].size;
}

const char *st_dtype_name(enum st_dtype dtype)
{
    if ((unsigned)dtype >= ST_DTYPE_COUNT)
        return "invalid";
    return st_dtypes[dtype].name;
}

/* One parsed header entry; `begin` is the offset inside the data area. */
struct st_entry {
    struct st_tensor t;
    char            *name;              /* heap, owned until adopted        */
    uint64_t         begin;
};

struct st_file {
    char  *path;
    void  *map;
    size_t size;
    bool   borrowed;                    /* an st_image: not ours to unmap   */
};

struct st_set {
    struct st_file   *files;
    uint32_t          n_files;
    struct st_tensor *tensors;
    size_t            n_tensors;
    size_t            cap_tensors;
    uint32_t         *slots;            /* tensor index + 1, 0 = empty      */
    size_t            n_slots;          /* power of two                     */
    uint64_t          mapped;
    uint32_t          files_opened;     /* shards opened from the file system */
    /* st_set_open_dir_images(): the shards' contents, borrowed */
    const struct st_image *images;
    uint32_t          n_images;
};

/* ------------------------------------------------------------------------ */
/* header parsing                                                           */

static void st_entries_free(struct st_entry *e, size_t n)
{
    if (!e)
        return;
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
}

static bool st_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Calls `fn` for every key of the top-level object of *valid* JSON text
 * (json-c accepted it already), with the raw literal including quotes.
 * json-c accepts single-quoted keys even in strict mode, so both quote
 * characters delimit strings here. */
static size_t st_scan_top_keys(const char *s, size_t len,
                               void (*fn)(void *, const char *, size_t), void *ctx)
{
    size_t depth = 0, keys = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '"' || c == '\'') {
            size_t j = i + 1;
            while (j < len && s[j] != c)
                j += (s[j] == '\\') ? 2 : 1;
            if (j >= len)
                break;
            if (depth == 1) {
                size_t k = j + 1;
                while (k < len && st_is_space(s[k]))
                    k++;
                if (k < len && s[k] == ':') {
                    keys++;
                    if (fn)
                        fn(ctx, s + i, j + 1 - i);
                }
            }
            i = j;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return keys;
}

/* json-c decodes "\u0000" inside a key and then truncates the key at the
 * NUL, so names with an escaped NUL must be caught on the raw literal. */
static void st_key_check_nul(void *ctx, const char *lit, size_t len)
{
    bool *has_nul = ctx;
    for (size_t i = 1; i + 1 < len; i++) {
        if (lit[i] != '\\')
            continue;
        if (lit[i + 1] == 'u' && i + 5 < len && memcmp(lit + i + 2, "0000", 4) == 0)
            *has_nul = true;
        i++;                            /* skip the escaped character */
    }
}

struct st_keylist {
    char  **keys;
    size_t  n, cap;
    bool    oom;
};

static void st_keylist_add(void *ctx, const char *lit, size_t len)
{
    struct st_keylist *kl = ctx;
    if (kl->oom)
        return;
    if (kl->n == kl->cap) {
        size_t cap = kl->cap ? kl->cap * 2 : 64;
        char **k = realloc(kl->keys, cap * sizeof(*k));
        if (!k) {
            kl->oom = true;
            return;
        }
        kl->keys = k;
        kl->cap = cap;
    }
    /* Decode the literal with json-c so escaped spellings of one name
     * compare equal. */
    struct json_object *o = NULL;
    struct json_tokener *tok = json_tokener_new();
    if (tok) {
        o = json_tokener_parse_ex(tok, lit, (int)len);
        json_tokener_free(tok);
    }
    const char *str = o ? json_object_get_string(o) : NULL;
    char *copy = str ? strdup(str) : NULL;
    json_object_put(o);
    if (!copy) {
        kl->oom = true;
        return;
    }
    kl->keys[kl->n++] = copy;
}

static int st_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int st_report_duplicate(const char *text, size_t len, const char *what,
                               struct engine_error *err)
{
    struct st_keylist kl = { 0 };
    st_scan_top_keys(text, len, st_keylist_add, &kl);
    int rc;
    const char *dup = NULL;
    if (!kl.oom && kl.n > 1) {
        qsort(kl.keys, kl.n, sizeof(*kl.keys), st_cmp_str);
        for (size_t i = 1; i < kl.n && !dup; i++)
            if (strcmp(kl.keys[i - 1], kl.keys[i]) == 0)
                dup = kl.keys[i];
    }
    if (dup)
        rc = engine_error_set(err, -EINVAL, "%s: duplicate tensor name \"%.200s\" in the header",
                              what, dup);
    else
        rc = engine_error_set(err, -EINVAL, "%s: duplicate tensor names in the header", what);
    for (size_t i = 0; i < kl.n; i++)
        free(kl.keys[i]);
    free(kl.keys);
    return rc;
}

static int st_parse_dtype(const char *s, enum st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(s, st_dtypes[i].name) == 0) {
            *out = (enum st_dtype)i;
            return 0;
        }
    }
    return -1;
}

static int st_check_metadata(struct json_object *md, const char *what, struct engine_error *err)
{
    if (!md)
        return 0;                       /* null is accepted */
    if (!json_object_is_type(md, json_type_object))
        return engine_error_set(err, -EINVAL, "%s: __metadata__ must be an object of strings, got %s",
                                what, json_type_to_name(json_object_get_type(md)));
    ejson_foreach(md, key_it) {
        const char *key = json_object_iter_peek_name(&key_it);
        struct json_object *val = json_object_iter_peek_value(&key_it);
        if (!val || !json_object_is_type(val, json_type_string))
            return engine_error_set(err, -EINVAL, "%s: __metadata__.%.200s must be a string",
                                    what, key);
    }
    return 0;
}

static int st_parse_entry(const char *name, size_t name_len, struct json_object *v,
                          uint64_t data_size, uint64_t data_start, const char *what,
                          struct st_entry *e, struct engine_error *err)
{
    if (name_len == 0)
        return engine_error_set(err, -EINVAL, "%s: empty tensor name in the header", what);
    if (!ejson_utf8_valid(name, name_len))
        return engine_error_set(err, -EINVAL, "%s: tensor name \"%.200s\" is not valid NUL-free UTF-8",
                                what, name);
    if (!v || !json_object_is_type(v, json_type_object))
        return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": entry must be an object",
                                what, name);

    const char *ds = NULL;
    int r = ejson_get_string(v, "dtype", what, "", &ds, NULL, NULL);
    if (r != 0)
        return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": \"dtype\" missing or not a string",
                                what, name);
    if (st_parse_dtype(ds, &e->t.dtype) != 0)
        return engine_error_set(err, -EINVAL,
                                "%s: tensor \"%.200s\": unknown dtype \"%.32s\" (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)",
                                what, name, ds);

    struct json_object *shape = ejson_get(v, "shape");
    if (!shape || !json_object_is_type(shape, json_type_array))
        return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": \"shape\" missing or not an array",
                                what, name);
    size_t nd = json_object_array_length(shape);
    if (nd > ST_MAX_DIMS)
        return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": %zu dimensions exceeds the limit of %d",
                                what, name, nd, ST_MAX_DIMS);
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        struct json_object *d = json_object_array_get_idx(shape, i);
        if (!d || !json_object_is_type(d, json_type_int))
            return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": shape[%zu] must be an integer",
                                    what, name, i);
        int64_t x = json_object_get_int64(d);
        if (x < 0)
            return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": shape[%zu] is negative (%lld)",
                                    what, name, i, (long long)x);
        /* json-c clamps literals beyond int64 to INT64_MAX; any dim that
         * large fails the byte-count checks below anyway. */
        if (__builtin_mul_overflow(numel, (uint64_t)x, &numel))
            return engine_error_set(err, -EOVERFLOW,
                                    "%s: tensor \"%.200s\": element count overflows 64 bits at shape[%zu]",
                                    what, name, i);
        e->t.shape[i] = x;
    }
    e->t.ndim = (uint32_t)nd;
    e->t.numel = numel;
    size_t esz = st_dtypes[e->t.dtype].size;
    if (__builtin_mul_overflow(numel, (uint64_t)esz, &e->t.nbytes))
        return engine_error_set(err, -EOVERFLOW, "%s: tensor \"%.200s\": byte size overflows 64 bits",
                                what, name);

    struct json_object *offs = ejson_get(v, "data_offsets");
    if (!offs || !json_object_is_type(offs, json_type_array) || json_object_array_length(offs) != 2)
        return engine_error_set(err, -EINVAL,
                                "%s: tensor \"%.200s\": \"data_offsets\" must be an array [begin, end]",
                                what, name);
    int64_t be[2];
    for (size_t i = 0; i < 2; i++) {
        struct json_object *o = json_object_array_get_idx(offs, i);
        if (!o || !json_object_is_type(o, json_type_int))
            return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": data_offsets[%zu] must be an integer",
                                    what, name, i);
        be[i] = json_object_get_int64(o);
        if (be[i] < 0)
            return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": data_offsets[%zu] is negative",
                                    what, name, i);
    }
    uint64_t b = (uint64_t)be[0], end = (uint64_t)be[1];
    if (b > end)
        return engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\": data_offsets [%llu, %llu] are reversed",
                                what, name, (unsigned long long)b, (unsigned long long)end);
    if (end > data_size)
        return engine_error_set(err, -EINVAL,
                                "%s: tensor \"%.200s\": data_offsets end %llu is beyond the data area of %llu bytes (truncated file?)",
                                what, name, (unsigned long long)end, (unsigned long long)data_size);
    if (end - b != e->t.nbytes)
        return engine_error_set(err, -EINVAL,
                                "%s: tensor \"%.200s\": data_offsets cover %llu bytes but shape x %s needs %llu",
                                what, name, (unsigned long long)(end - b), st_dtypes[e->t.dtype].name,
                                (unsigned long long)e->t.nbytes);
    /* data_start + b <= file size, so this cannot overflow. */
    if (e->t.nbytes && (data_start + b) % esz != 0)
        return engine_error_set(err, -EINVAL,
                                "%s: tensor \"%.200s\": data at file offset %llu is not aligned to its %zu-byte %s elements",
                                what, name, (unsigned long long)(data_start + b), esz,
                                st_dtypes[e->t.dtype].name);
    e->begin = b;
    return 0;
}

static int st_cmp_entry_begin(const void *a, const void *b)
{
    const struct st_entry *x = *(const struct st_entry *const *)a;
    const struct st_entry *y = *(const struct st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->t.nbytes != y->t.nbytes)
        return x->t.nbytes < y->t.nbytes ? -1 : 1;
    return 0;
}

static int st_check_overlap(struct st_entry *e, size_t n, const char *what, struct engine_error *err)
{
    if (n < 2)
        return 0;
    struct st_entry **order = malloc(n * sizeof(*order));
    if (!order)
        return engine_error_set(err, -ENOMEM, "%s: out of memory sorting %zu tensors", what, n);
    for (size_t i = 0; i < n; i++)
        order[i] = &e[i];
    qsort(order, n, sizeof(*order), st_cmp_entry_begin);
    int rc = 0;
    const struct st_entry *last = NULL;       /* the entry reaching furthest */
    uint64_t reach = 0;
    for (size_t i = 0; i < n; i++) {
        const struct st_entry *c = order[i];
        if (c->t.nbytes == 0)
            continue;                   /* empty tensors occupy no bytes */
        if (last && c->begin < reach) {
            rc = engine_error_set(err, -EINVAL,
                                  "%s: tensors \"%.150s\" and \"%.150s\" overlap in the data area (bytes %llu..%llu)",
                                  what, last->name, c->name, (unsigned long long)c->begin,
                                  (unsigned long long)reach);
            break;
        }
        last = c;
        reach = c->begin + c->t.nbytes;
    }
    free(order);
    return rc;
}

/* Parse and validate the header of a whole file image; on success returns
 * the entries (data pointers into `buf`) in header order. */
static int st_header_parse(const uint8_t *buf, size_t len, const char *what,
                           struct st_entry **out, size_t *n_out, struct engine_error *err)
{
    *out = NULL;
    *n_out = 0;
    if (len < 8)
        return engine_error_set(err, -EINVAL,
                                "%s: file is %zu bytes, shorter than the 8-byte header length (truncated?)",
                                what, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen < 2)
        return engine_error_set(err, -EINVAL,
                                "%s: header length %llu is smaller than the smallest JSON object \"{}\"",
                                what, (unsigned long long)hlen);
    if (hlen > ST_HEADER_MAX)
        return engine_error_set(err, -EFBIG, "%s: header length %llu exceeds the limit of %u bytes",
                                what, (unsigned long long)hlen, ST_HEADER_MAX);
    if (hlen > len - 8)
        return engine_error_set(err, -EINVAL,
                                "%s: header length %llu runs past the end of the %zu-byte file (truncated?)",
                                what, (unsigned long long)hlen, len);

    const char *text = (const char *)buf + 8;
    struct json_object *root = NULL;
    int rc = ejson_parse(text, (size_t)hlen, ST_JSON_DEPTH, what, &root, err);
    if (rc < 0)
        return rc;
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return engine_error_set(err, -EINVAL, "%s: header must be a JSON object", what);
    }
    size_t n_keys = (size_t)json_object_object_length(root);
    bool key_nul = false;
    if (st_scan_top_keys(text, (size_t)hlen, st_key_check_nul, &key_nul) != n_keys) {
        json_object_put(root);
        return st_report_duplicate(text, (size_t)hlen, what, err);
    }
    if (key_nul) {
        json_object_put(root);
        return engine_error_set(err, -EINVAL, "%s: a tensor name contains an escaped NUL (\\u0000)", what);
    }
    if (n_keys > ST_TENSORS_MAX) {
        json_object_put(root);
        return engine_error_set(err, -EFBIG, "%s: %zu tensors exceeds the limit of %u per file",
                                what, n_keys, ST_TENSORS_MAX);
    }

    uint64_t data_start = 8 + hlen;
    uint64_t data_size = (uint64_t)len - data_start;
    struct st_entry *e = calloc(n_keys ? n_keys : 1, sizeof(*e));
    if (!e) {
        json_object_put(root);
        return engine_error_set(err, -ENOMEM, "%s: out of memory for %zu tensors", what, n_keys);
    }
    size_t n = 0;
    ejson_foreach(root, key_it) {
        const char *key = json_object_iter_peek_name(&key_it);
        struct json_object *val = json_object_iter_peek_value(&key_it);
        if (strcmp(key, "__metadata__") == 0) {
            rc = st_check_metadata(val, what, err);
            if (rc < 0)
                break;
            continue;
        }
        /* Escaped NULs were refused on the raw text above, so strlen is
         * the key's true length. */
        size_t klen = strlen(key);
        struct st_entry *c = &e[n];
        rc = st_parse_entry(key, klen, val, data_size, data_start, what, c, err);
        if (rc < 0)
            break;
        c->name = strdup(key);
        if (!c->name) {
            rc = engine_error_set(err, -ENOMEM, "%s: out of memory", what);
            break;
        }
        c->t.name = c->name;
        c->t.data = buf + data_start + c->begin;
        c->t.file = 0;
        n++;
    }
    json_object_put(root);
    if (rc == 0)
        rc = st_check_overlap(e, n, what, err);
    if (rc < 0) {
        st_entries_free(e, n);
        return rc;
    }
    *out = e;
    *n_out = n;
    return 0;
}

int st_parse_buffer(const uint8_t *buf, size_t len, const char *what,
                    st_tensor_cb cb, void *ctx, struct engine_error *err)
{
    struct st_entry *e;
    size_t n;
    if (!what)
        what = "safetensors buffer";
    if (!buf && len)
        return engine_error_set(err, -EINVAL, "%s: NULL buffer", what);
    int rc = st_header_parse(buf, len, what, &e, &n, err);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++)
        if (cb)
            rc = cb(ctx, &e[i].t);
    st_entries_free(e, n);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* sets of mapped files                                                     */

static struct st_set *st_set_new(void)
{
    return calloc(1, sizeof(struct st_set));
}

void st_set_free(struct st_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n_tensors; i++)
        free((char *)set->tensors[i].name);
    free(set->tensors);
    free(set->slots);
    for (uint32_t i = 0; i < set->n_files; i++) {
        if (set->files[i].map && !set->files[i].borrowed)
            munmap(set->files[i].map, set->files[i].size);
        free(set->files[i].path);
    }
    free(set->files);
    free(set);
}

static uint64_t st_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;        /* FNV-1a 64 */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Insert tensor `idx`; returns the index of an existing tensor with the
 * same name instead, or -1 when inserted. */
static ptrdiff_t st_slots_insert(struct st_set *set, size_t idx)
{
    size_t mask = set->n_slots - 1;
    const char *name = set->tensors[idx].name;
    for (size_t i = (size_t)st_hash(name) & mask;; i = (i + 1) & mask) {
        uint32_t s = set->slots[i];
        if (s == 0) {
            set->slots[i] = (uint32_t)idx + 1;
            return -1;
        }
        if (strcmp(set->tensors[s - 1].name, name) == 0)
            return (ptrdiff_t)(s - 1);
    }
}

/* Grow the slot table to keep the load factor at or below 1/2. */
static int st_slots_reserve(struct st_set *set, size_t n, struct engine_error *err)
{
    size_t want = 16;
    while (want < 2 * n)
        want *= 2;
    if (want <= set->n_slots)
        return 0;
    uint32_t *slots = calloc(want, sizeof(*slots));
    if (!slots)
        return engine_error_set(err, -ENOMEM, "safetensors: out of memory for a %zu-slot name table", want);
    free(set->slots);
    set->slots = slots;
    set->n_slots = want;
    for (size_t i = 0; i < set->n_tensors; i++)
        st_slots_insert(set, i);
    return 0;
}

static int st_set_add_tensors(struct st_set *set, struct st_file *f, const char *path,
                              struct engine_error *err);

/* Use the caller's in-memory image of shard `name` instead of opening the
 * file. The image must be the file as it is now: the caller checked its
 * identity (st_image's comment); the size is checked again here against the
 * directory entry because it costs nothing and catches a shard that was
 * replaced after the caller's check. The header is then parsed exactly like
 * a mapped file's, so a corrupted image fails the same way a corrupted file
 * does. The file itself is never opened. */
static int st_set_take_image(struct st_set *set, struct st_file *f, int dirfd, const char *name,
                             const char *path, struct engine_error *err)
{
    const struct st_image *img = NULL;
    for (uint32_t i = 0; i < set->n_images && !img; i++)
        if (set->images[i].name && strcmp(set->images[i].name, name) == 0)
            img = &set->images[i];
    if (!img)
        return engine_error_set(err, -ESTALE, "%s: the model directory names this shard, but the in-memory "
                                "shard set has no image of it (stale: the files changed since it was made)",
                                path);
    struct stat st;
    if (fstatat(dirfd, name, &st, 0) != 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != img->size)
        return engine_error_set(err, -ESTALE, "%s: file is %lld bytes, its in-memory image %llu "
                                "(stale: the file changed since the image was made)",
                                path, (long long)st.st_size, (unsigned long long)img->size);
    if (!img->data || img->size < 8 || img->size > SIZE_MAX ||
        (uintptr_t)img->data % (uintptr_t)sysconf(_SC_PAGESIZE) != 0)
        return engine_error_set(err, -EINVAL, "%s: in-memory image of %llu bytes must be at least 8 bytes "
                                "and start on a page boundary", path, (unsigned long long)img->size);
    f->map = (void *)(uintptr_t)img->data;
    f->size = (size_t)img->size;
    f->borrowed = true;
    set->mapped += img->size;
    return 0;
}

static int st_set_map_file(struct st_set *set, int dirfd, const char *name, const char *path,
                           struct engine_error *err)
{
    if (set->n_files >= ST_FILES_MAX)
        return engine_error_set(err, -EFBIG, "%s: more than %u shards", path, ST_FILES_MAX);
    struct st_file *files = realloc(set->files, (set->n_files + 1) * sizeof(*files));
    if (!files)
        return engine_error_set(err, -ENOMEM, "%s: out of memory", path);
    set->files = files;
    struct st_file *f = &files[set->n_files];
    memset(f, 0, sizeof(*f));
    f->path = strdup(path);
    if (!f->path)
        return engine_error_set(err, -ENOMEM, "%s: out of memory", path);
    set->n_files++;                     /* owned by the set from here on */

    if (set->images) {
        int rc = st_set_take_image(set, f, dirfd, name, path, err);
        if (rc < 0)
            return rc;
        return st_set_add_tensors(set, f, path, err);
    }
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return engine_error_set(err, -e, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return engine_error_set(err, -EINVAL, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return engine_error_set(err, -EINVAL,
                                "%s: file is %lld bytes, shorter than the 8-byte header length (truncated?)",
                                path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return engine_error_set(err, -e, "%s: mmap of %lld bytes failed: %s",
                                path, (long long)st.st_size, strerror(e));
    /* Keep tens of GB of weights out of core dumps. Failure is harmless. */
    (void)madvise(map, (size_t)st.st_size, MADV_DONTDUMP);
    f->map = map;
    f->size = (size_t)st.st_size;
    set->mapped += (uint64_t)st.st_size;
    set->files_opened++;

    /* Read the header and nothing else: without MADV_RANDOM the first
     * fault's read-around pulls megabytes of tensor data (measured: 8 MiB
     * on ext4) into the page cache, vision tower included. The header range
     * itself is read ahead explicitly; normal read-around is restored for
     * the weights afterwards. */
    (void)madvise(map, f->size, MADV_RANDOM);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | ((const uint8_t *)map)[i];
    if (hlen <= ST_HEADER_MAX && hlen <= f->size - 8)
        (void)madvise(map, (size_t)(8 + hlen), MADV_WILLNEED);
    int rc = st_set_add_tensors(set, f, path, err);
    (void)madvise(map, f->size, MADV_NORMAL);
    return rc;
}

/* Parse the header of file `f` (the last one added) and adopt its tensors. */
static int st_set_add_tensors(struct st_set *set, struct st_file *f, const char *path,
                              struct engine_error *err)
{
    struct st_entry *ent;
    size_t n;
    int rc = st_header_parse(f->map, f->size, path, &ent, &n, err);
    if (rc < 0)
        return rc;

    size_t total = set->n_tensors + n;
    if (total > ST_TENSORS_MAX) {
        st_entries_free(ent, n);
        return engine_error_set(err, -EFBIG, "%s: more than %u tensors in the model", path, ST_TENSORS_MAX);
    }
    if (total > set->cap_tensors) {
        size_t cap = set->cap_tensors ? set->cap_tensors : 256;
        while (cap < total)
            cap *= 2;
        struct st_tensor *t = realloc(set->tensors, cap * sizeof(*t));
        if (!t) {
            st_entries_free(ent, n);
            return engine_error_set(err, -ENOMEM, "%s: out of memory for %zu tensors", path, total);
        }
        set->tensors = t;
        set->cap_tensors = cap;
    }
    rc = st_slots_reserve(set, total, err);
    if (rc < 0) {
        st_entries_free(ent, n);
        return rc;
    }
    size_t i = 0;
    for (; i < n; i++) {
        size_t idx = set->n_tensors;
        set->tensors[idx] = ent[i].t;
        set->tensors[idx].file = set->n_files - 1;
        ptrdiff_t dup = st_slots_insert(set, idx);
        if (dup >= 0) {
            const struct st_tensor *o = &set->tensors[dup];
            rc = engine_error_set(err, -EINVAL, "%s: tensor \"%.200s\" is also in %s; names must be unique across shards",
                                  path, ent[i].name, set->files[o->file].path);
            break;
        }
        ent[i].name = NULL;             /* adopted by the set */
        set->n_tensors++;
    }
    st_entries_free(ent, n);
    return rc;
}

static char *st_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    size_t o = a;
    if (a && dir[a - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

int st_set_open_file(const char *path, struct st_set **out, struct engine_error *err)
{
    *out = NULL;
    struct st_set *set = st_set_new();
    if (!set)
        return engine_error_set(err, -ENOMEM, "%s: out of memory", path);
    int rc = st_set_map_file(set, AT_FDCWD, path, path, err);
    if (rc < 0) {
        st_set_free(set);
        return rc;
    }
    *out = set;
    return 0;
}

/* A shard named by the index must be a plain file name in the model
 * directory: no path separators, no "." / "..", valid UTF-8. */
static bool st_shard_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > 255 || strchr(s, '/'))
        return false;
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    return ejson_utf8_valid(s, len);
}

/* Validate a parsed index.json: a non-empty "weight_map" object whose
 * values are plain shard file names. Returns the map and, in `*shards_out`
 * (heap, caller frees), one shard name per entry in map order; the strings
 * live as long as `root`. */
static int st_index_check(struct json_object *root, const char *what, struct json_object **wm_out,
                          const char ***shards_out, size_t *n_out, struct engine_error *err)
{
    *shards_out = NULL;
    *n_out = 0;
    struct json_object *wm = ejson_get(root, "weight_map");
    if (!wm || !json_object_is_type(wm, json_type_object))
        return engine_error_set(err, -EINVAL, "%s: \"weight_map\" missing or not an object", what);
    size_t n = (size_t)json_object_object_length(wm);
    if (n == 0)
        return engine_error_set(err, -EINVAL, "%s: \"weight_map\" is empty", what);
    if (n > ST_TENSORS_MAX)
        return engine_error_set(err, -EFBIG, "%s: weight_map lists %zu tensors, over the limit of %u",
                                what, n, ST_TENSORS_MAX);
    const char **shards = malloc(n * sizeof(*shards));
    if (!shards)
        return engine_error_set(err, -ENOMEM, "%s: out of memory", what);
    size_t k = 0;
    ejson_foreach(wm, key_it) {
        const char *key = json_object_iter_peek_name(&key_it);
        struct json_object *val = json_object_iter_peek_value(&key_it);
        if (!val || !json_object_is_type(val, json_type_string)) {
            free(shards);
            return engine_error_set(err, -EINVAL, "%s: weight_map.%.200s must be a shard file name string",
                                    what, key);
        }
        const char *sh = json_object_get_string(val);
        if (!st_shard_name_ok(sh, (size_t)json_object_get_string_len(val))) {
            free(shards);
            return engine_error_set(err, -EINVAL,
                                    "%s: weight_map.%.200s names \"%.200s\", which is not a plain file name in the model directory",
                                    what, key, sh);
        }
        shards[k++] = sh;
    }
    *wm_out = wm;
    *shards_out = shards;
    *n_out = k;
    return 0;
}

int st_index_parse_buffer(const char *json, size_t len, const char *what,
                          st_index_cb cb, void *ctx, struct engine_error *err)
{
    if (!what)
        what = ST_INDEX_NAME;
    if (!json && len)
        return engine_error_set(err, -EINVAL, "%s: NULL text", what);
    if (len > ST_HEADER_MAX)
        return engine_error_set(err, -EFBIG, "%s: %zu bytes exceeds the %u byte limit", what, len, ST_HEADER_MAX);
    struct json_object *root = NULL, *wm = NULL;
    const char **shards = NULL;
    size_t n = 0;
    int rc = ejson_parse(json ? json : "", len, ST_JSON_DEPTH, what, &root, err);
    if (rc == 0)
        rc = st_index_check(root, what, &wm, &shards, &n, err);
    if (rc == 0 && cb) {
        size_t i = 0;
        ejson_foreach(wm, key_it) {
            const char *key = json_object_iter_peek_name(&key_it);
            if ((rc = cb(ctx, key, shards[i++])) != 0)
                break;
        }
    }
    free(shards);
    json_object_put(root);
    return rc;
}

static int st_open_index(struct st_set *set, const char *dir, int dirfd, struct engine_error *err)
{
    char *what = st_path_join(dir, ST_INDEX_NAME);
    if (!what)
        return engine_error_set(err, -ENOMEM, "%s: out of memory", dir);
    char *text = NULL;
    size_t len = 0;
    struct json_object *root = NULL, *wm = NULL;
    const char **shards = NULL;
    size_t n_shards = 0;
    int rc = ejson_read_file(dirfd, ST_INDEX_NAME, what, ST_HEADER_MAX, &text, &len, err);
    if (rc < 0)
        goto out;
    rc = ejson_parse(text, len, ST_JSON_DEPTH, what, &root, err);
    if (rc < 0)
        goto out;
    rc = st_index_check(root, what, &wm, &shards, &n_shards, err);
    if (rc < 0)
        goto out;
    /* Unique shard names, opened in sorted order (deterministic file ids). */
    qsort(shards, n_shards, sizeof(*shards), st_cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_shards; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0)
            shards[u++] = shards[i];
    for (size_t i = 0; i < u; i++) {
        struct stat st;
        if (fstatat(dirfd, shards[i], &st, 0) != 0) {
            int e = errno;
            rc = engine_error_set(err, -e, "%s: weight_map names shard \"%.200s\", which is missing from %s: %s",
                                  what, shards[i], dir, strerror(e));
            goto out;
        }
    }
    for (size_t i = 0; i < u; i++) {
        char *path = st_path_join(dir, shards[i]);
        if (!path) {
            rc = engine_error_set(err, -ENOMEM, "%s: out of memory", what);
            goto out;
        }
        rc = st_set_map_file(set, dirfd, shards[i], path, err);
        free(path);
        if (rc < 0)
            goto out;
    }
    /* Every weight_map entry must be in the shard it names. Files are in
     * sorted order, so the shard's file id is its position in `shards`. */
    ejson_foreach(wm, key2_it) {
        const char *key2 = json_object_iter_peek_name(&key2_it);
        struct json_object *val2 = json_object_iter_peek_value(&key2_it);
        const char *s = json_object_get_string(val2);
        const char **hit = bsearch(&s, shards, u, sizeof(*shards), st_cmp_str);
        uint32_t want = (uint32_t)(hit - shards);
        const struct st_tensor *t = st_set_find(set, key2);
        if (!t) {
            rc = engine_error_set(err, -ENOENT, "%s: weight_map puts tensor \"%.200s\" in %s, but no shard contains it",
                                  what, key2, s);
            goto out;
        }
        if (t->file != want) {
            rc = engine_error_set(err, -EINVAL, "%s: weight_map puts tensor \"%.200s\" in %s, but it is in %s",
                                  what, key2, s, set->files[t->file].path);
            goto out;
        }
    }
out:
    free(shards);
    json_object_put(root);
    free(text);
    free(what);
    return rc;
}

static int st_open_all(struct st_set *set, const char *dir, int dirfd, struct engine_error *err)
{
    int fd2 = dup(dirfd);
    if (fd2 < 0)
        return engine_error_set(err, -errno, "%s: dup failed: %s", dir, strerror(errno));
    DIR *d = fdopendir(fd2);
    if (!d) {
        int e = errno;
        close(fd2);
        return engine_error_set(err, -e, "%s: cannot list: %s", dir, strerror(e));
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        static const char ext[] = ".safetensors";
        if (de->d_name[0] == '.' || l <= sizeof(ext) - 1 || strcmp(de->d_name + l - (sizeof(ext) - 1), ext) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = cap <= ST_FILES_MAX * 2u ? realloc(names, cap * sizeof(*nn)) : NULL;
            if (!nn) {
                rc = engine_error_set(err, -ENOMEM, "%s: too many .safetensors files", dir);
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) {
            rc = engine_error_set(err, -ENOMEM, "%s: out of memory", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == 0 && n == 0)
        rc = engine_error_set(err, -ENOENT,
                              "%s: no " ST_INDEX_NAME ", " ST_SINGLE_NAME " or *.safetensors file: is this a model directory?",
                              dir);
    if (rc == 0) {
        qsort(names, n, sizeof(*names), st_cmp_str);
        for (size_t i = 0; i < n && rc == 0; i++) {
            char *path = st_path_join(dir, names[i]);
            rc = path ? st_set_map_file(set, dirfd, names[i], path, err)
                      : engine_error_set(err, -ENOMEM, "%s: out of memory", dir);
            free(path);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static int st_set_open_dir_with(const char *dir, const struct st_image *images, uint32_t n_images,
                                struct st_set **out, struct engine_error *err);

int st_set_open_dir(const char *dir, struct st_set **out, struct engine_error *err)
{
    return st_set_open_dir_with(dir, NULL, 0, out, err);
}

int st_set_open_dir_images(const char *dir, const struct st_image *images, uint32_t n_images,
                           struct st_set **out, struct engine_error *err)
{
    *out = NULL;
    if (!images || n_images == 0 || n_images > ST_FILES_MAX)
        return engine_error_set(err, -EINVAL, "%s: in-memory shard set of %u images (1..%u)",
                                dir, n_images, ST_FILES_MAX);
    return st_set_open_dir_with(dir, images, n_images, out, err);
}

static int st_set_open_dir_with(const char *dir, const struct st_image *images, uint32_t n_images,
                                struct st_set **out, struct engine_error *err)
{
    *out = NULL;
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        int e = errno;
        return engine_error_set(err, -e, "%s: cannot open model directory: %s", dir, strerror(e));
    }
    struct st_set *set = st_set_new();
    if (!set) {
        close(dirfd);
        return engine_error_set(err, -ENOMEM, "%s: out of memory", dir);
    }
    set->images = images;
    set->n_images = n_images;
    int rc;
    struct stat st;
    if (fstatat(dirfd, ST_INDEX_NAME, &st, 0) == 0) {
        rc = st_open_index(set, dir, dirfd, err);
    } else if (fstatat(dirfd, ST_SINGLE_NAME, &st, 0) == 0) {
        char *path = st_path_join(dir, ST_SINGLE_NAME);
        rc = path ? st_set_map_file(set, dirfd, ST_SINGLE_NAME, path, err)
                  : engine_error_set(err, -ENOMEM, "%s: out of memory", dir);
        free(path);
    } else {
        rc = st_open_all(set, dir, dirfd, err);
    }
    close(dirfd);
    set->images = NULL;                 /* only needed while opening */
    set->n_images = 0;
    if (rc < 0) {
        st_set_free(set);
        return rc;
    }
    *out = set;
    return 0;
}

const struct st_tensor *st_set_find(const struct st_set *set, const char *name)
{
    if (!set || !name || set->n_slots == 0)
        return NULL;
    size_t mask = set->n_slots - 1;
    for (size_t i = (size_t)st_hash(name) & mask;; i = (i + 1) & mask) {
        uint32_t s = set->slots[i];
        if (s == 0)
            return NULL;
        if (strcmp(set->tensors[s - 1].name, name) == 0)
            return &set->tensors[s - 1];
    }
}

const struct st_tensor *st_set_findf(const struct st_set *set, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(name))
        return NULL;
    return st_set_find(set, name);
}

size_t st_set_count(const struct st_set *set)
{
    return set ? set->n_tensors : 0;
}

const struct st_tensor *st_set_at(const struct st_set *set, size_t i)
{
    if (!set || i >= set->n_tensors)
        return NULL;
    return &set->tensors[i];
}

uint64_t st_set_mapped_bytes(const struct st_set *set)
{
    return set ? set->mapped : 0;
}

uint32_t st_set_file_count(const struct st_set *set)
{
    return set ? set->n_files : 0;
}

const char *st_set_file_path(const struct st_set *set, uint32_t file)
{
    if (!set || file >= set->n_files)
        return NULL;
    return set->files[file].path;
}

int st_set_file_mapping(const struct st_set *set, uint32_t file, const void **addr, size_t *len)
{
    if (!set || file >= set->n_files)
        return -EINVAL;
    *addr = set->files[file].map;
    *len = set->files[file].size;
    return 0;
}

void st_set_get_stats(const struct st_set *set, struct st_set_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!set)
        return;
    out->files = set->n_files;
    out->mapped_bytes = set->mapped;
    out->files_opened = set->files_opened;
    out->tensors = set->n_tensors;
    for (size_t i = 0; i < set->n_tensors; i++) {
        const struct st_tensor *t = &set->tensors[i];
        out->count_by_dtype[t->dtype]++;
        out->bytes_by_dtype[t->dtype] += t->nbytes;
        out->tensor_bytes += t->nbytes;
    }
}

int st_set_format_report(const struct st_set *set, char *buf, size_t size)
{
    struct st_set_stats s;
    st_set_get_stats(set, &s);
    if (!buf || size == 0)
        return -EINVAL;
    int n = snprintf(buf, size, "%u file%s, %llu tensors, %.1f MiB mapped, %.1f MiB of tensor data",
                     s.files, s.files == 1 ? "" : "s", (unsigned long long)s.tensors,
                     (double)s.mapped_bytes / (1024.0 * 1024.0),
                     (double)s.tensor_bytes / (1024.0 * 1024.0));
    for (int d = 0; d < ST_DTYPE_COUNT && n >= 0 && (size_t)n < size; d++) {
        if (!s.count_by_dtype[d])
            continue;
        n += snprintf(buf + n, size - (size_t)n, "; %s: %llu (%.1f MiB)", st_dtypes[d].name,
                      (unsigned long long)s.count_by_dtype[d],
                      (double)s.bytes_by_dtype[d] / (1024.0 * 1024.0));
    }
    if (n < 0)
        return -EINVAL;
    return (size_t)n >= size ? -ENOSPC : 0;
}
