// __nv_bfloat16 for the CPU emulation of fastgan's kernels: the top 16 bits of a float, round-to-nearest-even.
#pragma once
#include <cstdint>

#include "emu_bits.h"

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  return emu::bits_float(uint32_t(h.bits) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x = emu::float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // quiet nan
  x += 0x7FFFu + ((x >> 16) & 1u);
  return {static_cast<uint16_t>(x >> 16)};
}
