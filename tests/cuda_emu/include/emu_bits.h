// A float's IEEE bits and back, shared by the emulator's __half and __nv_bfloat16 conversions.
#pragma once
#include <cstdint>
#include <cstring>

namespace emu {
inline uint32_t float_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float bits_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
}  // namespace emu
