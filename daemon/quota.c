/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Per-uid quotas: who may hold how much of residentd at once.
 *
 * WHAT IS COUNTED
 * One `struct uid_acct` per peer uid (SO_PEERCRED at connect) sums what all
 * of that uid's sessions hold right now:
 *
 *   counter        limit key                   charged            released
 *   sessions       max_sessions_per_uid        accept             session freed
 *   fds            max_fds_per_uid             accept (socket),   session freed
 *                                              HELLO (+3)
 *   ring_bytes     max_ring_bytes_per_uid      HELLO              session freed
 *   inflight       max_inflight_per_uid        SUBMIT decoded     sequence freed (DONE
 *                                                                 delivered, or disconnect)
 *   new_tokens     max_new_tokens_per_uid      SUBMIT admitted    DONE queued, or disconnect
 *   prompt_tokens  max_prompt_tokens_per_uid   prompt tokenized   DONE queued, or disconnect
 *
 * Per request, max_prompt_tokens and max_new_tokens still bound one
 * request; the *_per_uid token totals bound the sum over every request the
 * uid has in flight across all its sessions, so opening more sessions or
 * submitting more requests does not multiply a uid's share of the
 * generator's memory (sequence state grows with prompt + new tokens) or of
 * the batch. new_tokens counts the reservation (the request's max_tokens,
 * or max_new_tokens when it asks for 0), not what was generated so far:
 * admission must not depend on how fast the model happens to run.
 *
 * CHARGE BEFORE GRANTING, RELEASE EXACTLY ONCE
 * Like dbus-broker, a resource is charged before it is granted: the
 * max_tokens reservation before the generator allocates the sequence, the
 * prompt tokens as soon as the generator reports the count and before the
 * sequence joins the run list. Each sequence remembers what it was charged
 * (seq.charged_*); the release subtracts exactly that and zeroes it, so it
 * is idempotent and can be called on every path that ends a request: the
 * DONE of a normal finish, of a cancel, of an error or of a shutdown
 * (seq_finish), and the teardown of a session whose client hung up or was
 * killed (seq_free). A finished request releases its tokens when its DONE
 * is queued, not when the client reads it: it no longer uses the generator;
 * it still counts in `inflight` until the DONE is delivered, which bounds
 * what a client that stops reading can leave queued. A counter that would
 * go below zero is a daemon bug: it is logged and clamped, never trusted.
 *
 * At exit every session has been torn down through the same paths, so every
 * counter must be back at zero; quota_check_released() logs any that is not
 * and residentd then exits non-zero, which the integration tests check
 * after SIGKILLed clients, cancels and the soak. SIGHUP logs every uid's
 * counters next to their limits (quota_log()), which is how the tests read
 * them while the daemon runs.
 *
 * OVER A LIMIT: FAIL, DO NOT QUEUE
 * A request over a per-uid limit gets an immediate DONE with finish
 * "error": -EBUSY when it would fit once the uid's other requests finish
 * (the message names the limit key, the amount in use and how to raise
 * it), -E2BIG when the request alone exceeds the limit and can never run.
 * It is not parked in a per-uid wait queue, because (1) the scheduler
 * already queues every admitted request for the batch, so what a uid over
 * its quota asks for is more than its configured share, and making it wait
 * hides that; (2) a wait queue holds memory and a request id per waiting
 * request on behalf of the very uid that is over quota, which would need a
 * quota of its own; (3) a client that waits for its first stream before
 * cancelling others (a chat UI, an agent) could wait forever behind itself
 * with no signal; and (4) it matches max_inflight_per_uid and the session
 * limits, which refuse. -EBUSY is a retry-later signal (the OpenAI gateway
 * turns it into HTTP 429), so a client that wants queueing gets it by
 * retrying after one of its DONEs.
 *
 * Limits change on SIGHUP for requests admitted afterwards; charges already
 * made are kept and released as charged, so lowering a limit never
 * underflows a counter.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon/daemon.h"

struct uid_acct *quota_acct_get(struct daemon *d, uid_t uid)
{
    for (struct uid_acct *a = d->accts; a; a = a->next)
        if (a->uid == uid)
            return a;
    struct uid_acct *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->uid = uid;
    a->next = d->accts;
    d->accts = a;
    return a;
}

/* The common shape of the two token checks: `used` already charged to the
 * uid, `want` more for this request, `limit` from the key `key`. */
static int check_total(uid_t uid, uint64_t used, uint32_t want, uint32_t limit, const char *key,
                       const char *what, char *msg, size_t len)
{
    if (want > limit) {
        snprintf(msg, len, "%s %u alone exceeds the per-uid limit %s = %u (ask for fewer, or raise "
                 "%s in residentd.conf or with -o %s=N)", what, want, key, limit, key, key);
        return -E2BIG;
    }
    if (used + want > limit) {
        snprintf(msg, len, "uid %u has %llu %s in flight and this request adds %u; limit %s = %u "
                 "(retry after a request finishes, or raise %s in residentd.conf)", (unsigned)uid,
                 (unsigned long long)used, what, want, key, limit, key);
        return -EBUSY;
    }
    return 0;
}

