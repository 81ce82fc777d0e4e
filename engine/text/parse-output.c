/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Incremental qwen3 reasoning split + qwen3_coder tool-call parser.
 *
 * Two stages, each a small state machine over a buffer of text it has not
 * yet been able to decide about:
 *
 *   reasoning stage   START -> THINK -> CONTENT
 *     START   drops a leading `<think>` (with the whitespace before it),
 *             the form older Qwen templates produce; the Qwen3.6 prompt
 *             opens the think block itself.
 *     THINK   everything is reasoning until `</think>` (dropped; what
 *             follows is content) or a `<tool_call>` followed, after
 *             whitespace, by `<function` + (whitespace or '=') — the
 *             Qwen3.5 habit of calling a tool from inside the think block.
 *             Then content starts at `<tool_call>`.
 *     CONTENT everything goes to the tool stage.
 *   With thinking disabled the parser starts in CONTENT.
 *
 *   tool stage        TEXT, OPEN, NAME, BODY, PNAME, VALUE, AFTER_FN, BETWEEN
 *     TEXT     content until `<tool_call>` or a bare `<function=`.
 *     OPEN     after `<tool_call>`: whitespace, then `<function=` or the
 *              tag was just text (it goes out as content).
 *     NAME     up to '>'; an empty name or one holding {}<>"' or
 *              whitespace is not a call: the text goes out as content.
 *     BODY     between parameters: `<parameter=` at a line start,
 *              `</function>` or `</tool_call>`; other text is ignored.
 *     VALUE    a value ends at a structural `</parameter>` — one followed,
 *              after whitespace, by `<parameter=` (a schema name when the
 *              tool has a schema), `</function>`, `</tool_call>` or the end
 *              of the output. Literal `<parameter=` … `</parameter>` pairs
 *              inside a value nest. A missing `</parameter>` is tolerated:
 *              a line-start `<parameter=NAME>` with a NAME not used yet in
 *              this call (and in the schema, if any) ends the value, and so
 *              does `</function>` followed by `</tool_call>` / the end, or
 *              `</tool_call>` followed by `<tool_call>` / the end.
 *     AFTER_FN / BETWEEN swallow whitespace around `</tool_call>`.
 *
 * Why not vLLM's algorithm verbatim: its non-streaming parser looks at the
 * whole text (a `</tool_call>` is structural only if what follows is
 * another call or the end; a `</think>` anywhere wins over an earlier
 * implicit end) and its streaming parser differs from it in several
 * places (trailing text after the last call is dropped by one and kept by
 * the other). Here every decision waits until the text seen so far
 * settles it, so streaming and whole-text results are the same by
 * construction. Differences from vLLM's whole-text results, all on unusual
 * output: text after the last tool call is kept as content; a `</think>`
 * after a confirmed implicit end is content; a `<think>` after reasoning
 * text is kept as text; a repeated parameter name keeps its first value
 * (a dict would keep the position of the first and the value of the
 * last); empty reasoning or content is reported as null.
 *
 * Each value is emitted only when complete, converted by the schema
 * (parse-convert.c), as `"name": value` — the concatenated argument
 * fragments are exactly json.dumps(arguments, ensure_ascii=False).
 */
#include "engine/text/parse-output.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <json-c/json.h>

#include "engine/error.h"
#include "engine/text/json-out.h"
#include "engine/text/parse-value.h"

enum rstate { R_START, R_THINK, R_CONTENT };
enum tstate { T_TEXT, T_OPEN, T_NAME, T_BODY, T_PNAME, T_VALUE, T_AFTER_FN, T_BETWEEN };

struct seen_name {
    char  *s;
    size_t n;
};

struct chat_parser {
    struct chat_parser_opts opts;
    bool finished;
    int  rc;                 /* sticky failure (callback or ENOMEM) */

    chat_delta_fn emit;
    void *user;

    enum rstate rstate;
    struct json_out rbuf;    /* undecided reasoning-stage text */

    enum tstate tstate;
    struct json_out tbuf;    /* undecided tool-stage text */
    size_t name_start;       /* T_NAME: offset of the name in tbuf */
    size_t scan;             /* T_VALUE: resume offset */
    int    depth;            /* T_VALUE: literal <parameter= nesting */
    bool   line_start;       /* T_BODY: tbuf[0] begins a line */

