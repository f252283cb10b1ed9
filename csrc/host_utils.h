// Host-side helpers shared by the ops' bindings (.cpp files; torch headers allowed here).
#pragma once

#include <array>
#include <atomic>

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include "check.h"

namespace fastgan {

// float32 statistics and coefficients, float64 for float64 inputs.
inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Streaming multiprocessors of a device, cached per device (grid sizing without a driver call each launch).
inline int sm_count(c10::DeviceIndex device) {
  static std::array<std::atomic<int>, 64> cache{};  // 0: not known yet
  const bool cached = device >= 0 && device < static_cast<c10::DeviceIndex>(cache.size());
  if (cached) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (cached) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

// A small table argument that must match `like` (the op's reference table, named like_name):
// same device, dtype and shape, contiguous.  Used by the coefficient ops' bindings.
inline void check_like_table(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
                             const char* like_name) {
  FASTGAN_CHECK(t.defined() && t.device() == like.device(), op, ": ", name, " must be on ", like.device());
  FASTGAN_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have ", like_name, "'s dtype ",
                     like.scalar_type(), ", got ", t.scalar_type());
  FASTGAN_CHECK_VALUE(t.sizes() == like.sizes() && t.is_contiguous(), op, ": ", name, " must be a contiguous tensor "
                      "of ", like_name, "'s shape ", like.sizes(), ", got ", t.sizes());
}

}  // namespace fastgan
