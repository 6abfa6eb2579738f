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

}  // namespace cuda
}  // namespace tf
