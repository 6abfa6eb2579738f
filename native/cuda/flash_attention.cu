// Fused causal attention, training form (FlashAttention-2): the CUDA twin of native/cpu/flash_attention.cc, float32
// only (a double tile would not fit the 48 KiB of static shared memory; float64 is the CPU's gradient-check
// precision). Only the row log-sum-exp [B,H,T] is saved; the backward recomputes each probability from it. The per-thread logic
// (tiles, causal skipping, online softmax, gradients) is flash_tile.h's, which test/native/flash_tile_test.cc runs on
// the CPU for every thread; these kernels only add the barriers and the stores.
//
// Under precision 'bf16' all three run on tensor cores (flash_mma.h: mma.sync m16n8k16, bf16 operands, fp32
// accumulation), rounding where the scalar kernels and the CPU reference round.
//
// TODO(perf): double-buffered stages (the next tile's loads in flight during the products) and 32 rows per warp (two m16 tiles sharing each B fragment) are the next steps toward the throughput targets.
#include <cmath>
#include <string>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "device.cuh"
#include "flash_mma.h"
#include "flash_tile.h"
#include "gemm.cuh"

namespace tf {
namespace {

using namespace flash;

template <typename T>
__global__ void __launch_bounds__(kThreads) flash_forward_kernel(T* out, T* lse, const T* qkv, Problem p) {
  __shared__ T sQ[kOwn * kRowWords], sK[kStream * kRowWords], sV[kStream * kRowWords];
  const int tid = threadIdx.x;
  const Block blk = block_of(p, blockIdx.x, true);
  const T* q = qkv + p.qkv_slice(blk.bh);
  const int64_t ld = 3 * p.W;
  stage_rows(sQ, kOwn, q, ld, blk.row0, p, tid);
  ForwardRow<T> r;
  forward_begin(r);
  const Span span = stream_span(p, blk.row0, true);
  for (int64_t t = span.first; t < span.end; ++t) {
    __syncthreads();  // sQ staged; the previous tile's readers are done
    stage_keys_values(sK, sV, q, t * kStream, p, tid);
    __syncthreads();
    forward_tile(r, sQ, sK, sV, blk.row0, t * kStream, p, tid);
  }
  forward_end(r, out, lse, blk.bh, blk.row0, p, tid, Plain{});
}

// A thread's view of its warp for flash_mma.h: one lane, the hardware's mma.sync and quad shuffles.
struct DeviceWarp {
  static constexpr int L = 1;
  int laneid;
  __device__ int lane(int) const { return laneid; }
  __device__ void mma(float (*d)[4], const uint32_t (*a)[4], const uint32_t (*b)[2]) const { mma::mma_16x8x16(d[0], a[0], b[0]); }
  __device__ void ldmatrix_x4(uint32_t (*r)[4], const uint32_t* const* at) const { mma::ldmatrix_x4(r[0], at[0]); }
  __device__ void quad_max(float (*v)[2]) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      v[0][h] = fmaxf(v[0][h], __shfl_xor_sync(0xffffffffu, v[0][h], 1));
      v[0][h] = fmaxf(v[0][h], __shfl_xor_sync(0xffffffffu, v[0][h], 2));
    }
  }
  __device__ void quad_sum(float (*v)[2]) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      v[0][h] += __shfl_xor_sync(0xffffffffu, v[0][h], 1);
      v[0][h] += __shfl_xor_sync(0xffffffffu, v[0][h], 2);
    }
  }
};

// Where a thread of a tensor-core kernel stands: its warp, the block's (sample, head) pair and owned rows, the pair's
// qkv slice, and the first of the warp's 16 owned rows.
struct TcThread {
  int tid, warp;
  DeviceWarp w;
  Block blk;
  const float* q;
  int64_t ld, r0;
};
__device__ TcThread tc_thread(const float* qkv, const Problem& p, bool owns_queries) {
  const int tid = threadIdx.x, warp = tid / 32;
  const Block blk = block_of(p, blockIdx.x, owns_queries);
  return {tid, warp, DeviceWarp{tid % 32}, blk, qkv + p.qkv_slice(blk.bh), 3 * p.W, blk.row0 + 16 * warp};
}

