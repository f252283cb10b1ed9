// The C++ entry of norm_act_backward_coefficients (csrc/backward_coefficients.cpp: checks, allocation,
// launch), for ops that run it after their own kernels in one call (norm_act_backward_reduce_coefficients
// in csrc/batch_norm_act.cpp).
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace fastgan {
namespace bc {

// (k2, k3, sum_g, sum_gx); see csrc/backward_coefficients.cpp.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_coefficients(const at::Tensor& r_g,
                                                                                 const at::Tensor& r_gx,
                                                                                 const at::Tensor& scale,
                                                                                 int64_t groups, int64_t count);

}  // namespace bc
}  // namespace fastgan
