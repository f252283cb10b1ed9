// torch.ops.fastgan.norm_act_backward_coefficients: the binding of
// csrc/backward_coefficients.cu, same name, argument order and semantics as the
// Triton backend's fastgan/kernels/backward_coefficients.py and the reference
// fastgan/reference/norm_act_backward.py:
//
//   norm_act_backward_coefficients(r_g, r_gx, scale, groups, count) -> (k2, k3, sum_g, sum_gx)
//
// r_g, r_gx, scale: contiguous float32 / float64 tables with C = last dim, (C,)
// or (N, C), all alike; groups divides C; count: the elements per statistic.
// k2, k3 are like scale; sum_g, sum_gx are (C,).  No host synchronisation
// (graph capturable).

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "check.h"
#include "backward_coefficients.h"
#include "host_utils.h"

namespace fastgan {
namespace bc {

cudaError_t launch_backward_coefficients(bool double_, const void* r_g, const void* r_gx, const void* scale,
                                         void* const* out, int64_t rows, int64_t channels, int64_t groups,
                                         int64_t count, cudaStream_t stream);

using at::Tensor;

namespace {

constexpr const char* kOp = "fastgan::norm_act_backward_coefficients";

void check_like(const char* name, const Tensor& t, const Tensor& scale) {
  check_like_table(kOp, name, t, scale, "scale");
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> backward_coefficients(const Tensor& r_g, const Tensor& r_gx,
                                                                 const Tensor& scale, int64_t groups, int64_t count) {
  FASTGAN_CHECK(scale.defined() && scale.is_cuda(), kOp, ": scale must be a CUDA tensor");
  FASTGAN_CHECK_TYPE(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble, kOp,
                     ": scale must be float32 or float64, got ", scale.scalar_type());
  FASTGAN_CHECK_VALUE(scale.dim() >= 1 && scale.is_contiguous(), kOp, ": scale must be a contiguous table");
  check_like("r_g", r_g, scale);
  check_like("r_gx", r_gx, scale);
  const int64_t channels = scale.size(-1);
  const int64_t rows = channels ? scale.numel() / channels : 0;
  FASTGAN_CHECK_VALUE(groups >= 1 && (channels == 0 || channels % groups == 0), kOp, ": groups must divide C = ",
                      channels, ", got ", groups);
  FASTGAN_CHECK_VALUE(count >= 1, kOp, ": count must be >= 1, got ", count);
  c10::cuda::CUDAGuard guard(scale.device());
  // no rows: the column sums are 0 (the kernel writes them otherwise)
  auto sums = [&] { return rows ? at::empty({channels}, scale.options()) : at::zeros({channels}, scale.options()); };
  Tensor out[4] = {at::empty_like(scale), at::empty_like(scale), sums(), sums()};
  void* out_ptr[4] = {out[0].data_ptr(), out[1].data_ptr(), out[2].data_ptr(), out[3].data_ptr()};
  C10_CUDA_CHECK(launch_backward_coefficients(scale.scalar_type() == at::kDouble, r_g.data_ptr(), r_gx.data_ptr(),
                                              scale.data_ptr(), out_ptr, rows, channels, groups, count,
                                              c10::cuda::getCurrentCUDAStream(scale.get_device())));
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace bc
}  // namespace fastgan

// The schema (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("norm_act_backward_coefficients(Tensor r_g, Tensor r_gx, Tensor scale, int groups, int count) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("norm_act_backward_coefficients", &fastgan::bc::backward_coefficients);
}
