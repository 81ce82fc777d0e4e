/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Prefix cache for the hybrid model.
 *
 * What can be reused
 * ------------------
 * A sequence's state after tokens ids[0..p) is, per layer, either the KV
 * rows 0..p-1 of a full-attention layer or the conv + recurrent state of a
 * Gated DeltaNet layer. KV rows are position-addressed: the rows of any
 * prefix of a cached sequence are exactly the rows a recompute would write,
 * so KV is reusable at every length. The GDN state is a running sum that
 * cannot be rolled back: the state at p exists only if someone copied it
 * out when the sequence was exactly p long. A request can therefore resume
 * only at a position where a snapshot of the GDN state was taken, with the
 * KV rows before it; everything after is prefilled.
 *
 * Keying
 * ------
 * A radix tree over token ids, one per uid (or one for everybody when the
 * cache is configured to share). An edge holds its token ids and the KV rows
 * of those positions for every attention layer; a node may hold a snapshot
 * of the GDN state at its end position. Lookup walks edges while the request
 * matches them completely (memcmp of the ids: hashes are never trusted) and
 * resumes at the deepest node with a snapshot. Inserting a path that leaves
 * an edge midway splits that edge: the KV rows of the common part are held
 * once, by the upper half, whatever the number of conversations sharing it.
 * A node's KV rows are needed by every snapshot below it, so a node lives
 * while it has a snapshot or a child.
 *
 * Snapshot policy (where a request resumes later)
 * -----------------------------------------------
 * prefix_cache_prefill prefills in pieces and stores a snapshot at the end
 * of each piece:
 *   - every message boundary the caller passes (the `<|im_start|>` tokens
 *     the chat template produced; prefix_cache_boundaries_find): the next
 *     turn's prompt shares system + tools + earlier turns up to a boundary,
 *     even though the Qwen3.6 template rewrites earlier assistant turns
 *     (reasoning is dropped from history), so the prompt is not an append;
 *   - every `interval` tokens after a boundary inside a long message, so a
 *     prompt that diverges inside it re-prefills at most `interval` tokens
 *     of the shared part (default 512, see prefix-cache.h for why);
 *   - the end of the prompt.
 * The caller may add one after generation (prefix_cache_insert) where the
 * answer will be rendered verbatim into the next prompt. A request restores
 * at most n-1 tokens, because it needs the last token's logits.
 *
 * Memory and eviction
 * -------------------
 * Everything lives in host memory (malloc): snapshots are large (62.8 MiB on
 * the 35B model) and host memory is what the budget is taken from. Bytes
 * held = snapshots + KV rows + token ids + nodes; an insert first evicts
 * snapshots in least-recently-used order (restored or stored = used) until
 * it fits; a node left without snapshot and children is freed, and so are
 * its ancestors in the same situation. An insert larger than the whole
 * budget is refused. Eviction never touches a sequence: restored state is a
 * copy.
 *
 * Isolation
 * ---------
 * By default one tree per uid, so a lookup can only reach prompts its own
 * uid sent; the restore time would otherwise tell a uid whether another one
 * sent a given prefix. share_across_uids makes one tree for all (a shared
 * system prompt then pays once).
 *
 * Why it is exact
 * ---------------
 * A restore writes back exactly the bytes a forward pass wrote: KV rows
 * copied out of a sequence at the same positions, and the GDN state at the
 * very position it resumes from. Matching compares every token id. What is
 * left is whether prefilling [p, n) in a separate call computes what a
 * single call over [0, n) computes for those rows. On the reference
 * backend every op is per row or per token in order (the GDN recurrence
 * runs token by token), so the logits are bit-identical; the tests check
 * that for many splits. A backend whose GDN kernel changes its arithmetic
 * with the chunk split (chunked delta rule) would differ in rounding only;
 * the tests print the measured difference.
 *
 * Thread safety: see prefix-cache.h. The guard field protects the nodes an
 * insert attaches to from being freed by the eviction that makes room for
 * it; eviction may still drop their snapshots.
 */
#include "engine/prefix-cache.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/state.h"

