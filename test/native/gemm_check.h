// The whole-product checks both tensor-core GEMM emulation tests share (mma_tile_test.cc, wgmma_tile_test.cc): a
// problem description, and check_products(run), which runs a kernel's emulation (run) on every shape, transpose,
// leading dimension and batch layout the kernels meet and compares each C element with a double-precision product of
// the bf16-rounded operands: exactly (bit for bit) for small-integer inputs, where every partial sum is exact in fp32,
// and to fp32 rounding for random inputs. It also checks that every element of C is written exactly once and nothing
// outside the matrices is touched.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "../../native/common/bf16.h"
#include "check.h"

namespace tf {
namespace emu {

struct Problem {
  bool transA, transB;
  int64_t M, N, K, lda, ldb, ldc;
  int64_t count = 1, inner = 1, a_outer = 0, a_inner = 0, b_outer = 0, b_inner = 0, c_outer = 0, c_inner = 0;
  int64_t a_off(int64_t z) const { return z / inner * a_outer + z % inner * a_inner; }
  int64_t b_off(int64_t z) const { return z / inner * b_outer + z % inner * b_inner; }
  int64_t c_off(int64_t z) const { return z / inner * c_outer + z % inner * c_inner; }
};

// run(p, A, B, C, alpha, beta, writes): C = alpha * op(A) op(B) + beta * C as the kernel computes it; writes[i] counts
// the stores to C[i].
using RunKernel = void (*)(const Problem&, const std::vector<float>&, const std::vector<float>&, std::vector<float>&, float, float,
                           std::vector<int>&);

// op(X)[r][k] for a stored operand.
inline float elem(const float* x, int64_t ld, bool trans, int64_t r, int64_t k) { return trans ? x[k * ld + r] : x[r * ld + k]; }

// Storage sizes: the largest offset a batch entry reaches, plus its matrix.
inline int64_t span(int64_t rows_stored, int64_t ld, int64_t count, int64_t inner, int64_t outer_stride, int64_t inner_stride) {
  return (count - 1) / inner * outer_stride + (inner - 1) * inner_stride + rows_stored * ld;
}

inline void check_product(RunKernel run_kernel, const char* name, const Problem& p, bool integers, uint32_t seed) {
  const int64_t a_rows = p.transA ? p.K : p.M, b_rows = p.transB ? p.N : p.K;
  const int64_t inner_n = p.count < p.inner ? p.count : p.inner;
  std::vector<float> A(span(a_rows, p.lda, p.count, inner_n, p.a_outer, p.a_inner)), B(span(b_rows, p.ldb, p.count, inner_n, p.b_outer, p.b_inner));
  std::vector<float> C(span(p.M, p.ldc, p.count, inner_n, p.c_outer, p.c_inner));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-4, 4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : A) v = integers ? float(small(rng)) : normal(rng);
  for (float& v : B) v = integers ? float(small(rng)) : normal(rng);
  for (float& v : C) v = integers ? float(small(rng)) : normal(rng);
  const float alpha = integers ? 1.0f : 0.75f, beta = integers ? 1.0f : -0.5f;

  std::vector<float> out = C;
  std::vector<int> writes(C.size(), 0);
  run_kernel(p, A, B, out, alpha, beta, writes);

  std::vector<char> covered(C.size(), 0);
  int64_t bad = 0;
  double worst = 0;
  for (int64_t z = 0; z < p.count; ++z) {
    const float* a = A.data() + p.a_off(z);
    const float* b = B.data() + p.b_off(z);
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) {
        const int64_t at = p.c_off(z) + m * p.ldc + n;
        covered[at] = 1;
        CHECK(writes[at] == 1, "%s: C(%lld, %lld, %lld) written %d times", name, (long long)z, (long long)m, (long long)n, writes[at]);
        double s = 0, mag = 0;
        for (int64_t k = 0; k < p.K; ++k) {
          const double x = round_to_bf16(elem(a, p.lda, p.transA, m, k)) * double(round_to_bf16(elem(b, p.ldb, !p.transB, n, k)));
          s += x;
          mag += std::fabs(x);
        }
        const double want = alpha * s + beta * double(C[at]);
        const double err = std::fabs(out[at] - want);
        if (integers ? err != 0 : err > 1e-5 * (std::fabs(alpha) * mag + std::fabs(beta * C[at])) + 1e-30) {
          if (bad++ < 3)
            std::fprintf(stderr, "%s: C(%lld, %lld, %lld) = %.9g, want %.9g\n", name, (long long)z, (long long)m, (long long)n, out[at], want);
        }
        if (mag > 0) worst = std::fmax(worst, err / mag);
      }
  }
  CHECK(bad == 0, "%s: %lld wrong elements (largest error %.3g of the sum of |products|)", name, (long long)bad, worst);
  for (size_t i = 0; i < C.size(); ++i)
    CHECK(covered[i] || (writes[i] == 0 && out[i] == C[i]), "%s: C storage %zu outside the matrices was touched", name, i);
}

