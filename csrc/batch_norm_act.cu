// CUDA kernels of the fused batch norm + activation family (the CUDA twin of
// fastgan/kernels/batch_norm_act.py; the math is documented there and in
// fastgan/ops/batch_norm_act.py).  No torch headers here: the bindings, the
// checks and the allocations are in batch_norm_act.cpp.
//
// Shapes.  Big tensors are (N, C, S) in one of two layouts (batch_norm_act.h):
//   kRows          (n, c, s) at (n*C + c)*S + s
//   kChannelsLast  (n, c, s) at (n*S + s)*C + c = m*C + c,  m = n*S + s
// A channel's M = N*S elements are indexed by m.  Per-channel arguments are
// (C,) vectors (batch norm: reductions over a channel's M elements) or (N, C)
// tables (per-sample norms: reductions over the S elements of each (n, c));
// either way a table of R entries, and a reduction runs per entry over one
// "segment" of its channel (Segments below).  (T, C) tables with T < N split
// the batch into T segments of N / T consecutive samples (per-segment batch
// statistics: one pass over real and fake images that normalises each alone).
//
// Kernels (T = float, __half, __nv_bfloat16 or double; acc = float, double for double):
//   * reductions per entry, written as partials work[k][p][e] by P blocks per
//     entry (block p takes a fixed, interleaved share of the segment), then
//     merged by a second kernel in a fixed order: no atomics, bit-reproducible
//     for a given device.  Moments use Welford within a thread and Chan's
//     pairwise merge across threads, warps, blocks;
//   * one elementwise map per pass (MODE), with per-entry coefficients
//     computed by the caller.
// Each has a kRows version (a channel's data are N runs of S contiguous
// elements) and a kChannelsLast version (tiles of blockDim.y rows m by
// blockDim.x * VEC contiguous channels).  VEC > 1 (16-byte accesses) is used
// when the contiguous extent (S or C) is a multiple of VEC and every big
// pointer is 16-byte aligned; otherwise VEC = 1.  Indices are int64 throughout;
// the grid-stride walks update offsets incrementally (no division per element).
// Pixel shuffle (upscale r > 1, kRows): the y-side tensors are addressed at
// their shuffled offsets by two more kernels (pointwise_shuffle_kernel,
// grad_sums_shuffle_kernel), chosen at launch; r == 1 runs exactly the kernels above.

#include "batch_norm_act.h"

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "device_types.cuh"
#include "stats_affine.cuh"

