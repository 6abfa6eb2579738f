// The per-thread logic of the sampler's split-KV decode attention (reverse.cu), in plain C++ so that a CPU program
// (test/native/decode_tile_test.cc) runs it for every thread of every block and checks the results.
//
// One token step attends one query per (row, head) to the n = t + 1 cached keys. At batch 256 x 12 heads x 1024
// tokens the step reads 1.6 GB of cache per layer and does almost no arithmetic, so the kernel exists to keep
// enough independent loads in flight: the keys of each (row, head) pair are split into chunks of kChunk, one block
// per (pair, chunk), and a second kernel combines the chunks (flash-decoding):
//   split    stage the chunk's keys and values (coalesced: consecutive threads read consecutive columns of a row),
//            one logit per thread, block max m, p_j = exp(logit_j - m), block sum l, and the unnormalised
//            o = sum_j p_j v_j, with the chunk's columns split over groups of threads; writes (m, l) and o;
//   combine  one thread per output element: M = max m_s, L = sum l_s exp(m_s - M), out = sum o_s exp(m_s - M) / L.
// The cache holds keys and values in the working type or in bf16 (half the bytes to read); staging converts them.
// The grid covers the most chunks the cache can hold (Tn keys), not this step's: the same launch serves every
// step of a CUDA Graph, and blocks past the step's chunks return at once. Blocks are numbered pair-fastest, so the
// live ones come first.
//
// A kernel is a fixed sequence of the phases below with a block barrier between any two (the block reductions
// are barriers too); the emulator runs each phase for all threads before the next.
#pragma once
#include <cstdint>
#include <cstring>

#include "../common/bf16.h"  // Bf16, cache_value
#include "flash_tile.h"      // exp_of, Plain

// The CPU emulator checks the alignment of every pack load; the device has nothing to check.
#ifndef TF_DECODE_CHECK_PACK
#define TF_DECODE_CHECK_PACK(at, bytes) ((void)0)
#endif

