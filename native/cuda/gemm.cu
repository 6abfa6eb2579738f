// Tiled shared-memory GEMM for float and double: the reference GPU path, written for correctness and clarity, and
// the float32 path (it matches the CPU to float32 rounding). Each 256-thread block computes a 64 x 64 tile of C,
// stepping over K in slices of 16 staged through shared memory; each thread owns a 4 x 4 set of outputs spaced 16
// apart, so the stores of a warp are contiguous. Precision::BF16 goes to the tensor-core kernel (gemm_bf16.cu).
//
// TODO(perf): double buffering with cp.async for this path; a later issue.
#include "gemm.cuh"

#include <type_traits>

namespace tf {
namespace cuda {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256, kPer = 4;

template <typename T, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads) gemm_kernel(int64_t M, int64_t N, int64_t K, T alpha, const T* __restrict__ A,
                                                        int64_t lda, const T* __restrict__ B, int64_t ldb, T beta, T* C,
                                                        int64_t ldc, const T* __restrict__ bias, T* gelu, const T* __restrict__ gelu_grad_of,
                                                        GemmBatch batch, int64_t y0, int64_t z0) {
  // +1 column of padding keeps the transposed stores into shared memory off a single bank.
  __shared__ T As[kBK][kBM + 1];
  __shared__ T Bs[kBK][kBN + 1];

  const int64_t z = z0 + blockIdx.z;
  A += batch.a(z);
  B += batch.b(z);
  C += batch.c(z);
  if (gelu) gelu += batch.c(z);
  if (gelu_grad_of) gelu_grad_of += batch.c(z);

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = (y0 + blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;

  T acc[kPer][kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = T(0);

  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    // Each thread loads 4 elements of each tile; the index order follows the operand's contiguous dimension so a
    // warp reads consecutive addresses.
#pragma unroll
    for (int l = 0; l < (kBM * kBK) / kThreads; ++l) {
      int e = tid + l * kThreads;
      int m, k;
      if (kTransA) { k = e / kBM; m = e % kBM; }
      else { m = e / kBK; k = e % kBK; }
      int64_t gm = m0 + m, gk = k0 + k;
      T v = T(0);
      if (gm < M && gk < K) v = kTransA ? A[gk * lda + gm] : A[gm * lda + gk];
      As[k][m] = v;
    }
#pragma unroll
    for (int l = 0; l < (kBN * kBK) / kThreads; ++l) {
      int e = tid + l * kThreads;
      int n, k;
      if (kTransB) { n = e / kBK; k = e % kBK; }
      else { k = e / kBN; n = e % kBN; }
      int64_t gn = n0 + n, gk = k0 + k;
      T v = T(0);
      if (gn < N && gk < K) v = kTransB ? B[gn * ldb + gk] : B[gk * ldb + gn];
      Bs[k][n] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      T a[kPer], b[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kPer; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      int64_t n = n0 + tx + 16 * j;
      if (n < N) store_result(acc[i][j], m, n, alpha, beta, C, ldc, bias, gelu, gelu_grad_of);
    }
  }
}

}  // namespace

template <typename T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc, const GemmOptions<T>& o) {
  if (M <= 0 || N <= 0 || o.batch.count <= 0) return;
  if (o.precision == Precision::BF16) {
    if constexpr (std::is_same_v<T, float>) return gemm_bf16(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, o);
    else throw arg_error("gemm: bf16 precision needs float32 operands");
  }
  cudaStream_t s = stream();
  dispatch_transpose(transA, transB, [&]<bool kTransA, bool kTransB>() {
    for_each_grid_chunk((N + kBN - 1) / kBN, (M + kBM - 1) / kBM, o.batch.count, [&](dim3 grid, int64_t y0, int64_t z0) {
      gemm_kernel<T, kTransA, kTransB><<<grid, kThreads, 0, s>>>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, o.bias, o.gelu, o.gelu_grad_of,
                                                                 o.batch, y0, z0);
      check_launch("gemm");
    });
  });
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t, const GemmOptions<float>&);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t, const GemmOptions<double>&);

}  // namespace cuda
}  // namespace tf
