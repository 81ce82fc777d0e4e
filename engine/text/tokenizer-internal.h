/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Private to engine/text/tokenizer*.c and detok.c: the loaded tokenizer's
 * layout, the small JSON scanner used for the big vocabulary files, and the
 * GPT-2 byte <-> code point table.
 *
 * Memory layout of a loaded tokenizer (Qwen3.6: 248,077 ids, ~250K merges):
 *   entries[id]   offset/length of the bytes the id decodes to, in `blob`,
 *                 and flags (present / added / special / reachable by BPE)
 *   vocab_slots   open-addressing hash of BPE tokens keyed by their raw
 *                 bytes (lookups by content: merge results, token_to_id)
 *   merge_slots   open-addressing hash (left id, right id) -> (rank, id)
 *   added         added tokens with their HF flags, and two matchers: one
 *                 for the raw text, one for the NFC-normalised text
 * Everything is read-only after tokenizer_load() except `cache`, which has
 * its own locks.
 */
#ifndef RESIDENT_ENGINE_TEXT_TOKENIZER_INTERNAL_H
#define RESIDENT_ENGINE_TEXT_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine/error.h"
#include "engine/text/tokenizer.h"

/* Hard limits on what a model directory may ask of us. */
#define TOK_MAX_IDS         (1u << 22)          /* 4M ids                   */
#define TOK_MAX_TOKEN_BYTES 1024u               /* one token's bytes        */
#define TOK_MAX_ADDED       65536u
#define TOK_MAX_FILE_BYTES  ((size_t)256 << 20) /* tokenizer.json et al.    */
#define TOK_MAX_INPUT_BYTES ((size_t)1 << 30)   /* one encode call          */

enum {
    TOK_F_PRESENT = 1u << 0,    /* the id names a token                    */
    TOK_F_ADDED   = 1u << 1,    /* an added token                          */
    TOK_F_SPECIAL = 1u << 2,    /* added token with "special": true        */
    TOK_F_BPE     = 1u << 3,    /* vocabulary key made only of byte chars  */
};

struct tok_entry {
    uint32_t off;               /* into tokenizer.blob                     */
    uint16_t len;               /* decoded byte length                     */
    uint8_t  flags;
    uint8_t  pad;
};

struct tok_added {
    char    *content;           /* as matched (NFC form when normalized)   */
    size_t   len;
    int32_t  id;
    bool     single_word, lstrip, rstrip, normalized, special;
};

/* Leftmost-longest matcher over a handful of added tokens: for each first
 * byte, the candidate tokens sorted longest first. */
struct tok_matcher {
    uint32_t first_count[256];
    uint32_t first_start[256];
    const struct tok_added **cand;  /* grouped by first byte               */
    size_t   n;
};

struct tok_merge_slot {
    uint64_t key;               /* left << 32 | right; UINT64_MAX = empty  */
    uint32_t rank;
    int32_t  merged;
};

/* Word cache: pre-token bytes -> ids, shared by all threads. Sharded so
 * concurrent encoders rarely meet on one lock; direct-mapped slots so a
 * hostile stream of distinct words cannot grow memory. */
#define TOK_CACHE_SHARDS      64u
#define TOK_CACHE_SLOTS       1024u     /* per shard                       */
#define TOK_CACHE_KEY_MAX     22u
#define TOK_CACHE_IDS_MAX     6u

struct tok_cache_slot {
    uint32_t hash;
    uint8_t  key_len;           /* 0 = empty                               */
    uint8_t  n_ids;
    char     key[TOK_CACHE_KEY_MAX];
    int32_t  ids[TOK_CACHE_IDS_MAX];
};

struct tok_cache_shard {
    pthread_mutex_t       lock;
    struct tok_cache_slot slot[TOK_CACHE_SLOTS];
};

struct tokenizer {
    size_t            n_ids;            /* highest id + 1                  */
    struct tok_entry *entries;
    char             *blob;
    size_t            blob_len;
    size_t            max_token_bytes;

    uint64_t         *vocab_slots;      /* hash<<32 | id+1; 0 = empty      */
    size_t            vocab_mask;

    struct tok_merge_slot *merge_slots;
    size_t            merge_mask;
    size_t            n_merges;

    int32_t           byte_id[256];     /* single-byte token of each byte  */

    struct tok_added *added;
    size_t            n_added;
    struct tok_matcher match_raw;       /* normalized == false             */
    struct tok_matcher match_norm;      /* normalized == true              */

    bool              nfc;
    bool              ignore_merges;
    char             *pattern;          /* split regex as in the file;
                                           NULL: no split                  */
    pcre2_code       *split_re;         /* exact: Unicode 16 classes      */
    pcre2_code       *split_fast;       /* PCRE2's own classes: the same
                                           result for text without any
                                           code point new in Unicode 15/16 */
    bool              split_re_jit, split_fast_jit;
    const char       *pretok_name;

    struct tok_cache_shard *cache;      /* TOK_CACHE_SHARDS shards         */
    uint64_t          source_fp;        /* identity of the source files at
                                           load (0: not from a directory)  */
};

/* GPT-2 byte-level alphabet: byte -> code point, and the reverse for code
 * points < 324 (-1 where none). */
extern const uint16_t tok_byte_to_cp[256];
int tok_cp_to_byte(uint32_t cp);

/* Convert a vocabulary key (UTF-8 of GPT-2 alphabet characters) to the
 * bytes it stands for; `out` must hold `len` bytes. Returns the byte count,
 * or -1 when a character is outside the alphabet. */
ssize_t tok_key_to_bytes(const char *key, size_t len, char *out);