struct pc_node {
    struct pc_node *parent;               /* NULL for a tree's root           */
    struct pc_node *child;                /* first child                      */
    struct pc_node *next;                 /* next sibling                     */
    struct pc_node *lru_prev, *lru_next;  /* while snap is set                */
    int32_t        *tok;                  /* edge token ids [ntok]            */
    unsigned char  *kv;                   /* [n_attn][K,V][ntok][kv_dim] elements
                                             of geom.kv_elem_bytes (state.h)  */
    void           *snap;                 /* GDN image at `end`, or NULL      */
    int64_t         ntok;
    int64_t         end;                  /* tokens from the root to here     */
    uint64_t        guard;                /* == cache op: not freed now       */
};

struct pc_root {
    struct pc_root *next;
    uint32_t        uid;
    struct pc_node  node;
};

struct prefix_cache {
    struct model             *model;
    struct model_state_geom   geom;
    int32_t                   interval;   /* <= 0: boundaries and ends only   */
    bool                      share;
    pthread_mutex_t           lock;
    struct pc_root           *roots;
    struct pc_node           *lru_head;   /* least recently used snapshot     */
    struct pc_node           *lru_tail;
    uint64_t                  op;         /* guard generation                 */
    struct prefix_cache_stats st;         /* counters + current sizes         */
};

/* ---- sizes and allocation ---- */

static uint64_t node_bytes(const struct prefix_cache *c, int64_t ntok)
{
    return sizeof(struct pc_node) + (uint64_t)ntok * (sizeof(int32_t) + c->geom.kv_token_bytes);
}

static void *alloc_bytes(uint64_t bytes)
{
    if (bytes > SIZE_MAX)
        return NULL;
    return malloc(bytes ? (size_t)bytes : 1);
}

/* Byte offset of block b (attention layer b/2, K or V) of an edge. */
static size_t kv_block(const struct prefix_cache *c, int64_t ntok, int64_t b)
{
    return (size_t)(b * ntok * c->geom.kv_dim) * c->geom.kv_elem_bytes;
}

uint64_t prefix_cache_budget_default(void)
{
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "re");
    if (f) {
        char line[128];
        unsigned long long kb;
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (uint64_t)kb * 1024u;
                break;
            }
        fclose(f);
    }
    if (!avail)
        return 1ull << 30;
    avail /= 4;
    return avail < PREFIX_CACHE_BUDGET_CAP ? avail : PREFIX_CACHE_BUDGET_CAP;
}

int prefix_cache_new(struct model *m, const struct prefix_cache_params *params,
                     struct prefix_cache **out, struct engine_error *err)
{
    struct prefix_cache_params p = PREFIX_CACHE_PARAMS_DEFAULT;
    if (params)
        p = *params;
    if (!m || !out)
        return engine_error_set(err, -EINVAL, "prefix cache needs a model and an out pointer");
    struct prefix_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return engine_error_set(err, -ENOMEM, "out of memory for the prefix cache");
    c->model = m;
    model_state_geom_get(m, &c->geom);
    c->interval = p.interval == 0 ? PREFIX_CACHE_INTERVAL_DEFAULT : p.interval;
    c->share = p.share_across_uids;
    c->st.budget_bytes = p.budget_bytes ? p.budget_bytes : prefix_cache_budget_default();
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return 0;
}

/* ---- LRU list of the nodes holding a snapshot ---- */

static void lru_unlink(struct prefix_cache *c, struct pc_node *n)
{
    if (n->lru_prev)
        n->lru_prev->lru_next = n->lru_next;
    else
        c->lru_head = n->lru_next;
    if (n->lru_next)
        n->lru_next->lru_prev = n->lru_prev;
    else
        c->lru_tail = n->lru_prev;
    n->lru_prev = n->lru_next = NULL;
}

static void lru_push(struct prefix_cache *c, struct pc_node *n)
{
    n->lru_prev = c->lru_tail;
    n->lru_next = NULL;
    if (c->lru_tail)
        c->lru_tail->lru_next = n;
    else
        c->lru_head = n;
    c->lru_tail = n;
}

