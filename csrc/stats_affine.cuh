// Batch-norm statistics -> affine tables and running stats, for one channel: the
// epilogue shared by stats_affine.cu's kernel and by the moments merge of
// channel_stats_affine (batch_norm_act.cu), so both compute it the same way.
// Device code only; no torch headers.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastgan {

// All (C,) vectors of the accumulator type; weight / bias / running_* may be null.
template <typename acc>
struct AffineOut {
  const acc* weight;
  const acc* bias;
  acc* running_mean;
  acc* running_var;
  acc* invstd;
  acc* scale;
  acc* shift;
  acc eps, momentum, unbias;  // unbias = count / (count - 1), for running_var
};

template <typename acc>
AffineOut<acc> affine_out(const void* weight, const void* bias, void* running_mean, void* running_var, void* invstd,
                          void* scale, void* shift, double eps, double momentum, double unbias) {
  return AffineOut<acc>{static_cast<const acc*>(weight), static_cast<const acc*>(bias),
                        static_cast<acc*>(running_mean), static_cast<acc*>(running_var), static_cast<acc*>(invstd),
                        static_cast<acc*>(scale), static_cast<acc*>(shift), static_cast<acc>(eps),
                        static_cast<acc>(momentum), static_cast<acc>(unbias)};
}

//   invstd = 1 / sqrt(var + eps),  scale = w * invstd,  shift = b - mean * scale,
//   running_mean += momentum * (mean - running_mean),
//   running_var  += momentum * (var * unbias - running_var).
// Tables at entry e (c for (C,) vectors; t*C + c in row t of (T, C) tables), parameters and running
// stats at channel c.
template <typename acc>
__device__ __forceinline__ void write_affine(const AffineOut<acc>& a, int64_t e, int64_t c, acc mean, acc var) {
  // 1 / sqrt, each correctly rounded (CUDA's rsqrt is approximate); torch.rsqrt of the reference may
  // differ from it by an ulp.
  const acc r = acc(1) / sqrt(var + a.eps);
  const acc s = a.weight != nullptr ? a.weight[c] * r : r;
  a.invstd[e] = r;
  a.scale[e] = s;
  a.shift[e] = a.bias != nullptr ? a.bias[c] - mean * s : -(mean * s);
  if (a.running_mean != nullptr) a.running_mean[c] += a.momentum * (mean - a.running_mean[c]);
  if (a.running_var != nullptr) a.running_var[c] += a.momentum * (var * a.unbias - a.running_var[c]);
}

}  // namespace fastgan
