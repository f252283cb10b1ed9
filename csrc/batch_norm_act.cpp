// torch.ops.fastgan.* bindings of the fused batch norm + activation kernels
// (csrc/batch_norm_act.cu).  Names, argument order and semantics are those of
// the Triton backend, fastgan/kernels/batch_norm_act.py, so that the autograd
// Functions of fastgan/ops/_norm_act.py (batch, group, instance and layer norm
// + activation) drive either backend:
//
//   channel_stats(x) -> (mean, var)                  per channel, (C,)
//   row_moments(x) -> (mean, m2)                      per (n, c) over spatial, (N, C)
//   segment_stats(x, T) -> (mean, var)                per (segment, c) over T segments of N / T samples, (T, C)
//   row_stats_affine(x, weight?, bias?, groups, eps) -> (mean, invstd, scale, shift)
//       row_moments, then group_stats_affine (csrc/stats_affine.cpp) of them, (N, C) tables
//   channel_stats_affine(x, weight?, bias?, running_mean?, running_var?, momentum, eps)
//       -> (mean, var, invstd, scale, shift)           channel_stats + stats_affine in one merge kernel
//   norm_act_forward(x, scale, shift, act, slope, upscale=1) -> y
//   norm_act_backward_reduce(gy, x, scale, shift, mean, invstd, act, slope, upscale=1) -> (sum gz, sum gz*xhat)
//   norm_act_backward_reduce_coefficients(gy, x, scale, shift, mean, invstd, act, slope, groups, count,
//                                         upscale=1) -> (sum gz, sum gz*xhat, k2, k3, sum_g, sum_gx)
//       the reduction, then norm_act_backward_coefficients (csrc/backward_coefficients.cpp) of its sums
//   norm_act_backward_apply(gy, x, scale, shift, mean, invstd, k1, k2, k3, act, slope, upscale=1) -> dx
//   norm_act_double_reduce(u, gy, x, scale, shift, mean, invstd, act, slope, upscale=1) -> 5 sums
//   norm_act_double_apply(u, gy, x, scale, shift, mean, invstd, a1, a2, a3, b1, b2, b3, b4, act, slope,
//                         upscale=1) -> (ggx, ggy)
//
// Big tensors (x, gy, u) are (N, C, *spatial), float32 / float16 / bfloat16 /
// float64, all with one dtype and x's layout (contiguous, or channels-last for
// 4-D / 5-D).  The per-channel arguments are float32 (float64 for float64 x)
// and all of one shape, scale's: (C,) vectors (batch norm: reductions over
// (N, *spatial)) or (N, C) tables (group / instance / layer norm: per (n, c),
// reductions over *spatial); reductions return that shape.  Elementwise
// outputs have x's dtype and strides.
//
// upscale = r > 1 (pixel shuffle; the Triton kernels' UPSCALE): x must be
// contiguous (N, C, H, W) with C divisible by r^2, and the "y-side" tensors --
// y of the forward, gy, ggy of double_apply -- are contiguous
// (N, C / r^2, H*r, W*r) = pixel_shuffle(., r) of x's layout; x-side ones
// (x, u, dx, ggx) keep x's.  Here: checks, allocation (the reductions'
// partials workspace too) and the launch on the current stream.
// No host synchronisation and no data-dependent allocation (graph capturable).

#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include "check.h"
#include "host_utils.h"

#include "backward_coefficients.h"
#include "batch_norm_act.h"
#include "stats_affine.h"

