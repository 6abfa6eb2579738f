// Causal multi-head self-attention, training form: the CUDA twin of native/cpu/attention.cc, built from batched
// GEMMs over (sample, head) slices of the qkv buffer and a row-wise softmax. The probabilities [B,H,T,T] are saved
// for the backward exactly as on the CPU.
//
// TODO(perf): a FlashAttention-style fused kernel (no T x T matrix in memory) is a later issue; this version is the
// reference it will be tested against.
#include <cmath>

#include "../common/op.h"
#include "gemm.cuh"

namespace tf {
namespace {

constexpr int kThreads = 128;

struct AttnDims {
  int64_t B, T, W, H, hd;
};

AttnDims attn_dims(Tensor* qkv, int64_t heads) {
  if (qkv->ndim() != 3 || qkv->dim(2) % 3) throw shape_error("qkv must be [B, T, 3W], got " + qkv->describe());
  int64_t W = qkv->dim(2) / 3;
  if (heads <= 0 || W % heads) throw arg_error("heads (" + std::to_string(heads) + ") must divide the width " + std::to_string(W));
  return {qkv->dim(0), qkv->dim(1), W, heads, W / heads};
}

// Slices of one (sample, head): the sample stride is outer, the head stride inner.
cuda::GemmBatch batch_of(const AttnDims& d, int64_t a_outer, int64_t a_inner, int64_t b_outer, int64_t b_inner,
                         int64_t c_outer, int64_t c_inner) {
  cuda::GemmBatch g;
  g.count = d.B * d.H;
  g.inner = d.H;
  g.a_outer = a_outer, g.a_inner = a_inner, g.b_outer = b_outer, g.b_inner = b_inner, g.c_outer = c_outer, g.c_inner = c_inner;
  return g;
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

// attention(out[B,T,W], probs[B,H,T,T], qkv[B,T,3W], heads, temp)
TF_OP(attention) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* probs = tensor_arg(info, 1, "probs");
  Tensor* qkv = tensor_arg(info, 2, "qkv");
  int64_t heads = int_arg(info, 3, "heads");
  double temp = number_arg(info, 4, "temp");
  AttnDims d = attn_dims(qkv, heads);
  expect_shape(out, {d.B, d.T, d.W}, "out");
  expect_shape(probs, {d.B, d.H, d.T, d.T}, "probs");
  expect_same_dtype(out, qkv, "out", "qkv");
  expect_same_dtype(probs, qkv, "probs", "qkv");
  if (d.B * d.T * d.W == 0) return info.Env().Undefined();
  dispatch_float(qkv->dtype(), [&]<typename T>() {
    const T* q = qkv->data<T>();
    const T* k = q + d.W;
    const T* v = q + 2 * d.W;
    T* P = probs->data<T>();
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * temp));
    const int64_t ld = 3 * d.W, TT = d.T * d.T;
    cuda::gemm<T>(false, true, d.T, d.T, d.hd, scale, q, ld, k, ld, T(0), P, d.T, nullptr,
                  batch_of(d, d.T * ld, d.hd, d.T * ld, d.hd, d.H * TT, TT));
    int64_t rows = d.B * d.H * d.T;
    causal_softmax_kernel<T><<<row_grid(rows), kThreads, kThreads * sizeof(T), cuda::stream()>>>(P, rows, d.T);
    cuda::check_launch("attention (softmax)");
    cuda::gemm<T>(false, false, d.T, d.hd, d.T, T(1), P, d.T, v, ld, T(0), out->data<T>(), d.W, nullptr,
                  batch_of(d, d.H * TT, TT, d.T * ld, d.hd, d.T * d.W, d.hd));
  });
  return info.Env().Undefined();
}

// attentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, probs, heads, temp): dqkv is overwritten.
TF_OP(attentionBackward) {
  Tensor* dqkv = tensor_arg(info, 0, "dqkv");
  Tensor* dout = tensor_arg(info, 1, "dout");
  Tensor* qkv = tensor_arg(info, 2, "qkv");
  Tensor* probs = tensor_arg(info, 3, "probs");
  int64_t heads = int_arg(info, 4, "heads");
  double temp = number_arg(info, 5, "temp");
  AttnDims d = attn_dims(qkv, heads);
  expect_shape(dqkv, qkv->shape(), "dqkv");
  expect_shape(dout, {d.B, d.T, d.W}, "dout");
  expect_shape(probs, {d.B, d.H, d.T, d.T}, "probs");
  for (Tensor* t : {dqkv, dout, probs}) expect_same_dtype(t, qkv, "argument", "qkv");
  if (d.B * d.T * d.W == 0) return info.Env().Undefined();
  dispatch_float(qkv->dtype(), [&]<typename T>() {
    const T* q = qkv->data<T>();
    const T* k = q + d.W;
    const T* v = q + 2 * d.W;
    T* dq = dqkv->data<T>();
    T* dk = dq + d.W;
    T* dv = dq + 2 * d.W;
    const T* dO = dout->data<T>();
    const T* P = probs->data<T>();
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * temp));
    const int64_t ld = 3 * d.W, TT = d.T * d.T;
    T* dS = cuda::scratch_as<T>(1, d.B * d.H * TT);
    // dP = dO V^T, then the softmax backward turns it into dS in place.
    cuda::gemm<T>(false, true, d.T, d.T, d.hd, T(1), dO, d.W, v, ld, T(0), dS, d.T, nullptr,
                  batch_of(d, d.T * d.W, d.hd, d.T * ld, d.hd, d.H * TT, TT));
    int64_t rows = d.B * d.H * d.T;
    softmax_backward_kernel<T><<<row_grid(rows), kThreads, kThreads * sizeof(T), cuda::stream()>>>(dS, P, rows, d.T);
    cuda::check_launch("attentionBackward (softmax)");
    // dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q.
    cuda::gemm<T>(true, false, d.T, d.hd, d.T, T(1), P, d.T, dO, d.W, T(0), dv, ld, nullptr,
                  batch_of(d, d.H * TT, TT, d.T * d.W, d.hd, d.T * ld, d.hd));
    cuda::gemm<T>(false, false, d.T, d.hd, d.T, scale, dS, d.T, k, ld, T(0), dq, ld, nullptr,
                  batch_of(d, d.H * TT, TT, d.T * ld, d.hd, d.T * ld, d.hd));
    cuda::gemm<T>(true, false, d.T, d.hd, d.T, scale, dS, d.T, q, ld, T(0), dk, ld, nullptr,
                  batch_of(d, d.H * TT, TT, d.T * ld, d.hd, d.T * ld, d.hd));
  });
  return info.Env().Undefined();
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object ops) {
  export_op(env, ops, "attention", attention);
  export_op(env, ops, "attentionBackward", attentionBackward);
}

}  // namespace tf
