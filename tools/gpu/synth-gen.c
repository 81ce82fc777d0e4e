/* SPDX-License-Identifier: Apache-2.0 */
/*
 * synth-gen: the tensors of the shape-faithful synthetic Qwen3.6-35B-A3B
 * checkpoint (tools/synth/synth.py's layout) written fast, in C, so that
 * the 40-layer model (~21 GB) can be made on the lent GPU machine itself in
 * well under a minute: the device tool carries 64 MiB, the machine has no
 * network, and numpy at ~1 GB/s single-threaded would take minutes.
 *
 *   synth-gen OUT_DIR LAYERS [THREADS]
 *
 * Writes OUT_DIR/model-0000I-of-0000N.safetensors (1: embeddings + final
 * norm, 2..N-1: one per layer, N: lm_head) and model.safetensors.index.json.
 * config.json comes from `tools/synth/synth.py OUT --layers L --config-only`
 * (standard library only). Same tensor names, shapes and dtypes as synth.py
 * (compressed-tensors W4A16 g32: weight_packed I32 [rows][cols/8],
 * weight_scale BF16 [rows][cols/32], weight_shape I64 [2]; per-expert names;
 * dense tensors BF16) and the same value ranges; the values themselves come
 * from a per-tensor xorshift stream, not numpy's generator, so the two
 * tools' weights differ (only speed is measured on this model).
 * Files are written by THREADS threads (default: online CPUs, at most 32),
 * one file per thread at a time; the output does not depend on THREADS.
 * Exit 0 ok, 1 on an I/O error (named), 2 on usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* the real model's dimensions (spec model.md; synth.py) */
enum {
    SG_H = 2048, SG_EXP = 256, SG_INTER = 512, SG_SHARED = 512,
    SG_NQ = 16, SG_NKV = 2, SG_HD = 256,
    SG_NK = 16, SG_NV = 32, SG_DK = 128, SG_DV = 128, SG_CONV_K = 4,
    SG_KEY = SG_NK * SG_DK, SG_VAL = SG_NV * SG_DV, SG_CONV = 2 * SG_KEY + SG_VAL,
};
#define SG_VOCAB 248320
#define SG_PFX "model.language_model."
#define SG_MAX_T 2400                   /* tensors per file (a layer: 2304 expert + ~30) */

enum sg_kind { SG_PACKED, SG_SCALE, SG_SHAPE, SG_UNIF, SG_NORMAL, SG_ALOG };

struct sg_tensor {
    char name[128];
    enum sg_kind kind;
    int64_t rows, cols;                 /* logical (W4: the unpacked shape)   */
    int64_t d0, d1, d2;                 /* stored shape; d2 > 0: 3-D          */
    float a, b;                         /* range / std / fan-in               */
    uint64_t bytes, off;
};

struct sg_file {
    char name[64];
    int n;
    struct sg_tensor t[SG_MAX_T];
};

static const char *out_dir;
static int n_layers, n_files;
static atomic_int next_file;
static atomic_int failed;

/* ---- tensor lists ---- */