namespace fastgan {
namespace {

using at::Tensor;
namespace bna = fastgan::bna;

// How x (and so every big tensor of the call) is laid out.
struct Geometry {
  bna::Problem problem;
  c10::MemoryFormat format;  // the memory format every big tensor must be contiguous in
};

bna::DType dtype_code(const char* op, const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return bna::DType::kFloat32;
    case at::kHalf: return bna::DType::kFloat16;
    case at::kBFloat16: return bna::DType::kBFloat16;
    case at::kDouble: return bna::DType::kFloat64;
    default: break;
  }
  FASTGAN_CHECK_TYPE(false, op, ": x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  return bna::DType::kFloat32;  // unreachable
}


Geometry geometry(const char* op, const Tensor& x) {
  FASTGAN_CHECK(x.defined(), op, ": x is undefined");
  FASTGAN_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got a tensor on ", x.device());
  const bna::DType dtype = dtype_code(op, x);
  FASTGAN_CHECK_VALUE(x.dim() >= 2, op, ": x must have shape (N, C, *spatial), got shape ", x.sizes());
  const int64_t n = x.size(0), c = x.size(1);
  int64_t s = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s *= x.size(d);
  FASTGAN_CHECK_VALUE(c <= INT32_MAX, op, ": at most 2^31 - 1 channels are supported, got ", c);
  Geometry g;
  g.problem.dtype = dtype;
  g.problem.N = n;
  g.problem.C = c;
  g.problem.S = s;
  g.problem.per_sample = false;
  g.problem.sm_count = 0;
  if (x.is_contiguous()) {
    // (n, c, s) at (n*C + c)*S + s; with S == 1 that is n*C + c: channels contiguous.
    g.format = c10::MemoryFormat::Contiguous;
    g.problem.layout = s == 1 ? bna::Layout::kChannelsLast : bna::Layout::kRows;
  } else if (x.dim() == 4 && x.is_contiguous(c10::MemoryFormat::ChannelsLast)) {
    g.format = c10::MemoryFormat::ChannelsLast;
    g.problem.layout = bna::Layout::kChannelsLast;
  } else if (x.dim() == 5 && x.is_contiguous(c10::MemoryFormat::ChannelsLast3d)) {
    g.format = c10::MemoryFormat::ChannelsLast3d;
    g.problem.layout = bna::Layout::kChannelsLast;
  } else {
    FASTGAN_CHECK_VALUE(false, op, ": x must be contiguous or channels-last, got shape ", x.sizes(), " and strides ",
                        x.strides());
  }
  return g;
}

// A big tensor of the call other than x: same device, dtype, shape and layout.
void check_like_x(const char* op, const char* name, const Tensor& t, const Tensor& x, const Geometry& g) {
  FASTGAN_CHECK(t.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " must be on ", x.device(),
                " like x, got a tensor on ", t.device());
  FASTGAN_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                     ", got ", t.scalar_type());
  FASTGAN_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(), ", got ",
                      t.sizes());
  FASTGAN_CHECK_VALUE(t.is_contiguous(g.format), op, ": ", name, " must have x's layout (", g.format,
                      "), got strides ", t.strides(), " for x's ", x.strides());
}

// Checks upscale and, when > 1, x for the pixel shuffle; sets g.problem.upscale, H, W.
void set_upscale(const char* op, Geometry& g, const Tensor& x, int64_t upscale) {
  FASTGAN_CHECK_VALUE(upscale >= 1 && upscale <= INT32_MAX, op, ": upscale must be a positive int, got ", upscale);
  g.problem.upscale = upscale;
  if (upscale == 1) return;
  FASTGAN_CHECK_VALUE(x.dim() == 4 && x.is_contiguous(), op, ": upscale = ", upscale,
                      " (pixel shuffle) needs x with shape (N, C, H, W), got shape ", x.sizes(),
                      " and strides ", x.strides());
  FASTGAN_CHECK_VALUE(x.size(1) % (upscale * upscale) == 0, op, ": upscale = ", upscale, " needs x's channels (",
                      x.size(1), ") divisible by upscale^2 = ", upscale * upscale, ", got x of shape ", x.sizes());
  g.problem.H = x.size(2);
  g.problem.W = x.size(3);
}

// The pixel-shuffle (upscale > 1) kernels read x, u and gy as contiguous NCHW.  Eager callers pass them so;
// under torch.compile Inductor may hand these ops a channels-last copy instead (its layout optimisation of
// convolution outputs, e.g. the x a backward saved), which is made contiguous here rather than refused.
Tensor upscale_input(const Tensor& t, int64_t upscale) { return upscale > 1 ? t.contiguous() : t; }