/* Split regexes known by name, as tokenizer.json spells them. */
extern const char tok_pat_qwen35[], tok_pat_qwen2[], tok_pat_gpt2[];

/* Compile tok->pattern into tok->split_re and tok->split_fast (NULL
 * pattern: no split) and set tok->pretok_name (tokenizer-split.c). */
int tok_split_compile(struct tokenizer *tok, const char *what,
                      struct engine_error *err);

/* Build the matcher for added tokens whose "normalized" flag equals
 * `normalized` (tokenizer-split.c). */
int tok_matcher_build(const struct tokenizer *tok, struct tok_matcher *m,
                      bool normalized, struct engine_error *err);

/* FNV-1a style 64-bit hash folded to what the tables need. */
uint64_t tok_hash_bytes(const void *data, size_t len);

/* Id of the BPE token whose bytes are exactly data[0..len), or -1. */
int32_t tok_vocab_find(const struct tokenizer *tok, const void *data,
                       size_t len);

/* UTF-8: decode one code point at s[0..len) (len >= 1). Returns its length
 * (1-4) and stores the code point, or 0 for an invalid or truncated
 * sequence (overlongs, surrogates and > U+10FFFF are invalid). */
size_t tok_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp);

/* Offset of the first invalid byte, or len when all of s is valid UTF-8. */
size_t tok_utf8_check(const uint8_t *s, size_t len);

/* NFC as HF tokenizers computes it (utf8proc, with marks added after
 * Unicode 9.0 kept as starters; see tokenizer.c). `s` must be valid UTF-8.
 * Returns a malloc'd buffer, or NULL with `err` set. */
uint8_t *tok_nfc(const uint8_t *s, size_t n, size_t *out_len,
                 struct engine_error *err);

/* Tests and fuzzing: run only the split regex over valid UTF-8 `text`,
 * calling fn for each pre-token. */
int tok_split_for_test(const struct tokenizer *tok, const char *text,
                       size_t len,
                       int (*fn)(void *ctx, const char *w, size_t n),
                       void *ctx, struct engine_error *err);

/* Build a tokenizer from tokenizer.json text in memory (the loader behind
 * tokenizer_load(); used by the fuzz harness). */
int tok_load_json_buffer(const char *text, size_t len, struct tokenizer **out,
                         struct engine_error *err);

/* Matchers, split regex and word cache from the tables (tokenizer-load.c). */
int tok_finish_runtime(struct tokenizer *tok, const char *what,
                       struct engine_error *err);

/* Binary cache of the loaded tables (tokenizer-cache.c). read: 0 and *out
 * on a valid cache for `fingerprint`, -ENOENT when absent or stale, other
 * -errno when damaged (the caller then rebuilds). write: best effort,
 * atomic (temporary file + rename). */
int tok_cache_read(const char *path, uint64_t fingerprint,
                   struct tokenizer **out, struct engine_error *err);
int tok_cache_write(const char *path, uint64_t fingerprint,
                    const struct tokenizer *tok, struct engine_error *err);
/* The bytes tok_cache_write() writes, malloc'd into *out. */
int tok_cache_serialize(uint64_t fingerprint, const struct tokenizer *tok,
                        char **out, size_t *out_len, struct engine_error *err);
/* The cache reader on a buffer (`path` only names it in messages), and for
 * the fuzz harness: make a buffer's header consistent (magic, version,
 * length, payload hash) so that mutations reach the table checks. */
int tok_cache_parse(const char *buf, size_t n, uint64_t fingerprint,
                    const char *path, struct tokenizer **out,
                    struct engine_error *err);
void tok_cache_fuzz_fixup(void *data, size_t n);
/* The source identity an image's header claims (0 when too short), for
 * messages only: tok_cache_parse() is what checks it. */
uint64_t tok_cache_image_fingerprint(const void *data, size_t n);

/* ---- minimal JSON scanner (tokenizer-json.c) ----
 * Just enough JSON to stream through tokenizer.json / vocab.json without
 * building 500K json-c objects (measured: json-c takes ~160 ms to parse and
 * ~65 ms to free the 11 MB Qwen3 file; the scanner walks it in ~10 ms).
 * Strict RFC 8259 syntax, UTF-8 validated, nesting bounded. */
struct tokjson {
    const char *start, *p, *end;
    const char *what;                   /* file name for messages          */
    char       *sbuf;                   /* decoded string scratch          */
    size_t      sbuf_cap;
    struct engine_error *err;
};

void tokjson_init(struct tokjson *js, const char *text, size_t len,
                  const char *what, struct engine_error *err);
void tokjson_fini(struct tokjson *js);
/* Expect '{' / '['. */
int tokjson_object_begin(struct tokjson *js);
int tokjson_array_begin(struct tokjson *js);
/* Next member: 1 with the key decoded into *key (valid until the next
 * string read), 0 at '}', -errno on a syntax error. */
int tokjson_object_next(struct tokjson *js, const char **key, size_t *klen);
/* Next element: 1 when one follows, 0 at ']'. */
int tokjson_array_next(struct tokjson *js);
/* 1 when the next value is of that kind (no consumption). */
bool tokjson_peek_string(struct tokjson *js);
bool tokjson_peek_array(struct tokjson *js);
bool tokjson_peek_null(struct tokjson *js);
int tokjson_string(struct tokjson *js, const char **s, size_t *len);
int tokjson_int(struct tokjson *js, int64_t *v);
int tokjson_bool(struct tokjson *js, bool *v);
/* Skip any value; with span != NULL, return the raw text of it. */
int tokjson_skip(struct tokjson *js, const char **span, size_t *span_len);
/* Only whitespace may follow. */
int tokjson_end(struct tokjson *js);
int tokjson_fail(struct tokjson *js, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
