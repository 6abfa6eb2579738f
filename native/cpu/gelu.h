// The exact (erf) GELU and its derivative, shared by the training kernels and the sampler.
//
// Why not std::erf for float32: libm's erf is scalar, and the MLP's GELU then cost as much as its two GEMMs.
// The float path uses a Chebyshev fit of erfc (fractional error below 1.2e-7, Numerical Recipes' erfcc) with an
// exp written in plain arithmetic, so the compiler vectorises the whole loop. float64 (gradient checks) keeps
// std::erf and std::exp.
#pragma once
#include <cmath>

#include "fast_exp.h"

namespace tf {

// erfc(|z|) for float (fractional error < 1.2e-7).
inline float erfc_abs(float z) {
  float a = std::fabs(z);
  float t = 1.0f / (1.0f + 0.5f * a);
  float poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f +
               t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  return t * exp_approx(-a * a + poly);
}

// Phi(x) = 0.5 * (1 + erf(x / sqrt 2)), the standard normal CDF.
inline float normal_cdf(float x) {
  float e = 0.5f * erfc_abs(x * 0.70710678118654752f);
  return x >= 0.0f ? 1.0f - e : e;
}
inline double normal_cdf(double x) { return 0.5 * std::erfc(-x * M_SQRT1_2); }  // erfc: no cancellation for x << 0

inline float normal_pdf(float x) { return 0.39894228040143268f * exp_approx(-0.5f * x * x); }
inline double normal_pdf(double x) { return 0.39894228040143268 * std::exp(-0.5 * x * x); }

template <typename T>
inline T gelu(T x) {
  return x * normal_cdf(x);
}

// d gelu / dx = Phi(x) + x * phi(x)
template <typename T>
inline T gelu_grad(T x) {
  return normal_cdf(x) + x * normal_pdf(x);
}

}  // namespace tf
