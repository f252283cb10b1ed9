// Device-side type helpers shared by fastgan's CUDA kernels (no torch headers).
//
//  acc_t<T>      the accumulator type: float for float / half / bfloat16, double for double
//  Cvt<T>        conversions between T and its accumulator type
//  load_vec / store_vec
//                VEC consecutive elements in one access (16 bytes at the widest); the caller
//                checks alignment first
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fastgan {
namespace device {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

template <typename T> struct Cvt;
template <> struct Cvt<float> {
  __device__ __forceinline__ static float to(float v) { return v; }
  __device__ __forceinline__ static float from(float v) { return v; }
};
template <> struct Cvt<double> {
  __device__ __forceinline__ static double to(double v) { return v; }
  __device__ __forceinline__ static double from(double v) { return v; }
};
template <> struct Cvt<__half> {
  __device__ __forceinline__ static float to(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from(float v) { return __float2half_rn(v); }
};
template <> struct Cvt<__nv_bfloat16> {
  __device__ __forceinline__ static float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

template <typename T> constexpr int max_vec() { return static_cast<int>(16 / sizeof(T)); }

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, int64_t off, acc_t<T> (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p + off);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = Cvt<T>::to(pk.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ p, int64_t off, const acc_t<T> (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pk.v[j] = Cvt<T>::from(in[j]);
  *reinterpret_cast<Pack<T, VEC>*>(p + off) = pk;
}

}  // namespace device
}  // namespace fastgan
