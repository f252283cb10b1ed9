// Stand-in for c10/cuda/CUDAGuard.h in the CPU emulation of fastgan's kernels: one device, nothing to switch.
#pragma once
#include <c10/core/Device.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};
}  // namespace cuda
}  // namespace c10
