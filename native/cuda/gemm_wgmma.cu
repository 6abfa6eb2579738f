// The sm_90a bf16 GEMM: the mma.sync kernel's staging (fp32 operands rounded to bf16 on their way into shared
// memory, one slice ahead in registers) with the multiply done by wgmma.mma_async, two warpgroups per 128 x 128
// tile. The index logic is in wgmma_tile.h, which test/native/wgmma_tile_test.cc runs on the CPU for every thread
// against an emulated wgmma; gemm_bf16.cu decides per call which of the two kernels runs (TARFLOW_CUDA_GEMM) and
// checks this one against the mma.sync kernel before first trusting it.
//
// Per slice: the warps issue the slice's two k16 multiplies (asynchronous), store the next slice, already loaded into
// registers, to the other stage while the tensor cores work, then wait for the multiplies and meet at the barrier.
// A stage is rewritten only after the barrier that follows the wait of its last reader, so one barrier per slice
// suffices, as in the mma.sync kernel.
//
// TODO(perf): TMA needs bf16 operands in global memory (the tensors are fp32); with them, a producer warp, deeper
// pipelining and 128-byte swizzled tiles; 128 x 256 tiles for large products.
#include "gemm.cuh"
#include "wgmma_tile.h"

namespace tf {
namespace cuda {
namespace {

// 1 in the code the runtime loaded for this device when that code is sm_90a's (and so has the wgmma instructions),
// 0 in every other build of the module (sm_80 code, PTX for newer GPUs).
__device__ int wgmma_code_flag = wgmma::kCompiled ? 1 : 0;

template <bool kTransA, bool kTransB>
__global__ void __launch_bounds__(wgmma::kThreads)
    gemm_wgmma_kernel(int64_t M, int64_t N, int64_t K, float alpha, const float* __restrict__ A, int64_t lda,
                      const float* __restrict__ B, int64_t ldb, float beta, float* C, int64_t ldc,
                      const float* __restrict__ bias, float* gelu, const float* __restrict__ gelu_grad_of, GemmBatch batch,
                      int64_t y0, int64_t z0, bool a_vec4, bool b_vec4) {
  using namespace wgmma;
  // [stage][A, B^T]: 32 KiB. Descriptors address in 16-byte units; 128 keeps every core matrix inside one line.
  __shared__ __align__(128) uint32_t stage[2][2][kTileBytes / 4];

  const int64_t z = z0 + blockIdx.z;
  C += batch.c(z);
  if (gelu) gelu += batch.c(z);
  if (gelu_grad_of) gelu_grad_of += batch.c(z);
  constexpr bool kQuadA = !kTransA, kQuadB = kTransB;
  const mma::Operand a{A + batch.a(z), lda, M, K, a_vec4};
  const mma::Operand b{B + batch.b(z), ldb, N, K, b_vec4};
  const int64_t m0 = (y0 + blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group = warp / 4;

  float acc[kAccs];
#pragma unroll
  for (int i = 0; i < kAccs; ++i) acc[i] = 0.0f;
  float next[2][2 * kPairs];  // [A, B]: this thread's values of the next slice, as kPairs pairs or kQuads quads
  auto fetch_operand = [&](const mma::Operand& op, bool quads, int64_t row0, int64_t k0, float* v) {
#pragma unroll
    for (int q = 0; q < kQuads; ++q)
      if (quads) mma::load_quad(op, row0, k0, quad_coord(tid, q), v + 4 * q);
#pragma unroll
    for (int p = 0; p < kPairs; ++p)
      if (!quads) mma::load_pair(op, row0, k0, pair_coord(tid, p), v[2 * p], v[2 * p + 1]);
  };
  auto put_operand = [&](uint32_t* st, bool quads, const float* v) {
#pragma unroll
    for (int q = 0; q < kQuads; ++q)
      if (quads)  // k % 8 is 0 or 4: two words at an even index, one 64-bit store
        *reinterpret_cast<uint2*>(st + wgmma::stage_word(quad_coord(tid, q))) =
            make_uint2(mma::pack_bf16x2(v[4 * q], v[4 * q + 1]), mma::pack_bf16x2(v[4 * q + 2], v[4 * q + 3]));
#pragma unroll
    for (int p = 0; p < kPairs; ++p)
      if (!quads) st[wgmma::stage_word(pair_coord(tid, p))] = mma::pack_bf16x2(v[2 * p], v[2 * p + 1]);
  };
  auto fetch = [&](int64_t k0) {
    fetch_operand(a, kQuadA, m0, k0, next[0]);
    fetch_operand(b, kQuadB, n0, k0, next[1]);
  };
  auto put = [&](int s) {
    put_operand(stage[s][0], kQuadA, next[0]);
    put_operand(stage[s][1], kQuadB, next[1]);
    fence_proxy_async();
  };

  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(&stage[0][0][0]));
  const int64_t slices = (K + kBK - 1) / kBK;
  fetch(0);
  put(0);
  __syncthreads();
  pin(acc);
  for (int64_t t = 0; t < slices; ++t) {
    const int cur = static_cast<int>(t & 1);
    const bool more = t + 1 < slices;  // the same for every thread: the barrier below is reached by all
    if (more) fetch((t + 1) * kBK);
    const uint32_t a_tile = base + (2 * cur) * kTileBytes, b_tile = a_tile + kTileBytes;
    fence();
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
      mma_m64n128k16(acc, descriptor(a_tile + a_step_byte(group, s)), descriptor(b_tile + b_step_byte(s)));
    commit_group();
    if (more) put(cur ^ 1);
    wait_group<0>();
    pin(acc);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kAccs; ++i) {
    const int64_t m = m0 + acc_row(warp, lane, i), n = n0 + acc_col(lane, i);
    if (m < M && n < N) store_result(acc[i], m, n, alpha, beta, C, ldc, bias, gelu, gelu_grad_of);
  }
}

}  // namespace

bool wgmma_code_loaded() {
  int flag = 0;
  check(cudaMemcpyFromSymbol(&flag, wgmma_code_flag, sizeof flag), "cudaMemcpyFromSymbol (wgmma probe)");
  return flag == 1;
}

const Bf16GemmKernels& wgmma_kernels() {
  static const Bf16GemmKernels kernels{{{gemm_wgmma_kernel<false, false>, gemm_wgmma_kernel<false, true>},
                                        {gemm_wgmma_kernel<true, false>, gemm_wgmma_kernel<true, true>}},
                                       wgmma::kBM, wgmma::kBN, wgmma::kThreads, "gemm (bf16, wgmma)"};
  return kernels;
}

}  // namespace cuda
}  // namespace tf
