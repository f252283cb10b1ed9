// Host interface of the fused batch norm + activation kernels
// (csrc/batch_norm_act.cu), used by the bindings in csrc/batch_norm_act.cpp.
//
// Plain C++ with raw pointers: no torch headers, so the .cu file compiles
// without them.  Every big tensor of a call is viewed as (N, C, S) (S = the
// product of the spatial sizes) in one of two layouts:
//
//   Layout::kRows          element (n, c, s) at (n * C + c) * S + s
//                          (contiguous NC*, S > 1: a channel is N rows of S)
//   Layout::kChannelsLast  element (n, c, s) at (n * S + s) * C + c
//                          (channels-last, or S == 1: channels contiguous)
//
// Per-channel vectors (scale, shift, mean, invstd, coefficients, results)
// hold values of the accumulator type (float, or double when the big tensors
// are double) and come in two kinds, as in fastgan/kernels/batch_norm_act.py:
//
//   per_sample = false  (C,) vectors: one value per channel; reductions run
//                       over the channel's N*S elements (batch norm);
//   per_sample = true   (N, C) tables, row-major: one value per (n, c);
//                       reductions run over the S elements of (n, c)
//                       (group / instance / layer norm).
//
// Both are "rows" of a table of R = T*C entries, T = N (per sample) or 1;
// the entry of element (n, c, s) is (per_sample ? n*C + c : c).
//
// Pixel shuffle (Problem::upscale = r > 1, as the Triton kernels' UPSCALE):
// x is contiguous (N, C, H, W) (S = H*W) with C divisible by r^2, and the
// "y-side" tensors -- gy read by the gradient sums and the elementwise
// passes, the forward's y and the double pass's out2 (ggy) written -- are
// pixel_shuffle(., r) of x's layout, contiguous (N, C / r^2, H*r, W*r):
// x element (n, c, h, w), c = co*r*r + i*r + j, is y element
// (n, co, h*r + i, w*r + j), at n*C*S + co*r*r*S + (h*r + i)*W*r + w*r + j.
// x-side tensors (x, u, the backward's dx, the double pass's out = ggx) keep
// x's layout.  With S == 1 both offsets coincide (layout kChannelsLast).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgan {
namespace bna {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
enum class Layout : int { kRows = 0, kChannelsLast = 1 };

// The elementwise passes (same codes as the Triton kernels' MODE).
constexpr int kModeForward = 0;   // out = act(x * scale + shift)
constexpr int kModeBackward = 1;  // out = k1 * gz + k2 + k3 * xhat
constexpr int kModeDouble = 2;    // out = b1 * gz + b2 * u + b3 + b4 * xhat, out2 = s * (a1 * u + a2 + a3 * xhat)

struct Problem {
  DType dtype;
  Layout layout;
  int64_t N, C, S;  // N * S > 0 and C > 0 when a launcher is called
  bool per_sample;  // (T, C) tables instead of (C,) vectors
  // T: the tables' rows when per_sample, 0 meaning N (per-sample statistics); any T dividing N makes T
  // segments of N / T consecutive samples (batch statistics per segment).  Not with upscale > 1.
  int64_t table_rows = 0;
  int sm_count;     // multiprocessors of the device (sizes the grids)
  int64_t upscale = 1;    // r: y-side tensors pixel-shuffled when > 1 (see above)
  int64_t H = 1, W = 1;   // x's height and width (H * W == S) when upscale > 1
};

// Per-entry inputs of the gradient sums and the elementwise passes (R values each).
struct ChannelParams {
  const void* scale = nullptr;
  const void* shift = nullptr;
  const void* mean = nullptr;    // unused by kModeForward
  const void* invstd = nullptr;  // unused by kModeForward
  // kModeBackward: coef[0..2] = k1, k2, k3; kModeDouble: a1, a2, a3, b1, b2, b3, b4.
  const void* coef[7] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  double slope = 0.0;  // act'(z) = 1 if z > 0 else slope
};

// Partials per table entry the reductions use: their workspace is [K, P, R]
// accumulator values (K = 3 for the moments, 2 or 5 for the gradient sums).
int64_t reduce_partials(const Problem& pr);

// channel_stats_affine's epilogue (csrc/stats_affine.cuh): per channel, from the
// mean and biased variance, invstd / scale / shift and the running-stat update.
// (C,) vectors of the accumulator type; weight, bias and running_* may be null.
struct AffineParams {
  const void* weight = nullptr;
  const void* bias = nullptr;
  void* running_mean = nullptr;
  void* running_var = nullptr;
  void* invstd = nullptr;
  void* scale = nullptr;
  void* shift = nullptr;
  double eps = 0.0, momentum = 0.0, unbias = 1.0;  // unbias = count / (count - 1)
};

// Per entry (Welford / Chan; deterministic): mean and, when `variance`, the
// biased variance M2 / count, else M2 (the sum of squared deviations).
// channel_stats: per_sample = false, variance = true; row_moments: true, false.
// `affine` (channel_stats_affine; per_sample = false and variance only): the
// merge kernel also writes its outputs, in the same launch.
cudaError_t launch_moments(const Problem& pr, const void* x, int64_t partials, void* work, void* mean,
                           void* second, bool variance, cudaStream_t stream, const AffineParams* affine = nullptr);

// Sums per entry, gz = gy * act'(x * scale + shift), xhat = (x - mean) * invstd
// (gy y-side, x and u x-side):
//   out[0] = sum gz, out[1] = sum gz * xhat;
//   when double_: out[2] = sum u, out[3] = sum u * xhat, out[4] = sum gz * u.
cudaError_t launch_grad_sums(const Problem& pr, bool double_, const void* gy, const void* x, const void* u,
                             const ChannelParams& params, int64_t partials, void* work, void* const* out,
                             cudaStream_t stream);

// One elementwise pass (kMode*): out and out2 have x's layout, except the
// y-side ones when upscale > 1 (kModeForward's out, kModeDouble's out2).
cudaError_t launch_pointwise(const Problem& pr, int mode, const void* x, const void* gy, const void* u,
                             void* out, void* out2, const ChannelParams& params, cudaStream_t stream);

}  // namespace bna
}  // namespace fastgan
