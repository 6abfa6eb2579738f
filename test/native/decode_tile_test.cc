// The sampler's split-KV decode attention (native/cuda/decode_tile.h), every thread of every block run on the CPU.
//
// reverse.cu's split kernel is barriers and block reductions around the header's phases; this program runs each
// phase for all threads of a block before the next (what the barriers guarantee), reduces as block_max and
// block_sum do (the same tree, in the same order), with shared memory poisoned (NaN) for every block, and checks:
//   1. the grid: over the blocks of the largest cache, live blocks map onto every (row, head, chunk) of the step
//      exactly once and the others write nothing;
//   2. every partial result (m, l, o) of a live chunk and every element of the output is written exactly once;
//   3. the output against a plain double-precision softmax attention over the first n keys, each row at its own
//      temperature (rows [B, R) at tau_u), on the cached values as stored: to double rounding in double, to fp32
//      rounding in float, with the cache in the working type or in bf16, read one element or one 16-byte pack
//      at a time (every pack load must be aligned to its size); for
//      n in {1, 2, 17, 64, 100, 1024} (one chunk, a chunk and a tail, many chunks), several rows and heads, head
//      dims 64 (the presets), 48 and 8 (groups of threads that do not fill the block) and 130 (more columns than
//      threads), with and without guidance rows.
// test/decode-attention.test.ts compiles and runs it; the exit status is 0 when every check passes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#define TF_DECODE_CHECK_PACK(at, bytes) \
  CHECK(reinterpret_cast<uintptr_t>(at) % (bytes) == 0, "a %zu-byte pack load at a misaligned address", size_t(bytes))
#include "../../native/cuda/decode_tile.h"

using namespace tf;
using namespace tf::decode;

namespace {

// The kernels' store into one output array, counting the writes to each element.
template <typename T>
struct Counted {
  std::vector<T>& data;
  std::vector<int> writes;
  explicit Counted(std::vector<T>& d) : data(d), writes(d.size(), 0) {}
  void operator()(T* at, T value) {
    const int64_t i = at - data.data();
    if (i < 0 || i >= int64_t(data.size())) {
      CHECK(false, "a store outside its array");
      return;
    }
    *at = value;
    ++writes[i];
  }
};

// block_max / block_sum (device.cuh): halving strides over kThreads values.
template <typename T, typename Op>
T tree(std::vector<T> v, Op op) {
  for (int s = kThreads / 2; s > 0; s >>= 1)
    for (int t = 0; t < s; ++t) v[t] = op(v[t], v[t + s]);
  return v[0];
}

// T: the working type; C: the cache's storage; V: elements per staging load.
template <typename T, typename C, int V>
void check_case(int64_t R, int64_t B, int64_t H, int64_t Tn, int64_t n, int64_t hd, double tau_u, double tol, uint32_t seed) {
  const int64_t W = H * hd;
  const Problem p{R, B, H, Tn, W, hd};
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<T> qkv(R * 3 * W);
  std::vector<C> kc(R * Tn * W), vc(R * Tn * W);
  for (T& x : qkv) x = T(1.5 * normal(rng));
  for (C& x : kc) x = to_cache<C>(T(1.5 * normal(rng)));
  for (C& x : vc) x = to_cache<C>(T(normal(rng)));
  if (V > 1) CHECK(pack_width<C>(p) == V, "hd=%lld W=%lld: the kernel would not read packs of %d", (long long)hd, (long long)W, V);
  const double scale_c = 1.0 / std::sqrt(double(hd));
  const T scale_cond = T(scale_c), scale_uncond = T(scale_c / tau_u);

  std::vector<T> ml(p.ml_words(), T(0)), o(p.o_words(), T(0)), att(R * W, T(0));
  Counted<T> ml_store(ml), o_store(o), att_store(att);
  std::vector<int> visits(p.pairs() * Problem::splits(n), 0);
  std::vector<T> smem(p.shared_words());
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> logit(kThreads), e(kThreads);

  for (int64_t blk = 0; blk < p.blocks(); ++blk) {
    const Block b = block_of(p, blk, n);
    if (!b.live) continue;
    CHECK(b.keys >= 1 && b.keys <= kChunk && b.key0 + b.keys <= n && b.r < R && b.h < H, "block %lld: bad chunk", (long long)blk);
    ++visits[b.pair * Problem::splits(n) + b.split];
    std::fill(smem.begin(), smem.end(), nan);
    const Shared<T> sh(smem.data(), p);
    for (int t = 0; t < kThreads; ++t) stage<V>(p, b, t, qkv.data(), kc.data(), vc.data(), sh);
    for (int t = 0; t < kThreads; ++t) logit[t] = score(p, b, t, sh, scale_cond, scale_uncond);
    const T m = tree(logit, [](T a, T c) { return a > c ? a : c; });
    for (int t = 0; t < kThreads; ++t) e[t] = weight(b, t, logit[t], m, sh);
    const T l = tree(e, [](T a, T c) { return a + c; });
    for (int t = 0; t < kThreads; ++t) accumulate(p, b, t, sh);
    for (int t = 0; t < kThreads; ++t) {
      finish(p, b, t, sh, m, l, ml.data(), o.data(), [&](T* at, T v) {
        if (at >= ml.data() && at < ml.data() + ml.size()) ml_store(at, v);
        else o_store(at, v);
      });
    }
  }
  for (int64_t i = 0; i < R * H * hd; ++i) combine(p, i, n, ml.data(), o.data(), att.data(), [&](T* at, T v) { att_store(at, v); });

  for (size_t i = 0; i < visits.size(); ++i) CHECK(visits[i] == 1, "chunk %zu visited %d times", i, visits[i]);
  const int64_t S = p.max_splits();
  for (int64_t q = 0; q < p.pairs(); ++q)
    for (int64_t s = 0; s < S; ++s) {
      const int want = s < Problem::splits(n) ? 1 : 0;
      CHECK(ml_store.writes[2 * (q * S + s)] == want && ml_store.writes[2 * (q * S + s) + 1] == want, "(m, l) of pair %lld chunk %lld", (long long)q, (long long)s);
      for (int64_t c = 0; c < hd; ++c) CHECK(o_store.writes[(q * S + s) * hd + c] == want, "o of pair %lld chunk %lld column %lld", (long long)q, (long long)s, (long long)c);
    }
  for (size_t i = 0; i < att.size(); ++i) CHECK(att_store.writes[i] == 1, "output %zu written %d times", i, att_store.writes[i]);

  // Plain softmax attention in double on the same (rounded) inputs.
  double num = 0, den = 0;
  std::vector<double> w(n);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const double scale = r >= B ? scale_c / tau_u : scale_c;
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < hd; ++c) dot += double(qkv[r * 3 * W + h * hd + c]) * double(cache_value(kc[cache_at(p, r, j, h) + c]));
        w[j] = dot * scale;
        mx = std::max(mx, w[j]);
      }
      for (int64_t j = 0; j < n; ++j) sum += (w[j] = std::exp(w[j] - mx));
      for (int64_t c = 0; c < hd; ++c) {
        double ref = 0;
        for (int64_t j = 0; j < n; ++j) ref += w[j] / sum * double(cache_value(vc[cache_at(p, r, j, h) + c]));
        const double d = double(att[r * W + h * hd + c]) - ref;
        num += d * d;
        den += ref * ref;
      }
    }
  const double err = std::sqrt(num / std::max(den, 1e-300));
  CHECK(err < tol, "%s, %s cache, packs of %d: R=%lld B=%lld H=%lld Tn=%lld n=%lld hd=%lld tau_u=%g: relative error %.3g (tolerance %.1g)",
        sizeof(T) == sizeof(double) ? "double" : "float", sizeof(C) == 2 ? "bf16" : "working-type", V, (long long)R, (long long)B, (long long)H, (long long)Tn, (long long)n,
        (long long)hd, tau_u, err, tol);
}

}  // namespace

