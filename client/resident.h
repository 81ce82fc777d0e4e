/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libresident: the client library for residentd.
 *
 * A `struct resident` is one session: a SEQPACKET connection used only for
 * the handshake, plus a shared-memory region with a request ring (you
 * write) and an event ring (residentd writes). Submitting a request and
 * reading events are plain memory operations; a syscall happens only to
 * wake a sleeping peer.
 *
 *   struct resident *r;
 *   struct resident_connect_params cp;
 *   resident_connect_params_init(&cp);
 *   if (resident_connect(&cp, &r) < 0) ...
 *   struct resident_request q;
 *   resident_request_init(&q);
 *   q.max_tokens = 64;
 *   uint64_t id;
 *   resident_submit_text(r, &q, "Hello", 5, 0, &id);
 *   struct resident_event ev;
 *   while (resident_wait(r, &ev, -1) == 1 && !(ev.type == RESIDENT_EVENT_DONE && ev.id == id))
 *       if (ev.type == RESIDENT_EVENT_TOKENS) fwrite(ev.text, 1, ev.text_len, stdout);
 *   resident_close(r);
 *
 * ERRORS: functions return 0 on success and a negative errno on failure;
 * positive values are returned only where documented (resident_poll and
 * resident_wait return 1 when they filled an event). resident_last_error()
 * gives a message for the last failure, naming the limit or field involved.
 * Common codes: -EAGAIN (ring or data area full: read events, then retry),
 * -ECONNRESET (residentd went away or closed the session: see
 * resident_last_error(), then resident_reconnect()), -EPROTO (the peer
 * broke the protocol), -E2BIG (a request larger than the rings allow).
 *
 * THREAD SAFETY: a handle may be used by one thread at a time (lock around
 * it if you share it); different handles are independent. resident_fd()
 * may be watched from any thread or event loop. Event pointers stay valid
 * until the next resident_poll()/resident_wait()/resident_close() on the
 * same handle.
 *
 * ABI: symbols are versioned (RESIDENT_0.1, client/libresident.map);
 * parameter structs start with a `size` field so they can grow.
 */
#ifndef RESIDENT_CLIENT_RESIDENT_H
#define RESIDENT_CLIENT_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(RESIDENT_BUILDING_LIB)
#define RESIDENT_API __attribute__((visibility("default")))
#else
#define RESIDENT_API
#endif

#define RESIDENT_SOCKET_DEFAULT "/run/resident/resident.sock"

struct resident;

struct resident_connect_params {
    uint32_t    size;           /* sizeof(struct resident_connect_params) */
    const char *socket_path;    /* NULL: $RESIDENT_SOCKET, else RESIDENT_SOCKET_DEFAULT */
    const char *client_name;    /* shown in residentd's log; NULL = program name */
    uint32_t    req_ring_bytes; /* 0 = daemon default (64 KiB) */
    uint32_t    evt_ring_bytes; /* 0 = daemon default (256 KiB) */
    uint32_t    data_bytes;     /* 0 = daemon default (1 MiB); large prompts go here */
    int         timeout_ms;     /* handshake timeout; default 5000 */
};

enum resident_request_flags {
    RESIDENT_REQ_IGNORE_EOS = 0x1,
    RESIDENT_REQ_NO_CACHE   = 0x2,   /* no prefix-cache reuse or store for this request
                                        (daemons before the prefix cache reject the bit) */
};

struct resident_request {
    uint32_t            size;           /* sizeof(struct resident_request) */
    uint64_t            id;             /* 0 = let the library pick one */
    uint32_t            max_tokens;     /* 0 = daemon's max_new_tokens */
    uint64_t            seed;
    float               temperature;    /* default 0.7 */
    float               top_p;          /* default 0.95 */
    float               min_p;          /* default 0 */
    float               repeat_penalty; /* default 1 */
    uint32_t            top_k;          /* default 20 */
    const uint32_t     *stop_ids;
    uint32_t            n_stop_ids;     /* <= 64 */
    const char *const  *stop_strings;   /* NUL-terminated, 1..256 bytes each */
    uint32_t            n_stop_strings; /* <= 16 */
    uint32_t            flags;          /* enum resident_request_flags */
};

enum resident_event_type {
    RESIDENT_EVENT_QUEUED = 1,  /* request accepted; prompt_tokens set */
    RESIDENT_EVENT_TOKENS = 2,  /* n_tokens tokens with their text; n_tokens 0 = more text of the
                                   last token on another channel (or the parser's final flush) */
    RESIDENT_EVENT_DONE   = 3,  /* last event of a request */
};

