// The bf16 tensor-core GEMM behind cuda::gemm(..., {.precision = Precision::BF16}): mixed precision's matrix
// products. Operands are read as fp32, rounded to bf16 (to nearest even) when they are staged in shared memory, and
// multiplied by mma.sync.m16n8k16 into fp32 accumulators (sm_80 and newer); the epilogue (alpha, beta, bias, GELU)
// is the float kernel's. The per-thread index logic is in mma_tile.h, which test/native/mma_tile_test.cc runs on
// the CPU for every thread against an emulated mma.sync; gemm.cu's float kernel stays the reference path.
//
// Two shared stages: while the warps multiply one K slice, every thread holds its part of the next slice in
// registers (its global loads in flight during the multiply) and stores it to the other stage afterwards, so one
// __syncthreads per slice is enough: a stage is rewritten only after the barrier that ends its last reader's slice.
//
// Fragments come from shared memory by ldmatrix.x4: one instruction per A tile and per pair of B tiles, a quarter
// of the shared loads of reading each register's word on its own (mma_tile_test checks that both give the same
// registers, and that ldmatrix's rows are aligned and free of bank conflicts).
//
// A k-contiguous operand (A not transposed, B transposed: both operands of every forward linear) is read 4 floats at
// a time, by float4 loads where its rows are 16-byte aligned.
//
// TODO(perf): bf16 operands in global memory, cp.async, wgmma on sm_90; later issues.
#include <string>

#include "gemm.cuh"
#include "mma_tile.h"

