// The exact (erf) GELU and its derivative, shared by the training kernels and the sampler.
//
// Why not std::erf for float32: libm's erf is scalar, and the MLP's GELU then cost as much as its two GEMMs.
// The float path uses a Chebyshev fit of erfc (fractional error below 1.2e-7, Numerical Recipes' erfcc) with an
// exp written in plain arithmetic, so the compiler vectorises the whole loop. float64 (gradient checks) keeps
// std::erf and std::exp.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace tf {

// e^x for float, relative error about 2e-7, vectorisable (no calls, no branches beyond selects).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Round to nearest: adding and subtracting 1.5 * 2^23 leaves the integer (|x log2 e| < 128 here); unlike
  // std::nearbyint it vectorises without SSE4.1 (the portable x86-64 build).
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;  // Cody-Waite: ln2 split in two so r stays exact
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // NaN in, NaN out (through r and p; the sampler's redraw of non-finite samples relies on it), but converting NaN
  // to an integer is undefined behaviour: the exponent comes from 0 then.
  const float n_exp = n == n ? n : 0.0f;
  int32_t bits = (static_cast<int32_t>(n_exp) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// The softmaxes' exp (training attention and the sampler): exp_approx for float, where libm's scalar exp would cost
// as much as the products around it; libm for double (gradient and parity checks).
inline float fast_exp(float x) { return exp_approx(x); }
inline double fast_exp(double x) { return std::exp(x); }

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