// The shape of the y-side tensors: x's, or (N, C / r^2, H*r, W*r) when upscale = r > 1.
std::vector<int64_t> y_shape(const Tensor& x, const Geometry& g) {
  const int64_t r = g.problem.upscale;
  if (r == 1) return x.sizes().vec();
  return {x.size(0), x.size(1) / (r * r), x.size(2) * r, x.size(3) * r};
}

// A y-side input (gy): like x when upscale == 1, else contiguous with y_shape, x's device and dtype.
void check_y_side(const char* op, const char* name, const Tensor& t, const Tensor& x, const Geometry& g) {
  const int64_t r = g.problem.upscale;
  if (r == 1) {
    check_like_x(op, name, t, x, g);
    return;
  }
  FASTGAN_CHECK(t.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " must be on ", x.device(),
                " like x, got a tensor on ", t.device());
  FASTGAN_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                     ", got ", t.scalar_type());
  const std::vector<int64_t> shape = y_shape(x, g);
  FASTGAN_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have the pixel-shuffled shape ",
                      at::IntArrayRef(shape), " of x ", x.sizes(), " with upscale = ", r, ", got ", t.sizes());
  FASTGAN_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous with upscale = ", r, ", got strides ",
                      t.strides());
}

// Rows of a call's (T, C) tables: N per sample; T < N dividing N splits the batch into T segments of
// N / T consecutive samples (batch statistics per segment).
int64_t table_rows(const Geometry& g) { return g.problem.table_rows > 0 ? g.problem.table_rows : g.problem.N; }

// Whether the per-channel arguments are (T, C) tables (scale decides, as in the
// Triton kernels; T = its rows); sets g.problem.per_sample and table_rows.
void set_table_kind(const char* op, Geometry& g, const Tensor& scale) {
  FASTGAN_CHECK(scale.defined(), op, ": scale is undefined");
  g.problem.per_sample = scale.dim() == 2;
  if (g.problem.per_sample) {
    const int64_t t = scale.size(0), n = g.problem.N;
    FASTGAN_CHECK_VALUE(t == n || (t >= 1 && n % t == 0), op, ": scale must have one row per sample of x (", n,
                        ") or per segment of the batch (a number of rows dividing ", n, "), got shape ",
                        scale.sizes());
    FASTGAN_CHECK_VALUE(t == n || g.problem.upscale == 1, op, ": tables of ", t, " rows (segments of the batch) "
                        "are not supported with upscale = ", g.problem.upscale);
    g.problem.table_rows = t;
    FASTGAN_CHECK_VALUE(t * g.problem.C <= INT32_MAX, op, ": at most 2^31 - 1 table entries are "
                        "supported, got ", t, " rows x C = ", g.problem.C);
  }
}

// A per-channel argument: a (C,) vector or, with tables, (T, C) like scale,
// in the accumulator dtype; returned contiguous.
Tensor channel_vector(const char* op, const char* name, const Tensor& t, const Tensor& x, const Geometry& g) {
  FASTGAN_CHECK(t.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " must be on ", x.device(),
                " like x, got a tensor on ", t.device());
  const at::ScalarType acc = acc_type(x);
  FASTGAN_CHECK_TYPE(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", x.scalar_type(),
                     " x, got ", t.scalar_type());
  const int64_t n = g.problem.N, c = g.problem.C;
  if (g.problem.per_sample) {
    const int64_t rows = table_rows(g);
    FASTGAN_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == c, op, ": ", name, " must have shape (",
                        rows, ", ", c, ") like scale (one value per ", rows == n ? "sample" : "segment",
                        " and channel of x), got ", t.sizes());
  } else {
    FASTGAN_CHECK_VALUE(t.dim() == 1 && t.size(0) == c, op, ": ", name, " must have shape (", c,
                        ",) like scale (one value per channel of x), got ", t.sizes());
  }
  return t.contiguous();
}

