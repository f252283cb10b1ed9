// A CUDA execution model on the CPU, for testing fastgan's kernels where no GPU is.
//
// fastgan's .cu files (device code plus plain launchers, no torch headers) are
// compiled as C++ against this header (tests/cuda_emu/build.py rewrites each
// `kernel<<<grid, block, smem, stream>>>(args)` into `::emu::launch(...)`):
// every CUDA thread of a block becomes a fiber on the calling OS
// thread, and blocks run one after another.  A fiber runs until it reaches a
// barrier (__syncthreads, or the two halves of a warp shuffle) or returns; the
// scheduler then releases a barrier only when every thread that must reach it
// has.  The fibers of a block run in a shuffled order (seeded, so a failure
// replays), so a read of shared memory another thread writes without a barrier
// between them sees the stale value on some runs instead of always working.
//
// What it checks beyond "the kernels compute the reference's numbers":
//   * launch configuration: an empty grid or block, more than 1024 threads (or
//     more than the kernel's __launch_bounds__), grid y / z over 65535, more
//     than 48 KiB of dynamic shared memory -- the launch fails as CUDA's would;
//   * divergent barriers: a __syncthreads that some threads of the block never
//     reach (they returned, or wait elsewhere) is an error here, not a hang;
//   * full-mask warp shuffles in a warp with exited or missing lanes;
//   * shared memory read before it is written: __shared__ arrays are filled
//     with 0xFF bytes (NaN for floats) at the start of every block.
// What it cannot check: speed, register / shared-memory limits of a real SM,
// the GPU's floating-point details (fast-math exp, FMA contraction), races
// between blocks (they never overlap here), and anything about streams.
#pragma once

#include "emu_skip.h"

#include <math.h>  // the C++ wrapper: float overloads of sqrt / exp / ... in the global namespace

#include <algorithm>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

// ------------------------------------------------------------------ CUDA runtime types

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};

enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

// ------------------------------------------------------------------ qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define warpSize 32

// ------------------------------------------------------------------ fibers
//
// emu_switch(save, load): saves the callee-saved registers on the current stack, stores the stack
// pointer in *save, loads `load` and restores that stack's registers: a switch costs a few
// nanoseconds (ucontext's swapcontext makes a system call each time, which made launches of a
// hundred thousand blocks take minutes).  x86-64 System V only.  Weak: every translation unit
// including this header defines it, the linker keeps one.
#if !defined(__x86_64__)
#error "the CUDA emulator's fibers are written for x86-64"
#endif
extern "C" void emu_switch(void** save, void* load);
asm(R"(
  .text
  .weak emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");

namespace emu {

// ------------------------------------------------------------------ state

enum class Wait { kBlock, kWarp };  // the barrier a fiber stops at: __syncthreads, or its warp's shuffle

struct Fiber {
  void* sp = nullptr;  // the fiber's saved stack pointer while it is switched out
  uint3 thread_idx;
  unsigned int warp = 0, lane = 0;
};

struct Launch {
  dim3 grid, block;
  uint3 block_idx;
  std::function<void()> body;
  std::vector<Fiber> fibers;
  void* scheduler_sp = nullptr;
  unsigned int threads = 0;
  // the running block: fibers ready to run, how many wait at __syncthreads / at each warp's
  // shuffle, how many returned
  std::deque<unsigned> ready;
  unsigned at_block = 0, done = 0;
  unsigned at_warp[32] = {};
  std::mt19937 rng;
  // the warp-shuffle exchange: two sets of a value per lane per warp, and each lane's shuffle count
  alignas(16) unsigned char slots[2][32][32][16];
  unsigned shuffles[32][32] = {};
};

struct State {
  std::mutex mutex;  // one launch at a time (autograd may call from several threads)
  Launch* launch = nullptr;
  Fiber* current = nullptr;
  cudaError_t last_error = cudaSuccess;
  std::string message;
  std::vector<std::unique_ptr<char[]>> stacks;
  uint64_t launches = 0, block_serial = 0;
  std::unordered_map<const void*, uint64_t> poisoned;  // shared array -> block it was last filled for
};

inline State& state() {
  static State s;
  return s;
}

constexpr std::size_t kStackBytes = 128 * 1024;

// The first error of a launch is kept (and returned by cudaGetLastError).
inline void fail(cudaError_t code, const std::string& what) {
  State& s = state();
  if (s.last_error == cudaSuccess) {
    s.last_error = code;
    s.message = what;
  }
}

struct KernelFault {};  // unwinds a fiber whose thread hit an emulator error

[[noreturn]] inline void fault(const std::string& what) {
  fail(cudaErrorLaunchFailure, what);
  throw KernelFault{};
}

inline Fiber& self() { return *state().current; }

inline unsigned sm_count() {
  const char* env = std::getenv("FASTGAN_EMU_SMS");
  const int n = env != nullptr ? std::atoi(env) : 2;
  return n > 0 ? static_cast<unsigned>(n) : 2u;
}

// ------------------------------------------------------------------ barriers

inline unsigned warp_threads(const Launch& l, unsigned warp) { return std::min(32u, l.threads - warp * 32); }

// Queues fibers first .. first + count - 1 in a random order: the order threads resume after a
// barrier is what makes a missing barrier show.
// (A warp after a shuffle resumes in a random rotation of its lanes instead: shuffles are frequent,
// and they exchange values exactly whatever the order.)
inline void release(Launch& l, unsigned first, unsigned count, bool shuffle = true) {
  const std::size_t at = l.ready.size();
  const unsigned start = shuffle ? 0 : static_cast<unsigned>(l.rng() % count);
  for (unsigned i = 0; i < count; ++i) {
    const unsigned t = first + (start + i) % count;
    l.ready.push_back(t);
  }
  if (shuffle) std::shuffle(l.ready.begin() + static_cast<std::ptrdiff_t>(at), l.ready.end(), l.rng);
}

// Parks the running fiber at a barrier; the last thread to reach it releases all of them.
inline void yield(Wait why) {
  State& s = state();
  Launch& l = *s.launch;
  Fiber& f = *s.current;
  if (why == Wait::kWarp) {
    if (++l.at_warp[f.warp] == warp_threads(l, f.warp)) {
      l.at_warp[f.warp] = 0;
      release(l, f.warp * 32, warp_threads(l, f.warp), /*shuffle=*/false);
    }
  } else if (++l.at_block == l.threads) {  // a thread that returned never arrives: see run_block
    l.at_block = 0;
    release(l, 0, l.threads);
  }
  emu_switch(&f.sp, l.scheduler_sp);
}

inline void syncthreads() { yield(Wait::kBlock); }

template <typename T>
T shfl_down_sync(unsigned mask, T v, unsigned delta) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "emulated shuffle of a small value");
  if (mask != 0xffffffffu) fault("__shfl_down_sync: the emulator supports full-warp masks only");
  Launch& l = *state().launch;
  const Fiber& me = self();
  if ((me.warp + 1) * 32 > l.threads) fault("__shfl_down_sync(0xffffffff) in a warp with fewer than 32 threads");
  // Two sets of slots used in turn: a lane writes the next shuffle's set only after every lane has
  // reached that shuffle, so after every lane has read this one's -- one barrier per shuffle.
  const unsigned warp = me.warp, lane = me.lane, set = l.shuffles[warp][lane]++ & 1u;
  std::memcpy(l.slots[set][warp][lane], &v, sizeof(T));
  yield(Wait::kWarp);  // every lane has written
  T out = v;
  if (lane + delta < 32) std::memcpy(&out, l.slots[set][warp][lane + delta], sizeof(T));
  return out;
}