namespace tf {
namespace cuda {
namespace {

template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(mma::kThreads)
    gemm_bf16_kernel(int64_t M, int64_t N, int64_t K, float alpha, const float* __restrict__ A, int64_t lda,
                     const float* __restrict__ B, int64_t ldb, float beta, float* C, int64_t ldc,
                     const float* __restrict__ bias, float* gelu, const float* __restrict__ gelu_grad_of, GemmBatch batch,
                     int64_t y0, int64_t z0, bool a_vec4, bool b_vec4) {
  using namespace mma;
  __shared__ __align__(16) uint32_t stage[2][2][kStageWords];  // [stage][A, B^T]: 40 KiB; ldmatrix wants 16-byte rows

  const int64_t z = z0 + blockIdx.z;
  C += batch.c(z);
  if (gelu) gelu += batch.c(z);
  if (gelu_grad_of) gelu_grad_of += batch.c(z);
  // B is staged as B^T (N rows of K), so both operands are "rows x K" to the staging code. A k-contiguous operand is
  // staged by quads (four k of a row, one float4 when aligned), the other by pairs (two k of a row, 32 rows a warp).
  constexpr bool kQuadA = !kTransA, kQuadB = kTransB;
  const Operand a{A + batch.a(z), lda, M, K, a_vec4};
  const Operand b{B + batch.b(z), ldb, N, K, b_vec4};
  const int64_t m0 = (y0 + blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  float acc[kTilesM][kTilesN][4] = {};
  float next[2][2 * kPairs];  // [A, B]: this thread's values of the next slice, as kPairs pairs or kQuads quads
  auto fetch_operand = [&](const Operand& op, bool quads, int64_t row0, int64_t k0, float* v) {
#pragma unroll
    for (int q = 0; q < kQuads; ++q)
      if (quads) load_quad(op, row0, k0, quad_coord(tid, q), v + 4 * q);
#pragma unroll
    for (int p = 0; p < kPairs; ++p)
      if (!quads) load_pair(op, row0, k0, pair_coord(tid, p), v[2 * p], v[2 * p + 1]);
  };
  auto put_operand = [&](uint32_t* st, bool quads, const float* v) {
#pragma unroll
    for (int q = 0; q < kQuads; ++q)
      if (quads)  // two words at an even index: one 64-bit store
        *reinterpret_cast<uint2*>(st + stage_word(quad_coord(tid, q))) =
            make_uint2(pack_bf16x2(v[4 * q], v[4 * q + 1]), pack_bf16x2(v[4 * q + 2], v[4 * q + 3]));
#pragma unroll
    for (int p = 0; p < kPairs; ++p)
      if (!quads) st[stage_word(pair_coord(tid, p))] = pack_bf16x2(v[2 * p], v[2 * p + 1]);
  };
  auto fetch = [&](int64_t k0) {
    fetch_operand(a, kQuadA, m0, k0, next[0]);
    fetch_operand(b, kQuadB, n0, k0, next[1]);
  };
  auto put = [&](int s) {
    put_operand(stage[s][0], kQuadA, next[0]);
    put_operand(stage[s][1], kQuadB, next[1]);
  };

  const int64_t slices = (K + kBK - 1) / kBK;
  fetch(0);
  put(0);
  __syncthreads();
  for (int64_t t = 0; t < slices; ++t) {
    const int cur = static_cast<int>(t & 1);
    const bool more = t + 1 < slices;  // the same for every thread: the barrier below is reached by all
    if (more) fetch((t + 1) * kBK);
    const uint32_t* sa = stage[cur][0];
    const uint32_t* sb = stage[cur][1];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      uint32_t af[kTilesM][4], bf[kTilesN][2];
#pragma unroll
      for (int mi = 0; mi < kTilesM; ++mi) ldmatrix_x4(af[mi], sa + a4_word(warp, lane, mi, s));
#pragma unroll
      for (int nj = 0; nj < kTilesN / 2; ++nj) {
        uint32_t r[4];
        ldmatrix_x4(r, sb + b4_word(warp, lane, nj, s));
        bf[2 * nj][0] = r[0], bf[2 * nj][1] = r[1], bf[2 * nj + 1][0] = r[2], bf[2 * nj + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < kTilesM; ++mi)
#pragma unroll
        for (int ni = 0; ni < kTilesN; ++ni) mma::mma_16x8x16(acc[mi][ni], af[mi], bf[ni]);
    }
    if (more) put(cur ^ 1);
    __syncthreads();
  }

#pragma unroll
  for (int mi = 0; mi < kTilesM; ++mi)
#pragma unroll
    for (int ni = 0; ni < kTilesN; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + acc_row(warp, lane, mi, i), n = n0 + acc_col(warp, lane, ni, i);
        if (m < M && n < N) store_result(acc[mi][ni][i], m, n, alpha, beta, C, ldc, bias, gelu, gelu_grad_of);
      }
}

}  // namespace

// mma.sync with bf16 operands needs compute capability 8.0 (Ampere) or newer. Asked once per process: the backend
// only uses the runtime's default device.
void require_bf16_tensor_cores() {
  static const int cc = [] {
    int dev = 0, major = 0, minor = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
    return 10 * major + minor;
  }();
  if (cc < 80)
    throw Error("ERR_TARFLOW_DEVICE", "precision 'bf16' needs a GPU of compute capability 8.0 or newer; this one is " +
                                          std::to_string(cc / 10) + "." + std::to_string(cc % 10) + " (use precision 'fp32')");
}

void gemm_bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const GemmOptions<float>& o) {
  require_bf16_tensor_cores();
  cudaStream_t s = stream();
  const bool a_vec4 = !transA && mma::rows_aligned16(A, lda, o.batch.a_outer, o.batch.a_inner);
  const bool b_vec4 = transB && mma::rows_aligned16(B, ldb, o.batch.b_outer, o.batch.b_inner);
  dispatch_transpose(transA, transB, [&]<bool kTransA, bool kTransB>() {
    for_each_grid_chunk((N + mma::kBN - 1) / mma::kBN, (M + mma::kBM - 1) / mma::kBM, o.batch.count, [&](dim3 grid, int64_t y0, int64_t z0) {
      gemm_bf16_kernel<kTransA, kTransB><<<grid, mma::kThreads, 0, s>>>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, o.bias, o.gelu,
                                                                         o.gelu_grad_of, o.batch, y0, z0, a_vec4, b_vec4);
      check_launch("gemm (bf16)");
    });
  });
}

}  // namespace cuda
}  // namespace tf
