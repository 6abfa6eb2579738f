// The per-thread logic of the fused causal attention kernels (flash_attention.cu), in plain C++ so that a CPU
// program (test/native/flash_tile_test.cc) runs exactly this logic for every thread of every block and checks the
// results. A kernel is a fixed sequence of the phases below with a block barrier between any two; the emulator runs
// each phase for all threads before the next, which is what the barriers guarantee on the GPU.
//
// FlashAttention-2's scheme, fp32 (or double) on CUDA cores: a block owns kOwn rows (one per thread) whose data
// stays in shared memory, and streams the rows it attends to (keys/values, or queries/output gradients) through
// shared memory kStream at a time, skipping the tiles the causal mask hides. Nothing of size T x T exists:
//   forward   owns queries, streams K and V: online softmax, writes out and the row log-sum-exp (lse);
//   dkdv      owns keys, streams Q and dO with their lse and D = rowsum(dO * out): accumulates dK and dV;
//   dq        owns queries, streams K and V: accumulates dQ.
// Each output element is written by exactly one thread of one block, in a fixed order: no atomics, so results are
// reproducible. Head dims up to kD are supported; shorter heads are zero-padded in shared memory.
//
// Register arrays (a row's sums) are indexed only by unrolled loop counters, so they stay in registers; loops
// that stop at hd test d < hd inside instead.
//
// Shared rows are kD + 1 words long: a thread walking its own row and its neighbours walking theirs hit 32
// different banks; the streamed rows are read by all threads at once (a broadcast).
#pragma once
#include <cmath>
#include <cstdint>

#include "../common/bf16.h"

#if defined(__CUDACC__)
#define TF_UNROLL _Pragma("unroll")
#else
#define TF_UNROLL
#endif

