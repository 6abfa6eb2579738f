// General matrix multiply on the GPU, the CUDA counterpart of native/cpu/gemm.h (same row-major convention).
#pragma once
#include <cstdint>

#include "device.cuh"

namespace tf {
namespace cuda {

// Batches of independent products. Batch z uses matrices at A + (z / inner) * a_outer + (z % inner) * a_inner (and
// likewise B and C): a two-level stride expresses attention's per-(sample, head) slices of one qkv buffer.
struct GemmBatch {
  int64_t count = 1, inner = 1;
  int64_t a_outer = 0, a_inner = 0, b_outer = 0, b_inner = 0, c_outer = 0, c_inner = 0;

  __host__ __device__ int64_t a(int64_t z) const { return z / inner * a_outer + z % inner * a_inner; }
  __host__ __device__ int64_t b(int64_t z) const { return z / inner * b_outer + z % inner * b_inner; }
  __host__ __device__ int64_t c(int64_t z) const { return z / inner * c_outer + z % inner * c_inner; }
};

// Runs launch(grid, y0, z0) over column tiles (x), row tiles (y) and batch entries (z), in as many launches as
// gridDim.y and gridDim.z <= 65535 need: a kernel's row tile is y0 + blockIdx.y and its batch entry z0 + blockIdx.z.
// Long inputs (rows = batch x tokens) and many (sample, head) pairs both exceed one grid.
template <typename Launch>
void for_each_grid_chunk(int64_t col_tiles, int64_t row_tiles, int64_t count, Launch&& launch) {
  constexpr int64_t kMaxYZ = 65535;
  for (int64_t y0 = 0; y0 < row_tiles; y0 += kMaxYZ)
    for (int64_t z0 = 0; z0 < count; z0 += kMaxYZ) {
      dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles - y0 < kMaxYZ ? row_tiles - y0 : kMaxYZ),
                static_cast<unsigned>(count - z0 < kMaxYZ ? count - z0 : kMaxYZ));
      launch(grid, y0, z0);
    }
}

// Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C (+ bias[N] on every row when bias is given).
// A is M x K (lda >= K) when !transA, K x M (lda >= M) when transA; B is K x N (ldb >= N) when !transB, N x K
// (ldb >= K) when transB. beta == 0 means C is overwritten and never read. Each C element is accumulated by one
// thread in increasing k, so results are deterministic.
template <typename T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc, const T* bias = nullptr, const GemmBatch& batch = GemmBatch{});

extern template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t, const float*, const GemmBatch&);
extern template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t, const double*, const GemmBatch&);

}  // namespace cuda
}  // namespace tf
