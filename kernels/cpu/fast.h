/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The fast CPU backend ("cpu"): the same op table as the reference backend
 * (kernels/backend.h) with SIMD kernels chosen at run time by CPUID and a
 * persistent thread pool. See fast.c for the design.
 */
#ifndef RESIDENT_KERNELS_CPU_FAST_H
#define RESIDENT_KERNELS_CPU_FAST_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/backend.h"

/* In the order auto-selection prefers them (last = first choice). Not a
 * capability order: AVX-512 CPUs before Sapphire Rapids / Zen 5 lack
 * AVX-VNNI, so ask kb_cpu_isa_supported(), never compare levels. */
enum kb_cpu_isa {
    KB_CPU_ISA_AUTO      = 0,            /* best the CPU supports            */
    KB_CPU_ISA_SCALAR    = 1,            /* every op delegated to cpu-ref    */
    KB_CPU_ISA_AVX2      = 2,            /* AVX2 + FMA + F16C                */
    KB_CPU_ISA_AVX2_VNNI = 3,            /* the same + AVX-VNNI (ymm)        */
    KB_CPU_ISA_AVX512    = 4,            /* AVX-512 F/BW/VL/DQ + VNNI        */
};

struct kb_cpu_fast_params {
    int32_t n_threads;                   /* 0 = all online CPUs              */
    bool    exact;                       /* fp32 activations everywhere (no
                                            int8 activation planes)          */
    int32_t isa;                         /* enum kb_cpu_isa                  */
    int32_t gdn_chunk_min;               /* GDN calls of at least this many
                                            tokens take the chunked form; 0 =
                                            RESIDENT_GDN_CHUNK_MIN or the
                                            built-in default, < 0 = never    */
};
#define KB_CPU_FAST_PARAMS_DEFAULT { .n_threads = 0, .exact = false, .isa = KB_CPU_ISA_AUTO, \
                                     .gdn_chunk_min = 0 }

/* Create the fast backend. params->isa AUTO takes the level named by the
 * environment variable RESIDENT_CPU_ISA (avx512, avx2vnni, avx2, scalar or
 * auto; -EINVAL for anything else) and otherwise the best the CPU
 * supports. -ENOTSUP if an explicitly requested ISA is not supported by
 * this CPU. params->gdn_chunk_min 0 takes the environment variable
 * RESIDENT_GDN_CHUNK_MIN (a token count >= 1, or 0 for never; -EINVAL for
 * anything else) and otherwise the built-in threshold (for A/B
 * measurements and tests). The backend's name is "cpu" ("cpu-exact" with
 * exact set). "cpu" on a SIMD level stores the KV cache as f16
 * (KB_CAP_KV_F16) unless the environment variable RESIDENT_KV_F16 is "0"
 * ("1" or unset: the default; -EINVAL for anything else); "cpu-exact"
 * and the scalar level keep fp32. */
int kb_cpu_fast_create(const struct kb_cpu_fast_params *params, struct kb_backend **out);

/* Best ISA this CPU supports (enum kb_cpu_isa: avx512, else avx2-vnni,
 * else avx2, else scalar), and a name for it. */
int32_t kb_cpu_fast_best_isa(void);
const char *kb_cpu_isa_name(int32_t isa);

/* Whether this CPU (and OS) can run level @isa: true for SCALAR and AUTO,
 * false for values outside enum kb_cpu_isa. */
bool kb_cpu_isa_supported(int32_t isa);

/**
 * kb_cpu_isa_parse() - ISA level from its RESIDENT_CPU_ISA spelling.
 * @s:   "avx512", "avx2vnni" (or "avx2-vnni"), "avx2", "scalar", "auto",
 *       or NULL / "" (auto)
 * @isa: set to the enum kb_cpu_isa value
 *
 * Return: 0, or -EINVAL for any other string (@isa untouched).
 */
int kb_cpu_isa_parse(const char *s, int32_t *isa);

/* The ISA a fast backend runs with and its thread count (for reports). */
int32_t kb_cpu_fast_isa(struct kb_backend *be);
int32_t kb_cpu_fast_threads(struct kb_backend *be);

#endif
