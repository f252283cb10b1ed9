// torch.ops.fastgan.* bindings of the minibatch discrimination kernels
// (csrc/minibatch_discrimination.cu).  Names, argument order and semantics are
// those of the Triton backend, fastgan/kernels/minibatch_discrimination.py, so
// the autograd Functions of fastgan/ops/minibatch_discrimination.py drive either:
//
//   mbd_forward(m, exclude_self) -> o                    o (N, B), m's dtype
//   mbd_backward(g, m) -> dm                             dm (N, B, C), m's dtype
//   mbd_double_backward(u, g, m) -> (grad_m, grad_g)     m's dtype, g's dtype
//
// m and u are (N, B, C) and g is (N, B), float32 / float16 / bfloat16 /
// float64, any strides (they are copied once to the kernels' (B, C, N) and
// (B, N) layouts, O(N*B*C) work beside the O(N^2*B*C) kernels).  Sums are in
// float32 (float64 for float64 m).  Here: checks, allocation and the launch on
// the current stream; no host synchronisation, no data-dependent allocation.

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "check.h"

namespace fastgan {
namespace mbd {

// Defined in minibatch_discrimination.cu.  dtype codes: 0 float32, 1 float16, 2 bfloat16, 3 float64.
cudaError_t launch_forward(int dtype, const void* mt, void* o, int64_t n, int64_t nb, int64_t nc, bool exclude_self,
                           cudaStream_t stream);
cudaError_t launch_grad(int dtype, bool double_, const void* mt, const void* ut, const void* gt, void* out_m,
                        void* out_g, int64_t n, int64_t nb, int64_t nc, cudaStream_t stream);

namespace {

using at::Tensor;

constexpr int64_t kMaxRowBlocks = 65535;  // gridDim.y
constexpr int64_t kRowsPerBlock = 128;    // kMaxThreads of the .cu

int dtype_code(const char* op, const char* name, const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    case at::kDouble: return 3;
    default: break;
  }
  FASTGAN_CHECK_TYPE(false, op, ": ", name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  return 0;  // unreachable
}

at::ScalarType acc_type(const Tensor& m) { return m.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// m: a CUDA (N, B, C) floating tensor; returns its dtype code.
int check_m(const char* op, const Tensor& m) {
  FASTGAN_CHECK(m.defined(), op, ": m is undefined");
  FASTGAN_CHECK(m.is_cuda(), op, ": m must be a CUDA tensor, got a tensor on ", m.device());
  const int code = dtype_code(op, "m", m);
  FASTGAN_CHECK_VALUE(m.dim() == 3, op, ": m must have shape (N, B, C), got shape ", m.sizes());
  FASTGAN_CHECK_VALUE(m.size(0) <= kMaxRowBlocks * kRowsPerBlock, op, ": at most ", kMaxRowBlocks * kRowsPerBlock,
                      " rows N are supported, got ", m.size(0));
  FASTGAN_CHECK_VALUE(m.size(1) <= INT32_MAX, op, ": at most 2^31 - 1 kernels B are supported, got ", m.size(1));
  return code;
}

void check_other(const char* op, const char* name, const Tensor& t, const Tensor& m, at::IntArrayRef shape) {
  FASTGAN_CHECK(t.defined(), op, ": ", name, " is undefined");
  FASTGAN_CHECK(t.is_cuda() && t.device() == m.device(), op, ": ", name, " must be on ", m.device(),
                " like m, got a tensor on ", t.device());
  dtype_code(op, name, t);
  FASTGAN_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Runs on m's device and current stream.
struct Launch {
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  explicit Launch(const Tensor& m) : guard(m.device()), stream(c10::cuda::getCurrentCUDAStream(m.get_device())) {}
};

// (N, B, C) -> contiguous (B, C, N) in m's dtype.
Tensor bcn(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).permute({1, 2, 0}).contiguous(); }

// (B, C, N) accumulator -> contiguous (N, B, C) in dtype.
Tensor nbc(const Tensor& t, at::ScalarType dtype) { return t.permute({2, 0, 1}).to(dtype).contiguous(); }

Tensor mbd_forward(const Tensor& m, bool exclude_self) {
  const char* op = "fastgan::mbd_forward";
  const int code = check_m(op, m);
  Launch run(m);
  const int64_t n = m.size(0), nb = m.size(1), nc = m.size(2);
  Tensor o = at::empty({n, nb}, m.options().dtype(acc_type(m)));
  if (o.numel() == 0) return o.to(m.scalar_type());
  const Tensor mt = bcn(m, m.scalar_type());
  C10_CUDA_CHECK(launch_forward(code, mt.data_ptr(), o.data_ptr(), n, nb, nc, exclude_self, run.stream));
  return o.to(m.scalar_type());
}

Tensor mbd_backward(const Tensor& g, const Tensor& m) {
  const char* op = "fastgan::mbd_backward";
  const int code = check_m(op, m);
  const int64_t n = m.size(0), nb = m.size(1), nc = m.size(2);
  check_other(op, "g", g, m, {n, nb});
  Launch run(m);
  const at::ScalarType acc = acc_type(m);
  Tensor out = at::zeros({nb, nc, n}, m.options().dtype(acc));
  if (out.numel() == 0) return nbc(out, m.scalar_type());
  const Tensor mt = bcn(m, m.scalar_type());
  const Tensor gt = g.to(acc).t().contiguous();
  C10_CUDA_CHECK(launch_grad(code, false, mt.data_ptr(), nullptr, gt.data_ptr(), out.data_ptr(), nullptr, n, nb, nc,
                             run.stream));
  return nbc(out, m.scalar_type());
}

std::tuple<Tensor, Tensor> mbd_double_backward(const Tensor& u, const Tensor& g, const Tensor& m) {
  const char* op = "fastgan::mbd_double_backward";
  const int code = check_m(op, m);
  const int64_t n = m.size(0), nb = m.size(1), nc = m.size(2);
  check_other(op, "u", u, m, {n, nb, nc});
  check_other(op, "g", g, m, {n, nb});
  Launch run(m);
  const at::ScalarType acc = acc_type(m);
  Tensor out_m = at::zeros({nb, nc, n}, m.options().dtype(acc));
  Tensor out_g = at::zeros({n, nb}, m.options().dtype(acc));
  if (out_g.numel() != 0) {
    const Tensor mt = bcn(m, m.scalar_type());
    const Tensor ut = bcn(u, m.scalar_type());
    const Tensor gt = g.to(acc).t().contiguous();
    C10_CUDA_CHECK(launch_grad(code, true, mt.data_ptr(), ut.data_ptr(), gt.data_ptr(), out_m.data_ptr(),
                               out_g.data_ptr(), n, nb, nc, run.stream));
  }
  return {nbc(out_m, m.scalar_type()), out_g.to(g.scalar_type())};
}

}  // namespace
}  // namespace mbd
}  // namespace fastgan

// The schemas (TORCH_LIBRARY(fastgan, m) itself is in module.cpp: one per namespace).
TORCH_LIBRARY_FRAGMENT(fastgan, m) {
  m.def("mbd_forward(Tensor m, bool exclude_self) -> Tensor");
  m.def("mbd_backward(Tensor g, Tensor m) -> Tensor");
  m.def("mbd_double_backward(Tensor u, Tensor g, Tensor m) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("mbd_forward", &fastgan::mbd::mbd_forward);
  m.impl("mbd_backward", &fastgan::mbd::mbd_backward);
  m.impl("mbd_double_backward", &fastgan::mbd::mbd_double_backward);
}
