// torch.ops.fastgan.penalty_* bindings of the gradient-penalty kernels
// (csrc/penalty.cu).  Names, argument order and semantics are those of the
// Triton backend, fastgan/kernels/penalty.py, so that the autograd Functions of
// fastgan/ops/penalty.py drive either backend:
//
//   penalty_interpolate(real, fake, epsilon) -> out
//   penalty_interpolate_backward(grad, epsilon, need_real, need_fake) -> (d_real, d_fake)
//   penalty_epsilon_grad(grad, real, fake) -> (N,) sums of grad * (real - fake)
//   penalty_forward(grad, mode, center) -> (value, norms)
//   penalty_backward(grad_value, grad, norms, mode, center) -> d grad
//
// Big tensors are (N, *) float32 / float16 / bfloat16 / float64 in which each
// sample is one dense block (contiguous, or channels-last for 4-D / 5-D), all
// of a call with one dtype and layout; per-sample tensors (epsilon, norms) are
// (N,) and grad_value / value 0-dim, in float32 (float64 for float64 inputs).
// An output that is not needed (need_real / need_fake false) is an empty (0,)
// tensor.  mode: 0 two-sided (norm - center)^2, 1 one-sided max(norm - center,
// 0)^2, 2 squared norm^2.  Here: checks, allocation (the partials workspace
// too) and the launch on the current stream; no host synchronisation and no
// data-dependent allocation (CUDA-graph capturable).

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
#include "host_utils.h"

#include <cuda_runtime_api.h>

// The launchers of csrc/penalty.cu (keep in sync with it).
namespace fastgan {
namespace pen {
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
constexpr int kFinalizeRowSums = -1;
int64_t row_partials(DType dt, int64_t N, int64_t K, int sm_count);
cudaError_t launch_row_sums(DType dt, bool dot_diff, const void* a, const void* b, const void* c, void* parts,
                            int64_t N, int64_t K, int64_t P, cudaStream_t stream);
cudaError_t launch_finalize(bool is_double, const void* parts, void* rows, void* value, double center, int mode,
                            int64_t N, int64_t P, cudaStream_t stream);
cudaError_t launch_interpolate(DType dt, const void* real, const void* fake, const void* eps, void* out,
                               int64_t numel, int64_t K, int sm_count, cudaStream_t stream);
cudaError_t launch_interpolate_backward(DType dt, const void* grad, const void* eps, void* d_real, void* d_fake,
                                        int64_t numel, int64_t K, int sm_count, cudaStream_t stream);
cudaError_t launch_penalty_backward(DType dt, const void* grad, const void* norms, const void* grad_value,
                                    void* out, double center, int mode, int64_t numel, int64_t K, int64_t N,
                                    int sm_count, cudaStream_t stream);
}  // namespace pen
}  // namespace fastgan

