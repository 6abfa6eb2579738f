// Causal multi-head self-attention over patch tokens, training form.
// qkv is the output of one linear layer: columns [0,W) queries, [W,2W) keys, [2W,3W) values; head j uses
// columns [64j, 64j+64) of each. Logits are q.k / (sqrt(headDim) * temp).
// With precision 'bf16' every product takes bf16 inputs (gemm.h's reference of the GPU's tensor-core path); the
// softmax and its backward stay fp32.
// The softmax probabilities are saved for the backward: at the sequence lengths a CPU trains on, the T x T
// matrix per head is small next to the MLP activations, and reusing it makes the backward two GEMMs cheaper.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "gelu.h"
#include "gemm.h"

namespace tf {
namespace {

// Causality by chunks of query rows: chunk [i0, i0 + kRowChunk) multiplies only the keys [0, i0 + kRowChunk) it can
// see, so the products skip most of the masked upper triangle (about 60% of the full work at T = 196, where the
// training step spends a fifth of its time in attention) while each product keeps enough rows to run at full rate.
constexpr int64_t kRowChunk = 64;

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
        for (int64_t i0 = 0; i0 < d.T; i0 += kRowChunk) {
          const int64_t rows = std::min(kRowChunk, d.T - i0), keys = i0 + rows;
          T* Pc = P + i0 * d.T;
          gemm<T>(args.precision, false, true, rows, keys, d.hd, scale, q + i0 * ld, ld, k, ld, T(0), Pc, d.T, false);
          for (int64_t i = i0; i < keys; ++i) {
            T* row = P + i * d.T;
            // The row reductions run across vector lanes (written plainly they are chains of dependent operations,
            // which cost as much as the products at these lengths).
            T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
            for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, row[j]);
            T sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j <= i; ++j) {
              row[j] = fast_exp(row[j] - mx);
              sum += row[j];
            }
            T inv = T(1) / sum;
            for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
            for (int64_t j = i + 1; j < d.T; ++j) row[j] = 0;
          }
          gemm<T>(args.precision, false, false, rows, d.hd, keys, T(1), Pc, d.T, v, ld, T(0), op + (b * d.T + i0) * d.W + h * d.hd, d.W, false);
        }
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
        // By query chunk: dP = dO V^T, the softmax backward dS = P * (dP - sum_j P dP) row by row, dQ = dS K.
        for (int64_t i0 = 0; i0 < d.T; i0 += kRowChunk) {
          const int64_t rows = std::min(kRowChunk, d.T - i0), keys = i0 + rows;
          T* dSc = dS.data() + i0 * d.T;
          gemm<T>(args.precision, false, true, rows, keys, d.hd, T(1), dO + i0 * d.W, d.W, v, ld, T(0), dSc, d.T, false);
          for (int64_t i = i0; i < keys; ++i) {
            T* row = dS.data() + i * d.T;
            const T* prow = P + i * d.T;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j <= i; ++j) dot += prow[j] * row[j];
            for (int64_t j = 0; j <= i; ++j) row[j] = prow[j] * (row[j] - dot);
            for (int64_t j = i + 1; j < d.T; ++j) row[j] = 0;
          }
          gemm<T>(args.precision, false, false, rows, d.hd, keys, scale, dSc, d.T, k, ld, T(0), dq + i0 * ld, ld, false);
        }
        // By key chunk: only queries at or after a key see it, so dV = P^T dO and dK = dS^T Q start at row j0.
        for (int64_t j0 = 0; j0 < d.T; j0 += kRowChunk) {
          const int64_t cols = std::min(kRowChunk, d.T - j0), seen = d.T - j0;
          gemm<T>(args.precision, true, false, cols, d.hd, seen, T(1), P + j0 * d.T + j0, d.T, dO + j0 * d.W, d.W, T(0), dv + j0 * ld, ld, false);
          gemm<T>(args.precision, true, false, cols, d.hd, seen, scale, dS.data() + j0 * d.T + j0, d.T, q + j0 * ld, ld, T(0), dk + j0 * ld, ld, false);
        }
      }
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object ops) { TF_ATTENTION_OPS(TF_EXPORT_OP) }

}  // namespace tf