namespace fastgan {
namespace bna {
namespace {

constexpr int kThreads = 256;           // threads of every block
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPartials = 512;       // P <= 512 (gridDim.y of the reductions)
constexpr int kBlocksPerSm = 8;         // grid size target: kBlocksPerSm * #SM blocks
constexpr int kMaxGridY = 65535;

// ----------------------------------------------------------------------------- types

using namespace ::fastgan::device;  // acc_t, Cvt, load_vec / store_vec (device_types.cuh)

// ----------------------------------------------------------------------------- reduction states

// K accumulator values; merged by ChanMerge (K = 3: count, mean, M2) or SumMerge.
template <typename acc, int K> struct State { acc v[K]; };

template <typename acc, int K>
__device__ __forceinline__ State<acc, K> zero_state() {
  State<acc, K> s;
#pragma unroll
  for (int k = 0; k < K; ++k) s.v[k] = acc(0);
  return s;
}

struct ChanMerge {
  // (n, mean, M2) of a ∪ b (Chan, Golub & LeVeque): an empty b leaves a unchanged;
  // an empty a becomes b (b.n / n == 1 exactly).
  template <typename acc>
  __device__ __forceinline__ static void merge(State<acc, 3>& a, const State<acc, 3>& b) {
    if (b.v[0] == acc(0)) return;
    const acc n = a.v[0] + b.v[0];
    const acc delta = b.v[1] - a.v[1];
    const acc wb = b.v[0] / n;
    a.v[1] += delta * wb;
    a.v[2] += b.v[2] + delta * delta * a.v[0] * wb;  // + delta^2 * na * nb / n
    a.v[0] = n;
  }
};

struct SumMerge {
  template <typename acc, int K>
  __device__ __forceinline__ static void merge(State<acc, K>& a, const State<acc, K>& b) {
#pragma unroll
    for (int k = 0; k < K; ++k) a.v[k] += b.v[k];
  }
};

// Tree over the 32 lanes (fixed order); the result is valid in lane 0.
template <class Merge, typename acc, int K>
__device__ __forceinline__ State<acc, K> warp_reduce(State<acc, K> s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    State<acc, K> o;
#pragma unroll
    for (int k = 0; k < K; ++k) o.v[k] = __shfl_down_sync(0xffffffffu, s.v[k], off);
    Merge::merge(s, o);
  }
  return s;
}

// Merge of the states of all kThreads threads of a 1-D block; valid in thread 0.
// Called once per kernel (its shared buffer is not reused).
template <class Merge, typename acc, int K>
__device__ __forceinline__ State<acc, K> block_reduce(State<acc, K> s) {
  __shared__ State<acc, K> warp_states[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  s = warp_reduce<Merge>(s);
  if (lane == 0) warp_states[warp] = s;
  __syncthreads();
  if (warp == 0) {
    State<acc, K> t = lane < kWarps ? warp_states[lane] : zero_state<acc, K>();
    s = warp_reduce<Merge>(t);
  }
  return s;
}

// Merge of the states of the blockDim.y threads of column threadIdx.x of a 2-D
// block (blockDim.y a power of two), by a fixed tree over threadIdx.y.  Every
// thread gets its column's result; `sh` holds kThreads states and may be
// reused right after the call.
template <class Merge, typename acc, int K>
__device__ __forceinline__ State<acc, K> column_reduce(State<acc, K> s, State<acc, K>* sh) {
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x;
  sh[ty * bx + tx] = s;
  __syncthreads();
  for (int off = blockDim.y / 2; off > 0; off >>= 1) {
    if (ty < off) {
      State<acc, K> t = sh[ty * bx + tx];
      Merge::merge(t, sh[(ty + off) * bx + tx]);
      sh[ty * bx + tx] = t;
    }
    __syncthreads();
  }
  const State<acc, K> r = sh[tx];
  __syncthreads();
  return r;
}

// ----------------------------------------------------------------------------- walks

// Vectors w = w0, w0 + step, ... (w < MV = N * SV) of channel c of a kRows tensor,
// whose N rows hold SV = S / VEC vectors each.  Tracks r = w % SV and the
// element offset c*S + (w / SV)*row_stride + r*VEC without dividing per step.
struct RowWalk {
  int64_t w, r, off;
  int64_t step, dr, off_step, carry, sv;

  __device__ __forceinline__ RowWalk(int64_t w0, int64_t step_, int64_t sv_, int vec, int64_t base,
                                     int64_t row_stride) {
    w = w0;
    step = step_;
    sv = sv_;
    const int64_t n = w0 / sv;
    r = w0 - n * sv;
    off = base + n * row_stride + r * vec;
    const int64_t dn = step / sv;
    dr = step - dn * sv;
    off_step = dn * row_stride + dr * vec;
    carry = row_stride - sv * vec;  // r wraps past the row end: next row, back by S elements
  }
  __device__ __forceinline__ void advance() {
    w += step;
    r += dr;  // r + dr < 2 * sv: one wrap at most
    off += off_step;
    if (r >= sv) {
      r -= sv;
      off += carry;
    }
  }
};

// ----------------------------------------------------------------------------- per-channel arguments

template <typename acc> struct ChannelArgs {
  const acc* scale;
  const acc* shift;
  const acc* mean;
  const acc* invstd;
  const acc* coef[7];
  acc slope;
};

template <typename T> struct BigArgs {
  const T* x;
  const T* gy;
  const T* u;
  T* out;
  T* out2;
};

template <typename acc> struct NormCoef { acc scale, shift, mean, invstd; };

template <typename acc>
__device__ __forceinline__ NormCoef<acc> load_norm_coef(const ChannelArgs<acc>& a, int64_t c) {
  NormCoef<acc> k;
  k.scale = __ldg(a.scale + c);
  k.shift = __ldg(a.shift + c);
  k.mean = __ldg(a.mean + c);
  k.invstd = __ldg(a.invstd + c);
  return k;
}

// ----------------------------------------------------------------------------- segments

// How a reduction splits each channel's M = N*S elements, and how an element
// finds its entry in the per-channel vectors / (N, C) tables (batch_norm_act.h):
//   batch (per_sample = false): one segment of all N*S elements, entry c;
//   per sample:                 N segments of S elements,       entry n*C + c;
//   T-row tables (T | N):       T segments of (N / T)*S elements, entry (n / (N / T))*C + c.
struct Segments {
  int64_t C, S;
  int64_t num;         // T: segments per channel (N per sample, else 1)
  int64_t len;         // L: elements of one channel in one segment (rows*S)
  int64_t rows;        // samples in one segment: kRows runs of S elements (1 per sample, N for batch)
  int64_t tbl_stride;  // C with tables, 0 with vectors: entry of (n, c) is (n / rows)*tbl_stride + c
  int64_t entries;     // R = T*C: entries of the tables, rows of the reductions' results

  // First element of entry e's segment of its channel in a kRows tensor (its runs follow at stride C*S).
  __host__ __device__ __forceinline__ int64_t rows_start(int64_t e) const {
    const int64_t sg = e / C;
    return (sg * rows * C + (e - sg * C)) * S;
  }
  // Entry of sample n, channel c.
  __host__ __device__ __forceinline__ int64_t entry(int64_t n, int64_t c) const {
    if (tbl_stride == 0) return c;
    return (rows == 1 ? n : n / rows) * tbl_stride + c;
  }
};

// ----------------------------------------------------------------------------- moments

// Welford's update of VEC running (mean, M2) pairs that share the count n:
// lane j takes v[j].  One division per VEC elements.
template <typename acc, int VEC>
__device__ __forceinline__ void welford_lanes(int64_t& n, acc (&mean)[VEC], acc (&m2)[VEC], const acc (&v)[VEC]) {
  ++n;
  const acc inv = acc(1) / static_cast<acc>(n);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const acc d = v[j] - mean[j];
    mean[j] += d * inv;
    m2[j] += d * (v[j] - mean[j]);
  }
}

template <typename acc>
__device__ __forceinline__ State<acc, 3> welford_state(int64_t n, acc mean, acc m2) {
  State<acc, 3> s;
  s.v[0] = static_cast<acc>(n);
  s.v[1] = mean;
  s.v[2] = m2;
  return s;
}

// kRows, block (e = blockIdx.x, p = blockIdx.y): entry e = sg*C + c is the
// seg.rows runs of S elements starting at element (sg*rows*C + c)*S, run stride C*S (batch:
// e = c, runs n = 0..N-1; per sample: e = n*C + c, one run).  The block takes
// the vectors w = p*kThreads + tid + k*P*kThreads (w < mv = rows*S/VEC).  A
// thread keeps one Welford state per position j in the vector (same entry,
// same count), merged in order at the end, then across the block.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
moments_rows_kernel(const T* __restrict__ x, acc_t<T>* __restrict__ work, Segments seg, int64_t mv, int64_t P) {
  using acc = acc_t<T>;
  const int64_t e = blockIdx.x;
  const int64_t p = blockIdx.y;
  acc mean[VEC], m2[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) mean[j] = m2[j] = acc(0);
  int64_t count = 0;
  for (RowWalk it(p * kThreads + threadIdx.x, P * kThreads, seg.S / VEC, VEC, seg.rows_start(e), seg.C * seg.S);
       it.w < mv; it.advance()) {
    acc v[VEC];
    load_vec<T, VEC>(x, it.off, v);
    welford_lanes<acc, VEC>(count, mean, m2, v);
  }
  State<acc, 3> st = welford_state(count, mean[0], m2[0]);
#pragma unroll
  for (int j = 1; j < VEC; ++j) ChanMerge::merge(st, welford_state(count, mean[j], m2[j]));
  st = block_reduce<ChanMerge>(st);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < 3; ++k) work[(k * P + p) * seg.entries + e] = st.v[k];
  }
}

