// Causal multi-head self-attention, training form: the CUDA twin of native/cpu/attention.cc, built from batched
// GEMMs over (sample, head) slices of the qkv buffer and a row-wise softmax. The probabilities [B,H,T,T] are saved
// for the backward exactly as on the CPU.
//
// The model trains through flash_attention.cu (no T x T matrix in memory); these kernels stay as the plain reference
// that the fused ones are tested against. Sampling's single-token attention over the KV cache is in reverse.cu
// (decode_attention_kernel, and the split-KV pair with decode_tile.h).
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "gemm.cuh"

namespace tf {
namespace {

constexpr int kThreads = 128;

// Slices of one (sample, head): the sample stride is outer, the head stride inner; every product of the op runs at
// its precision.
template <typename T>
cuda::GemmOptions<T> batch_of(const AttnDims& d, Precision precision, int64_t a_outer, int64_t a_inner, int64_t b_outer,
                              int64_t b_inner, int64_t c_outer, int64_t c_inner) {
  cuda::GemmOptions<T> o{.precision = precision};
  o.batch.count = d.B * d.H;
  o.batch.inner = d.H;
  o.batch.a_outer = a_outer, o.batch.a_inner = a_inner, o.batch.b_outer = b_outer, o.batch.b_inner = b_inner;
  o.batch.c_outer = c_outer, o.batch.c_inner = c_inner;
  return o;
}

// Causal softmax of each row of P in place: row i keeps columns j <= i, the rest become 0. One block per row.
template <typename T>
__global__ void __launch_bounds__(kThreads) causal_softmax_kernel(T* P, int64_t rows, int64_t Tn) {
  T* sh = shared_as<T>();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t i = r % Tn;
    T* row = P + r * Tn;
    T mx = -INFINITY;
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) mx = row[j] > mx ? row[j] : mx;
    mx = block_max(mx, sh);
    T sum = T(0);
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
      T e = exp(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    T inv = T(1) / block_sum(sum, sh);
    for (int64_t j = threadIdx.x; j < Tn; j += blockDim.x) row[j] = j <= i ? row[j] * inv : T(0);
  }
}

// Softmax backward in place: dS = P * (dP - sum_j P dP) on j <= i, 0 elsewhere.
template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_backward_kernel(T* dS, const T* P, int64_t rows, int64_t Tn) {
  T* sh = shared_as<T>();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t i = r % Tn;
    T* row = dS + r * Tn;
    const T* prow = P + r * Tn;
    T dot = T(0);
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) dot += prow[j] * row[j];
    dot = block_sum(dot, sh);
    for (int64_t j = threadIdx.x; j < Tn; j += blockDim.x) row[j] = j <= i ? prow[j] * (row[j] - dot) : T(0);
  }
}

unsigned row_grid(int64_t rows) { return static_cast<unsigned>(rows < (1 << 30) ? rows : (1 << 30)); }

// attention(out[B,T,W], probs[B,H,T,T], qkv[B,T,3W], heads, temp, {precision}?)
TF_OP(attention) {
  const AttentionArgs args = parse_attention(info);
  const AttnDims& d = args.d;
  if (d.B * d.T * d.W == 0) return info.Env().Undefined();
  dispatch_float(args.qkv->dtype(), [&]<typename T>() {
    const T* q = args.qkv->data<T>();
    const T* k = q + d.W;
    const T* v = q + 2 * d.W;
    T* P = args.probs->data<T>();
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * args.temp));
    const int64_t ld = 3 * d.W, TT = d.T * d.T;
    cuda::gemm<T>(false, true, d.T, d.T, d.hd, scale, q, ld, k, ld, T(0), P, d.T,
                  batch_of<T>(d, args.precision, d.T * ld, d.hd, d.T * ld, d.hd, d.H * TT, TT));
    int64_t rows = d.B * d.H * d.T;
    causal_softmax_kernel<T><<<row_grid(rows), kThreads, kThreads * sizeof(T), cuda::stream()>>>(P, rows, d.T);
    cuda::check_launch("attention (softmax)");
    cuda::gemm<T>(false, false, d.T, d.hd, d.T, T(1), P, d.T, v, ld, T(0), args.out->data<T>(), d.W,
                  batch_of<T>(d, args.precision, d.H * TT, TT, d.T * ld, d.hd, d.T * d.W, d.hd));
  });
  return info.Env().Undefined();
}

// attentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, probs, heads, temp, {precision}?): dqkv is overwritten.
TF_OP(attentionBackward) {
  const AttentionBackwardArgs args = parse_attention_backward(info);
  const AttnDims& d = args.d;
  if (d.B * d.T * d.W == 0) return info.Env().Undefined();
  dispatch_float(args.qkv->dtype(), [&]<typename T>() {
    const T* q = args.qkv->data<T>();
    const T* k = q + d.W;
    const T* v = q + 2 * d.W;
    T* dq = args.dqkv->data<T>();
    T* dk = dq + d.W;
    T* dv = dq + 2 * d.W;
    const T* dO = args.dout->data<T>();
    const T* P = args.probs->data<T>();
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * args.temp));
    const int64_t ld = 3 * d.W, TT = d.T * d.T;
    T* dS = cuda::scratch_as<T>(1, d.B * d.H * TT);
    // dP = dO V^T, then the softmax backward turns it into dS in place.
    cuda::gemm<T>(false, true, d.T, d.T, d.hd, T(1), dO, d.W, v, ld, T(0), dS, d.T,
                  batch_of<T>(d, args.precision, d.T * d.W, d.hd, d.T * ld, d.hd, d.H * TT, TT));
    int64_t rows = d.B * d.H * d.T;
    softmax_backward_kernel<T><<<row_grid(rows), kThreads, kThreads * sizeof(T), cuda::stream()>>>(dS, P, rows, d.T);
    cuda::check_launch("attentionBackward (softmax)");
    // dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q.
    cuda::gemm<T>(true, false, d.T, d.hd, d.T, T(1), P, d.T, dO, d.W, T(0), dv, ld,
                  batch_of<T>(d, args.precision, d.H * TT, TT, d.T * d.W, d.hd, d.T * ld, d.hd));
    cuda::gemm<T>(false, false, d.T, d.hd, d.T, scale, dS, d.T, k, ld, T(0), dq, ld,
                  batch_of<T>(d, args.precision, d.H * TT, TT, d.T * ld, d.hd, d.T * ld, d.hd));
    cuda::gemm<T>(true, false, d.T, d.hd, d.T, scale, dS, d.T, q, ld, T(0), dk, ld,
                  batch_of<T>(d, args.precision, d.H * TT, TT, d.T * ld, d.hd, d.T * ld, d.hd));
  });
  return info.Env().Undefined();
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object ops) { TF_ATTENTION_OPS(TF_EXPORT_OP) }

}  // namespace tf
