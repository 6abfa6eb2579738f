// The bf16 tensor-core GEMM behind cuda::gemm(..., {.precision = Precision::BF16}): mixed precision's matrix
// products. Operands are read as fp32, rounded to bf16 (to nearest even) when they are staged in shared memory, and
// multiplied by mma.sync.m16n8k16 into fp32 accumulators (sm_80 and newer); the epilogue (alpha, beta, bias, GELU)
// is the float kernel's. The per-thread index logic is in mma_tile.h, which test/native/mma_tile_test.cc runs on
// the CPU for every thread against an emulated mma.sync; gemm.cu's float kernel stays the reference path. The CPU
// reference of its results is the bf16 path of native/cpu/gemm.cc (gemm.h), not the CPU's gemm_bf16.cc, which holds its fast paths.
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
// On sm_90a builds running on H100/H200, gemm_bf16 hands products to the wgmma kernel (gemm_wgmma.cu) instead, once
// that kernel has reproduced this one's results bit for bit on a check problem; this kernel stays the reference and
// the path everywhere else (TARFLOW_CUDA_GEMM, below).
//
// TODO(perf): bf16 operands in global memory and cp.async; a later issue.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "../common/env_choice.h"
#include "../common/exact_gemm_check.h"
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

namespace {
// Asked once per process: the backend only uses the runtime's default device.
int compute_capability() {
  static const int cc = [] {
    int dev = 0, major = 0, minor = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
    return 10 * major + minor;
  }();
  return cc;
}
}  // namespace

// mma.sync with bf16 operands needs compute capability 8.0 (Ampere) or newer.
void require_bf16_tensor_cores() {
  const int cc = compute_capability();
  if (cc < 80)
    throw Error("ERR_TARFLOW_DEVICE", "precision 'bf16' needs a GPU of compute capability 8.0 or newer; this one is " +
                                          std::to_string(cc / 10) + "." + std::to_string(cc % 10) + " (use precision 'fp32')");
}

const Bf16GemmKernels& mma_kernels() {
  static const Bf16GemmKernels kernels{{{gemm_bf16_kernel<false, false>, gemm_bf16_kernel<false, true>},
                                        {gemm_bf16_kernel<true, false>, gemm_bf16_kernel<true, true>}},
                                       mma::kBM, mma::kBN, mma::kThreads, "gemm (bf16)"};
  return kernels;
}

void launch_bf16_gemm(const Bf16GemmKernels& kernels, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                      const GemmOptions<float>& o) {
  cudaStream_t s = stream();
  // Both kernels stage a k-contiguous operand by float4 loads where its rows are 16-byte aligned.
  const bool a_vec4 = !transA && mma::rows_aligned16(A, lda, o.batch.a_outer, o.batch.a_inner);
  const bool b_vec4 = transB && mma::rows_aligned16(B, ldb, o.batch.b_outer, o.batch.b_inner);
  const Bf16GemmKernel kernel = kernels.by_transpose[transA][transB];
  for_each_grid_chunk((N + kernels.tile_n - 1) / kernels.tile_n, (M + kernels.tile_m - 1) / kernels.tile_m, o.batch.count,
                      [&](dim3 grid, int64_t y0, int64_t z0) {
                        kernel<<<grid, kernels.threads, 0, s>>>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, o.bias, o.gelu,
                                                                o.gelu_grad_of, o.batch, y0, z0, a_vec4, b_vec4);
                        check_launch(kernels.name);
                      });
}

