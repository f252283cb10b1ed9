// CUDA kernel of norm_act_backward_coefficients: the twin of
// fastgan/kernels/backward_coefficients.py (math: the reference
// fastgan/reference/norm_act_backward.py).  No torch headers here: the binding,
// checks and allocations are in backward_coefficients.cpp.
//
// Between the first backward's reduction and its elementwise pass a fused norm
// layer needs, per statistics group of `count` elements and per channel:
//   k2 = -group_sum(scale * r_g) / count,  k3 = -group_sum(scale * r_gx) / count,
//   sum_g = sum over rows of r_g,          sum_gx = sum over rows of r_gx.
// Eager PyTorch takes two (batch norm) to eight (layer norm) small launches per
// layer for these; here one launch does all, with two kinds of block: the first
// `coef_blocks` write k2 and k3 (a thread per entry when each channel is its
// own group, else a block per (row, group) with fixed shared-memory trees), the
// rest sum a channel per thread over the rows in row order.  Deterministic.

#include <cstdint>

#include <cuda_runtime.h>

#include "block_reduce.cuh"

namespace fastgan {
namespace bc {

template <typename acc>
struct Args {
  const acc* r_g;
  const acc* r_gx;
  const acc* scale;
  acc* k2;
  acc* k3;
  acc* sum_g;
  acc* sum_gx;
  int64_t rows, channels, groups, per_group, coef_blocks;
  acc neg_inv_count;  // -1 / count, rounded once to acc (as the reference's scale * (-1.0 / count))
};

template <typename acc>
__global__ void __launch_bounds__(kGroupThreads) backward_coefficients_kernel(Args<acc> a) {
  __shared__ acc red[kGroupThreads];
  const int64_t block = blockIdx.x;
  if (block >= a.coef_blocks) {  // column sums; the branches are uniform per block (no barrier left waiting)
    const int64_t c = (block - a.coef_blocks) * kGroupThreads + threadIdx.x;
    if (c >= a.channels) return;
    acc s_g = 0, s_gx = 0;
    for (int64_t t = 0; t < a.rows; ++t) {
      s_g += a.r_g[t * a.channels + c];
      s_gx += a.r_gx[t * a.channels + c];
    }
    a.sum_g[c] = s_g;
    a.sum_gx[c] = s_gx;
    return;
  }
  if (a.per_group == 1) {  // every channel its own group: one product per entry
    const int64_t e = block * kGroupThreads + threadIdx.x;
    if (e >= a.rows * a.channels) return;
    const acc coef = a.scale[e] * a.neg_inv_count;
    a.k2[e] = a.r_g[e] * coef;
    a.k3[e] = a.r_gx[e] * coef;
    return;
  }
  const int64_t base = (block / a.groups) * a.channels + (block % a.groups) * a.per_group;
  acc s2 = 0, s3 = 0;
  for (int64_t j = threadIdx.x; j < a.per_group; j += kGroupThreads) {
    const acc coef = a.scale[base + j] * a.neg_inv_count;
    s2 += a.r_g[base + j] * coef;
    s3 += a.r_gx[base + j] * coef;
  }
  s2 = block_sum(s2, red);
  s3 = block_sum(s3, red);
  for (int64_t j = threadIdx.x; j < a.per_group; j += kGroupThreads) {
    a.k2[base + j] = s2;
    a.k3[base + j] = s3;
  }
}

template <typename acc>
cudaError_t launch(const void* r_g, const void* r_gx, const void* scale, void* const* out, int64_t rows,
                   int64_t channels, int64_t groups, int64_t count, cudaStream_t stream) {
  Args<acc> a;
  a.r_g = static_cast<const acc*>(r_g);
  a.r_gx = static_cast<const acc*>(r_gx);
  a.scale = static_cast<const acc*>(scale);
  a.k2 = static_cast<acc*>(out[0]);
  a.k3 = static_cast<acc*>(out[1]);
  a.sum_g = static_cast<acc*>(out[2]);
  a.sum_gx = static_cast<acc*>(out[3]);
  a.rows = rows;
  a.channels = channels;
  a.groups = groups;
  a.per_group = channels / groups;
  a.coef_blocks = a.per_group == 1 ? (rows * channels + kGroupThreads - 1) / kGroupThreads : rows * groups;
  a.neg_inv_count = static_cast<acc>(-1.0 / static_cast<double>(count));
  const int64_t blocks = a.coef_blocks + (channels + kGroupThreads - 1) / kGroupThreads;
  backward_coefficients_kernel<acc><<<static_cast<unsigned>(blocks), kGroupThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// Declared in backward_coefficients.cpp.  r_g, r_gx, scale: rows x channels; out: k2, k3 (rows x channels),
// sum_g, sum_gx (channels).
cudaError_t launch_backward_coefficients(bool double_, const void* r_g, const void* r_gx, const void* scale,
                                         void* const* out, int64_t rows, int64_t channels, int64_t groups,
                                         int64_t count, cudaStream_t stream) {
  if (rows == 0 || channels == 0) return cudaSuccess;
  return double_ ? launch<double>(r_g, r_gx, scale, out, rows, channels, groups, count, stream)
                 : launch<float>(r_g, r_gx, scale, out, rows, channels, groups, count, stream);
}

}  // namespace bc
}  // namespace fastgan
