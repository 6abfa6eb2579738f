// Fused causal attention, training form (FlashAttention-2): the CUDA twin of native/cpu/flash_attention.cc, float32
// only (a double tile would not fit the 48 KiB of static shared memory; float64 is the CPU's gradient-check
// precision). Only the row log-sum-exp [B,H,T] is saved; the backward recomputes each probability from it. The per-thread logic
// (tiles, causal skipping, online softmax, gradients) is flash_tile.h's, which test/native/flash_tile_test.cc runs on
// the CPU for every thread; these kernels only add the barriers and the stores.
//
// TODO(perf): these kernels run fp32 on CUDA cores; a bf16 tensor-core version (mma.sync tiles as in gemm_bf16.cu)
// is what the throughput targets need. precision 'bf16' already rounds as that version will.
#include <cmath>
#include <string>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "device.cuh"
#include "flash_tile.h"

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
  flash_forward_kernel<<<grid_of(p), kThreads, 0, cuda::stream()>>>(args.out->data<float>(), args.lse->data<float>(), args.qkv->data<float>(), p);
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
  flash_dkdv_kernel<<<grid_of(p), kThreads, 0, s>>>(dqkv, dout, qkv, lse, D, p);
  cuda::check_launch("flashAttentionBackward (dK, dV)");
  flash_dq_kernel<<<grid_of(p), kThreads, 0, s>>>(dqkv, dout, qkv, lse, D, p);
  cuda::check_launch("flashAttentionBackward (dQ)");
  return info.Env().Undefined();
}

}  // namespace

void register_flash_attention(Napi::Env env, Napi::Object ops) { TF_FLASH_ATTENTION_OPS(TF_EXPORT_OP) }

}  // namespace tf
