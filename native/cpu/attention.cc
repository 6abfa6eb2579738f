// Causal multi-head self-attention over patch tokens, training form.
// qkv is the output of one linear layer: columns [0,W) queries, [W,2W) keys, [2W,3W) values; head j uses
// columns [j*hd, (j+1)*hd) of each, hd = W / heads. Logits are q.k / (sqrt(headDim) * temp).
// With precision 'bf16' every product takes bf16 inputs (gemm.h's reference of the GPU's tensor-core path); the
// softmax and its backward stay fp32.
// The softmax probabilities are saved for the backward: at the sequence lengths a CPU trains on, the T x T
// matrix per head is small next to the MLP activations, and reusing it makes the backward two GEMMs cheaper.
// Sampling's attention (one query token against a KV cache) is written separately, in reverse.cc's token loop.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "fast_exp.h"
#include "gemm.h"

namespace tf {
namespace {

// Causality: each product is told which triangle of it is masked (GemmTriangle), and skips the tiles there: the
// logits and dP only below the diagonal (kLowerC), P V and dS K only over keys up to each row (kLowerA), P^T dO and
// dS^T Q only over queries from each key on (kUpperA). One product per matrix then packs each operand once.
constexpr GemmTriangle kLowerC{GemmTriangle::kLowerC, 0}, kLowerA{GemmTriangle::kLowerA, 0}, kUpperA{GemmTriangle::kUpperA, 0};

// row[0, n) = softmax(row[0, n)); row[n, cap) is scratch (the masked part of the row, zeroed by the caller). The
// passes run in chunks of one vector with per-lane partial results: a plain loop of std::max or += is a chain of
// dependent operations, which costs as much as the products at these lengths. Chunks may run on into the scratch, so
// that only rows ending within a vector of cap have a (scalar) remainder; otherwise up to 15 scalar exps per row took
// a third of the softmax.
template <typename T>
void softmax_row(T* row, int64_t n, int64_t cap) {
  constexpr int kLanes = 64 / sizeof(T);
  const int64_t vec_end = std::min((n + kLanes - 1) / kLanes * kLanes, cap / kLanes * kLanes);
  T lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<T>::infinity());
  for (int64_t j = 0; j < vec_end; j += kLanes)
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) lane[l] = j + l < n && row[j + l] > lane[l] ? row[j + l] : lane[l];
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = vec_end; j < n; ++j) mx = row[j] > mx ? row[j] : mx;
  for (int l = 0; l < kLanes; ++l) mx = lane[l] > mx ? lane[l] : mx;
  std::fill(lane, lane + kLanes, T(0));
  for (int64_t j = 0; j < vec_end; j += kLanes)
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      row[j + l] = fast_exp(row[j + l] - mx);
      lane[l] += j + l < n ? row[j + l] : T(0);
    }
  T sum = 0;
  for (int64_t j = vec_end; j < n; ++j) {
    row[j] = fast_exp(row[j] - mx);
    sum += row[j];
  }
  for (int l = 0; l < kLanes; ++l) sum += lane[l];
  const T inv = T(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
}

// attention(out[B,T,W], probs[B,H,T,T], qkv[B,T,3W], heads, temp, {precision}?)
TF_OP(attention) {
  const AttentionArgs args = parse_attention(info);
  const AttnDims& d = args.d;
  dispatch_float(args.qkv->dtype(), [&]<typename T>() {
    const T* base = args.qkv->data<T>();
    T* op = args.out->data<T>();
    T* pp = args.probs->data<T>();
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * args.temp));
    const int64_t ld = 3 * d.W;
    parallel_for(d.B * d.H, 1, [&](int64_t s, int64_t e) {
      for (int64_t bh = s; bh < e; ++bh) {
        int64_t b = bh / d.H, h = bh % d.H;
        const T* q = base + b * d.T * ld + h * d.hd;
        const T* k = q + d.W;
        const T* v = q + 2 * d.W;
        T* P = pp + bh * d.T * d.T;
        gemm<T>(args.precision, false, true, d.T, d.T, d.hd, scale, q, ld, k, ld, T(0), P, d.T, false, nullptr, kLowerC);
        for (int64_t i = 0; i < d.T; ++i) {
          T* row = P + i * d.T;
          softmax_row(row, i + 1, d.T);
          std::fill(row + i + 1, row + d.T, T(0));
        }
        gemm<T>(args.precision, false, false, d.T, d.hd, d.T, T(1), P, d.T, v, ld, T(0), op + b * d.T * d.W + h * d.hd, d.W, false,
                nullptr, kLowerA);
      }
    });
  });
  return info.Env().Undefined();
}

// attentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, probs, heads, temp, {precision}?): dqkv is overwritten.
TF_OP(attentionBackward) {
  const AttentionBackwardArgs args = parse_attention_backward(info);
  const AttnDims& d = args.d;
  dispatch_float(args.qkv->dtype(), [&]<typename T>() {
    const T* base = args.qkv->data<T>();
    T* gbase = args.dqkv->data<T>();
    const T* go = args.dout->data<T>();
    const T* pp = args.probs->data<T>();
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * args.temp));
    const int64_t ld = 3 * d.W;
    // One T x T matrix per call of the body, counted up front for every call parallel_for may make, so that the count
    // (and the peak) does not depend on how the pool happens to schedule them.
    const MemoryReservation counted(sizeof(T) * static_cast<size_t>(d.T * d.T * parallel_ranges(d.B * d.H, 1)),
                                    "attention backward's T x T score gradients");
    parallel_for(d.B * d.H, 1, [&](int64_t s, int64_t e) {
      std::vector<T> dS(static_cast<size_t>(d.T * d.T));
      for (int64_t bh = s; bh < e; ++bh) {
        int64_t b = bh / d.H, h = bh % d.H;
        const T* q = base + b * d.T * ld + h * d.hd;
        const T* k = q + d.W;
        const T* v = q + 2 * d.W;
        T* dq = gbase + b * d.T * ld + h * d.hd;
        T* dk = dq + d.W;
        T* dv = dq + 2 * d.W;
        const T* dO = go + b * d.T * d.W + h * d.hd;
        const T* P = pp + bh * d.T * d.T;
        // dP = dO V^T, the softmax backward dS = P * (dP - sum_j P dP) row by row, then dQ = dS K, dV = P^T dO, dK = dS^T Q.
        gemm<T>(args.precision, false, true, d.T, d.T, d.hd, T(1), dO, d.W, v, ld, T(0), dS.data(), d.T, false, nullptr, kLowerC);
        for (int64_t i = 0; i < d.T; ++i) {
          T* row = dS.data() + i * d.T;
          const T* prow = P + i * d.T;
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j <= i; ++j) dot += prow[j] * row[j];
#pragma omp simd
          for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot);
          std::fill(row + i + 1, row + d.T, T(0));
        }
        gemm<T>(args.precision, false, false, d.T, d.hd, d.T, scale, dS.data(), d.T, k, ld, T(0), dq, ld, false, nullptr, kLowerA);
        gemm<T>(args.precision, true, false, d.T, d.hd, d.T, T(1), P, d.T, dO, d.W, T(0), dv, ld, false, nullptr, kUpperA);
        gemm<T>(args.precision, true, false, d.T, d.hd, d.T, scale, dS.data(), d.T, q, ld, T(0), dk, ld, false, nullptr, kUpperA);
      }
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object ops) { TF_ATTENTION_OPS(TF_EXPORT_OP) }

}  // namespace tf
