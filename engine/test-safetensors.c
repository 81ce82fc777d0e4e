/* SPDX-License-Identifier: Apache-2.0 */
/*
 * safetensors reader tests: files are written by a tiny writer in this
 * test (header JSON padded to 8 bytes, data filled with a known pattern),
 * then every validation rule is exercised with a hostile variant whose
 * error message must name the file, tensor or limit involved. Run under
 * ASan/UBSan in CI, so an out-of-bounds read fails the test too. When
 * the fixtures under tests/data/models (tiny-w4g32, tiny-bf16, ...) exist they
 * are opened as real model directories.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/safetensors.h"

/* ------------------------------------------------------------------------ */
/* tiny writer                                                              */

struct blob {
    uint8_t *p;
    size_t   n;
};

/* File image from header JSON text: the header is space-padded to a
 * multiple of 8 (as the reference writer does) unless `raw`, and followed
 * by `data_len` bytes with value (offset & 0xff). */
static struct blob make_file(const char *header, size_t data_len, int raw)
{
    size_t hl = strlen(header);
    size_t padded = raw ? hl : (hl + 7) / 8 * 8;
    struct blob b;
    b.n = 8 + padded + data_len;
    b.p = malloc(b.n);
    assert_non_null(b.p);
    uint64_t l = padded;
    for (int i = 0; i < 8; i++)
        b.p[i] = (uint8_t)(l >> (8 * i));
    memcpy(b.p + 8, header, hl);
    memset(b.p + 8 + hl, ' ', padded - hl);
    for (size_t i = 0; i < data_len; i++)
        b.p[8 + padded + i] = (uint8_t)i;
    return b;
}

static void set_len_field(struct blob *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b->p[i] = (uint8_t)(v >> (8 * i));
}

static char tmpdir[256];

static void write_blob(const char *name, const struct blob *b)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (b->n)
        assert_int_equal(fwrite(b->p, 1, b->n, f), b->n);
    assert_int_equal(fclose(f), 0);
}