static void snap_drop(struct prefix_cache *c, struct pc_node *n)
{
    lru_unlink(c, n);
    free(n->snap);
    n->snap = NULL;
    c->st.bytes_held -= c->geom.gdn_bytes;
    c->st.snapshots--;
}

/* ---- tree structure ---- */

static struct pc_node *child_find(const struct pc_node *n, int32_t tok)
{
    for (struct pc_node *ch = n->child; ch; ch = ch->next)
        if (ch->tok[0] == tok)
            return ch;
    return NULL;
}

static void child_unlink(struct pc_node *n)
{
    struct pc_node **pp = &n->parent->child;
    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    n->next = NULL;
}

/* Free a node already unlinked from its parent (its children are gone). */
static void node_free(struct prefix_cache *c, struct pc_node *n)
{
    if (n->snap)
        snap_drop(c, n);
    c->st.bytes_held -= node_bytes(c, n->ntok);
    c->st.nodes--;
    c->st.kv_tokens -= (uint64_t)n->ntok;
    free(n->tok);
    free(n->kv);
    free(n);
}

/* Free n and its ancestors while they hold neither snapshot nor child. */
static void prune(struct prefix_cache *c, struct pc_node *n)
{
    while (n && n->parent && !n->snap && !n->child && n->guard != c->op) {
        struct pc_node *parent = n->parent;
        child_unlink(n);
        node_free(c, n);
        n = parent;
    }
}

/* Drop the least recently used snapshot; false when there is none. */
static bool evict_one(struct prefix_cache *c)
{
    struct pc_node *n = c->lru_head;
    if (!n)
        return false;
    snap_drop(c, n);
    c->st.evictions++;
    prune(c, n);
    return true;
}

/* Free every node below root, without recursion (paths can be long). */
static void subtree_clear(struct prefix_cache *c, struct pc_node *root)
{
    struct pc_node *cur = root->child;
    while (cur) {
        if (cur->child) {
            cur = cur->child;
            continue;
        }
        struct pc_node *parent = cur->parent;
        parent->child = cur->next;         /* cur is always the first child */
        node_free(c, cur);
        cur = parent->child ? parent->child : parent == root ? NULL : parent;
    }
}

static struct pc_node *root_find(struct prefix_cache *c, uint32_t uid, bool create)
{
    const uint32_t key = c->share ? 0 : uid;
    for (struct pc_root *r = c->roots; r; r = r->next)
        if (r->uid == key)
            return &r->node;
    if (!create)
        return NULL;
    struct pc_root *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->uid = key;
    r->next = c->roots;
    c->roots = r;
    return &r->node;
}

void prefix_cache_clear(struct prefix_cache *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    while (c->roots) {
        struct pc_root *r = c->roots;
        c->roots = r->next;
        subtree_clear(c, &r->node);
        free(r);
    }
    pthread_mutex_unlock(&c->lock);
}

