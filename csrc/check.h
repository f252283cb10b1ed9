// Argument checks for the ops' bindings: TORCH_CHECK / _VALUE / _TYPE, with messages formatted
// without std::ostream's number formatting.
//
// Why: on the first GPU machine this ran on, the toolchain (CXX=/opt/gcc/bin/g++) linked parts of
// libstdc++ into fastgan._C itself, and number formatting through that copy (std::num_put, reached by
// `stream << int64_t`, which c10::str and so every TORCH_CHECK message with a number uses) crashed
// the process with a segmentation fault instead of raising.  A build linked with -static-libstdc++
// shows the same mechanism here: the number is silently dropped from the message.  Strings stream
// safely, so numbers and shapes are formatted with std::to_string / snprintf (libc) first.
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

namespace fastgan {
namespace detail {

template <typename T>
void append(std::string& out, const T& v) {
  using D = std::decay_t<T>;
  if constexpr (std::is_convertible_v<const T&, const char*>) {
    out += static_cast<const char*>(v);
  } else if constexpr (std::is_same_v<D, std::string>) {
    out += v;
  } else if constexpr (std::is_same_v<D, bool>) {
    out += v ? "true" : "false";
  } else if constexpr (std::is_integral_v<D>) {
    out += std::to_string(v);
  } else if constexpr (std::is_floating_point_v<D>) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
    out += buf;
  } else if constexpr (std::is_convertible_v<const T&, c10::IntArrayRef>) {  // sizes(), strides()
    const c10::IntArrayRef values = v;
    out += "[";
    for (size_t i = 0; i < values.size(); ++i) {
      if (i) out += ", ";
      out += std::to_string(values[i]);
    }
    out += "]";
  } else if constexpr (std::is_same_v<D, c10::ScalarType>) {
    out += c10::toString(v);
  } else if constexpr (std::is_same_v<D, c10::Device>) {
    out += v.str();
  } else {
    out += c10::str(v);  // enums such as MemoryFormat: their operator<< streams names only
  }
}

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (append(out, args), ...);
  return out;
}

}  // namespace detail
}  // namespace fastgan

#define FASTGAN_CHECK_WITH(error_t, cond, ...)                                     \
  if (C10_UNLIKELY(!(cond))) {                                                     \
    C10_THROW_ERROR(error_t, ::fastgan::detail::message(__VA_ARGS__));             \
  }

// Like TORCH_CHECK (RuntimeError), TORCH_CHECK_VALUE (ValueError), TORCH_CHECK_TYPE (TypeError).
#define FASTGAN_CHECK(cond, ...) FASTGAN_CHECK_WITH(Error, cond, __VA_ARGS__)
#define FASTGAN_CHECK_VALUE(cond, ...) FASTGAN_CHECK_WITH(ValueError, cond, __VA_ARGS__)
#define FASTGAN_CHECK_TYPE(cond, ...) FASTGAN_CHECK_WITH(TypeError, cond, __VA_ARGS__)
