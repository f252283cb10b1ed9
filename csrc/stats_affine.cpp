// torch.ops.fastgan.stats_affine / group_stats_affine: the bindings of
// csrc/stats_affine.cu, same names, argument order and semantics as the Triton
// backend's fastgan/kernels/stats_affine.py and the references (stats_affine in
// fastgan/reference/batch_norm_act.py, group_stats_affine in
// fastgan/reference/group_norm_act.py):
//
//   stats_affine(mean, var, weight?, bias?, running_mean?, running_var?, count, momentum, eps)
//       -> (invstd, scale, shift)
//   group_stats_affine(row_mean, row_m2, weight?, bias?, groups, spatial, eps)
//       -> (mean, invstd, scale, shift)   (N, C) tables of the per-sample group statistics
//
// mean, var: (C,) float32 or float64 statistics (biased variance), or (T, C)
// tables of T segments' statistics (outputs like them); weight, bias: (C,) of the
// same dtype or None; running_mean / running_var, when given, (C,) of the same
// dtype, updated in place with the unbiased variance (var * count / (count - 1)),
// once per row of a table, in row order.  No host synchronisation (graph capturable).

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include "check.h"
#include "stats_affine.h"

namespace fastgan {
namespace sa {

cudaError_t launch_stats_affine(bool double_, const void* mean, const void* var, const void* weight,
                                const void* bias, void* running_mean, void* running_var, void* invstd, void* scale,
                                void* shift, int64_t channels, int64_t rows, double eps, double momentum,
                                double unbias, cudaStream_t stream);

cudaError_t launch_group_stats_affine(bool double_, const void* row_mean, const void* row_m2, const void* weight,
                                      const void* bias, void* const* out, int64_t samples, int64_t channels,
                                      int64_t groups, int64_t spatial, double eps, cudaStream_t stream);

namespace {

using at::Tensor;
constexpr const char* kOp = "fastgan::stats_affine";

void check_vector(const char* name, const Tensor& t, const Tensor& mean) {
  FASTGAN_CHECK(t.device() == mean.device(), kOp, ": ", name, " must be on ", mean.device(), ", got ", t.device());
  FASTGAN_CHECK_TYPE(t.scalar_type() == mean.scalar_type(), kOp, ": ", name, " must have mean's dtype ",
                     mean.scalar_type(), ", got ", t.scalar_type());
  const int64_t c = mean.size(-1);
  FASTGAN_CHECK_VALUE(t.dim() == 1 && t.size(0) == c, kOp, ": ", name, " must have shape (", c, ",), got ",
                      t.sizes());
  FASTGAN_CHECK_VALUE(t.is_contiguous(), kOp, ": ", name, " must be contiguous");
}

const void* data_or_null(const c10::optional<Tensor>& t, const char* name, const Tensor& mean) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_vector(name, *t, mean);
  return t->data_ptr();
}

std::tuple<Tensor, Tensor, Tensor> stats_affine(const Tensor& mean, const Tensor& var,
                                                const c10::optional<Tensor>& weight,
                                                const c10::optional<Tensor>& bias,
                                                const c10::optional<Tensor>& running_mean,
                                                const c10::optional<Tensor>& running_var, int64_t count,
                                                double momentum, double eps) {
  FASTGAN_CHECK(mean.defined() && mean.is_cuda(), kOp, ": mean must be a CUDA tensor");
  FASTGAN_CHECK_TYPE(mean.scalar_type() == at::kFloat || mean.scalar_type() == at::kDouble, kOp,
                     ": mean must be float32 or float64, got ", mean.scalar_type());
  FASTGAN_CHECK_VALUE((mean.dim() == 1 || mean.dim() == 2) && mean.is_contiguous(), kOp,
                      ": mean must be a contiguous (C,) vector or (T, C) table, got ", mean.sizes());
  FASTGAN_CHECK(var.device() == mean.device() && var.scalar_type() == mean.scalar_type() &&
                    var.sizes() == mean.sizes() && var.is_contiguous(),
                kOp, ": var must be like mean (", mean.sizes(), ", ", mean.scalar_type(), ", contiguous), got ",
                var.sizes(), " ", var.scalar_type());
  const void* w = data_or_null(weight, "weight", mean);
  const void* b = data_or_null(bias, "bias", mean);
  void* rm = const_cast<void*>(data_or_null(running_mean, "running_mean", mean));
  void* rv = const_cast<void*>(data_or_null(running_var, "running_var", mean));
  const bool updates = rm != nullptr || rv != nullptr;
  FASTGAN_CHECK_VALUE(!updates || count > 1, kOp, ": count must be > 1 to update running stats, got ", count);
  const double unbias = updates ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  c10::cuda::CUDAGuard guard(mean.device());
  Tensor invstd = at::empty_like(mean);
  Tensor scale = at::empty_like(mean);
  Tensor shift = at::empty_like(mean);
  const int64_t rows = mean.dim() == 2 ? mean.size(0) : 1;
  C10_CUDA_CHECK(launch_stats_affine(mean.scalar_type() == at::kDouble, mean.data_ptr(), var.data_ptr(), w, b, rm,
                                     rv, invstd.data_ptr(), scale.data_ptr(), shift.data_ptr(), mean.size(-1), rows,
                                     eps, momentum, unbias, c10::cuda::getCurrentCUDAStream(mean.get_device())));
  return {invstd, scale, shift};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> group_stats_affine(const Tensor& row_mean, const Tensor& row_m2,
                                                              const c10::optional<Tensor>& weight,
                                                              const c10::optional<Tensor>& bias, int64_t groups,
                                                              int64_t spatial, double eps) {
  constexpr const char* op = "fastgan::group_stats_affine";
  FASTGAN_CHECK(row_mean.defined() && row_mean.is_cuda(), op, ": row_mean must be a CUDA tensor");
  FASTGAN_CHECK_TYPE(row_mean.scalar_type() == at::kFloat || row_mean.scalar_type() == at::kDouble, op,
                     ": row_mean must be float32 or float64, got ", row_mean.scalar_type());
  FASTGAN_CHECK_VALUE(row_mean.dim() == 2 && row_mean.is_contiguous(), op,
                      ": row_mean must be a contiguous (N, C) table, got ", row_mean.sizes());
  FASTGAN_CHECK(row_m2.device() == row_mean.device() && row_m2.scalar_type() == row_mean.scalar_type() &&
                    row_m2.sizes() == row_mean.sizes() && row_m2.is_contiguous(),
                op, ": row_m2 must be like row_mean");
  const int64_t n = row_mean.size(0), c = row_mean.size(1);
  FASTGAN_CHECK_VALUE(groups >= 1 && c % groups == 0, op, ": groups must divide C = ", c, ", got ", groups);
  FASTGAN_CHECK_VALUE(groups <= 65535 && n <= INT32_MAX, op, ": at most 65535 groups and 2^31 - 1 samples");
  FASTGAN_CHECK_VALUE(spatial >= 1, op, ": spatial must be >= 1, got ", spatial);
  const void* w = nullptr;
  const void* b = nullptr;
  if (n > 0) {
    const Tensor channel = row_mean.select(0, 0);  // the (C,) shape and dtype weight and bias must have
    w = data_or_null(weight, "weight", channel);
    b = data_or_null(bias, "bias", channel);
  }
  c10::cuda::CUDAGuard guard(row_mean.device());
  Tensor mean = at::empty_like(row_mean), invstd = at::empty_like(row_mean);
  Tensor scale = at::empty_like(row_mean), shift = at::empty_like(row_mean);
  void* out[4] = {mean.data_ptr(), invstd.data_ptr(), scale.data_ptr(), shift.data_ptr()};
  C10_CUDA_CHECK(launch_group_stats_affine(row_mean.scalar_type() == at::kDouble, row_mean.data_ptr(),
                                           row_m2.data_ptr(), w, b, out, n, c, groups, spatial, eps,
                                           c10::cuda::getCurrentCUDAStream(row_mean.get_device())));
  return {mean, invstd, scale, shift};
}

}  // namespace sa
}  // namespace fastgan

// The schema (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("stats_affine(Tensor mean, Tensor var, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, int count, float momentum, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("group_stats_affine(Tensor row_mean, Tensor row_m2, Tensor? weight, Tensor? bias, int groups, int spatial, "
        "float eps) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("stats_affine", &fastgan::sa::stats_affine);
  m.impl("group_stats_affine", &fastgan::sa::group_stats_affine);
}
