// csrc/check.h's messages, built with libstdc++ linked in statically (tests/test_check_messages.py).
// Each function raises a check with numbers, a shape, a dtype or a device in its message, catches it
// and returns (error type, message); `torch_value` raises the same through TORCH_CHECK_VALUE, whose
// number formatting goes through std::ostream (the control).  Only pybind11 and c10 headers: a
// torch/extension.h build costs a minute more.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "check.h"

using Result = std::pair<std::string, std::string>;

template <typename Fn>
Result catch_check(Fn fn) {
  try {
    fn();
  } catch (const c10::ValueError& e) {
    return {"ValueError", e.what_without_backtrace()};
  } catch (const c10::TypeError& e) {
    return {"TypeError", e.what_without_backtrace()};
  } catch (const c10::Error& e) {
    return {"RuntimeError", e.what_without_backtrace()};
  }
  return {"none", ""};
}

Result fastgan_value(const std::vector<int64_t>& shape, int64_t n, double eps) {
  return catch_check([&] {
    FASTGAN_CHECK_VALUE(false, "x must have ", n, " channels, got shape ", c10::IntArrayRef(shape), " and eps ", eps);
  });
}

Result fastgan_type(int64_t dim) {
  return catch_check([&] {
    FASTGAN_CHECK_TYPE(false, "x must be Float, got ", c10::ScalarType::Double, " on ", c10::Device("cuda:1"), " (",
                       dim, "-d)");
  });
}

Result fastgan_runtime(int64_t numel, bool flag, const std::vector<int64_t>& strides) {
  return catch_check([&] {
    FASTGAN_CHECK(false, "x has ", numel, " elements, flag ", flag, ", strides ", c10::IntArrayRef(strides));
  });
}

Result torch_value(const std::vector<int64_t>& shape, int64_t n) {
  return catch_check([&] {
    TORCH_CHECK_VALUE(false, "x must have ", n, " channels, got shape ", c10::IntArrayRef(shape));
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fastgan_value", &fastgan_value);
  m.def("fastgan_type", &fastgan_type);
  m.def("fastgan_runtime", &fastgan_runtime);
  m.def("torch_value", &torch_value);
}
