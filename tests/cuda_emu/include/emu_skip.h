// FASTGAN_EMU_SKIP_KERNELS=1: launches are checked and counted but not run, and outputs are not
// poisoned, so that the bindings' host code (checks, allocations, dispatch) can be timed alone
// (benchmarks/host_overhead.py).  Results are junk then.  Read at each call: a test can switch it.
#pragma once
#include <cstdlib>

namespace emu {
inline bool kernels_skipped() {
  const char* skip = std::getenv("FASTGAN_EMU_SKIP_KERNELS");
  return skip != nullptr && skip[0] != '\0' && skip[0] != '0';
}
}  // namespace emu
