/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Byte-level BPE tokenizer for the Qwen2 / Qwen3 / Qwen3.5 / Qwen3.6
 * vocabularies, bit-exact with HF `tokenizers` (the oracle vLLM uses).
 *
 * Pipeline of tokenizer_encode() (see tokenizer.c for the why of each step):
 *
 *   raw UTF-8 -> added tokens (longest match, lstrip/rstrip/single_word)
 *             -> NFC (utf8proc) -> added tokens marked "normalized"
 *             -> split regex from tokenizer.json (PCRE2 JIT)
 *             -> GPT-2 byte mapping -> rank-ordered BPE merges -> ids
 *
 * Ids are always read from the vocabulary, never derived from merge ranks.
 * No BOS/EOS is ever added (Qwen has no post-processor tokens). Where HF's
 * engines use other Unicode versions than our libraries (its split regex
 * has Unicode 16.0 categories, its NFC Unicode 9.0 data), the encoder
 * follows HF; see docs/performance.md "Tokenizer".
 *
 * Input text must be valid UTF-8; invalid input is refused with -EILSEQ and
 * a message giving the byte offset (HF tokenizers only ever sees Rust
 * strings, so there is no reference behaviour to copy for broken input, and
 * silently replacing bytes would change what the model reads). Callers that
 * must carry arbitrary bytes use tokenizer_encode_bytes(), which maps every
 * byte to its single-byte token; tokenizer_decode() gives those bytes back.
 *
 * A loaded tokenizer is immutable except for an internal word cache that is
 * lock-protected, so any number of threads may encode and decode with one
 * tokenizer at the same time.
 */
#ifndef RESIDENT_ENGINE_TEXT_TOKENIZER_H
#define RESIDENT_ENGINE_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/error.h"

struct tokenizer;

/* Load from a model directory: `tokenizer.json` when present, otherwise
 * `vocab.json` + `merges.txt` with the added tokens taken from
 * `tokenizer_config.json` (`added_tokens_decoder`). On success `*out` owns
 * the tokenizer; free it with tokenizer_free(). Returns 0 or -errno with
 * `err` naming the file and field at fault. */
int tokenizer_load(const char *model_dir, struct tokenizer **out,
                   struct engine_error *err);

/* Where tokenizer_load_ex() found the tables. */
enum tokenizer_source {
    TOKENIZER_SOURCE_FILES = 0,     /* parsed tokenizer.json (or vocab + merges) */
    TOKENIZER_SOURCE_IMAGE,         /* tokenizer_load_params.cache_image      */
    TOKENIZER_SOURCE_CACHE_FILE,    /* the cache file in cache_dir            */
};

/* Options of tokenizer_load_ex(); initialise with
 * TOKENIZER_LOAD_PARAMS_DEFAULT. */
struct tokenizer_load_params {
    /* Writable directory for a binary cache of the parsed tables, keyed by
     * the source files' identity (device, inode, size, mtime). Parsing the
     * 20 MB Qwen3.6 tokenizer.json costs a few hundred ms; the cache loads
     * in a few ms. The cache file is validated like any input; a missing,
     * stale or damaged one is rebuilt. NULL: no cache. */
    const char *cache_dir;
    /* A cache image already in memory (residentd keeps one in systemd's fd
     * store across restarts, see docs/service.md): tried before cache_dir
     * and the source files. It is validated exactly like the cache file
     * (hostile input) and must carry the current source files' identity;
     * a stale or damaged image is refused and the next source is used.
     * NULL: none. */
    const void *cache_image;
    size_t      cache_image_len;
    /* Out, may be NULL: where the tables came from, and why cache_image
     * was refused (msg empty when it was used or not given). */
    enum tokenizer_source *source;
    struct engine_error   *image_error;
};

#define TOKENIZER_LOAD_PARAMS_DEFAULT \
    ((struct tokenizer_load_params){ .cache_dir = NULL })

int tokenizer_load_ex(const char *model_dir,
                      const struct tokenizer_load_params *params,
                      struct tokenizer **out, struct engine_error *err);

void tokenizer_free(struct tokenizer *tok);

