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

}  // namespace tf