// The shape of a reduction's results: scale's.
std::vector<int64_t> table_shape(const Geometry& g) {
  if (g.problem.per_sample) return {table_rows(g), g.problem.C};
  return {g.problem.C};
}

// A pointwise or gradient-sum kernel's per-entry tables, checked (channel_vector) and dense: scale, shift,
// then (when given) mean, invstd and the mode's coefficients.  `held` keeps the dense tables alive until
// the launch.
bna::ChannelParams channel_params(const char* op, const Geometry& g, const Tensor& x,
                                  std::initializer_list<std::pair<const char*, const Tensor*>> tables, double slope,
                                  std::vector<Tensor>& held) {
  bna::ChannelParams prm;
  const void** slots[11] = {&prm.scale, &prm.shift, &prm.mean, &prm.invstd};
  for (int i = 0; i < 7; ++i) slots[4 + i] = &prm.coef[i];
  int i = 0;
  for (const auto& [name, t] : tables) {
    held.push_back(channel_vector(op, name, *t, x, g));
    *slots[i++] = held.back().data_ptr();
  }
  prm.slope = slope;
  return prm;
}

void check_act(const char* op, int64_t act) {
  FASTGAN_CHECK_VALUE(act >= 0 && act <= 2, op, ": act must be 0 (identity), 1 (relu) or 2 (leaky_relu), got ",
                      act);
}

bool empty_problem(const Geometry& g) { return g.problem.N * g.problem.S == 0 || g.problem.C == 0; }

// Runs on x's device and current stream.
struct Launch {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit Launch(const Tensor& x) : guard(x.device()), stream(c10::cuda::getCurrentCUDAStream(x.get_device())) {}
};

// Moments of x per channel (segments -1: batch, (C,)) or per (segment, c) over segments of N / segments
// consecutive samples ((segments, C) tables; N segments: per (n, c)): mean and var (variance) or M2.
std::tuple<Tensor, Tensor> moments(const char* op, const Tensor& x, int64_t segments, bool variance) {
  Geometry g = geometry(op, x);
  g.problem.per_sample = segments >= 0;
  g.problem.table_rows = segments;  // (0 with an empty batch: table_rows() is then N = 0 too)
  if (g.problem.per_sample) {
    FASTGAN_CHECK_VALUE(segments * g.problem.C <= INT32_MAX, op, ": at most 2^31 - 1 (segment, c) entries are "
                        "supported, got ", segments, " segments x C = ", g.problem.C);
  }
  Launch run(x);
  const auto opts = x.options().dtype(acc_type(x));
  const std::vector<int64_t> shape = table_shape(g);
  if (empty_problem(g)) return {at::zeros(shape, opts), at::zeros(shape, opts)};
  g.problem.sm_count = sm_count(x.get_device());
  const int64_t partials = bna::reduce_partials(g.problem);
  const int64_t entries = g.problem.per_sample ? segments * g.problem.C : g.problem.C;
  Tensor work = at::empty({3, partials, entries}, opts);
  Tensor mean = at::empty(shape, opts);
  Tensor second = at::empty(shape, opts);
  C10_CUDA_CHECK(bna::launch_moments(g.problem, x.data_ptr(), partials, work.data_ptr(), mean.data_ptr(),
                                     second.data_ptr(), variance, run.stream));
  return {mean, second};
}

std::tuple<Tensor, Tensor> channel_stats(const Tensor& x) {
  return moments("fastgan::channel_stats", x, /*segments=*/-1, /*variance=*/true);
}

// A (C,) input of channel_stats_affine, or nullptr when absent; running stats are updated in place, so
// they must be contiguous already (channel_vector would copy them).
void* optional_vector(const char* op, const char* name, const c10::optional<Tensor>& t, const Tensor& x,
                      const Geometry& g, bool in_place) {
  if (!t.has_value() || !t->defined()) return nullptr;
  FASTGAN_CHECK_VALUE(!in_place || t->is_contiguous(), op, ": ", name, " must be contiguous (updated in place)");
  return channel_vector(op, name, *t, x, g).data_ptr();
}

