// Stand-in for c10/cuda/CUDAException.h in the CPU emulation of fastgan's kernels.
#pragma once
#include <c10/util/Exception.h>

#include "emu_runtime.h"

#define C10_CUDA_CHECK(EXPR)                                                          \
  do {                                                                                \
    const cudaError_t emu_err_ = (EXPR);                                              \
    TORCH_CHECK(emu_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(emu_err_)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
