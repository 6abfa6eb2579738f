// The float exp of the CPU kernels: the softmaxes' (training attention and the sampler's) and the GELU's erfc fit
// (gelu.h). libm's exp is scalar, and in these loops it cost as much as the matrix products around them.
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

}  // namespace tf