// channel_stats, then from the statistics in the merge kernel itself (stats_affine's math, one launch
// fewer): invstd, scale, shift, and the running stats updated in place when given.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> channel_stats_affine(
    const Tensor& x, const c10::optional<Tensor>& weight, const c10::optional<Tensor>& bias,
    const c10::optional<Tensor>& running_mean, const c10::optional<Tensor>& running_var, double momentum,
    double eps) {
  const char* op = "fastgan::channel_stats_affine";
  Geometry g = geometry(op, x);
  g.problem.per_sample = false;
  // weight and bias are read by the kernel: keep the (possibly copied) contiguous tensors alive
  const Tensor w = weight.has_value() && weight->defined() ? channel_vector(op, "weight", *weight, x, g) : Tensor();
  const Tensor b = bias.has_value() && bias->defined() ? channel_vector(op, "bias", *bias, x, g) : Tensor();
  bna::AffineParams affine;
  affine.weight = w.defined() ? w.data_ptr() : nullptr;
  affine.bias = b.defined() ? b.data_ptr() : nullptr;
  affine.running_mean = optional_vector(op, "running_mean", running_mean, x, g, true);
  affine.running_var = optional_vector(op, "running_var", running_var, x, g, true);
  const int64_t count = g.problem.N * g.problem.S;
  const bool updates = affine.running_mean != nullptr || affine.running_var != nullptr;
  FASTGAN_CHECK_VALUE(!updates || count > 1, op, ": x must have more than 1 value per channel to update running "
                      "stats, got ", count);
  FASTGAN_CHECK_VALUE(g.problem.C == 0 || count > 0, op, ": x has no values per channel (shape ", x.sizes(), ")");
  affine.eps = eps;
  affine.momentum = momentum;
  affine.unbias = updates ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  Launch run(x);
  const auto opts = x.options().dtype(acc_type(x));
  Tensor mean = at::empty({g.problem.C}, opts), var = at::empty({g.problem.C}, opts);
  Tensor invstd = at::empty({g.problem.C}, opts), scale = at::empty({g.problem.C}, opts);
  Tensor shift = at::empty({g.problem.C}, opts);
  if (g.problem.C == 0) return {mean, var, invstd, scale, shift};
  affine.invstd = invstd.data_ptr();
  affine.scale = scale.data_ptr();
  affine.shift = shift.data_ptr();
  g.problem.sm_count = sm_count(x.get_device());
  const int64_t partials = bna::reduce_partials(g.problem);
  Tensor work = at::empty({3, partials, g.problem.C}, opts);
  C10_CUDA_CHECK(bna::launch_moments(g.problem, x.data_ptr(), partials, work.data_ptr(), mean.data_ptr(),
                                     var.data_ptr(), /*variance=*/true, run.stream, &affine));
  return {mean, var, invstd, scale, shift};
}

std::tuple<Tensor, Tensor> row_moments(const Tensor& x) {
  return moments("fastgan::row_moments", x, /*segments=*/x.dim() > 0 ? x.size(0) : -1, /*variance=*/false);
}

// Per-(segment, c) mean and biased variance over `segments` equal segments of consecutive samples: batch
// norm's statistics of each segment alone, (segments, C) tables (stats_affine takes them).
std::tuple<Tensor, Tensor> segment_stats(const Tensor& x, int64_t segments) {
  const char* op = "fastgan::segment_stats";
  FASTGAN_CHECK_VALUE(x.dim() >= 2, op, ": x must have shape (N, C, *spatial), got shape ", x.sizes());
  FASTGAN_CHECK_VALUE(segments >= 1 && x.size(0) % segments == 0, op, ": segments must be a positive divisor of "
                      "x's batch size ", x.size(0), ", got ", segments);
  return moments(op, x, segments, /*variance=*/true);
}