// One finished accumulator into C, as the kernels' epilogue (store_result) does it without bias or GELU; skips elements
// outside the matrix and counts the stores.
inline void store_c(const Problem& p, float* c, int* writes, int64_t m, int64_t n, float acc, float alpha, float beta) {
  if (m >= p.M || n >= p.N) return;
  float v = alpha * acc;
  if (beta != 0.0f) v += beta * c[m * p.ldc + n];
  c[m * p.ldc + n] = v;
  ++writes[m * p.ldc + n];
}

// The kernels' order over K: stage slice 0; then for each slice, load the next one into registers, multiply this one
// from its stage, and store the next one into the other stage.
template <typename Fetch, typename Compute, typename Put>
void run_slices(int64_t slices, int64_t slice_k, Fetch&& fetch, Compute&& compute, Put&& put) {
  fetch(0);
  put(0);
  for (int64_t t = 0; t < slices; ++t) {
    const int cur = static_cast<int>(t & 1);
    const bool more = t + 1 < slices;
    if (more) fetch((t + 1) * slice_k);
    compute(cur);
    if (more) put(cur ^ 1);
  }
}

// A test's verdict and exit status; the products must have taken the float4 path at least once.
inline int report(const char* what, int64_t vector_loads) {
  CHECK(vector_loads > 0, "no product took the float4 path");
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("%s: all checks passed (%lld float4 loads)\n", what, (long long)vector_loads);
  return 0;
}

inline void check_products(RunKernel run_kernel) {
  struct Shape {
    int64_t M, N, K;
  };
  // One mma tile, one block tile, tails in every dimension, K below one slice and one element, shapes thinner than
  // a warp tile, and more than one block in each direction.
  const Shape shapes[] = {{16, 8, 16}, {128, 128, 32}, {1, 1, 1}, {130, 70, 50}, {257, 129, 97}, {5, 300, 33}, {64, 40, 1}, {200, 9, 64}};
  int count = 0;
  for (bool integers : {true, false})
    for (bool aligned : {false, true})
      for (const Shape& s : shapes)
        for (int t = 0; t < 4; ++t) {
          Problem p;
          p.transA = t & 1;
          p.transB = t & 2;
          p.M = s.M, p.N = s.N, p.K = s.K;
          // Leading dimensions beyond the minimum, so that a row/column mix-up cannot pass by accident; odd ones keep
          // k-contiguous operands on scalar loads, multiples of 4 put them on float4 loads.
          p.lda = (p.transA ? s.M : s.K) + (aligned ? 4 : 3);
          p.ldb = (p.transB ? s.K : s.N) + (aligned ? 8 : 5);
          p.ldc = s.N + 2;
          if (aligned) p.lda = (p.lda + 3) / 4 * 4, p.ldb = (p.ldb + 3) / 4 * 4;
          char name[128];
          std::snprintf(name, sizeof name, "%s %lldx%lldx%lld transA=%d transB=%d lda=%lld ldb=%lld", integers ? "integers" : "random",
                        (long long)s.M, (long long)s.N, (long long)s.K, int(p.transA), int(p.transB), (long long)p.lda, (long long)p.ldb);
          check_product(run_kernel, name, p, integers, 1000u + static_cast<uint32_t>(count++));
        }

  // Two-level batch strides: (sample, head) slices of one buffer, as attention.cu multiplies q k^T, P v and dS^T q
  // (C slices interleaved in one buffer for the last), and a transA-transB product over strided slices.
  {
    const int64_t T = 37, hd = 24, H = 2, Bs = 3, W = H * hd, ld = 3 * W, TT = T * T;
    Problem qk{false, true, T, T, hd, ld, ld, T, Bs * H, H, T * ld, hd, T * ld, hd, H * TT, TT};
    Problem pv{false, false, T, hd, T, T, ld, W, Bs * H, H, H * TT, TT, T * ld, hd, T * W, hd};
    Problem dk{true, false, T, hd, T, T, ld, ld, Bs * H, H, H * TT, TT, T * ld, hd, T * ld, hd};
    Problem tt{true, true, hd, T, T, ld, T, T + 1, Bs * H, H, T * ld, hd, H * TT, TT, H * hd * (T + 1), hd * (T + 1)};
    const std::pair<const char*, Problem> batched[] = {{"batched q k^T", qk}, {"batched P v", pv}, {"batched dS^T q", dk}, {"batched A^T B^T", tt}};
    for (const auto& [name, p] : batched) {
      check_product(run_kernel, name, p, true, 77u + static_cast<uint32_t>(count++));
      check_product(run_kernel, name, p, false, 77u + static_cast<uint32_t>(count++));
    }
  }
}

}  // namespace emu
}  // namespace tf
