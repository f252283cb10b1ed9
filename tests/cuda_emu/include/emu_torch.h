// Included first by every binding (.cpp) in the CPU emulation of fastgan's kernels (see build.py):
// outputs allocated with at::empty / at::empty_like start as NaN (integers: all ones), as a GPU's
// uninitialised memory may, so an element a kernel forgets to write fails the comparison with the
// reference instead of passing as the allocator's zero.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/fill.h>

#include "emu_skip.h"

namespace emu {
inline at::Tensor poisoned(at::Tensor t) {
  if (t.numel() == 0 || kernels_skipped()) return t;
  if (at::isFloatingType(t.scalar_type()))
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  else if (t.scalar_type() != at::kBool)
    t.fill_(-1);
  return t;
}
inline at::Tensor empty(at::IntArrayRef size, at::TensorOptions options = {},
                        std::optional<at::MemoryFormat> memory_format = std::nullopt) {
  return poisoned(at::empty(size, options, memory_format));
}
inline at::Tensor empty_like(const at::Tensor& like, at::TensorOptions options = {},
                             std::optional<at::MemoryFormat> memory_format = std::nullopt) {
  return poisoned(at::empty_like(like, options, memory_format));
}
}  // namespace emu