enum resident_finish {
    RESIDENT_FINISH_STOP        = 1,
    RESIDENT_FINISH_LENGTH      = 2,
    RESIDENT_FINISH_STOP_STRING = 3,
    RESIDENT_FINISH_STOP_ID     = 4,
    RESIDENT_FINISH_CANCELLED   = 5,
    RESIDENT_FINISH_ERROR       = 6,
    RESIDENT_FINISH_SHUTDOWN    = 7,
    RESIDENT_FINISH_SLOW        = 8,  /* reserved; slow clients get -ECONNRESET + a message */
    RESIDENT_FINISH_TOOL_CALLS  = 9,  /* the turn ended after tool calls (RESIDENT_CHANNEL_TOOL_CALL) */
};

enum resident_channel {
    RESIDENT_CHANNEL_CONTENT   = 0,
    RESIDENT_CHANNEL_REASONING = 1,
    RESIDENT_CHANNEL_TOOL_CALL = 2,
};

struct resident_event {
    uint32_t        type;           /* enum resident_event_type */
    uint64_t        id;             /* request id */
    uint32_t        prompt_tokens;  /* QUEUED, DONE */
    /* TOKENS */
    uint32_t        n_tokens;
    const uint32_t *tokens;
    const uint32_t *text_lens;      /* bytes of `text` per token */
    const char     *text;           /* valid UTF-8, not NUL-terminated */
    size_t          text_len;
    uint32_t        channel;        /* enum resident_channel */
    /* DONE */
    uint32_t        finish;         /* enum resident_finish */
    int             error;          /* 0 or negative errno */
    const char     *message;        /* NUL-terminated, "" when none */
    uint32_t        completion_tokens;
    uint32_t        cached_tokens;  /* DONE: prompt tokens reused from the prefix cache
                                       (included in prompt_tokens); sits in what was
                                       padding, so the struct size is unchanged */
    uint64_t        queue_us, ttft_us, total_us, decode_us;
};

/**
 * resident_connect_params_init() - fill @p with defaults
 * @p: parameters
 */
RESIDENT_API void resident_connect_params_init(struct resident_connect_params *p);

/**
 * resident_connect() - open a session with residentd
 * @p: parameters (NULL = defaults)
 * @out: the new handle
 *
 * Connects, sends HELLO, receives the session's shared memory and eventfds
 * and validates them.
 *
 * Return: 0; -ENOENT/-ECONNREFUSED when no daemon listens; -EPERM when the
 * daemon's policy refuses this uid; -ETIMEDOUT; -EPROTO; other -errno.
 * On failure *out is NULL and resident_last_error(NULL) explains.
 */
RESIDENT_API int resident_connect(const struct resident_connect_params *p, struct resident **out);

/**
 * resident_reconnect() - replace a lost session with a new one
 * @r: handle
 *
 * Requests of the old session are gone (their DONE will never come);
 * resubmit what you still need.
 *
 * Return: 0 or as resident_connect().
 */
RESIDENT_API int resident_reconnect(struct resident *r);

/**
 * resident_close() - end the session and free the handle
 * @r: handle (NULL is ignored)
 *
 * residentd cancels whatever the session still had in flight.
 */
RESIDENT_API void resident_close(struct resident *r);

/**
 * resident_fd() - a file descriptor that becomes readable when events arrive
 * @r: handle
 *
 * An epoll fd watching the event wakeup eventfd and the control socket
 * (daemon loss). Add it to any poll/epoll/io_uring loop; when it fires call
 * resident_poll() until it returns 0, then resident_arm() before sleeping
 * again (without it the daemon does not ring the eventfd). Do not read
 * from it.
 *
 * Return: the fd (owned by the handle).
 */
RESIDENT_API int resident_fd(const struct resident *r);

/**
 * resident_arm() - make resident_fd() fire for the next event (foreign loops)
 * @r: handle
 *
 * The daemon writes the wakeup eventfd only while the client says it
 * sleeps (resident_wait() says so itself). An application that waits in
 * its own poll/epoll/io_uring loop calls resident_poll() until it returns
 * 0, then resident_arm() before it goes back to sleep:
 *
 *   for (;;) {
 *       while ((n = resident_poll(r, &ev)) > 0) handle(&ev);
 *       if (n < 0) break;                    // session gone
 *       if (resident_arm(r) == 0) break;     // sleep: resident_fd() fires
 *   }                                        // 1: events came meanwhile
 *
 * It clears stale wakeups, so resident_fd() is readable only for events
 * published (or daemon loss) after the call. The session stays armed until
 * the next resident_wait(); while armed the daemon rings the eventfd on
 * every publish, which costs one write per event batch, not correctness.
 *
 * Return: 0 when armed (no event pending); 1 when events are already
 * pending or the session is gone (call resident_poll() again).
 */
