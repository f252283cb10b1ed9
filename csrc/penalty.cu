// CUDA kernels of the gradient penalties: the twin of fastgan/kernels/penalty.py
// (the math is documented there and in fastgan/reference/penalty.py).  No torch
// headers here: the bindings, checks and allocations are in penalty.cpp, which
// declares the launchers below (keep the two in sync).
//
// Shapes.  Every big tensor of a call is N samples of K elements, sample n being
// the dense block [n*K, (n+1)*K) of memory (contiguous or channels-last tensors,
// all tensors of a call with one layout): element i belongs to sample i / K.
//
// Kernels (T = float, __half, __nv_bfloat16 or double; acc = float, double for double):
//   * elementwise, grid-stride, VEC elements per access (16 bytes) when K is a
//     multiple of VEC and every pointer is 16-byte aligned:
//       interpolate            out = eps_n * real + (1 - eps_n) * fake
//       interpolate_backward   d_real = eps_n * g, d_fake = (1 - eps_n) * g
//       penalty_backward       dg = coef_n * g, coef_n from the sample's norm
//   * per-sample sums (sum a^2, or sum a * (b - c)), deterministic: rows longer
//     than kRowSplit elements are split over P blocks per row, each writing one
//     partial (a fixed tree over its threads); shorter rows take one warp each
//     (P = 1).  A one-block finalize then adds each row's P partials in order,
//     takes the square roots and reduces mean_n f(norm_n) by a fixed tree.
// No atomics anywhere: the results are bit-reproducible on a given device.

#include <cstdint>
#include <initializer_list>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "device_types.cuh"