namespace fastgan {
namespace {

using at::Tensor;
namespace pen = fastgan::pen;

pen::DType dtype_code(const char* op, const char* name, const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return pen::DType::kFloat32;
    case at::kHalf: return pen::DType::kFloat16;
    case at::kBFloat16: return pen::DType::kBFloat16;
    case at::kDouble: return pen::DType::kFloat64;
    default: break;
  }
  FASTGAN_CHECK_TYPE(false, op, ": ", name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  return pen::DType::kFloat32;  // unreachable
}


// A batch the kernels can read: (N, *) on CUDA, each sample one dense block.
struct Batch {
  pen::DType dtype;
  c10::MemoryFormat format;
  int64_t N, K, numel;
};

Batch batch(const char* op, const char* name, const Tensor& x) {
  FASTGAN_CHECK(x.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(x.is_cuda(), op, ": ", name, " must be a CUDA tensor, got a tensor on ", x.device());
  Batch b;
  b.dtype = dtype_code(op, name, x);
  FASTGAN_CHECK_VALUE(x.dim() >= 1, op, ": ", name, " must have shape (N, ...), got a 0-dim tensor");
  if (x.is_contiguous()) {
    b.format = c10::MemoryFormat::Contiguous;
  } else if (x.dim() == 4 && x.is_contiguous(c10::MemoryFormat::ChannelsLast)) {
    b.format = c10::MemoryFormat::ChannelsLast;
  } else if (x.dim() == 5 && x.is_contiguous(c10::MemoryFormat::ChannelsLast3d)) {
    b.format = c10::MemoryFormat::ChannelsLast3d;
  } else {
    FASTGAN_CHECK_VALUE(false, op, ": ", name, " must be contiguous or channels-last, got shape ", x.sizes(),
                        " and strides ", x.strides());
  }
  b.N = x.size(0);
  b.numel = x.numel();
  b.K = b.N > 0 ? b.numel / b.N : 0;
  return b;
}

// Another big tensor of the call: x's device, dtype, shape and layout.
void check_like(const char* op, const char* name, const Tensor& t, const char* x_name, const Tensor& x,
                const Batch& b) {
  FASTGAN_CHECK(t.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " must be on ", x.device(), " like ", x_name,
                ", got a tensor on ", t.device());
  FASTGAN_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have ", x_name, "'s dtype ",
                     x.scalar_type(), ", got ", t.scalar_type());
  FASTGAN_CHECK_VALUE(t.sizes() == x.sizes(), op, ": ", name, " must have ", x_name, "'s shape ", x.sizes(), ", got ",
                      t.sizes());
  FASTGAN_CHECK_VALUE(t.is_contiguous(b.format), op, ": ", name, " must have ", x_name, "'s layout (", b.format,
                      "), got strides ", t.strides(), " for ", x_name, "'s ", x.strides());
}

// A per-sample (N,) vector in the accumulator dtype; returned contiguous.
Tensor sample_vector(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  FASTGAN_CHECK(t.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(t.is_cuda() && t.device() == x.device(), op, ": ", name, " must be on ", x.device(),
                ", got a tensor on ", t.device());
  const at::ScalarType acc = acc_type(x);
  FASTGAN_CHECK_TYPE(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", x.scalar_type(),
                     " inputs, got ", t.scalar_type());
  FASTGAN_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), op, ": ", name, " must have shape (", x.size(0),
                      ",) (one value per sample), got ", t.sizes());
  return t.contiguous();
}

void check_mode(const char* op, int64_t mode) {
  FASTGAN_CHECK_VALUE(mode >= 0 && mode <= 2, op,
                      ": mode must be 0 (two-sided), 1 (one-sided) or 2 (squared), got ", mode);
}

// Runs on x's device and current stream.
struct Launch {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit Launch(const Tensor& x) : guard(x.device()), stream(c10::cuda::getCurrentCUDAStream(x.get_device())) {}
};

// (N, P) partial sums of a*a (b, c undefined) or a*(b - c), then the finalize.
std::tuple<Tensor, Tensor> row_reduce(const Tensor& a, const Tensor* b, const Tensor* c, const Batch& bt,
                                      int mode, double center, const Launch& run) {
  const auto opts = a.options().dtype(acc_type(a));
  Tensor rows = at::empty({bt.N}, opts);
  Tensor value = at::empty({}, opts);
  Tensor parts;
  int64_t partials = 1;
  if (bt.K == 0) {
    parts = at::zeros({bt.N, 1}, opts);
  } else {
    partials = pen::row_partials(bt.dtype, bt.N, bt.K, sm_count(a.get_device()));
    parts = at::empty({bt.N, partials}, opts);
    C10_CUDA_CHECK(pen::launch_row_sums(bt.dtype, b != nullptr, a.data_ptr(), b ? b->data_ptr() : nullptr,
                                        c ? c->data_ptr() : nullptr, parts.data_ptr(), bt.N, bt.K, partials,
                                        run.stream));
  }
  C10_CUDA_CHECK(pen::launch_finalize(a.scalar_type() == at::kDouble, parts.data_ptr(), rows.data_ptr(),
                                      value.data_ptr(), center, mode, bt.N, partials, run.stream));
  return {value, rows};
}

Tensor penalty_interpolate(const Tensor& real, const Tensor& fake, const Tensor& epsilon) {
  const char* op = "fastgan::penalty_interpolate";
  const Batch b = batch(op, "real", real);
  check_like(op, "fake", fake, "real", real, b);
  const Tensor eps = sample_vector(op, "epsilon", epsilon, real);
  Launch run(real);
  Tensor out = at::empty_like(real);
  if (b.numel == 0) return out;
  C10_CUDA_CHECK(pen::launch_interpolate(b.dtype, real.data_ptr(), fake.data_ptr(), eps.data_ptr(), out.data_ptr(),
                                         b.numel, b.K, sm_count(real.get_device()), run.stream));
  return out;
}

std::tuple<Tensor, Tensor> penalty_interpolate_backward(const Tensor& grad, const Tensor& epsilon, bool need_real,
                                                        bool need_fake) {
  const char* op = "fastgan::penalty_interpolate_backward";
  const Batch b = batch(op, "grad", grad);
  const Tensor eps = sample_vector(op, "epsilon", epsilon, grad);
  Launch run(grad);
  Tensor d_real = need_real ? at::empty_like(grad) : at::empty({0}, grad.options());
  Tensor d_fake = need_fake ? at::empty_like(grad) : at::empty({0}, grad.options());
  if (b.numel == 0 || !(need_real || need_fake)) return {d_real, d_fake};
  C10_CUDA_CHECK(pen::launch_interpolate_backward(b.dtype, grad.data_ptr(), eps.data_ptr(),
                                                  need_real ? d_real.data_ptr() : nullptr,
                                                  need_fake ? d_fake.data_ptr() : nullptr, b.numel, b.K,
                                                  sm_count(grad.get_device()), run.stream));
  return {d_real, d_fake};
}

Tensor penalty_epsilon_grad(const Tensor& grad, const Tensor& real, const Tensor& fake) {
  const char* op = "fastgan::penalty_epsilon_grad";
  const Batch b = batch(op, "grad", grad);
  check_like(op, "real", real, "grad", grad, b);
  check_like(op, "fake", fake, "grad", grad, b);
  Launch run(grad);
  if (b.N == 0) return at::zeros({0}, grad.options().dtype(acc_type(grad)));
  return std::get<1>(row_reduce(grad, &real, &fake, b, pen::kFinalizeRowSums, 0.0, run));
}

std::tuple<Tensor, Tensor> penalty_forward(const Tensor& grad, int64_t mode, double center) {
  const char* op = "fastgan::penalty_forward";
  const Batch b = batch(op, "grad", grad);
  check_mode(op, mode);
  FASTGAN_CHECK_VALUE(b.N > 0, op, ": grad must hold at least one sample, got shape ", grad.sizes());
  Launch run(grad);
  return row_reduce(grad, nullptr, nullptr, b, static_cast<int>(mode), center, run);
}

Tensor penalty_backward(const Tensor& grad_value, const Tensor& grad, const Tensor& norms, int64_t mode,
                        double center) {
  const char* op = "fastgan::penalty_backward";
  const Batch b = batch(op, "grad", grad);
  check_mode(op, mode);
  const Tensor nrm = sample_vector(op, "norms", norms, grad);
  FASTGAN_CHECK(grad_value.defined() && grad_value.is_cuda() && grad_value.device() == grad.device(), op,
                ": grad_value must be a tensor on ", grad.device());
  FASTGAN_CHECK_TYPE(grad_value.scalar_type() == acc_type(grad), op, ": grad_value must be ", acc_type(grad), ", got ",
                     grad_value.scalar_type());
  FASTGAN_CHECK_VALUE(grad_value.numel() == 1, op, ": grad_value must hold one value, got shape ", grad_value.sizes());
  const Tensor gv = grad_value.contiguous();
  Launch run(grad);
  Tensor out = at::empty_like(grad);
  if (b.numel == 0) return out;
  C10_CUDA_CHECK(pen::launch_penalty_backward(b.dtype, grad.data_ptr(), nrm.data_ptr(), gv.data_ptr(),
                                              out.data_ptr(), center, static_cast<int>(mode), b.numel, b.K, b.N,
                                              sm_count(grad.get_device()), run.stream));
  return out;
}

}  // namespace
}  // namespace fastgan

// The schemas (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("penalty_interpolate(Tensor real, Tensor fake, Tensor epsilon) -> Tensor");
  m.def(
      "penalty_interpolate_backward(Tensor grad, Tensor epsilon, bool need_real, bool need_fake) "
      "-> (Tensor, Tensor)");
  m.def("penalty_epsilon_grad(Tensor grad, Tensor real, Tensor fake) -> Tensor");
  m.def("penalty_forward(Tensor grad, int mode, float center) -> (Tensor, Tensor)");
  m.def("penalty_backward(Tensor grad_value, Tensor grad, Tensor norms, int mode, float center) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("penalty_interpolate", &fastgan::penalty_interpolate);
  m.impl("penalty_interpolate_backward", &fastgan::penalty_interpolate_backward);
  m.impl("penalty_epsilon_grad", &fastgan::penalty_epsilon_grad);
  m.impl("penalty_forward", &fastgan::penalty_forward);
  m.impl("penalty_backward", &fastgan::penalty_backward);
}