int main() {
  struct Shape {
    int64_t R, B, H, hd;
    double tau_u;
  };
  // R = B: no guidance; R = 2B: rows [B, 2B) at tau_u.
  const Shape shapes[] = {{2, 2, 3, 64, 1.0}, {4, 2, 2, 64, 0.7}, {2, 1, 1, 48, 1.5}, {3, 3, 2, 8, 1.0}, {2, 1, 1, 130, 0.5}};
  const int64_t steps[] = {1, 2, 17, 64, 100, 1024};
  uint32_t seed = 1;
  for (const Shape& s : shapes)
    for (int64_t n : steps) {
      // hd 130 and 48 only up to 100 keys: the long case is the presets' head dim.
      if (s.hd != 64 && n > 100) continue;
      const int64_t Tn = n == 1024 ? 1024 : n + 5;  // the cache is longer than the step except at the last one
      check_case<double, double, 1>(s.R, s.B, s.H, Tn, n, s.hd, s.tau_u, 1e-12, seed++);
      if (s.hd % 2 == 0) check_case<double, double, 2>(s.R, s.B, s.H, Tn, n, s.hd, s.tau_u, 1e-12, seed++);
      check_case<float, float, 1>(s.R, s.B, s.H, Tn, n, s.hd, s.tau_u, 2e-5, seed++);
      if (s.hd % 4 == 0) check_case<float, float, 4>(s.R, s.B, s.H, Tn, n, s.hd, s.tau_u, 2e-5, seed++);
      // The reference reads the same bf16 values: only the fp32 arithmetic differs.
      check_case<float, Bf16, 1>(s.R, s.B, s.H, Tn, n, s.hd, s.tau_u, 2e-5, seed++);
      if (s.hd % 8 == 0) check_case<float, Bf16, 8>(s.R, s.B, s.H, Tn, n, s.hd, s.tau_u, 2e-5, seed++);
    }
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("decode attention tile logic: all checks passed\n");
  return 0;
}
