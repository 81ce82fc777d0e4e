/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The avx2-vnni level's own kernel: the W4 x int8 product of fast-avx2.c
 * built with AVX-VNNI (VEX-encoded vpdpbusd on ymm: Intel Alder Lake,
 * Raptor Lake, Meteor Lake, Arrow Lake client parts without AVX-512, and
 * AVX-512 server parts from Sapphire Rapids on) instead of the
 * vpmaddubsw + vpmaddwd + vpaddd emulation. Every other kernel of the
 * level is the avx2 one (fast.c's table); results are bit-identical to the
 * avx2 level (fast-avx2-q4q8.h says why, test-fast.c checks it). Like the
 * other kernel files it is built with the baseline flags; the function
 * carries the target attribute and runs only after fast.c's CPUID check.
 */
#include "kernels/cpu/fast-kernels.h"
#include "kernels/cpu/ref.h"

#include <immintrin.h>

#define Q4Q8_TARGET "avx2,fma,f16c,avxvnni"
#define Q4Q8_NAME   fast_q4_q8_avx2vnni
#define Q4Q8_VNNI   1
#include "kernels/cpu/fast-avx2-q4q8.h"