static int setup_dir(void **state)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/test-safetensors-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int teardown_dir(void **state)
{
    /* Depth-first, without following links: only what this test wrote. */
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ------------------------------------------------------------------------ */
/* in-memory parsing                                                        */

struct seen {
    int    n;
    const struct st_tensor *last;
    char   names[8][64];
    struct st_tensor t[8];
};

static int collect(void *ctx, const struct st_tensor *t)
{
    struct seen *s = ctx;
    if (s->n < 8) {
        snprintf(s->names[s->n], sizeof(s->names[0]), "%s", t->name);
        s->t[s->n] = *t;
    }
    s->n++;
    return 0;
}

#define GOOD_HEADER                                                          \
    "{\"__metadata__\":{\"format\":\"pt\"},"                                 \
    "\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"    \
    "\"idx\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[12,28]},"    \
    "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[28,32]},"       \
    "\"e\":{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[32,32]}}"

static void test_parse_good(void **state)
{
    struct blob b = make_file(GOOD_HEADER, 32, 0);
    struct seen s = { 0 };
    struct engine_error err = { 0 };
    assert_int_equal(st_parse_buffer(b.p, b.n, "good", collect, &s, &err), 0);
    assert_int_equal(s.n, 4);
    assert_string_equal(s.names[0], "w");
    assert_int_equal(s.t[0].dtype, ST_DTYPE_BF16);
    assert_int_equal(s.t[0].ndim, 2);
    assert_int_equal(s.t[0].shape[1], 3);
    assert_int_equal(s.t[0].numel, 6);
    assert_int_equal(s.t[0].nbytes, 12);
    size_t data0 = b.n - 32;
    assert_ptr_equal(s.t[0].data, b.p + data0);
    assert_string_equal(s.names[1], "idx");
    assert_ptr_equal(s.t[1].data, b.p + data0 + 12);
    assert_int_equal(((const uint8_t *)s.t[1].data)[0], 12);
    assert_int_equal(s.t[2].ndim, 0);
    assert_int_equal(s.t[2].numel, 1);
    assert_int_equal(s.t[3].numel, 0);
    assert_int_equal(s.t[3].nbytes, 0);
    free(b.p);

    /* A callback's non-zero return stops the walk and is passed through. */
    assert_int_equal(st_dtype_size(ST_DTYPE_BF16), 2);
    assert_int_equal(st_dtype_size(ST_DTYPE_COUNT), 0);
    assert_string_equal(st_dtype_name(ST_DTYPE_I32), "I32");
}

static int stop_cb(void *ctx, const struct st_tensor *t)
{
    (*(int *)ctx)++;
    return -ECANCELED;
}

static void test_parse_cb_stop(void **state)
{
    struct blob b = make_file(GOOD_HEADER, 32, 0);
    int calls = 0;
    assert_int_equal(st_parse_buffer(b.p, b.n, "x", stop_cb, &calls, NULL), -ECANCELED);
    assert_int_equal(calls, 1);
    free(b.p);
}

/* Expect failure with a message containing every given substring. */
static void expect_fail_v(const struct blob *b, const char *what, const char *sub1, const char *sub2)
{
    struct engine_error err = { 0 };
    struct seen s = { 0 };
    int rc = st_parse_buffer(b->p, b->n, what, collect, &s, &err);
    if (rc >= 0 || !strstr(err.msg, sub1) || (sub2 && !strstr(err.msg, sub2)))
        fail_msg("expected failure with \"%s\"%s%s, got rc=%d msg=\"%s\"", sub1,
                 sub2 ? " and " : "", sub2 ? sub2 : "", rc, err.msg);
    assert_int_equal(err.code, rc);
    assert_int_equal(s.n, 0);           /* nothing exposed on failure */
}

static void expect_header_fail(const char *header, size_t data_len, const char *sub1, const char *sub2)
{
    struct blob b = make_file(header, data_len, 0);
    expect_fail_v(&b, "bad.safetensors", sub1, sub2);
    free(b.p);
}

static void test_bad_lengths(void **state)
{
    uint8_t small[5] = { 1, 2, 3, 4, 5 };
    struct blob b = { small, sizeof(small) };
    expect_fail_v(&b, "tiny.safetensors", "tiny.safetensors", "shorter than the 8-byte");
    b.n = 0;
    expect_fail_v(&b, "empty", "empty", "shorter than");

    b = make_file("{}", 0, 1);
    set_len_field(&b, 1);
    expect_fail_v(&b, "x", "header length 1", "smallest JSON object");
    set_len_field(&b, 0);
    expect_fail_v(&b, "x", "header length 0", NULL);
    set_len_field(&b, 3);
    expect_fail_v(&b, "trunc.safetensors", "trunc.safetensors: header length 3 runs past the end", NULL);
    set_len_field(&b, UINT64_MAX);
    expect_fail_v(&b, "x", "exceeds the limit", NULL);
    set_len_field(&b, (uint64_t)ST_HEADER_MAX + 1);
    expect_fail_v(&b, "x", "exceeds the limit", NULL);
    set_len_field(&b, 2);
    struct seen s = { 0 };
    assert_int_equal(st_parse_buffer(b.p, b.n, "x", collect, &s, NULL), 0);   /* "{}" is fine */
    assert_int_equal(s.n, 0);
    free(b.p);
}

static void test_bad_json(void **state)
{
    expect_header_fail("not json at all", 0, "bad.safetensors: malformed JSON", NULL);
    expect_header_fail("{\"a\":{\"dtype\":\"F32\",", 0, "bad.safetensors", "ends early");
    expect_header_fail("[1,2]", 0, "header must be a JSON object", NULL);
    expect_header_fail("{} {}", 0, "malformed JSON near offset 3", NULL);
    expect_header_fail("{\"a\":1,}", 0, "malformed JSON", NULL);
    /* json-c takes single-quoted keys even in strict mode; the duplicate
     * scan must see them as keys too. */
    expect_header_fail("{'a':1}", 0, "tensor \"a\": entry must be an object", NULL);
    expect_header_fail("{'a':{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                       "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                       "duplicate tensor name \"a\"", NULL);
    expect_header_fail("{'\"':1}", 0, "tensor \"\"\"", NULL);

    char deep[200];
    size_t k = 0;
    deep[k++] = '{';
    memcpy(deep + k, "\"x\":", 4);
    k += 4;
    for (int i = 0; i < 50; i++)
        deep[k++] = '[';
    for (int i = 0; i < 50; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = '\0';
    expect_header_fail(deep, 0, "nested deeper than", NULL);

    /* A NUL byte inside the header. */
    struct blob b = make_file("{\"a\"   :{}}", 0, 0);
    b.p[8 + 5] = '\0';
    expect_fail_v(&b, "nul.safetensors", "NUL byte in JSON text", NULL);
    free(b.p);

    /* Invalid UTF-8 in a name is refused by the strict parser. */
    expect_header_fail("{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", 1,
                       "bad.safetensors", "JSON");
}

static void test_bad_entries(void **state)
{
    expect_header_fail("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                       "tensor \"t\"", "beyond the data area");
    expect_header_fail("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                       "tensor \"t\"", "reversed");
    expect_header_fail("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\": data_offsets cover 8 bytes but shape x F32 needs 12", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                       "\"t\" and \"u\" overlap", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                       "\"u\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}", 4,
                       "overlap", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\": unknown dtype \"Q4_K\"", NULL);
    expect_header_fail("{\"t\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\"", "dtype");
    expect_header_fail("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\": shape[0] is negative", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\": element count overflows", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\": byte size overflows", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", 8,
                       "tensor \"t\"", "8");
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
                       "tensor \"t\": 9 dimensions exceeds the limit of 8", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1,
                       "shape[0] must be an integer", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
                       "data_offsets\" must be an array [begin, end]", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
                       "data_offsets[0] is negative", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,\"1\"]}}", 1,
                       "data_offsets[1] must be an integer", NULL);
    expect_header_fail("{\"t\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1,
                       "\"shape\" missing", NULL);
    expect_header_fail("{\"t\":[1,2]}", 1, "tensor \"t\": entry must be an object", NULL);
    expect_header_fail("{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                       "empty tensor name", NULL);
    expect_header_fail("{\"__metadata__\":{\"format\":5}}", 0, "__metadata__.format must be a string", NULL);
    expect_header_fail("{\"__metadata__\":[1]}", 0, "__metadata__ must be an object", NULL);
    /* An I32 tensor starting at an odd file offset would be read through a
     * misaligned pointer. */
    expect_header_fail("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                       "\"t\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[1,5]}}", 5,
                       "tensor \"t\"", "not aligned");
}

static void test_bad_names(void **state)
{
    expect_header_fail("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                       "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                       "duplicate tensor name \"a\"", NULL);
    /* The same name spelled with an escape is still a duplicate. */
    expect_header_fail("{\"ab\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                       "\"\\u0061b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                       "duplicate tensor name \"ab\"", NULL);
    expect_header_fail("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                       "escaped NUL", NULL);
    /* An escaped backslash followed by "u0000" is an ordinary name. */
    struct blob b = make_file("{\"a\\\\u0000\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 0);
    struct seen s = { 0 };
    assert_int_equal(st_parse_buffer(b.p, b.n, "x", collect, &s, NULL), 0);
    assert_string_equal(s.names[0], "a\\u0000");
    free(b.p);
    /* Keys of nested objects do not count as tensor names. */
    b = make_file("{\"__metadata__\":{\"a\":\"x\"},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 0);
    memset(&s, 0, sizeof(s));
    assert_int_equal(st_parse_buffer(b.p, b.n, "x", collect, &s, NULL), 0);
    assert_int_equal(s.n, 1);
    free(b.p);
}

/* Every strict prefix of a good file must fail cleanly (no crash, no
 * out-of-bounds read under ASan) - the truncated-download case. */
static void test_truncated_prefixes(void **state)
{
    struct blob b = make_file(GOOD_HEADER, 32, 0);
    for (size_t n = 0; n < b.n; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, b.p, n);
        struct engine_error err = { 0 };
        int rc = st_parse_buffer(copy, n, "prefix", NULL, NULL, &err);
        assert_true(rc < 0);
        assert_non_null(strstr(err.msg, "prefix"));
        free(copy);
    }
    free(b.p);
}

/* ------------------------------------------------------------------------ */
/* files and directories                                                    */

static void subdir(const char *name, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", tmpdir, name);
    assert_int_equal(mkdir(out, 0700), 0);
}

static void write_in(const char *dir, const char *name, const struct blob *b)
{
    char saved[256];
    memcpy(saved, tmpdir, sizeof(saved));
    snprintf(tmpdir, sizeof(tmpdir), "%s", dir);
    write_blob(name, b);
    memcpy(tmpdir, saved, sizeof(saved));
}

static void write_text_in(const char *dir, const char *name, const char *text)
{
    struct blob b = { (uint8_t *)(uintptr_t)text, strlen(text) };
    write_in(dir, name, &b);
}

static void test_open_single(void **state)
{
    char dir[512];
    subdir("single", dir, sizeof(dir));
    struct blob b = make_file(GOOD_HEADER, 32, 0);
    write_in(dir, "model.safetensors", &b);

    struct st_set *set = NULL;
    struct engine_error err = { 0 };
    int rc = st_set_open_dir(dir, &set, &err);
    if (rc < 0)
        fail_msg("open_dir: %s", err.msg);
    assert_int_equal(st_set_count(set), 4);
    assert_int_equal(st_set_file_count(set), 1);
    assert_int_equal(st_set_mapped_bytes(set), b.n);
    const struct st_tensor *t = st_set_find(set, "idx");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_DTYPE_I32);
    assert_memory_equal(t->data, b.p + b.n - 32 + 12, 16);
    assert_null(st_set_find(set, "nope"));
    assert_null(st_set_find(set, ""));
    assert_ptr_equal(st_set_findf(set, "%s%c", "id", 'x'), t);
    assert_null(st_set_at(set, 4));
    assert_non_null(strstr(st_set_file_path(set, 0), "single/model.safetensors"));
    assert_null(st_set_file_path(set, 1));

    struct st_set_stats stats;
    st_set_get_stats(set, &stats);
    assert_int_equal(stats.tensors, 4);
    assert_int_equal(stats.count_by_dtype[ST_DTYPE_BF16], 1);
    assert_int_equal(stats.bytes_by_dtype[ST_DTYPE_I32], 16);
    assert_int_equal(stats.tensor_bytes, 32);
    char rep[256];
    assert_int_equal(st_set_format_report(set, rep, sizeof(rep)), 0);
    assert_non_null(strstr(rep, "1 file, 4 tensors"));
    assert_non_null(strstr(rep, "I32: 1"));
    assert_int_equal(st_set_format_report(set, rep, 10), -ENOSPC);
    st_set_free(set);

    /* The same file through st_set_open_file. */
    char path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    assert_int_equal(st_set_open_file(path, &set, &err), 0);
    assert_non_null(st_set_find(set, "w"));
    st_set_free(set);
    free(b.p);
}

#define SHARD1 \
    "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}," \
    "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}"
#define SHARD2 \
    "{\"c\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}"
#define INDEX_OK \
    "{\"metadata\":{\"total_size\":27},\"weight_map\":{" \
    "\"a\":\"model-00001-of-00002.safetensors\"," \
    "\"b\":\"model-00001-of-00002.safetensors\"," \
    "\"c\":\"model-00002-of-00002.safetensors\"}}"

static void make_sharded(const char *name, char *dir, size_t n, const char *index)
{
    subdir(name, dir, n);
    struct blob s1 = make_file(SHARD1, 11, 0), s2 = make_file(SHARD2, 16, 0);
    write_in(dir, "model-00001-of-00002.safetensors", &s1);
    write_in(dir, "model-00002-of-00002.safetensors", &s2);
    if (index)
        write_text_in(dir, "model.safetensors.index.json", index);
    free(s1.p);
    free(s2.p);
}

static void test_open_sharded(void **state)
{
    char dir[512];
    make_sharded("sharded", dir, sizeof(dir), INDEX_OK);
    struct st_set *set = NULL;
    struct engine_error err = { 0 };
    if (st_set_open_dir(dir, &set, &err) < 0)
        fail_msg("open_dir: %s", err.msg);
    assert_int_equal(st_set_count(set), 3);
    assert_int_equal(st_set_file_count(set), 2);
    const struct st_tensor *c = st_set_find(set, "c");
    assert_non_null(c);
    assert_int_equal(c->file, 1);
    assert_non_null(strstr(st_set_file_path(set, c->file), "model-00002-of-00002"));
    assert_int_equal(st_set_find(set, "a")->file, 0);
    for (size_t i = 0; i < st_set_count(set); i++)
        assert_ptr_equal(st_set_find(set, st_set_at(set, i)->name), st_set_at(set, i));
    st_set_free(set);

    /* Without an index every *.safetensors is opened. */
    char dir2[512];
    make_sharded("noindex", dir2, sizeof(dir2), NULL);
    write_text_in(dir2, "README.md", "not a shard");
    if (st_set_open_dir(dir2, &set, &err) < 0)
        fail_msg("open_dir: %s", err.msg);
    assert_int_equal(st_set_count(set), 3);
    st_set_free(set);
}

static void expect_dir_fail(const char *dir, const char *sub1, const char *sub2)
{
    struct st_set *set = (struct st_set *)(uintptr_t)1;
    struct engine_error err = { 0 };
    int rc = st_set_open_dir(dir, &set, &err);
    if (rc >= 0 || !strstr(err.msg, sub1) || (sub2 && !strstr(err.msg, sub2)))
        fail_msg("%s: expected failure with \"%s\", got rc=%d msg=\"%s\"", dir, sub1, rc, err.msg);
    assert_null(set);
}

static void test_bad_dirs(void **state)
{
    char dir[512];
    make_sharded("missing-shard", dir, sizeof(dir),
                 "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                 "\"z\":\"model-00003-of-00003.safetensors\"}}");
    expect_dir_fail(dir, "model.safetensors.index.json: weight_map names shard \"model-00003-of-00003.safetensors\"",
                    "missing");

    make_sharded("index-malformed", dir, sizeof(dir), "{\"weight_map\": {\"a\": ");
    expect_dir_fail(dir, "model.safetensors.index.json", "JSON");

    make_sharded("index-no-map", dir, sizeof(dir), "{\"metadata\":{}}");
    expect_dir_fail(dir, "index.json: \"weight_map\" missing", NULL);

    make_sharded("index-elsewhere", dir, sizeof(dir),
                 "{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\","
                 "\"b\":\"model-00001-of-00002.safetensors\","
                 "\"c\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_fail(dir, "weight_map puts tensor \"a\" in model-00002-of-00002.safetensors, but it is in", NULL);

    make_sharded("index-absent-tensor", dir, sizeof(dir),
                 "{\"weight_map\":{\"q\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_fail(dir, "weight_map puts tensor \"q\"", "no shard contains it");

    make_sharded("index-traversal", dir, sizeof(dir),
                 "{\"weight_map\":{\"a\":\"../model-00001-of-00002.safetensors\"}}");
    expect_dir_fail(dir, "weight_map.a names \"../model-00001-of-00002.safetensors\"", "not a plain file name");

    make_sharded("index-type", dir, sizeof(dir), "{\"weight_map\":{\"a\":3}}");
    expect_dir_fail(dir, "weight_map.a must be a shard file name", NULL);

    /* Same tensor in two shards (directory scan, no index). */
    subdir("dup-across", dir, sizeof(dir));
    struct blob s1 = make_file(SHARD1, 11, 0);
    write_in(dir, "a.safetensors", &s1);
    write_in(dir, "b.safetensors", &s1);
    expect_dir_fail(dir, "tensor \"a\" is also in", "unique across shards");

    /* A truncated shard: the last tensor runs past the end of the file. */
    subdir("truncated", dir, sizeof(dir));
    s1.n -= 2;
    write_in(dir, "model.safetensors", &s1);
    expect_dir_fail(dir, "truncated/model.safetensors: tensor \"b\"", "beyond the data area");
    s1.n = 5;
    write_in(dir, "model.safetensors", &s1);
    expect_dir_fail(dir, "truncated/model.safetensors: file is 5 bytes", NULL);
    free(s1.p);

    subdir("empty", dir, sizeof(dir));
    expect_dir_fail(dir, "is this a model directory", NULL);

    /* An index.json past the size limit (sparse: no disk used) is refused
     * from its size alone, before anything is read. */
    subdir("huge-index", dir, sizeof(dir));
    char path[700];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)ST_HEADER_MAX + 1), 0);
    close(fd);
    expect_dir_fail(dir, "model.safetensors.index.json: 104857601 bytes exceeds the 104857600 byte limit", NULL);

    /* A header that claims more than ST_HEADER_MAX in a file that really
     * is that large (sparse). */
    subdir("huge-header", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    uint8_t len8[8] = { 0 };
    uint64_t big = (uint64_t)ST_HEADER_MAX + 8;
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)(big >> (8 * i));
    assert_int_equal(write(fd, len8, 8), 8);
    assert_int_equal(ftruncate(fd, (off_t)big + 64), 0);
    close(fd);
    expect_dir_fail(dir, "huge-header/model.safetensors: header length 104857608 exceeds the limit", NULL);

    /* A directory where a shard should be. */
    subdir("shard-is-dir", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    expect_dir_fail(dir, "shard-is-dir/model.safetensors: not a regular file", NULL);

    snprintf(dir, sizeof(dir), "%s/does-not-exist", tmpdir);
    expect_dir_fail(dir, "does-not-exist: cannot open model directory", NULL);

    struct st_set *set = NULL;
    struct engine_error err = { 0 };
    assert_true(st_set_open_file("/nonexistent/x.safetensors", &set, &err) < 0);
    assert_non_null(strstr(err.msg, "/nonexistent/x.safetensors: cannot open"));
    assert_null(st_set_find(NULL, "x"));
    assert_int_equal(st_set_count(NULL), 0);
    st_set_free(NULL);
}

static int count_entry(void *ctx, const char *tensor, const char *shard)
{
    (*(int *)ctx)++;
    return strcmp(tensor, "stop") == 0 ? -ECANCELED : 0;
}

static void expect_index_fail(const char *text, const char *sub)
{
    struct engine_error err = { 0 };
    int n = 0;
    int rc = st_index_parse_buffer(text, strlen(text), "index.json", count_entry, &n, &err);
    if (rc >= 0 || !strstr(err.msg, sub))
        fail_msg("expected failure with \"%s\", got rc=%d msg=\"%s\"", sub, rc, err.msg);
    assert_int_equal(n, 0);
}

static void test_index_parse(void **state)
{
    int n = 0;
    struct engine_error err = { 0 };
    assert_int_equal(st_index_parse_buffer(INDEX_OK, strlen(INDEX_OK), "index.json", count_entry, &n, &err), 0);
    assert_int_equal(n, 3);
    const char *stop = "{\"weight_map\":{\"a\":\"x.safetensors\",\"stop\":\"x.safetensors\",\"c\":\"y\"}}";
    n = 0;
    assert_int_equal(st_index_parse_buffer(stop, strlen(stop), NULL, count_entry, &n, NULL), -ECANCELED);
    assert_int_equal(n, 2);

    expect_index_fail("[]", "index.json: \"weight_map\" missing");
    expect_index_fail("{\"weight_map\":[]}", "\"weight_map\" missing or not an object");
    expect_index_fail("{\"weight_map\":{}}", "index.json: \"weight_map\" is empty");
    expect_index_fail("{\"weight_map\":{\"a\":\"/etc/passwd\"}}", "weight_map.a names \"/etc/passwd\"");
    expect_index_fail("{\"weight_map\":{\"a\":\"..\"}}", "not a plain file name");
    expect_index_fail("{\"weight_map\":{\"a\":\"\"}}", "not a plain file name");
    expect_index_fail("{\"weight_map\":{\"a\":\"x\\u0000y\"}}", "not a plain file name");
    expect_index_fail("{\"weight_map\":{\"a\":null}}", "weight_map.a must be a shard file name string");
    expect_index_fail("{\"weight_map\":", "index.json: JSON text ends early");
}

/* Opening a set must read header pages only: the data of a tensor nobody
 * uses (the vision tower) must never be faulted in. Measured with
 * mincore() after dropping the file from the page cache; skipped where
 * the cache cannot be dropped (tmpfs). The first 64 KiB of the tensor are
 * not checked: they share pages with the header. */
static void test_data_pages_untouched(void **state)
{
    char dir[512];
    subdir("lazy", dir, sizeof(dir));
    const size_t big = 16u << 20;
    char header[256];
    snprintf(header, sizeof(header),
             "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]},"
             "\"model.visual.blocks.0.attn.qkv.weight\":{\"dtype\":\"BF16\",\"shape\":[4096,2048],"
             "\"data_offsets\":[8,%zu]}}", 8 + big);
    struct blob b = make_file(header, 8 + big, 0);
    write_in(dir, "model.safetensors", &b);
    free(b.p);

    char path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fsync(fd), 0);
    assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);

    long pg = sysconf(_SC_PAGESIZE);
    size_t npages = big / (size_t)pg + 2;
    unsigned char *vec = malloc(npages);
    assert_non_null(vec);

    struct st_set *set = NULL;
    struct engine_error err = { 0 };
    assert_int_equal(st_set_open_file(path, &set, &err), 0);
    const struct st_tensor *t = st_set_find(set, "model.visual.blocks.0.attn.qkv.weight");
    assert_non_null(t);
    uintptr_t lo = ((uintptr_t)t->data + (64u << 10) + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t hi = ((uintptr_t)t->data + t->nbytes) & ~((uintptr_t)pg - 1);
    size_t n = (hi - lo) / (size_t)pg;
    assert_int_equal(mincore((void *)lo, hi - lo, vec), 0);
    size_t resident = 0;
    for (size_t i = 0; i < n; i++)
        resident += vec[i] & 1;
    if (resident == n) {
        printf("SKIP data-page check: page cache of %s cannot be dropped here (tmpfs?)\n", path);
        st_set_free(set);
        close(fd);
        free(vec);
        skip();
    }
    printf("vision tensor pages resident after open: %zu of %zu (must be 0)\n", resident, n);
    assert_int_equal(resident, 0);

    /* The measurement itself works: reading the data makes it resident. */
    unsigned sum = 0;
    for (uintptr_t a = lo; a < hi; a += (uintptr_t)pg)
        sum += *(volatile const unsigned char *)a;
    (void)sum;
    assert_int_equal(mincore((void *)lo, hi - lo, vec), 0);
    resident = 0;
    for (size_t i = 0; i < n; i++)
        resident += vec[i] & 1;
    printf("after reading it: %zu of %zu resident\n", resident, n);
    assert_int_equal(resident, n);
    st_set_free(set);
    close(fd);
    free(vec);
}

