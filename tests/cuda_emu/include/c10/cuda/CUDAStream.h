// Stand-in for c10/cuda/CUDAStream.h in the CPU emulation of fastgan's kernels: launches run synchronously.
#pragma once
#include <c10/core/Device.h>

#include "emu_runtime.h"

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
