// torch.ops.fastgan.norm_act_double_coefficients: the binding of
// csrc/double_coefficients.cu, same name, argument order and semantics as the
// Triton backend's fastgan/kernels/double_coefficients.py and the reference
// fastgan/reference/norm_act_double.py:
//
//   norm_act_double_coefficients(r_g, r_gx, r_u, r_ux, r_gu, weight?, invstd, alpha?, beta?, groups, m,
//                                batch_stats) -> (a2, a3, b1, b2, b3, b4, grad_w)
//
// r_*, invstd: contiguous float32 / float64 tables with C = last dim, (C,) or
// (N, C), all alike; weight, alpha, beta: (C,) of their dtype or None; groups
// divides C; m: the elements per statistic.  Outputs are like invstd.  No host
// synchronisation (graph capturable).

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
#include "host_utils.h"

namespace fastgan {
namespace dc {

cudaError_t launch_double_coefficients(bool double_, const void* const* in, void* const* out, int64_t rows,
                                       int64_t channels, int64_t groups, int64_t m, bool batch_stats,
                                       cudaStream_t stream);

namespace {

using at::Tensor;
constexpr const char* kOp = "fastgan::norm_act_double_coefficients";

void check_like(const char* name, const Tensor& t, const Tensor& invstd) {
  check_like_table(kOp, name, t, invstd, "invstd");
}

const void* channel_vector(const char* name, const c10::optional<Tensor>& t, const Tensor& invstd) {
  if (!t.has_value() || !t->defined()) return nullptr;
  FASTGAN_CHECK(t->device() == invstd.device(), kOp, ": ", name, " must be on ", invstd.device());
  FASTGAN_CHECK_TYPE(t->scalar_type() == invstd.scalar_type(), kOp, ": ", name, " must have invstd's dtype");
  FASTGAN_CHECK_VALUE(t->dim() == 1 && t->size(0) == invstd.size(-1) && t->is_contiguous(), kOp, ": ", name,
                      " must be a contiguous (C,) vector, C = ", invstd.size(-1), ", got ", t->sizes());
  return t->data_ptr();
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> double_coefficients(
    const Tensor& r_g, const Tensor& r_gx, const Tensor& r_u, const Tensor& r_ux, const Tensor& r_gu,
    const c10::optional<Tensor>& weight, const Tensor& invstd, const c10::optional<Tensor>& alpha,
    const c10::optional<Tensor>& beta, int64_t groups, int64_t m, bool batch_stats) {
  FASTGAN_CHECK(invstd.defined() && invstd.is_cuda(), kOp, ": invstd must be a CUDA tensor");
  FASTGAN_CHECK_TYPE(invstd.scalar_type() == at::kFloat || invstd.scalar_type() == at::kDouble, kOp,
                     ": invstd must be float32 or float64, got ", invstd.scalar_type());
  FASTGAN_CHECK_VALUE(invstd.dim() >= 1 && invstd.is_contiguous(), kOp, ": invstd must be a contiguous table");
  const int64_t channels = invstd.size(-1);
  const int64_t rows = channels ? invstd.numel() / channels : 0;
  FASTGAN_CHECK_VALUE(groups >= 1 && channels % groups == 0, kOp, ": groups must divide C = ", channels, ", got ",
                      groups);
  FASTGAN_CHECK_VALUE(rows <= 65535, kOp, ": at most 65535 table rows, got ", rows);
  FASTGAN_CHECK_VALUE(m >= 1, kOp, ": m must be >= 1, got ", m);
  const char* names[5] = {"r_g", "r_gx", "r_u", "r_ux", "r_gu"};
  const Tensor* sums[5] = {&r_g, &r_gx, &r_u, &r_ux, &r_gu};
  for (int i = 0; i < 5; ++i) check_like(names[i], *sums[i], invstd);
  const void* in[9] = {r_g.data_ptr(), r_gx.data_ptr(), r_u.data_ptr(), r_ux.data_ptr(), r_gu.data_ptr(),
                       channel_vector("weight", weight, invstd), invstd.data_ptr(),
                       channel_vector("alpha", alpha, invstd), channel_vector("beta", beta, invstd)};
  c10::cuda::CUDAGuard guard(invstd.device());
  Tensor out[7];
  void* out_ptr[7];
  for (int i = 0; i < 7; ++i) {
    out[i] = at::empty_like(invstd);
    out_ptr[i] = out[i].data_ptr();
  }
  C10_CUDA_CHECK(launch_double_coefficients(invstd.scalar_type() == at::kDouble, in, out_ptr, rows, channels, groups,
                                            m, batch_stats, c10::cuda::getCurrentCUDAStream(invstd.get_device())));
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6]};
}

}  // namespace
}  // namespace dc
}  // namespace fastgan

// The schema (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("norm_act_double_coefficients(Tensor r_g, Tensor r_gx, Tensor r_u, Tensor r_ux, Tensor r_gu, "
        "Tensor? weight, Tensor invstd, Tensor? alpha, Tensor? beta, int groups, int m, bool batch_stats) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("norm_act_double_coefficients", &fastgan::dc::double_coefficients);
}
