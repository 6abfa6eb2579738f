// The working precision of matrix products, and bf16 rounding in plain C++ (host and device).
//
// Mixed precision (architecture.md, "Precision"): the inputs of every matrix product are rounded to bf16, products
// and sums stay fp32, and everything else (master weights, LayerNorm statistics, softmax, exp, log-dets, loss) is
// fp32. The GPU does the rounding when it stages operands for the tensor cores; the CPU emulates the same rounding
// (native/cpu/gemm.cc), so it is the reference the GPU's bf16 results are tested against. A bf16 x bf16 product
// has at most 16 significant bits, exact in fp32: the two backends differ only in the order of the fp32 sums.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TF_HOST_DEVICE __host__ __device__
#else
#define TF_HOST_DEVICE
#endif

namespace tf {

// 'fp32' or 'bf16' in JavaScript.
enum class Precision { F32, BF16 };

// float -> bf16 bits, round to nearest, ties to even (what cvt.rn.bf16.f32 does); a NaN stays a (quiet) NaN,
// which the carry below could otherwise turn into an infinity.
TF_HOST_DEVICE inline uint16_t bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

TF_HOST_DEVICE inline float bf16_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

TF_HOST_DEVICE inline float round_to_bf16(float x) { return bf16_to_float(bf16_bits(x)); }

// A bf16 value in memory: the sampler's KV cache may hold its keys and values in bf16, which halves the bytes
// each token step reads (the step is bound by those reads) and the cache's memory. A distinct type, not a bare
// uint16_t, so a cache of either kind is read through cache_value and never as an integer.
struct Bf16 {
  uint16_t bits;
};

// A cached key or value as the attention computes with it, and the conversion that stores one (round to nearest).
TF_HOST_DEVICE inline float cache_value(float x) { return x; }
TF_HOST_DEVICE inline double cache_value(double x) { return x; }
TF_HOST_DEVICE inline float cache_value(Bf16 x) { return bf16_to_float(x.bits); }

template <typename C, typename T>
TF_HOST_DEVICE inline C to_cache(T x) {
  if constexpr (sizeof(C) == sizeof(Bf16)) return Bf16{bf16_bits(static_cast<float>(x))};
  else return static_cast<C>(x);
}

}  // namespace tf
