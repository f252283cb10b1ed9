// CUDA kernel of stats_affine: the twin of fastgan/kernels/stats_affine.py (the
// math is fastgan/reference/batch_norm_act.py's stats_affine).  No torch headers
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

#include <cstdint>

#include <cuda_runtime.h>

namespace fastgan {
namespace sa {

template <typename acc>
__global__ void stats_affine_kernel(const acc* __restrict__ mean, const acc* __restrict__ var,
                                    const acc* __restrict__ weight, const acc* __restrict__ bias,
                                    acc* __restrict__ running_mean, acc* __restrict__ running_var,
                                    acc* __restrict__ invstd, acc* __restrict__ scale, acc* __restrict__ shift,
                                    int64_t channels, acc eps, acc momentum, acc unbias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const acc m = mean[c];
  const acc v = var[c];
  // 1 / sqrt, each correctly rounded (CUDA's rsqrt is approximate); torch.rsqrt of the reference may
  // differ from it by an ulp.
  const acc r = acc(1) / sqrt(v + eps);
  const acc s = weight != nullptr ? weight[c] * r : r;
  invstd[c] = r;
  scale[c] = s;
  shift[c] = bias != nullptr ? bias[c] - m * s : -(m * s);
  if (running_mean != nullptr) running_mean[c] += momentum * (m - running_mean[c]);
  if (running_var != nullptr) running_var[c] += momentum * (v * unbias - running_var[c]);
}

template <typename acc>
cudaError_t launch(const void* mean, const void* var, const void* weight, const void* bias, void* running_mean,
                   void* running_var, void* invstd, void* scale, void* shift, int64_t channels, double eps,
                   double momentum, double unbias, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((channels + kThreads - 1) / kThreads);
  stats_affine_kernel<acc><<<blocks, kThreads, 0, stream>>>(
      static_cast<const acc*>(mean), static_cast<const acc*>(var), static_cast<const acc*>(weight),
      static_cast<const acc*>(bias), static_cast<acc*>(running_mean), static_cast<acc*>(running_var),
      static_cast<acc*>(invstd), static_cast<acc*>(scale), static_cast<acc*>(shift), channels,
      static_cast<acc>(eps), static_cast<acc>(momentum), static_cast<acc>(unbias));
  return cudaGetLastError();
}

// Declared in stats_affine.cpp.  double_ selects double (else float) for every vector.
cudaError_t launch_stats_affine(bool double_, const void* mean, const void* var, const void* weight,
                                const void* bias, void* running_mean, void* running_var, void* invstd, void* scale,
                                void* shift, int64_t channels, double eps, double momentum, double unbias,
                                cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  return double_ ? launch<double>(mean, var, weight, bias, running_mean, running_var, invstd, scale, shift,
                                  channels, eps, momentum, unbias, stream)
                 : launch<float>(mean, var, weight, bias, running_mean, running_var, invstd, scale, shift,
                                 channels, eps, momentum, unbias, stream);
}

}  // namespace sa
}  // namespace fastgan
