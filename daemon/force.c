/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Forced tool calls (OpenAI tool_choice "required" and named) by
 * constrained decoding.
 *
 * WHAT IS FORCED, AND WHY ONLY THAT. Qwen3.6 calls a tool by writing the
 * qwen3_coder form `<tool_call>\n<function=NAME>\n<parameter=...` after its
 * reasoning (spec text.md §3-4). Everything that makes the call a call of
 * NAME is in its first few tokens: once `<function=NAME>\n` stands, the
 * model writes the parameters of that function (the tool list in the
 * system prompt tells it which) and the output parser turns whatever it
 * writes into a tool_calls delta of that name. So the constraint covers
 * exactly that opening and then lets go: the arguments, `</function>`,
 * further calls and the end of the turn are the model's. A grammar over the
 * arguments' JSON schema would be a different feature (structured output);
 * qwen3_coder values are raw text, not JSON, so there is no JSON to
 * constrain there anyway.
 *
 * WHEN. The reasoning is the model's too: the constraint waits while the
 * model is inside `<think>` and starts when it is out. The Qwen3.6
 * template's generation prompt is `<|im_start|>assistant\n<think>\n`
 * (reasoning open) or, with enable_thinking=false,
 * `...<think>\n\n</think>\n\n` (closed). Which one a prompt left is read
 * from its ids (the last of `<think>` / `</think>`), not from the
 * template kwargs, so a client that renders its own history is judged by
 * what the model actually sees. Closed: the opening is forced from the
 * first output token on. Open: the constraint waits for the model's
 * `</think>` token and then forces `\n\n` + the opening, because the
 * template renders exactly `</think>\n\n<tool_call>` when the turn comes
 * back as history: the forced ids are then the ids the next request's
 * prompt holds, and the prefix cache's tool-call snapshot (gen-engine.c)
 * matches them. A model that writes `<tool_call>` while still reasoning
 * (the Qwen3.5 habit the qwen3 reasoning parser also treats as the end of
 * the reasoning) is taken at its word: the constraint starts right after
 * that token, without the `\n\n`. A model that never closes its reasoning
 * within max_tokens never gets to the call (finish_reason "length"), as
 * with vLLM.
 *
 * HOW. The `\n\n` lead is a fixed id list. The opening of each allowed
 * name is tokenized on its own, canonically
 * (`<tool_call>` is an added token, so the text splits there exactly as it
 * does inside a whole prompt; the opening ends with `>\n` before a `<`, a
 * pre-tokenizer boundary, so its ids are the ones the rendered history
 * gets). The id sequences go into a trie; while the constraint is active
 * every logits row the sequence samples from keeps only the ids of the
 * current node's children and the rest become -inf (force_mask). The
 * sampler then draws as always, with the request's temperature, top-k,
 * top-p and seed, among the allowed ids: for a named choice there is one,
 * for "required" the model's own preference picks among the tool names
 * where they diverge. Reaching a leaf ends the constraint. No id sequence
 * is a proper prefix of another (the texts end in `>\n` and a name holds no
 * `>`), so a leaf is never an inner node; duplicate names share a leaf.
 *
 * The forced tokens are sampled tokens in every other respect: the
 * generator feeds them to the model at the next decode (KV cache and GDN
 * state stay right), counts them as completion tokens, sends them as
 * ordinary token events (the output parser sees `<tool_call>` and
 * `<function=NAME>` and streams the call) and records them in the
 * sampler's history (penalties) and the prefix cache's output ids. Masking
 * touches only this sequence's row of the batch's logits, so the other
 * sequences of a batched decode are unaffected.
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/force.h"
#include "engine/error.h"
#include "engine/text/tokenizer.h"

/* Room for the worst case: FORCE_TOOLS_MAX names of FORCE_NAME_MAX bytes at
 * one token per byte, plus `>\n` and the shared `<tool_call>\n<function=`
 * (1024 * 66 + a few < 2^17); typical choices need tens of nodes. */
#define FORCE_NODES_MAX 131072

struct force_node {
    int32_t  tok;           /* id that leads here (-1 at the root)   */
    int32_t  parent;
    uint32_t kid_off;       /* children: kids[kid_off .. +n_kids), by id */
    uint32_t n_kids;
    uint32_t first, next;   /* while building: first child, next sibling (0 = none) */
    int      leaf;          /* an opening ends here                  */
};