// kChannelsLast tiles: block (blockIdx.x = sg*cblocks + cb, p = blockIdx.y)
// covers segment sg's rows m in [sg*L, sg*L + L) (m = n*S + s, element m*C + c);
// thread (tx, ty) owns the channels c0 .. c0 + VEC - 1, c0 = (cb*blockDim.x + tx)*VEC
// (entries sg*C + c: batch has sg = 0) and the rows sg*L + p*blockDim.y + ty + k*P*blockDim.y.
struct ClTile {
  int64_t sg, c0, m, m_end, off, m_step, off_step;
  bool active;

  template <int VEC>
  __device__ __forceinline__ static ClTile make(const Segments& seg, int64_t cblocks, int64_t row0,
                                                int64_t row_step) {
    ClTile t;
    t.sg = blockIdx.x / cblocks;
    const int64_t cb = blockIdx.x - t.sg * cblocks;
    t.c0 = (cb * blockDim.x + threadIdx.x) * VEC;
    t.active = t.c0 < seg.C;
    t.m = t.sg * seg.len + row0;
    t.m_end = (t.sg + 1) * seg.len;
    t.off = t.m * seg.C + t.c0;
    t.m_step = row_step;
    t.off_step = row_step * seg.C;
    return t;
  }
  __device__ __forceinline__ bool more() const { return m < m_end; }
  __device__ __forceinline__ void advance() {
    m += m_step;
    off += off_step;
  }
  __device__ __forceinline__ int64_t entry(const Segments& seg, int j) const { return sg * seg.C + c0 + j; }
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
moments_cl_kernel(const T* __restrict__ x, acc_t<T>* __restrict__ work, Segments seg, int64_t cblocks, int64_t P) {
  using acc = acc_t<T>;
  __shared__ State<acc, 3> sh[kThreads];
  const int64_t p = blockIdx.y;
  ClTile t = ClTile::make<VEC>(seg, cblocks, p * blockDim.y + threadIdx.y, P * blockDim.y);
  acc mean[VEC], m2[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) mean[j] = m2[j] = acc(0);
  int64_t count = 0;
  if (t.active) {
    for (; t.more(); t.advance()) {
      acc v[VEC];
      load_vec<T, VEC>(x, t.off, v);
      welford_lanes<acc, VEC>(count, mean, m2, v);
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const State<acc, 3> s = column_reduce<ChanMerge>(welford_state(count, mean[j], m2[j]), sh);
    if (t.active && threadIdx.y == 0) {
#pragma unroll
      for (int k = 0; k < 3; ++k) work[(k * P + p) * seg.entries + t.entry(seg, j)] = s.v[k];
    }
  }
}

// One warp per entry e < R: lane l merges the partials l, l + 32, ... in order,
// then the lanes merge by a fixed tree.  second = M2 / count when `variance`
// (the biased variance; 0 for an empty entry), else M2.
// With affine.invstd set (channel_stats_affine: per-channel vectors, variance) lane 0 also writes the
// channel's affine tables and running stats (stats_affine.cuh): one launch fewer per batch-norm forward.
template <typename acc>
__global__ void __launch_bounds__(kThreads)
moments_merge_kernel(const acc* __restrict__ work, acc* __restrict__ mean, acc* __restrict__ second, int64_t R,
                     int64_t P, bool variance, AffineOut<acc> affine) {
  const int64_t e = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (e >= R) return;  // e is uniform over a warp: whole warps leave, the shuffles stay full
  State<acc, 3> st = zero_state<acc, 3>();
  for (int64_t p = lane; p < P; p += 32) {
    State<acc, 3> b;
#pragma unroll
    for (int k = 0; k < 3; ++k) b.v[k] = work[(k * P + p) * R + e];
    ChanMerge::merge(st, b);
  }
  st = warp_reduce<ChanMerge>(st);
  if (lane == 0) {
    const acc sec = !variance ? st.v[2] : (st.v[0] > acc(0) ? st.v[2] / st.v[0] : acc(0));
    mean[e] = st.v[1];
    second[e] = sec;
    if (affine.invstd != nullptr) write_affine(affine, e, e, st.v[1], sec);
  }
}

// z = x * scale + shift with two roundings, never one fused multiply-add: for x equal to its
// channel's mean and a zero bias (shift = -(mean * scale) rounded), z is then exactly 0, so the
// activation's kink ties (relu'(0) = 0, leaky'(0) = slope) exactly as in eager PyTorch and the
// reference, which round the normalisation step by step.  A contracted fma would leave the
// product's rounding error in z, of either sign, and flip the mask of constant channels.
__device__ __forceinline__ float affine_rn(float x, float scale, float shift) {
  return __fadd_rn(__fmul_rn(x, scale), shift);
}
__device__ __forceinline__ double affine_rn(double x, double scale, double shift) {
  return __dadd_rn(__dmul_rn(x, scale), shift);
}

// ----------------------------------------------------------------------------- gradient sums

template <bool DOUBLE> constexpr int sums_k() { return DOUBLE ? 5 : 2; }

// Adds one element's terms: gz, gz*xhat (and u, u*xhat, gz*u when DOUBLE).
template <bool DOUBLE, typename acc>
__device__ __forceinline__ void grad_terms(State<acc, sums_k<DOUBLE>()>& s, acc x, acc gy, acc u,
                                           const NormCoef<acc>& k, acc slope) {
  const acc z = affine_rn(x, k.scale, k.shift);
  const acc gz = gy * (z > acc(0) ? acc(1) : slope);
  const acc xhat = (x - k.mean) * k.invstd;
  s.v[0] += gz;
  s.v[1] += gz * xhat;
  if constexpr (DOUBLE) {
    s.v[2] += u;
    s.v[3] += u * xhat;
    s.v[4] += gz * u;
  }
}

template <typename T, int VEC, bool DOUBLE>
__device__ __forceinline__ void load_grad_inputs(const T* __restrict__ gy, const T* __restrict__ x,
                                                 const T* __restrict__ u, int64_t off, acc_t<T> (&gv)[VEC],
                                                 acc_t<T> (&xv)[VEC], acc_t<T> (&uv)[VEC]) {
  load_vec<T, VEC>(x, off, xv);
  load_vec<T, VEC>(gy, off, gv);
  if constexpr (DOUBLE) {
    load_vec<T, VEC>(u, off, uv);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) uv[j] = acc_t<T>(0);
  }
}

// kRows: block (e = blockIdx.x, p = blockIdx.y), the walk of moments_rows_kernel.
template <typename T, int VEC, bool DOUBLE>
__global__ void __launch_bounds__(kThreads)
grad_sums_rows_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ u,
                      ChannelArgs<acc_t<T>> prm, acc_t<T>* __restrict__ work, Segments seg, int64_t mv, int64_t P) {
  using acc = acc_t<T>;
  constexpr int K = sums_k<DOUBLE>();
  const int64_t e = blockIdx.x;
  const int64_t p = blockIdx.y;
  const NormCoef<acc> k = load_norm_coef(prm, e);
  State<acc, K> st = zero_state<acc, K>();
  for (RowWalk it(p * kThreads + threadIdx.x, P * kThreads, seg.S / VEC, VEC, seg.rows_start(e), seg.C * seg.S);
       it.w < mv; it.advance()) {
    acc gv[VEC], xv[VEC], uv[VEC];
    load_grad_inputs<T, VEC, DOUBLE>(gy, x, u, it.off, gv, xv, uv);
#pragma unroll
    for (int j = 0; j < VEC; ++j) grad_terms<DOUBLE>(st, xv[j], gv[j], uv[j], k, prm.slope);
  }
  st = block_reduce<SumMerge>(st);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < K; ++i) work[(i * P + p) * seg.entries + e] = st.v[i];
  }
}

