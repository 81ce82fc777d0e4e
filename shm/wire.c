/* SPDX-License-Identifier: Apache-2.0 */
/* Control-socket frame encoding and strict decoding (see shm/wire.h). */
#include <errno.h>
#include <string.h>

#include "shm/wire.h"

static int fail(const char **why, const char *w)
{
    if (why)
        *why = w;
    return -EPROTO;
}

static int name_ok(const char *s, size_t n)
{
    return memchr(s, '\0', n) != NULL;
}

int shm_wire_decode(const void *buf, size_t len, size_t n_fds, struct shm_wire_msg *out, const char **why)
{
    struct shm_wire_hdr h;
    if (len < sizeof(h))
        return fail(why, "frame shorter than the 16-byte header");
    if (len > SHM_WIRE_MAX)
        return fail(why, "frame longer than SHM_WIRE_MAX (4096)");
    memcpy(&h, buf, sizeof(h));
    if (h.magic != SHM_WIRE_MAGIC)
        return fail(why, "frame magic is not RSDF");
    if (h.version != SHM_WIRE_VERSION)
        return fail(why, "frame version differs from SHM_WIRE_VERSION (client and daemon versions differ)");
    if (h.length != len)
        return fail(why, "frame length field differs from the bytes received");
    if (h.flags != 0)
        return fail(why, "frame flags must be 0");
    if (h.n_fds != n_fds)
        return fail(why, "frame n_fds differs from the fds received");

    const uint8_t *body = (const uint8_t *)buf + sizeof(h);
    size_t blen = len - sizeof(h);
    memset(out, 0, sizeof(*out));
    out->type = h.type;
    out->n_fds = h.n_fds;

    switch (h.type) {
    case SHM_WIRE_HELLO:
        if (blen != sizeof(out->u.hello))
            return fail(why, "HELLO body size is not 56 bytes");
        if (n_fds != 0)
            return fail(why, "HELLO must carry no fds");
        memcpy(&out->u.hello, body, blen);
        if (out->u.hello.flags != 0 || out->u.hello.reserved != 0)
            return fail(why, "HELLO flags/reserved must be 0");
        if (!name_ok(out->u.hello.client_name, sizeof(out->u.hello.client_name)))
            return fail(why, "HELLO client_name is not NUL-terminated");
        return 0;
    case SHM_WIRE_WELCOME:
        if (blen != sizeof(out->u.welcome))
            return fail(why, "WELCOME body size is not 136 bytes");
        if (n_fds != SHM_WELCOME_NFDS)
            return fail(why, "WELCOME must carry exactly 3 fds");
        memcpy(&out->u.welcome, body, blen);
        if (!name_ok(out->u.welcome.generator, sizeof(out->u.welcome.generator)) ||
            !name_ok(out->u.welcome.model, sizeof(out->u.welcome.model)))
            return fail(why, "WELCOME generator/model name is not NUL-terminated");
        return 0;
    case SHM_WIRE_ERROR: {
        struct shm_wire_error e;
        if (blen < sizeof(e) + 1)
            return fail(why, "ERROR body shorter than code + msg_len + NUL");
        if (n_fds != 0)
            return fail(why, "ERROR must carry no fds");
        memcpy(&e, body, sizeof(e));
        if (e.code >= 0)
            return fail(why, "ERROR code must be a negative errno");
        if ((uint64_t)e.msg_len + 1 != blen - sizeof(e))
            return fail(why, "ERROR msg_len disagrees with the frame length");
        const char *m = (const char *)body + sizeof(e);
        if (m[e.msg_len] != '\0' || memchr(m, '\0', e.msg_len) != NULL)
            return fail(why, "ERROR message must be NUL-terminated with no embedded NUL");
        out->u.error.code = e.code;
        out->u.error.msg = m;
        out->u.error.msg_len = e.msg_len;
        return 0;
    }
    case SHM_WIRE_BYE:
        if (blen != sizeof(out->u.bye))
            return fail(why, "BYE body size is not 8 bytes");
        if (n_fds != 0)
            return fail(why, "BYE must carry no fds");
        memcpy(&out->u.bye, body, blen);
        return 0;
    default:
        if (why)
            *why = "unknown frame type";
        return -EBADMSG;
    }
}

int shm_wire_encode(void *buf, uint16_t type, uint16_t n_fds, const void *body, size_t body_len)
{
    if (body_len > SHM_WIRE_MAX - sizeof(struct shm_wire_hdr))
        return -EMSGSIZE;
    struct shm_wire_hdr h = {
        .magic = SHM_WIRE_MAGIC,
        .version = SHM_WIRE_VERSION,
        .type = type,
        .length = (uint32_t)(sizeof(h) + body_len),
        .n_fds = n_fds,
        .flags = 0,
    };
    memcpy(buf, &h, sizeof(h));
    if (body_len)
        memcpy((uint8_t *)buf + sizeof(h), body, body_len);
    return (int)h.length;
}

int shm_wire_encode_error(void *buf, int32_t code, const char *msg)
{
    uint8_t body[SHM_WIRE_MAX - sizeof(struct shm_wire_hdr)];
    size_t n = strlen(msg);
    if (n > SHM_WIRE_MSG_MAX)
        n = SHM_WIRE_MSG_MAX;
    /* An embedded NUL cannot occur (strlen), so the decoder's rule holds. */
    struct shm_wire_error e = { .code = code < 0 ? code : -EPROTO, .msg_len = (uint32_t)n };
    memcpy(body, &e, sizeof(e));
    memcpy(body + sizeof(e), msg, n);
    body[sizeof(e) + n] = '\0';
    return shm_wire_encode(buf, SHM_WIRE_ERROR, 0, body, sizeof(e) + n + 1);
}
