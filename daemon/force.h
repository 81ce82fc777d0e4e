/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Forced tool calls: OpenAI tool_choice "required" and named
 * ({"type":"function","function":{"name":...}}) for the engine generator,
 * by constrained decoding. The rules are in the essay at the top of
 * daemon/force.c and in docs/openai.md ("tool_choice").
 *
 * Two halves:
 *   - force_choice_*: the request side. The scheduler reads "tool_choice"
 *     of a CHAT payload once (force_choice_from_request), refuses what is
 *     malformed or names no tool, and hands the result to the generator in
 *     struct gen_prompt.
 *   - force_*: one sequence's constraint. The generator builds it from the
 *     choice and the prompt ids, narrows every logits row it samples from
 *     (force_mask) and tells it every token it emits (force_accept).
 *
 * Errors: 0 or -errno; messages to the caller's buffer name the field.
 */
#ifndef RESIDENT_DAEMON_FORCE_H
#define RESIDENT_DAEMON_FORCE_H

#include <stddef.h>
#include <stdint.h>

struct json_object;
struct tokenizer;

enum force_kind {
    FORCE_NONE     = 0,     /* "auto", "none" or absent: free generation */
    FORCE_REQUIRED = 1,     /* some tool of "tools" must be called      */
    FORCE_NAMED    = 2,     /* exactly the named tool must be called    */
};

#define FORCE_NAME_MAX  64u     /* bytes of one forced name (OpenAI: 64) */
#define FORCE_TOOLS_MAX 1024u   /* tools a "required" choice picks from */

/* A request's tool choice: the names the call may open with. */
struct force_choice {
    enum force_kind kind;
    char          **names;      /* NAMED: one; REQUIRED: every tool's  */
    size_t          n_names;
};

/**
 * force_choice_from_request() - read "tool_choice" of a CHAT payload
 * @req: the parsed payload object ({"messages", "tools", "tool_choice", ...})
 * @out: filled; force_choice_clear() it either way
 * @err: message on failure, naming the field and the fix
 * @errlen: its size
 *
 * "auto", "none" and no tool_choice give FORCE_NONE. "required" needs a
 * non-empty "tools" array; a named choice must name one of its functions.
 * Every name a choice may force must be 1..FORCE_NAME_MAX bytes without
 * whitespace or any of {}<>"' (the qwen3_coder parser drops such calls).
 *
 * Return: 0; -EINVAL (err says why); -ENOMEM.
 */
int force_choice_from_request(struct json_object *req, struct force_choice *out, char *err, size_t errlen);

/**
 * force_choice_clear() - free the names of a choice (safe on a zeroed one)
 * @c: choice
 */
void force_choice_clear(struct force_choice *c);

struct force;

enum force_phase {
    FORCE_WAITING = 0,      /* reasoning still open: waits for </think>  */
    FORCE_ACTIVE  = 1,      /* the call's opening is being forced        */
    FORCE_DONE    = 2,      /* opening complete: generation is free      */
};

/**
 * force_new() - one sequence's constraint
 * @tok: the generator's tokenizer (must outlive the constraint)
 * @c: the request's choice (FORCE_REQUIRED or FORCE_NAMED)
 * @prompt: the rendered prompt's ids
 * @n_prompt: their count
 * @out: the constraint
 * @err: message on failure
 * @errlen: its size
 *
 * Return: 0; -EINVAL when the tokenizer lacks the tokens the format needs
 * (`<tool_call>`, `</think>`) or a name tokenizes to more than the limits
 * allow; -ENOMEM.
 */
int force_new(const struct tokenizer *tok, const struct force_choice *c, const int32_t *prompt, size_t n_prompt,
              struct force **out, char *err, size_t errlen);

/**
 * force_free() - free a constraint (NULL is fine)
 * @f: constraint
 */
void force_free(struct force *f);

/**
 * force_mask() - narrow one logits row to the tokens the constraint allows
 * @f: constraint (NULL = no constraint)
 * @logits: row of @n_vocab logits, changed in place
 * @n_vocab: row width
 *
 * While the opening is being forced every other id becomes -inf, so the
 * sampler's own temperature, top-k/top-p and seed choose among the allowed
 * ids (one id: that id). An allowed logit that is NaN becomes 0, so a
 * broken row still yields an allowed id.
 *
 * Return: 1 when the row was narrowed, 0 when generation is free.
 */
int force_mask(const struct force *f, float *logits, int32_t n_vocab);

/**
 * force_accept() - advance the constraint past an emitted token
 * @f: constraint (NULL is fine)
 * @id: the token the sequence emitted
 */
void force_accept(struct force *f, int32_t id);

/**
 * force_phase() - where the constraint is (tests, logs)
 * @f: constraint
 *
 * Return: enum force_phase.
 */
enum force_phase force_phase(const struct force *f);

#endif