struct force {
    struct force_node *nodes;
    uint32_t          *kids;
    uint32_t           n_nodes, cap_nodes;
    int32_t            think_end;   /* `</think>` id, -1 = none     */
    int32_t            tool_call;   /* `<tool_call>` id              */
    int32_t            lead[8];     /* ids of "\n\n" after </think> */
    uint32_t           n_lead, k_lead; /* forced lead ids / taken    */
    enum force_phase   phase;
    uint32_t           cur;         /* node reached (FORCE_ACTIVE)   */
};

void force_choice_clear(struct force_choice *c)
{
    for (size_t i = 0; c && i < c->n_names; i++)
        free(c->names[i]);
    if (c) {
        free(c->names);
        memset(c, 0, sizeof(*c));
    }
}

/* A name the qwen3_coder parser keeps (spec text.md §4): not empty, no
 * whitespace or {}<>"', no NUL, at most FORCE_NAME_MAX bytes. */
static int name_ok(const char *s, size_t len)
{
    if (len == 0 || len > FORCE_NAME_MAX || strlen(s) != len)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (strchr(" \t\n\r\v\f{}<>\"'", s[i]))
            return 0;
    return 1;
}

static struct json_object *get(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

/* tools[i].function.name, or NULL with err filled. */
static const char *tool_name(struct json_object *tools, size_t i, char *err, size_t errlen)
{
    struct json_object *name = get(get(json_object_array_get_idx(tools, i), "function"), "name");
    if (!name || !json_object_is_type(name, json_type_string)) {
        snprintf(err, errlen, "tools[%zu].function.name must be a string (tool_choice needs every tool's name)", i);
        return NULL;
    }
    const char *s = json_object_get_string(name);
    if (!name_ok(s, (size_t)json_object_get_string_len(name))) {
        snprintf(err, errlen, "tools[%zu].function.name \"%.40s\" cannot be forced by tool_choice: it must be 1-%u "
                 "bytes without whitespace or any of {}<>\"'", i, s, FORCE_NAME_MAX);
        return NULL;
    }
    return s;
}

static int add_name(struct force_choice *c, const char *s)
{
    char *dup = strdup(s);
    if (!dup)
        return -ENOMEM;
    c->names[c->n_names++] = dup;
    return 0;
}

int force_choice_from_request(struct json_object *req, struct force_choice *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    struct json_object *tc = get(req, "tool_choice");
    const char *want = NULL;
    if (!tc)
        return 0;
    if (json_object_is_type(tc, json_type_string)) {
        const char *s = json_object_get_string(tc);
        if (strcmp(s, "auto") == 0 || strcmp(s, "none") == 0)
            return 0;
        if (strcmp(s, "required") != 0) {
            snprintf(err, errlen, "tool_choice \"%.40s\" is unknown: use \"auto\", \"none\", \"required\" or "
                     "{\"type\":\"function\",\"function\":{\"name\":...}}", s);
            return -EINVAL;
        }
        out->kind = FORCE_REQUIRED;
    } else if (json_object_is_type(tc, json_type_object)) {
        struct json_object *type = get(tc, "type"), *name = get(get(tc, "function"), "name");
        if (!type || !json_object_is_type(type, json_type_string) ||
            strcmp(json_object_get_string(type), "function") != 0) {
            snprintf(err, errlen, "tool_choice.type must be \"function\"");
            return -EINVAL;
        }
        if (!name || !json_object_is_type(name, json_type_string)) {
            snprintf(err, errlen, "tool_choice.function.name must be a string naming one of the request's tools");
            return -EINVAL;
        }
        want = json_object_get_string(name);
        out->kind = FORCE_NAMED;
    } else {
        snprintf(err, errlen, "tool_choice must be a string or an object");
        return -EINVAL;
    }

    struct json_object *tools = get(req, "tools");
    size_t n = tools && json_object_is_type(tools, json_type_array) ? json_object_array_length(tools) : 0;
    if (n == 0) {
        snprintf(err, errlen, "tool_choice %s needs a non-empty \"tools\" array", want ? "naming a function" : "\"required\"");
        return -EINVAL;
    }
    if (n > FORCE_TOOLS_MAX) {
        snprintf(err, errlen, "tool_choice %s: \"tools\" has %zu entries, more than the limit of %u",
                 want ? "naming a function" : "\"required\"", n, FORCE_TOOLS_MAX);
        return -E2BIG;
    }
    out->names = calloc(want ? 1 : n, sizeof(char *));
    if (!out->names)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (want) {
            struct json_object *nm = get(get(json_object_array_get_idx(tools, i), "function"), "name");
            if (!nm || !json_object_is_type(nm, json_type_string) || strcmp(json_object_get_string(nm), want) != 0)
                continue;
        }
        const char *s = tool_name(tools, i, err, errlen);
        if (!s) {
            force_choice_clear(out);
            return -EINVAL;
        }
        if (add_name(out, s) < 0) {
            force_choice_clear(out);
            return -ENOMEM;
        }
        if (want)
            break;
    }
    if (out->n_names == 0) {
        snprintf(err, errlen, "tool_choice.function.name \"%.64s\" is not among the request's tools; name one of "
                 "\"tools\" or add it there", want);
        force_choice_clear(out);
        return -EINVAL;
    }
    return 0;
}

