// CUDA kernels of virtual_stats_affine and its backward: the twins of
// fastgan/kernels/virtual_stats_affine.py; the math is the reference's
// virtual_stats_affine in fastgan/reference/virtual_batch_norm.py.  No torch
// headers here: the binding, checks and allocations are in
// virtual_stats_affine.cpp, which declares the launchers below (keep them in sync).
//
// Virtual batch norm normalises example n with its own spatial moments mixed
// into the reference batch's, a = 1 / (N_ref + 1):
//   mu = ref_mean + a (own_mean - ref_mean),  s = ref_sq + a (own_sq - ref_sq),
//   r = 1 / sqrt(max(s - mu^2, 0) + eps),  scale = w r,  shift = b - mu scale.
// As plain PyTorch that is about a dozen (N, C) launches forward and twenty
// backward, per layer and call: more than the layer's two big passes at GAN
// batch sizes.  Here it is one launch each way.  Without own moments (the
// reference batch itself) mu = ref_mean, s = ref_sq and the tables are (C,).

#include <cstdint>

#include <cuda_runtime.h>

namespace fastgan {
namespace vsa {

// The mixed statistics of element i (channel c) and their variance before the clamp.
template <typename acc>
struct Mixed {
  acc mu, var, r;
};

template <typename acc>
__device__ __forceinline__ Mixed<acc> mixed(const acc* own_mean, const acc* own_sq, acc mr, acc sr, int64_t i,
                                            acc mix, acc eps) {
  acc mu = mr, s = sr;
  if (own_mean != nullptr) {
    mu = mr + mix * (own_mean[i] - mr);
    s = sr + mix * (own_sq[i] - sr);
  }
  const acc var = s - mu * mu;
  // "var < 0 ? 0 : var", not "var > 0 ? var : 0": a NaN must come through as the reference's clamp_min lets it
  return {mu, var, acc(1) / sqrt((var < acc(0) ? acc(0) : var) + eps)};
}

template <typename acc>
__global__ void virtual_stats_affine_kernel(const acc* __restrict__ own_mean, const acc* __restrict__ own_sq,
                                            const acc* __restrict__ ref_mean, const acc* __restrict__ ref_sq,
                                            const acc* __restrict__ weight, const acc* __restrict__ bias,
                                            acc* __restrict__ scale, acc* __restrict__ shift,
                                            acc* __restrict__ identity, int64_t total, int64_t channels, acc mix,
                                            acc eps) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t c = i % channels;
    const Mixed<acc> m = mixed(own_mean, own_sq, ref_mean[c], ref_sq[c], i, mix, eps);
    const acc sc = weight != nullptr ? weight[c] * m.r : m.r;
    scale[i] = sc;
    shift[i] = bias != nullptr ? bias[c] - m.mu * sc : -(m.mu * sc);
    identity[i] = acc(0);  // the normalisation's (mean, invstd) = (0, 1): the tables hold it all
    identity[total + i] = acc(1);
  }
}

// Blocks of kChannelLanes channels x kRowLanes row lanes: lane y walks rows y, y + kRowLanes, ... (in
// order), writes own_mean's and own_sq's gradients and keeps four partial sums, which lane 0 then adds
// in lane order (a fixed order: bit-reproducible, whatever the scheduling).  Spreading the rows over
// lanes keeps a short table (C = 64 channels, N = 128 examples) from being 64 threads walking 128
// rows of dependent loads.  Per element, with G = g_scale - mu g_shift the whole gradient of scale
// (shift = b - mu scale):
//   g_w += G r,  g_b += g_shift,  g_var = G w (-r^3 / 2) where var > 0 (the clamp's gradient),
//   g_mu = -scale g_shift - 2 mu g_var,  g_s = g_var;
//   own: a g_mu, a g_s;  reference: the sums of (1 - a) g_mu, (1 - a) g_s.
constexpr int kChannelLanes = 32;
constexpr int kRowLanes = 8;