__global__ void __launch_bounds__(tc::kThreads) flash_forward_bf16_kernel(float* out, float* lse, const float* qkv, Problem p) {
  __shared__ __align__(16) uint32_t sQ[tc::kStageWords], sK[tc::kStageWords], sVt[tc::kStageWords];  // 27 KiB; ldmatrix wants 16-byte rows
  const auto [tid, warp, w, blk, q, ld, i0] = tc_thread(qkv, p, true);
  tc::stage_rows_bf16(sQ, q, ld, blk.row0, p, tid, Plain{});
  __syncthreads();
  tc::ForwardWarp<1> st;
  tc::forward_begin(w, st, sQ, warp);
  const int64_t tiles = tc::key_tiles(p, blk.row0);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t k0 = t * tc::kKeys;
    __syncthreads();  // the previous tile's readers are done
    tc::stage_rows_bf16(sK, q + p.W, ld, k0, p, tid, Plain{});
    tc::stage_transposed_bf16(sVt, q + 2 * p.W, ld, k0, p, tid, Plain{});
    __syncthreads();
    const int steps = tc::query_steps(i0, k0);  // the same for the whole warp
#pragma unroll
    for (int b = 0; b < tc::kKeys / tc::kStep; ++b)
      if (b < steps) tc::forward_step(w, st, sK, sVt, b, i0, k0, float(p.scale));
  }
  tc::forward_end(w, st, out, lse, blk.bh, i0, p, Plain{});
}

// dK, dV of the 64 keys a block owns; streams Q and dO 64 rows at a time, as rows and transposed.
__global__ void __launch_bounds__(tc::kThreads) flash_dkdv_bf16_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                                       const float* D, Problem p) {
  __shared__ __align__(16) uint32_t sQ[tc::kStageWords], sdO[tc::kStageWords], sQt[tc::kStageWords], sdOt[tc::kStageWords];  // 36 KiB
  __shared__ float sLse[tc::kKeys], sD[tc::kKeys];
  const auto [tid, warp, w, blk, q, ld, j0] = tc_thread(qkv, p, false);
  const float* dO = dout + p.out_slice(blk.bh);
  // K and V pass through the Q and dO stages on their way to registers.
  tc::stage_rows_bf16(sQ, q + p.W, ld, blk.row0, p, tid, Plain{});
  tc::stage_rows_bf16(sdO, q + 2 * p.W, ld, blk.row0, p, tid, Plain{});
  __syncthreads();
  tc::KeyWarp<1> st;
  tc::key_begin(w, st, sQ, sdO, warp);
  for (int64_t q0 = blk.row0; q0 < p.T; q0 += tc::kKeys) {
    __syncthreads();
    tc::stage_rows_bf16(sQ, q, ld, q0, p, tid, Plain{});
    tc::stage_rows_bf16(sdO, dO, p.W, q0, p, tid, Plain{});
    tc::stage_transposed_bf16(sQt, q, ld, q0, p, tid, Plain{});
    tc::stage_transposed_bf16(sdOt, dO, p.W, q0, p, tid, Plain{});
    tc::stage_stats64(sLse, lse + blk.bh * p.T, q0, p, tid, Plain{});
    tc::stage_stats64(sD, D + blk.bh * p.T, q0, p, tid, Plain{});
    __syncthreads();
    const int first = tc::key_first_step(j0, q0);
#pragma unroll
    for (int b = 0; b < tc::kKeys / tc::kStep; ++b)
      if (b >= first) tc::key_step(w, st, sQ, sdO, sQt, sdOt, sLse, sD, b, j0, q0, p);
  }
  tc::key_end(w, st, dqkv, blk.bh, j0, p, Plain{});
}

