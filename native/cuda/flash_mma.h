// The per-thread logic of the bf16 tensor-core kernels of the fused attention (flash_attention.cu), in plain C++ so
// that test/native/flash_tile_test.cc runs it for every lane of every warp of every block, with mma.sync emulated
// from the PTX fragment layouts. Fragment maps and bf16 packing are mma_tile.h's; the problem, the grid and the
// bf16 rounding points are flash_tile.h's (precision 'bf16': the scalar kernels and the CPU reference round alike).
//
// A block owns kRows = 64 query rows, 4 warps of 16 rows each (one m16 tile), and streams keys and values through
// shared memory kKeys = 64 at a time, skipping the tiles the causal mask hides. Per warp and key tile:
//   S = Q K^T   16 x 16 keys at a time (two n8 tiles, 4 k16 steps over the head dim), fp32 accumulators;
//   softmax     row max over the 16 keys, rescaling of O and l, P = exp(S - m) in fp32;
//   O += P V    P rounded to bf16 in registers: the C fragments of S's two n8 tiles are exactly the A fragment
//               of a 16 x 16 (rows x keys) operand (C element pair (2h, 2h+1) of n8 tile j is A register 2j + h).
// The backward has the same shape (no online softmax): dkdv owns 64 keys per block (16 per warp) and streams
// queries, dq owns 64 queries and streams keys; the fp32 P and dS of each 16-wide step become, rounded to bf16,
// the A fragments of the dV, dK and dQ products. Every output element has one writer: no atomics.
// The online softmax steps through 16 keys at a time, as the CPU reference (native/cpu/flash_attention.cc,
// kKeyBlock) and the scalar kernels do: the same exp(logit - running max) is rounded to bf16 on every backend, and
// only the order of fp32 sums differs.
//
// Warp-level code is written once for a Warp that holds L lanes' registers side by side: on the GPU each thread is
// its own view (L = 1, its %laneid), and mma.sync and the quad shuffles are the hardware's; the emulator's view
// holds all 32 lanes and performs them across its arrays.
//
// Shared memory holds bf16 pairs as 32-bit words, K-contiguous as mma.sync's operands want them: Q and K as
// [row][d / 2], V transposed as [d][key / 2] (P V's B operand pairs consecutive keys). Rows are kWords = 36 words:
// the 8 rows x 4 words of a fragment load fall in 32 different banks. B fragments come by ldmatrix.x4 (four
// registers per instruction), A fragments (loaded once per block) by plain loads.
#pragma once
#include <cstdint>

#include "flash_tile.h"
#include "mma_tile.h"