// row_moments, then group_stats_affine of them, in one call: the statistics of a group / instance /
// layer norm forward as (N, C) tables (mean, invstd, scale, shift).
std::tuple<Tensor, Tensor, Tensor, Tensor> row_stats_affine(const Tensor& x, const c10::optional<Tensor>& weight,
                                                            const c10::optional<Tensor>& bias, int64_t groups,
                                                            double eps) {
  auto [row_mean, row_m2] = moments("fastgan::row_stats_affine", x, /*segments=*/x.dim() > 0 ? x.size(0) : -1,
                                    /*variance=*/false);
  const int64_t rows = x.size(0) * x.size(1);
  // weight and bias as the kernel reads them: dense (a strided view, e.g. a slice of a bigger buffer, is
  // copied), as channel_stats_affine takes them
  const auto dense = [](const c10::optional<Tensor>& t) {
    return t.has_value() && t->defined() ? c10::optional<Tensor>(t->contiguous()) : t;
  };
  return sa::group_stats_affine(row_mean, row_m2, dense(weight), dense(bias), groups,
                                rows > 0 ? x.numel() / rows : 0, eps);
}

Tensor norm_act_forward(const Tensor& x_arg, const Tensor& scale, const Tensor& shift, int64_t act, double slope,
                        int64_t upscale) {
  const char* op = "fastgan::norm_act_forward";
  const Tensor x = upscale_input(x_arg, upscale);
  Geometry g = geometry(op, x);
  set_upscale(op, g, x, upscale);
  check_act(op, act);
  set_table_kind(op, g, scale);
  std::vector<Tensor> held;
  const bna::ChannelParams prm = channel_params(op, g, x, {{"scale", &scale}, {"shift", &shift}}, slope, held);
  Launch run(x);
  Tensor y = upscale == 1 ? at::empty_like(x) : at::empty(y_shape(x, g), x.options());
  if (empty_problem(g)) return y;
  g.problem.sm_count = sm_count(x.get_device());
  C10_CUDA_CHECK(bna::launch_pointwise(g.problem, bna::kModeForward, x.data_ptr(), nullptr, nullptr, y.data_ptr(),
                                       nullptr, prm, run.stream));
  return y;
}

// The gradient sums of norm_act_backward_reduce (u undefined) and norm_act_double_reduce.
std::vector<Tensor> grad_sums(const char* op, const Tensor* u_arg, const Tensor& gy_arg, const Tensor& x_arg,
                              const Tensor& scale, const Tensor& shift, const Tensor& mean, const Tensor& invstd,
                              int64_t act, double slope, int64_t upscale) {
  const Tensor x = upscale_input(x_arg, upscale), gy = upscale_input(gy_arg, upscale);
  const Tensor u_held = u_arg != nullptr ? upscale_input(*u_arg, upscale) : Tensor();
  const Tensor* u = u_arg != nullptr ? &u_held : nullptr;
  Geometry g = geometry(op, x);
  set_upscale(op, g, x, upscale);
  check_y_side(op, "gy", gy, x, g);
  if (u != nullptr) check_like_x(op, "u", *u, x, g);
  check_act(op, act);
  set_table_kind(op, g, scale);
  std::vector<Tensor> held;
  const bna::ChannelParams prm = channel_params(
      op, g, x, {{"scale", &scale}, {"shift", &shift}, {"mean", &mean}, {"invstd", &invstd}}, slope, held);
  Launch run(x);
  const auto opts = x.options().dtype(acc_type(x));
  const std::vector<int64_t> shape = table_shape(g);
  const int k = u != nullptr ? 5 : 2;
  std::vector<Tensor> out;
  if (empty_problem(g)) {
    for (int i = 0; i < k; ++i) out.push_back(at::zeros(shape, opts));
    return out;
  }
  g.problem.sm_count = sm_count(x.get_device());
  const int64_t partials = bna::reduce_partials(g.problem);
  const int64_t entries = held[0].numel();
  Tensor work = at::empty({k, partials, entries}, opts);
  void* out_ptrs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  for (int i = 0; i < k; ++i) {
    out.push_back(at::empty(shape, opts));
    out_ptrs[i] = out.back().data_ptr();
  }
  C10_CUDA_CHECK(bna::launch_grad_sums(g.problem, u != nullptr, gy.data_ptr(), x.data_ptr(),
                                       u != nullptr ? u->data_ptr() : nullptr, prm, partials, work.data_ptr(),
                                       out_ptrs, run.stream));
  return out;
}

