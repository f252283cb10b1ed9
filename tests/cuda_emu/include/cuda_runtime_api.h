// Stand-in for the CUDA runtime API header in the CPU emulation of fastgan's kernels (see emu_runtime.h).
#pragma once
#include "emu_runtime.h"