/* ---- the trie ---- */

static int node_add(struct force *f, int32_t tok, uint32_t parent, uint32_t *out)
{
    if (f->n_nodes == f->cap_nodes) {
        if (f->cap_nodes >= FORCE_NODES_MAX)
            return -E2BIG;
        uint32_t nc = f->cap_nodes ? f->cap_nodes * 2 : 64;
        struct force_node *nn = realloc(f->nodes, nc * sizeof(*nn));
        if (!nn)
            return -ENOMEM;
        f->nodes = nn;
        f->cap_nodes = nc;
    }
    f->nodes[f->n_nodes] = (struct force_node){ .tok = tok, .parent = (int32_t)parent };
    if (f->n_nodes > 0) {
        f->nodes[f->n_nodes].next = f->nodes[parent].first;
        f->nodes[parent].first = f->n_nodes;
    }
    *out = f->n_nodes++;
    return 0;
}

static int insert(struct force *f, const int32_t *ids, size_t n)
{
    uint32_t cur = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t next = 0;
        /* Sibling lists: the fan-out is at most the number of names. */
        for (uint32_t j = f->nodes[cur].first; j && !next; j = f->nodes[j].next)
            if (f->nodes[j].tok == ids[k])
                next = j;
        if (!next) {
            int r = node_add(f, ids[k], cur, &next);
            if (r < 0)
                return r;
        }
        cur = next;
    }
    f->nodes[cur].leaf = 1;
    return 0;
}

struct kid_key {
    int32_t  parent, tok;
    uint32_t idx;
};

static int kid_cmp(const void *a, const void *b)
{
    const struct kid_key *x = a, *y = b;
    if (x->parent != y->parent)
        return x->parent < y->parent ? -1 : 1;
    return (x->tok > y->tok) - (x->tok < y->tok);
}

/* Children lists: every non-root node once, grouped by parent, by id. */
static int index_kids(struct force *f)
{
    uint32_t n = f->n_nodes - 1;
    struct kid_key *keys = malloc((n ? n : 1) * sizeof(*keys));
    f->kids = malloc((n ? n : 1) * sizeof(uint32_t));
    if (!keys || !f->kids) {
        free(keys);
        return -ENOMEM;
    }
    for (uint32_t j = 1; j < f->n_nodes; j++)
        keys[j - 1] = (struct kid_key){ f->nodes[j].parent, f->nodes[j].tok, j };
    qsort(keys, n, sizeof(*keys), kid_cmp);
    for (uint32_t k = 0; k < n; k++) {
        f->kids[k] = keys[k].idx;
        struct force_node *p = &f->nodes[keys[k].parent];
        if (p->n_kids == 0)
            p->kid_off = k;
        p->n_kids++;
    }
    free(keys);
    return 0;
}

void force_free(struct force *f)
{
    if (!f)
        return;
    free(f->nodes);
    free(f->kids);
    free(f);
}