static struct sg_tensor *sg_add(struct sg_file *f, const char *name, enum sg_kind k, int64_t d0,
                                int64_t d1, int64_t d2, uint64_t esize)
{
    if (f->n >= SG_MAX_T) {
        fprintf(stderr, "synth-gen: more than %d tensors in %s\n", SG_MAX_T, f->name);
        exit(1);
    }
    struct sg_tensor *t = &f->t[f->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->kind = k;
    t->d0 = d0;
    t->d1 = d1;
    t->d2 = d2;
    t->bytes = (uint64_t)d0 * (uint64_t)(d1 > 0 ? d1 : 1) * (uint64_t)(d2 > 0 ? d2 : 1) * esize;
    return t;
}

static void sg_dense(struct sg_file *f, const char *name, enum sg_kind k, int64_t d0, int64_t d1,
                     float a, float b)
{
    struct sg_tensor *t = sg_add(f, name, k, d0, d1, 0, 2);
    t->a = a;
    t->b = b;
}

/* W4 g32 weight `base` (rows x cols): packed, scale, shape */
static void sg_w4(struct sg_file *f, const char *base, int64_t rows, int64_t cols)
{
    char n[128];
    snprintf(n, sizeof(n), "%s.weight_packed", base);
    sg_add(f, n, SG_PACKED, rows, cols / 8, 0, 4);
    snprintf(n, sizeof(n), "%s.weight_scale", base);
    struct sg_tensor *s = sg_add(f, n, SG_SCALE, rows, cols / 32, 0, 2);
    s->a = (float)(1.0 / sqrt((double)cols) / 4.6);
    snprintf(n, sizeof(n), "%s.weight_shape", base);
    struct sg_tensor *sh = sg_add(f, n, SG_SHAPE, 2, 0, 0, 8);
    sh->rows = rows;
    sh->cols = cols;
}

static bool sg_full_attention(int i)
{
    return (i + 1) % 4 == 0;            /* 3 GDN : 1 attention */
}

static void sg_layer(struct sg_file *f, int i)
{
    char p[96], n[160];
    snprintf(p, sizeof(p), SG_PFX "layers.%d.", i);
#define N(s) (snprintf(n, sizeof(n), "%s%s", p, s), n)
    sg_dense(f, N("input_layernorm.weight"), SG_UNIF, SG_H, 0, -0.1f, 0.1f);
    sg_dense(f, N("post_attention_layernorm.weight"), SG_UNIF, SG_H, 0, -0.1f, 0.1f);
    if (!sg_full_attention(i)) {
        sg_w4(f, N("linear_attn.in_proj_qkv"), SG_CONV, SG_H);
        sg_w4(f, N("linear_attn.in_proj_z"), SG_VAL, SG_H);
        sg_w4(f, N("linear_attn.in_proj_b"), SG_NV, SG_H);
        sg_w4(f, N("linear_attn.in_proj_a"), SG_NV, SG_H);
        sg_w4(f, N("linear_attn.out_proj"), SG_H, SG_VAL);
        struct sg_tensor *c = sg_add(f, N("linear_attn.conv1d.weight"), SG_UNIF, SG_CONV, 1, SG_CONV_K, 2);
        c->a = -0.5f;
        c->b = 0.5f;
        sg_dense(f, N("linear_attn.A_log"), SG_ALOG, SG_NV, 0, 1.0f, 16.0f);
        sg_dense(f, N("linear_attn.dt_bias"), SG_UNIF, SG_NV, 0, 0.0f, 1.0f);
        sg_dense(f, N("linear_attn.norm.weight"), SG_UNIF, SG_DV, 0, 0.9f, 1.1f);
    } else {
        sg_w4(f, N("self_attn.q_proj"), SG_NQ * SG_HD * 2, SG_H);
        sg_w4(f, N("self_attn.k_proj"), SG_NKV * SG_HD, SG_H);
        sg_w4(f, N("self_attn.v_proj"), SG_NKV * SG_HD, SG_H);
        sg_w4(f, N("self_attn.o_proj"), SG_H, SG_NQ * SG_HD);
        sg_dense(f, N("self_attn.q_norm.weight"), SG_UNIF, SG_HD, 0, -0.1f, 0.1f);
        sg_dense(f, N("self_attn.k_norm.weight"), SG_UNIF, SG_HD, 0, -0.1f, 0.1f);
    }
    sg_dense(f, N("mlp.gate.weight"), SG_NORMAL, SG_EXP, SG_H, 0.05f, 0);
    sg_dense(f, N("mlp.shared_expert_gate.weight"), SG_NORMAL, 1, SG_H, 0.02f, 0);
    sg_w4(f, N("mlp.shared_expert.gate_proj"), SG_SHARED, SG_H);
    sg_w4(f, N("mlp.shared_expert.up_proj"), SG_SHARED, SG_H);
    sg_w4(f, N("mlp.shared_expert.down_proj"), SG_H, SG_SHARED);
#undef N
    for (int e = 0; e < SG_EXP; e++) {
        snprintf(n, sizeof(n), "%smlp.experts.%d.gate_proj", p, e);
        sg_w4(f, n, SG_INTER, SG_H);
        snprintf(n, sizeof(n), "%smlp.experts.%d.up_proj", p, e);
        sg_w4(f, n, SG_INTER, SG_H);
        snprintf(n, sizeof(n), "%smlp.experts.%d.down_proj", p, e);
        sg_w4(f, n, SG_H, SG_INTER);
    }
}

/* file index 0 .. n_files-1 (named 1-based like synth.py) */
static void sg_plan(struct sg_file *f, int idx)
{
    f->n = 0;
    snprintf(f->name, sizeof(f->name), "model-%05d-of-%05d.safetensors", idx + 1, n_files);
    if (idx == 0) {
        sg_dense(f, SG_PFX "embed_tokens.weight", SG_NORMAL, SG_VOCAB, SG_H, 0.02f, 0);
        sg_dense(f, SG_PFX "norm.weight", SG_UNIF, SG_H, 0, -0.1f, 0.1f);
    } else if (idx == n_files - 1) {
        sg_dense(f, "lm_head.weight", SG_NORMAL, SG_VOCAB, SG_H, 0.02f, 0);
    } else {
        sg_layer(f, idx - 1);
    }
}

/* ---- values ---- */

static uint64_t sg_seed(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;  /* FNV-1a of the name */
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    return h ? h : 1;
}

static uint64_t sg_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float sg_unit(uint64_t *s)        /* [0, 1) */
{
    return (float)(sg_next(s) >> 40) * (1.0f / 16777216.0f);
}

static uint16_t sg_bf16(float v)         /* truncation, as synth.py */
{
    uint32_t u;
    memcpy(&u, &v, 4);
    return (uint16_t)(u >> 16);
}

/* fill buf with elements [from, from + count) of tensor t */
static void sg_fill(const struct sg_tensor *t, uint64_t *s, void *buf, uint64_t count)
{
    uint16_t *h = buf;
    switch (t->kind) {
    case SG_PACKED: {
        uint64_t *w = buf;              /* two int32 words of random nibbles */
        for (uint64_t i = 0; i < count / 2; i++)
            w[i] = sg_next(s);
        if (count % 2)
            ((uint32_t *)buf)[count - 1] = (uint32_t)sg_next(s);
        break;
    }
    case SG_SCALE:
        for (uint64_t i = 0; i < count; i++)
            h[i] = sg_bf16(t->a * (0.7f + 0.6f * sg_unit(s)));
        break;
    case SG_SHAPE: {
        int64_t v[2] = { t->rows, t->cols };
        memcpy(buf, v, sizeof(v));
        break;
    }
    case SG_UNIF:
        for (uint64_t i = 0; i < count; i++)
            h[i] = sg_bf16(t->a + (t->b - t->a) * sg_unit(s));
        break;
    case SG_ALOG:
        for (uint64_t i = 0; i < count; i++)
            h[i] = sg_bf16(logf(t->a + (t->b - t->a) * sg_unit(s)));
        break;
    case SG_NORMAL:
        /* Irwin-Hall(4) rescaled: mean 0, std 1, cheap; the tails do not
         * matter for a speed model */
        for (uint64_t i = 0; i < count; i++) {
            float u = sg_unit(s) + sg_unit(s) + sg_unit(s) + sg_unit(s) - 2.0f;
            h[i] = sg_bf16(t->a * u * 1.7320508f);
        }
        break;
    }
}

/* ---- files ---- */

static int sg_header(struct sg_file *f, char **out, size_t *len)
{
    size_t cap = 256 + (size_t)f->n * 256, n = 0;
    char *hdr = malloc(cap);
    if (!hdr)
        return -ENOMEM;
    n += (size_t)snprintf(hdr + n, cap - n, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < f->n; i++) {
        struct sg_tensor *t = &f->t[i];
        const char *dt = t->kind == SG_PACKED ? "I32" : t->kind == SG_SHAPE ? "I64" : "BF16";
        char shape[64];
        if (t->d2 > 0)
            snprintf(shape, sizeof(shape), "%" PRId64 ",%" PRId64 ",%" PRId64, t->d0, t->d1, t->d2);
        else if (t->d1 > 0)
            snprintf(shape, sizeof(shape), "%" PRId64 ",%" PRId64, t->d0, t->d1);
        else
            snprintf(shape, sizeof(shape), "%" PRId64, t->d0);
        t->off = off;
        n += (size_t)snprintf(hdr + n, cap - n,
                              ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%s],\"data_offsets\":[%" PRIu64
                              ",%" PRIu64 "]}", t->name, dt, shape, off, off + t->bytes);
        off += t->bytes;
        if (n >= cap - 8) {
            free(hdr);
            return -EOVERFLOW;
        }
    }
    hdr[n++] = '}';
    while (n % 8)                       /* data starts 8-byte aligned */
        hdr[n++] = ' ';
    *out = hdr;
    *len = n;
    return 0;
}

