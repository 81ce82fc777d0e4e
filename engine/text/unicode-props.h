/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Unicode 16.0 additions to the general categories L, M and N relative to
 * the Unicode 14.0 tables of PCRE2 10.42, as PCRE2 class text ("\x{..}-..").
 * Generated: see unicode-props.c.
 */
#ifndef RESIDENT_ENGINE_TEXT_UNICODE_PROPS_H
#define RESIDENT_ENGINE_TEXT_UNICODE_PROPS_H

extern const char unicode16_extra_L[];
extern const char unicode16_extra_M[];
extern const char unicode16_extra_N[];

#endif