// kChannelsLast: the tiles of moments_cl_kernel.
template <typename T, int VEC, bool DOUBLE>
__global__ void __launch_bounds__(kThreads)
grad_sums_cl_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ u,
                    ChannelArgs<acc_t<T>> prm, acc_t<T>* __restrict__ work, Segments seg, int64_t cblocks,
                    int64_t P) {
  using acc = acc_t<T>;
  constexpr int K = sums_k<DOUBLE>();
  __shared__ State<acc, K> sh[kThreads];
  const int64_t p = blockIdx.y;
  ClTile t = ClTile::make<VEC>(seg, cblocks, p * blockDim.y + threadIdx.y, P * blockDim.y);
  State<acc, K> st[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) st[j] = zero_state<acc, K>();
  if (t.active) {
    NormCoef<acc> k[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) k[j] = load_norm_coef(prm, t.entry(seg, j));
    for (; t.more(); t.advance()) {
      acc gv[VEC], xv[VEC], uv[VEC];
      load_grad_inputs<T, VEC, DOUBLE>(gy, x, u, t.off, gv, xv, uv);
#pragma unroll
      for (int j = 0; j < VEC; ++j) grad_terms<DOUBLE>(st[j], xv[j], gv[j], uv[j], k[j], prm.slope);
    }
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const State<acc, K> s = column_reduce<SumMerge>(st[j], sh);
    if (t.active && threadIdx.y == 0) {
#pragma unroll
      for (int i = 0; i < K; ++i) work[(i * P + p) * seg.entries + t.entry(seg, j)] = s.v[i];
    }
  }
}

template <typename acc, int K> struct SumOut { acc* p[K]; };

// One warp per entry, as moments_merge_kernel: out[i][e] = sum over p of work[i][p][e].
template <typename acc, int K>
__global__ void __launch_bounds__(kThreads)
sums_merge_kernel(const acc* __restrict__ work, SumOut<acc, K> out, int64_t R, int64_t P) {
  const int64_t e = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (e >= R) return;  // whole warps leave
  State<acc, K> st = zero_state<acc, K>();
  for (int64_t p = lane; p < P; p += 32) {
#pragma unroll
    for (int i = 0; i < K; ++i) st.v[i] += work[(i * P + p) * R + e];
  }
  st = warp_reduce<SumMerge>(st);
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < K; ++i) out.p[i][e] = st.v[i];
  }
}

// ----------------------------------------------------------------------------- elementwise passes

// Coefficients of one entry for one pass: k[0..2] = k1..k3 (a1..a3), k[3..6] = b1..b4.
template <typename acc> struct PointCoef { acc scale, shift, mean, invstd, k[7]; };

template <int MODE, typename acc>
__device__ __forceinline__ PointCoef<acc> load_point_coef(const ChannelArgs<acc>& a, int64_t e) {
  PointCoef<acc> k;
  k.scale = __ldg(a.scale + e);
  k.shift = __ldg(a.shift + e);
  k.mean = k.invstd = acc(0);
#pragma unroll
  for (int i = 0; i < 7; ++i) k.k[i] = acc(0);
  if constexpr (MODE != kModeForward) {
    k.mean = __ldg(a.mean + e);
    k.invstd = __ldg(a.invstd + e);
#pragma unroll
    for (int i = 0; i < 3; ++i) k.k[i] = __ldg(a.coef[i] + e);
  }
  if constexpr (MODE == kModeDouble) {
#pragma unroll
    for (int i = 3; i < 7; ++i) k.k[i] = __ldg(a.coef[i] + e);
  }
  return k;
}

// The map of one element (z = x*scale + shift, s = act'(z), xhat = (x - mean)*invstd):
//   kModeForward   o1 = z > 0 ? z : slope * z
//   kModeBackward  o1 = k1*gz + k2 + k3*xhat                          gz = gy * s
//   kModeDouble    o1 = b1*gz + b2*u + b3 + b4*xhat,  o2 = s * (a1*u + a2 + a3*xhat)
template <int MODE, typename acc>
__device__ __forceinline__ void point_map(const PointCoef<acc>& k, acc slope, acc x, acc gy, acc u, acc& o1,
                                          acc& o2) {
  const acc z = affine_rn(x, k.scale, k.shift);
  if constexpr (MODE == kModeForward) {
    o1 = z > acc(0) ? z : z * slope;
  } else {
    const acc s = z > acc(0) ? acc(1) : slope;
    const acc gz = gy * s;
    const acc xhat = (x - k.mean) * k.invstd;
    if constexpr (MODE == kModeBackward) {
      o1 = k.k[0] * gz + k.k[1] + k.k[2] * xhat;
    } else {
      o1 = k.k[3] * gz + k.k[4] * u + k.k[5] + k.k[6] * xhat;
      o2 = s * (k.k[0] * u + k.k[1] + k.k[2] * xhat);
    }
  }
}