/**
 * tokenizer_cache_image() - the binary cache of a loaded tokenizer, in memory
 * @tok: a tokenizer loaded from a model directory (tokenizer_load_ex())
 * @image: out, malloc'd image the caller free()s
 * @len: out, its length in bytes
 * @err: out, the reason on failure
 *
 * The same bytes tokenizer_load_params.cache_dir writes to its file, bound
 * to the identity the source files had when @tok was loaded, so a later
 * tokenizer_load_ex() with it as cache_image refuses it once a source file
 * changed. residentd keeps it in systemd's fd store.
 *
 * Return: 0, -EINVAL when @tok was not loaded from a directory, -ENOMEM.
 */
int tokenizer_cache_image(const struct tokenizer *tok, void **image, size_t *len,
                          struct engine_error *err);

/* Options of tokenizer_encode_ex(); initialise with
 * TOKENIZER_ENCODE_PARAMS_DEFAULT. */
struct tokenizer_encode_params {
    /* Match added tokens (<|im_start|>, <think>, ...) in the text, as HF
     * does by default. false: the text is plain text throughout, so a client
     * cannot inject control tokens through it. */
    bool match_added_tokens;
};

#define TOKENIZER_ENCODE_PARAMS_DEFAULT \
    ((struct tokenizer_encode_params){ .match_added_tokens = true })

/* Encode `len` bytes of UTF-8 text (need not be NUL-terminated; embedded NUL
 * bytes are ordinary characters). On success `*ids` is a malloc'd array of
 * `*n_ids` token ids that the caller free()s (non-NULL even when empty).
 * Returns 0, -EILSEQ for invalid UTF-8, -ENOMEM, or -EOVERFLOW for input
 * over 1 GiB. */
int tokenizer_encode(const struct tokenizer *tok, const char *text, size_t len,
                     int32_t **ids, size_t *n_ids, struct engine_error *err);

int tokenizer_encode_ex(const struct tokenizer *tok, const char *text,
                        size_t len, const struct tokenizer_encode_params *params,
                        int32_t **ids, size_t *n_ids, struct engine_error *err);

/* Map every byte of `data` to its single-byte token (no merges, no added
 * tokens): any byte string round-trips through tokenizer_decode(). */
int tokenizer_encode_bytes(const struct tokenizer *tok, const void *data,
                           size_t len, int32_t **ids, size_t *n_ids,
                           struct engine_error *err);

/* Decode ids to the exact bytes they stand for (HF ByteLevel decoder), with
 * added tokens whose `special` flag is set left out when
 * `skip_special_tokens`. The result may be invalid UTF-8 when the ids cut a
 * character (use struct detok_stream for text output). `*out` is malloc'd,
 * NUL-terminated, `*out_len` excludes the NUL. Returns -ERANGE (with the
 * position) for an id that names no token. */
int tokenizer_decode(const struct tokenizer *tok, const int32_t *ids,
                     size_t n_ids, bool skip_special_tokens, char **out,
                     size_t *out_len, struct engine_error *err);

/* Number of ids: highest id + 1 (248077 for Qwen3.6, 151669 for Qwen3).
 * The model's embedding may be larger; ids >= this never decode. */
size_t tokenizer_token_count(const struct tokenizer *tok);

/* Id of a token given as written in tokenizer.json (added-token content
 * such as "<|im_end|>", or a vocabulary key such as "Ġthe"), or -1. */
int32_t tokenizer_token_to_id(const struct tokenizer *tok, const char *token);

/* true for added tokens flagged "special" (<|im_end|>, <|endoftext|>; not
 * <think>, </think>, <tool_call>). false for unknown ids. */
bool tokenizer_id_is_special(const struct tokenizer *tok, int32_t id);

/* true for added tokens, special or not. */
bool tokenizer_id_is_added(const struct tokenizer *tok, int32_t id);

/* Bytes a token decodes to, or NULL for an id that names no token. The
 * pointer lives as long as the tokenizer. */
const char *tokenizer_id_to_bytes(const struct tokenizer *tok, int32_t id,
                                  size_t *len);

/* Longest byte string any single token decodes to. */
size_t tokenizer_max_token_bytes(const struct tokenizer *tok);

/* Name of the split regex in use: "qwen35", "qwen2", "gpt2", "custom", or
 * "none" (ByteLevel without a regex). */
const char *tokenizer_pretokenizer_name(const struct tokenizer *tok);

#endif