namespace tf {
namespace flash {
namespace tc {

constexpr int kRows = kOwn;  // query rows per block: block_of's tiles
constexpr int kWarps = kRows / 16;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeys = 64;           // keys per streamed tile
constexpr int kStep = kStream;      // keys per softmax step: the reference's key block
constexpr int kWords = kD / 2 + 4;  // words per shared row (32 of data)
constexpr int kStageWords = 64 * kWords;
constexpr int kKSteps = kD / 16;  // k16 steps of Q K^T
constexpr int kDTiles = kD / 8;   // n8 tiles of O

static_assert(kKeys == kRows && kD == 64, "one stage shape serves Q, K and V^T");
static_assert(kStep == 16, "a softmax step is one k16 step of P V");
static_assert(kStageWords / 2 % kThreads == 0, "every thread stages the same number of words");

// The key tiles a query block visits: [0, end).
TF_HOST_DEVICE inline int64_t key_tiles(const Problem& p, int64_t row0) {
  const int64_t last = (row0 + kRows < p.T ? row0 + kRows : p.T) - 1;
  return last / kKeys + 1;
}

// ---- Staging: fp32 rows -> bf16 pairs ----
// Word n (0 <= n < 64 * 32) of a stage. Row-major ([row][d pair]): a warp takes one row, 64 consecutive floats.
// Transposed ([d][row pair]): a warp takes 8 consecutive d of 4 row pairs (8 rows x 32 bytes, whole sectors), and
// its 32 stores land in 32 banks (d * 36 + pair).
struct Word {
  int row, pair;  // row-major: row and d pair; transposed: d and row pair
};
TF_HOST_DEVICE inline Word rows_word(int n) { return {n / 32, n % 32}; }
TF_HOST_DEVICE inline Word transposed_word(int n) { return {(n & 7) + 8 * ((n >> 5) & 7), ((n >> 3) & 3) + 4 * (n >> 8)}; }

// Rows [row0, row0 + 64) of a slice as [row][d pair]; zeros past T and past hd.
template <typename Store>
TF_HOST_DEVICE inline void stage_rows_bf16(uint32_t* sh, const float* slice, int64_t ld, int64_t row0, const Problem& p, int tid, Store&& store) {
  for (int n = tid; n < 64 * 32; n += kThreads) {
    const Word w = rows_word(n);
    const int64_t t = row0 + w.row;
    const int c = 2 * w.pair;
    const float* x = slice + t * ld + c;
    const bool in = t < p.T;
    store(sh + w.row * kWords + w.pair, mma::pack_bf16x2(in && c < p.hd ? x[0] : 0.0f, in && c + 1 < p.hd ? x[1] : 0.0f));
  }
}

// The same rows as [d][row pair].
template <typename Store>
TF_HOST_DEVICE inline void stage_transposed_bf16(uint32_t* sh, const float* slice, int64_t ld, int64_t row0, const Problem& p, int tid,
                                                 Store&& store) {
  for (int n = tid; n < 64 * 32; n += kThreads) {
    const Word w = transposed_word(n);
    const int64_t t = row0 + 2 * w.pair;
    const bool in = w.row < p.hd;
    const float lo = in && t < p.T ? slice[t * ld + w.row] : 0.0f, hi = in && t + 1 < p.T ? slice[(t + 1) * ld + w.row] : 0.0f;
    store(sh + w.row * kWords + w.pair, mma::pack_bf16x2(lo, hi));
  }
}

// lse or D of rows [row0, row0 + 64) (0 past T).
template <typename Store>
TF_HOST_DEVICE inline void stage_stats64(float* sh, const float* stats, int64_t row0, const Problem& p, int tid, Store&& store) {
  if (tid < 64) store(sh + tid, row0 + tid < p.T ? stats[row0 + tid] : 0.0f);
}

// ---- Fragment words ----
// Register i of the A fragment of the warp's 16 rows at k16 step s (Q, [row][d pair]).
TF_HOST_DEVICE inline int a_word(int warp, int lane, int s, int i) {
  return (16 * warp + mma::a_frag_row(lane, i)) * kWords + (16 * s + mma::a_frag_k(lane, i)) / 2;
}
// The row address lane gives ldmatrix.x4 for four B fragment registers: matrix m (the rows named by lanes 8 m to
// 8 m + 7) is the 8 x 8 block of a staged [n][k pair] tile at rows n0 + 8 (m / 2), words w0 + 4 (m % 2). Each lane
// receives word threadID_in_group of row groupID of each matrix: register m is then register m % 2 of the B
// fragment of the n8 tile at row n0 + 8 (m / 2), for the k16 step that starts at word w0. The 8 rows of one
// matrix, 36 words apart, fall in 8 different groups of 4 banks.
TF_HOST_DEVICE inline int b4_word(int lane, int n0, int w0) { return (n0 + 8 * (lane >> 4) + (lane & 7)) * kWords + w0 + 4 * ((lane >> 3) & 1); }

// ---- Warp products shared by the kernels ----

// The warp's 16 staged rows [16 warp, 16 warp + 16) as A fragments of the 4 k16 steps over d.
template <class Warp>
TF_HOST_DEVICE inline void load_rows(const Warp& w, uint32_t (*f)[Warp::L][4], const uint32_t* sh, int warp) {
  for (int l = 0; l < Warp::L; ++l)
    TF_UNROLL
    for (int s = 0; s < kKSteps; ++s)
      TF_UNROLL
      for (int i = 0; i < 4; ++i) f[s][l][i] = sh[a_word(warp, w.lane(l), s, i)];
}

template <int L, int N>
TF_HOST_DEVICE inline void zero(float (*acc)[L][4]) {
  TF_UNROLL
  for (int t = 0; t < N; ++t)
    for (int l = 0; l < L; ++l)
      TF_UNROLL
      for (int i = 0; i < 4; ++i) acc[t][l][i] = 0.0f;
}

// Registers m of two n8 tiles' B fragments from one ldmatrix.x4 (b4_word), as two fragments.
template <class Warp>
TF_HOST_DEVICE inline void load_b4(const Warp& w, uint32_t (*lo)[2], uint32_t (*hi)[2], const uint32_t* sh, int n0, int w0) {
  uint32_t f[Warp::L][4];
  const uint32_t* at[Warp::L];
  for (int l = 0; l < Warp::L; ++l) at[l] = sh + b4_word(w.lane(l), n0, w0);
  w.ldmatrix_x4(f, at);
  for (int l = 0; l < Warp::L; ++l) {
    lo[l][0] = f[l][0];
    lo[l][1] = f[l][1];
    hi[l][0] = f[l][2];
    hi[l][1] = f[l][3];
  }
}

// c = A B^T for the 16 columns [16 b, 16 b + 16) of a staged [column][d pair] tile: A the warp's rows (fragments
// a), c two n8 tiles.
template <class Warp>
TF_HOST_DEVICE inline void rows_by_staged(const Warp& w, float (*c)[Warp::L][4], const uint32_t (*a)[Warp::L][4], const uint32_t* sh, int b) {
  uint32_t f0[Warp::L][2], f1[Warp::L][2];
  zero<Warp::L, 2>(c);
  TF_UNROLL
  for (int s = 0; s < kKSteps; ++s) {
    load_b4(w, f0, f1, sh, 16 * b, 8 * s);
    w.mma(c[0], a[s], f0);
    w.mma(c[1], a[s], f1);
  }
}

// Two n8 accumulator tiles (16 rows x 16 columns) as the A fragment of a k16 step, rounded to bf16: C elements
// (2h, 2h + 1) of tile j are A register 2j + h (rows g + 8h, k 8j + 2 tig and the next).
template <int L>
TF_HOST_DEVICE inline void c_to_a(uint32_t (*a)[4], const float (*c)[L][4]) {
  for (int l = 0; l < L; ++l)
    TF_UNROLL
    for (int j = 0; j < 2; ++j)
      TF_UNROLL
      for (int h = 0; h < 2; ++h) a[l][2 * j + h] = mma::pack_bf16x2(c[j][l][2 * h], c[j][l][2 * h + 1]);
}

// acc (16 rows x 64 d) += A B for k16 step b of a staged transposed tile ([d][k pair]).
template <class Warp>
TF_HOST_DEVICE inline void accumulate(const Warp& w, float (*acc)[Warp::L][4], const uint32_t (*a)[4], const uint32_t* shT, int b) {
  uint32_t f0[Warp::L][2], f1[Warp::L][2];
  TF_UNROLL
  for (int t = 0; t < kDTiles; t += 2) {
    load_b4(w, f0, f1, shT, 8 * t, 8 * b);
    w.mma(acc[t], a, f0);
    w.mma(acc[t + 1], a, f1);
  }
}

// Stores the warp's 16 rows x 64 d accumulators, times scale, to the rows [r0, r0 + 16) of dst (row stride ld) that
// are before T, columns below hd.
template <class Warp, typename Store>
TF_HOST_DEVICE inline void store_rows(const Warp& w, const float (*acc)[Warp::L][4], float scale, float* dst, int64_t ld, int64_t r0,
                                      const Problem& p, Store&& store) {
  for (int l = 0; l < Warp::L; ++l) {
    const int lane = w.lane(l);
    TF_UNROLL
    for (int t = 0; t < kDTiles; ++t)
      TF_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int64_t r = r0 + mma::c_frag_row(lane, i);
        const int d = 8 * t + mma::c_frag_col(lane, i);
        if (r < p.T && d < p.hd) store(dst + r * ld + d, scale * acc[t][l][i]);
      }
  }
}

// key - query of the first column and row of a 16-wide step's tiles (the first staged key or query minus the warp's
// first query or key), as an int: below -128 every pair of the tiles is unmasked anyway.
TF_HOST_DEVICE inline int first_gap(int64_t gap) { return gap > -128 ? static_cast<int>(gap) : -128; }

// ---- Forward, one warp ----

template <int L>
struct ForwardWarp {
  uint32_t q[kKSteps][L][4];  // the warp's Q rows as A fragments, loaded once
  float o[kDTiles][L][4];     // O accumulators: rows g and g + 8 (elements 0-1, 2-3), d 8 tile + 2 tig + (i & 1)
  float m[L][2];              // running max of rows g, g + 8 (the same in the 4 lanes of a quad)
  float l[L][2];              // this lane's part of the sum of exp(logit - m)
};

template <class Warp>
TF_HOST_DEVICE inline void forward_begin(const Warp& w, ForwardWarp<Warp::L>& st, const uint32_t* sQ, int warp) {
  load_rows(w, st.q, sQ, warp);
  zero<Warp::L, kDTiles>(st.o);
  for (int l = 0; l < Warp::L; ++l) {
    st.m[l][0] = st.m[l][1] = -INFINITY;
    st.l[l][0] = st.l[l][1] = 0.0f;
  }
}

// Keys [k0 + 16 b, k0 + 16 b + 16) of the staged tile for the warp's rows [i0, i0 + 16).
template <class Warp>
TF_HOST_DEVICE inline void forward_step(const Warp& w, ForwardWarp<Warp::L>& st, const uint32_t* sK, const uint32_t* sVt, int b,
                                        int64_t i0, int64_t k0, float scale) {
  constexpr int L = Warp::L;
  float s[2][L][4];
  rows_by_staged(w, s, st.q, sK, b);
  float mx[L][2];
  const int gap = first_gap(k0 - i0) + 16 * b;
  for (int l = 0; l < L; ++l) {
    const int lane = w.lane(l);
    mx[l][0] = st.m[l][0];
    mx[l][1] = st.m[l][1];
    TF_UNROLL
    for (int j = 0; j < 2; ++j)
      TF_UNROLL
      for (int i = 0; i < 4; ++i) {
        const bool open = gap + 8 * j + mma::c_frag_col(lane, i) - mma::c_frag_row(lane, i) <= 0;  // key <= query
        const float x = open ? scale * s[j][l][i] : -INFINITY;
        s[j][l][i] = x;
        mx[l][i >> 1] = x > mx[l][i >> 1] ? x : mx[l][i >> 1];
      }
  }
  w.quad_max(mx);
  for (int l = 0; l < L; ++l) {
    TF_UNROLL
    for (int h = 0; h < 2; ++h) {
      // Every row has seen key 0 by its first step, so m is finite here and the rescale of an empty start is 0.
      // Once the running max settles, most steps leave it as it was: their rescale (by exactly 1) is skipped.
      if (mx[l][h] == st.m[l][h]) continue;
      const float r = exp_of<true>(st.m[l][h] - mx[l][h]);
      st.m[l][h] = mx[l][h];
      st.l[l][h] *= r;
      TF_UNROLL
      for (int t = 0; t < kDTiles; ++t) {
        st.o[t][l][2 * h] *= r;
        st.o[t][l][2 * h + 1] *= r;
      }
    }
    TF_UNROLL
    for (int j = 0; j < 2; ++j)
      TF_UNROLL
      for (int i = 0; i < 4; ++i) {
        s[j][l][i] = exp_of<true>(s[j][l][i] - mx[l][i >> 1]);
        st.l[l][i >> 1] += s[j][l][i];
      }
  }
  uint32_t pf[L][4];
  c_to_a<L>(pf, s);
  accumulate(w, st.o, pf, sVt, b);
}

// The steps of a staged key tile that hold a key at or before some query row of the warp (forward and dq).
TF_HOST_DEVICE inline int query_steps(int64_t i0, int64_t k0) {
  const int64_t n = (i0 + 16 - k0 + kStep - 1) / kStep;
  return n < kKeys / kStep ? static_cast<int>(n) : kKeys / kStep;
}

// out = O / l and lse = m + log l of the warp's rows [i0, i0 + 16), through store(pointer, value).
template <class Warp, typename Store>
TF_HOST_DEVICE inline void forward_end(const Warp& w, ForwardWarp<Warp::L>& st, float* out, float* lse, int64_t bh, int64_t i0,
                                       const Problem& p, Store&& store) {
  w.quad_sum(st.l);
  for (int l = 0; l < Warp::L; ++l) {
    const int lane = w.lane(l);
    TF_UNROLL
    for (int h = 0; h < 2; ++h) {
      const float inv = 1.0f / st.l[l][h];
      TF_UNROLL
      for (int t = 0; t < kDTiles; ++t) {
        st.o[t][l][2 * h] *= inv;
        st.o[t][l][2 * h + 1] *= inv;
      }
      const int64_t i = i0 + mma::c_frag_row(lane, 2 * h);
      if ((lane & 3) == 0 && i < p.T) store(lse + bh * p.T + i, st.m[l][h] + log_of(st.l[l][h]));
    }
  }
  store_rows(w, st.o, 1.0f, out + p.out_slice(bh), p.W, i0, p, store);
}

// ---- Backward ----
// P_ij = exp(scale q_i.k_j - lse_i) and dS_ij = P_ij (dO_i.v_j - D_i) in fp32, P and dS rounded to bf16 as they
// enter dV += P^T dO, dK += dS^T Q and dQ += dS K (flash_tile.h's grad_of and the CPU reference round there too).

// P and dS of a 16-wide step, in place of S (s) and dP (dp). Element i of n8 tile j is row c_frag_row(i) of the
// warp's 16 and column 8 j + c_frag_col(i) of the step; gap is key - query of row 0 and column 0, and the rows are
// keys (dkdv) or queries (dq). stats(l, h, c) is the (lse, D) of the query of row half h, column c.
struct QueryStats {
  float lse, D;
};
template <bool kRowsAreKeys, class Warp, typename Stats>
TF_HOST_DEVICE inline void probs_and_grads(const Warp& w, float (*s)[Warp::L][4], float (*dp)[Warp::L][4], int gap, float scale, Stats&& stats) {
  for (int l = 0; l < Warp::L; ++l) {
    const int lane = w.lane(l);
    TF_UNROLL
    for (int j = 0; j < 2; ++j)
      TF_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int row = mma::c_frag_row(lane, i), col = 8 * j + mma::c_frag_col(lane, i);
        const QueryStats e = stats(l, i >> 1, col);
        const float pij = (kRowsAreKeys ? gap + row - col : gap + col - row) <= 0 ? exp_of<true>(scale * s[j][l][i] - e.lse) : 0.0f;
        s[j][l][i] = pij;
        dp[j][l][i] = pij * (dp[j][l][i] - e.D);
      }
  }
}

// dkdv: a warp owns keys [j0, j0 + 16) and computes S^T = K Q^T and dP^T = V dO^T for 16 streamed queries at a
// time; P^T and dS^T (keys x queries) are then the A fragments of dV += P^T dO and dK += dS^T Q.
template <int L>
struct KeyWarp {
  uint32_t k[kKSteps][L][4], v[kKSteps][L][4];
  float dk[kDTiles][L][4], dv[kDTiles][L][4];
};

template <class Warp>
TF_HOST_DEVICE inline void key_begin(const Warp& w, KeyWarp<Warp::L>& st, const uint32_t* sK, const uint32_t* sV, int warp) {
  load_rows(w, st.k, sK, warp);
  load_rows(w, st.v, sV, warp);
  zero<Warp::L, kDTiles>(st.dk);
  zero<Warp::L, kDTiles>(st.dv);
}

// The first step of a staged query tile (first query q0) that holds a query at or after the warp's first key.
TF_HOST_DEVICE inline int key_first_step(int64_t j0, int64_t q0) { return j0 > q0 ? static_cast<int>((j0 - q0) / kStep) : 0; }

// Queries [q0 + 16 b, q0 + 16 b + 16) of the staged tiles: Q and dO as rows and transposed, their lse and D.
template <class Warp>
TF_HOST_DEVICE inline void key_step(const Warp& w, KeyWarp<Warp::L>& st, const uint32_t* sQ, const uint32_t* sdO, const uint32_t* sQt,
                                    const uint32_t* sdOt, const float* sLse, const float* sD, int b, int64_t j0, int64_t q0, const Problem& p) {
  constexpr int L = Warp::L;
  float s[2][L][4], dp[2][L][4];
  rows_by_staged(w, s, st.k, sQ, b);
  rows_by_staged(w, dp, st.v, sdO, b);
  // Staged queries past T (zero q, dO, lse and D) get P = 1 but add nothing: P dO = 0 and dS = 1 (0 - 0).
  probs_and_grads<true>(w, s, dp, first_gap(j0 - q0) - 16 * b, float(p.scale),
                        [&](int, int, int c) { return QueryStats{sLse[16 * b + c], sD[16 * b + c]}; });
  uint32_t af[L][4];
  c_to_a<L>(af, s);
  accumulate(w, st.dv, af, sdOt, b);
  c_to_a<L>(af, dp);
  accumulate(w, st.dk, af, sQt, b);
}

template <class Warp, typename Store>
TF_HOST_DEVICE inline void key_end(const Warp& w, const KeyWarp<Warp::L>& st, float* dqkv, int64_t bh, int64_t j0, const Problem& p,
                                   Store&& store) {
  float* dk = dqkv + p.qkv_slice(bh) + p.W;
  store_rows(w, st.dk, float(p.scale), dk, 3 * p.W, j0, p, store);
  store_rows(w, st.dv, 1.0f, dk + p.W, 3 * p.W, j0, p, store);
}

// dq: a warp owns queries [i0, i0 + 16) and computes S = Q K^T and dP = dO V^T for 16 streamed keys at a time;
// dS is then the A fragment of dQ += dS K.
template <int L>
struct QueryWarp {
  uint32_t q[kKSteps][L][4], dO[kKSteps][L][4];
  float dq[kDTiles][L][4];
  float lse[L][2], D[L][2];  // of rows g and g + 8
};

template <class Warp>
TF_HOST_DEVICE inline void query_begin(const Warp& w, QueryWarp<Warp::L>& st, const uint32_t* sQ, const uint32_t* sdO, const float* lse,
                                       const float* D, int64_t i0, int warp, const Problem& p) {
  load_rows(w, st.q, sQ, warp);
  load_rows(w, st.dO, sdO, warp);
  zero<Warp::L, kDTiles>(st.dq);
  for (int l = 0; l < Warp::L; ++l)
    TF_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t i = i0 + mma::c_frag_row(w.lane(l), 2 * h);
      st.lse[l][h] = i < p.T ? lse[i] : 0.0f;
      st.D[l][h] = i < p.T ? D[i] : 0.0f;
    }
}

