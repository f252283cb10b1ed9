// The C++ entry of group_stats_affine (csrc/stats_affine.cpp: checks, allocation, launch), for ops
// that run it after their own kernels in one call (row_stats_affine in csrc/batch_norm_act.cpp).
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace fastgan {
namespace sa {

// (mean, invstd, scale, shift) (N, C) tables of the per-sample group statistics; see stats_affine.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_stats_affine(
    const at::Tensor& row_mean, const at::Tensor& row_m2, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t groups, int64_t spatial, double eps);

}  // namespace sa
}  // namespace fastgan
