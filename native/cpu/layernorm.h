// One row of LayerNorm's forward, shared by the training op (layernorm.cc) and the sampler (reverse.cc).
#pragma once
#include <cmath>
#include <cstdint>

namespace tf {

// y = (x - mean) * rstd * w + b over C values; returns mean and rstd. The sums run across vector lanes: written as
// plain loops they are chains of dependent adds, which cost more than the rest of the row.
template <typename T>
inline void layer_norm_row(T* y, const T* x, const T* w, const T* b, int64_t C, double eps, T& mean, T& rstd) {
  T m = 0;
#pragma omp simd reduction(+ : m)
  for (int64_t i = 0; i < C; ++i) m += x[i];
  m /= T(C);
  T v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t i = 0; i < C; ++i) v += (x[i] - m) * (x[i] - m);
  v /= T(C);
  const T rs = T(1) / std::sqrt(v + T(eps));
#pragma omp simd
  for (int64_t i = 0; i < C; ++i) y[i] = (x[i] - m) * rs * w[i] + b[i];
  mean = m;
  rstd = rs;
}

}  // namespace tf