void prefix_cache_free(struct prefix_cache *c)
{
    if (!c)
        return;
    prefix_cache_clear(c);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Deepest node with a snapshot whose path is ids[0..end), end <= limit. */
static struct pc_node *match_best(const struct pc_node *root, const int32_t *ids, int64_t limit)
{
    const struct pc_node *n = root;
    struct pc_node *best = NULL;
    while (n->end < limit) {
        struct pc_node *ch = child_find(n, ids[n->end]);
        if (!ch || ch->end > limit ||
            memcmp(ch->tok, ids + n->end, (size_t)ch->ntok * sizeof(int32_t)))
            break;
        n = ch;
        if (ch->snap)
            best = ch;
    }
    return best;
}

/* ---- restore and insert (cache lock held) ---- */

static int restore_locked(struct prefix_cache *c, struct model_seq *seq, struct pc_node *root,
                          const int32_t *ids, int64_t n, int64_t *restored,
                          struct engine_error *err)
{
    *restored = 0;
    struct pc_node *best = match_best(root, ids, n - 1);
    if (!best)
        return 0;
    for (struct pc_node *x = best; x->parent; x = x->parent) {
        int rc = model_seq_kv_load(seq, x->end - x->ntok, x->ntok, x->kv, err);
        if (rc)
            return rc;
    }
    int rc = model_seq_gdn_load(seq, best->snap, best->end, err);
    if (rc)
        return rc;
    lru_unlink(c, best);
    lru_push(c, best);
    *restored = best->end;
    return 0;
}

/* Split edge ch after its first m tokens into `upper` (new, buffers
 * allocated for m tokens) and ch (the rest, now upper's only child). */
static void edge_split(struct prefix_cache *c, struct pc_node *ch, int64_t m, struct pc_node *upper)
{
    const int64_t L = ch->ntok, blocks = 2 * (int64_t)c->geom.n_attn_layers;
    const size_t D = (size_t)c->geom.kv_dim * c->geom.kv_elem_bytes;     /* bytes per row */
    memcpy(upper->tok, ch->tok, (size_t)m * sizeof(int32_t));
    memmove(ch->tok, ch->tok + m, (size_t)(L - m) * sizeof(int32_t));
    for (int64_t b = 0; b < blocks; b++) {
        memcpy(upper->kv + kv_block(c, m, b), ch->kv + kv_block(c, L, b), (size_t)m * D);
        /* block b of the shorter edge starts before block b of the longer
         * one, and blocks move in increasing order: memmove is safe */
        memmove(ch->kv + kv_block(c, L - m, b), ch->kv + kv_block(c, L, b) + (size_t)m * D,
                (size_t)(L - m) * D);
    }
    upper->ntok = m;
    upper->end = ch->end - (L - m);
    upper->parent = ch->parent;
    struct pc_node **pp = &ch->parent->child;
    while (*pp != ch)
        pp = &(*pp)->next;
    *pp = upper;
    upper->next = ch->next;
    upper->child = ch;
    ch->next = NULL;
    ch->parent = upper;
    ch->ntok = L - m;
    /* give the moved-out rows back (a failed shrink keeps the old block) */
    int32_t *tok = realloc(ch->tok, (size_t)(L - m) * sizeof(int32_t));
    if (tok)
        ch->tok = tok;
    if (c->geom.kv_token_bytes) {
        unsigned char *kv = realloc(ch->kv, (size_t)(L - m) * (size_t)c->geom.kv_token_bytes);
        if (kv)
            ch->kv = kv;
    }
    /* the bytes of the edge are now split over two nodes */
    c->st.bytes_held += sizeof(struct pc_node);
    c->st.nodes++;
}

static void node_abandon(struct pc_node *n)
{
    if (n) {
        free(n->tok);
        free(n->kv);
        free(n);
    }
}

static struct pc_node *node_alloc(const struct prefix_cache *c, int64_t ntok)
{
    struct pc_node *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->tok = alloc_bytes((uint64_t)ntok * sizeof(int32_t));
    n->kv = alloc_bytes((uint64_t)ntok * c->geom.kv_token_bytes);
    if (!n->tok || !n->kv) {
        node_abandon(n);
        return NULL;
    }
    return n;
}

/*
 * Store a snapshot of seq (length p, tokens ids[0..p)) under root. Returns
 * 0 when stored, already present or refused for the budget or memory (the
 * latter two counted in snapshots_rejected); -errno when copying out of the
 * sequence failed (also counted; the tree is unchanged).
 */
static int insert_locked(struct prefix_cache *c, struct model_seq *seq, struct pc_node *root,
                         const int32_t *ids, int64_t p, struct engine_error *err)
{
    struct pc_node *node = root, *split = NULL;
    int64_t m = 0;
    while (node->end < p) {
        struct pc_node *ch = child_find(node, ids[node->end]);
        if (!ch)
            break;
        const int64_t room = p - node->end < ch->ntok ? p - node->end : ch->ntok;
        int64_t k = 1;
        while (k < room && ch->tok[k] == ids[node->end + k])
            k++;
        if (k == ch->ntok) {
            node = ch;
            continue;
        }
        split = ch;
        m = k;
        break;
    }
    if (!split && node->end == p && node->snap) {
        lru_unlink(c, node);
        lru_push(c, node);
        return 0;
    }
    const int64_t have = node->end + m, rows = p - have;
    const uint64_t need = c->geom.gdn_bytes + (split ? sizeof(struct pc_node) : 0) +
                          (rows ? node_bytes(c, rows) : 0);
    struct pc_node *upper = NULL, *leaf = NULL;
    void *snap = NULL;
    int rc = 0;

    /* make room; the nodes attached to below must survive the eviction */
    const uint64_t op = ++c->op;
    node->guard = op;
    if (split)
        split->guard = op;
    while (c->st.bytes_held + need > c->st.budget_bytes && need <= c->st.budget_bytes)
        if (!evict_one(c))
            break;
    if (c->st.bytes_held + need > c->st.budget_bytes)
        goto refuse;

    snap = alloc_bytes(c->geom.gdn_bytes);
    if (split)
        upper = node_alloc(c, m);
    if (rows)
        leaf = node_alloc(c, rows);
    if (!snap || (split && !upper) || (rows && !leaf))
        goto refuse;
    rc = model_seq_gdn_save(seq, snap, err);
    if (!rc && rows)
        rc = model_seq_kv_save(seq, have, rows, leaf->kv, err);
    if (rc)
        goto refuse;

    /* nothing can fail from here on */
    struct pc_node *at = node;
    if (split) {
        edge_split(c, split, m, upper);
        at = upper;
    }
    if (rows) {
        memcpy(leaf->tok, ids + have, (size_t)rows * sizeof(int32_t));
        leaf->ntok = rows;
        leaf->end = p;
        leaf->parent = at;
        leaf->next = at->child;
        at->child = leaf;
        c->st.bytes_held += node_bytes(c, rows);
        c->st.nodes++;
        c->st.kv_tokens += (uint64_t)rows;
        at = leaf;
    }
    at->snap = snap;
    lru_push(c, at);
    c->st.bytes_held += c->geom.gdn_bytes;
    c->st.snapshots++;
    c->st.snapshots_stored++;
    c->op++;
    /* eviction may have left the lower half of a split edge with neither
     * snapshot nor child */
    if (split)
        prune(c, split);
    return 0;

refuse:
    free(snap);
    node_abandon(upper);
    node_abandon(leaf);
    c->st.snapshots_rejected++;
    c->op++;                              /* guards off; free what eviction
                                             left without a snapshot       */
    prune(c, split ? split : node);
    return rc;
}

/* ---- public operations ---- */

static int check_ids(const struct prefix_cache *c, const int32_t *ids, int64_t n,
                     struct engine_error *err)
{
    const int32_t V = model_vocab(c->model);
    if (!ids)
        return engine_error_set(err, -EINVAL, "no token ids");
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return engine_error_set(err, -EINVAL, "token id %d at position %" PRId64
                                    " is outside 0..%d", ids[i], i, V - 1);
    return 0;
}

/* Snapshot positions in (from, n] (see the essay), ascending; *out is
 * malloc'd. */
static int plan_points(const struct prefix_cache *c, const struct prefix_cache_request *req,
                       int64_t from, int64_t n, int64_t **out, int64_t *count)
{
    /* each gap between anchors holds at most gap/interval interval points */
    const int64_t cap = (c->interval > 0 ? n / c->interval : 0) + 2 * ((int64_t)req->n_boundaries + 1);
    int64_t *pts = malloc((size_t)cap * sizeof(*pts));
    if (!pts)
        return -ENOMEM;
    int64_t k = 0, prev = 0;
    for (int32_t i = 0; i <= req->n_boundaries; i++) {
        const int64_t a = i < req->n_boundaries ? req->boundaries[i] : n;
        if (a == 0)
            continue;
        if (c->interval > 0)
            for (int64_t q = prev + c->interval; q < a; q += c->interval)
                if (q > from)
                    pts[k++] = q;
        if (a > from && (k == 0 || pts[k - 1] != a))
            pts[k++] = a;
        prev = a;
    }
    *out = pts;
    *count = k;
    return 0;
}

int prefix_cache_prefill(struct prefix_cache *c, struct model_seq *seq,
                         const struct prefix_cache_request *req, const int32_t *ids, int64_t n,
                         float *logits, int64_t *reused, struct engine_error *err)
{
    const struct prefix_cache_request none = { 0 };
    if (!req)
        req = &none;
    if (reused)
        *reused = 0;
    if (!c || !seq)
        return engine_error_set(err, -EINVAL, "prefix cache prefill needs a cache and a sequence");
    struct model *m = c->model;
    if (seq->model != m)
        return engine_error_set(err, -EINVAL, "sequence belongs to another model than the cache");
    if (n <= 0)
        return engine_error_set(err, -EINVAL, "prefill needs at least one token, got %" PRId64, n);
    if (n > model_seq_capacity(seq))
        return engine_error_set(err, -ENOSPC, "prompt of %" PRId64 " tokens does not fit the "
                                "sequence capacity %" PRId64, n, model_seq_capacity(seq));
    int rc = check_ids(c, ids, n, err);
    if (rc)
        return rc;
    if (req->n_boundaries < 0 || (req->n_boundaries && !req->boundaries))
        return engine_error_set(err, -EINVAL, "%d message boundaries without an array",
                                req->n_boundaries);
    for (int32_t i = 0; i < req->n_boundaries; i++)
        if (req->boundaries[i] < 0 || req->boundaries[i] > n ||
            (i && req->boundaries[i] <= req->boundaries[i - 1]))
            return engine_error_set(err, -EINVAL, "message boundary %d (%" PRId64 ") is not in "
                                    "0..%" PRId64 " or not ascending", i, req->boundaries[i], n);
    if ((rc = model_seq_reset(seq)))
        return engine_error_set(err, rc, "could not reset the sequence");

    int64_t r = 0;
    if (!(req->flags & PREFIX_CACHE_NO_LOOKUP)) {
        pthread_mutex_lock(&c->lock);
        struct pc_node *root = root_find(c, req->uid, false);
        if (root)
            rc = restore_locked(c, seq, root, ids, n, &r, err);
        c->st.lookups++;
        if (r)
            c->st.hits++;
        else
            c->st.misses++;
        c->st.tokens_reused += (uint64_t)r;
        pthread_mutex_unlock(&c->lock);
        if (rc)
            return rc;
    }
    if (reused)
        *reused = r;

    int64_t *pts = NULL, npts = 0;
    if (!(req->flags & PREFIX_CACHE_NO_STORE) && plan_points(c, req, r, n, &pts, &npts))
        npts = 0;                        /* no memory for the plan: no snapshots */
    int64_t pos = r;
    for (int64_t k = 0; pos < n && !rc; k++) {
        const int64_t stop = k < npts ? pts[k] : n;
        while (pos < stop && !rc) {
            if (req->cancel && atomic_load(req->cancel)) {
                rc = engine_error_set(err, -ECANCELED, "prefill cancelled after %" PRId64
                                      " of %" PRId64 " tokens", pos, n);
                break;
            }
            const int64_t chunk = stop - pos < MODEL_CHUNK_ROWS ? stop - pos : MODEL_CHUNK_ROWS;
            struct model_prefill_params pp = { .logits = pos + chunk == n ? logits : NULL };
            rc = model_prefill(m, seq, ids + pos, chunk, &pp, err);
            if (!rc)
                pos += chunk;
        }
        if (!rc && k < npts) {
            /* a snapshot that cannot be stored does not fail the request */
            struct engine_error ierr = { 0 };
            pthread_mutex_lock(&c->lock);
            struct pc_node *root = root_find(c, req->uid, true);
            if (root)
                insert_locked(c, seq, root, ids, pos, &ierr);
            else
                c->st.snapshots_rejected++;
            pthread_mutex_unlock(&c->lock);
        }
    }
    free(pts);
    pthread_mutex_lock(&c->lock);
    c->st.tokens_prefilled += (uint64_t)(pos - r);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int prefix_cache_restore(struct prefix_cache *c, struct model_seq *seq, uint32_t uid,
                         const int32_t *ids, int64_t n, int64_t *restored, struct engine_error *err)
{
    if (restored)
        *restored = 0;
    if (!c || !seq || seq->model != c->model)
        return engine_error_set(err, -EINVAL, "restore needs a cache and a sequence of its model");
    if (n <= 0)
        return engine_error_set(err, -EINVAL, "restore needs at least one token, got %" PRId64, n);
    if (n > model_seq_capacity(seq))
        return engine_error_set(err, -ENOSPC, "prompt of %" PRId64 " tokens does not fit the "
                                "sequence capacity %" PRId64, n, model_seq_capacity(seq));
    int rc = check_ids(c, ids, n, err);
    if (rc)
        return rc;
    if ((rc = model_seq_reset(seq)))
        return engine_error_set(err, rc, "could not reset the sequence");
    int64_t r = 0;
    pthread_mutex_lock(&c->lock);
    struct pc_node *root = root_find(c, uid, false);
    if (root)
        rc = restore_locked(c, seq, root, ids, n, &r, err);
    c->st.lookups++;
    if (r && !rc)
        c->st.hits++;
    else
        c->st.misses++;
    if (!rc)
        c->st.tokens_reused += (uint64_t)r;
    pthread_mutex_unlock(&c->lock);
    if (rc)
        return rc;
    if (restored)
        *restored = r;
    return 0;
}

int prefix_cache_points(struct prefix_cache *c, const struct prefix_cache_request *req,
                        int64_t from, int64_t n, int64_t **out, int64_t *count)
{
    const struct prefix_cache_request none = { 0 };
    *out = NULL;
    *count = 0;
    if (!c || n <= 0 || from < 0)
        return -EINVAL;
    if (!req)
        req = &none;
    if (req->n_boundaries < 0 || (req->n_boundaries && !req->boundaries))
        return -EINVAL;
    for (int32_t i = 0; i < req->n_boundaries; i++)
        if (req->boundaries[i] < 0 || req->boundaries[i] > n ||
            (i && req->boundaries[i] <= req->boundaries[i - 1]))
            return -EINVAL;
    return plan_points(c, req, from, n, out, count);
}

void prefix_cache_note_prefilled(struct prefix_cache *c, int64_t tokens)
{
    if (!c || tokens <= 0)
        return;
    pthread_mutex_lock(&c->lock);
    c->st.tokens_prefilled += (uint64_t)tokens;
    pthread_mutex_unlock(&c->lock);
}

int prefix_cache_insert(struct prefix_cache *c, struct model_seq *seq, uint32_t uid,
                        const int32_t *ids, int64_t n, struct engine_error *err)
{
    if (!c || !seq || seq->model != c->model)
        return engine_error_set(err, -EINVAL, "insert needs a cache and a sequence of its model");
    if (n <= 0 || n != model_seq_len(seq))
        return engine_error_set(err, -EINVAL, "insert of %" PRId64 " tokens into the cache, but the "
                                "sequence holds %" PRId64, n, model_seq_len(seq));
    int rc = check_ids(c, ids, n, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&c->lock);
    struct pc_node *root = root_find(c, uid, true);
    if (root)
        rc = insert_locked(c, seq, root, ids, n, err);
    else
        c->st.snapshots_rejected++;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int64_t prefix_cache_peek(struct prefix_cache *c, uint32_t uid, const int32_t *ids, int64_t n)
{
    if (!c || !ids || n <= 1)
        return 0;
    pthread_mutex_lock(&c->lock);
    const struct pc_node *root = root_find(c, uid, false);
    const struct pc_node *best = root ? match_best(root, ids, n - 1) : NULL;
    const int64_t r = best ? best->end : 0;
    pthread_mutex_unlock(&c->lock);
    return r;
}

int64_t prefix_cache_boundaries_find(const int32_t *ids, int64_t n, int32_t marker,
                                     int64_t *out, int64_t cap)
{
    int64_t k = 0;
    for (int64_t p = 1; ids && p < n; p++)
        if (ids[p] == marker) {
            if (out && k < cap)
                out[k] = p;
            k++;
        }
    return k;
}

void prefix_cache_stats_get(struct prefix_cache *c, struct prefix_cache_stats *out)
{
    if (!c) {
        *out = (struct prefix_cache_stats){ 0 };
        return;
    }
    pthread_mutex_lock(&c->lock);
    *out = c->st;
    pthread_mutex_unlock(&c->lock);
}