int quota_new_tokens_check(const struct daemon *d, const struct uid_acct *a, uint32_t want, char *msg,
                           size_t len)
{
    if (!a)
        return 0;
    return check_total(a->uid, a->new_tokens, want, d->cfg.max_new_tokens_per_uid, "max_new_tokens_per_uid",
                       "max_tokens", msg, len);
}

int quota_prompt_tokens_check(const struct daemon *d, const struct uid_acct *a, uint32_t want, char *msg,
                              size_t len)
{
    if (!a)
        return 0;
    return check_total(a->uid, a->prompt_tokens, want, d->cfg.max_prompt_tokens_per_uid,
                       "max_prompt_tokens_per_uid", "prompt tokens", msg, len);
}

void quota_tokens_charge(struct uid_acct *a, uint32_t prompt_tokens, uint32_t new_tokens)
{
    if (!a)
        return;
    a->prompt_tokens += prompt_tokens;
    a->new_tokens += new_tokens;
}

void quota_tokens_release(struct uid_acct *a, uint32_t prompt_tokens, uint32_t new_tokens)
{
    if (!a)
        return;
    if (a->prompt_tokens < prompt_tokens || a->new_tokens < new_tokens) {
        daemon_log("BUG: uid %u token accounting would go negative (prompt %llu - %u, new %llu - %u); "
                   "clamped", (unsigned)a->uid, (unsigned long long)a->prompt_tokens, prompt_tokens,
                   (unsigned long long)a->new_tokens, new_tokens);
        a->underflows++;
    }
    a->prompt_tokens -= a->prompt_tokens < prompt_tokens ? a->prompt_tokens : prompt_tokens;
    a->new_tokens -= a->new_tokens < new_tokens ? a->new_tokens : new_tokens;
}

void quota_config_warn(const struct daemon_config *c)
{
    /* Not an error (each key is valid alone), but a request between the
     * two can never run: say so where the administrator looks. */
    if (c->max_new_tokens > c->max_new_tokens_per_uid)
        daemon_log("note: max_new_tokens (%u) > max_new_tokens_per_uid (%u): requests for more than %u new tokens "
                   "(and requests that leave max_tokens at 0) will be refused; raise max_new_tokens_per_uid",
                   c->max_new_tokens, c->max_new_tokens_per_uid, c->max_new_tokens_per_uid);
    if (c->max_prompt_tokens > c->max_prompt_tokens_per_uid)
        daemon_log("note: max_prompt_tokens (%u) > max_prompt_tokens_per_uid (%u): prompts longer than %u tokens "
                   "will be refused; raise max_prompt_tokens_per_uid", c->max_prompt_tokens,
                   c->max_prompt_tokens_per_uid, c->max_prompt_tokens_per_uid);
}

void quota_log(const struct daemon *d, const char *prefix)
{
    const struct daemon_config *c = &d->cfg;
    unsigned n = 0;
    for (const struct uid_acct *a = d->accts; a; a = a->next, n++)
        daemon_log("%s: uid %u: sessions %u/%u inflight %u/%u prompt_tokens %llu/%u new_tokens %llu/%u "
                   "fds %u/%u ring_bytes %llu/%llu", prefix, (unsigned)a->uid, a->sessions,
                   c->max_sessions_per_uid, a->inflight, c->max_inflight_per_uid,
                   (unsigned long long)a->prompt_tokens, c->max_prompt_tokens_per_uid,
                   (unsigned long long)a->new_tokens, c->max_new_tokens_per_uid, a->fds, c->max_fds_per_uid,
                   (unsigned long long)a->ring_bytes, (unsigned long long)c->max_ring_bytes_per_uid);
    daemon_log("%s: accounting of %u uids listed", prefix, n);
}

int quota_check_released(const struct daemon *d)
{
    int bad = 0;
    for (const struct uid_acct *a = d->accts; a; a = a->next) {
        if (a->sessions || a->inflight || a->prompt_tokens || a->new_tokens || a->fds || a->ring_bytes ||
            a->underflows) {
            daemon_log("BUG: uid %u still charged after every session ended: sessions %u inflight %u "
                       "prompt_tokens %llu new_tokens %llu fds %u ring_bytes %llu underflows %u",
                       (unsigned)a->uid, a->sessions, a->inflight, (unsigned long long)a->prompt_tokens,
                       (unsigned long long)a->new_tokens, a->fds, (unsigned long long)a->ring_bytes,
                       a->underflows);
            bad++;
        }
    }
    return bad;
}

void quota_fini(struct daemon *d)
{
    while (d->accts) {
        struct uid_acct *a = d->accts;
        d->accts = a->next;
        free(a);
    }
}