// dQ of the 64 queries a block owns; streams K (as rows and transposed) and V 64 keys at a time.
__global__ void __launch_bounds__(tc::kThreads) flash_dq_bf16_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                                                     const float* D, Problem p) {
  __shared__ __align__(16) uint32_t sK[tc::kStageWords], sV[tc::kStageWords], sKt[tc::kStageWords];  // 27 KiB
  const auto [tid, warp, w, blk, q, ld, i0] = tc_thread(qkv, p, true);
  // Q and dO pass through the K and V stages on their way to registers.
  tc::stage_rows_bf16(sK, q, ld, blk.row0, p, tid, Plain{});
  tc::stage_rows_bf16(sV, dout + p.out_slice(blk.bh), p.W, blk.row0, p, tid, Plain{});
  __syncthreads();
  tc::QueryWarp<1> st;
  tc::query_begin(w, st, sK, sV, lse + blk.bh * p.T, D + blk.bh * p.T, i0, warp, p);
  const int64_t tiles = tc::key_tiles(p, blk.row0);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t k0 = t * tc::kKeys;
    __syncthreads();
    tc::stage_rows_bf16(sK, q + p.W, ld, k0, p, tid, Plain{});
    tc::stage_rows_bf16(sV, q + 2 * p.W, ld, k0, p, tid, Plain{});
    tc::stage_transposed_bf16(sKt, q + p.W, ld, k0, p, tid, Plain{});
    __syncthreads();
    const int steps = tc::query_steps(i0, k0);
#pragma unroll
    for (int b = 0; b < tc::kKeys / tc::kStep; ++b)
      if (b < steps) tc::query_step(w, st, sK, sV, sKt, b, i0, k0, p);
  }
  tc::query_end(w, st, dqkv, blk.bh, i0, p, Plain{});
}

template <typename T>
__global__ void row_dot_kernel(T* D, const T* dout, const T* out, Problem p) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < p.BH * p.T; n += int64_t(gridDim.x) * blockDim.x)
    D[n] = row_dot(dout, out, n, p);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) flash_dkdv_kernel(T* dqkv, const T* dout, const T* qkv, const T* lse, const T* D, Problem p) {
  __shared__ T sK[kOwn * kRowWords], sV[kOwn * kRowWords], sQ[kStream * kRowWords], sdO[kStream * kRowWords];
  __shared__ T sLse[kStream], sD[kStream];
  const int tid = threadIdx.x;
  const Block blk = block_of(p, blockIdx.x, false);
  const T* q = qkv + p.qkv_slice(blk.bh);
  const T* dO = dout + p.out_slice(blk.bh);
  const T* stat_lse = lse + blk.bh * p.T;
  const T* stat_D = D + blk.bh * p.T;
  const int64_t ld = 3 * p.W;
  stage_rows(sK, kOwn, q + p.W, ld, blk.row0, p, tid);
  stage_rows(sV, kOwn, q + 2 * p.W, ld, blk.row0, p, tid);
  KeyRow<T> r;
  key_begin(r);
  const Span span = stream_span(p, blk.row0, false);
  for (int64_t t = span.first; t < span.end; ++t) {
    __syncthreads();
    stage_rows(sQ, kStream, q, ld, t * kStream, p, tid);
    stage_rows(sdO, kStream, dO, p.W, t * kStream, p, tid);
    stage_stats(sLse, stat_lse, t * kStream, p, tid);
    stage_stats(sD, stat_D, t * kStream, p, tid);
    __syncthreads();
    key_tile(r, sK, sV, sQ, sdO, sLse, sD, blk.row0, t * kStream, p, tid);
  }
  key_end(r, dqkv, blk.bh, blk.row0, p, tid, Plain{});
}

template <typename T>
__global__ void __launch_bounds__(kThreads) flash_dq_kernel(T* dqkv, const T* dout, const T* qkv, const T* lse, const T* D, Problem p) {
  __shared__ T sQ[kOwn * kRowWords], sdO[kOwn * kRowWords], sK[kStream * kRowWords], sV[kStream * kRowWords];
  const int tid = threadIdx.x;
  const Block blk = block_of(p, blockIdx.x, true);
  const T* q = qkv + p.qkv_slice(blk.bh);
  const int64_t ld = 3 * p.W, i = blk.row0 + tid;
  stage_rows(sQ, kOwn, q, ld, blk.row0, p, tid);
  stage_rows(sdO, kOwn, dout + p.out_slice(blk.bh), p.W, blk.row0, p, tid);
  const T row_lse = i < p.T ? lse[blk.bh * p.T + i] : T(0), row_D = i < p.T ? D[blk.bh * p.T + i] : T(0);
  T dq[kD];
  TF_UNROLL
  for (int d = 0; d < kD; ++d) dq[d] = T(0);
  const Span span = stream_span(p, blk.row0, true);
  for (int64_t t = span.first; t < span.end; ++t) {
    __syncthreads();
    stage_keys_values(sK, sV, q, t * kStream, p, tid);
    __syncthreads();
    query_tile(dq, sQ, sdO, row_lse, row_D, sK, sV, blk.row0, t * kStream, p, tid);
  }
  query_end(dq, dqkv, blk.bh, blk.row0, p, tid, Plain{});
}

