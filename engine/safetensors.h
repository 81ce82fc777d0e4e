/* SPDX-License-Identifier: Apache-2.0 */
/*
 * safetensors reader: single files and sharded model directories.
 *
 * A file is `[u64 LE N][N bytes JSON header][data]`. Files are mapped
 * read-only (MAP_PRIVATE, PROT_READ) once and shared by every sequence; a
 * tensor is a pointer into that mapping, never a copy. Every header is
 * hostile input: the length, each dtype, shape and data_offsets are checked
 * with overflow-checked arithmetic (offsets in range, non-overlapping,
 * byte size == product(shape) * dtype size, JSON size limit) before any
 * tensor is exposed.
 *
 * Guarantees to callers: `data` is aligned to st_dtype_size(dtype) (so it
 * may be read through a typed pointer), [data, data + nbytes) lies inside
 * the mapping, no two tensors overlap, names are unique NUL-free UTF-8.
 * Opening touches only the header pages; the data pages of tensors nobody
 * uses (the vision tower) are never read. The mapping stays valid until
 * st_set_free(); the files must not be truncated meanwhile (SIGBUS).
 */
#ifndef RESIDENT_ENGINE_SAFETENSORS_H
#define RESIDENT_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"

#define ST_MAX_DIMS        8
#define ST_HEADER_MAX      (100u << 20)   /* 100 MiB JSON header limit */
#define ST_TENSORS_MAX     (1u << 20)     /* per set; the W4A16 35B has ~100k */
#define ST_FILES_MAX       4096u          /* shards per set                   */

enum st_dtype {
    ST_DTYPE_F64, ST_DTYPE_F32, ST_DTYPE_F16, ST_DTYPE_BF16,
    ST_DTYPE_I64, ST_DTYPE_I32, ST_DTYPE_I16, ST_DTYPE_I8,
    ST_DTYPE_U8,  ST_DTYPE_BOOL,
    ST_DTYPE_COUNT
};

struct st_tensor {
    const char   *name;                 /* NUL-terminated, owned by the set   */
    enum st_dtype dtype;
    uint32_t      ndim;                 /* 0..ST_MAX_DIMS                     */
    int64_t       shape[ST_MAX_DIMS];
    uint64_t      numel;                /* product(shape)                     */
    uint64_t      nbytes;               /* numel * st_dtype_size(dtype)       */
    const void   *data;                 /* inside the read-only mapping       */
    uint32_t      file;                 /* index of the shard it lives in     */
};

struct st_set;                          /* opaque: one or more mapped files   */

/* Size in bytes of one element, 0 for an invalid dtype. */
size_t st_dtype_size(enum st_dtype dtype);
const char *st_dtype_name(enum st_dtype dtype);

/* Open one .safetensors file. */
int st_set_open_file(const char *path, struct st_set **out, struct engine_error *err);

/* Open a model directory: `model.safetensors.index.json` (sharded) if present,
 * else `model.safetensors`, else every `*.safetensors` in the directory.
 * Tensor names must be unique across shards; the index's weight_map must name
 * only existing shards and each tensor must be in the shard it names. */
int st_set_open_dir(const char *dir, struct st_set **out, struct engine_error *err);

/* The contents of one shard file already in memory (e.g. a sealed memfd
 * kept in systemd's fd store across a restart). `data` is borrowed: it must
 * stay mapped, unchanged, until st_set_free(), and start on a page boundary
 * (as a file mapping does: tensor alignment is checked as a file offset). */
struct st_image {
    const char *name;                   /* the shard's file name, no '/'     */
    const void *data;                   /* the whole file image              */
    uint64_t    size;                   /* == the file's size                */
};