// Loads the VEC elements at `off`, maps them (element j with the coefficients
// k[j * KSTRIDE]: KSTRIDE = 0 when the VEC elements share an entry), stores.
template <typename T, int VEC, int MODE, int KSTRIDE>
__device__ __forceinline__ void point_vec(const BigArgs<T>& t, acc_t<T> slope, int64_t off,
                                          const PointCoef<acc_t<T>>* k) {
  using acc = acc_t<T>;
  acc x[VEC], gy[VEC], u[VEC], o1[VEC], o2[VEC];
  load_vec<T, VEC>(t.x, off, x);
#pragma unroll
  for (int j = 0; j < VEC; ++j) gy[j] = u[j] = o2[j] = acc(0);
  if constexpr (MODE != kModeForward) load_vec<T, VEC>(t.gy, off, gy);
  if constexpr (MODE == kModeDouble) load_vec<T, VEC>(t.u, off, u);
#pragma unroll
  for (int j = 0; j < VEC; ++j) point_map<MODE>(k[j * KSTRIDE], slope, x[j], gy[j], u[j], o1[j], o2[j]);
  store_vec<T, VEC>(t.out, off, o1);
  if constexpr (MODE == kModeDouble) store_vec<T, VEC>(t.out2, off, o2);
}

// kRows: grid-stride over the nv = N*C*S/VEC vectors of the tensor.  Vector v
// is at element v*VEC in run q = v / sv = n*C + c (sv = S/VEC vectors a run);
// its entry seg.entry(n, c).  (n, c, r = v % sv) follow v incrementally.
template <typename T, int VEC, int MODE>
__global__ void __launch_bounds__(kThreads)
pointwise_rows_kernel(BigArgs<T> t, ChannelArgs<acc_t<T>> prm, Segments seg, int64_t sv, int64_t nv) {
  using acc = acc_t<T>;
  const int64_t C = seg.C;
  const int64_t step = (int64_t)gridDim.x * kThreads;
  int64_t v = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  const int64_t q = v / sv;
  int64_t r = v - q * sv;
  int64_t n = q / C;
  int64_t c = q - n * C;
  const int64_t dq = step / sv;  // v += step moves dq runs and dr vectors on
  const int64_t dr = step - dq * sv;
  const int64_t dn = dq / C;
  const int64_t dc = dq - dn * C;
  for (; v < nv; v += step) {
    const PointCoef<acc> k = load_point_coef<MODE>(prm, seg.entry(n, c));
    point_vec<T, VEC, MODE, 0>(t, prm.slope, v * VEC, &k);
    r += dr;  // r + dr < 2*sv and c + dc + 1 < 2*C: one carry each at most
    c += dc;
    n += dn;
    if (r >= sv) {
      r -= sv;
      ++c;
    }
    if (c >= C) {
      c -= C;
      ++n;
    }
  }
}

// kChannelsLast: the tiles of moments_cl_kernel (ClTile) with gridDim.y blocks
// along a segment's rows; a thread keeps its VEC entries' coefficients in registers.
template <typename T, int VEC, int MODE>
__global__ void __launch_bounds__(kThreads)
pointwise_cl_kernel(BigArgs<T> t, ChannelArgs<acc_t<T>> prm, Segments seg, int64_t cblocks) {
  using acc = acc_t<T>;
  ClTile tile = ClTile::make<VEC>(seg, cblocks, (int64_t)blockIdx.y * blockDim.y + threadIdx.y,
                                  (int64_t)gridDim.y * blockDim.y);
  if (!tile.active) return;  // no block-level synchronisation below
  PointCoef<acc> k[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) k[j] = load_point_coef<MODE>(prm, tile.entry(seg, j));
  for (; tile.more(); tile.advance()) point_vec<T, VEC, MODE, 1>(t, prm.slope, tile.off, k);
}

// ----------------------------------------------------------------------------- pixel-shuffled y (upscale r > 1)
//
// kRows only (x contiguous (N, C, H, W), S = H*W > 1; with S == 1 the y and x
// offsets coincide and the kernels above serve).  y-side tensors (gy; y, ggy)
// are contiguous (N, C/r^2, H*r, W*r): x element (n, c, h, w), c = co*r*r + i*r + j,
// is y element (n, co, h*r + i, w*r + j) (batch_norm_act.h).  Scalar accesses:
// the y-side stride along w is r, so 16-byte vectors would not line up.

struct Shuffle {
  int64_t r, H, W;
};

// Digits d[0..D-1] of a flat index over sizes (*, size[1], ..., size[D-1])
// (d[D-1] fastest, d[0] unbounded), advanced by a fixed step: the step's
// digits are added with one carry each (no division per step).
template <int D>
struct Digits {
  int64_t d[D], step[D], size[D];

  __device__ __forceinline__ Digits(int64_t v, int64_t s, const int64_t (&sz)[D]) {
#pragma unroll
    for (int k = D - 1; k > 0; --k) {
      size[k] = sz[k];
      int64_t q = v / sz[k];
      d[k] = v - q * sz[k];
      v = q;
      q = s / sz[k];
      step[k] = s - q * sz[k];
      s = q;
    }
    size[0] = 0;
    d[0] = v;
    step[0] = s;
  }
  __device__ __forceinline__ void advance() {
    int64_t carry = 0;
#pragma unroll
    for (int k = D - 1; k > 0; --k) {
      d[k] += step[k] + carry;  // < 2 * size[k]: one wrap at most
      carry = d[k] >= size[k] ? 1 : 0;
      if (carry) d[k] -= size[k];
    }
    d[0] += step[0] + carry;
  }
};

