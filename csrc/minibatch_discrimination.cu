// CUDA kernels of minibatch discrimination (the CUDA twin of
// fastgan/kernels/minibatch_discrimination.py; the math is documented there
// and in fastgan/ops/minibatch_discrimination.py).  No torch headers here:
// checks, allocations and the bindings are in minibatch_discrimination.cpp,
// which declares the two launchers defined at the bottom of this file.
//
// For M (N, B, C): d[i,j] = sum_c |M[i,b,c] - M[j,b,c]| (one kernel b),
// E = exp(-d), s = sign(M[i,b,c] - M[j,b,c]):
//   forward          o[i,b]     = sum_j E                      (j != i if exclude_self)
//   backward         dM[i,b,c]  = -sum_j (g_i + g_j) E s
//   double backward  w[i,j]     = sum_c (u_i - u_j)_c s_c
//                    grad_g[i,b] = -sum_j E w,  grad_M[i,b,c] = sum_j (g_i + g_j) E w s
//
// Blocks.  A block owns (kernel b, blockDim.x consecutive rows i): one thread
// per row i, looping over all j in tiles of kTileJ.  The tile's M values
// (and u's) are staged in shared memory kChunkC dimensions at a time; the
// thread keeps its row's values of the chunk and the kTileJ distances
// (and w) in registers.  Gradient sums per c go to registers when C <=
// kChunkC, else to the thread's own elements of a zero-initialised (B, C, N)
// accumulator buffer (read-modify-write by that thread only).  No atomics, a
// fixed summation order: bit-reproducible for a given device.  Memory is
// O(N*B*C); the pair matrix never leaves registers.
//
// Inputs: mt, ut = M and u as contiguous (B, C, N) arrays of T (float,
// __half, __nv_bfloat16, double); gt = g as a contiguous (B, N) array of the
// accumulator type A (float; double for double T).  Outputs in A: o and
// grad_g as (N, B), the gradient sums as (B, C, N).

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "device_types.cuh"