std::tuple<Tensor, Tensor> norm_act_backward_reduce(const Tensor& gy, const Tensor& x, const Tensor& scale,
                                                    const Tensor& shift, const Tensor& mean, const Tensor& invstd,
                                                    int64_t act, double slope, int64_t upscale) {
  auto s = grad_sums("fastgan::norm_act_backward_reduce", nullptr, gy, x, scale, shift, mean, invstd, act, slope,
                     upscale);
  return {s[0], s[1]};
}

// norm_act_backward_reduce, then norm_act_backward_coefficients of its sums, in one call: a fused
// layer's backward with batch statistics is two host calls (this, then the elementwise pass).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> norm_act_backward_reduce_coefficients(
    const Tensor& gy, const Tensor& x, const Tensor& scale, const Tensor& shift, const Tensor& mean,
    const Tensor& invstd, int64_t act, double slope, int64_t groups, int64_t count, int64_t upscale) {
  auto s = grad_sums("fastgan::norm_act_backward_reduce_coefficients", nullptr, gy, x, scale, shift, mean, invstd,
                     act, slope, upscale);
  auto [k2, k3, sum_g, sum_gx] = bc::backward_coefficients(s[0], s[1], scale.contiguous(), groups, count);
  return {s[0], s[1], k2, k3, sum_g, sum_gx};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> norm_act_double_reduce(const Tensor& u, const Tensor& gy,
                                                                          const Tensor& x, const Tensor& scale,
                                                                          const Tensor& shift, const Tensor& mean,
                                                                          const Tensor& invstd, int64_t act,
                                                                          double slope, int64_t upscale) {
  auto s = grad_sums("fastgan::norm_act_double_reduce", &u, gy, x, scale, shift, mean, invstd, act, slope,
                     upscale);
  return {s[0], s[1], s[2], s[3], s[4]};
}

Tensor norm_act_backward_apply(const Tensor& gy_arg, const Tensor& x_arg, const Tensor& scale, const Tensor& shift,
                               const Tensor& mean, const Tensor& invstd, const Tensor& k1, const Tensor& k2,
                               const Tensor& k3, int64_t act, double slope, int64_t upscale) {
  const char* op = "fastgan::norm_act_backward_apply";
  const Tensor x = upscale_input(x_arg, upscale), gy = upscale_input(gy_arg, upscale);
  Geometry g = geometry(op, x);
  set_upscale(op, g, x, upscale);
  check_y_side(op, "gy", gy, x, g);
  check_act(op, act);
  set_table_kind(op, g, scale);
  std::vector<Tensor> held;
  const bna::ChannelParams prm = channel_params(op, g, x,
                                                {{"scale", &scale}, {"shift", &shift}, {"mean", &mean},
                                                 {"invstd", &invstd}, {"k1", &k1}, {"k2", &k2}, {"k3", &k3}},
                                                slope, held);
  Launch run(x);
  Tensor dx = at::empty_like(x);
  if (empty_problem(g)) return dx;
  g.problem.sm_count = sm_count(x.get_device());
  C10_CUDA_CHECK(bna::launch_pointwise(g.problem, bna::kModeBackward, x.data_ptr(), gy.data_ptr(), nullptr,
                                       dx.data_ptr(), nullptr, prm, run.stream));
  return dx;
}

std::tuple<Tensor, Tensor> norm_act_double_apply(const Tensor& u_arg, const Tensor& gy_arg, const Tensor& x_arg,
                                                 const Tensor& scale, const Tensor& shift, const Tensor& mean,
                                                 const Tensor& invstd, const Tensor& a1, const Tensor& a2,
                                                 const Tensor& a3, const Tensor& b1, const Tensor& b2,
                                                 const Tensor& b3, const Tensor& b4, int64_t act, double slope,
                                                 int64_t upscale) {
  const char* op = "fastgan::norm_act_double_apply";
  const Tensor x = upscale_input(x_arg, upscale), gy = upscale_input(gy_arg, upscale);
  const Tensor u = upscale_input(u_arg, upscale);
  Geometry g = geometry(op, x);
  set_upscale(op, g, x, upscale);
  check_like_x(op, "u", u, x, g);
  check_y_side(op, "gy", gy, x, g);
  check_act(op, act);
  set_table_kind(op, g, scale);
  std::vector<Tensor> held;
  const bna::ChannelParams prm = channel_params(
      op, g, x,
      {{"scale", &scale}, {"shift", &shift}, {"mean", &mean}, {"invstd", &invstd}, {"a1", &a1}, {"a2", &a2},
       {"a3", &a3}, {"b1", &b1}, {"b2", &b2}, {"b3", &b3}, {"b4", &b4}},
      slope, held);
  Launch run(x);
  Tensor ggx = at::empty_like(x);
  Tensor ggy = upscale == 1 ? at::empty_like(gy) : at::empty(y_shape(x, g), x.options());
  if (empty_problem(g)) return {ggx, ggy};
  g.problem.sm_count = sm_count(x.get_device());
  C10_CUDA_CHECK(bna::launch_pointwise(g.problem, bna::kModeDouble, x.data_ptr(), gy.data_ptr(), u.data_ptr(),
                                       ggx.data_ptr(), ggy.data_ptr(), prm, run.stream));
  return {ggx, ggy};
}

}  // namespace
}  // namespace fastgan

