// What layer files share, so that no two paths drift apart: the sampler (reverse.cu) runs the same LayerNorm kernel
// as training, and the GELU op and the GEMM epilogue (training's MLP and the sampler's) evaluate one gelu_value.
#pragma once
#include <cstdint>

#include "device.cuh"

namespace tf {
namespace cuda {

// y, mean, rstd = LayerNorm over the last dimension C of N rows (one block per row, statistics in T).
template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t N, int64_t C, double eps);

// Phi(x), the standard normal CDF, through erfc: 0.5 * (1 + erf(x / sqrt 2)) cancels for x << 0 and loses the
// small values the CPU's gelu.h keeps (its float path is an erfc fit, its double path std::erfc).
template <typename T>
__device__ __forceinline__ T normal_cdf(T x) {
  return T(0.5) * erfc(x * T(-0.70710678118654752440));
}

// GELU(x) = x * Phi(x), the exact (erf) form.
template <typename T>
__device__ __forceinline__ T gelu_value(T x) {
  return x * normal_cdf(x);
}

// GELU'(x) = Phi(x) + x * phi(x): the geluBackward op and the GEMM epilogue that carries dx through the MLP's GELU.
template <typename T>
__device__ __forceinline__ T gelu_grad_value(T x) {
  const T pdf = T(0.3989422804014327) * exp(T(-0.5) * x * x);
  return normal_cdf(x) + x * pdf;
}

}  // namespace cuda
}  // namespace tf
