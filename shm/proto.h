/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Ring record formats: requests (client -> daemon) and events
 * (daemon -> client). Each is the body of one ring record (shm/ring.h);
 * the record header's type says which.
 *
 * SUBMIT body:
 *   struct shm_req_submit                 fixed part
 *   struct shm_req_submit_ext             only when flags has SHM_REQ_F_EXT
 *   u32 stop_ids[n_stop_ids]
 *   stop-string blob, stop_strs_len bytes: n_stop_strs x { u16 len; u8 bytes[len] }
 *   payload, payload_len bytes            only when payload_loc == SHM_LOC_INLINE
 * With payload_loc == SHM_LOC_DATA the payload lives at data area offset
 * data_off; the daemon copies it out before it releases the record, so the
 * client may reuse those data bytes once the request ring's head has passed
 * the record.
 *
 * TOKENS body (n_tokens may be 0 when text_len > 0: text that the last
 * token produced on another channel, or the output parser's flush):
 *   struct shm_evt_tokens
 *   u32 ids[n_tokens]
 *   u32 text_lens[n_tokens]               bytes of text belonging to each token
 *   text, text_len bytes                  UTF-8; a token whose bytes end
 *                                         inside a code point carries 0 bytes
 *                                         and the completing token carries
 *                                         the whole character
 *
 * DONE body: struct shm_evt_done then msg_len bytes of message (no NUL).
 *
 * Per request the daemon emits exactly: QUEUED (or a DONE with an error),
 * zero or more TOKENS, one DONE. Events of one request are in order.
 *
 * Decoders validate every count and length against the record size with
 * 64-bit arithmetic and return -EPROTO (with a message naming the field) on
 * any inconsistency; they never read outside the body they are given.
 */
#ifndef RESIDENT_SHM_PROTO_H
#define RESIDENT_SHM_PROTO_H

#include <stddef.h>
#include <stdint.h>

enum shm_rec_type {
    SHM_REQ_SUBMIT = 0x0001,
    SHM_REQ_CANCEL = 0x0002,
    SHM_EVT_QUEUED = 0x0101,
    SHM_EVT_TOKENS = 0x0102,
    SHM_EVT_DONE   = 0x0103,
};

enum shm_prompt_kind {
    SHM_PROMPT_TEXT = 1,    /* user text; the engine wraps it in the chat template */
    SHM_PROMPT_RAW  = 2,    /* text tokenized as-is */
    SHM_PROMPT_IDS  = 3,    /* u32 token ids */
    SHM_PROMPT_CHAT = 4,    /* JSON {"messages":[...],"tools":[...],"template_kwargs":{...}} */
};

enum shm_loc {
    SHM_LOC_INLINE = 0,
    SHM_LOC_DATA   = 1,
};

#define SHM_STOP_IDS_MAX     64u
#define SHM_STOP_STRS_MAX    16u
#define SHM_STOP_STR_LEN_MAX 256u

/* Request flags. */
#define SHM_REQ_F_IGNORE_EOS      0x1u
#define SHM_REQ_F_NO_PREFIX_CACHE 0x2u   /* neither reuse nor store prefix-cache state */
#define SHM_REQ_F_EXT             0x4u   /* struct shm_req_submit_ext follows the fixed part */
#define SHM_REQ_F_ALL             (SHM_REQ_F_IGNORE_EOS | SHM_REQ_F_NO_PREFIX_CACHE | SHM_REQ_F_EXT)

struct shm_req_submit {
    uint64_t req_id;        /* chosen by the client, unique among its in-flight requests */
    uint32_t kind;          /* enum shm_prompt_kind */
    uint32_t flags;         /* SHM_REQ_F_* */
    uint32_t max_tokens;    /* new tokens; 0 = the daemon's limit */
    uint32_t top_k;         /* 0 = off */
    uint64_t seed;
    float    temperature;   /* 0 = greedy */
    float    top_p;         /* 1 = off */
    float    min_p;         /* 0 = off */
    float    repeat_penalty;/* 1 = off */
    uint32_t n_stop_ids;
    uint32_t n_stop_strs;
    uint32_t stop_strs_len;
    uint32_t payload_len;   /* bytes (IDS: 4 x tokens) */
    uint32_t payload_loc;   /* enum shm_loc */
    uint32_t reserved;      /* 0 */
    uint64_t data_off;      /* SHM_LOC_DATA: offset inside the data area */
};
_Static_assert(sizeof(struct shm_req_submit) == 80, "submit layout");

/*
 * SUBMIT extension (SHM_REQ_F_EXT; the daemon advertises it with
 * SHM_WELCOME_F_SUBMIT_EXT). A request without the flag is exactly the
 * 80-byte record of the first protocol version and is decoded as if it
 * carried an extension of zeros: no penalties, every value explicit.
 *
 * `size` is sizeof(struct shm_req_submit_ext) of the sender's version; it
 * must equal this version's size (a later version grows the struct,
 * advertises itself with a new WELCOME bit, and decoders accept the sizes
 * they know).
 *
 * `model_defaults` names sampling fields the client leaves unset: for
 * each bit the daemon takes the value from the model's
 * generation_config.json (or the documented neutral value when the file
 * has none; see docs/protocol.md) and ignores the field, which must be 0
 * so that a record has one meaning only.
 */
#define SHM_DEF_TEMPERATURE      0x01u
#define SHM_DEF_TOP_P            0x02u
#define SHM_DEF_TOP_K            0x04u
#define SHM_DEF_MIN_P            0x08u
#define SHM_DEF_REPEAT_PENALTY   0x10u
#define SHM_DEF_PRESENCE_PENALTY 0x20u
#define SHM_DEF_ALL              0x3fu
#define SHM_PENALTY_MAX          2.0f   /* |presence|, |frequency| (OpenAI's range) */

struct shm_req_submit_ext {
    uint32_t size;              /* sizeof(struct shm_req_submit_ext) */
    uint32_t model_defaults;    /* SHM_DEF_* */
    float    presence_penalty;  /* -2..2, 0 = off: logit -= p once a token was generated */
    float    frequency_penalty; /* -2..2, 0 = off: logit -= f x times it was generated */
};
_Static_assert(sizeof(struct shm_req_submit_ext) == 16, "submit extension layout");
_Static_assert(sizeof(struct shm_req_submit_ext) % 8 == 0, "the stop ids after it stay 8-aligned");

struct shm_req_cancel {
    uint64_t req_id;
};
_Static_assert(sizeof(struct shm_req_cancel) == 8, "cancel layout");

struct shm_evt_queued {
    uint64_t req_id;
    uint32_t prompt_tokens;
    uint32_t reserved;
};
_Static_assert(sizeof(struct shm_evt_queued) == 16, "queued layout");

enum shm_channel {
    SHM_CHAN_CONTENT   = 0,
    SHM_CHAN_REASONING = 1,
    SHM_CHAN_TOOL_CALL = 2,
};

struct shm_evt_tokens {
    uint64_t req_id;
    uint32_t n_tokens;
    uint32_t channel;       /* enum shm_channel */
    uint32_t text_len;
    uint32_t reserved;
};
_Static_assert(sizeof(struct shm_evt_tokens) == 24, "tokens layout");

enum shm_finish {
    SHM_FINISH_STOP        = 1,  /* end-of-sequence token */
    SHM_FINISH_LENGTH      = 2,  /* max_tokens reached */
    SHM_FINISH_STOP_STRING = 3,  /* a stop string matched (not included in the text) */
    SHM_FINISH_STOP_ID     = 4,  /* a stop id was generated (included in the tokens) */
    SHM_FINISH_CANCELLED   = 5,  /* the client cancelled */
    SHM_FINISH_ERROR       = 6,  /* rejected or failed: see error + msg */
    SHM_FINISH_SHUTDOWN    = 7,  /* the daemon is stopping */
    SHM_FINISH_SLOW        = 8,  /* reserved: a slow client is disconnected with ERROR -ENOBUFS instead */
    SHM_FINISH_TOOL_CALLS  = 9,  /* the model ended its turn after calling tools (SHM_CHAN_TOOL_CALL) */
};

struct shm_evt_done {
    uint64_t req_id;
    uint32_t finish;            /* enum shm_finish */
    int32_t  error;             /* 0 or negative errno */
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    uint64_t queue_us;          /* submit seen -> first compute */
    uint64_t ttft_us;           /* submit seen -> first token published */
    uint64_t total_us;          /* submit seen -> done */
    uint64_t decode_us;         /* first token -> last token */
    uint32_t msg_len;
    uint32_t cached_tokens;     /* prompt tokens restored from the prefix cache
                                   (part of prompt_tokens); 0 from older daemons */
};
_Static_assert(sizeof(struct shm_evt_done) == 64, "done layout");

/* A validated SUBMIT: pointers into the caller's private copy. */
struct shm_submit_view {
    struct shm_req_submit fixed;
    struct shm_req_submit_ext ext;  /* zeros (size 0) when SHM_REQ_F_EXT is absent */
    const uint32_t *stop_ids;       /* may be unaligned-safe: body is 8-aligned */
    const uint8_t  *stop_strs;      /* the blob; iterate with shm_stop_str_next() */
    const uint8_t  *payload;        /* inline payload, NULL for SHM_LOC_DATA */
};

/* A validated TOKENS event. */
struct shm_tokens_view {
    struct shm_evt_tokens fixed;
    const uint32_t *ids;
    const uint32_t *text_lens;
    const char     *text;
};

/**
 * shm_proto_decode_submit() - validate a SUBMIT body (private copy)
 * @body: record body
 * @len: body bytes
 * @data_size: size of the data area, for SHM_LOC_DATA bounds
 * @out: decoded view
 * @why: message naming the bad field (may be NULL)
 *
 * Checks kind, flags, reserved, counts against SHM_STOP_*_MAX, every
 * stop string length, the extension (SHM_REQ_F_EXT: its size, no unknown
 * SHM_DEF_* bits, fields it marks as model defaults 0, finite penalties
 * within +-SHM_PENALTY_MAX), that the sections exactly fill the body (modulo 8-byte
 * padding), IDS payload a multiple of 4, and data_off/payload_len inside
 * the data area.
 *
 * Return: 0 or -EPROTO.
 */
int shm_proto_decode_submit(const void *body, size_t len, uint64_t data_size,
                            struct shm_submit_view *out, const char **why);

/**
 * shm_stop_str_next() - iterate the stop-string blob of a validated submit
 * @v: validated view
 * @pos: cursor, start at 0
 * @s: set to the string bytes
 * @n: set to its length
 *
 * Return: 1 with a string, 0 at the end.
 */
int shm_stop_str_next(const struct shm_submit_view *v, uint32_t *pos, const uint8_t **s, uint32_t *n);

/**
 * shm_proto_submit_size() - body bytes for a SUBMIT with inline sections
 * @flags: the request's SHM_REQ_F_* (SHM_REQ_F_EXT adds the extension)
 * @n_stop_ids: stop ids
 * @stop_strs_len: bytes of the stop-string blob
 * @inline_payload: inline payload bytes (0 for SHM_LOC_DATA)
 *
 * Return: bytes, or 0 on overflow.
 */
size_t shm_proto_submit_size(uint32_t flags, uint32_t n_stop_ids, uint32_t stop_strs_len, uint32_t inline_payload);

/**
 * shm_proto_decode_cancel() - validate a CANCEL body
 * Return: 0 or -EPROTO.
 */
int shm_proto_decode_cancel(const void *body, size_t len, struct shm_req_cancel *out, const char **why);

/**
 * shm_proto_decode_tokens() - validate a TOKENS body (private copy)
 * Return: 0 or -EPROTO (counts or text lengths inconsistent).
 */
int shm_proto_decode_tokens(const void *body, size_t len, struct shm_tokens_view *out, const char **why);

/**
 * shm_proto_decode_queued() - validate a QUEUED body
 * Return: 0 or -EPROTO.
 */
int shm_proto_decode_queued(const void *body, size_t len, struct shm_evt_queued *out, const char **why);

/**
 * shm_proto_decode_done() - validate a DONE body
 * @msg: set to the message bytes (not NUL-terminated), @msg_len bytes
 * Return: 0 or -EPROTO.
 */
int shm_proto_decode_done(const void *body, size_t len, struct shm_evt_done *out,
                          const char **msg, const char **why);

/**
 * shm_proto_tokens_size() - body bytes of a TOKENS event
 * Return: bytes, or 0 on overflow.
 */
size_t shm_proto_tokens_size(uint32_t n_tokens, uint32_t text_len);

#endif
