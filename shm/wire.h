/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Control-socket frames (AF_UNIX SOCK_SEQPACKET; one frame per packet).
 *
 * Every frame is a 16-byte header followed by a type-specific body:
 *
 *   u32 magic   SHM_WIRE_MAGIC
 *   u16 version SHM_WIRE_VERSION
 *   u16 type    enum shm_wire_type
 *   u32 length  total bytes of the frame, header included
 *   u16 n_fds   file descriptors attached with SCM_RIGHTS
 *   u16 flags   0
 *
 * The control plane carries only the handshake and teardown; requests and
 * events flow through the shared-memory rings (shm/ring.h, shm/proto.h).
 *
 *   client -> daemon  HELLO    (no fds)
 *   daemon -> client  WELCOME  (3 fds: region memfd, request doorbell
 *                              eventfd, event wake eventfd)
 *   daemon -> client  ERROR    (no fds; the daemon closes afterwards)
 *   daemon -> client  BYE      (no fds; the daemon is shutting down)
 *
 * Decoding is strict: a frame must be exactly as long as its header says,
 * the body exactly the size its type defines (ERROR: fixed part plus message),
 * reserved fields zero, strings NUL-terminated inside their arrays, and the
 * fd count must match both the header and what the kernel delivered.
 *
 * Errors: shm_wire_decode() returns 0 or -EPROTO (a message naming the
 * field is stored in *why) or -EBADMSG for a frame of an unknown type.
 */
#ifndef RESIDENT_SHM_WIRE_H
#define RESIDENT_SHM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define SHM_WIRE_MAGIC    0x46445352u /* "RSDF" */
#define SHM_WIRE_VERSION  1u
#define SHM_WIRE_MAX      4096u       /* largest frame either side sends */
#define SHM_WIRE_NAME     32u
#define SHM_WIRE_MSG_MAX  (SHM_WIRE_MAX - 16u - 8u - 1u)

enum shm_wire_type {
    SHM_WIRE_HELLO   = 1,
    SHM_WIRE_WELCOME = 2,
    SHM_WIRE_ERROR   = 3,
    SHM_WIRE_BYE     = 4,
};

struct shm_wire_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t length;
    uint16_t n_fds;
    uint16_t flags;
};
_Static_assert(sizeof(struct shm_wire_hdr) == 16, "wire header layout");

struct shm_wire_hello {
    uint32_t proto_version;     /* SHM_WIRE_VERSION */
    uint32_t flags;             /* 0 */
    uint32_t req_ring_bytes;    /* 0 = daemon default */
    uint32_t evt_ring_bytes;    /* 0 = daemon default */
    uint32_t data_bytes;        /* 0 = daemon default */
    uint32_t reserved;          /* 0 */
    char     client_name[SHM_WIRE_NAME]; /* NUL-terminated, for logs */
};
_Static_assert(sizeof(struct shm_wire_hello) == 56, "hello layout");

#define SHM_WELCOME_FD_REGION   0
#define SHM_WELCOME_FD_DOORBELL 1   /* client writes: "requests published" / "space freed" */
#define SHM_WELCOME_FD_WAKE     2   /* daemon writes: "events published" */
#define SHM_WELCOME_NFDS        3

struct shm_wire_welcome {
    uint64_t session_id;
    uint32_t abi_version;       /* SHM_ABI_VERSION of the region */
    uint32_t flags;             /* SHM_WELCOME_F_* */
    uint64_t region_size;
    uint32_t max_new_tokens;    /* per request, after policy */
    uint32_t max_prompt_tokens; /* per request, after policy */
    uint32_t max_inflight;      /* requests in flight for this session */
    uint32_t vocab_size;        /* of the generator */
    char     generator[SHM_WIRE_NAME]; /* "null" or the engine's name */
    char     model[64];         /* model directory basename, "" for null */
};
_Static_assert(sizeof(struct shm_wire_welcome) == 136, "welcome layout");
#define SHM_WELCOME_F_NULL_GENERATOR 0x1u  /* output is synthetic, not a model */
/* The generator forces tool calls: CHAT "tool_choice" "required" and named
 * ({"type":"function","function":{"name":...}}) are honoured by constrained
 * decoding; without the flag residentd refuses them. */
#define SHM_WELCOME_F_TOOL_CHOICE 0x8u

struct shm_wire_error {
    int32_t  code;              /* negative errno */
    uint32_t msg_len;           /* bytes of msg, NUL not counted */
    /* char msg[msg_len + 1], NUL-terminated */
};
_Static_assert(sizeof(struct shm_wire_error) == 8, "error layout");

enum shm_bye_reason {
    SHM_BYE_SHUTDOWN = 1,       /* SIGTERM: requests are finished or cancelled */
};

struct shm_wire_bye {
    uint32_t reason;
    uint32_t grace_ms;          /* in-flight work ends within this */
};
_Static_assert(sizeof(struct shm_wire_bye) == 8, "bye layout");

/* A decoded frame; pointers point into the caller's buffer. */
struct shm_wire_msg {
    uint16_t type;
    uint16_t n_fds;
    union {
        struct shm_wire_hello   hello;
        struct shm_wire_welcome welcome;
        struct shm_wire_bye     bye;
        struct {
            int32_t     code;
            const char *msg;    /* NUL-terminated inside the buffer */
            uint32_t    msg_len;
        } error;
    } u;
};

/**
 * shm_wire_decode() - validate and decode one received frame
 * @buf: frame bytes (one SEQPACKET packet)
 * @len: bytes received
 * @n_fds: file descriptors the kernel delivered with it
 * @out: decoded frame
 * @why: static message naming the offending field on failure (may be NULL)
 *
 * Return: 0; -EPROTO for a malformed frame; -EBADMSG for an unknown type.
 */
int shm_wire_decode(const void *buf, size_t len, size_t n_fds, struct shm_wire_msg *out, const char **why);

/**
 * shm_wire_encode() - build a frame
 * @buf: output, at least SHM_WIRE_MAX bytes
 * @type: frame type
 * @n_fds: fds that will be attached
 * @body: body bytes
 * @body_len: body size
 *
 * Return: total frame length, or -EMSGSIZE when it exceeds SHM_WIRE_MAX.
 */
int shm_wire_encode(void *buf, uint16_t type, uint16_t n_fds, const void *body, size_t body_len);

/**
 * shm_wire_encode_error() - build an ERROR frame
 * @buf: output, at least SHM_WIRE_MAX bytes
 * @code: negative errno
 * @msg: message (truncated to SHM_WIRE_MSG_MAX)
 *
 * Return: frame length.
 */
int shm_wire_encode_error(void *buf, int32_t code, const char *msg);

#endif
