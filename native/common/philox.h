// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator. A value depends only on
// (seed, stream, index), so the CPU and the GPU draw the same numbers, the thread count never changes a result,
// and sample k of a generation run can be redrawn from (seed, k) alone. Shared by both backends.
//
// The normal transform runs in float and uses only operations IEEE 754 rounds exactly (integer-to-float
// conversion, +, *, explicit fused multiply-add, sqrt), never a library log/sin/cos and never an a*b+c the
// compiler could choose to fuse or not: so every CPU (scalar or vectorised) and every GPU computes the same bits.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define TF_HD __host__ __device__ inline
#else
#define TF_HD inline
#endif

namespace tf {

struct Philox4 {
  uint32_t v[4];
};

TF_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Block j of stream s under seed: four 32-bit words.
TF_HD Philox4 philox_block(uint64_t seed, uint64_t stream, uint64_t j) {
  return philox4x32_10(uint32_t(j), uint32_t(j >> 32), uint32_t(stream), uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float32), from one word.
TF_HD float uniform_from_word(uint32_t w) { return float(w >> 8) * 0x1p-24f; }

// Element i of a uniform stream: word i%4 of block i/4.
TF_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  return uniform_from_word(philox_block(seed, stream, i >> 2).v[i & 3]);
}

TF_HD float float_from_bits(uint32_t b) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

TF_HD uint32_t bits_of_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

// ln y for y in [2^-32, 1], within 2 float ulps: the mantissa is reduced to [sqrt(1/2), sqrt(2)) and
// ln(1 + f) = f - f^2/2 + f^3 P(f) (Cephes' logf polynomial).
TF_HD float log_unit(float y) {
  uint32_t bits = bits_of_float(y) + (0x3f800000u - 0x3f3504f3u);
  float e = float(int32_t(bits >> 23) - 0x7f);
  float f = float_from_bits((bits & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
  float p = 7.0376836292e-2f;
  p = fmaf(p, f, -1.1514610310e-1f);
  p = fmaf(p, f, 1.1676998740e-1f);
  p = fmaf(p, f, -1.2420140846e-1f);
  p = fmaf(p, f, 1.4249322787e-1f);
  p = fmaf(p, f, -1.6668057665e-1f);
  p = fmaf(p, f, 2.0000714765e-1f);
  p = fmaf(p, f, -2.4999993993e-1f);
  p = fmaf(p, f, 3.3333331174e-1f);
  float f2 = f * f;
  float tail = p * f * f2;
  tail = fmaf(e, -2.12194440e-4f, tail);  // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in float
  tail = fmaf(f2, -0.5f, tail);
  return fmaf(e, 0.693359375f, f + tail);
}

// sqrt(-2 ln u) for u = (w + 1) 2^-32 in (0, 1]: the Box-Muller radius, as accurate as float allows over the
// whole range. Above u = 1/2, u is not a float but 1 - u = ~w 2^-32 is (small radii would lose their precision
// otherwise): there ln u is taken as ln y + c/y, y = 1 - (1 - u) rounded and c its rounding error (exact, by
// Fast2Sum), with 1/y ~ 2 - y, within half an ulp of the result since c is below 2^-25 and matters only while y
// is near 1. Only integers and constants are selected between the two halves: a floating-point operation on
// one side only would be a branch, and the loop over blocks would not be vectorised.
TF_HD float box_muller_radius(uint32_t w) {
  bool upper = w >= 0x80000000u;
  float k = float(w ^ uint32_t(int32_t(w) >> 31));  // ~w above 1/2, w below
  float y = fmaf(k, upper ? -0x1p-32f : 0x1p-32f, upper ? 1.0f : 0x1p-32f);
  float c = fmaf(k, -0x1p-32f, 1.0f - y) * (upper ? 1.0f : 0.0f);
  float minus_two_ln = -2.0f * fmaf(c, 2.0f - y, log_unit(y));
  // u = 1 gives ln u = 0; the comparison also maps -0 to +0, so the sign of a zero never depends on the platform.
  return sqrtf(minus_two_ln > 0.0f ? minus_two_ln : 0.0f);
}

struct CosSin {
  float cos, sin;
};

// cos and sin of 2 pi t for t = w 2^-32 in [0, 1). The reduction to the nearest quarter turn is exact integer
// arithmetic (wrapping past 2^32 is a whole turn); on [-1/8, 1/8] of a turn the Taylor polynomials are within
// 1e-9 of the functions.
TF_HD CosSin turn_cos_sin(uint32_t w) {
  uint32_t quadrant = (w + 0x20000000u) >> 30;
  float x = float(int32_t(w - (quadrant << 30))) * 0x1p-32f;
  float x2 = x * x;
  float s = 4.2058693945e1f;                 // (2pi)^9 / 9!
  s = fmaf(s, x2, -7.6705859753e1f);          // -(2pi)^7 / 7!
  s = fmaf(s, x2, 8.1605249276e1f);           // (2pi)^5 / 5!
  s = fmaf(s, x2, -4.1341702240e1f);          // -(2pi)^3 / 3!
  s = fmaf(s, x2, 6.2831853072e0f);           // 2pi
  s = s * x;
  float c = -2.6426256783e1f;                // -(2pi)^10 / 10!
  c = fmaf(c, x2, 6.0244641372e1f);           // (2pi)^8 / 8!
  c = fmaf(c, x2, -8.5456817207e1f);          // -(2pi)^6 / 6!
  c = fmaf(c, x2, 6.4939394023e1f);           // (2pi)^4 / 4!
  c = fmaf(c, x2, -1.9739208802e1f);          // -(2pi)^2 / 2!
  c = fmaf(c, x2, 1.0f);
  float cos_abs = (quadrant & 1) ? s : c, sin_abs = (quadrant & 1) ? c : s;
  return CosSin{(quadrant == 1 || quadrant == 2) ? -cos_abs : cos_abs, (quadrant >= 2) ? -sin_abs : sin_abs};
}

// Element i of a normal stream: Box-Muller on words 0 and 1 of block i/2, radius times cos for even i, sin for
// odd i.
TF_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  Philox4 r = philox_block(seed, stream, i >> 1);
  CosSin cs = turn_cos_sin(r.v[1]);
  return box_muller_radius(r.v[0]) * ((i & 1) ? cs.sin : cs.cos);
}

}  // namespace tf