// __shared__ arrays are function statics here (one block runs at a time); this
// fills one with 0xFF bytes the first time a thread of a new block reaches it.
inline void poison_shared(void* p, std::size_t bytes) {
  State& s = state();
  uint64_t& serial = s.poisoned[p];
  if (serial != s.block_serial) {
    std::memset(p, 0xFF, bytes);
    serial = s.block_serial;
  }
}

// ------------------------------------------------------------------ scheduler

inline void fiber_entry() {
  State& s = state();
  try {
    s.launch->body();
  } catch (const KernelFault&) {
  } catch (...) {
    fail(cudaErrorLaunchFailure, "exception thrown in a kernel");
  }
  Fiber& f = *s.current;
  ++s.launch->done;
  emu_switch(&f.sp, s.launch->scheduler_sp);  // for good: a finished fiber is never switched to again
  __builtin_unreachable();
}

// A stack whose first switch-in "returns" into fiber_entry: six zero registers for emu_switch to
// pop, then fiber_entry's address for its ret, leaving the stack pointer at 8 mod 16 on entry as
// after a call (the ABI's alignment).
inline void* fresh_stack(char* base) {
#if defined(__SANITIZE_ADDRESS__)
  // A fiber's last frames never return (it switches away for good, or is abandoned after an
  // error), so AddressSanitizer's redzones of their locals stay marked: clear them for reuse.
  ASAN_UNPOISON_MEMORY_REGION(base, kStackBytes);
#endif
  auto top = reinterpret_cast<uintptr_t>(base + kStackBytes) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uintptr_t*>(top);
  *--sp = 0;  // fiber_entry's (never used) return address
  *--sp = reinterpret_cast<uintptr_t>(&fiber_entry);
  for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12 r13 r14 r15
  return sp;
}

inline std::string where(const Launch& l) {
  return " (block " + std::to_string(l.block_idx.x) + "," + std::to_string(l.block_idx.y) + "," +
         std::to_string(l.block_idx.z) + ")";
}

