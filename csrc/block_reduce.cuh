// Block-wide sums shared by the small per-(sample, group) kernels
// (stats_affine.cu, double_coefficients.cu): a fixed shared-memory tree, so the
// result does not depend on scheduling (deterministic).
#pragma once

#include <cuda_runtime.h>

namespace fastgan {

constexpr int kGroupThreads = 256;  // threads per block of those kernels; a power of two (the tree halves it)

// The sum of v over the block, returned to every thread (red: kGroupThreads values of shared memory).
template <typename acc>
__device__ acc block_sum(acc v, acc* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kGroupThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
    __syncthreads();
  }
  const acc total = red[0];
  __syncthreads();  // red is written again by the next call
  return total;
}

}  // namespace fastgan