/* Real fixtures produced by transformers + llm-compressor, when present. */
static void check_fixture(const char *name)
{
    const char *root = getenv("RESIDENT_SOURCE_ROOT");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/tests/data/models/%s", root ? root : ".", name);
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("SKIP %s: fixture directory %s is absent\n", name, dir);
        skip();
    }
    struct st_set *set = NULL;
    struct engine_error err = { 0 };
    if (st_set_open_dir(dir, &set, &err) < 0)
        fail_msg("%s: %s", name, err.msg);
    assert_true(st_set_count(set) > 0);
    for (size_t i = 0; i < st_set_count(set); i++) {
        const struct st_tensor *t = st_set_at(set, i);
        assert_ptr_equal(st_set_find(set, t->name), t);
        assert_true(t->file < st_set_file_count(set));
    }
    char rep[512];
    st_set_format_report(set, rep, sizeof(rep));
    printf("%s: %s\n", name, rep);
    st_set_free(set);
}

static void test_fixture_w4g32(void **state)
{
    check_fixture("tiny-w4g32");
}

static void test_fixture_bf16(void **state)
{
    check_fixture("tiny-bf16");
}

static void test_fixture_w4g32_fused(void **state)
{
    check_fixture("tiny-w4g32-fused");
}

static void test_fixture_w4g32_partial(void **state)
{
    check_fixture("tiny-w4g32-partial");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_cb_stop),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_truncated_prefixes),
        cmocka_unit_test(test_index_parse),
        cmocka_unit_test(test_open_single),
        cmocka_unit_test(test_open_sharded),
        cmocka_unit_test(test_data_pages_untouched),
        cmocka_unit_test(test_bad_dirs),
        cmocka_unit_test(test_fixture_w4g32),
        cmocka_unit_test(test_fixture_bf16),
        cmocka_unit_test(test_fixture_w4g32_fused),
        cmocka_unit_test(test_fixture_w4g32_partial),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