namespace fastgan {
namespace mbd {

// dtype codes: 0 float32, 1 float16, 2 bfloat16, 3 float64 (as in minibatch_discrimination.cpp).
cudaError_t launch_forward(int dtype, const void* mt, void* o, int64_t n, int64_t nb, int64_t nc, bool exclude_self,
                           cudaStream_t stream);
cudaError_t launch_grad(int dtype, bool double_, const void* mt, const void* ut, const void* gt, void* out_m,
                        void* out_g, int64_t n, int64_t nb, int64_t nc, cudaStream_t stream);

namespace {

constexpr int kMaxThreads = 128;  // rows i per block
constexpr int kTileJ = 32;        // columns j per shared-memory tile
constexpr int kChunkC = 8;        // dimensions c staged at a time

using namespace ::fastgan::device;  // acc_t, Cvt, load_vec / store_vec (device_types.cuh)

__device__ __forceinline__ float exp_neg(float x) { return __expf(-x); }
__device__ __forceinline__ double exp_neg(double x) { return exp(-x); }

template <typename A> __device__ __forceinline__ A sgn(A x) { return A((x > A(0)) - (x < A(0))); }

// Stage dimensions [c0, c0 + kChunkC) of columns [j0, j0 + kTileJ) of src (C, N) into dst; 0 outside.
template <typename T, typename A>
__device__ __forceinline__ void stage(A (&dst)[kChunkC][kTileJ], const T* __restrict__ src, int64_t c0, int64_t j0,
                                      int64_t n, int64_t nc) {
  for (int idx = threadIdx.x; idx < kChunkC * kTileJ; idx += blockDim.x) {
    const int cc = idx / kTileJ, jj = idx % kTileJ;
    const int64_t c = c0 + cc, j = j0 + jj;
    dst[cc][jj] = (c < nc && j < n) ? Cvt<T>::to(src[c * n + j]) : A(0);
  }
}

// The thread's own row i, dimensions [c0, c0 + kChunkC), into registers; 0 outside.
template <typename T, typename A>
__device__ __forceinline__ void row_chunk(A (&dst)[kChunkC], const T* __restrict__ src, int64_t c0, int64_t i,
                                          bool live, int64_t n, int64_t nc) {
#pragma unroll
  for (int cc = 0; cc < kChunkC; ++cc) {
    const int64_t c = c0 + cc;
    dst[cc] = (live && c < nc) ? Cvt<T>::to(src[c * n + i]) : A(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
forward_kernel(const T* __restrict__ mt, typename AccOf<T>::type* __restrict__ o, int64_t n, int64_t nb, int64_t nc,
               bool exclude_self) {
  using A = typename AccOf<T>::type;
  __shared__ A sx[kChunkC][kTileJ];
  const int64_t b = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool live = i < n;
  const T* __restrict__ mb = mt + b * nc * n;
  A acc = A(0);
  for (int64_t j0 = 0; j0 < n; j0 += kTileJ) {
    A d[kTileJ];
#pragma unroll
    for (int jj = 0; jj < kTileJ; ++jj) d[jj] = A(0);
    for (int64_t c0 = 0; c0 < nc; c0 += kChunkC) {
      __syncthreads();
      stage<T, A>(sx, mb, c0, j0, n, nc);
      A xi[kChunkC];
      row_chunk<T, A>(xi, mb, c0, i, live, n, nc);
      __syncthreads();
#pragma unroll
      for (int cc = 0; cc < kChunkC; ++cc) {
        if (c0 + cc < nc) {  // uniform across the block
#pragma unroll
          for (int jj = 0; jj < kTileJ; ++jj) d[jj] += fabs(xi[cc] - sx[cc][jj]);
        }
      }
    }
#pragma unroll
    for (int jj = 0; jj < kTileJ; ++jj) {
      const int64_t j = j0 + jj;
      if (j < n && !(exclude_self && j == i)) acc += exp_neg(d[jj]);
    }
  }
  if (live) o[i * nb + b] = acc;
}

template <typename T, bool DOUBLE>
__global__ void __launch_bounds__(kMaxThreads)
grad_kernel(const T* __restrict__ mt, const T* __restrict__ ut, const typename AccOf<T>::type* __restrict__ gt,
            typename AccOf<T>::type* __restrict__ out_m, typename AccOf<T>::type* __restrict__ out_g, int64_t n,
            int64_t nb, int64_t nc) {
  using A = typename AccOf<T>::type;
  __shared__ A sx[kChunkC][kTileJ];
  __shared__ A su[DOUBLE ? kChunkC : 1][kTileJ];
  __shared__ A sg[kTileJ];
  const int64_t b = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool live = i < n;
  const T* __restrict__ mb = mt + b * nc * n;
  const T* __restrict__ ub = DOUBLE ? ut + b * nc * n : nullptr;
  const A* __restrict__ gb = gt + b * n;
  A* __restrict__ ob = out_m + b * nc * n;
  const bool one_chunk = nc <= kChunkC;
  const A gi = live ? gb[i] : A(0);
  A acc_c[kChunkC];  // per-c sums when C <= kChunkC
#pragma unroll
  for (int cc = 0; cc < kChunkC; ++cc) acc_c[cc] = A(0);
  A acc_g = A(0);

  for (int64_t j0 = 0; j0 < n; j0 += kTileJ) {
    A d[kTileJ];
    A w[kTileJ];
#pragma unroll
    for (int jj = 0; jj < kTileJ; ++jj) d[jj] = w[jj] = A(0);
    // Pass 1: distances (and w) of the tile.
    for (int64_t c0 = 0; c0 < nc; c0 += kChunkC) {
      __syncthreads();
      stage<T, A>(sx, mb, c0, j0, n, nc);
      if constexpr (DOUBLE) stage<T, A>(su, ub, c0, j0, n, nc);
      if (c0 == 0 && threadIdx.x < kTileJ) {
        const int64_t j = j0 + threadIdx.x;
        sg[threadIdx.x] = j < n ? gb[j] : A(0);
      }
      A xi[kChunkC];
      A ui[kChunkC];
      row_chunk<T, A>(xi, mb, c0, i, live, n, nc);
      if constexpr (DOUBLE) row_chunk<T, A>(ui, ub, c0, i, live, n, nc);
      __syncthreads();
#pragma unroll
      for (int cc = 0; cc < kChunkC; ++cc) {
        if (c0 + cc < nc) {
#pragma unroll
          for (int jj = 0; jj < kTileJ; ++jj) {
            const A diff = xi[cc] - sx[cc][jj];
            d[jj] += fabs(diff);
            if constexpr (DOUBLE) w[jj] += (ui[cc] - su[cc][jj]) * sgn(diff);
          }
        }
      }
    }
    // Pair weights v = (g_i + g_j) E (times w for the double backward), kept in d.
    if (nc == 0) {  // no c loop ran: sg was not staged
      __syncthreads();
      if (threadIdx.x < kTileJ) sg[threadIdx.x] = (j0 + threadIdx.x < n) ? gb[j0 + threadIdx.x] : A(0);
      __syncthreads();
    }
#pragma unroll
    for (int jj = 0; jj < kTileJ; ++jj) {
      const A e = (j0 + jj < n) ? exp_neg(d[jj]) : A(0);
      if constexpr (DOUBLE) {
        const A ew = e * w[jj];
        acc_g += ew;
        d[jj] = (gi + sg[jj]) * ew;
      } else {
        d[jj] = (gi + sg[jj]) * e;
      }
    }
    // Pass 2: sign-weighted sums per c.
    for (int64_t c0 = 0; c0 < nc; c0 += kChunkC) {
      __syncthreads();
      stage<T, A>(sx, mb, c0, j0, n, nc);
      A xi[kChunkC];
      row_chunk<T, A>(xi, mb, c0, i, live, n, nc);
      __syncthreads();
#pragma unroll
      for (int cc = 0; cc < kChunkC; ++cc) {
        if (c0 + cc < nc) {
          A part = A(0);
#pragma unroll
          for (int jj = 0; jj < kTileJ; ++jj) part += d[jj] * sgn(xi[cc] - sx[cc][jj]);
          if constexpr (!DOUBLE) part = -part;
          if (one_chunk) {
            acc_c[cc] += part;
          } else if (live) {
            ob[(c0 + cc) * n + i] += part;
          }
        }
      }
    }
  }
  if (live && one_chunk) {
#pragma unroll
    for (int cc = 0; cc < kChunkC; ++cc)
      if (cc < nc) ob[cc * n + i] = acc_c[cc];
  }
  if constexpr (DOUBLE) {
    if (live) out_g[i * nb + b] = -acc_g;
  }
}

struct Geometry {
  dim3 grid, block;
};

Geometry geometry(int64_t n, int64_t nb) {
  const int64_t threads = n >= kMaxThreads ? kMaxThreads : ((n + 31) / 32) * 32;
  Geometry g;
  g.block = dim3(static_cast<unsigned>(threads));
  g.grid = dim3(static_cast<unsigned>(nb), static_cast<unsigned>((n + threads - 1) / threads));
  return g;
}

template <typename T>
cudaError_t forward_typed(const void* mt, void* o, int64_t n, int64_t nb, int64_t nc, bool exclude_self,
                          cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const Geometry g = geometry(n, nb);
  forward_kernel<T><<<g.grid, g.block, 0, stream>>>(static_cast<const T*>(mt), static_cast<A*>(o), n, nb, nc,
                                                    exclude_self);
  return cudaGetLastError();
}

template <typename T>
cudaError_t grad_typed(bool double_, const void* mt, const void* ut, const void* gt, void* out_m, void* out_g,
                       int64_t n, int64_t nb, int64_t nc, cudaStream_t stream) {
  using A = typename AccOf<T>::type;
  const Geometry g = geometry(n, nb);
  if (double_) {
    grad_kernel<T, true><<<g.grid, g.block, 0, stream>>>(static_cast<const T*>(mt), static_cast<const T*>(ut),
                                                         static_cast<const A*>(gt), static_cast<A*>(out_m),
                                                         static_cast<A*>(out_g), n, nb, nc);
  } else {
    grad_kernel<T, false><<<g.grid, g.block, 0, stream>>>(static_cast<const T*>(mt), nullptr,
                                                          static_cast<const A*>(gt), static_cast<A*>(out_m), nullptr,
                                                          n, nb, nc);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_forward(int dtype, const void* mt, void* o, int64_t n, int64_t nb, int64_t nc, bool exclude_self,
                           cudaStream_t stream) {
  if (n == 0 || nb == 0) return cudaSuccess;
  switch (dtype) {
    case 0: return forward_typed<float>(mt, o, n, nb, nc, exclude_self, stream);
    case 1: return forward_typed<__half>(mt, o, n, nb, nc, exclude_self, stream);
    case 2: return forward_typed<__nv_bfloat16>(mt, o, n, nb, nc, exclude_self, stream);
    case 3: return forward_typed<double>(mt, o, n, nb, nc, exclude_self, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_grad(int dtype, bool double_, const void* mt, const void* ut, const void* gt, void* out_m,
                        void* out_g, int64_t n, int64_t nb, int64_t nc, cudaStream_t stream) {
  if (n == 0 || nb == 0) return cudaSuccess;
  switch (dtype) {
    case 0: return grad_typed<float>(double_, mt, ut, gt, out_m, out_g, n, nb, nc, stream);
    case 1: return grad_typed<__half>(double_, mt, ut, gt, out_m, out_g, n, nb, nc, stream);
    case 2: return grad_typed<__nv_bfloat16>(double_, mt, ut, gt, out_m, out_g, n, nb, nc, stream);
    case 3: return grad_typed<double>(double_, mt, ut, gt, out_m, out_g, n, nb, nc, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace mbd
}  // namespace fastgan