namespace fastgan {
namespace pen {

// Same values as in penalty.cpp.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
constexpr int kModeTwoSided = 0;   // (norm - center)^2
constexpr int kModeOneSided = 1;   // max(norm - center, 0)^2
constexpr int kModeSquared = 2;    // norm^2
constexpr int kFinalizeRowSums = -1;  // no penalty: the per-sample sums themselves

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPartials = 1024;
constexpr int kBlocksPerSm = 4;        // reductions: about kBlocksPerSm * #SM blocks
constexpr int kElementwiseBlocksPerSm = 16;
constexpr int64_t kRowSplit = 4096;    // rows longer than this are split over blocks

// ----------------------------------------------------------------------------- types

using namespace ::fastgan::device;  // acc_t, Cvt, load_vec / store_vec (device_types.cuh)

// Correctly rounded square roots whatever the fast-math flags.
__device__ __forceinline__ float sqrt_rn(float v) { return __fsqrt_rn(v); }
__device__ __forceinline__ double sqrt_rn(double v) { return __dsqrt_rn(v); }

// ----------------------------------------------------------------------------- reductions

// Fixed tree over the 32 lanes; the result is valid in lane 0.
template <typename acc>
__device__ __forceinline__ acc warp_sum(acc v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the kThreads threads of a 1-D block, valid in thread 0 (once per kernel).
template <typename acc>
__device__ __forceinline__ acc block_sum(acc v) {
  __shared__ acc warp_sums[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_sum(lane < kWarps ? warp_sums[lane] : acc(0));
  return v;
}

template <typename T, int VEC, bool DOT_DIFF>
__device__ __forceinline__ acc_t<T> row_term(const T* __restrict__ a, const T* __restrict__ b,
                                             const T* __restrict__ c, int64_t off) {
  using acc = acc_t<T>;
  acc va[VEC];
  load_vec<T, VEC>(a, off, va);
  acc s = acc(0);
  if (DOT_DIFF) {
    acc vb[VEC], vc[VEC];
    load_vec<T, VEC>(b, off, vb);
    load_vec<T, VEC>(c, off, vc);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += va[j] * (vb[j] - vc[j]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += va[j] * va[j];
  }
  return s;
}

// Long rows: block (n, p) sums vectors p*kThreads + t, + P*kThreads, ... of row n.
template <typename T, int VEC, bool DOT_DIFF>
__global__ void __launch_bounds__(kThreads)
    row_sums_split_kernel(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
                          acc_t<T>* __restrict__ parts, int64_t K, int64_t P) {
  using acc = acc_t<T>;
  const int64_t n = blockIdx.x;
  const int64_t p = blockIdx.y;
  const int64_t nvec = K / VEC;
  const int64_t base = n * K;
  acc s = acc(0);
  for (int64_t v = p * kThreads + threadIdx.x; v < nvec; v += P * kThreads)
    s += row_term<T, VEC, DOT_DIFF>(a, b, c, base + v * VEC);
  s = block_sum(s);
  if (threadIdx.x == 0) parts[n * P + p] = s;
}

// Short rows: one warp per row (P = 1).
template <typename T, int VEC, bool DOT_DIFF>
__global__ void __launch_bounds__(kThreads)
    row_sums_warp_kernel(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
                         acc_t<T>* __restrict__ parts, int64_t N, int64_t K) {
  using acc = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (n >= N) return;  // a whole warp leaves together
  const int64_t nvec = K / VEC;
  const int64_t base = n * K;
  acc s = acc(0);
  for (int64_t v = lane; v < nvec; v += 32) s += row_term<T, VEC, DOT_DIFF>(a, b, c, base + v * VEC);
  s = warp_sum(s);
  if (lane == 0) parts[n] = s;
}

// One block: rows[n] = sum_p parts[n, p] (mode < 0) or its square root, the norm, and
// value = mean_n f(norm_n).
template <typename acc>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(const acc* __restrict__ parts, acc* __restrict__ rows, acc* __restrict__ value, acc center,
                    int mode, int64_t N, int64_t P) {
  acc local = acc(0);
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    acc s = acc(0);
    for (int64_t p = 0; p < P; ++p) s += parts[n * P + p];
    if (mode < 0) {
      rows[n] = s;
      continue;
    }
    const acc norm = sqrt_rn(s);
    rows[n] = norm;
    if (mode == kModeSquared) {
      local += s;
    } else {
      acc d = norm - center;
      if (mode == kModeOneSided && d < acc(0)) d = acc(0);
      local += d * d;
    }
  }
  if (mode >= 0) {
    const acc total = block_sum(local);
    if (threadIdx.x == 0) *value = total / static_cast<acc>(N);
  }
}

// ----------------------------------------------------------------------------- elementwise

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    interpolate_kernel(const T* __restrict__ real, const T* __restrict__ fake, const acc_t<T>* __restrict__ eps,
                       T* __restrict__ out, int64_t nvec, int64_t K) {
  using acc = acc_t<T>;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = v * VEC;
    const acc e = eps[i / K];
    acc r[VEC], f[VEC], o[VEC];
    load_vec<T, VEC>(real, i, r);
    load_vec<T, VEC>(fake, i, f);
#pragma unroll
    for (int j = 0; j < VEC; ++j) o[j] = e * r[j] + (acc(1) - e) * f[j];
    store_vec<T, VEC>(out, i, o);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    interpolate_backward_kernel(const T* __restrict__ grad, const acc_t<T>* __restrict__ eps,
                                T* __restrict__ d_real, T* __restrict__ d_fake, int64_t nvec, int64_t K) {
  using acc = acc_t<T>;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = v * VEC;
    const acc e = eps[i / K];
    acc g[VEC], o[VEC];
    load_vec<T, VEC>(grad, i, g);
    if (d_real != nullptr) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = e * g[j];
      store_vec<T, VEC>(d_real, i, o);
    }
    if (d_fake != nullptr) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) o[j] = (acc(1) - e) * g[j];
      store_vec<T, VEC>(d_fake, i, o);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    penalty_backward_kernel(const T* __restrict__ grad, const acc_t<T>* __restrict__ norms,
                            const acc_t<T>* __restrict__ grad_value, T* __restrict__ out, acc_t<T> center, int mode,
                            int64_t nvec, int64_t K, int64_t N) {
  using acc = acc_t<T>;
  const acc scale = acc(2) * (*grad_value) / static_cast<acc>(N);
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = v * VEC;
    acc coef = scale;
    if (mode != kModeSquared) {
      const acc norm = norms[i / K];
      acc d = norm - center;
      if (mode == kModeOneSided && d < acc(0)) d = acc(0);
      coef = norm > acc(0) ? scale * d / norm : acc(0);  // ||g|| = 0: zero, never NaN
    }
    acc g[VEC];
    load_vec<T, VEC>(grad, i, g);
#pragma unroll
    for (int j = 0; j < VEC; ++j) g[j] *= coef;
    store_vec<T, VEC>(out, i, g);
  }
}

// ----------------------------------------------------------------------------- host helpers

template <typename T> struct Tag { using type = T; };

template <typename F>
cudaError_t dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32: return f(Tag<float>{});
    case DType::kFloat16: return f(Tag<__half>{});
    case DType::kBFloat16: return f(Tag<__nv_bfloat16>{});
    case DType::kFloat64: return f(Tag<double>{});
  }
  return cudaErrorInvalidValue;
}

template <int V> struct VecC { static constexpr int value = V; };

// Calls f(VecC<V>) when `wide`, else f(VecC<1>).
template <int V, typename F>
cudaError_t with_vec(bool wide, F&& f) {
  if (wide) return f(VecC<V>{});
  return f(VecC<1>{});
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned elementwise_blocks(int64_t nvec, int sm_count) {
  int64_t blocks = ceil_div(nvec, kThreads);
  const int64_t cap = static_cast<int64_t>(sm_count > 0 ? sm_count : 1) * kElementwiseBlocksPerSm;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

int elem_size(DType dt) {
  switch (dt) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
  }
  return 4;
}

}  // namespace

// ----------------------------------------------------------------------------- launchers

int64_t row_partials(DType dt, int64_t N, int64_t K, int sm_count) {
  if (K <= kRowSplit || N <= 0) return 1;
  const int64_t vec = 16 / elem_size(dt);
  const int64_t target = static_cast<int64_t>(sm_count > 0 ? sm_count : 1) * kBlocksPerSm;
  int64_t p = ceil_div(target, N);
  const int64_t useful = ceil_div(ceil_div(K, vec), static_cast<int64_t>(kThreads) * 4);  // >= 4 vectors a thread
  if (p > useful) p = useful;
  if (p > kMaxPartials) p = kMaxPartials;
  return p < 1 ? 1 : p;
}

cudaError_t launch_row_sums(DType dt, bool dot_diff, const void* a_, const void* b_, const void* c_, void* parts_,
                            int64_t N, int64_t K, int64_t P, cudaStream_t stream) {
  if (N <= 0 || K <= 0 || P < 1 || P > kMaxPartials || N > 0x7fffffffLL) return cudaErrorInvalidValue;
  if (K <= kRowSplit && P != 1) return cudaErrorInvalidValue;
  if (dot_diff && (b_ == nullptr || c_ == nullptr)) return cudaErrorInvalidValue;
  return dispatch_dtype(dt, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    const T* a = static_cast<const T*>(a_);
    const T* b = static_cast<const T*>(b_);
    const T* c = static_cast<const T*>(c_);
    acc* parts = static_cast<acc*>(parts_);
    constexpr int V = max_vec<T>();
    return with_vec<V>(K % V == 0 && aligned16({a_, b_, c_}), [&](auto vc) -> cudaError_t {
      constexpr int VEC = decltype(vc)::value;
      if (K > kRowSplit) {
        const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(P));
        if (dot_diff)
          row_sums_split_kernel<T, VEC, true><<<grid, kThreads, 0, stream>>>(a, b, c, parts, K, P);
        else
          row_sums_split_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(a, b, c, parts, K, P);
      } else {
        const unsigned grid = static_cast<unsigned>(ceil_div(N, kWarps));
        if (dot_diff)
          row_sums_warp_kernel<T, VEC, true><<<grid, kThreads, 0, stream>>>(a, b, c, parts, N, K);
        else
          row_sums_warp_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(a, b, c, parts, N, K);
      }
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_finalize(bool is_double, const void* parts, void* rows, void* value, double center, int mode,
                            int64_t N, int64_t P, cudaStream_t stream) {
  if (N <= 0 || P < 1 || mode < kFinalizeRowSums || mode > kModeSquared) return cudaErrorInvalidValue;
  if (mode >= 0 && value == nullptr) return cudaErrorInvalidValue;
  if (is_double) {
    finalize_kernel<double><<<1, kThreads, 0, stream>>>(static_cast<const double*>(parts), static_cast<double*>(rows),
                                                         static_cast<double*>(value), center, mode, N, P);
  } else {
    finalize_kernel<float><<<1, kThreads, 0, stream>>>(static_cast<const float*>(parts), static_cast<float*>(rows),
                                                        static_cast<float*>(value), static_cast<float>(center), mode,
                                                        N, P);
  }
  return cudaGetLastError();
}

cudaError_t launch_interpolate(DType dt, const void* real_, const void* fake_, const void* eps_, void* out_,
                               int64_t numel, int64_t K, int sm_count, cudaStream_t stream) {
  if (numel <= 0 || K <= 0) return cudaErrorInvalidValue;
  return dispatch_dtype(dt, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    constexpr int V = max_vec<T>();
    return with_vec<V>(K % V == 0 && aligned16({real_, fake_, out_}), [&](auto vc) -> cudaError_t {
      constexpr int VEC = decltype(vc)::value;
      const int64_t nvec = numel / VEC;
      interpolate_kernel<T, VEC><<<elementwise_blocks(nvec, sm_count), kThreads, 0, stream>>>(
          static_cast<const T*>(real_), static_cast<const T*>(fake_), static_cast<const acc*>(eps_),
          static_cast<T*>(out_), nvec, K);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_interpolate_backward(DType dt, const void* grad_, const void* eps_, void* d_real_, void* d_fake_,
                                        int64_t numel, int64_t K, int sm_count, cudaStream_t stream) {
  if (numel <= 0 || K <= 0) return cudaErrorInvalidValue;
  if (d_real_ == nullptr && d_fake_ == nullptr) return cudaSuccess;
  return dispatch_dtype(dt, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    constexpr int V = max_vec<T>();
    return with_vec<V>(K % V == 0 && aligned16({grad_, d_real_, d_fake_}), [&](auto vc) -> cudaError_t {
      constexpr int VEC = decltype(vc)::value;
      const int64_t nvec = numel / VEC;
      interpolate_backward_kernel<T, VEC><<<elementwise_blocks(nvec, sm_count), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_), static_cast<const acc*>(eps_), static_cast<T*>(d_real_),
          static_cast<T*>(d_fake_), nvec, K);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_penalty_backward(DType dt, const void* grad_, const void* norms_, const void* grad_value_,
                                    void* out_, double center, int mode, int64_t numel, int64_t K, int64_t N,
                                    int sm_count, cudaStream_t stream) {
  if (numel <= 0 || K <= 0 || N <= 0 || mode < kModeTwoSided || mode > kModeSquared) return cudaErrorInvalidValue;
  return dispatch_dtype(dt, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    constexpr int V = max_vec<T>();
    return with_vec<V>(K % V == 0 && aligned16({grad_, out_}), [&](auto vc) -> cudaError_t {
      constexpr int VEC = decltype(vc)::value;
      const int64_t nvec = numel / VEC;
      penalty_backward_kernel<T, VEC><<<elementwise_blocks(nvec, sm_count), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_), static_cast<const acc*>(norms_), static_cast<const acc*>(grad_value_),
          static_cast<T*>(out_), static_cast<acc>(center), mode, nvec, K, N);
      return cudaGetLastError();
    });
  });
}

}  // namespace pen
}  // namespace fastgan
