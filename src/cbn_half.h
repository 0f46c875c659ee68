/*
 * The 2-byte storage types, float16 (IEEE binary16) and bfloat16 (the top
 * half of a float32), and their conversions to and from float32 with integer
 * bit operations: the portable path, used by the reference loops, the
 * baseline vector loops (through the same steps on vectors, in
 * cbn_loops_impl.h) and for single values. Narrowing rounds to nearest,
 * ties to even, once: a float32 value is rounded straight to the 2-byte type
 * (float16 subnormals included), as F16C's vcvtps2ph and AVX-512 BF16's
 * vcvtneps2bf16 do. NaN stays NaN (quiet); values past the type's range
 * become +-inf.
 */
#ifndef CBN_HALF_H
#define CBN_HALF_H

#include <stdint.h>
#include <string.h>

/* distinct types, so that a float16 array cannot be passed where a bfloat16 one is expected */
typedef struct { uint16_t bits; } cbn_f16;
typedef struct { uint16_t bits; } cbn_bf16;

/* Magnitudes from which a float32 rounds to infinity: the largest finite
 * value plus half its unit in the last place (the tie rounds to the even
 * infinity): float16 65504 + 16, bfloat16 (2 - 2^-7) * 2^127 + 2^119. */
#define CBN_F16_OVERFLOW 65520.0f
#define CBN_BF16_OVERFLOW_BITS 0x7f7f8000u

static inline uint32_t cbn_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float cbn_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float cbn_bf16_overflow(void) { return cbn_f32_from_bits(CBN_BF16_OVERFLOW_BITS); }

/* bfloat16 -> float32: exact, the bits moved up */
static inline float cbn_bf16_to_float(cbn_bf16 h) { return cbn_f32_from_bits((uint32_t)h.bits << 16); }

/* float32 -> bfloat16, ties to even: add 0x7fff plus the lowest kept bit,
 * truncate (the carry moves a full mantissa into the exponent, and past the
 * largest finite value into infinity); NaN keeps its top bits, made quiet */
static inline cbn_bf16 cbn_bf16_from_float(float f)
{
    uint32_t u = cbn_f32_bits(f);
    cbn_bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        h.bits = (uint16_t)((u >> 16) | 0x40u);
    else
        h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}

/* float16 -> float32: exact. The exponent is rebiased (127 - 15); Inf/NaN
 * get the rest of float32's exponent (a NaN made quiet, as F16C does),
 * subnormals (exponent 0) are normalised by a float subtraction of 2^-14
 * (exact). */
static inline float cbn_f16_to_float(cbn_f16 h)
{
    const uint32_t exp_mask = 0x7c00u << 13;
    uint32_t o = ((uint32_t)h.bits & 0x7fffu) << 13;
    uint32_t e = o & exp_mask;
    o += (uint32_t)(127 - 15) << 23;
    if (e == exp_mask)
        o = (o + ((uint32_t)(128 - 16) << 23)) | (o & 0x7fffffu ? 0x400000u : 0u);
    else if (e == 0)
        o = cbn_f32_bits(cbn_f32_from_bits(o + (1u << 23)) - cbn_f32_from_bits(113u << 23));
    return cbn_f32_from_bits(o | ((uint32_t)(h.bits & 0x8000u) << 16));
}

/* float32 -> float16, ties to even (after F. Giesen's float_to_half_fast3_rtne):
 *   |f| >= 2^16 (or Inf/NaN): Inf, or a quiet NaN;
 *   |f| < 2^-14 (float16 subnormal or zero): f + 0.5 puts the 10 kept bits
 *     at the bottom of the float32 mantissa, rounded by the addition itself;
 *   otherwise: rebias, add 0xfff plus the lowest kept bit, shift out 13 bits
 *     (a carry rounds up into the exponent, and from 65520 on into Inf). */
static inline cbn_f16 cbn_f16_from_float(float f)
{
    uint32_t u = cbn_f32_bits(f);
    const uint32_t sign = u & 0x80000000u;
    cbn_f16 h;
    u ^= sign;
    if (u >= (uint32_t)(127 + 16) << 23) {
        h.bits = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (u < 113u << 23) {
        const uint32_t magic = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
        h.bits = (uint16_t)(cbn_f32_bits(cbn_f32_from_bits(u) + cbn_f32_from_bits(magic)) - magic);
    } else {
        u += ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u);
        h.bits = (uint16_t)(u >> 13);
    }
    h.bits |= (uint16_t)(sign >> 16);
    return h;
}

#endif /* CBN_HALF_H */