namespace tf {
namespace flash {

constexpr int kD = 64;         // largest head dim
constexpr int kOwn = 64;       // rows a block owns = threads per block
constexpr int kStream = 16;    // rows per streamed tile
constexpr int kThreads = kOwn;
constexpr int kRowWords = kD + 1;

// One attention problem: qkv [B, T, 3W] (queries, keys, values side by side; head h uses columns [h hd, h hd + hd)
// of each), out and dout [B, T, W], lse and D [B, H, T]. Row t of a (sample, head) slice starts at
// slice + t * ld, where ld is 3W for qkv and W for out.
struct Problem {
  int64_t BH, H, T, W, hd;
  double scale;  // logits are scale * q.k, scale = 1 / (sqrt(hd) temp)
  bool bf16;     // round the staged matrix inputs (and P, dS before their products) to bf16
  TF_HOST_DEVICE int64_t tiles() const { return (T + kOwn - 1) / kOwn; }
  TF_HOST_DEVICE int64_t qkv_slice(int64_t bh) const { return bh / H * T * 3 * W + bh % H * hd; }
  TF_HOST_DEVICE int64_t out_slice(int64_t bh) const { return bh / H * T * W + bh % H * hd; }
};

// The block's (sample, head) pair and owned tile. Blocks are numbered along one grid axis (no 65535 limit on B H);
// the heaviest tiles (most unmasked pairs) get the lowest numbers, so they start first and the short ones fill in.
struct Block {
  int64_t bh, row0;
};
TF_HOST_DEVICE inline Block block_of(const Problem& p, int64_t block, bool owns_queries) {
  const int64_t tile = block / p.BH;
  return {block % p.BH, kOwn * (owns_queries ? p.tiles() - 1 - tile : tile)};
}

// The streamed tiles a block visits: [first, end). Queries attend to keys at or before them.
struct Span {
  int64_t first, end;
};
TF_HOST_DEVICE inline Span stream_span(const Problem& p, int64_t row0, bool owns_queries) {
  const int64_t last_own = (row0 + kOwn < p.T ? row0 + kOwn : p.T) - 1;
  if (owns_queries) return {0, last_own / kStream + 1};
  return {row0 / kStream, (p.T + kStream - 1) / kStream};
}

// exp and log at T's precision on either side (device code has float overloads in the global namespace). kFast:
// ex2.approx on the GPU for float (two instructions instead of expf's eight, a few ulp: for the tensor-core kernels,
// whose exps meet bf16 rounding; the emulation and the CPU keep std::exp, and the parity test measures the gap).
template <bool kFast = false, typename T>
TF_HOST_DEVICE inline T exp_of(T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (kFast && sizeof(T) == sizeof(float)) return __expf(x);
  else return exp(x);
#else
  return std::exp(x);
#endif
}
template <typename T>
TF_HOST_DEVICE inline T log_of(T x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  return std::log(x);
#endif
}

template <typename T>
TF_HOST_DEVICE inline T maybe_bf16(T x, bool bf16) {
  if constexpr (sizeof(T) == sizeof(float)) return bf16 ? round_to_bf16(x) : x;
  else return x;
}

// Copies rows [row0, row0 + rows) of a slice (rows past T and columns past hd become 0) into shared memory.
// Consecutive threads take consecutive columns: coalesced global reads.
template <typename T>
TF_HOST_DEVICE inline void stage_rows(T* sh, int rows, const T* slice, int64_t ld, int64_t row0, const Problem& p, int tid) {
  for (int e = tid; e < rows * kD; e += kThreads) {
    const int r = e / kD, c = e % kD;
    const int64_t t = row0 + r;
    sh[r * kRowWords + c] = t < p.T && c < p.hd ? maybe_bf16(slice[t * ld + c], p.bf16) : T(0);
  }
}

// Keys and values [k0, k0 + kStream) of a slice whose queries start at q.
template <typename T>
TF_HOST_DEVICE inline void stage_keys_values(T* sK, T* sV, const T* q, int64_t k0, const Problem& p, int tid) {
  stage_rows(sK, kStream, q + p.W, 3 * p.W, k0, p, tid);
  stage_rows(sV, kStream, q + 2 * p.W, 3 * p.W, k0, p, tid);
}

// lse or D of streamed rows [row0, row0 + kStream) (0 past T).
template <typename T>
TF_HOST_DEVICE inline void stage_stats(T* sh, const T* stats, int64_t row0, const Problem& p, int tid) {
  if (tid < kStream) sh[tid] = row0 + tid < p.T ? stats[row0 + tid] : T(0);
}

// The kernels' store (the emulator counts instead).
struct Plain {
  template <typename T>
  TF_HOST_DEVICE void operator()(T* at, T value) const { *at = value; }
};

template <typename T>
TF_HOST_DEVICE inline T dot_rows(const T* a, const T* b) {
  T s = T(0);
  TF_UNROLL
  for (int c = 0; c < kD; ++c) s += a[c] * b[c];
  return s;
}

// ---- forward: owns queries; state of one query row ----

template <typename T>
struct ForwardRow {
  T acc[kD];
  T m, l;  // running max of the logits and sum of exp(logit - m)
};

template <typename T>
TF_HOST_DEVICE inline void forward_begin(ForwardRow<T>& r) {
  TF_UNROLL
  for (int c = 0; c < kD; ++c) r.acc[c] = T(0);
  r.m = -INFINITY;
  r.l = T(0);
}

// One streamed tile of keys sK and values sV (first key k0) for query row i = row0 + tid, whose staged row is sQ.
// The tile's logits are found first, so the running sums are rescaled once per tile rather than once per key.
template <typename T>
TF_HOST_DEVICE inline void forward_tile(ForwardRow<T>& r, const T* sQ, const T* sK, const T* sV, int64_t row0, int64_t k0,
                                        const Problem& p, int tid) {
  const int64_t i = row0 + tid;
  if (i >= p.T || k0 > i) return;
  const T* q = sQ + tid * kRowWords;
  T s[kStream];
  T mt = r.m;
  TF_UNROLL
  for (int c = 0; c < kStream; ++c) {
    s[c] = k0 + c <= i ? T(p.scale) * dot_rows(q, sK + c * kRowWords) : T(-INFINITY);
    mt = s[c] > mt ? s[c] : mt;
  }
  const T rescale = exp_of(r.m - mt);  // 0 on the first tile (m = -inf)
  r.l *= rescale;
  TF_UNROLL
  for (int c = 0; c < kD; ++c) r.acc[c] *= rescale;
  TF_UNROLL
  for (int c = 0; c < kStream; ++c) {
    const T e = exp_of(s[c] - mt);  // 0 for masked keys
    r.l += e;
    const T pe = maybe_bf16(e, p.bf16);
    const T* v = sV + c * kRowWords;
    TF_UNROLL
    for (int d = 0; d < kD; ++d) r.acc[d] += pe * v[d];
  }
  r.m = mt;
}

// out_i = acc / l and lse_i = m + log l, through store(pointer, value).
template <typename T, typename Store>
TF_HOST_DEVICE inline void forward_end(const ForwardRow<T>& r, T* out, T* lse, int64_t bh, int64_t row0, const Problem& p, int tid,
                                       Store&& store) {
  const int64_t i = row0 + tid;
  if (i >= p.T) return;
  T* o = out + p.out_slice(bh) + i * p.W;
  const T inv = T(1) / r.l;
  TF_UNROLL
  for (int d = 0; d < kD; ++d)
    if (d < p.hd) store(o + d, r.acc[d] * inv);
  store(lse + bh * p.T + i, r.m + log_of(r.l));
}

// ---- backward ----

// D_i = rowsum(dO_i * out_i) for flat row n = bh T + i (a grid-stride loop over B H T rows).
template <typename T>
TF_HOST_DEVICE inline T row_dot(const T* dout, const T* out, int64_t n, const Problem& p) {
  const int64_t bh = n / p.T, i = n % p.T, at = p.out_slice(bh) + i * p.W;
  T s = T(0);
  for (int d = 0; d < p.hd; ++d) s += maybe_bf16(dout[at + d], p.bf16) * out[at + d];
  return s;
}

// P_ij recomputed from the forward's lse, and dS_ij = P_ij (dO_i . v_j - D_i).
template <typename T>
struct Grad {
  T p, ds;
};
template <typename T>
TF_HOST_DEVICE inline Grad<T> grad_of(const T* q, const T* k, const T* dO, const T* v, T lse, T D, const Problem& p) {
  const T pij = exp_of(T(p.scale) * dot_rows(q, k) - lse);
  return {pij, pij * (dot_rows(dO, v) - D)};
}

// dkdv: owns keys j = row0 + tid (staged rows sK, sV); streams queries sQ, output gradients sdO and their lse, D.
template <typename T>
struct KeyRow {
  T dk[kD], dv[kD];
};

template <typename T>
TF_HOST_DEVICE inline void key_begin(KeyRow<T>& r) {
  TF_UNROLL
  for (int c = 0; c < kD; ++c) r.dk[c] = r.dv[c] = T(0);
}

template <typename T>
TF_HOST_DEVICE inline void key_tile(KeyRow<T>& r, const T* sK, const T* sV, const T* sQ, const T* sdO, const T* sLse, const T* sD,
                                    int64_t row0, int64_t q0, const Problem& p, int tid) {
  const int64_t j = row0 + tid;
  if (j >= p.T) return;
  const T* k = sK + tid * kRowWords;
  const T* v = sV + tid * kRowWords;
  for (int c = 0; c < kStream; ++c) {
    if (q0 + c < j || q0 + c >= p.T) continue;
    const T* q = sQ + c * kRowWords;
    const T* dO = sdO + c * kRowWords;
    const Grad<T> g = grad_of(q, k, dO, v, sLse[c], sD[c], p);
    const T pr = maybe_bf16(g.p, p.bf16), dsr = maybe_bf16(g.ds, p.bf16);
    TF_UNROLL
    for (int d = 0; d < kD; ++d) {
      r.dv[d] += pr * dO[d];
      r.dk[d] += dsr * q[d];
    }
  }
}

template <typename T, typename Store>
TF_HOST_DEVICE inline void key_end(const KeyRow<T>& r, T* dqkv, int64_t bh, int64_t row0, const Problem& p, int tid, Store&& store) {
  const int64_t j = row0 + tid;
  if (j >= p.T) return;
  T* dk = dqkv + p.qkv_slice(bh) + j * 3 * p.W + p.W;
  TF_UNROLL
  for (int d = 0; d < kD; ++d)
    if (d < p.hd) {
      store(dk + d, T(p.scale) * r.dk[d]);
      store(dk + p.W + d, r.dv[d]);
    }
}

// dq: owns queries i = row0 + tid (staged rows sQ, sdO, with lse_i and D_i); streams keys sK and values sV.
template <typename T>
TF_HOST_DEVICE inline void query_tile(T* dq, const T* sQ, const T* sdO, T lse, T D, const T* sK, const T* sV, int64_t row0, int64_t k0,
                                      const Problem& p, int tid) {
  const int64_t i = row0 + tid;
  if (i >= p.T || k0 > i) return;
  const T* q = sQ + tid * kRowWords;
  const T* dO = sdO + tid * kRowWords;
  for (int c = 0; c < kStream; ++c) {
    if (k0 + c > i) break;
    const T* k = sK + c * kRowWords;
    const T dsr = maybe_bf16(grad_of(q, k, dO, sV + c * kRowWords, lse, D, p).ds, p.bf16);
    TF_UNROLL
    for (int d = 0; d < kD; ++d) dq[d] += dsr * k[d];
  }
}

template <typename T, typename Store>
TF_HOST_DEVICE inline void query_end(const T* dq, T* dqkv, int64_t bh, int64_t row0, const Problem& p, int tid, Store&& store) {
  const int64_t i = row0 + tid;
  if (i >= p.T) return;
  T* o = dqkv + p.qkv_slice(bh) + i * 3 * p.W;
  TF_UNROLL
  for (int d = 0; d < kD; ++d)
    if (d < p.hd) store(o + d, T(p.scale) * dq[d]);
}

}  // namespace flash
}  // namespace tf