// The schemas (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("channel_stats(Tensor x) -> (Tensor, Tensor)");
  m.def("row_moments(Tensor x) -> (Tensor, Tensor)");
  m.def("segment_stats(Tensor x, int segments) -> (Tensor, Tensor)");
  m.def("row_stats_affine(Tensor x, Tensor? weight, Tensor? bias, int groups, float eps) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "channel_stats_affine(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // upscale (last, default 1): calls that leave it out are the plain norm + activation.
  m.def("norm_act_forward(Tensor x, Tensor scale, Tensor shift, int act, float slope, int upscale=1) -> Tensor");
  m.def(
      "norm_act_backward_reduce(Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, Tensor invstd, "
      "int act, float slope, int upscale=1) -> (Tensor, Tensor)");
  m.def(
      "norm_act_backward_reduce_coefficients(Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, "
      "Tensor invstd, int act, float slope, int groups, int count, int upscale=1) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "norm_act_backward_apply(Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, Tensor invstd, "
      "Tensor k1, Tensor k2, Tensor k3, int act, float slope, int upscale=1) -> Tensor");
  m.def(
      "norm_act_double_reduce(Tensor u, Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, "
      "Tensor invstd, int act, float slope, int upscale=1) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "norm_act_double_apply(Tensor u, Tensor gy, Tensor x, Tensor scale, Tensor shift, Tensor mean, "
      "Tensor invstd, Tensor a1, Tensor a2, Tensor a3, Tensor b1, Tensor b2, Tensor b3, Tensor b4, int act, "
      "float slope, int upscale=1) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("channel_stats", &fastgan::channel_stats);
  m.impl("row_moments", &fastgan::row_moments);
  m.impl("segment_stats", &fastgan::segment_stats);
  m.impl("row_stats_affine", &fastgan::row_stats_affine);
  m.impl("channel_stats_affine", &fastgan::channel_stats_affine);
  m.impl("norm_act_forward", &fastgan::norm_act_forward);
  m.impl("norm_act_backward_reduce", &fastgan::norm_act_backward_reduce);
  m.impl("norm_act_backward_reduce_coefficients", &fastgan::norm_act_backward_reduce_coefficients);
  m.impl("norm_act_backward_apply", &fastgan::norm_act_backward_apply);
  m.impl("norm_act_double_reduce", &fastgan::norm_act_double_reduce);
  m.impl("norm_act_double_apply", &fastgan::norm_act_double_apply);
}