namespace tf {
namespace decode {

constexpr int kThreads = 128;
constexpr int kChunk = 64;  // keys per block; at most kThreads (one logit per thread)
static_assert(kChunk <= kThreads, "one logit per thread");

// The step's attention: queries are the rows of qkv [R, 3W] (head h at columns h hd of each third), the caches
// [R, Tn, W] hold keys and values of the tokens so far. Rows [B, R) are the unconditional guidance rows, which
// attend at their own temperature.
struct Problem {
  int64_t R, B, H, Tn, W, hd;
  TF_HOST_DEVICE int64_t pairs() const { return R * H; }
  TF_HOST_DEVICE static int64_t splits(int64_t keys) { return (keys + kChunk - 1) / kChunk; }
  TF_HOST_DEVICE int64_t max_splits() const { return splits(Tn); }
  TF_HOST_DEVICE int64_t blocks() const { return pairs() * max_splits(); }
  // Threads of a block share out the chunk's values by column; groups() of them take every groups()-th key.
  TF_HOST_DEVICE int64_t groups() const { return hd < kThreads ? kThreads / hd : 1; }
  // Shared rows are hd + 1 words: a thread walking its key's row and its neighbours theirs hit different banks.
  TF_HOST_DEVICE int64_t row_words() const { return hd + 1; }
  // Shared memory, in words of T: q [hd], keys and values [kChunk][hd + 1], p [kChunk], the value groups'
  // partial sums [groups hd] (at most max(kThreads, hd)), and the reduction buffer [kThreads].
  TF_HOST_DEVICE int64_t shared_words() const {
    return hd + 2 * kChunk * row_words() + kChunk + (hd > kThreads ? hd : kThreads) + kThreads;
  }
  // Partial results of chunk s of pair q: (m, l) at 2 (q S + s), o at hd (q S + s), S = max_splits().
  TF_HOST_DEVICE int64_t ml_words() const { return 2 * blocks(); }
  TF_HOST_DEVICE int64_t o_words() const { return hd * blocks(); }
};

// Where a block's shared arrays start.
template <typename T>
struct Shared {
  T *q, *k, *v, *p, *acc, *red;
  TF_HOST_DEVICE Shared(T* base, const Problem& pr) {
    q = base;
    k = q + pr.hd;
    v = k + kChunk * pr.row_words();
    p = v + kChunk * pr.row_words();
    acc = p + kChunk;
    red = acc + (pr.hd > kThreads ? pr.hd : kThreads);
  }
};

// A block's (row, head) pair and chunk of keys [key0, key0 + keys); live when the step has that chunk.
struct Block {
  int64_t pair, r, h, split, key0, keys;
  bool live;
};
TF_HOST_DEVICE inline Block block_of(const Problem& p, int64_t block, int64_t n) {
  Block b;
  b.pair = block % p.pairs();
  b.r = b.pair / p.H;
  b.h = b.pair % p.H;
  b.split = block / p.pairs();
  b.key0 = b.split * kChunk;
  b.keys = n - b.key0 < kChunk ? n - b.key0 : kChunk;
  b.live = b.key0 < n;
  return b;
}

// Offset of column 0 of head h of token j of row r in a cache.
TF_HOST_DEVICE inline int64_t cache_at(const Problem& p, int64_t r, int64_t j, int64_t h) { return (r * p.Tn + j) * p.W + h * p.hd; }

// Threads split a chunk by columns. In the value product (accumulate) thread e < groups() hd takes column e % hd of
// keys e / hd, e / hd + groups(), ... In staging the unit is a pack of V adjacent columns, one 16-byte load where
// the layout allows (pack_width): thread e takes pack e % U of keys e / U, e / U + G, ... (U = hd / V packs per
// row, G = kThreads / U keys at once), so consecutive threads read consecutive bytes of a row and no division runs
// per element. Staging loads kBatch packs of keys and of values into registers before storing any, so that each
// thread keeps that many loads in flight: the loads, not the arithmetic, bound the kernel.
constexpr int kBatch = 8;

// V cache elements read as one load: the compiler emits a single 16-byte access for a 16-byte aligned pack.
template <typename C, int V>
struct alignas(sizeof(C) * V) Pack {
  C x[V];
};

// The widest pack (16 bytes, or 1 element) whose loads stay aligned for every (row, token, head): each starts at
// a multiple of V elements when V divides the head dim and the width (the caches are allocated 256-byte aligned).
template <typename C>
TF_HOST_DEVICE inline int pack_width(const Problem& p) {
  constexpr int V = 16 / sizeof(C);
  return p.hd % V == 0 && p.W % V == 0 ? V : 1;
}

template <typename C, int V>
TF_HOST_DEVICE inline Pack<C, V> load_pack(const C* at) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Pack<C, V>*>(at);
#else
  TF_DECODE_CHECK_PACK(at, sizeof(Pack<C, V>));
  Pack<C, V> pk;
  memcpy(&pk, at, sizeof pk);
  return pk;
#endif
}

// Stages the query, and the chunk's keys and values converted from the cache's storage C to T.
template <int V, typename T, typename C>
TF_HOST_DEVICE inline void stage(const Problem& p, const Block& b, int tid, const T* qkv, const C* kc, const C* vc, const Shared<T>& sh) {
  for (int64_t c = tid; c < p.hd; c += kThreads) sh.q[c] = qkv[b.r * 3 * p.W + b.h * p.hd + c];
  const int64_t U = p.hd / V, G = U < kThreads ? kThreads / U : 1;
  for (int64_t e = tid; e < G * U; e += kThreads) {
    const int64_t c0 = e % U * V;
    const C* kcol = kc + cache_at(p, b.r, b.key0, b.h) + c0;
    const C* vcol = vc + cache_at(p, b.r, b.key0, b.h) + c0;
    for (int64_t j0 = e / U; j0 < b.keys; j0 += G * kBatch) {
      Pack<C, V> kr[kBatch], vr[kBatch];
      TF_UNROLL
      for (int u = 0; u < kBatch; ++u) {
        const int64_t j = j0 + u * G;
        if (j < b.keys) {
          kr[u] = load_pack<C, V>(kcol + j * p.W);
          vr[u] = load_pack<C, V>(vcol + j * p.W);
        }
      }
      TF_UNROLL
      for (int u = 0; u < kBatch; ++u) {
        const int64_t j = j0 + u * G;
        if (j < b.keys) {
          TF_UNROLL
          for (int v = 0; v < V; ++v) {
            sh.k[j * p.row_words() + c0 + v] = T(cache_value(kr[u].x[v]));
            sh.v[j * p.row_words() + c0 + v] = T(cache_value(vr[u].x[v]));
          }
        }
      }
    }
  }
}

// The thread's logit (key key0 + tid), -inf for threads past the chunk. The temperature is the row's: scale is
// 1 / (sqrt(hd) tau), tau = 1 for conditional rows.
template <typename T>
TF_HOST_DEVICE inline T score(const Problem& p, const Block& b, int tid, const Shared<T>& sh, T scale_cond, T scale_uncond) {
  if (tid >= b.keys) return -INFINITY;
  const T* kr = sh.k + tid * p.row_words();
  T dot = T(0);
  for (int64_t c = 0; c < p.hd; ++c) dot += sh.q[c] * kr[c];
  return dot * (b.r >= p.B ? scale_uncond : scale_cond);
}

// p_j = exp(logit - m) into shared memory; returns it (0 past the chunk) for the block sum.
template <typename T>
TF_HOST_DEVICE inline T weight(const Block& b, int tid, T logit, T m, const Shared<T>& sh) {
  if (tid >= b.keys) return T(0);
  const T e = flash::exp_of(logit - m);
  sh.p[tid] = e;
  return e;
}

// Thread e's share of o (see stage): sum of p_j v_j over its keys, for its column.
template <typename T>
TF_HOST_DEVICE inline void accumulate(const Problem& p, const Block& b, int tid, const Shared<T>& sh) {
  const int64_t G = p.groups();
  for (int64_t e = tid; e < G * p.hd; e += kThreads) {
    const int64_t c = e % p.hd, g = e / p.hd;
    T acc = T(0);
    for (int64_t j = g; j < b.keys; j += G) acc += sh.p[j] * sh.v[j * p.row_words() + c];
    sh.acc[e] = acc;
  }
}

// The chunk's partial results: o summed over the groups in a fixed order, and (m, l) by thread 0.
template <typename T, typename Store>
TF_HOST_DEVICE inline void finish(const Problem& p, const Block& b, int tid, const Shared<T>& sh, T m, T l, T* ml, T* o, Store store) {
  const int64_t slot = b.pair * p.max_splits() + b.split;
  for (int64_t c = tid; c < p.hd; c += kThreads) {
    T sum = T(0);
    for (int64_t g = 0; g < p.groups(); ++g) sum += sh.acc[g * p.hd + c];
    store(o + slot * p.hd + c, sum);
  }
  if (tid == 0) {
    store(ml + 2 * slot, m);
    store(ml + 2 * slot + 1, l);
  }
}

// Output element idx of [R, H, hd] (att is [R, W]) from the chunks of a step with n keys.
template <typename T, typename Store>
TF_HOST_DEVICE inline void combine(const Problem& p, int64_t idx, int64_t n, const T* ml, const T* o, T* att, Store store) {
  const int64_t c = idx % p.hd, pair = idx / p.hd, S = p.max_splits(), live = Problem::splits(n);
  const T* pml = ml + 2 * pair * S;
  T M = pml[0];
  for (int64_t s = 1; s < live; ++s) M = pml[2 * s] > M ? pml[2 * s] : M;
  T L = T(0), acc = T(0);
  for (int64_t s = 0; s < live; ++s) {
    const T f = flash::exp_of(pml[2 * s] - M);
    L += pml[2 * s + 1] * f;
    acc += o[(pair * S + s) * p.hd + c] * f;
  }
  store(att + pair / p.H * p.W + pair % p.H * p.hd + c, acc / L);
}

}  // namespace decode
}  // namespace tf
