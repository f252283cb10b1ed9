// csrc/check.h's messages, built with libstdc++ linked in statically (tests/test_check_messages.py).
// Each function raises with numbers, a shape, a dtype and a device in its message; the control raises
// the same through TORCH_CHECK_VALUE, whose number formatting goes through std::ostream.
#include <torch/extension.h>

#include "check.h"

void fastgan_value(const torch::Tensor& x, int64_t n, double eps) {
  FASTGAN_CHECK_VALUE(false, "x must have ", n, " channels, got shape ", x.sizes(), " and eps ", eps);
}

void fastgan_type(const torch::Tensor& x) {
  FASTGAN_CHECK_TYPE(false, "x must be Float, got ", x.scalar_type(), " on ", x.device(), " (", x.dim(), "-d)");
}

void fastgan_runtime(const torch::Tensor& x, bool flag) {
  FASTGAN_CHECK(false, "x has ", x.numel(), " elements, flag ", flag, ", strides ", x.strides());
}

void torch_value(const torch::Tensor& x, int64_t n) {
  TORCH_CHECK_VALUE(false, "x must have ", n, " channels, got shape ", x.sizes());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fastgan_value", &fastgan_value);
  m.def("fastgan_type", &fastgan_type);
  m.def("fastgan_runtime", &fastgan_runtime);
  m.def("torch_value", &torch_value);
}