// Runs one block to completion; false after an error (the block's remaining fibers are abandoned).
inline bool run_block(Launch& l) {
  State& s = state();
  ++s.block_serial;
  for (unsigned t = 0; t < l.threads; ++t) {
    Fiber& f = l.fibers[t];
    f.warp = t / 32;
    f.lane = t % 32;
    f.thread_idx = {t % l.block.x, (t / l.block.x) % l.block.y, t / (l.block.x * l.block.y)};
    f.sp = fresh_stack(s.stacks[t].get());
  }
  l.ready.clear();
  l.at_block = l.done = 0;
  std::fill(std::begin(l.at_warp), std::end(l.at_warp), 0u);
  std::memset(l.shuffles, 0, sizeof l.shuffles);
  release(l, 0, l.threads);
  while (!l.ready.empty()) {
    Fiber& f = l.fibers[l.ready.front()];
    l.ready.pop_front();
    s.current = &f;
    emu_switch(&l.scheduler_sp, f.sp);
    s.current = nullptr;
    if (s.last_error != cudaSuccess) return false;
  }
  if (l.done == l.threads) return true;
  // Nothing can run and some threads wait: at a shuffle some lanes of their warp never reach, or
  // at a __syncthreads some threads of the block never reach (they returned or wait elsewhere).
  for (unsigned w = 0; w * 32 < l.threads; ++w)
    if (l.at_warp[w] != 0) {
      fail(cudaErrorLaunchFailure, "__shfl_down_sync(0xffffffff) not reached by every lane of warp " +
                                       std::to_string(w) + where(l));
      return false;
    }
  fail(cudaErrorLaunchFailure, "__syncthreads() reached by " + std::to_string(l.at_block) + " of " +
                                   std::to_string(l.threads) + " threads (" + std::to_string(l.done) +
                                   " returned before it): a divergent barrier" + where(l));
  return false;
}

inline uint64_t seed() {
  const char* env = std::getenv("FASTGAN_EMU_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : 0;
}

inline void run(dim3 grid, dim3 block, std::size_t smem, unsigned max_threads, std::function<void()> body) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  if (threads == 0 || blocks == 0 || threads > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 2147483647u || smem > 48 * 1024) {
    fail(cudaErrorInvalidConfiguration,
         "invalid configuration argument: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
             std::to_string(grid.z) + "), block (" + std::to_string(block.x) + "," + std::to_string(block.y) +
             "," + std::to_string(block.z) + "), " + std::to_string(smem) + " bytes of dynamic shared memory");
    return;
  }
  if (threads > max_threads) {
    fail(cudaErrorLaunchOutOfResources, "too many resources requested for launch: " + std::to_string(threads) +
                                            " threads per block, __launch_bounds__ " + std::to_string(max_threads));
    return;
  }
  if (kernels_skipped()) {  // timing the host code alone (emu_skip.h)
    ++s.launches;
    return;
  }
  if (std::getenv("FASTGAN_EMU_TRACE") != nullptr)  // every launch's geometry, for finding what is slow
    std::fprintf(stderr, "emu launch: grid (%u, %u, %u), block (%u, %u, %u)\n", grid.x, grid.y, grid.z, block.x,
                 block.y, block.z);
  Launch l;
  l.grid = grid;
  l.block = block;
  l.threads = static_cast<unsigned>(threads);
  l.body = std::move(body);
  l.fibers.resize(l.threads);
  while (s.stacks.size() < l.threads) s.stacks.emplace_back(new char[kStackBytes]);
  l.rng.seed(static_cast<std::mt19937::result_type>(seed() * 1000003u + s.launches++));
  s.launch = &l;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        l.block_idx = {x, y, z};
        if (!run_block(l)) {
          s.launch = nullptr;
          return;
        }
      }
  s.launch = nullptr;
}

// kernel<<<cfg>>>(args) is rewritten into launch(Config(cfg), kernel, bound)(args): every emulated
// thread calls the kernel with its own copy of the arguments, as CUDA passes them by value.
struct Config {
  dim3 grid, block;
  std::size_t smem;
  Config(dim3 g, dim3 b, std::size_t bytes = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(bytes) {}
};

template <typename... Params>
auto launch(Config cfg, void (*kernel)(Params...), unsigned max_threads = 1024) {
  return [cfg, kernel, max_threads](auto... args) {
    run(cfg.grid, cfg.block, cfg.smem, max_threads, [&]() { kernel(static_cast<Params>(args)...); });
  };
}

}  // namespace emu

// ------------------------------------------------------------------ built-in variables and intrinsics

#define threadIdx (::emu::self().thread_idx)
#define blockIdx (::emu::state().launch->block_idx)
#define blockDim (::emu::state().launch->block)
#define gridDim (::emu::state().launch->grid)

inline void __syncthreads() { ::emu::syncthreads(); }
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  return ::emu::shfl_down_sync(mask, v, delta);
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return expf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dsqrt_rn(double a) { return sqrt(a); }

inline cudaError_t cudaGetLastError() {
  ::emu::State& s = ::emu::state();
  const cudaError_t e = s.last_error;
  s.last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string text;
  text = "emulated CUDA error " + std::to_string(static_cast<int>(e)) + ": " + ::emu::state().message;
  return text.c_str();
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = static_cast<int>(::emu::sm_count());
  return cudaSuccess;
}