// One element of a pass: x, u (and dx, ggx) at xo; gy (and y, ggy) at yo.
template <typename T, int MODE>
__device__ __forceinline__ void point_shuffled(const BigArgs<T>& t, acc_t<T> slope, int64_t xo, int64_t yo,
                                               const PointCoef<acc_t<T>>& k) {
  using acc = acc_t<T>;
  const acc x = Cvt<T>::to(t.x[xo]);
  acc gy = acc(0), u = acc(0), o1 = acc(0), o2 = acc(0);
  if constexpr (MODE != kModeForward) gy = Cvt<T>::to(t.gy[yo]);
  if constexpr (MODE == kModeDouble) u = Cvt<T>::to(t.u[xo]);
  point_map<MODE>(k, slope, x, gy, u, o1, o2);
  if constexpr (MODE == kModeForward) {
    t.out[yo] = Cvt<T>::from(o1);  // y
  } else {
    t.out[xo] = Cvt<T>::from(o1);  // dx, ggx
  }
  if constexpr (MODE == kModeDouble) t.out2[yo] = Cvt<T>::from(o2);  // ggy
}

// Grid-stride over the units (n, co, i, h, w) of sizes (N, C/r^2, r, H, W), w
// fastest.  A unit is the r x elements (n, c0 + j, h, w), c0 = co*r*r + i*r,
// j < r -- r rows of x, each read coalesced along w over a warp -- and the r
// contiguous y elements (n, co, h*r + i, w*r + j).  Step j of a warp touches y
// at stride r; its r steps, back to back, fill the same sectors (L1 / L2 merge
// them), so no y sector is fetched or written back twice.
template <typename T, int MODE>
__global__ void __launch_bounds__(kThreads)
pointwise_shuffle_kernel(BigArgs<T> t, ChannelArgs<acc_t<T>> prm, Segments seg, Shuffle sh, int64_t units) {
  using acc = acc_t<T>;
  const int64_t r = sh.r, W = sh.W, S = seg.S;
  const int64_t r2 = r * r;
  const int64_t groups = seg.C / r2;  // output channels
  const int64_t yrow = W * r;         // elements of a y row
  const int64_t sizes[5] = {0, groups, r, sh.H, W};
  const int64_t step = (int64_t)gridDim.x * kThreads;
  int64_t v = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  Digits<5> it(v, step, sizes);
  for (; v < units; v += step, it.advance()) {
    const int64_t n = it.d[0], co = it.d[1], i = it.d[2], h = it.d[3], w = it.d[4];
    const int64_t ng = n * groups + co;
    const int64_t x0 = (ng * r2 + i * r) * S + h * W + w;  // channel c0; channel c0 + j is j*S on
    const int64_t y0 = ng * r2 * S + (h * r + i) * yrow + w * r;
    const int64_t e0 = n * seg.tbl_stride + co * r2 + i * r;  // entry of (n, c0)
    for (int64_t j = 0; j < r; ++j) {
      const PointCoef<acc> k = load_point_coef<MODE>(prm, e0 + j);
      point_shuffled<T, MODE>(t, prm.slope, x0 + j * S, y0 + j, k);
    }
  }
}

// Block (e = blockIdx.x, p = blockIdx.y), as grad_sums_rows_kernel: entry e =
// sg*C + c sums over its segment's elements m = p*kThreads + tid + k*P*kThreads
// (m < L = rows*S; digits (n - sg, h, w)), x and u at (n*C + c)*S + h*W + w,
// gy at the shuffled offset (stride r along w; the r - 1 other sub-channels of
// the same output pixels, read by the neighbouring entries' blocks, share its sectors).
template <typename T, bool DOUBLE>
__global__ void __launch_bounds__(kThreads)
grad_sums_shuffle_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ u,
                         ChannelArgs<acc_t<T>> prm, acc_t<T>* __restrict__ work, Segments seg, Shuffle sh,
                         int64_t P) {
  using acc = acc_t<T>;
  constexpr int K = sums_k<DOUBLE>();
  const int64_t e = blockIdx.x;
  const int64_t p = blockIdx.y;
  const int64_t C = seg.C, S = seg.S, r = sh.r, W = sh.W;
  const int64_t sg = e / C;
  const int64_t c = e - sg * C;
  const int64_t co = c / (r * r);
  const int64_t sub = c - co * r * r;
  const int64_t i = sub / r;
  const int64_t j = sub - i * r;
  const int64_t yrow = W * r;
  const int64_t xb = c * S;                          // + n*C*S + h*W + w
  const int64_t yb = co * r * r * S + i * yrow + j;  // + n*C*S + h*r*yrow + w*r
  const int64_t yh = r * yrow;
  const NormCoef<acc> k = load_norm_coef(prm, e);
  State<acc, K> st = zero_state<acc, K>();
  const int64_t sizes[3] = {0, sh.H, W};
  const int64_t step = P * kThreads;
  int64_t m = p * kThreads + threadIdx.x;
  Digits<3> it(m, step, sizes);
  for (; m < seg.len; m += step, it.advance()) {
    const int64_t ncs = (sg + it.d[0]) * C * S;
    const int64_t h = it.d[1], w = it.d[2];
    const int64_t xo = ncs + xb + h * W + w;
    const acc xv = Cvt<T>::to(x[xo]);
    const acc gv = Cvt<T>::to(gy[ncs + yb + h * yh + w * r]);
    acc uv = acc(0);
    if constexpr (DOUBLE) uv = Cvt<T>::to(u[xo]);
    grad_terms<DOUBLE>(st, xv, gv, uv, k, prm.slope);
  }
  st = block_reduce<SumMerge>(st);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int q = 0; q < K; ++q) work[(q * P + p) * seg.entries + e] = st.v[q];
  }
}

// ----------------------------------------------------------------------------- host side

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int elem_size(DType d) {
  switch (d) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
  }
  return 4;
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

Segments segments(const Problem& pr) {
  Segments g;
  g.C = pr.C;
  g.S = pr.S;
  g.num = pr.per_sample ? (pr.table_rows > 0 ? pr.table_rows : pr.N) : 1;
  g.rows = g.num > 0 ? pr.N / g.num : 0;
  g.len = g.rows * pr.S;
  g.tbl_stride = pr.per_sample ? pr.C : 0;
  g.entries = g.num * pr.C;
  return g;
}

