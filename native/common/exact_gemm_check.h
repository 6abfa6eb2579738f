// Problems for checking one GEMM kernel against another bit for bit, before a faster kernel is trusted (AMX against
// the CPU's reference, wgmma against mma.sync): operands of small integers, so every bf16 rounding, product and
// partial sum is exact in fp32 and any correct kernel gives the same bits whatever its order of summation. A kernel
// that reads an operand in the wrong layout, or drops a tail, fails at once.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tf {

// C = op(A) op(B) + C with op(X) = X or X^T, row-major, leading dimensions `pad` past the minimum.
struct ExactGemmCheck {
  bool transA, transB;
  int64_t M, N, K, lda, ldb, ldc;
  std::vector<float> a, b, c;

  // Problem `transposes` (0..3: bit 0 transposes A, bit 1 B) of the four, with operands from `seed`.
  ExactGemmCheck(int transposes, int64_t M_, int64_t N_, int64_t K_, int64_t pad, uint32_t seed)
      : transA(transposes & 1), transB(transposes & 2), M(M_), N(N_), K(K_), lda((transA ? M : K) + pad), ldb((transB ? K : N) + pad),
        ldc(N + pad), a((transA ? K : M) * lda), b((transB ? N : K) * ldb), c(M * ldc) {
    for (std::vector<float>* v : {&a, &b, &c})
      for (float& x : *v) {
        seed = seed * 1664525u + 1013904223u;
        x = static_cast<float>(static_cast<int>(seed >> 28) - 8);  // -8 .. 7
      }
  }

  // Empty when the two results (C after each kernel) agree bit for bit, else where they first differ.
  std::string first_difference(const float* x, const char* x_name, const float* y, const char* y_name) const {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        if (std::memcmp(&x[m * ldc + n], &y[m * ldc + n], sizeof(float)) != 0)
          return "on a " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + " check product (transA " +
                 std::to_string(transA) + ", transB " + std::to_string(transB) + ") C(" + std::to_string(m) + ", " + std::to_string(n) +
                 ") is " + std::to_string(x[m * ldc + n]) + " by " + x_name + " but " + std::to_string(y[m * ldc + n]) + " by " + y_name;
    return {};
  }
};

}  // namespace tf