// Keys [k0 + 16 b, k0 + 16 b + 16) of the staged tiles: K as rows and transposed, V as rows.
template <class Warp>
TF_HOST_DEVICE inline void query_step(const Warp& w, QueryWarp<Warp::L>& st, const uint32_t* sK, const uint32_t* sV, const uint32_t* sKt,
                                      int b, int64_t i0, int64_t k0, const Problem& p) {
  constexpr int L = Warp::L;
  float s[2][L][4], dp[2][L][4];
  rows_by_staged(w, s, st.q, sK, b);
  rows_by_staged(w, dp, st.dO, sV, b);
  probs_and_grads<false>(w, s, dp, first_gap(k0 - i0) + 16 * b, float(p.scale),
                         [&](int l, int h, int) { return QueryStats{st.lse[l][h], st.D[l][h]}; });
  uint32_t af[L][4];
  c_to_a<L>(af, dp);
  accumulate(w, st.dq, af, sKt, b);
}

template <class Warp, typename Store>
TF_HOST_DEVICE inline void query_end(const Warp& w, const QueryWarp<Warp::L>& st, float* dqkv, int64_t bh, int64_t i0, const Problem& p,
                                     Store&& store) {
  store_rows(w, st.dq, float(p.scale), dqkv + p.qkv_slice(bh), 3 * p.W, i0, p, store);
}

}  // namespace tc
}  // namespace flash
}  // namespace tf
