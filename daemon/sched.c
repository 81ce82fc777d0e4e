/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Requests, sequences and the continuous-batching scheduler.
 *
 * LIFE OF A REQUEST
 * The event loop drains a session's request ring (sched_session_drain):
 * each SUBMIT record, already copied into private memory by the ring code,
 * is decoded, its data-area payload (if any) copied out once, checked
 * against policy (max_prompt_tokens, max_new_tokens, max_inflight_per_uid
 * and the uid's token totals, daemon/quota.c) and turned into a `struct
 * seq`, which queues a QUEUED event. Rejections
 * become a sequence that only carries a DONE(error) event, so every request
 * id gets exactly one DONE and the client never waits forever.
 *
 * BATCHING AND CHUNKED PREFILL (the chunk policy)
 * One compute step = one call of gen_ops.step() on the worker thread. A
 * step carries every decoding sequence (one token each, up to max_batch)
 * plus up to `prefill_chunk` prompt tokens handed out first-come
 * first-served to sequences still reading their prompt. A prompt longer
 * than the chunk is split over several steps, interleaved with the decode
 * tokens of everyone else, so a 30K-token prompt delays other streams by at
 * most one chunk per step instead of the whole prefill. A sequence whose
 * last prompt chunk is in the step samples its first token in that step.
 *
 * BACKPRESSURE
 * Tokens go to a per-sequence pending buffer, then into the session's event
 * ring. When the ring is full the buffer keeps them and the sequence sits
 * out of the following steps (it is "paused"); nobody else waits. The
 * session sets producer_waiting so the client rings the doorbell when it
 * frees space; a tick re-tries too, because a hostile client need not ring.
 * If the ring stays full longer than slow_client_ms, the session's requests
 * are cancelled and it is disconnected. A blocked session's request ring
 * is not drained either, so a client that never reads cannot make the
 * daemon queue unbounded DONE events.
 *
 * TEXT
 * Generators hand out raw bytes. Each sequence repairs them into valid
 * UTF-8 (an incomplete trailing code point is held back until the next
 * token completes it; invalid bytes become U+FFFD) and holds back the
 * longest suffix that could still grow into a stop string, so a matched
 * stop string is never partially streamed.
 *
 * CHANNELS
 * For TEXT and CHAT prompts of a generator whose output is chat text
 * (gen_ops.parse_output), the released text then goes through the engine's
 * output parsers (daemon/channels.h): reasoning, content and tool-call
 * deltas become pending pieces on their channel. A token's first piece
 * carries its id; further pieces of the same token (another channel, or
 * the parser's flush at the end) are text-only pieces, sent as TOKENS
 * records with n_tokens 0 unless they extend the previous pending piece of
 * the same channel. A request that emitted tool calls finishes with
 * SHM_FINISH_TOOL_CALLS instead of stop / stop id / stop string.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/channels.h"
#include "daemon/daemon.h"
#include "daemon/force.h"
#include "daemon/textstream.h"
#include "shm/proto.h"

enum seq_state {
    SEQ_RUN,        /* prefill or decode */
    SEQ_DONE,       /* finished: waiting for its events to reach the ring */
};

struct seq {
    struct session *s;
    struct seq     *snext, *sprev;      /* session list */
    struct seq     *rnext, *rprev;      /* daemon run list (SEQ_RUN only) */
    enum seq_state  state;
    uint64_t        req_id;
    void           *gen_seq;
    uint32_t        flags;
    uint32_t        prompt_tokens, prefill_left, max_tokens, generated;
    uint32_t        cached_tokens;      /* restored from the generator's prefix cache */
    uint32_t        charged_prompt;     /* uid quota charges still held (daemon/quota.c) */
    uint32_t        charged_new;
    int             in_batch;
    uint32_t        cancel_finish;      /* finish reason to apply when back from the batch */
    uint32_t        stop_ids[SHM_STOP_IDS_MAX];
    uint32_t        n_stop_ids;
    uint8_t        *stops;              /* blob: u16 len + bytes (owned) */
    struct text_stream text;            /* UTF-8 repair + stop-string hold-back */
    struct channels *ch;                /* output parsers, NULL = all content */
    uint32_t        cur_chan;           /* channel of the last piece */
    uint32_t        tok_id;             /* token whose text is being parsed */
    int             tok_open;           /* its id is not in a piece yet */
    /* pending output: pieces, each on one channel, with or without a token */
    struct pend {
        uint32_t id, len;
        uint32_t chan, has_id;
    }              *pend;
    uint32_t        n_pend, cap_pend;
    uint8_t        *p_text;
    uint32_t        p_text_len, p_text_cap;
    int             queued_pending;
    int             done_pending;
    struct shm_evt_done done;
    char            done_msg[256];
    uint64_t        t_submit, t_compute, t_first, t_last;
};

static void run_link(struct daemon *d, struct seq *q)
{
    q->rnext = NULL;
    q->rprev = d->run_tail;
    if (d->run_tail)
        d->run_tail->rnext = q;
    else
        d->run_head = q;
    d->run_tail = q;
}

static void run_unlink(struct daemon *d, struct seq *q)
{
    if (q->rprev)
        q->rprev->rnext = q->rnext;
    else
        d->run_head = q->rnext;
    if (q->rnext)
        q->rnext->rprev = q->rprev;
    else
        d->run_tail = q->rprev;
    q->rnext = q->rprev = NULL;
}

/* Give back the token charges of the uid; idempotent, so every path that
 * ends a request may call it and the first one releases. */
static void seq_uncharge(struct seq *q)
{
    quota_tokens_release(q->s->acct, q->charged_prompt, q->charged_new);
    q->charged_prompt = q->charged_new = 0;
}

static void seq_free(struct seq *q)
{
    struct session *s = q->s;
    struct daemon *d = s->d;
    seq_uncharge(q);
    if (q->gen_seq)
        d->gen->seq_free(d->gen_ctx, q->gen_seq);
    if (q->snext)
        q->snext->sprev = q->sprev;
    if (q->sprev)
        q->sprev->snext = q->snext;
    else
        s->seqs = q->snext;
    if (s->n_inflight)
        s->n_inflight--;
    if (s->acct && s->acct->inflight)
        s->acct->inflight--;
    text_stream_free(&q->text);
    channels_free(q->ch);
    free(q->stops);
    free(q->pend);
    free(q->p_text);
    free(q);
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    uint32_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > UINT32_MAX / 2)
            return -ENOMEM;
        n *= 2;
    }
    void *np = realloc(*p, (size_t)n * elem);
    if (!np)
        return -ENOMEM;
    *p = np;
    *cap = n;
    return 0;
}

/* Finish a sequence: stop computing, queue the DONE event. */
static void seq_finish(struct seq *q, uint32_t finish, int error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void seq_finish(struct seq *q, uint32_t finish, int error, const char *fmt, ...)
{
    struct daemon *d = q->s->d;
    if (q->state == SEQ_DONE)
        return;
    if (q->state == SEQ_RUN && (q->rnext || q->rprev || d->run_head == q))
        run_unlink(d, q);
    q->state = SEQ_DONE;
    seq_uncharge(q);
    if (q->gen_seq && !q->in_batch) {
        d->gen->seq_free(d->gen_ctx, q->gen_seq);
        q->gen_seq = NULL;
    }
    uint64_t now = daemon_now_us();
    struct shm_evt_done *e = &q->done;
    memset(e, 0, sizeof(*e));
    e->req_id = q->req_id;
    e->finish = finish;
    e->error = error;
    e->prompt_tokens = q->prompt_tokens;
    e->completion_tokens = q->generated;
    e->cached_tokens = q->cached_tokens;
    e->queue_us = q->t_compute ? q->t_compute - q->t_submit : 0;
    e->ttft_us = q->t_first ? q->t_first - q->t_submit : 0;
    e->total_us = now - q->t_submit;
    e->decode_us = q->t_first && q->t_last ? q->t_last - q->t_first : 0;
    q->done_msg[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(q->done_msg, sizeof(q->done_msg), fmt, ap);
        va_end(ap);
    }
    e->msg_len = (uint32_t)strlen(q->done_msg);
    q->done_pending = 1;
}

/* ---- text ---- */

/* Add a piece to the pending output: `n` bytes on `chan`, for token `id`
 * (has_id) or text-only (appended to the previous piece when that one is
 * on the same channel and still pending). */
static int pend_piece(struct seq *q, uint32_t chan, int has_id, uint32_t id, const void *text, size_t n)
{
    if (n > UINT32_MAX - q->p_text_len)
        return -ENOMEM;
    if (!has_id && n == 0)
        return 0;
    if (grow((void **)&q->p_text, &q->p_text_cap, q->p_text_len + (uint32_t)n, 1) < 0)
        return -ENOMEM;
    if (!has_id && q->n_pend && q->pend[q->n_pend - 1].chan == chan) {
        q->pend[q->n_pend - 1].len += (uint32_t)n;
    } else {
        if (grow((void **)&q->pend, &q->cap_pend, q->n_pend + 1, sizeof(*q->pend)) < 0)
            return -ENOMEM;
        q->pend[q->n_pend++] = (struct pend){ .id = id, .len = (uint32_t)n, .chan = chan, .has_id = has_id != 0 };
    }
    if (n)
        memcpy(q->p_text + q->p_text_len, text, n);
    q->p_text_len += (uint32_t)n;
    return 0;
}

/* channels sink: the current token's first piece carries its id. */
static int chan_sink(void *user, uint32_t chan, const char *text, size_t len)
{
    struct seq *q = user;
    q->cur_chan = chan;
    if (q->tok_open) {
        q->tok_open = 0;
        return pend_piece(q, chan, 1, q->tok_id, text, len);
    }
    return pend_piece(q, chan, 0, 0, text, len);
}

/* Release held text that can no longer be part of a stop string as the
 * text of token `id` (through the output parsers when the request has
 * them; `final` or a stop-string hit flushes them). Returns 1 when a stop
 * string matched (text before it released, the rest dropped), 0, or a
 * negative errno. */
static int text_release(struct seq *q, uint32_t id, int final)
{
    uint32_t out;
    int hit = text_stream_ready(&q->text, final, &out);
    int r;
    if (!q->ch) {
        r = pend_piece(q, SHM_CHAN_CONTENT, 1, id, text_stream_data(&q->text), out);
    } else {
        q->tok_id = id;
        q->tok_open = 1;
        r = channels_feed(q->ch, (const char *)text_stream_data(&q->text), out, chan_sink, q);
        if (r == 0 && (hit || final))
            r = channels_finish(q->ch, chan_sink, q);
        if (r == 0 && q->tok_open)
            r = pend_piece(q, q->cur_chan, 1, id, NULL, 0);
        q->tok_open = 0;
    }
    if (r < 0)
        return r;
    text_stream_consume(&q->text, hit ? text_stream_len(&q->text) : out);
    return hit;
}

/* ---- event emission ---- */

/* Try to write a sequence's pending events. Returns 0 when everything went
 * out, -EAGAIN when the ring is full, -EPROTO when the client forged the
 * ring's head. */
static int seq_emit(struct seq *q)
{
    struct session *s = q->s;
    void *body;
    int r;
    if (q->queued_pending) {
        struct shm_evt_queued e = { .req_id = q->req_id, .prompt_tokens = q->prompt_tokens };
        r = shm_ring_prod_alloc(&s->evt, SHM_EVT_QUEUED, sizeof(e), &body);
        if (r < 0)
            return r;
        memcpy(body, &e, sizeof(e));
        q->queued_pending = 0;
    }
    while (q->n_pend) {
        int64_t space = shm_ring_prod_space(&s->evt);
        if (space < 0)
            return (int)space;
        /* A text-only piece alone, or as many token pieces of one channel
         * as fit in one record. */
        uint32_t k = 0, n_ids = 0;
        uint64_t text = 0;
        uint32_t chan = q->pend[0].chan;
        uint64_t max = shm_ring_max_record(s->evt.cap) - SHM_REC_HDR;
        struct pend *p0 = &q->pend[0];
        uint32_t ids0 = p0->has_id ? 1 : 0;
        if (shm_proto_tokens_size(ids0, p0->len) > max) {
            /* A piece larger than a record (a long tool argument): send it
             * in parts cut at character boundaries, the token with the first. */
            uint64_t cut = max - shm_proto_tokens_size(ids0, 0);
            while (cut > 0 && (q->p_text[cut] & 0xc0) == 0x80)
                cut--;
            if (cut == 0)
                return -EMSGSIZE;
            if (shm_proto_tokens_size(ids0, (uint32_t)cut) > (uint64_t)space)
                return -EAGAIN;
            r = shm_ring_prod_alloc(&s->evt, SHM_EVT_TOKENS, shm_proto_tokens_size(ids0, (uint32_t)cut), &body);
            if (r < 0)
                return r;
            struct shm_evt_tokens e = { .req_id = q->req_id, .n_tokens = ids0, .channel = p0->chan,
                                        .text_len = (uint32_t)cut };
            uint8_t *b = body;
            uint32_t cut32 = (uint32_t)cut;
            memcpy(b, &e, sizeof(e));
            if (ids0) {
                memcpy(b + sizeof(e), &p0->id, 4);
                memcpy(b + sizeof(e) + 4, &cut32, 4);
            }
            memcpy(b + sizeof(e) + 8ull * ids0, q->p_text, cut);
            memmove(q->p_text, q->p_text + cut, q->p_text_len - cut);
            q->p_text_len -= cut32;
            p0->len -= cut32;
            p0->has_id = 0;
            if (!q->t_first)
                q->t_first = daemon_now_us();
            q->t_last = daemon_now_us();
            continue;
        }
        if (!q->pend[0].has_id) {
            text = q->pend[0].len;
            if (shm_proto_tokens_size(0, (uint32_t)text) > max)
                return -EMSGSIZE;
            if (shm_proto_tokens_size(0, (uint32_t)text) <= (uint64_t)space)
                k = 1;
        } else {
            while (k < q->n_pend && q->pend[k].has_id && q->pend[k].chan == chan) {
                uint64_t sz = shm_proto_tokens_size(k + 1, (uint32_t)(text + q->pend[k].len));
                if (sz > (uint64_t)space)
                    break;
                text += q->pend[k].len;
                k++;
            }
            n_ids = k;
            if (k == 0 && shm_proto_tokens_size(1, q->pend[0].len) > max)
                return -EMSGSIZE;
        }
        if (k == 0)
            return -EAGAIN;
        size_t sz = shm_proto_tokens_size(n_ids, (uint32_t)text);
        r = shm_ring_prod_alloc(&s->evt, SHM_EVT_TOKENS, sz, &body);
        if (r < 0)
            return r;
        struct shm_evt_tokens e = { .req_id = q->req_id, .n_tokens = n_ids, .channel = chan,
                                    .text_len = (uint32_t)text };
        uint8_t *b = body;
        memcpy(b, &e, sizeof(e));
        for (uint32_t i = 0; i < n_ids; i++) {
            memcpy(b + sizeof(e) + 4ull * i, &q->pend[i].id, 4);
            memcpy(b + sizeof(e) + 4ull * n_ids + 4ull * i, &q->pend[i].len, 4);
        }
        if (text)
            memcpy(b + sizeof(e) + 8ull * n_ids, q->p_text, text);
        if (q->n_pend > k)
            memmove(q->pend, q->pend + k, sizeof(*q->pend) * (q->n_pend - k));
        if (q->p_text_len > text)
            memmove(q->p_text, q->p_text + text, q->p_text_len - text);
        q->n_pend -= k;
        q->p_text_len -= (uint32_t)text;
        if (!q->t_first)
            q->t_first = daemon_now_us();
        q->t_last = daemon_now_us();
    }
    if (q->done_pending) {
        /* Timings are final only now that every token is out. */
        q->done.ttft_us = q->t_first ? q->t_first - q->t_submit : 0;
        q->done.decode_us = q->t_first ? q->t_last - q->t_first : 0;
        q->done.total_us = daemon_now_us() - q->t_submit;
        r = shm_ring_prod_alloc(&s->evt, SHM_EVT_DONE, sizeof(q->done) + q->done.msg_len, &body);
        if (r < 0)
            return r;
        memcpy(body, &q->done, sizeof(q->done));
        memcpy((uint8_t *)body + sizeof(q->done), q->done_msg, q->done.msg_len);
        q->done_pending = 0;
    }
    return 0;
}

void sched_session_flush(struct session *s)
{
    if (s->state != S_ACTIVE)
        return;
    int blocked = 0;
    for (struct seq *q = s->seqs, *nq; q; q = nq) {
        nq = q->snext;
        int r = seq_emit(q);
        if (r == -EAGAIN) {
            blocked = 1;
            break;
        }
        if (r < 0) {
            session_abort(s, r == -EPROTO ? -EPROTO : -EMSGSIZE,
                          r == -EPROTO ? "client forged the event ring head (protocol violation)"
                                       : "an event does not fit this session's event ring (connect with a larger evt_ring_bytes)");
            return;
        }
        if (q->state == SEQ_DONE && !q->done_pending && !q->in_batch)
            seq_free(q);
    }
    if (blocked) {
        if (!s->full_since_us) {
            s->full_since_us = daemon_now_us();
            shm_ring_prod_set_waiting(&s->evt, true);
        }
    } else if (s->full_since_us) {
        s->full_since_us = 0;
        shm_ring_prod_set_waiting(&s->evt, false);
    }
    /* Ring the client only for events this call made visible: a client
     * that armed its sleep re-checked the tail, so anything published
     * before is already seen (and an idle armed client is not woken by
     * every tick). */
    uint64_t before = s->evt.published;
    if (shm_ring_prod_publish(&s->evt) && s->evt.published != before)
        session_wake_client(s);
}

/* ---- request intake ---- */

static struct seq *seq_find(struct session *s, uint64_t id)
{
    for (struct seq *q = s->seqs; q; q = q->snext)
        if (q->req_id == id)
            return q;
    return NULL;
}

static struct seq *seq_alloc(struct session *s, uint64_t req_id)
{
    struct seq *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->s = s;
    q->req_id = req_id;
    text_stream_init(&q->text, NULL, 0);
    q->t_submit = daemon_now_us();
    q->state = SEQ_RUN;
    q->snext = s->seqs;
    if (s->seqs)
        s->seqs->sprev = q;
    s->seqs = q;
    s->n_inflight++;
    if (s->acct)
        s->acct->inflight++;
    return q;
}

/* A CHAT payload is a JSON object with a non-empty "messages" array; its
 * "tool_choice" (if it forces a call) is read into *fc, and refused when
 * the generator cannot force calls. */
static int chat_json_ok(const struct gen_ops *gen, const uint8_t *b, size_t n, struct force_choice *fc,
                        char *err, size_t errlen)
{
    struct json_tokener *tok = json_tokener_new_ex(64);
    if (!tok) {
        snprintf(err, errlen, "out of memory parsing chat JSON");
        return -ENOMEM;
    }
    struct json_object *o = n <= INT32_MAX ? json_tokener_parse_ex(tok, (const char *)b, (int)n) : NULL;
    int ok = 0;
    if (!o || json_tokener_get_error(tok) != json_tokener_success)
        snprintf(err, errlen, "chat payload is not valid JSON (or nests deeper than 64)");
    else if (json_tokener_get_parse_end(tok) != n)
        snprintf(err, errlen, "chat payload has bytes after the JSON document");
    else if (!json_object_is_type(o, json_type_object))
        snprintf(err, errlen, "chat payload must be a JSON object with a \"messages\" array");
    else {
        struct json_object *m;
        if (!json_object_object_get_ex(o, "messages", &m) || !json_object_is_type(m, json_type_array) ||
            json_object_array_length(m) == 0)
            snprintf(err, errlen, "chat payload needs a non-empty \"messages\" array");
        else
            ok = 1;
    }
    int r = ok ? force_choice_from_request(o, fc, err, errlen) : -EINVAL;
    if (r == 0 && fc->kind != FORCE_NONE && !gen->tool_choice) {
        snprintf(err, errlen, "tool_choice %s needs constrained decoding, which the '%s' generator does not "
                 "offer (WELCOME has no SHM_WELCOME_F_TOOL_CHOICE); use \"auto\"",
                 fc->kind == FORCE_REQUIRED ? "\"required\"" : "naming a function", gen->name);
        r = -EINVAL;
    }
    json_object_put(o);
    json_tokener_free(tok);
    return r;
}

static void handle_submit(struct session *s, const uint8_t *body, size_t len)
{
    struct daemon *d = s->d;
    const struct daemon_config *c = &d->cfg;
    struct shm_submit_view v;
    const char *why = NULL;
    if (shm_proto_decode_submit(body, len, s->region.layout.data_size, &v, &why) < 0) {
        session_abort(s, -EPROTO, why);
        return;
    }
    const struct shm_req_submit *f = &v.fixed;
    if (seq_find(s, f->req_id)) {
        /* Cannot answer with a DONE: it would be taken for the live request's. */
        session_abort(s, -EPROTO, "SUBMIT reuses the req_id of a request still in flight");
        return;
    }
    struct seq *q = seq_alloc(s, f->req_id);
    if (!q) {
        session_abort(s, -ENOMEM, "residentd is out of memory for a request");
        return;
    }
    q->queued_pending = 1;
    q->flags = f->flags;
    if (d->stopping) {
        seq_finish(q, SHM_FINISH_SHUTDOWN, -ESHUTDOWN, "residentd is shutting down; reconnect later");
        return;
    }
    if (s->acct && s->acct->inflight > c->max_inflight_per_uid) {
        seq_finish(q, SHM_FINISH_ERROR, -EBUSY, "uid %u has %u requests in flight; limit max_inflight_per_uid = %u",
                   (unsigned)s->cred.uid, s->acct->inflight - 1, c->max_inflight_per_uid);
        return;
    }
    q->max_tokens = f->max_tokens ? f->max_tokens : c->max_new_tokens;
    if (q->max_tokens > c->max_new_tokens) {
        seq_finish(q, SHM_FINISH_ERROR, -E2BIG, "max_tokens %u exceeds the limit max_new_tokens = %u",
                   f->max_tokens, c->max_new_tokens);
        return;
    }
    /* The reservation is charged before the generator sizes the sequence
     * by it; a refusal releases nothing because nothing was charged. */
    char qmsg[256];
    int qr = quota_new_tokens_check(d, s->acct, q->max_tokens, qmsg, sizeof(qmsg));
    if (qr < 0) {
        seq_finish(q, SHM_FINISH_ERROR, qr, "%s", qmsg);
        return;
    }
    quota_tokens_charge(s->acct, 0, q->max_tokens);
    q->charged_new = q->max_tokens;
    /* Copy the payload out of shared memory exactly once. */
    uint8_t *prompt = malloc(f->payload_len);
    if (!prompt) {
        seq_finish(q, SHM_FINISH_ERROR, -ENOMEM, "out of memory for a %u-byte prompt", f->payload_len);
        return;
    }
    memcpy(prompt, v.payload ? v.payload : s->region.base + s->region.layout.data_off + f->data_off,
           f->payload_len);
    char err[200];
    int r = 0;
    struct force_choice fc = { 0 };
    if (f->kind == SHM_PROMPT_IDS) {
        uint32_t vocab = d->gen->vocab_size(d->gen_ctx);
        for (uint32_t i = 0; i < f->payload_len / 4; i++) {
            uint32_t id;
            memcpy(&id, prompt + 4ull * i, 4);
            if (id >= vocab) {
                snprintf(err, sizeof(err), "prompt token %u at index %u is outside the vocabulary (size %u)",
                         id, i, vocab);
                r = -EINVAL;
                break;
            }
        }
    } else if (f->kind == SHM_PROMPT_CHAT) {
        r = chat_json_ok(d->gen, prompt, f->payload_len, &fc, err, sizeof(err));
    }
    if (r == 0) {
        struct gen_prompt gp = {
            .kind = f->kind, .bytes = prompt, .len = f->payload_len, .seed = f->seed,
            .temperature = f->temperature, .top_p = f->top_p, .min_p = f->min_p,
            .repeat_penalty = f->repeat_penalty, .top_k = f->top_k,
            .presence_penalty = v.ext.presence_penalty, .frequency_penalty = v.ext.frequency_penalty,
            .model_defaults = v.ext.model_defaults,
            .max_new_tokens = q->max_tokens,
            .uid = (uint32_t)s->cred.uid,
            .flags = (f->flags & SHM_REQ_F_NO_PREFIX_CACHE) ? GEN_PROMPT_F_NO_CACHE : 0,
            .tool_choice = fc.kind != FORCE_NONE ? &fc : NULL,
        };
        r = d->gen->seq_new(d->gen_ctx, &gp, &q->gen_seq, &q->prompt_tokens, err, sizeof(err));
    }
    force_choice_clear(&fc);
    struct channels_opts co;
    if (r == 0 && d->gen->parse_output && channels_opts_from_request(f->kind, prompt, f->payload_len, &co)) {
        r = channels_new(&co, &q->ch, err, sizeof(err));
        q->cur_chan = q->ch ? channels_initial(q->ch) : SHM_CHAN_CONTENT;
    }
    free(prompt);
    if (r < 0) {
        seq_finish(q, SHM_FINISH_ERROR, r, "%s", err);
        return;
    }
    if (q->prompt_tokens > c->max_prompt_tokens) {
        seq_finish(q, SHM_FINISH_ERROR, -E2BIG, "prompt has %u tokens; limit max_prompt_tokens = %u",
                   q->prompt_tokens, c->max_prompt_tokens);
        return;
    }
    qr = quota_prompt_tokens_check(d, s->acct, q->prompt_tokens, qmsg, sizeof(qmsg));
    if (qr < 0) {
        /* "prompt ..." first, as for max_prompt_tokens: the gateway maps a
         * prompt-size E2BIG to context_length_exceeded by that prefix. */
        seq_finish(q, SHM_FINISH_ERROR, qr, "prompt of %u tokens refused: %s", q->prompt_tokens, qmsg);
        return;
    }
    quota_tokens_charge(s->acct, q->prompt_tokens, 0);
    q->charged_prompt = q->prompt_tokens;
    q->prefill_left = q->prompt_tokens;
    if (d->gen->seq_cached) {
        /* Restored at the first prefill step, not computed: only the rest
         * is handed out in chunks. */
        uint32_t planned = d->gen->seq_cached(d->gen_ctx, q->gen_seq);
        if (planned < q->prompt_tokens)
            q->prefill_left -= planned;
    }
    q->n_stop_ids = f->n_stop_ids;
    memcpy(q->stop_ids, v.stop_ids, 4ull * f->n_stop_ids);
    if (f->n_stop_strs) {
        q->stops = malloc(f->stop_strs_len);
        if (!q->stops) {
            seq_finish(q, SHM_FINISH_ERROR, -ENOMEM, "out of memory for stop strings");
            return;
        }
        memcpy(q->stops, v.stop_strs, f->stop_strs_len);
        text_stream_init(&q->text, q->stops, f->n_stop_strs);
    }
    run_link(d, q);
}

static void handle_cancel(struct session *s, const uint8_t *body, size_t len)
{
    struct shm_req_cancel c;
    const char *why = NULL;
    if (shm_proto_decode_cancel(body, len, &c, &why) < 0) {
        session_abort(s, -EPROTO, why);
        return;
    }
    struct seq *q = seq_find(s, c.req_id);
    if (!q || q->state == SEQ_DONE)
        return;     /* unknown or already finishing: cancelling is idempotent */
    if (q->in_batch) {
        q->cancel_finish = SHM_FINISH_CANCELLED;
        return;
    }
    /* Text held back for stop strings is dropped with the request. */
    seq_finish(q, SHM_FINISH_CANCELLED, 0, NULL);
}

void sched_session_drain(struct session *s)
{
    struct daemon *d = s->d;
    /* Records per call, so one session cannot hog the loop; the tick comes
     * back for the rest. */
    int budget = 256;
    for (;;) {
        while (s->state == S_ACTIVE && !s->full_since_us && budget > 0) {
            struct shm_rec_hdr h;
            int r = shm_ring_cons_next(&s->req, &h, s->reqbuf, shm_ring_max_record(s->req.cap));
            if (r < 0) {
                session_abort(s, -EPROTO, "client published an impossible request ring tail or record (protocol violation)");
                return;
            }
            if (r == 0)
                break;
            budget--;
            size_t len = h.len - SHM_REC_HDR;
            if (h.type == SHM_REQ_SUBMIT)
                handle_submit(s, s->reqbuf, len);
            else if (h.type == SHM_REQ_CANCEL)
                handle_cancel(s, s->reqbuf, len);
            else
                session_abort(s, -EPROTO, "unknown request record type");
        }
        if (s->state != S_ACTIVE)
            return;
        if (shm_ring_cons_release(&s->req))
            session_wake_client(s);
        sched_session_flush(s);
        if (s->state != S_ACTIVE || s->full_since_us || budget <= 0)
            break;
        /* Sleep-flag handshake: arm, re-check, so no doorbell is lost. */
        if (shm_ring_cons_arm_sleep(&s->req))
            break;
    }
    sched_kick(d);
}

/* ---- the batch ---- */

static void *worker_main(void *arg)
{
    struct daemon *d = arg;
    struct worker *w = &d->worker;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->has_work && !w->quit)
            pthread_cond_wait(&w->cond, &w->lock);
        if (w->quit)
            break;
        pthread_mutex_unlock(&w->lock);
        int rc = d->gen->step(d->gen_ctx, d->batch, d->batch_n);
        pthread_mutex_lock(&w->lock);
        w->rc = rc;
        w->has_work = 0;
        uint64_t one = 1;
        ssize_t n = write(w->efd, &one, sizeof(one));
        (void)n;   /* an eventfd write of 1 cannot fail short of overflow */
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int sched_init(struct daemon *d)
{
    size_t n = d->cfg.max_batch;
    d->batch = calloc(n, sizeof(*d->batch));
    d->batch_seqs = calloc(n, sizeof(*d->batch_seqs));
    if (!d->batch || !d->batch_seqs)
        return -ENOMEM;
    struct worker *w = &d->worker;
    if (d->gen->configure) {
        struct gen_options o = { .prefix_cache = d->cfg.prefix_cache,
                                 .prefix_cache_bytes = d->cfg.prefix_cache_bytes };
        char err[256];
        int r = d->gen->configure(d->gen_ctx, &o, err, sizeof(err));
        if (r < 0)
            daemon_log("generator %s: %s; continuing without it", d->gen->name, err);
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    int r = pthread_create(&w->thread, NULL, worker_main, d);
    return -r;
}

void sched_fini(struct daemon *d)
{
    struct worker *w = &d->worker;
    pthread_mutex_lock(&w->lock);
    w->quit = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(d->batch);
    free(d->batch_seqs);
}

static int seq_paused(const struct seq *q)
{
    return q->n_pend > 0 || q->s->full_since_us != 0 || q->s->state != S_ACTIVE;
}

void sched_kick(struct daemon *d)
{
    if (d->batch_busy)
        return;
    size_t n = 0;
    uint32_t budget = d->cfg.prefill_chunk;
    /* Decoding sequences first: each advances by one token. */
    for (struct seq *q = d->run_head; q && n < d->cfg.max_batch; q = q->rnext) {
        if (q->prefill_left || seq_paused(q))
            continue;
        struct gen_item *it = &d->batch[n];
        memset(it, 0, offsetof(struct gen_item, piece));
        it->seq = q->gen_seq;
        it->sample = 1;
        d->batch_seqs[n++] = q;
    }
    /* Then prompt chunks, first come first served, within the token budget. */
    for (struct seq *q = d->run_head; q && n < d->cfg.max_batch && budget; q = q->rnext) {
        if (!q->prefill_left || seq_paused(q))
            continue;
        uint32_t take = q->prefill_left < budget ? q->prefill_left : budget;
        budget -= take;
        struct gen_item *it = &d->batch[n];
        memset(it, 0, offsetof(struct gen_item, piece));
        it->seq = q->gen_seq;
        it->n_prefill = take;
        it->sample = take == q->prefill_left;
        d->batch_seqs[n++] = q;
    }
    if (!n)
        return;
    uint64_t now = daemon_now_us();
    for (size_t i = 0; i < n; i++) {
        struct seq *q = d->batch_seqs[i];
        q->in_batch = 1;
        q->s->n_in_batch++;
        if (!q->t_compute)
            q->t_compute = now;
    }
    d->batch_n = n;
    d->batch_busy = 1;
    struct worker *w = &d->worker;
    pthread_mutex_lock(&w->lock);
    w->has_work = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static int is_stop_id(const struct seq *q, uint32_t id)
{
    for (uint32_t i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] == id)
            return 1;
    return 0;
}

/* Apply one generated token to its sequence. */
static void seq_token(struct seq *q, const struct gen_item *it)
{
    q->generated++;
    if (text_stream_feed(&q->text, it->piece, it->piece_len < GEN_PIECE_MAX ? it->piece_len : GEN_PIECE_MAX) < 0) {
        seq_finish(q, SHM_FINISH_ERROR, -ENOMEM, "out of memory for output text");
        return;
    }
    uint32_t finish = 0;
    if (it->eos && !(q->flags & SHM_REQ_F_IGNORE_EOS))
        finish = SHM_FINISH_STOP;
    else if (is_stop_id(q, it->token))
        finish = SHM_FINISH_STOP_ID;
    else if (q->generated >= q->max_tokens)
        finish = SHM_FINISH_LENGTH;
    /* A stream that ends inside a code point gets it repaired now. */
    if (finish && text_stream_end(&q->text) < 0) {
        seq_finish(q, SHM_FINISH_ERROR, -ENOMEM, "out of memory for output text");
        return;
    }
    int r = text_release(q, it->token, finish != 0);
    if (r == 1)
        finish = SHM_FINISH_STOP_STRING;
    if (r >= 0 && finish && finish != SHM_FINISH_LENGTH && q->ch && channels_tool_calls(q->ch))
        finish = SHM_FINISH_TOOL_CALLS;
    if (r < 0)
        seq_finish(q, SHM_FINISH_ERROR, r, "%s", r == -ENOMEM ? "out of memory for output text"
                                                        : "the output parser failed");
    else if (finish)
        seq_finish(q, finish, 0, NULL);
}

void sched_batch_done(struct daemon *d)
{
    struct worker *w = &d->worker;
    pthread_mutex_lock(&w->lock);
    int rc = w->rc;
    pthread_mutex_unlock(&w->lock);
    d->batch_busy = 0;
    d->steps++;
    for (size_t i = 0; i < d->batch_n; i++) {
        struct seq *q = d->batch_seqs[i];
        struct gen_item *it = &d->batch[i];
        struct session *s = q->s;
        q->in_batch = 0;
        s->n_in_batch--;
        if (s->state != S_ACTIVE) {
            seq_free(q);    /* its session is going away */
            continue;
        }
        if (q->state == SEQ_DONE) {
            /* Finished while computing (shutdown): release the generator's state now. */
            if (q->gen_seq) {
                d->gen->seq_free(d->gen_ctx, q->gen_seq);
                q->gen_seq = NULL;
            }
            continue;
        }
        if (q->cancel_finish) {
            seq_finish(q, q->cancel_finish, 0, NULL);
            continue;
        }
        if (rc < 0 || it->error < 0) {
            seq_finish(q, SHM_FINISH_ERROR, rc < 0 ? rc : it->error, "the generator failed on this sequence");
            continue;
        }
        q->prefill_left -= it->n_prefill;
        if (it->cached)
            q->cached_tokens = it->cached;
        if (it->sample) {
            d->tokens_out++;
            seq_token(q, it);
        }
    }
    /* Publish once per session per step: one wakeup carries the whole step. */
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        if (s->state == S_ACTIVE)
            sched_session_flush(s);
    }
    sched_kick(d);
}

void sched_session_drop(struct session *s, int force)
{
    struct daemon *d = s->d;
    for (struct seq *q = s->seqs, *nq; q; q = nq) {
        nq = q->snext;
        if (q->state == SEQ_RUN && (q->rnext || q->rprev || d->run_head == q))
            run_unlink(d, q);
        q->state = SEQ_DONE;
        /* A sequence inside the worker's batch is freed when the batch
         * returns (sched_batch_done); `force` is for after the worker stopped. */
        if (!q->in_batch || force)
            seq_free(q);
    }
}

void sched_tick(struct daemon *d, uint64_t now)
{
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        if (s->state != S_ACTIVE)
            continue;
        if (s->full_since_us) {
            sched_session_flush(s);
            if (s->state == S_ACTIVE && s->full_since_us &&
                now - s->full_since_us > (uint64_t)d->cfg.slow_client_ms * 1000) {
                session_abort(s, -ENOBUFS, "event ring stayed full past slow_client_ms; requests cancelled "
                              "(read events faster or connect with a larger evt_ring_bytes)");
                continue;
            }
        }
        if (s->state == S_ACTIVE && !s->full_since_us)
            sched_session_drain(s);
    }
    sched_kick(d);
}

void sched_shutdown(struct daemon *d, int hard)
{
    /* Soft: refuse new work (handle_submit checks d->stopping). Hard: cancel
     * what is still running. */
    if (!hard)
        return;
    for (struct session *s = d->sessions; s; s = s->next)
        for (struct seq *q = s->seqs; q; q = q->snext)
            if (q->state == SEQ_RUN)
                seq_finish(q, SHM_FINISH_SHUTDOWN, -ESHUTDOWN, "residentd stopped before this request finished");
    for (struct session *s = d->sessions, *ns; s; s = ns) {
        ns = s->next;
        sched_session_flush(s);
    }
}

uint32_t sched_running(const struct daemon *d)
{
    uint32_t n = 0;
    for (const struct session *s = d->sessions; s; s = s->next)
        n += s->n_inflight;
    return n;
}