static int sg_write_file(struct sg_file *f, void *buf, size_t buf_bytes)
{
    char path[1024], tmp[1100];
    snprintf(path, sizeof(path), "%s/%s", out_dir, f->name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    char *hdr;
    size_t hl;
    int rc = sg_header(f, &hdr, &hl);
    if (rc) {
        fprintf(stderr, "synth-gen: %s: header: %s\n", path, strerror(-rc));
        return rc;
    }
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        rc = -errno;
        fprintf(stderr, "synth-gen: cannot create %s: %s\n", tmp, strerror(errno));
        free(hdr);
        return rc;
    }
    uint64_t le = hl;                   /* little-endian u64 (x86 / arm64) */
    bool ok = fwrite(&le, 8, 1, fp) == 1 && fwrite(hdr, 1, hl, fp) == hl;
    free(hdr);
    for (int i = 0; ok && i < f->n; i++) {
        const struct sg_tensor *t = &f->t[i];
        const uint64_t es = t->kind == SG_PACKED ? 4 : t->kind == SG_SHAPE ? 8 : 2;
        uint64_t s = sg_seed(t->name), total = t->bytes / es;
        for (uint64_t done = 0; ok && done < total;) {
            uint64_t c = total - done < buf_bytes / es ? total - done : buf_bytes / es;
            sg_fill(t, &s, buf, c);
            ok = fwrite(buf, es, c, fp) == c;
            done += c;
        }
    }
    if (fclose(fp) || !ok) {
        fprintf(stderr, "synth-gen: cannot write %s: %s (disk full?)\n", tmp, strerror(errno));
        unlink(tmp);
        return -EIO;
    }
    if (rename(tmp, path)) {
        fprintf(stderr, "synth-gen: cannot rename %s: %s\n", tmp, strerror(errno));
        return -errno;
    }
    return 0;
}