/**
 * st_set_open_dir_images() - open a model directory whose shards are in memory
 * @dir:      the model directory: its index (or file list) decides which
 *            shards make up the set, exactly as st_set_open_dir()
 * @images:   the shards' contents; images no shard needs are ignored
 * @n_images: 1..ST_FILES_MAX
 * @out:      the set; its tensors point into the images
 * @err:      filled on failure
 *
 * No shard file is opened or read (st_set_get_stats().files_opened stays 0);
 * only the small index is read and each shard is stat()ed. Every check of
 * the file path applies to the images (header, dtypes, offsets, overlap,
 * alignment, index placement). The caller proves the images are the
 * directory's current files (names, sizes, mtimes); this function checks
 * the sizes again.
 *
 * Return: 0; -ESTALE when a shard has no image or its image's size differs
 * from the file's; -EINVAL for an unaligned image; else as st_set_open_dir().
 */
int st_set_open_dir_images(const char *dir, const struct st_image *images, uint32_t n_images,
                           struct st_set **out, struct engine_error *err);
void st_set_free(struct st_set *set);

/* Lookup by exact name; NULL when absent. O(1) average (hash table). */
const struct st_tensor *st_set_find(const struct st_set *set, const char *name);

size_t st_set_count(const struct st_set *set);
const struct st_tensor *st_set_at(const struct st_set *set, size_t i);

/* Bytes mapped in total and the path of shard `file` (for messages). */
uint64_t st_set_mapped_bytes(const struct st_set *set);
const char *st_set_file_path(const struct st_set *set, uint32_t file);

/* Lookup by a printf-formatted name ("model.layers.%d.mlp.gate.weight");
 * NULL when absent or when the name would exceed 511 bytes. */
const struct st_tensor *st_set_findf(const struct st_set *set, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

uint32_t st_set_file_count(const struct st_set *set);

/* The read-only mapping of shard `file` (the whole file), e.g. for mlock by
 * the daemon. Returns 0, or -EINVAL for a bad index (outputs untouched). */
int st_set_file_mapping(const struct st_set *set, uint32_t file, const void **addr, size_t *len);

/* Loader report: tensors and bytes per dtype, files and bytes mapped. */
struct st_set_stats {
    uint32_t files;
    uint64_t tensors;
    uint64_t tensor_bytes;              /* sum of nbytes                      */
    uint64_t mapped_bytes;              /* == st_set_mapped_bytes()           */
    uint32_t files_opened;              /* shards opened from the file system
                                           (0 for st_set_open_dir_images)     */
    uint64_t count_by_dtype[ST_DTYPE_COUNT];
    uint64_t bytes_by_dtype[ST_DTYPE_COUNT];
};
void st_set_get_stats(const struct st_set *set, struct st_set_stats *out);

/* One-line human summary ("2 files, 1234 tensors, ... ; BF16: 12 (3.0 MiB)")
 * into buf. Returns 0, or -ENOSPC when truncated (buf still terminated). */
int st_set_format_report(const struct st_set *set, char *buf, size_t size);

/* Parse a header held in memory (the fuzz entry point). `buf`/`len` is the
 * whole file image; on success calls `cb` once per tensor (the `data` field
 * points into `buf`; `name` is valid only during the call). Tensors come in
 * header order. A non-zero return from `cb` stops the walk and is returned.
 * Returns 0 or -errno with `err` set. */
typedef int (*st_tensor_cb)(void *ctx, const struct st_tensor *t);
int st_parse_buffer(const uint8_t *buf, size_t len, const char *what,
                    st_tensor_cb cb, void *ctx, struct engine_error *err);

/* Parse model.safetensors.index.json text (the fuzz entry point for the
 * index): checks that "weight_map" is a non-empty object of plain shard
 * file names (no '/', not "." or "..", valid UTF-8), then calls `cb` once
 * per entry in file order; strings are valid only during the call. A
 * non-zero return from `cb` stops the walk and is returned. */
typedef int (*st_index_cb)(void *ctx, const char *tensor, const char *shard);
int st_index_parse_buffer(const char *json, size_t len, const char *what,
                          st_index_cb cb, void *ctx, struct engine_error *err);

#endif