// The problem of an op, or a coded error when the kernels do not cover it.
Problem problem_of(const Tensor* qkv, const AttnDims& d, double temp, Precision precision, const char* op) {
  if (qkv->dtype() != DType::F32) throw Error("ERR_TARFLOW_DTYPE", std::string(op) + " on CUDA needs float32 tensors (use attention/attentionBackward)");
  if (d.hd > kD)
    throw shape_error(std::string(op) + " on CUDA supports head dims up to " + std::to_string(kD) + ", got " + std::to_string(d.hd) +
                      " (use attention/attentionBackward)");
  Problem p{d.B * d.H, d.H, d.T, d.W, d.hd, 1.0 / (std::sqrt(double(d.hd)) * temp), precision == Precision::BF16};
  if (p.BH * p.tiles() > 0x7fffffffLL) throw shape_error(std::string(op) + ": too many (sample, head, tile) blocks for one grid");
  return p;
}

unsigned grid_of(const Problem& p) { return static_cast<unsigned>(p.BH * p.tiles()); }

// flashAttention(out[B,T,W], lse[B,H,T], qkv[B,T,3W], heads, temp, {precision}?)
TF_OP(flashAttention) {
  const FlashAttentionArgs args = parse_flash_attention(info);
  const Problem p = problem_of(args.qkv, args.d, args.temp, args.precision, "flashAttention");
  if (p.BH * p.T * p.W == 0) return info.Env().Undefined();
  if (p.bf16) {
    cuda::require_bf16_tensor_cores();
    flash_forward_bf16_kernel<<<grid_of(p), tc::kThreads, 0, cuda::stream()>>>(args.out->data<float>(), args.lse->data<float>(),
                                                                                 args.qkv->data<float>(), p);
  } else {
    flash_forward_kernel<<<grid_of(p), kThreads, 0, cuda::stream()>>>(args.out->data<float>(), args.lse->data<float>(), args.qkv->data<float>(), p);
  }
  cuda::check_launch("flashAttention");
  return info.Env().Undefined();
}

// flashAttentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, out, lse, heads, temp, {precision}?): dqkv is overwritten.
TF_OP(flashAttentionBackward) {
  const FlashAttentionBackwardArgs args = parse_flash_attention_backward(info);
  const Problem p = problem_of(args.qkv, args.d, args.temp, args.precision, "flashAttentionBackward");
  if (p.BH * p.T * p.W == 0) return info.Env().Undefined();
  float* D = cuda::scratch_as<float>(1, p.BH * p.T);
  const float* dout = args.dout->data<float>();
  const float* qkv = args.qkv->data<float>();
  const float* lse = args.lse->data<float>();
  float* dqkv = args.dqkv->data<float>();
  cudaStream_t s = cuda::stream();
  row_dot_kernel<<<cuda::blocks_for(p.BH * p.T, 256), 256, 0, s>>>(D, dout, args.out->data<float>(), p);
  cuda::check_launch("flashAttentionBackward (row dots)");
  if (p.bf16) {
    cuda::require_bf16_tensor_cores();
    flash_dkdv_bf16_kernel<<<grid_of(p), tc::kThreads, 0, s>>>(dqkv, dout, qkv, lse, D, p);
    cuda::check_launch("flashAttentionBackward (dK, dV)");
    flash_dq_bf16_kernel<<<grid_of(p), tc::kThreads, 0, s>>>(dqkv, dout, qkv, lse, D, p);
  } else {
    flash_dkdv_kernel<<<grid_of(p), kThreads, 0, s>>>(dqkv, dout, qkv, lse, D, p);
    cuda::check_launch("flashAttentionBackward (dK, dV)");
    flash_dq_kernel<<<grid_of(p), kThreads, 0, s>>>(dqkv, dout, qkv, lse, D, p);
  }
  cuda::check_launch("flashAttentionBackward (dQ)");
  return info.Env().Undefined();
}

}  // namespace

void register_flash_attention(Napi::Env env, Napi::Object ops) { TF_FLASH_ATTENTION_OPS(TF_EXPORT_OP) }

}  // namespace tf
