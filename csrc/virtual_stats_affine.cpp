// torch.ops.fastgan.virtual_stats_affine / virtual_stats_affine_backward: the
// bindings of csrc/virtual_stats_affine.cu, same names, argument order and
// semantics as the Triton backend's fastgan/kernels/virtual_stats_affine.py and
// the references in fastgan/reference/virtual_batch_norm.py:
//
//   virtual_stats_affine(own_mean?, own_sq?, ref_mean, ref_sq, weight?, bias?, mix, eps)
//       -> (scale, shift, identity)
//   virtual_stats_affine_backward(g_scale, g_shift, own_mean?, own_sq?, ref_mean, ref_sq, weight?, mix, eps)
//       -> (g_own, g_channel)
//
// own_mean, own_sq: (N, C) spatial means of x and x^2, or both None (the
// reference batch: (C,) tables); ref_mean, ref_sq, weight, bias: (C,); every
// table float32 or float64, one dtype, contiguous.  scale, shift: like own_mean
// (or (C,)); identity: (2, *scale.shape), zeros then ones.  g_own: (2, N, C)
// (own_mean's gradient, own_sq's; (2, 0, C) without them); g_channel: (4, C)
// (ref_mean's, ref_sq's, weight's, bias's).  No host synchronisation.

#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include "check.h"

