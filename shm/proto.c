/* SPDX-License-Identifier: Apache-2.0 */
/* Ring record decoders (see shm/proto.h). All arithmetic is in uint64_t on
 * 32-bit wire fields, so no sum below can overflow. */
#include <errno.h>
#include <string.h>

#include "shm/proto.h"

static int fail(const char **why, const char *w)
{
    if (why)
        *why = w;
    return -EPROTO;
}

static uint64_t align8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

size_t shm_proto_submit_size(uint32_t flags, uint32_t n_stop_ids, uint32_t stop_strs_len, uint32_t inline_payload)
{
    uint64_t ext = (flags & SHM_REQ_F_EXT) ? sizeof(struct shm_req_submit_ext) : 0;
    uint64_t n = sizeof(struct shm_req_submit) + ext + 4ull * n_stop_ids + stop_strs_len + inline_payload;
    if (n > SIZE_MAX)
        return 0;
    return (size_t)n;
}

size_t shm_proto_tokens_size(uint32_t n_tokens, uint32_t text_len)
{
    uint64_t n = sizeof(struct shm_evt_tokens) + 8ull * n_tokens + text_len;
    if (n > SIZE_MAX)
        return 0;
    return (size_t)n;
}

/* The extension, read from its place after the fixed part (the caller has
 * checked that the body holds it). A field marked as a model default must
 * be 0, so that the record means one thing only. */
static int decode_ext(const uint8_t *b, struct shm_submit_view *out, const char **why)
{
    struct shm_req_submit_ext *x = &out->ext;
    const struct shm_req_submit *f = &out->fixed;
    memcpy(x, b + sizeof(*f), sizeof(*x));
    if (x->size != sizeof(*x))
        return fail(why, "SUBMIT ext.size must be 16 (this protocol version's extension)");
    if (x->model_defaults & ~SHM_DEF_ALL)
        return fail(why, "SUBMIT ext.model_defaults has unknown bits");
    /* Written so that NaN fails the comparison too. */
    if (!(x->presence_penalty >= -SHM_PENALTY_MAX && x->presence_penalty <= SHM_PENALTY_MAX))
        return fail(why, "SUBMIT ext.presence_penalty must be finite and within -2..2");
    if (!(x->frequency_penalty >= -SHM_PENALTY_MAX && x->frequency_penalty <= SHM_PENALTY_MAX))
        return fail(why, "SUBMIT ext.frequency_penalty must be finite and within -2..2");
    static const struct {
        uint32_t    bit;
        const char *msg;
    } unset[] = {
        { SHM_DEF_TEMPERATURE, "SUBMIT temperature must be 0 when ext.model_defaults has SHM_DEF_TEMPERATURE" },
        { SHM_DEF_TOP_P, "SUBMIT top_p must be 0 when ext.model_defaults has SHM_DEF_TOP_P" },
        { SHM_DEF_TOP_K, "SUBMIT top_k must be 0 when ext.model_defaults has SHM_DEF_TOP_K" },
        { SHM_DEF_MIN_P, "SUBMIT min_p must be 0 when ext.model_defaults has SHM_DEF_MIN_P" },
        { SHM_DEF_REPEAT_PENALTY, "SUBMIT repeat_penalty must be 0 when ext.model_defaults has SHM_DEF_REPEAT_PENALTY" },
        { SHM_DEF_PRESENCE_PENALTY,
          "SUBMIT ext.presence_penalty must be 0 when ext.model_defaults has SHM_DEF_PRESENCE_PENALTY" },
    };
    const int nonzero[] = {
        f->temperature != 0.0f, f->top_p != 0.0f, f->top_k != 0, f->min_p != 0.0f, f->repeat_penalty != 0.0f,
        x->presence_penalty != 0.0f,
    };
    for (size_t i = 0; i < sizeof(unset) / sizeof(unset[0]); i++)
        if ((x->model_defaults & unset[i].bit) && nonzero[i])
            return fail(why, unset[i].msg);
    return 0;
}

int shm_proto_decode_submit(const void *body, size_t len, uint64_t data_size,
                            struct shm_submit_view *out, const char **why)
{
    const uint8_t *b = body;
    memset(out, 0, sizeof(*out));
    if (len < sizeof(out->fixed))
        return fail(why, "SUBMIT shorter than its fixed part (80 bytes)");
    memcpy(&out->fixed, b, sizeof(out->fixed));
    const struct shm_req_submit *f = &out->fixed;
    if (f->kind < SHM_PROMPT_TEXT || f->kind > SHM_PROMPT_CHAT)
        return fail(why, "SUBMIT kind is not TEXT, RAW, IDS or CHAT");
    if (f->flags & ~SHM_REQ_F_ALL)
        return fail(why, "SUBMIT flags has unknown bits");
    if (f->reserved != 0)
        return fail(why, "SUBMIT reserved must be 0");
    if (f->n_stop_ids > SHM_STOP_IDS_MAX)
        return fail(why, "SUBMIT n_stop_ids exceeds 64");
    if (f->n_stop_strs > SHM_STOP_STRS_MAX)
        return fail(why, "SUBMIT n_stop_strs exceeds 16");
    if (!(f->temperature >= 0.0f && f->temperature <= 100.0f) ||
        !(f->top_p >= 0.0f && f->top_p <= 1.0f) ||
        !(f->min_p >= 0.0f && f->min_p <= 1.0f) ||
        !(f->repeat_penalty >= 0.0f && f->repeat_penalty <= 100.0f))
        return fail(why, "SUBMIT sampling parameter out of range (or NaN)");
    if (f->payload_len == 0)
        return fail(why, "SUBMIT payload_len is 0 (empty prompt)");
    if (f->kind == SHM_PROMPT_IDS && f->payload_len % 4)
        return fail(why, "SUBMIT IDS payload_len is not a multiple of 4");

