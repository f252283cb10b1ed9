// __half for the CPU emulation of fastgan's kernels: IEEE binary16 storage, round-to-nearest-even conversions.
#pragma once
#include <cstdint>

#include "emu_bits.h"

struct __half {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1Fu, man = h.bits & 0x3FFu, out;
  if (exp == 0x1F) {
    out = sign | 0x7F800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    out = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    out = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    out = sign | ((112u - e) << 23) | ((man & 0x3FFu) << 13);
  }
  return emu::bits_float(out);
}

inline __half __float2half_rn(float f) {
  const uint32_t x = emu::float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return {static_cast<uint16_t>(sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u))};
  if (abs >= 0x477FF000u) return {static_cast<uint16_t>(sign | 0x7C00u)};  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (abs < 0x33000000u) return {sign};  // below half the smallest subnormal
    const uint32_t e = abs >> 23, man = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    const uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    const uint32_t r = q + (rem > halfway || (rem == halfway && (q & 1u)));
    return {static_cast<uint16_t>(sign | r)};
  }
  const uint32_t base = ((abs >> 13) - (112u << 10)) & 0xFFFFu, rem = abs & 0x1FFFu;
  const uint32_t r = base + (rem > 0x1000u || (rem == 0x1000u && (base & 1u)));
  return {static_cast<uint16_t>(sign | r)};
}
