// Launchers shared between layer files: the sampler (reverse.cu) runs the same LayerNorm and GELU kernels as
// training, so the two paths cannot drift apart.
#pragma once
#include <cstdint>

#include "device.cuh"

namespace tf {
namespace cuda {

// y, mean, rstd = LayerNorm over the last dimension C of N rows (one block per row, statistics in T).
template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t N, int64_t C, double eps);

// y = GELU(x), exact erf form; y may alias x.
template <typename T>
void gelu_forward(T* y, const T* x, int64_t n);

// Phi(x), the standard normal CDF, through erfc: 0.5 * (1 + erf(x / sqrt 2)) cancels for x << 0 and loses the
// small values the CPU's gelu.h keeps (its float path is an erfc fit, its double path std::erfc).
template <typename T>
__device__ __forceinline__ T normal_cdf(T x) {
  return T(0.5) * erfc(x * T(-0.70710678118654752440));
}

// GELU(x) = x * Phi(x): the elementwise op and the GEMM epilogue share this one definition.
template <typename T>
__device__ __forceinline__ T gelu_value(T x) {
  return x * normal_cdf(x);
}

}  // namespace cuda
}  // namespace tf
