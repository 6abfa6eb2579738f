// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator. A value depends only on
// (seed, stream, index), so the CPU and the GPU draw the same numbers, the thread count never changes a result,
// and sample k of a generation run can be redrawn from (seed, k) alone. Shared by both backends.
#pragma once
#include <cmath>
#include <cstdint>

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

// Uniform in [0, 1) with 24 random bits (exactly representable in float32), element i of the stream.
TF_HD double philox_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
  Philox4 r = philox_block(seed, stream, i >> 2);
  return double(r.v[i & 3] >> 8) * (1.0 / 16777216.0);
}

// Standard normal, element i of the stream: Box-Muller on words 0,1 of block i/2 (cos for even i, sin for odd),
// in double so that both backends and both precisions round the same value.
TF_HD double philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  Philox4 r = philox_block(seed, stream, i >> 1);
  double u1 = (double(r.v[0]) + 1.0) * (1.0 / 4294967296.0);  // (0, 1]: log is finite
  double u2 = double(r.v[1]) * (1.0 / 4294967296.0);
  double radius = sqrt(-2.0 * log(u1));
  double angle = 6.283185307179586 * u2;
  return (i & 1) ? radius * sin(angle) : radius * cos(angle);
}

}  // namespace tf