    size_t n_calls;          /* calls started */
    char   call_id[CHAT_TOOL_ID_LEN + 1];
    char  *fname;            /* current function name */
    size_t fname_len;
    char  *pname;            /* current parameter name */
    size_t pname_len;
    size_t n_params;         /* parameters emitted in this call */
    struct seen_name *seen;
    size_t n_seen, cap_seen;
};

/* ---- helpers ------------------------------------------------------------- */

static void buf_consume(struct json_out *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

/* 1: `tag` at s[i]; 0: not; -1: s ends inside a prefix of tag. */
static int tag_at(const char *s, size_t n, size_t i, const char *tag)
{
    size_t tl = strlen(tag);
    size_t avail = n - i;
    if (avail >= tl)
        return memcmp(s + i, tag, tl) == 0 ? 1 : 0;
    return memcmp(s + i, tag, avail) == 0 ? -1 : 0;
}

/* Skip Python whitespace from i. Returns false when the text ends in an
 * incomplete UTF-8 sequence (the answer depends on bytes not seen yet). */
static bool skip_ws(const char *s, size_t n, size_t *i)
{
    while (*i < n) {
        unsigned char c = (unsigned char)s[*i];
        size_t need = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (c >= 0x80 && c < 0xC0)
            return true;  /* stray continuation byte: not whitespace */
        if (n - *i < need)
            return false;
        size_t j = *i;
        if (!parse_utf8_valid(s + j, need) || !parse_py_isspace(parse_utf8_next(s, n, &j)))
            return true;
        *i = j;
    }
    return true;
}

/* Length of s without a trailing incomplete UTF-8 sequence. */
static size_t utf8_complete(const char *s, size_t n)
{
    size_t k = 0;
    while (k < n && k < 4 && ((unsigned char)s[n - 1 - k] & 0xC0) == 0x80)
        k++;
    if (k >= n)
        return n;
    unsigned char lead = (unsigned char)s[n - 1 - k];
    size_t need = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (lead >= 0xC0 && k + 1 < need)
        return n - k - 1;
    return n;
}

static void out_delta(struct chat_parser *p, enum chat_delta_type type, const char *s, size_t n)
{
    if (p->rc < 0 || (n == 0 && type != CHAT_DELTA_TOOL_NAME))
        return;
    struct chat_delta d = {
        .type = type, .text = s, .len = n,
        .tool_index = p->n_calls ? p->n_calls - 1 : 0,
        .tool_id = type == CHAT_DELTA_TOOL_NAME ? p->call_id : NULL,
    };
    int rc = p->emit ? p->emit(p->user, &d) : 0;
    if (rc < 0)
        p->rc = rc;
}

static void out_str(struct chat_parser *p, enum chat_delta_type type, const char *s)
{
    out_delta(p, type, s, strlen(s));
}

static void default_id(void *user, size_t index, char hex[24])
{
    (void)user;
    (void)index;
    static const char digits[] = "0123456789abcdef";
    unsigned char rnd[12];
    size_t got = 0;
    while (got < sizeof(rnd)) {
        ssize_t r = getrandom(rnd + got, sizeof(rnd) - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    for (size_t i = got; i < sizeof(rnd); i++)
        rnd[i] = (unsigned char)(index * 131 + i * 17);   /* getrandom cannot fail on Linux >= 3.17 */
    for (size_t i = 0; i < 12; i++) {
        hex[2 * i] = digits[rnd[i] >> 4];
        hex[2 * i + 1] = digits[rnd[i] & 15];
    }
}

/* ---- tool stage ---------------------------------------------------------- */

static void call_start(struct chat_parser *p, const char *name, size_t n)
{
    char hex[24];
    p->fname = malloc(n + 1);
    if (!p->fname) {
        p->rc = -ENOMEM;
        return;
    }
    memcpy(p->fname, name, n);
    p->fname[n] = '\0';
    p->fname_len = n;
    p->n_params = 0;
    p->n_seen = 0;
    (p->opts.id_fn ? p->opts.id_fn : default_id)(p->opts.id_user, p->n_calls, hex);
    memcpy(p->call_id, "call_", 5);
    memcpy(p->call_id + 5, hex, 24);
    p->call_id[CHAT_TOOL_ID_LEN] = '\0';
    p->n_calls++;
    out_delta(p, CHAT_DELTA_TOOL_NAME, p->fname, n);
    out_str(p, CHAT_DELTA_TOOL_ARGS, "{");
}

static void call_end(struct chat_parser *p)
{
    out_str(p, CHAT_DELTA_TOOL_ARGS, "}");
    free(p->fname);
    p->fname = NULL;
    for (size_t i = 0; i < p->n_seen; i++)
        free(p->seen[i].s);
    p->n_seen = 0;
}

static bool name_seen(const struct chat_parser *p, const char *s, size_t n)
{
    for (size_t i = 0; i < p->n_seen; i++)
        if (p->seen[i].n == n && memcmp(p->seen[i].s, s, n) == 0)
            return true;
    return false;
}

/* A line-start <parameter=NAME> inside a value that may end it (missing
 * </parameter>): NAME unused in this call, not the current one, and in the
 * schema when the tool has one. */
static bool implicit_end_name(const struct chat_parser *p, const char *s, size_t n)
{
    if ((n == p->pname_len && memcmp(s, p->pname, n) == 0) || name_seen(p, s, n))
        return false;
    const struct json_object *props = chat_tool_properties(p->opts.tools, p->fname, p->fname_len);
    if (!props)
        return true;
    JSON_OUT_FOREACH(props, ent) {
        if (strlen(JSON_OUT_KEY(ent)) == n && memcmp(JSON_OUT_KEY(ent), s, n) == 0)
            return true;
    }
    return false;
}

static bool schema_name(const struct chat_parser *p, const char *s, size_t n)
{
    const struct json_object *props = chat_tool_properties(p->opts.tools, p->fname, p->fname_len);
    if (!props)
        return true;
    JSON_OUT_FOREACH(props, ent) {
        if (strlen(JSON_OUT_KEY(ent)) == n && memcmp(JSON_OUT_KEY(ent), s, n) == 0)
            return true;
    }
    return false;
}

static void param_finish(struct chat_parser *p, const char *v, size_t n)
{
    if (n > 0 && v[0] == '\n') {
        v++;
        n--;
    }
    if (n > 0 && v[n - 1] == '\n')
        n--;
    if (name_seen(p, p->pname, p->pname_len))
        goto done;   /* repeated name: the first value stands */
    if (p->n_seen == p->cap_seen) {
        size_t cap = p->cap_seen ? p->cap_seen * 2 : 8;
        struct seen_name *s = realloc(p->seen, cap * sizeof(*s));
        if (!s) {
            p->rc = -ENOMEM;
            goto done;
        }
        p->seen = s;
        p->cap_seen = cap;
    }
    p->seen[p->n_seen].s = p->pname;
    p->seen[p->n_seen].n = p->pname_len;
    p->n_seen++;

    struct json_out frag;
    json_out_init(&frag);
    if (p->n_params++)
        json_out_puts(&frag, ", ");
    json_out_string(&frag, p->pname, p->pname_len);
    json_out_puts(&frag, ": ");
    chat_param_convert(p->opts.tools, p->fname, p->fname_len, p->pname, p->pname_len, v, n, &frag);
    if (frag.err)
        p->rc = frag.err;
    else
        out_delta(p, CHAT_DELTA_TOOL_ARGS, frag.data, frag.len);
    json_out_free(&frag);
    p->pname = NULL;
    return;
done:
    free(p->pname);
    p->pname = NULL;
}

static void emit_content_upto(struct chat_parser *p, size_t n, bool eot)
{
    struct json_out *b = &p->tbuf;
    size_t m = eot ? n : utf8_complete(b->data, n);
    out_delta(p, CHAT_DELTA_CONTENT, b->data, m);
    buf_consume(b, m);
}

/* Give up on a tentative call header: its first tag is plain content. */
static void revert_header(struct chat_parser *p)
{
    size_t tl = tag_at(p->tbuf.data, p->tbuf.len, 0, "<tool_call>") == 1 ? 11 : 10;
    out_delta(p, CHAT_DELTA_CONTENT, p->tbuf.data, tl);
    buf_consume(&p->tbuf, tl);
    p->tstate = T_TEXT;
}

/* One step of the tool stage. Returns true if it made progress. */
static bool tool_step(struct chat_parser *p, bool eot)
{
    struct json_out *b = &p->tbuf;
    const char *s = b->data ? b->data : "";
    size_t n = b->len;
    size_t i, j;
    int m;

    switch (p->tstate) {
    case T_TEXT:
        for (i = 0; i < n; i++) {
            if (s[i] != '<')
                continue;
            int m1 = tag_at(s, n, i, "<tool_call>"), m2 = tag_at(s, n, i, "<function=");
            if (m1 == 1 || m2 == 1) {
                out_delta(p, CHAT_DELTA_CONTENT, s, i);
                buf_consume(b, i);
                if (m1 == 1) {
                    p->tstate = T_OPEN;
                } else {
                    p->tstate = T_NAME;
                    p->name_start = 10;
                    p->scan = 0;
                }
                return true;
            }
            if ((m1 < 0 || m2 < 0) && !eot) {
                size_t before = n;
                emit_content_upto(p, i, false);
                return b->len != before;
            }
        }
        if (n == 0)
            return false;
        {
            size_t before = b->len;
            emit_content_upto(p, n, eot);
            return b->len != before;
        }

    case T_OPEN:
        j = 11;
        if (!skip_ws(s, n, &j) || j == n) {
            if (!eot)
                return false;
            revert_header(p);
            return true;
        }
        m = tag_at(s, n, j, "<function=");
        if (m == 1) {
            p->tstate = T_NAME;
            p->name_start = j + 10;
            p->scan = 0;
            return true;
        }
        if (m < 0 && !eot)
            return false;
        revert_header(p);
        return true;

    case T_NAME:
        /* p->scan: where the previous feed stopped looking, so a long
         * name arriving in pieces is scanned once. */
        for (i = p->scan > p->name_start ? p->scan : p->name_start; i < n; i++) {
            char c = s[i];
            if (c == '>')
                break;
            if (strchr("{}<\"' \t\n\r", c)) {
                revert_header(p);
                return true;
            }
        }
        if (i == n) {
            p->scan = n;
            if (!eot)
                return false;
            revert_header(p);
            return true;
        }
        if (i == p->name_start) {
            revert_header(p);
            return true;
        }
        call_start(p, s + p->name_start, i - p->name_start);
        buf_consume(b, i + 1);
        p->tstate = T_BODY;
        p->line_start = true;
        return true;

    case T_BODY:
        for (i = 0; i < n; i++) {
            bool ls = i == 0 ? p->line_start : s[i - 1] == '\n';
            if (s[i] != '<')
                continue;
            if (ls) {
                m = tag_at(s, n, i, "<parameter=");
                if (m == 1) {
                    buf_consume(b, i + 11);
                    p->tstate = T_PNAME;
                    p->scan = 0;
                    return true;
                }
                if (m < 0 && !eot)
                    goto body_wait;
            }
            if (tag_at(s, n, i, "</function>") == 1) {
                buf_consume(b, i + 11);
                out_str(p, CHAT_DELTA_TOOL_ARGS, "}");
                p->tstate = T_AFTER_FN;
                free(p->fname);
                p->fname = NULL;
                return true;
            }
            if (tag_at(s, n, i, "</tool_call>") == 1) {
                buf_consume(b, i + 12);
                call_end(p);
                p->tstate = T_BETWEEN;
                return true;
            }
            if ((tag_at(s, n, i, "</function>") < 0 || tag_at(s, n, i, "</tool_call>") < 0) && !eot)
                goto body_wait;
        }
        if (eot) {
            buf_consume(b, n);
            call_end(p);
            p->tstate = T_TEXT;
            return true;
        }
        if (n == 0)
            return false;
        p->line_start = s[n - 1] == '\n';
        buf_consume(b, n);
        return true;
body_wait:
        if (i == 0)
            return false;
        p->line_start = s[i - 1] == '\n';
        buf_consume(b, i);
        return true;

    case T_PNAME: {
        const char *gt = p->scan < n ? memchr(s + p->scan, '>', n - p->scan) : NULL;
        if (!gt) {
            p->scan = n;
            if (!eot)
                return false;
            buf_consume(b, n);   /* a name that never closed: dropped */
            call_end(p);
            p->tstate = T_TEXT;
            return true;
        }
        size_t nl = (size_t)(gt - s);
        p->pname = malloc(nl + 1);
        if (!p->pname) {
            p->rc = -ENOMEM;
            return false;
        }
        memcpy(p->pname, s, nl);
        p->pname[nl] = '\0';
        p->pname_len = nl;
        buf_consume(b, nl + 1);
        p->tstate = T_VALUE;
        p->scan = 0;
        p->depth = 0;
        return true;
    }

    case T_VALUE:
        for (i = p->scan; i < n; i++) {
            if (s[i] != '<')
                continue;
            if (i == 0 || s[i - 1] == '\n') {
                m = tag_at(s, n, i, "<parameter=");
                if (m < 0 && !eot)
                    goto value_wait;
                if (m == 1) {
                    const char *gt = memchr(s + i + 11, '>', n - i - 11);
                    if (!gt && !eot)
                        goto value_wait;
                    if (gt && p->depth == 0 && implicit_end_name(p, s + i + 11, (size_t)(gt - (s + i + 11)))) {
                        param_finish(p, s, i);
                        buf_consume(b, i + 11);
                        p->tstate = T_PNAME;
                        p->scan = 0;
                        return true;
                    }
                    p->depth++;
                    i += 10;
                    continue;
                }
            }
            int mp = tag_at(s, n, i, "</parameter>");
            int mf = tag_at(s, n, i, "</function>");
            int mt = tag_at(s, n, i, "</tool_call>");
            if (mp == 1 && p->depth > 0) {
                p->depth--;
                i += 11;
                continue;
            }
            if (p->depth == 0 && (mp == 1 || mf == 1 || mt == 1)) {
                size_t tl = mp == 1 ? 12 : mf == 1 ? 11 : 12;
                j = i + tl;
                if (!skip_ws(s, n, &j) && !eot)
                    goto value_wait;
                bool structural = false;
                if (j >= n) {
                    if (!eot)
                        goto value_wait;
                    structural = true;
                } else if (mp == 1) {
                    int a = tag_at(s, n, j, "<parameter=");
                    int bf = tag_at(s, n, j, "</function>");
                    int bt = tag_at(s, n, j, "</tool_call>");
                    if ((a < 0 || bf < 0 || bt < 0) && !eot)
                        goto value_wait;
                    if (a == 1) {
                        const char *gt = memchr(s + j + 11, '>', n - j - 11);
                        if (!gt && !eot)
                            goto value_wait;
                        structural = gt && schema_name(p, s + j + 11, (size_t)(gt - (s + j + 11)));
                    }
                    structural = structural || bf == 1 || bt == 1;
                } else {
                    const char *next = mf == 1 ? "</tool_call>" : "<tool_call>";
                    int a = tag_at(s, n, j, next);
                    if (a < 0 && !eot)
                        goto value_wait;
                    structural = a == 1;
                }
                if (!structural) {
                    i += tl - 1;
                    continue;
                }
                param_finish(p, s, i);
                buf_consume(b, i + tl);
                if (mp == 1) {
                    p->tstate = T_BODY;
                    p->line_start = false;
                } else if (mf == 1) {
                    out_str(p, CHAT_DELTA_TOOL_ARGS, "}");
                    free(p->fname);
                    p->fname = NULL;
                    p->tstate = T_AFTER_FN;
                } else {
                    call_end(p);
                    p->tstate = T_BETWEEN;
                }
                return true;
            }
            if ((mp < 0 || mf < 0 || mt < 0) && !eot)
                goto value_wait;
        }
        if (!eot) {
            p->scan = n;
            return false;
        }
        param_finish(p, s, n);
        buf_consume(b, n);
        call_end(p);
        p->tstate = T_TEXT;
        return true;
value_wait:
        p->scan = i;
        return false;

    case T_AFTER_FN:
        /* "}" went out at </function>; swallow whitespace and the
         * </tool_call> that should follow. */
        j = 0;
        if (!skip_ws(s, n, &j) || j == n) {
            if (!eot)
                return false;
            buf_consume(b, n);
        } else {
            m = tag_at(s, n, j, "</tool_call>");
            if (m < 0 && !eot)
                return false;
            buf_consume(b, m == 1 ? j + 12 : j);
        }
        for (size_t k = 0; k < p->n_seen; k++)
            free(p->seen[k].s);
        p->n_seen = 0;
        p->tstate = T_BETWEEN;
        return true;

    case T_BETWEEN:
        j = 0;
        if (!skip_ws(s, n, &j) || j == n) {
            if (!eot)
                return false;
            buf_consume(b, n);   /* whitespace after the last call */
            p->tstate = T_TEXT;
            return n > 0;
        }
        {
            int m1 = tag_at(s, n, j, "<tool_call>"), m2 = tag_at(s, n, j, "<function=");
            if ((m1 < 0 || m2 < 0) && !eot)
                return false;
            if (m1 == 1 || m2 == 1)
                buf_consume(b, j);
        }
        p->tstate = T_TEXT;
        return true;
    }
    return false;
}

static void tool_run(struct chat_parser *p, bool eot)
{
    while (p->rc == 0 && tool_step(p, eot))
        ;
}

static void content_feed(struct chat_parser *p, const char *s, size_t n, bool eot)
{
    if (!p->opts.tools_enabled) {
        /* Hold only an incomplete UTF-8 tail. */
        json_out_append(&p->tbuf, s, n);
        if (p->tbuf.err) {
            p->rc = p->tbuf.err;
            return;
        }
        size_t m = eot ? p->tbuf.len : utf8_complete(p->tbuf.data, p->tbuf.len);
        out_delta(p, CHAT_DELTA_CONTENT, p->tbuf.data, m);
        buf_consume(&p->tbuf, m);
        return;
    }
    json_out_append(&p->tbuf, s, n);
    if (p->tbuf.err) {
        p->rc = p->tbuf.err;
        return;
    }
    tool_run(p, eot);
}

/* ---- reasoning stage ------------------------------------------------------ */

static void reason_emit(struct chat_parser *p, size_t n, bool eot)
{
    struct json_out *b = &p->rbuf;
    size_t m = eot ? n : utf8_complete(b->data, n);
    out_delta(p, CHAT_DELTA_REASONING, b->data, m);
    buf_consume(b, m);
}

/* `<function` followed by whitespace or '=' at s[j]: 1 yes, 0 no, -1 wait. */
static int function_open_at(const char *s, size_t n, size_t j)
{
    int m = tag_at(s, n, j, "<function");
    if (m <= 0)
        return m;
    j += 9;
    if (j >= n)
        return -1;
    if (s[j] == '=')
        return 1;
    size_t k = j;
    if (!skip_ws(s, n, &k))
        return -1;
    return k > j ? 1 : 0;
}

static void reason_run(struct chat_parser *p, bool eot)
{
    struct json_out *b = &p->rbuf;
    for (;;) {
        if (p->rc < 0)
            return;
        const char *s = b->data ? b->data : "";
        size_t n = b->len;
        if (p->rstate == R_CONTENT) {
            if (n) {
                content_feed(p, s, n, false);
                buf_consume(b, n);
            }
            return;
        }
        if (p->rstate == R_START) {
            size_t j = 0;
            bool complete = skip_ws(s, n, &j);
            if ((!complete || j == n) && !eot)
                return;
            int m = tag_at(s, n, j, "<think>");
            if (m < 0 && !eot)
                return;
            if (m == 1)
                buf_consume(b, j + 7);
            p->rstate = R_THINK;
            continue;
        }
        /* R_THINK */
        size_t i;
        for (i = 0; i < n; i++) {
            if (s[i] != '<')
                continue;
            int me = tag_at(s, n, i, "</think>");
            if (me == 1) {
                reason_emit(p, i, true);
                buf_consume(b, 8);
                p->rstate = R_CONTENT;
                break;
            }
            int mt = tag_at(s, n, i, "<tool_call>");
            if (mt == 1) {
                size_t j = i + 11;
                bool complete = skip_ws(s, n, &j);
                int f = complete ? function_open_at(s, n, j) : -1;
                if (f < 0 && !eot)
                    goto wait;
                if (f == 1) {
                    reason_emit(p, i, true);
                    p->rstate = R_CONTENT;
                    break;
                }
                continue;
            }
            if ((me < 0 || mt < 0) && !eot)
                goto wait;
        }
        if (p->rstate == R_CONTENT)
            continue;
        reason_emit(p, n, eot);
        return;
wait:
        reason_emit(p, i, false);
        return;
    }
}

/* ---- public API ----------------------------------------------------------- */

int chat_parser_new(const struct chat_parser_opts *opts, struct chat_parser **out, struct engine_error *err)
{
    static const struct chat_parser_opts defaults = CHAT_PARSER_OPTS_DEFAULT;
    struct chat_parser *p = calloc(1, sizeof(*p));
    *out = NULL;
    if (!p)
        return engine_error_set(err, -ENOMEM, "chat parser: out of memory");
    p->opts = opts ? *opts : defaults;
    p->rstate = p->opts.thinking ? R_START : R_CONTENT;
    p->tstate = T_TEXT;
    json_out_init(&p->rbuf);
    json_out_init(&p->tbuf);
    *out = p;
    return 0;
}

void chat_parser_free(struct chat_parser *p)
{
    if (!p)
        return;
    json_out_free(&p->rbuf);
    json_out_free(&p->tbuf);
    free(p->fname);
    free(p->pname);
    for (size_t i = 0; i < p->n_seen; i++)
        free(p->seen[i].s);
    free(p->seen);
    free(p);
}

int chat_parser_feed(struct chat_parser *p, const char *text, size_t len, chat_delta_fn emit, void *user)
{
    if (p->finished)
        return -EINVAL;
    if (p->rc < 0)
        return p->rc;
    p->emit = emit;
    p->user = user;
    if (p->rstate == R_CONTENT && p->rbuf.len == 0) {
        content_feed(p, text, len, false);
    } else {
        json_out_append(&p->rbuf, text, len);
        if (p->rbuf.err)
            p->rc = p->rbuf.err;
        else
            reason_run(p, false);
    }
    return p->rc;
}

int chat_parser_finish(struct chat_parser *p, chat_delta_fn emit, void *user)
{
    if (p->finished)
        return -EINVAL;
    if (p->rc < 0)
        return p->rc;
    p->emit = emit;
    p->user = user;
    p->finished = true;
    reason_run(p, true);
    if (p->rc == 0)
        content_feed(p, "", 0, true);
    return p->rc;
}

size_t chat_parser_tool_calls(const struct chat_parser *p)
{
    return p->n_calls;
}

bool chat_parser_reasoning_ended(const struct chat_parser *p)
{
    return p->rstate == R_CONTENT;
}

/* ---- whole text ------------------------------------------------------------ */

struct collect {
    struct json_out reasoning, content;
    struct json_out *args;   /* one per call */
    struct chat_parse_result *r;
    int rc;
};

static int collect_delta(void *user, const struct chat_delta *d)
{
    struct collect *c = user;
    struct chat_parse_result *r = c->r;
    switch (d->type) {
    case CHAT_DELTA_REASONING:
        json_out_append(&c->reasoning, d->text, d->len);
        return c->reasoning.err;
    case CHAT_DELTA_CONTENT:
        json_out_append(&c->content, d->text, d->len);
        return c->content.err;
    case CHAT_DELTA_TOOL_NAME: {
        struct chat_tool_call *t = realloc(r->tool_calls, (r->n_tool_calls + 1) * sizeof(*t));
        struct json_out *a = realloc(c->args, (r->n_tool_calls + 1) * sizeof(*a));
        if (t)
            r->tool_calls = t;
        if (a)
            c->args = a;
        if (!t || !a)
            return -ENOMEM;
        struct chat_tool_call *tc = &r->tool_calls[r->n_tool_calls];
        memset(tc, 0, sizeof(*tc));
        snprintf(tc->id, sizeof(tc->id), "%s", d->tool_id);
        tc->name = strndup(d->text, d->len);
        json_out_init(&c->args[r->n_tool_calls]);
        r->n_tool_calls++;
        return tc->name ? 0 : -ENOMEM;
    }
    case CHAT_DELTA_TOOL_ARGS:
        if (d->tool_index >= r->n_tool_calls)
            return -EINVAL;
        json_out_append(&c->args[d->tool_index], d->text, d->len);
        return c->args[d->tool_index].err;
    }
    return 0;
}

static char *take_or_null(struct json_out *o, size_t *len)
{
    if (o->len == 0) {
        json_out_free(o);
        *len = 0;
        return NULL;
    }
    return json_out_take(o, len);
}

int chat_parse_text(const char *text, size_t len, const struct chat_parser_opts *opts,
                    struct chat_parse_result *out, struct engine_error *err)
{
    struct chat_parser *p;
    struct collect c;
    memset(out, 0, sizeof(*out));
    memset(&c, 0, sizeof(c));
    c.r = out;
    json_out_init(&c.reasoning);
    json_out_init(&c.content);
    int rc = chat_parser_new(opts, &p, err);
    if (rc < 0)
        return rc;
    rc = chat_parser_feed(p, text, len, collect_delta, &c);
    if (rc == 0)
        rc = chat_parser_finish(p, collect_delta, &c);
    chat_parser_free(p);
    out->reasoning = take_or_null(&c.reasoning, &out->reasoning_len);
    out->content = take_or_null(&c.content, &out->content_len);
    for (size_t i = 0; i < out->n_tool_calls; i++) {
        out->tool_calls[i].arguments = json_out_take(&c.args[i], NULL);
        if (!out->tool_calls[i].arguments && rc == 0)
            rc = -ENOMEM;
    }
    free(c.args);
    if (rc < 0) {
        chat_parse_result_free(out);
        return engine_error_set(err, rc, "chat output parser failed (%d)", rc);
    }
    return 0;
}

void chat_parse_result_free(struct chat_parse_result *r)
{
    free(r->reasoning);
    free(r->content);
    for (size_t i = 0; i < r->n_tool_calls; i++) {
        free(r->tool_calls[i].name);
        free(r->tool_calls[i].arguments);
    }
    free(r->tool_calls);
    memset(r, 0, sizeof(*r));
}

static struct json_object *str_or_null(const char *s, size_t n)
{
    return s ? json_object_new_string_len(s, (int)n) : NULL;
}

struct json_object *chat_parse_result_to_json(const struct chat_parse_result *r)
{
    struct json_object *o = json_object_new_object(), *calls = json_object_new_array();
    if (!o || !calls) {
        json_object_put(o);
        json_object_put(calls);
        return NULL;
    }
    json_object_object_add(o, "reasoning", str_or_null(r->reasoning, r->reasoning_len));
    json_object_object_add(o, "content", str_or_null(r->content, r->content_len));
    for (size_t i = 0; i < r->n_tool_calls; i++) {
        struct json_object *tc = json_object_new_object(), *fn = json_object_new_object();
        if (!tc || !fn) {
            json_object_put(tc);
            json_object_put(fn);
            json_object_put(calls);
            json_object_put(o);
            return NULL;
        }
        json_object_object_add(fn, "name", json_object_new_string(r->tool_calls[i].name ? r->tool_calls[i].name : ""));
        json_object_object_add(fn, "arguments",
                               json_object_new_string(r->tool_calls[i].arguments ? r->tool_calls[i].arguments : "{}"));
        json_object_object_add(tc, "id", json_object_new_string(r->tool_calls[i].id));
        json_object_object_add(tc, "type", json_object_new_string("function"));
        json_object_object_add(tc, "function", fn);
        json_object_array_add(calls, tc);
    }
    json_object_object_add(o, "tool_calls", calls);
    json_object_object_add(o, "finish_reason", json_object_new_string(r->n_tool_calls ? "tool_calls" : "stop"));
    return o;
}

struct json_object *chat_delta_to_json(const struct chat_delta *d)
{
    struct json_object *o = json_object_new_object();
    struct json_object *text = json_object_new_string_len(d->text ? d->text : "", (int)d->len);
    if (!o || !text)
        goto fail;
    if (d->type == CHAT_DELTA_REASONING || d->type == CHAT_DELTA_CONTENT) {
        json_object_object_add(o, d->type == CHAT_DELTA_REASONING ? "reasoning" : "content", text);
        return o;
    }
    struct json_object *calls = json_object_new_array(), *tc = json_object_new_object();
    struct json_object *fn = json_object_new_object();
    if (!calls || !tc || !fn) {
        json_object_put(calls);
        json_object_put(tc);
        json_object_put(fn);
        goto fail;
    }
    json_object_object_add(tc, "index", json_object_new_int64((int64_t)d->tool_index));
    if (d->type == CHAT_DELTA_TOOL_NAME) {
        json_object_object_add(tc, "id", json_object_new_string(d->tool_id ? d->tool_id : ""));
        json_object_object_add(tc, "type", json_object_new_string("function"));
        json_object_object_add(fn, "name", text);
        json_object_object_add(fn, "arguments", json_object_new_string(""));
    } else {
        json_object_object_add(fn, "arguments", text);
    }
    json_object_object_add(tc, "function", fn);
    json_object_array_add(calls, tc);
    json_object_object_add(o, "tool_calls", calls);
    return o;
fail:
    json_object_put(o);
    json_object_put(text);
    return NULL;
}
