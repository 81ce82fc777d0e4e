/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fast backend's embed, RMSNorm, RoPE, add and sigmoid-gate ops
 * (fast-elem.c), with the op table's contracts (kernels/backend.h). fast.c
 * owns one struct fast_elem per backend and calls these when an ISA level
 * is selected (the scalar level delegates to the reference backend).
 * Each returns 0 or -errno and then sets *what to a message.
 */
#ifndef RESIDENT_KERNELS_CPU_FAST_ELEM_H
#define RESIDENT_KERNELS_CPU_FAST_ELEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/threadpool.h"

struct fast_elem {
    struct tp_pool            *tp;
    const struct fast_kernels *kn;
    float                     *wbuf;     /* the norm weight as floats (+1)  */
    size_t                     wcap;
    /* RoPE: cos / sin of the last call's (positions, rot_dim, theta),
     * [n][cos half | sin half]; the q and k rotations of every attention
     * layer of one forward chunk share the positions */
    float                     *rope_cs;
    size_t                     rope_cap; /* floats                          */
    int32_t                   *rope_pos;
    size_t                     rope_pos_cap;
    int32_t                    rope_n, rope_rot;
    double                     rope_theta;
};

/* Frees the buffers; the pool and the kernel table are the caller's. */
void fast_elem_release(struct fast_elem *e);

int fast_elem_embed(struct fast_elem *e, const struct kb_weight *table, const int32_t *ids,
                    int32_t n, float *out, const char **what);
int fast_elem_rmsnorm(struct fast_elem *e, float *y, int64_t y_stride, const float *x,
                      int64_t x_stride, int64_t rows, int32_t dim, const struct kb_weight *w,
                      float eps, bool plus_one, const char **what);
int fast_elem_rope(struct fast_elem *e, float *x, int32_t n, int32_t rows_per_token,
                   int64_t stride, int32_t rot_dim, const int32_t *pos, double theta,
                   const char **what);
int fast_elem_add(struct fast_elem *e, float *y, const float *a, const float *b, int64_t count,
                  const char **what);
int fast_elem_mul_sigmoid(struct fast_elem *e, float *y, int64_t y_stride, const float *x,
                          int64_t x_stride, const float *gate, int64_t gate_stride, int64_t rows,
                          int32_t dim, const char **what);

#endif
