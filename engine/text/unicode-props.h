/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unicode version bridges, generated (see unicode-props.c):
 *  - Unicode 16.0 additions to the general categories L, M and N relative
 *    to the Unicode 14.0 tables of PCRE2 10.42, as PCRE2 class text;
 *  - code points HF's Unicode 9.0 normaliser does not know as combining.
 */
#ifndef RESIDENT_ENGINE_TEXT_UNICODE_PROPS_H
#define RESIDENT_ENGINE_TEXT_UNICODE_PROPS_H

#include <stddef.h>
#include <stdint.h>

extern const char unicode16_extra_L[];
extern const char unicode16_extra_M[];
extern const char unicode16_extra_N[];
/* The union of the three as sorted inclusive ranges. */
extern const uint32_t unicode16_extra_ranges[][2];
extern const size_t unicode16_extra_ranges_count;

/* Code point ranges (inclusive, ascending) added after Unicode 9.0 with a
 * non-zero combining class or a canonical decomposition: HF's NFC (Unicode
 * 9.0 data) treats them as plain starters. */
extern const uint32_t unicode9_nfc_opaque[][2];
extern const size_t unicode9_nfc_opaque_count;

#endif