int force_new(const struct tokenizer *tok, const struct force_choice *c, const int32_t *prompt, size_t n_prompt,
              struct force **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!c || c->kind == FORCE_NONE || c->n_names == 0) {
        snprintf(err, errlen, "tool_choice: nothing to force");
        return -EINVAL;
    }
    int32_t tool_call = tokenizer_token_to_id(tok, "<tool_call>");
    int32_t think = tokenizer_token_to_id(tok, "<think>");
    int32_t think_end = tokenizer_token_to_id(tok, "</think>");
    if (tool_call < 0) {
        snprintf(err, errlen, "tool_choice: the tokenizer has no <tool_call> token, so calls cannot be forced");
        return -EINVAL;
    }
    struct force *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->think_end = think_end;
    f->tool_call = tool_call;
    /* Reasoning left open by the prompt? The last think tag decides. */
    int open = 0;
    for (size_t i = n_prompt; i-- > 0;) {
        if (prompt[i] == think_end && think_end >= 0)
            break;
        if (prompt[i] == think && think >= 0) {
            open = think_end >= 0;
            break;
        }
    }
    f->phase = open ? FORCE_WAITING : FORCE_ACTIVE;
    int r = 0;
    if (open) {
        int32_t *ids = NULL;
        size_t n = 0;
        struct engine_error e = { 0 };
        r = tokenizer_encode(tok, "\n\n", 2, &ids, &n, &e);
        if (r == 0 && (n == 0 || n > sizeof(f->lead) / sizeof(f->lead[0])))
            r = -EINVAL;
        if (r == 0)
            memcpy(f->lead, ids, n * sizeof(int32_t));
        f->n_lead = r == 0 ? (uint32_t)n : 0;
        free(ids);
        if (r < 0)
            snprintf(err, errlen, "tool_choice: cannot tokenize the blank line after </think>");
    }
    uint32_t root;
    if (r == 0)
        r = node_add(f, -1, 0, &root);
    for (size_t i = 0; r == 0 && i < c->n_names; i++) {
        size_t cap = strlen(c->names[i]) + 32;
        char *text = malloc(cap);
        if (!text) {
            r = -ENOMEM;
            break;
        }
        int len = snprintf(text, cap, "<tool_call>\n<function=%s>\n", c->names[i]);
        int32_t *ids = NULL;
        size_t n = 0;
        struct engine_error e = { 0 };
        r = tokenizer_encode(tok, text, (size_t)len, &ids, &n, &e);
        free(text);
        if (r < 0) {
            snprintf(err, errlen, "tool_choice: cannot tokenize the call opening of \"%.64s\": %s", c->names[i],
                     e.msg[0] ? e.msg : strerror(-r));
        } else if (n == 0 || ids[0] != tool_call) {
            snprintf(err, errlen, "tool_choice: the call opening of \"%.64s\" does not start with <tool_call>",
                     c->names[i]);
            r = -EINVAL;
        } else {
            r = insert(f, ids, n);
            if (r == -E2BIG)
                snprintf(err, errlen, "tool_choice: the tool names need more than %d trie nodes; send fewer tools",
                         FORCE_NODES_MAX);
        }
        free(ids);
    }
    if (r == 0)
        r = index_kids(f);
    if (r < 0) {
        if (r == -ENOMEM)
            snprintf(err, errlen, "tool_choice: out of memory for the forced call");
        force_free(f);
        return r;
    }
    *out = f;
    return 0;
}

int force_mask(const struct force *f, float *logits, int32_t n_vocab)
{
    if (!f || f->phase != FORCE_ACTIVE)
        return 0;
    const struct force_node *nd = &f->nodes[f->cur];
    const uint32_t *kid = f->kids + nd->kid_off;
    uint32_t j = 0, n_kids = nd->n_kids;
    int32_t lead = f->k_lead < f->n_lead ? f->lead[f->k_lead] : -1;
    if (lead >= 0)
        n_kids = 0;     /* the lead first, then the trie */
    /* One pass: the children are sorted by id. */
    for (int32_t i = 0; i < n_vocab; i++) {
        while (j < n_kids && f->nodes[kid[j]].tok < i)
            j++;
        if (i == lead || (j < n_kids && f->nodes[kid[j]].tok == i)) {
            if (isnan(logits[i]))
                logits[i] = 0.0f;
            continue;
        }
        logits[i] = -INFINITY;
    }
    return 1;
}

void force_accept(struct force *f, int32_t id)
{
    if (!f)
        return;
    if (f->phase == FORCE_WAITING) {
        if (id == f->think_end) {
            f->phase = FORCE_ACTIVE;
            f->cur = 0;
            f->k_lead = 0;
            return;
        }
        if (id != f->tool_call)
            return;
        /* A call opened inside the reasoning: no lead; this id is the
         * trie's first, so the walk below takes it and forces the rest. */
        f->phase = FORCE_ACTIVE;
        f->cur = 0;
        f->k_lead = f->n_lead;
    }
    if (f->phase != FORCE_ACTIVE)
        return;
    if (f->k_lead < f->n_lead) {
        if (id == f->lead[f->k_lead])
            f->k_lead++;
        else
            f->phase = FORCE_DONE;  /* as below: an id the row did not allow */
        return;
    }
    const struct force_node *nd = &f->nodes[f->cur];
    for (uint32_t j = 0; j < nd->n_kids; j++) {
        uint32_t k = f->kids[nd->kid_off + j];
        if (f->nodes[k].tok == id) {
            f->cur = k;
            if (f->nodes[k].leaf)
                f->phase = FORCE_DONE;
            return;
        }
    }
    /* Only an id outside the row (a row narrower than the tokenizer) gets
     * here: give up forcing rather than force a broken call. */
    f->phase = FORCE_DONE;
}

enum force_phase force_phase(const struct force *f)
{
    return f ? f->phase : FORCE_DONE;
}