// Block of the kChannelsLast kernels for cv channel vectors: bx (a power of two,
// <= 32) threads along the channels, by = kThreads / bx along the rows.
struct ClBlock {
  int bx, by;
  int64_t cblocks;  // blocks along the channels
};
ClBlock cl_block(int64_t cv) {
  int bx = 1;
  while (bx < 32 && bx < cv) bx *= 2;
  return {bx, kThreads / bx, ceil_div(cv, bx)};
}

int64_t target_blocks(const Problem& pr) { return (int64_t)(pr.sm_count > 0 ? pr.sm_count : 1) * kBlocksPerSm; }

template <typename T> struct Tag { using type = T; };

template <class F>
cudaError_t dispatch_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: return f(Tag<float>{});
    case DType::kFloat16: return f(Tag<__half>{});
    case DType::kBFloat16: return f(Tag<__nv_bfloat16>{});
    case DType::kFloat64: return f(Tag<double>{});
  }
  return cudaErrorInvalidValue;
}

// f(std::integral_constant<int, VMAX>) when `wide`, else f(std::integral_constant<int, 1>).
template <int VMAX, class F>
void with_vec(bool wide, F&& f) {
  if (wide) {
    f(std::integral_constant<int, VMAX>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <typename acc>
ChannelArgs<acc> channel_args(const ChannelParams& p) {
  ChannelArgs<acc> a;
  a.scale = static_cast<const acc*>(p.scale);
  a.shift = static_cast<const acc*>(p.shift);
  a.mean = static_cast<const acc*>(p.mean);
  a.invstd = static_cast<const acc*>(p.invstd);
  for (int i = 0; i < 7; ++i) a.coef[i] = static_cast<const acc*>(p.coef[i]);
  a.slope = static_cast<acc>(p.slope);
  return a;
}

// Whether the y-side tensors take the pixel-shuffle kernels (upscale > 1 and
// S > 1; with S == 1 the layout is kChannelsLast and y offsets are x's).
bool shuffled(const Problem& pr) { return pr.upscale > 1 && pr.layout == Layout::kRows; }

// Sizes the kernels take: non-empty, R entries within gridDim.x, and with
// upscale > 1 an (N, C, H, W) x whose C is a multiple of r^2.
bool valid_problem(const Problem& pr) {
  if (!(pr.N > 0 && pr.S > 0 && pr.C > 0 && segments(pr).entries <= INT32_MAX && pr.upscale >= 1)) return false;
  // T-row tables: T divides N; the pixel-shuffle kernels take vectors or per-sample tables only
  const bool segmented = pr.per_sample && pr.table_rows > 0 && pr.table_rows != pr.N;
  if (pr.per_sample && pr.table_rows < 0) return false;
  if (segmented && (pr.N % pr.table_rows != 0 || pr.upscale != 1)) return false;
  if (pr.upscale == 1) return true;
  return pr.H * pr.W == pr.S && pr.C % (pr.upscale * pr.upscale) == 0;
}

Shuffle shuffle_of(const Problem& pr) { return Shuffle{pr.upscale, pr.H, pr.W}; }

// Launches the kernel of a reduction for the layout: rows(VEC) with grid
// (R, P) and kThreads threads, or cl(VEC, ClBlock) with grid (T*cblocks, P).
template <typename T, class Rows, class Cl>
void launch_reduction(const Problem& pr, const Segments& seg, int64_t P, bool aligned, Rows rows, Cl cl) {
  constexpr int V = max_vec<T>();
  if (pr.layout == Layout::kRows) {
    with_vec<V>(pr.S % V == 0 && aligned, [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      rows(vc, dim3((unsigned)seg.entries, (unsigned)P), seg.rows * (pr.S / VEC));
    });
  } else {
    with_vec<V>(pr.C % V == 0 && aligned, [&](auto vc) {
      constexpr int VEC = decltype(vc)::value;
      const ClBlock b = cl_block(pr.C / VEC);
      cl(vc, dim3((unsigned)(seg.num * b.cblocks), (unsigned)P), dim3(b.bx, b.by), b.cblocks);
    });
  }
}

}  // namespace

int64_t reduce_partials(const Problem& pr) {
  const Segments seg = segments(pr);
  const int vec = shuffled(pr) ? 1 : 16 / elem_size(pr.dtype);  // the widest access a kernel may use
  int64_t blocks, useful;
  if (pr.layout == Layout::kRows) {
    blocks = seg.entries;
    useful = ceil_div(seg.len, (int64_t)kThreads * vec);
  } else {
    const ClBlock b = cl_block(ceil_div(pr.C, vec));
    blocks = seg.num * b.cblocks;
    useful = ceil_div(seg.len, b.by);
  }
  int64_t p = target_blocks(pr) / (blocks > 0 ? blocks : 1);
  if (p > useful) p = useful;
  if (p > kMaxPartials) p = kMaxPartials;
  return p < 1 ? 1 : p;
}

cudaError_t launch_moments(const Problem& pr, const void* x_, int64_t partials, void* work_, void* mean_,
                           void* second_, bool variance, cudaStream_t stream, const AffineParams* affine) {
  if (!valid_problem(pr) || partials < 1 || partials > kMaxPartials) return cudaErrorInvalidValue;
  if (affine != nullptr && (pr.per_sample || !variance)) return cudaErrorInvalidValue;
  return dispatch_dtype(pr.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    const T* x = static_cast<const T*>(x_);
    acc* work = static_cast<acc*>(work_);
    const Segments seg = segments(pr);
    const int64_t P = partials;
    launch_reduction<T>(
        pr, seg, P, aligned16({x}),
        [&](auto vc, dim3 grid, int64_t mv) {
          moments_rows_kernel<T, decltype(vc)::value><<<grid, kThreads, 0, stream>>>(x, work, seg, mv, P);
        },
        [&](auto vc, dim3 grid, dim3 block, int64_t cblocks) {
          moments_cl_kernel<T, decltype(vc)::value><<<grid, block, 0, stream>>>(x, work, seg, cblocks, P);
        });
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const AffineParams none;
    const AffineParams& a = affine != nullptr ? *affine : none;  // none: invstd null, no epilogue
    moments_merge_kernel<acc><<<(unsigned)ceil_div(seg.entries, kWarps), kThreads, 0, stream>>>(
        work, static_cast<acc*>(mean_), static_cast<acc*>(second_), seg.entries, P, variance,
        affine_out<acc>(a.weight, a.bias, a.running_mean, a.running_var, a.invstd, a.scale, a.shift, a.eps,
                        a.momentum, a.unbias));
    return cudaGetLastError();
  });
}

cudaError_t launch_grad_sums(const Problem& pr, bool double_, const void* gy_, const void* x_, const void* u_,
                             const ChannelParams& params, int64_t partials, void* work_, void* const* out,
                             cudaStream_t stream) {
  if (!valid_problem(pr) || partials < 1 || partials > kMaxPartials) return cudaErrorInvalidValue;
  if (double_ && u_ == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype(pr.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    const T* gy = static_cast<const T*>(gy_);
    const T* x = static_cast<const T*>(x_);
    const T* u = double_ ? static_cast<const T*>(u_) : nullptr;
    acc* work = static_cast<acc*>(work_);
    const ChannelArgs<acc> prm = channel_args<acc>(params);
    const Segments seg = segments(pr);
    const int64_t P = partials;
    auto launch = [&](auto dc) -> cudaError_t {
      constexpr bool DOUBLE = decltype(dc)::value;
      if (shuffled(pr)) {
        grad_sums_shuffle_kernel<T, DOUBLE><<<dim3((unsigned)seg.entries, (unsigned)P), kThreads, 0, stream>>>(
            gy, x, u, prm, work, seg, shuffle_of(pr), P);
      } else {
        launch_reduction<T>(
            pr, seg, P, aligned16({gy, x, u}),
            [&](auto vc, dim3 grid, int64_t mv) {
              grad_sums_rows_kernel<T, decltype(vc)::value, DOUBLE><<<grid, kThreads, 0, stream>>>(
                  gy, x, u, prm, work, seg, mv, P);
            },
            [&](auto vc, dim3 grid, dim3 block, int64_t cblocks) {
              grad_sums_cl_kernel<T, decltype(vc)::value, DOUBLE><<<grid, block, 0, stream>>>(
                  gy, x, u, prm, work, seg, cblocks, P);
            });
      }
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      constexpr int K = sums_k<DOUBLE>();
      SumOut<acc, K> o;
      for (int i = 0; i < K; ++i) o.p[i] = static_cast<acc*>(out[i]);
      sums_merge_kernel<acc, K><<<(unsigned)ceil_div(seg.entries, kWarps), kThreads, 0, stream>>>(
          work, o, seg.entries, P);
      return cudaGetLastError();
    };
    return double_ ? launch(std::true_type{}) : launch(std::false_type{});
  });
}

cudaError_t launch_pointwise(const Problem& pr, int mode, const void* x_, const void* gy_, const void* u_,
                             void* out_, void* out2_, const ChannelParams& params, cudaStream_t stream) {
  if (!valid_problem(pr)) return cudaErrorInvalidValue;
  if (mode != kModeForward && mode != kModeBackward && mode != kModeDouble) return cudaErrorInvalidValue;
  if (mode != kModeForward && gy_ == nullptr) return cudaErrorInvalidValue;
  if (mode == kModeDouble && (u_ == nullptr || out2_ == nullptr)) return cudaErrorInvalidValue;
  return dispatch_dtype(pr.dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    using acc = acc_t<T>;
    constexpr int V = max_vec<T>();
    BigArgs<T> t;
    t.x = static_cast<const T*>(x_);
    t.gy = mode != kModeForward ? static_cast<const T*>(gy_) : nullptr;
    t.u = mode == kModeDouble ? static_cast<const T*>(u_) : nullptr;
    t.out = static_cast<T*>(out_);
    t.out2 = mode == kModeDouble ? static_cast<T*>(out2_) : nullptr;
    const ChannelArgs<acc> prm = channel_args<acc>(params);
    const Segments seg = segments(pr);
    const bool aligned = aligned16({t.x, t.gy, t.u, t.out, t.out2});
    auto launch = [&](auto mc) {
      constexpr int MODE = decltype(mc)::value;
      if (shuffled(pr)) {
        const int64_t units = pr.N * pr.C * pr.S / pr.upscale;
        int64_t blocks = ceil_div(units, kThreads);
        if (blocks > target_blocks(pr)) blocks = target_blocks(pr);
        pointwise_shuffle_kernel<T, MODE><<<(unsigned)blocks, kThreads, 0, stream>>>(t, prm, seg, shuffle_of(pr),
                                                                                    units);
      } else if (pr.layout == Layout::kRows) {
        with_vec<V>(pr.S % V == 0 && aligned, [&](auto vc) {
          constexpr int VEC = decltype(vc)::value;
          const int64_t nv = pr.N * pr.C * pr.S / VEC;
          int64_t blocks = ceil_div(nv, kThreads);
          if (blocks > target_blocks(pr)) blocks = target_blocks(pr);
          pointwise_rows_kernel<T, VEC, MODE><<<(unsigned)blocks, kThreads, 0, stream>>>(t, prm, seg,
                                                                                         pr.S / VEC, nv);
        });
      } else {
        with_vec<V>(pr.C % V == 0 && aligned, [&](auto vc) {
          constexpr int VEC = decltype(vc)::value;
          const ClBlock b = cl_block(pr.C / VEC);
          const int64_t gx = seg.num * b.cblocks;
          int64_t gy = ceil_div(seg.len, b.by);
          const int64_t fill = target_blocks(pr) / gx;
          if (gy > fill) gy = fill;
          if (gy > kMaxGridY) gy = kMaxGridY;
          if (gy < 1) gy = 1;
          pointwise_cl_kernel<T, VEC, MODE><<<dim3((unsigned)gx, (unsigned)gy), dim3(b.bx, b.by), 0, stream>>>(
              t, prm, seg, b.cblocks);
        });
      }
    };
    if (mode == kModeForward) {
      launch(std::integral_constant<int, kModeForward>{});
    } else if (mode == kModeBackward) {
      launch(std::integral_constant<int, kModeBackward>{});
    } else {
      launch(std::integral_constant<int, kModeDouble>{});
    }
    return cudaGetLastError();
  });
}

}  // namespace bna
}  // namespace fastgan
