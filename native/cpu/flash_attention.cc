// Fused causal attention, training form (FlashAttention-2), the plain reference of native/cuda/flash_attention.cu:
// the same results as attention/attentionBackward (attention.cc) without the T x T probabilities. The forward
// saves each row's log-sum-exp of the logits, lse [B,H,T]; the backward recomputes P_ij = exp(logit_ij - lse_i) and,
// with D_i = rowsum(dO_i * out_i) = sum_j P_ij dP_ij, the softmax backward dS_ij = P_ij (dP_ij - D_i).
// Work is split over (sample, head) pairs; a pair's rows of q, k, v (and dO) are copied to contiguous [T, hd]
// buffers first, rounded to bf16 under precision 'bf16' (the probabilities and dS are rounded where they enter a
// product), so the inner loops are unit-stride dot products and row updates.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

// Keys per step of the forward's online softmax: the running sums are rescaled once per block of keys. The GPU's
// streamed tile (flash_tile.h, kStream): both backends then round the same exp(logit - running max) to bf16.
constexpr int64_t kKeyBlock = 16;

template <typename T>
T operand(T x, Precision precision) {
  if constexpr (sizeof(T) == sizeof(float)) return precision == Precision::BF16 ? round_to_bf16(x) : x;
  else return x;
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

template <typename T>
void add_scaled(T* y, T a, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

// Calls of a kernel's parallel body, each holding one head's copies: their memory is counted up front for all of
// them, so that the count (and the peak) does not depend on how the pool happens to schedule them.
size_t workers(const AttnDims& d) { return static_cast<size_t>(parallel_ranges(d.B * d.H, 1)); }

// Rows t of one head (columns [0, hd) from src + t * ld) as a contiguous [T, hd] matrix of operands.
template <typename T>
void gather(std::vector<T>& dst, const T* src, int64_t ld, const AttnDims& d, Precision precision) {
  dst.resize(static_cast<size_t>(d.T * d.hd));
  for (int64_t t = 0; t < d.T; ++t)
    for (int64_t c = 0; c < d.hd; ++c) dst[t * d.hd + c] = operand(src[t * ld + c], precision);
}

// The operands q, k, v of head h of sample b.
template <typename T>
void gather_qkv(std::vector<T>& q, std::vector<T>& k, std::vector<T>& v, const T* qkv, int64_t b, int64_t h, const AttnDims& d,
                Precision precision) {
  const int64_t ld = 3 * d.W;
  const T* src = qkv + b * d.T * ld + h * d.hd;
  gather(q, src, ld, d, precision);
  gather(k, src + d.W, ld, d, precision);
  gather(v, src + 2 * d.W, ld, d, precision);
}

// flashAttention(out[B,T,W], lse[B,H,T], qkv[B,T,3W], heads, temp, {precision}?)
TF_OP(flashAttention) {
  const FlashAttentionArgs args = parse_flash_attention(info);
  const AttnDims& d = args.d;
  dispatch_float(args.qkv->dtype(), [&]<typename T>() {
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * args.temp));
    const MemoryReservation counted(sizeof(T) * static_cast<size_t>(3 * d.T * d.hd) * workers(d), "fused attention's copies of one head");
    parallel_for(d.B * d.H, 1, [&](int64_t s, int64_t e) {
      std::vector<T> q, k, v, acc(static_cast<size_t>(d.hd)), logit(kKeyBlock);
      for (int64_t bh = s; bh < e; ++bh) {
        const int64_t b = bh / d.H, h = bh % d.H;
        gather_qkv(q, k, v, args.qkv->data<T>(), b, h, d, args.precision);
        T* out = args.out->data<T>() + b * d.T * d.W + h * d.hd;
        T* lse = args.lse->data<T>() + bh * d.T;
        for (int64_t i = 0; i < d.T; ++i) {
          T m = -std::numeric_limits<T>::infinity(), l = 0;
          std::fill(acc.begin(), acc.end(), T(0));
          for (int64_t j0 = 0; j0 <= i; j0 += kKeyBlock) {
            const int64_t n = std::min(kKeyBlock, i + 1 - j0);
            T mb = m;
            for (int64_t j = 0; j < n; ++j) {
              logit[j] = scale * dot(&q[i * d.hd], &k[(j0 + j) * d.hd], d.hd);
              mb = std::max(mb, logit[j]);
            }
            const T rescale = std::exp(m - mb);
            l *= rescale;
            for (T& a : acc) a *= rescale;
            for (int64_t j = 0; j < n; ++j) {
              const T p = std::exp(logit[j] - mb);
              l += p;
              add_scaled(acc.data(), operand(p, args.precision), &v[(j0 + j) * d.hd], d.hd);
            }
            m = mb;
          }
          for (int64_t c = 0; c < d.hd; ++c) out[i * d.W + c] = acc[c] / l;
          lse[i] = m + std::log(l);
        }
      }
    });
  });
  return info.Env().Undefined();
}

// flashAttentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, out, lse, heads, temp, {precision}?): dqkv is overwritten.
TF_OP(flashAttentionBackward) {
  const FlashAttentionBackwardArgs args = parse_flash_attention_backward(info);
  const AttnDims& d = args.d;
  dispatch_float(args.qkv->dtype(), [&]<typename T>() {
    const T scale = T(1.0 / (std::sqrt(double(d.hd)) * args.temp));
    const int64_t ld = 3 * d.W;
    const MemoryReservation counted(sizeof(T) * static_cast<size_t>(8 * d.T * d.hd + d.T) * workers(d),
                                    "fused attention backward's copies of one head");
    parallel_for(d.B * d.H, 1, [&](int64_t s, int64_t e) {
      std::vector<T> q, k, v, dO, o, D(static_cast<size_t>(d.T)), dq, dk, dv;
      for (int64_t bh = s; bh < e; ++bh) {
        const int64_t b = bh / d.H, h = bh % d.H;
        gather_qkv(q, k, v, args.qkv->data<T>(), b, h, d, args.precision);
        gather(dO, args.dout->data<T>() + b * d.T * d.W + h * d.hd, d.W, d, args.precision);
        gather(o, args.out->data<T>() + b * d.T * d.W + h * d.hd, d.W, d, Precision::F32);
        const T* lse = args.lse->data<T>() + bh * d.T;
        for (int64_t i = 0; i < d.T; ++i) D[i] = dot(&dO[i * d.hd], &o[i * d.hd], d.hd);
        for (std::vector<T>* g : {&dq, &dk, &dv}) g->assign(static_cast<size_t>(d.T * d.hd), T(0));
        for (int64_t i = 0; i < d.T; ++i)
          for (int64_t j = 0; j <= i; ++j) {
            const T p = std::exp(scale * dot(&q[i * d.hd], &k[j * d.hd], d.hd) - lse[i]);
            const T ds = operand(p * (dot(&dO[i * d.hd], &v[j * d.hd], d.hd) - D[i]), args.precision);
            add_scaled(&dv[j * d.hd], operand(p, args.precision), &dO[i * d.hd], d.hd);
            add_scaled(&dq[i * d.hd], ds, &k[j * d.hd], d.hd);
            add_scaled(&dk[j * d.hd], ds, &q[i * d.hd], d.hd);
          }
        T* dst = args.dqkv->data<T>() + b * d.T * ld + h * d.hd;
        for (int64_t t = 0; t < d.T; ++t)
          for (int64_t c = 0; c < d.hd; ++c) {
            dst[t * ld + c] = scale * dq[t * d.hd + c];
            dst[t * ld + d.W + c] = scale * dk[t * d.hd + c];
            dst[t * ld + 2 * d.W + c] = dv[t * d.hd + c];
          }
      }
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_flash_attention(Napi::Env env, Napi::Object ops) { TF_FLASH_ATTENTION_OPS(TF_EXPORT_OP) }

}  // namespace tf