static void *sg_worker(void *arg)
{
    (void)arg;
    const size_t buf_bytes = 16u << 20;
    void *buf = malloc(buf_bytes);
    struct sg_file *f = malloc(sizeof(*f));
    if (!buf || !f) {
        fprintf(stderr, "synth-gen: out of memory\n");
        atomic_store(&failed, 1);
    }
    while (buf && f && !atomic_load(&failed)) {
        int idx = atomic_fetch_add(&next_file, 1);
        if (idx >= n_files)
            break;
        sg_plan(f, idx);
        if (sg_write_file(f, buf, buf_bytes))
            atomic_store(&failed, 1);
    }
    free(buf);
    free(f);
    return NULL;
}

/* the index: every tensor name -> its file (plans again; cheap) */
static int sg_index(void)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", out_dir);
    FILE *fp = fopen(path, "w");
    struct sg_file *f = malloc(sizeof(*f));
    if (!fp || !f) {
        fprintf(stderr, "synth-gen: cannot write %s: %s\n", path, strerror(errno));
        if (fp)
            fclose(fp);
        free(f);
        return 1;
    }
    fprintf(fp, "{\"metadata\": {}, \"weight_map\": {");
    bool first = true;
    for (int i = 0; i < n_files; i++) {
        sg_plan(f, i);
        for (int j = 0; j < f->n; j++) {
            fprintf(fp, "%s\n \"%s\": \"%s\"", first ? "" : ",", f->t[j].name, f->name);
            first = false;
        }
    }
    fprintf(fp, "\n}}\n");
    free(f);
    if (fclose(fp)) {
        fprintf(stderr, "synth-gen: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: synth-gen OUT_DIR LAYERS [THREADS]   (LAYERS a multiple of 4, "
                "4..64; then tools/synth/synth.py OUT_DIR --layers LAYERS --config-only)\n");
        return 2;
    }
    out_dir = argv[1];
    char *end;
    long l = strtol(argv[2], &end, 10);
    if (*end || l < 4 || l > 64 || l % 4) {
        fprintf(stderr, "synth-gen: LAYERS '%s' must be a multiple of 4 in 4..64 (3 GDN : 1 "
                "attention)\n", argv[2]);
        return 2;
    }
    n_layers = (int)l;
    n_files = n_layers + 2;
    long th = sysconf(_SC_NPROCESSORS_ONLN);
    if (argc == 4) {
        th = strtol(argv[3], &end, 10);
        if (*end || th < 1 || th > 32) {
            fprintf(stderr, "synth-gen: THREADS '%s' must be 1..32\n", argv[3]);
            return 2;
        }
    }
    if (mkdir(out_dir, 0755) && errno != EEXIST) {
        fprintf(stderr, "synth-gen: cannot create %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    th = th < 1 ? 1 : th > 32 ? 32 : th;
    th = th > n_files ? n_files : th;
    pthread_t tid[32];
    int started = 0;
    for (long i = 0; i < th; i++)
        if (pthread_create(&tid[i], NULL, sg_worker, NULL) == 0)
            started++;
    if (!started)
        sg_worker(NULL);
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    if (atomic_load(&failed))
        return 1;
    return sg_index();
}