// ---- Which kernel ----
// TARFLOW_CUDA_GEMM (read at each product, so tests can compare the kernels): "auto" (the default) runs wgmma where it
// is usable and mma.sync elsewhere; "mma" always runs mma.sync; "wgmma" runs wgmma and fails with ERR_TARFLOW_DEVICE
// where it is not usable.
//
// Usable means: a compute capability 9.0 GPU, the module the runtime loaded for it built for sm_90a (TARFLOW_CUDA_ARCH
// with 90a-real, the default), and a passed check: on operands of small integers, where every product and every partial
// sum is exact in fp32 so that any correct kernel gives the same bits whatever its order of summation, the wgmma kernel
// must reproduce the mma.sync kernel exactly, for all four transposes, with tails in M, N and K and two tiles each way.
// A kernel that reads its operands in a layout other than the one it staged fails this at once; then every product
// stays on mma.sync and the reason is printed once. The check runs at the first bf16 product outside a CUDA Graph
// capture (it waits for the device); products before it use mma.sync.
namespace {

enum class Choice { Auto, Mma, Wgmma };  // the order of TARFLOW_CUDA_GEMM's values

Choice requested_kernel() { return static_cast<Choice>(env_choice("TARFLOW_CUDA_GEMM", {"auto", "mma", "wgmma"})); }

// Empty when the wgmma kernel reproduces mma.sync on the check problems (exact_gemm_check.h), else what differed.
std::string check_wgmma_against_mma() {
  for (int t = 0; t < 4; ++t) {
    // Leading dimensions past the minimum and multiples of 4: k-contiguous operands take the float4 loads.
    const ExactGemmCheck p(t, 200, 136, 80, 4, 12345u);
    const size_t a_bytes = p.a.size() * sizeof(float), b_bytes = p.b.size() * sizeof(float), c_bytes = p.c.size() * sizeof(float);
    std::vector<float> by_mma(p.c.size()), by_wgmma(p.c.size());
    Buffer da(a_bytes), db(b_bytes), dc_mma(c_bytes), dc_wgmma(c_bytes);
    cudaStream_t s = stream();
    check(cudaMemcpyAsync(da.as<float>(), p.a.data(), a_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (wgmma check)");
    check(cudaMemcpyAsync(db.as<float>(), p.b.data(), b_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (wgmma check)");
    check(cudaMemcpyAsync(dc_mma.as<float>(), p.c.data(), c_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (wgmma check)");
    check(cudaMemcpyAsync(dc_wgmma.as<float>(), p.c.data(), c_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (wgmma check)");
    launch_bf16_gemm(mma_kernels(), p.transA, p.transB, p.M, p.N, p.K, 1.0f, da.as<float>(), p.lda, db.as<float>(), p.ldb, 1.0f,
                     dc_mma.as<float>(), p.ldc, {});
    launch_bf16_gemm(wgmma_kernels(), p.transA, p.transB, p.M, p.N, p.K, 1.0f, da.as<float>(), p.lda, db.as<float>(), p.ldb, 1.0f,
                     dc_wgmma.as<float>(), p.ldc, {});
    copy_to_host(by_mma.data(), dc_mma.as<float>(), c_bytes);
    copy_to_host(by_wgmma.data(), dc_wgmma.as<float>(), c_bytes);
    const std::string difference = p.first_difference(by_wgmma.data(), "wgmma", by_mma.data(), "mma.sync");
    if (!difference.empty()) return difference;
  }
  return {};
}

// Decided once per process (under the mutex), then read on every product without it: `state` is published with
// release after `why`, so a reader that sees it decided may read `why`.
struct WgmmaStanding {
  enum : int { kUndecided, kUsable, kUnusable };
  std::atomic<int> state{kUndecided};
  std::mutex deciding;
  std::string why;  // when unusable
};
WgmmaStanding wgmma_standing;

// Why the wgmma kernel cannot be used here, or empty; may wait for the device (the check).
std::string wgmma_unusable_reason() {
  const int cc = compute_capability();
  if (cc != 90)
    return "it needs a GPU of compute capability 9.0 (H100, H200); this one is " + std::to_string(cc / 10) + "." + std::to_string(cc % 10);
  if (!wgmma_code_loaded()) return "the CUDA addon was built without sm_90a code (rebuild with TARFLOW_CUDA_ARCH including 90a-real)";
  std::string mismatch;
  try {
    mismatch = check_wgmma_against_mma();
  } catch (const Error& e) {
    // A fault inside the kernel (illegal address, misaligned access) is sticky: the context is lost with it, and
    // only a new process that keeps away from the kernel helps. Out of memory says nothing about the kernel: the
    // next product decides again.
    if (backend_broken())
      throw Error(e.code, std::string(e.what()) + " (at the first run of the wgmma GEMM, in its check against the mma.sync kernel; "
                                                  "TARFLOW_CUDA_GEMM=mma keeps bf16 products off it; please report this)");
    if (e.code == "ERR_TARFLOW_OUT_OF_MEMORY") throw;
    // Any other error (a launch the GPU refuses) leaves the context usable: the products stay on mma.sync.
    mismatch = std::string("it failed to run: ") + e.what();
  }
  if (mismatch.empty()) return {};
  std::fprintf(stderr, "tarflow: the wgmma GEMM is not used: it failed its check against the mma.sync kernel: %s. bf16 products "
                       "run on the mma.sync kernel; please report this.\n", mismatch.c_str());
  return "it failed its check against the mma.sync kernel: " + mismatch;
}

bool use_wgmma() {
  const Choice choice = requested_kernel();
  if (choice == Choice::Mma) return false;
  WgmmaStanding& w = wgmma_standing;
  int state = w.state.load(std::memory_order_acquire);
  if (state == WgmmaStanding::kUndecided) {
    std::lock_guard<std::mutex> lock(w.deciding);
    state = w.state.load(std::memory_order_relaxed);
    if (state == WgmmaStanding::kUndecided) {
      cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
      check(cudaStreamIsCapturing(stream(), &capturing), "cudaStreamIsCapturing");
      if (capturing != cudaStreamCaptureStatusNone) {
        if (choice == Choice::Wgmma)
          throw Error("ERR_TARFLOW_DEVICE", "TARFLOW_CUDA_GEMM=wgmma: the wgmma kernel is checked at the first bf16 product outside a "
                                            "CUDA Graph capture, and none has run yet (use auto, or run one product first)");
        return false;
      }
      w.why = wgmma_unusable_reason();
      state = w.why.empty() ? WgmmaStanding::kUsable : WgmmaStanding::kUnusable;
      w.state.store(state, std::memory_order_release);
    }
  }
  if (state == WgmmaStanding::kUnusable && choice == Choice::Wgmma)
    throw Error("ERR_TARFLOW_DEVICE", "TARFLOW_CUDA_GEMM=wgmma: " + w.why + " (use auto or mma)");
  return state == WgmmaStanding::kUsable;
}

}  // namespace

const char* bf16_gemm_kernel() {
  require_bf16_tensor_cores();
  return use_wgmma() ? "wgmma" : "mma";
}

void gemm_bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const GemmOptions<float>& o) {
  require_bf16_tensor_cores();
  launch_bf16_gemm(use_wgmma() ? wgmma_kernels() : mma_kernels(), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, o);
}

}  // namespace cuda
}  // namespace tf