namespace fastgan {
namespace vsa {

cudaError_t launch_virtual_stats_affine(bool double_, const void* own_mean, const void* own_sq, const void* ref_mean,
                                        const void* ref_sq, const void* weight, const void* bias, void* scale,
                                        void* shift, void* identity, int64_t rows, int64_t channels, double mix,
                                        double eps, cudaStream_t stream);

cudaError_t launch_virtual_stats_affine_backward(bool double_, const void* g_scale, const void* g_shift,
                                                 const void* own_mean, const void* own_sq, const void* ref_mean,
                                                 const void* ref_sq, const void* weight, void* g_own,
                                                 void* g_channel, int64_t rows, int64_t channels, double mix,
                                                 double eps, cudaStream_t stream);

namespace {

using at::Tensor;

// t must be a contiguous table like `like` (device, dtype, shape).
void check_like(const char* op, const char* name, const Tensor& t, const Tensor& like, const char* like_name) {
  FASTGAN_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ", t.device());
  FASTGAN_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have ", like_name, "'s dtype ",
                     like.scalar_type(), ", got ", t.scalar_type());
  FASTGAN_CHECK_VALUE(t.sizes() == like.sizes(), op, ": ", name, " must have ", like_name, "'s shape ", like.sizes(),
                      ", got ", t.sizes());
  FASTGAN_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

const void* data_or_null(const char* op, const char* name, const c10::optional<Tensor>& t, const Tensor& like,
                         const char* like_name) {
  if (!t.has_value() || !t->defined()) return nullptr;
  check_like(op, name, *t, like, like_name);
  return t->data_ptr();
}

// The checks both ops share; the number of rows (N, or 1 without own moments).
int64_t check_statistics(const char* op, const c10::optional<Tensor>& own_mean, const c10::optional<Tensor>& own_sq,
                         const Tensor& ref_mean, const Tensor& ref_sq, double mix, double eps) {
  FASTGAN_CHECK(ref_mean.defined() && ref_mean.is_cuda(), op, ": ref_mean must be a CUDA tensor");
  FASTGAN_CHECK_TYPE(ref_mean.scalar_type() == at::kFloat || ref_mean.scalar_type() == at::kDouble, op,
                     ": ref_mean must be float32 or float64, got ", ref_mean.scalar_type());
  FASTGAN_CHECK_VALUE(ref_mean.dim() == 1 && ref_mean.is_contiguous(), op,
                      ": ref_mean must be a contiguous (C,) vector, got shape ", ref_mean.sizes());
  check_like(op, "ref_sq", ref_sq, ref_mean, "ref_mean");
  const bool has_mean = own_mean.has_value() && own_mean->defined();
  const bool has_sq = own_sq.has_value() && own_sq->defined();
  FASTGAN_CHECK_VALUE(has_mean == has_sq, op, ": own_mean and own_sq are given together or not at all");
  FASTGAN_CHECK_VALUE(mix >= 0.0 && mix <= 1.0, op, ": mix must be in [0, 1], got ", mix);
  FASTGAN_CHECK_VALUE(eps > 0.0, op, ": eps must be positive, got ", eps);
  if (!has_mean) return 1;
  const Tensor& m = *own_mean;
  FASTGAN_CHECK(m.device() == ref_mean.device(), op, ": own_mean must be on ", ref_mean.device(), ", got ",
                m.device());
  FASTGAN_CHECK_TYPE(m.scalar_type() == ref_mean.scalar_type(), op, ": own_mean must have ref_mean's dtype ",
                     ref_mean.scalar_type(), ", got ", m.scalar_type());
  FASTGAN_CHECK_VALUE(m.dim() == 2 && m.size(1) == ref_mean.size(0) && m.is_contiguous(), op,
                      ": own_mean must be a contiguous (N, ", ref_mean.size(0), ") table, got shape ", m.sizes());
  check_like(op, "own_sq", *own_sq, m, "own_mean");
  return m.size(0);
}

std::tuple<Tensor, Tensor, Tensor> virtual_stats_affine(const c10::optional<Tensor>& own_mean,
                                                        const c10::optional<Tensor>& own_sq, const Tensor& ref_mean,
                                                        const Tensor& ref_sq, const c10::optional<Tensor>& weight,
                                                        const c10::optional<Tensor>& bias, double mix, double eps) {
  constexpr const char* op = "fastgan::virtual_stats_affine";
  const int64_t rows = check_statistics(op, own_mean, own_sq, ref_mean, ref_sq, mix, eps);
  const void* w = data_or_null(op, "weight", weight, ref_mean, "ref_mean");
  const void* b = data_or_null(op, "bias", bias, ref_mean, "ref_mean");
  const bool own = own_mean.has_value() && own_mean->defined();
  c10::cuda::CUDAGuard guard(ref_mean.device());
  const Tensor& like = own ? *own_mean : ref_mean;
  Tensor scale = at::empty(like.sizes(), like.options());
  Tensor shift = at::empty(like.sizes(), like.options());
  std::vector<int64_t> identity_shape{2};
  identity_shape.insert(identity_shape.end(), like.sizes().begin(), like.sizes().end());
  Tensor identity = at::empty(identity_shape, like.options());
  C10_CUDA_CHECK(launch_virtual_stats_affine(
      ref_mean.scalar_type() == at::kDouble, own ? own_mean->data_ptr() : nullptr,
      own ? own_sq->data_ptr() : nullptr, ref_mean.data_ptr(), ref_sq.data_ptr(), w, b, scale.data_ptr(),
      shift.data_ptr(), identity.data_ptr(), rows, ref_mean.size(0), own ? mix : 0.0, eps,
      c10::cuda::getCurrentCUDAStream(ref_mean.get_device())));
  return {scale, shift, identity};
}

std::tuple<Tensor, Tensor> virtual_stats_affine_backward(const Tensor& g_scale, const Tensor& g_shift,
                                                         const c10::optional<Tensor>& own_mean,
                                                         const c10::optional<Tensor>& own_sq,
                                                         const Tensor& ref_mean, const Tensor& ref_sq,
                                                         const c10::optional<Tensor>& weight, double mix,
                                                         double eps) {
  constexpr const char* op = "fastgan::virtual_stats_affine_backward";
  const int64_t rows = check_statistics(op, own_mean, own_sq, ref_mean, ref_sq, mix, eps);
  const void* w = data_or_null(op, "weight", weight, ref_mean, "ref_mean");
  const bool own = own_mean.has_value() && own_mean->defined();
  const Tensor& like = own ? *own_mean : ref_mean;
  // the incoming gradients as the kernel reads them (autograd may hand over expanded or strided ones)
  FASTGAN_CHECK_VALUE(g_scale.sizes() == like.sizes() && g_shift.sizes() == like.sizes(), op,
                      ": g_scale and g_shift must have the tables' shape ", like.sizes(), ", got ", g_scale.sizes(),
                      " and ", g_shift.sizes());
  const Tensor gs = g_scale.contiguous(), gh = g_shift.contiguous();
  check_like(op, "g_scale", gs, like, own ? "own_mean" : "ref_mean");
  check_like(op, "g_shift", gh, like, own ? "own_mean" : "ref_mean");
  const int64_t c = ref_mean.size(0);
  c10::cuda::CUDAGuard guard(ref_mean.device());
  Tensor g_own = at::empty({2, own ? rows : 0, c}, ref_mean.options());
  Tensor g_channel = at::empty({4, c}, ref_mean.options());
  C10_CUDA_CHECK(launch_virtual_stats_affine_backward(
      ref_mean.scalar_type() == at::kDouble, gs.data_ptr(), gh.data_ptr(), own ? own_mean->data_ptr() : nullptr,
      own ? own_sq->data_ptr() : nullptr, ref_mean.data_ptr(), ref_sq.data_ptr(), w,
      own ? g_own.data_ptr() : nullptr, g_channel.data_ptr(), rows, c, own ? mix : 0.0, eps,
      c10::cuda::getCurrentCUDAStream(ref_mean.get_device())));
  return {g_own, g_channel};
}

}  // namespace
}  // namespace vsa
}  // namespace fastgan

// The schemas (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("virtual_stats_affine(Tensor? own_mean, Tensor? own_sq, Tensor ref_mean, Tensor ref_sq, Tensor? weight, "
        "Tensor? bias, float mix, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("virtual_stats_affine_backward(Tensor g_scale, Tensor g_shift, Tensor? own_mean, Tensor? own_sq, "
        "Tensor ref_mean, Tensor ref_sq, Tensor? weight, float mix, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("virtual_stats_affine", &fastgan::vsa::virtual_stats_affine);
  m.impl("virtual_stats_affine_backward", &fastgan::vsa::virtual_stats_affine_backward);
}
