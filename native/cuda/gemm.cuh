// General matrix multiply on the GPU, the CUDA counterpart of native/cpu/gemm.h (same row-major convention).
#pragma once
#include <cstdint>

#include "../common/bf16.h"
#include "layers.cuh"

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

// Calls f.template operator()<kTransA, kTransB>() with the transposes as compile-time constants (one kernel each).
template <typename F>
void dispatch_transpose(bool transA, bool transB, F&& f) {
  if (transA) {
    if (transB) f.template operator()<true, true>();
    else f.template operator()<true, false>();
  } else {
    if (transB) f.template operator()<false, true>();
    else f.template operator()<false, false>();
  }
}

// What a product adds around alpha * op(A) op(B) + beta * C, and how it multiplies.
template <typename T>
struct GemmOptions {
  const T* bias = nullptr;  // + bias[n] on every row, after the beta term (the CPU's linear adds it last too)
  T* gelu = nullptr;        // also writes GELU of each result here (same layout and batch strides as C)
  const T* gelu_grad_of = nullptr;  // multiplies each result by GELU'(this) (C's layout and batch strides; not with gelu)
  GemmBatch batch;
  Precision precision = Precision::F32;  // BF16: tensor cores, float only (gemm_bf16.cu)
};

// Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, then the options' epilogue.
// A is M x K (lda >= K) when !transA, K x M (lda >= M) when transA; B is K x N (ldb >= N) when !transB, N x K
// (ldb >= K) when transB. beta == 0 means C is overwritten and never read. Each C element is accumulated by one
// thread in a fixed order, so results are deterministic.
template <typename T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc, const GemmOptions<T>& options = {});

extern template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t, const GemmOptions<float>&);
extern template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t, const GemmOptions<double>&);

// Throws ERR_TARFLOW_DEVICE below compute capability 8.0, where mma.sync has no bf16 form.
void require_bf16_tensor_cores();

// The bf16 tensor-core path behind gemm(): operands rounded to bf16 as they are staged, fp32 accumulation. It runs
// one of two kernels (gemm_bf16.cu says which, per TARFLOW_CUDA_GEMM): mma.sync on every GPU from sm_80, and wgmma
// where the loaded code is sm_90a's (H100, H200) and that kernel has passed its check against the first.
void gemm_bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const GemmOptions<float>& options);
// Both bf16 kernels take the same arguments, so one launcher serves them: a kernel is picked per transpose pair from
// a table (mma_kernels in gemm_bf16.cu, wgmma_kernels in gemm_wgmma.cu) with its tile shape and block size.
using Bf16GemmKernel = void (*)(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                                int64_t ldb, float beta, float* C, int64_t ldc, const float* bias, float* gelu,
                                const float* gelu_grad_of, GemmBatch batch, int64_t y0, int64_t z0, bool a_vec4, bool b_vec4);
struct Bf16GemmKernels {
  Bf16GemmKernel by_transpose[2][2];  // [transA][transB]
  int64_t tile_m, tile_n;
  int threads;
  const char* name;  // in launch errors
};
const Bf16GemmKernels& mma_kernels();
const Bf16GemmKernels& wgmma_kernels();
// Runs one product on the given kernels; same contract as gemm_bf16.
void launch_bf16_gemm(const Bf16GemmKernels& kernels, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                      const GemmOptions<float>& options);
// Whether the module the runtime loaded for this device is the sm_90a build (asks the device; not while capturing).
bool wgmma_code_loaded();

// One C element's epilogue, shared by both kernels: alpha * acc, + beta * C, + bias, then the GELU copy or the
// GELU derivative (the CPU's GemmEpilogue, in the same order).
template <typename T>
__device__ __forceinline__ void store_result(T acc, int64_t m, int64_t n, T alpha, T beta, T* C, int64_t ldc,
                                             const T* bias, T* gelu, const T* gelu_grad_of) {
  T v = alpha * acc;
  if (beta != T(0)) v += beta * C[m * ldc + n];
  if (bias) v += bias[n];
  if (gelu_grad_of) v = v * gelu_grad_value(gelu_grad_of[m * ldc + n]);
  C[m * ldc + n] = v;
  if (gelu) gelu[m * ldc + n] = gelu_value(v);  // after C: gelu may alias C (the sampler's in-place MLP)
}

}  // namespace cuda
}  // namespace tf
