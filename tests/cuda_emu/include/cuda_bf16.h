// __nv_bfloat16 for the CPU emulation of fastgan's kernels: the top 16 bits of a float, round-to-nearest-even.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t x = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // quiet nan
  x += 0x7FFFu + ((x >> 16) & 1u);
  return {static_cast<uint16_t>(x >> 16)};
}