RESIDENT_API int resident_arm(struct resident *r);

/**
 * resident_generator() - the daemon's generator name ("null" = synthetic, not a model)
 * @r: handle
 *
 * Return: NUL-terminated name owned by the handle.
 */
RESIDENT_API const char *resident_generator(const struct resident *r);

/**
 * resident_is_synthetic() - whether output comes from the null generator
 * @r: handle
 *
 * Return: 1 when tokens are synthetic (no model loaded), else 0.
 */
RESIDENT_API int resident_is_synthetic(const struct resident *r);

/**
 * resident_supports_tool_choice() - whether the daemon forces tool calls
 * @r: handle
 *
 * A CHAT request's "tool_choice" "required" or named
 * ({"type":"function","function":{"name":...}}) is honoured only by a
 * generator that advertises it (WELCOME flag SHM_WELCOME_F_TOOL_CHOICE:
 * the engine generator); any other refuses such a request with -EINVAL.
 *
 * Return: 1 when supported, else 0.
 */
RESIDENT_API int resident_supports_tool_choice(const struct resident *r);

/**
 * resident_last_error() - message describing the last failure
 * @r: handle, or NULL for failures of resident_connect()
 *
 * Return: NUL-terminated message ("" when none), valid until the next call.
 */
RESIDENT_API const char *resident_last_error(const struct resident *r);

/**
 * resident_request_init() - fill @q with defaults
 * @q: request parameters
 */
RESIDENT_API void resident_request_init(struct resident_request *q);

/**
 * resident_submit_text() - submit a text prompt
 * @r: handle
 * @q: parameters (NULL = defaults)
 * @text: UTF-8 prompt
 * @len: bytes
 * @raw: 0 = a user message wrapped in the chat template; 1 = tokenized as-is
 * @id: receives the request id (may be NULL)
 *
 * Return: 0; -EAGAIN when the request ring or data area is full (read
 * events, retry); -E2BIG when the prompt exceeds the data area; -EINVAL
 * for bad parameters; -ECONNRESET when the session is gone.
 */
RESIDENT_API int resident_submit_text(struct resident *r, const struct resident_request *q,
                                      const char *text, size_t len, int raw, uint64_t *id);

/**
 * resident_submit_chat() - submit chat messages (JSON)
 * @r: handle
 * @q: parameters (NULL = defaults)
 * @json: {"messages":[{"role":...,"content":...}...],"tools":[...],"template_kwargs":{...}}
 * @len: bytes
 * @id: receives the request id (may be NULL)
 *
 * Return: as resident_submit_text().
 */
RESIDENT_API int resident_submit_chat(struct resident *r, const struct resident_request *q,
                                      const char *json, size_t len, uint64_t *id);

/**
 * resident_submit_ids() - submit a prompt of token ids
 * @r: handle
 * @q: parameters (NULL = defaults)
 * @ids: token ids
 * @n: count
 * @id: receives the request id (may be NULL)
 *
 * Return: as resident_submit_text().
 */
RESIDENT_API int resident_submit_ids(struct resident *r, const struct resident_request *q,
                                     const uint32_t *ids, size_t n, uint64_t *id);

/**
 * resident_cancel() - cancel a request
 * @r: handle
 * @id: request id
 *
 * Idempotent; the request still ends with a DONE event (finish CANCELLED,
 * or its natural end if that came first).
 *
 * Return: 0, -EAGAIN (request ring full), -ECONNRESET.
 */
RESIDENT_API int resident_cancel(struct resident *r, uint64_t id);

/**
 * resident_poll() - take the next event without blocking
 * @r: handle
 * @ev: filled when an event is returned
 *
 * Return: 1 with an event; 0 when none is waiting; -ECONNRESET when the
 * session ended and every event it had published was delivered; -EPROTO.
 */
RESIDENT_API int resident_poll(struct resident *r, struct resident_event *ev);

/**
 * resident_wait() - wait for the next event
 * @r: handle
 * @ev: filled when an event is returned
 * @timeout_ms: -1 = forever, 0 = do not block
 *
 * Spins briefly, then sleeps on the wakeup eventfd (telling the daemon to
 * ring it).
 *
 * Return: 1 with an event; 0 on timeout; as resident_poll() otherwise.
 */
RESIDENT_API int resident_wait(struct resident *r, struct resident_event *ev, int timeout_ms);

/**
 * resident_finish_name() - printable name of a finish reason
 * @finish: enum resident_finish
 *
 * Return: static string ("stop", "length", ...).
 */
RESIDENT_API const char *resident_finish_name(uint32_t finish);

#ifdef __cplusplus
}
#endif

#endif
