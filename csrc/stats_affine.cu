// CUDA kernels of stats_affine and group_stats_affine: the twins of
// fastgan/kernels/stats_affine.py (the math is the references' stats_affine in
// fastgan/reference/batch_norm_act.py and group_stats_affine in
// fastgan/reference/group_norm_act.py).  No torch headers
// here: the binding, checks and allocations are in stats_affine.cpp, which
// declares the launcher below (keep the two in sync).
//
// One thread per channel turns the statistics into everything the fused layer's
// elementwise pass needs, and folds the running-stat update into the same launch:
//   invstd = 1 / sqrt(var + eps),  scale = w * invstd,  shift = b - mean * scale,
//   running_mean += momentum * (mean - running_mean),
//   running_var  += momentum * (var * unbias - running_var).
// In eager PyTorch these are six small launches per layer; at small batch a GAN
// iteration is launch-bound, so they cost more than the normalisation itself.
//
// group_stats_affine: one block per (sample n, group g) merges the group's
// per-(n, c) moments (Chan, equal counts: mean of the means; M2 = sum M2 +
// spatial * sum (mean_c - mean)^2) by fixed shared-memory trees (deterministic)
// and writes the (N, C) tables mean, invstd, scale = w * invstd, shift = b - mean * scale.

#include <cstdint>

#include <cuda_runtime.h>

#include "block_reduce.cuh"
#include "stats_affine.cuh"

namespace fastgan {
namespace sa {

template <typename acc>
// Thread c walks the rows of (rows, C) statistics in order (segments of one batch: the running stats
// are updated once per row, as the layer run on each segment in turn would).
__global__ void stats_affine_kernel(const acc* __restrict__ mean, const acc* __restrict__ var, AffineOut<acc> out,
                                    int64_t channels, int64_t rows) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  for (int64_t e = c; e < rows * channels; e += channels) write_affine(out, e, c, mean[e], var[e]);
}

template <typename acc>
cudaError_t launch(const void* mean, const void* var, const void* weight, const void* bias, void* running_mean,
                   void* running_var, void* invstd, void* scale, void* shift, int64_t channels, int64_t rows,
                   double eps, double momentum, double unbias, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((channels + kThreads - 1) / kThreads);
  stats_affine_kernel<acc><<<blocks, kThreads, 0, stream>>>(
      static_cast<const acc*>(mean), static_cast<const acc*>(var),
      affine_out<acc>(weight, bias, running_mean, running_var, invstd, scale, shift, eps, momentum, unbias),
      channels, rows);
  return cudaGetLastError();
}

template <typename acc>
__global__ void __launch_bounds__(kGroupThreads) group_stats_affine_kernel(
    const acc* __restrict__ row_mean, const acc* __restrict__ row_m2, const acc* __restrict__ weight,
    const acc* __restrict__ bias, acc* __restrict__ mean_t, acc* __restrict__ invstd_t, acc* __restrict__ scale_t,
    acc* __restrict__ shift_t, int64_t channels, int64_t per_group, acc spatial, acc eps) {
  __shared__ acc red[kGroupThreads];
  const int64_t first = static_cast<int64_t>(blockIdx.y) * per_group;  // the group's first channel
  const int64_t base = static_cast<int64_t>(blockIdx.x) * channels + first;
  acc sum = 0;
  for (int64_t j = threadIdx.x; j < per_group; j += kGroupThreads) sum += row_mean[base + j];
  const acc mean = block_sum(sum, red) / static_cast<acc>(per_group);
  acc m2 = 0, dev = 0;
  for (int64_t j = threadIdx.x; j < per_group; j += kGroupThreads) {
    const acc d = row_mean[base + j] - mean;
    dev += d * d;
    m2 += row_m2[base + j];
  }
  const acc m2_total = block_sum(m2, red);
  const acc dev_total = block_sum(dev, red);
  const acc var = (m2_total + spatial * dev_total) / (spatial * static_cast<acc>(per_group));
  const acc r = acc(1) / sqrt(var + eps);
  for (int64_t j = threadIdx.x; j < per_group; j += kGroupThreads) {
    const int64_t c = first + j;
    const acc s = weight != nullptr ? weight[c] * r : r;
    mean_t[base + j] = mean;
    invstd_t[base + j] = r;
    scale_t[base + j] = s;
    shift_t[base + j] = bias != nullptr ? bias[c] - mean * s : -(mean * s);
  }
}

template <typename acc>
cudaError_t launch_group(const void* row_mean, const void* row_m2, const void* weight, const void* bias,
                         void* const* out, int64_t samples, int64_t channels, int64_t groups, int64_t spatial,
                         double eps, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(samples), static_cast<unsigned>(groups));
  group_stats_affine_kernel<acc><<<grid, kGroupThreads, 0, stream>>>(
      static_cast<const acc*>(row_mean), static_cast<const acc*>(row_m2), static_cast<const acc*>(weight),
      static_cast<const acc*>(bias), static_cast<acc*>(out[0]), static_cast<acc*>(out[1]),
      static_cast<acc*>(out[2]), static_cast<acc*>(out[3]), channels, channels / groups,
      static_cast<acc>(spatial), static_cast<acc>(eps));
  return cudaGetLastError();
}

// Declared in stats_affine.cpp.  out: mean, invstd, scale, shift tables, (N, C) each.
cudaError_t launch_group_stats_affine(bool double_, const void* row_mean, const void* row_m2, const void* weight,
                                      const void* bias, void* const* out, int64_t samples, int64_t channels,
                                      int64_t groups, int64_t spatial, double eps, cudaStream_t stream) {
  if (samples == 0 || channels == 0) return cudaSuccess;
  return double_ ? launch_group<double>(row_mean, row_m2, weight, bias, out, samples, channels, groups, spatial,
                                        eps, stream)
                 : launch_group<float>(row_mean, row_m2, weight, bias, out, samples, channels, groups, spatial,
                                       eps, stream);
}

// Declared in stats_affine.cpp.  double_ selects double (else float) for every vector.
cudaError_t launch_stats_affine(bool double_, const void* mean, const void* var, const void* weight,
                                const void* bias, void* running_mean, void* running_var, void* invstd, void* scale,
                                void* shift, int64_t channels, int64_t rows, double eps, double momentum,
                                double unbias, cudaStream_t stream) {
  if (channels == 0 || rows == 0) return cudaSuccess;
  return double_ ? launch<double>(mean, var, weight, bias, running_mean, running_var, invstd, scale, shift,
                                  channels, rows, eps, momentum, unbias, stream)
                 : launch<float>(mean, var, weight, bias, running_mean, running_var, invstd, scale, shift,
                                 channels, rows, eps, momentum, unbias, stream);
}

}  // namespace sa
}  // namespace fastgan
