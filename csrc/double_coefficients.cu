// CUDA kernel of norm_act_double_coefficients: the twin of
// fastgan/kernels/double_coefficients.py (math: fastgan/reference/norm_act_double.py,
// derived in docs/norm_act_double_backward.md).  No torch headers here: the
// binding, checks and allocations are in double_coefficients.cpp.
//
// The double backward of a fused norm layer needs, between its two passes over
// the big tensors, small coefficient tables computed from five sums per entry
// and their group sums -- about fifty tiny eager launches.  One block per
// (group g, row t) of the (T, C) tables does it: five block sums, then two more
// that depend on them, then the seven outputs of the group's channels.
// Deterministic (fixed shared-memory trees, no atomics).

#include <cstdint>

#include <cuda_runtime.h>

#include "block_reduce.cuh"

namespace fastgan {
namespace dc {

template <typename acc>
struct Args {
  const acc* r_g;
  const acc* r_gx;
  const acc* r_u;
  const acc* r_ux;
  const acc* r_gu;
  const acc* weight;  // (C,) or nullptr (ones)
  const acc* invstd;
  const acc* alpha;   // (C,) or nullptr (zeros)
  const acc* beta;    // (C,) or nullptr (zeros)
  acc* out[7];        // a2, a3, b1, b2, b3, b4, grad_w
  int64_t channels, per_group;
  acc m;
  bool batch_stats;
};

template <typename acc>
__global__ void __launch_bounds__(kGroupThreads) double_coefficients_kernel(Args<acc> a) {
  __shared__ acc red[kGroupThreads];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * a.per_group;
  const int64_t base = static_cast<int64_t>(blockIdx.y) * a.channels + first;
  auto weight = [&](int64_t j) { return a.weight != nullptr ? a.weight[first + j] : acc(1); };
  auto alpha = [&](int64_t j) { return a.alpha != nullptr ? a.alpha[first + j] : acc(0); };
  auto beta = [&](int64_t j) { return a.beta != nullptr ? a.beta[first + j] : acc(0); };
  if (!a.batch_stats) {
    for (int64_t j = threadIdx.x; j < a.per_group; j += kGroupThreads) {
      const int64_t e = base + j;
      const acc r = a.invstd[e];
      a.out[0][e] = beta(j);
      a.out[1][e] = alpha(j);
      a.out[2][e] = alpha(j) * r;
      a.out[3][e] = acc(0);
      a.out[4][e] = acc(0);
      a.out[5][e] = acc(0);
      a.out[6][e] = r * a.r_gu[e];
    }
    return;  // uniform across the block: no thread is left waiting at a barrier
  }
  acc s_u = 0, s_ux = 0, s_wg = 0, s_wgx = 0, s_wgu = 0;
  for (int64_t j = threadIdx.x; j < a.per_group; j += kGroupThreads) {
    const int64_t e = base + j;
    const acc w = weight(j);
    s_u += a.r_u[e];
    s_ux += a.r_ux[e];
    s_wg += w * a.r_g[e];
    s_wgx += w * a.r_gx[e];
    s_wgu += w * a.r_gu[e];
  }
  s_u = block_sum(s_u, red);
  s_ux = block_sum(s_ux, red);
  s_wg = block_sum(s_wg, red);
  s_wgx = block_sum(s_wgx, red);
  s_wgu = block_sum(s_wgu, red);
  const acc m = a.m;
  acc big_g = 0, big_gx = 0;  // sums of c_g * r_g and c_g * r_gx
  for (int64_t j = threadIdx.x; j < a.per_group; j += kGroupThreads) {
    const int64_t e = base + j;
    const acc c_g = alpha(j) - weight(j) * a.invstd[e] * s_ux / m;
    big_g += c_g * a.r_g[e];
    big_gx += c_g * a.r_gx[e];
  }
  big_g = block_sum(big_g, red);
  big_gx = block_sum(big_gx, red);
  const acc g_r = s_wgu - s_wg * s_u / m - s_wgx * s_ux / m;
  for (int64_t j = threadIdx.x; j < a.per_group; j += kGroupThreads) {
    const int64_t e = base + j;
    const acc r = a.invstd[e];
    const acc scale = weight(j) * r;
    const acc c_g = alpha(j) - scale * s_ux / m;
    const acc c_u = r * s_wgx / m;
    a.out[0][e] = beta(j) - scale * s_u / m;
    a.out[1][e] = c_g;
    a.out[2][e] = r * c_g;
    a.out[3][e] = -r * c_u;
    a.out[4][e] = -r * (big_g - c_u * s_u) / m;
    a.out[5][e] = -(r * (big_gx - c_u * s_ux) + r * r * g_r) / m;
    a.out[6][e] = r * (a.r_gu[e] - s_u * a.r_g[e] / m - s_ux * a.r_gx[e] / m);
  }
}

template <typename acc>
cudaError_t launch(const void* const* in, void* const* out, int64_t rows, int64_t channels, int64_t groups, int64_t m,
                   bool batch_stats, cudaStream_t stream) {
  Args<acc> a;
  a.r_g = static_cast<const acc*>(in[0]);
  a.r_gx = static_cast<const acc*>(in[1]);
  a.r_u = static_cast<const acc*>(in[2]);
  a.r_ux = static_cast<const acc*>(in[3]);
  a.r_gu = static_cast<const acc*>(in[4]);
  a.weight = static_cast<const acc*>(in[5]);
  a.invstd = static_cast<const acc*>(in[6]);
  a.alpha = static_cast<const acc*>(in[7]);
  a.beta = static_cast<const acc*>(in[8]);
  for (int i = 0; i < 7; ++i) a.out[i] = static_cast<acc*>(out[i]);
  a.channels = channels;
  a.per_group = channels / groups;
  a.m = static_cast<acc>(m);
  a.batch_stats = batch_stats;
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(rows));
  double_coefficients_kernel<acc><<<grid, kGroupThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// Declared in double_coefficients.cpp.  in: r_g, r_gx, r_u, r_ux, r_gu, weight, invstd, alpha, beta
// (weight / alpha / beta may be null); out: a2, a3, b1, b2, b3, b4, grad_w; all rows x channels.
cudaError_t launch_double_coefficients(bool double_, const void* const* in, void* const* out, int64_t rows,
                                       int64_t channels, int64_t groups, int64_t m, bool batch_stats,
                                       cudaStream_t stream) {
  if (rows == 0 || channels == 0) return cudaSuccess;
  return double_ ? launch<double>(in, out, rows, channels, groups, m, batch_stats, stream)
                 : launch<float>(in, out, rows, channels, groups, m, batch_stats, stream);
}

}  // namespace dc
}  // namespace fastgan