template <typename acc>
__global__ void __launch_bounds__(kChannelLanes * kRowLanes) virtual_stats_affine_backward_kernel(
    const acc* __restrict__ g_scale, const acc* __restrict__ g_shift, const acc* __restrict__ own_mean,
    const acc* __restrict__ own_sq, const acc* __restrict__ ref_mean, const acc* __restrict__ ref_sq,
    const acc* __restrict__ weight, acc* __restrict__ g_own, acc* __restrict__ g_channel, int64_t rows,
    int64_t channels, acc mix, acc eps) {
  __shared__ acc partial[4][kRowLanes][kChannelLanes];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelLanes + threadIdx.x;
  const bool live = c < channels;  // (no early return: every lane meets the barrier)
  acc sum_mu = 0, sum_s = 0, sum_w = 0, sum_b = 0;
  if (live) {
    const acc mr = ref_mean[c], sr = ref_sq[c];
    const acc w = weight != nullptr ? weight[c] : acc(1);
    const int64_t total = rows * channels;
    for (int64_t n = threadIdx.y; n < rows; n += kRowLanes) {
      const int64_t i = n * channels + c;
      const Mixed<acc> m = mixed(own_mean, own_sq, mr, sr, i, mix, eps);
      const acc gh = g_shift[i];
      const acc g = g_scale[i] - m.mu * gh;
      sum_w += g * m.r;
      sum_b += gh;
      const acc g_var = m.var > acc(0) ? g * w * (acc(-0.5) * m.r * m.r * m.r) : acc(0);
      const acc g_mu = -(w * m.r) * gh - acc(2) * m.mu * g_var;
      if (g_own != nullptr) {
        g_own[i] = mix * g_mu;
        g_own[total + i] = mix * g_var;
      }
      sum_mu += g_mu;
      sum_s += g_var;
    }
  }
  partial[0][threadIdx.y][threadIdx.x] = sum_mu;
  partial[1][threadIdx.y][threadIdx.x] = sum_s;
  partial[2][threadIdx.y][threadIdx.x] = sum_w;
  partial[3][threadIdx.y][threadIdx.x] = sum_b;
  __syncthreads();
  if (!live || threadIdx.y != 0) return;
  acc sums[4] = {0, 0, 0, 0};
  for (int k = 0; k < 4; ++k)
    for (int lane = 0; lane < kRowLanes; ++lane) sums[k] += partial[k][lane][threadIdx.x];
  const acc keep = acc(1) - mix;
  g_channel[c] = keep * sums[0];
  g_channel[channels + c] = keep * sums[1];
  g_channel[2 * channels + c] = sums[2];
  g_channel[3 * channels + c] = sums[3];
}

constexpr int kThreads = 256;

template <typename acc>
cudaError_t launch_forward(const void* own_mean, const void* own_sq, const void* ref_mean, const void* ref_sq,
                           const void* weight, const void* bias, void* scale, void* shift, void* identity,
                           int64_t rows, int64_t channels, double mix, double eps, cudaStream_t stream) {
  const int64_t total = rows * channels;
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(wanted < 65535 ? wanted : 65535);  // grid-stride beyond
  virtual_stats_affine_kernel<acc><<<blocks, kThreads, 0, stream>>>(
      static_cast<const acc*>(own_mean), static_cast<const acc*>(own_sq), static_cast<const acc*>(ref_mean),
      static_cast<const acc*>(ref_sq), static_cast<const acc*>(weight), static_cast<const acc*>(bias),
      static_cast<acc*>(scale), static_cast<acc*>(shift), static_cast<acc*>(identity), total, channels,
      static_cast<acc>(mix), static_cast<acc>(eps));
  return cudaGetLastError();
}

template <typename acc>
cudaError_t launch_backward(const void* g_scale, const void* g_shift, const void* own_mean, const void* own_sq,
                            const void* ref_mean, const void* ref_sq, const void* weight, void* g_own,
                            void* g_channel, int64_t rows, int64_t channels, double mix, double eps,
                            cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((channels + kChannelLanes - 1) / kChannelLanes);
  virtual_stats_affine_backward_kernel<acc><<<blocks, dim3(kChannelLanes, kRowLanes), 0, stream>>>(
      static_cast<const acc*>(g_scale), static_cast<const acc*>(g_shift), static_cast<const acc*>(own_mean),
      static_cast<const acc*>(own_sq), static_cast<const acc*>(ref_mean), static_cast<const acc*>(ref_sq),
      static_cast<const acc*>(weight), static_cast<acc*>(g_own), static_cast<acc*>(g_channel), rows, channels,
      static_cast<acc>(mix), static_cast<acc>(eps));
  return cudaGetLastError();
}

// Declared in virtual_stats_affine.cpp.  double_ selects double (else float) for every table; own_mean and
// own_sq are (rows, C) or both null (rows = 1); scale, shift (rows, C); identity (2, rows, C).
cudaError_t launch_virtual_stats_affine(bool double_, const void* own_mean, const void* own_sq, const void* ref_mean,
                                        const void* ref_sq, const void* weight, const void* bias, void* scale,
                                        void* shift, void* identity, int64_t rows, int64_t channels, double mix,
                                        double eps, cudaStream_t stream) {
  if (rows == 0 || channels == 0) return cudaSuccess;
  return double_ ? launch_forward<double>(own_mean, own_sq, ref_mean, ref_sq, weight, bias, scale, shift, identity,
                                          rows, channels, mix, eps, stream)
                 : launch_forward<float>(own_mean, own_sq, ref_mean, ref_sq, weight, bias, scale, shift, identity,
                                         rows, channels, mix, eps, stream);
}

// Declared in virtual_stats_affine.cpp.  g_own (2, rows, C) or null (no own moments); g_channel (4, C).
cudaError_t launch_virtual_stats_affine_backward(bool double_, const void* g_scale, const void* g_shift,
                                                 const void* own_mean, const void* own_sq, const void* ref_mean,
                                                 const void* ref_sq, const void* weight, void* g_own,
                                                 void* g_channel, int64_t rows, int64_t channels, double mix,
                                                 double eps, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  return double_ ? launch_backward<double>(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, weight, g_own,
                                           g_channel, rows, channels, mix, eps, stream)
                 : launch_backward<float>(g_scale, g_shift, own_mean, own_sq, ref_mean, ref_sq, weight, g_own,
                                          g_channel, rows, channels, mix, eps, stream);
}

}  // namespace vsa
}  // namespace fastgan