    uint64_t inline_len;
    if (f->payload_loc == SHM_LOC_INLINE) {
        inline_len = f->payload_len;
        if (f->data_off != 0)
            return fail(why, "SUBMIT data_off must be 0 for an inline payload");
    } else if (f->payload_loc == SHM_LOC_DATA) {
        inline_len = 0;
        if (f->data_off > data_size || f->payload_len > data_size - f->data_off)
            return fail(why, "SUBMIT data_off + payload_len exceeds the data area");
        if (f->kind == SHM_PROMPT_IDS && f->data_off % 4)
            return fail(why, "SUBMIT IDS data_off is not 4-byte aligned");
    } else {
        return fail(why, "SUBMIT payload_loc is not INLINE or DATA");
    }
    uint64_t ext_len = (f->flags & SHM_REQ_F_EXT) ? sizeof(out->ext) : 0;
    uint64_t need = sizeof(*f) + ext_len + 4ull * f->n_stop_ids + f->stop_strs_len + inline_len;
    if (need > len || align8(need) < len)
        return fail(why, "SUBMIT sections do not fill the record exactly");
    if (ext_len) {
        int rc = decode_ext(b, out, why);
        if (rc < 0)
            return rc;
    }

    uint64_t off = sizeof(*f) + ext_len;
    out->stop_ids = (const uint32_t *)(const void *)(b + off);
    off += 4ull * f->n_stop_ids;
    out->stop_strs = b + off;
    /* Walk the stop-string blob once: it must hold exactly n_stop_strs
     * strings of 1..SHM_STOP_STR_LEN_MAX bytes each. */
    uint64_t p = 0;
    for (uint32_t i = 0; i < f->n_stop_strs; i++) {
        uint16_t n;
        if (f->stop_strs_len - p < 2)
            return fail(why, "SUBMIT stop-string blob truncated");
        memcpy(&n, out->stop_strs + p, 2);
        p += 2;
        if (n == 0 || n > SHM_STOP_STR_LEN_MAX)
            return fail(why, "SUBMIT stop string length must be 1..256");
        if (f->stop_strs_len - p < n)
            return fail(why, "SUBMIT stop string runs past the blob");
        p += n;
    }
    if (p != f->stop_strs_len)
        return fail(why, "SUBMIT stop_strs_len has trailing bytes");
    off += f->stop_strs_len;
    out->payload = f->payload_loc == SHM_LOC_INLINE ? b + off : NULL;
    return 0;
}

int shm_stop_str_next(const struct shm_submit_view *v, uint32_t *pos, const uint8_t **s, uint32_t *n)
{
    if (*pos >= v->fixed.stop_strs_len)
        return 0;
    uint16_t l;
    memcpy(&l, v->stop_strs + *pos, 2);
    *s = v->stop_strs + *pos + 2;
    *n = l;
    *pos += 2u + l;
    return 1;
}

int shm_proto_decode_cancel(const void *body, size_t len, struct shm_req_cancel *out, const char **why)
{
    if (len != sizeof(*out))
        return fail(why, "CANCEL body is not 8 bytes");
    memcpy(out, body, sizeof(*out));
    return 0;
}

int shm_proto_decode_tokens(const void *body, size_t len, struct shm_tokens_view *out, const char **why)
{
    const uint8_t *b = body;
    memset(out, 0, sizeof(*out));
    if (len < sizeof(out->fixed))
        return fail(why, "TOKENS shorter than its fixed part (24 bytes)");
    memcpy(&out->fixed, b, sizeof(out->fixed));
    const struct shm_evt_tokens *f = &out->fixed;
    if (f->n_tokens == 0 && f->text_len == 0)
        return fail(why, "TOKENS carries neither tokens nor text");
    if (f->channel > SHM_CHAN_TOOL_CALL || f->reserved)
        return fail(why, "TOKENS channel unknown or reserved not 0");
    uint64_t need = sizeof(*f) + 8ull * f->n_tokens + f->text_len;
    if (need > len || align8(need) < len)
        return fail(why, "TOKENS sections do not fill the record exactly");
    out->ids = (const uint32_t *)(const void *)(b + sizeof(*f));
    out->text_lens = out->ids + f->n_tokens;
    out->text = (const char *)(b + sizeof(*f) + 8ull * f->n_tokens);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < f->n_tokens; i++) {
        uint32_t tl;
        memcpy(&tl, &out->text_lens[i], 4);
        sum += tl;
    }
    if (f->n_tokens && sum != f->text_len)     /* a text-only record has no per-token lengths */
        return fail(why, "TOKENS text_lens do not sum to text_len");
    return 0;
}

int shm_proto_decode_queued(const void *body, size_t len, struct shm_evt_queued *out, const char **why)
{
    if (len != sizeof(*out))
        return fail(why, "QUEUED body is not 16 bytes");
    memcpy(out, body, sizeof(*out));
    return 0;
}

int shm_proto_decode_done(const void *body, size_t len, struct shm_evt_done *out,
                          const char **msg, const char **why)
{
    if (len < sizeof(*out))
        return fail(why, "DONE shorter than its fixed part (64 bytes)");
    memcpy(out, body, sizeof(*out));
    if (out->finish < SHM_FINISH_STOP || out->finish > SHM_FINISH_TOOL_CALLS)
        return fail(why, "DONE finish reason unknown");
    if (out->error > 0)
        return fail(why, "DONE error must be 0 or a negative errno");
    uint64_t need = sizeof(*out) + (uint64_t)out->msg_len;
    if (need > len || align8(need) < len)
        return fail(why, "DONE msg_len disagrees with the record length");
    *msg = (const char *)body + sizeof(*out);
    return 0;
}
