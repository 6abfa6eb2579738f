// The fused attention kernels' per-thread logic (native/cuda/flash_tile.h), checked on the CPU without a GPU.
//
// flash_attention.cu's kernels are barriers and stores around the header's phases. This program runs every phase
// for every thread of every block, phase by phase (what the barriers guarantee), with shared memory as arrays that
// are poisoned (NaN) before each staging, and checks:
//   1. the grid: block numbers map onto every (sample-head pair, owned tile) exactly once;
//   2. staging: every data word of a shared tile holds its input (bf16-rounded under bf16; 0 past T and past the
//      head dim), and the padding word of each row is never written; the staged lse and D likewise;
//   3. causal skipping: every streamed tile a block visits holds at least one unmasked (query, key) pair;
//   4. every element of out, lse, D and dqkv is written exactly once, through the kernels' store;
//   5. results against a naive double-precision attention (full softmax, explicit P): to double rounding when the
//      emulation runs in double, to fp32 rounding in float, to bf16 rounding under precision bf16; for T = 1,
//      T below, at and past tile multiples, several heads and samples, and head dims below kD.
// test/flash-attention.test.ts compiles and runs it; the exit status is 0 when every check passes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../../native/cuda/flash_tile.h"

using namespace tf;
using namespace tf::flash;

namespace {

int failures = 0;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      if (failures < 25) {                                  \
        std::fprintf(stderr, "FAIL (line %d): ", __LINE__); \
        std::fprintf(stderr, __VA_ARGS__);                  \
        std::fputc('\n', stderr);                           \
      }                                                     \
      ++failures;                                           \
    }                                                       \
  } while (0)

// The kernels' store, counting the writes to each element of the registered output arrays.
template <typename T>
struct Counter {
  struct Array {
    T* base;
    std::vector<int> writes;
  };
  std::vector<Array> arrays;
  void track(std::vector<T>& v) { arrays.push_back({v.data(), std::vector<int>(v.size(), 0)}); }
  void operator()(T* at, T value) {
    for (Array& a : arrays)
      if (at >= a.base && at < a.base + a.writes.size()) {
        *at = value;
        ++a.writes[at - a.base];
        return;
      }
    CHECK(false, "a store outside every output array");
  }
  void expect_once(const char* what) const {
    for (const Array& a : arrays)
      for (size_t n = 0; n < a.writes.size(); ++n) CHECK(a.writes[n] == 1, "%s: element %zu written %d times", what, n, a.writes[n]);
  }
};

template <typename T>
std::vector<T> poisoned(int words) {
  return std::vector<T>(static_cast<size_t>(words), T(NAN));
}

// Check 2 for rows [row0, row0 + rows) of a slice.
template <typename T>
void check_staged(const std::vector<T>& sh, int rows, const T* slice, int64_t ld, int64_t row0, const Problem& p, const char* what) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < kRowWords; ++c) {
      const T got = sh[r * kRowWords + c];
      if (c == kD) {
        CHECK(std::isnan(got), "%s: padding of row %d written", what, r);
        continue;
      }
      const T want = row0 + r < p.T && c < p.hd ? maybe_bf16(slice[(row0 + r) * ld + c], p.bf16) : T(0);
      CHECK(got == want, "%s: row %lld column %d holds %g, not %g", what, (long long)(row0 + r), c, double(got), double(want));
    }
}

template <typename T>
void stage_all(std::vector<T>& sh, int rows, const T* slice, int64_t ld, int64_t row0, const Problem& p, const char* what) {
  sh.assign(sh.size(), T(NAN));
  for (int tid = 0; tid < kThreads; ++tid) stage_rows(sh.data(), rows, slice, ld, row0, p, tid);
  check_staged(sh, rows, slice, ld, row0, p, what);
}

// stage_keys_values by every thread, checked as stage_all checks.
template <typename T>
void stage_kv_all(std::vector<T>& sK, std::vector<T>& sV, const T* q, int64_t k0, const Problem& p, const char* what) {
  sK.assign(sK.size(), T(NAN));
  sV.assign(sV.size(), T(NAN));
  for (int tid = 0; tid < kThreads; ++tid) stage_keys_values(sK.data(), sV.data(), q, k0, p, tid);
  check_staged(sK, kStream, q + p.W, 3 * p.W, k0, p, what);
  check_staged(sV, kStream, q + 2 * p.W, 3 * p.W, k0, p, what);
}

template <typename T>
void stage_stats_all(std::vector<T>& sh, const T* stats, int64_t row0, const Problem& p) {
  sh.assign(sh.size(), T(NAN));
  for (int tid = 0; tid < kThreads; ++tid) stage_stats(sh.data(), stats, row0, p, tid);
  for (int r = 0; r < kStream; ++r) CHECK(sh[r] == (row0 + r < p.T ? stats[row0 + r] : T(0)), "staged statistic %d", r);
}

// Check 3: a visited tile of streamed rows [s0, s0 + kStream) has an unmasked pair with the owned rows.
void check_useful(const Problem& p, int64_t row0, int64_t s0, bool owns_queries) {
  const int64_t own_last = std::min(row0 + kOwn, p.T) - 1, s_last = std::min(s0 + kStream, p.T) - 1;
  const bool useful = owns_queries ? s0 <= own_last : s_last >= row0 && s0 < p.T;
  CHECK(useful, "block at row %lld visits the fully masked tile at %lld", (long long)row0, (long long)s0);
}

// Check 1, and the block list the kernels' grid enumerates.
std::vector<Block> blocks_of(const Problem& p, bool owns_queries) {
  std::vector<int> seen(static_cast<size_t>(p.BH * p.tiles()), 0);
  std::vector<Block> blocks;
  for (int64_t n = 0; n < p.BH * p.tiles(); ++n) {
    const Block b = block_of(p, n, owns_queries);
    const bool ok = b.bh >= 0 && b.bh < p.BH && b.row0 >= 0 && b.row0 < p.T && b.row0 % kOwn == 0;
    CHECK(ok, "block %lld maps to pair %lld, row %lld", (long long)n, (long long)b.bh, (long long)b.row0);
    if (ok) ++seen[b.bh * p.tiles() + b.row0 / kOwn];
    blocks.push_back(b);
  }
  for (int s : seen) CHECK(s == 1, "a (pair, tile) is covered %d times", s);
  return blocks;
}

template <typename T>
struct Run {
  Problem p;
  std::vector<T> qkv, dout, out, lse, D, dqkv;
};

// flash_forward_kernel, thread by thread.
template <typename T>
void emulate_forward(Run<T>& run) {
  const Problem& p = run.p;
  Counter<T> store;
  store.track(run.out);
  store.track(run.lse);
  std::vector<T> sQ = poisoned<T>(kOwn * kRowWords), sK = poisoned<T>(kStream * kRowWords), sV = sK;
  std::vector<ForwardRow<T>> rows(kThreads);
  for (const Block& blk : blocks_of(p, true)) {
    const T* q = run.qkv.data() + p.qkv_slice(blk.bh);
    stage_all(sQ, kOwn, q, 3 * p.W, blk.row0, p, "forward Q");
    for (auto& r : rows) forward_begin(r);
    const Span span = stream_span(p, blk.row0, true);
    for (int64_t t = span.first; t < span.end; ++t) {
      check_useful(p, blk.row0, t * kStream, true);
      stage_kv_all(sK, sV, q, t * kStream, p, "forward");
      for (int tid = 0; tid < kThreads; ++tid) forward_tile(rows[tid], sQ.data(), sK.data(), sV.data(), blk.row0, t * kStream, p, tid);
    }
    for (int tid = 0; tid < kThreads; ++tid) forward_end(rows[tid], run.out.data(), run.lse.data(), blk.bh, blk.row0, p, tid, store);
  }
  store.expect_once("forward");
}

// row_dot_kernel, flash_dkdv_kernel and flash_dq_kernel, thread by thread.
template <typename T>
void emulate_backward(Run<T>& run) {
  const Problem& p = run.p;
  Counter<T> store;
  store.track(run.D);
  store.track(run.dqkv);
  for (int64_t n = 0; n < p.BH * p.T; ++n) store(run.D.data() + n, row_dot(run.dout.data(), run.out.data(), n, p));
  const int64_t ld = 3 * p.W;
  std::vector<T> own0 = poisoned<T>(kOwn * kRowWords), own1 = own0, st0 = poisoned<T>(kStream * kRowWords), st1 = st0;
  std::vector<T> sLse = poisoned<T>(kStream), sD = sLse;

  std::vector<KeyRow<T>> keys(kThreads);
  for (const Block& blk : blocks_of(p, false)) {
    const T* q = run.qkv.data() + p.qkv_slice(blk.bh);
    const T* dO = run.dout.data() + p.out_slice(blk.bh);
    stage_all(own0, kOwn, q + p.W, ld, blk.row0, p, "dkdv K");
    stage_all(own1, kOwn, q + 2 * p.W, ld, blk.row0, p, "dkdv V");
    for (auto& r : keys) key_begin(r);
    const Span span = stream_span(p, blk.row0, false);
    for (int64_t t = span.first; t < span.end; ++t) {
      check_useful(p, blk.row0, t * kStream, false);
      stage_all(st0, kStream, q, ld, t * kStream, p, "dkdv Q");
      stage_all(st1, kStream, dO, p.W, t * kStream, p, "dkdv dO");
      stage_stats_all(sLse, run.lse.data() + blk.bh * p.T, t * kStream, p);
      stage_stats_all(sD, run.D.data() + blk.bh * p.T, t * kStream, p);
      for (int tid = 0; tid < kThreads; ++tid)
        key_tile(keys[tid], own0.data(), own1.data(), st0.data(), st1.data(), sLse.data(), sD.data(), blk.row0, t * kStream, p, tid);
    }
    for (int tid = 0; tid < kThreads; ++tid) key_end(keys[tid], run.dqkv.data(), blk.bh, blk.row0, p, tid, store);
  }

  std::vector<T> dq(static_cast<size_t>(kThreads * kD));
  for (const Block& blk : blocks_of(p, true)) {
    const T* q = run.qkv.data() + p.qkv_slice(blk.bh);
    stage_all(own0, kOwn, q, ld, blk.row0, p, "dq Q");
    stage_all(own1, kOwn, run.dout.data() + p.out_slice(blk.bh), p.W, blk.row0, p, "dq dO");
    std::fill(dq.begin(), dq.end(), T(0));
    const Span span = stream_span(p, blk.row0, true);
    for (int64_t t = span.first; t < span.end; ++t) {
      check_useful(p, blk.row0, t * kStream, true);
      stage_kv_all(st0, st1, q, t * kStream, p, "dq");
      for (int tid = 0; tid < kThreads; ++tid) {
        const int64_t i = blk.row0 + tid, at = blk.bh * p.T + i;
        const T lse = i < p.T ? run.lse[at] : T(0), D = i < p.T ? run.D[at] : T(0);
        query_tile(dq.data() + tid * kD, own0.data(), own1.data(), lse, D, st0.data(), st1.data(), blk.row0, t * kStream, p, tid);
      }
    }
    for (int tid = 0; tid < kThreads; ++tid) query_end(dq.data() + tid * kD, run.dqkv.data(), blk.bh, blk.row0, p, tid, store);
  }
  store.expect_once("backward");
}

// Naive attention in double: explicit logits, softmax and products (inputs bf16-rounded under bf16).
struct Reference {
  std::vector<double> out, lse, dqkv;
};
Reference reference(const Problem& p, const std::vector<double>& qkv_in, const std::vector<double>& dout_in) {
  auto in = [&](double x) { return p.bf16 ? double(round_to_bf16(float(x))) : x; };
  const int64_t T = p.T, hd = p.hd, ld = 3 * p.W;
  Reference r;
  r.out.resize(dout_in.size());
  r.lse.resize(static_cast<size_t>(p.BH * T));
  r.dqkv.resize(qkv_in.size());
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    const int64_t qs = p.qkv_slice(bh), os = p.out_slice(bh);
    auto q = [&](int64_t t, int64_t c) { return in(qkv_in[qs + t * ld + c]); };
    auto k = [&](int64_t t, int64_t c) { return in(qkv_in[qs + t * ld + p.W + c]); };
    auto v = [&](int64_t t, int64_t c) { return in(qkv_in[qs + t * ld + 2 * p.W + c]); };
    auto dO = [&](int64_t t, int64_t c) { return in(dout_in[os + t * p.W + c]); };
    std::vector<double> P(static_cast<size_t>(T * T), 0.0), dS(P.size(), 0.0);
    for (int64_t i = 0; i < T; ++i) {
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double s = 0;
        for (int64_t c = 0; c < hd; ++c) s += q(i, c) * k(j, c);
        P[i * T + j] = p.scale * s;
        mx = std::max(mx, P[i * T + j]);
      }
      for (int64_t j = 0; j <= i; ++j) sum += std::exp(P[i * T + j] - mx);
      r.lse[bh * T + i] = mx + std::log(sum);
      for (int64_t j = 0; j <= i; ++j) P[i * T + j] = std::exp(P[i * T + j] - r.lse[bh * T + i]);
      for (int64_t c = 0; c < hd; ++c) {
        double o = 0;
        for (int64_t j = 0; j <= i; ++j) o += P[i * T + j] * v(j, c);
        r.out[os + i * p.W + c] = o;
      }
      double D = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double dp = 0;
        for (int64_t c = 0; c < hd; ++c) dp += dO(i, c) * v(j, c);
        dS[i * T + j] = dp;
        D += P[i * T + j] * dp;
      }
      for (int64_t j = 0; j <= i; ++j) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - D);
    }
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < hd; ++c) {
        double dq = 0, dk = 0, dv = 0;
        for (int64_t j = 0; j <= t; ++j) dq += dS[t * T + j] * k(j, c);
        for (int64_t i = t; i < T; ++i) {
          dk += dS[i * T + t] * q(i, c);
          dv += P[i * T + t] * dO(i, c);
        }
        r.dqkv[qs + t * ld + c] = p.scale * dq;
        r.dqkv[qs + t * ld + p.W + c] = p.scale * dk;
        r.dqkv[qs + t * ld + 2 * p.W + c] = dv;
      }
  }
  return r;
}

template <typename T>
double rel_error(const std::vector<T>& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t n = 0; n < want.size(); ++n) {
    err = std::max(err, std::fabs(double(got[n]) - want[n]));
    scale = std::max(scale, std::fabs(want[n]));
    if (std::isnan(double(got[n]))) return INFINITY;
  }
  return scale > 0 ? err / scale : err;
}

template <typename T>
void check_case(int64_t B, int64_t H, int64_t Tn, int64_t hd, double temp, bool bf16, double tol, uint32_t seed) {
  const int64_t W = H * hd;
  Problem p{B * H, H, Tn, W, hd, 1.0 / (std::sqrt(double(hd)) * temp), bf16};
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  std::vector<double> qkv(static_cast<size_t>(B * Tn * 3 * W)), dout(static_cast<size_t>(B * Tn * W));
  for (double& x : qkv) x = 1.5 * normal(gen);
  for (double& x : dout) x = normal(gen);
  Run<T> run{p, std::vector<T>(qkv.begin(), qkv.end()), std::vector<T>(dout.begin(), dout.end()), std::vector<T>(dout.size()),
             std::vector<T>(static_cast<size_t>(p.BH * Tn)), std::vector<T>(static_cast<size_t>(p.BH * Tn)), std::vector<T>(qkv.size())};
  emulate_forward(run);
  emulate_backward(run);
  // The reference sees the inputs as the emulation does (float inputs are float-rounded).
  const Reference ref = reference(p, std::vector<double>(run.qkv.begin(), run.qkv.end()), std::vector<double>(run.dout.begin(), run.dout.end()));
  const char* kind = sizeof(T) == sizeof(double) ? "double" : bf16 ? "bf16" : "float";
  const double e_out = rel_error(run.out, ref.out), e_lse = rel_error(run.lse, ref.lse), e_dqkv = rel_error(run.dqkv, ref.dqkv);
  CHECK(e_out < tol && e_lse < tol && e_dqkv < tol, "%s B=%lld H=%lld T=%lld hd=%lld temp=%g: relative errors out %.3g, lse %.3g, dqkv %.3g (tolerance %.1g)",
        kind, (long long)B, (long long)H, (long long)Tn, (long long)hd, temp, e_out, e_lse, e_dqkv, tol);
}

}  // namespace

int main() {
  struct Shape {
    int64_t B, H, T, hd;
    double temp;
  };
  const Shape shapes[] = {{1, 1, 1, 64, 1.0}, {2, 3, 49, 64, 0.7}, {1, 2, 100, 64, 1.3}, {3, 1, 64, 64, 1.0},
                          {1, 1, 65, 32, 1.0}, {2, 2, 17, 16, 0.5}, {1, 1, 160, 64, 1.0}};
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    check_case<double>(s.B, s.H, s.T, s.hd, s.temp, false, 1e-12, seed++);
    check_case<float>(s.B, s.H, s.T, s.hd, s.temp, false, 2e-5, seed++);
    check_case<float>(s.B, s.H, s.T, s.hd, s.temp, true, 3e-2, seed++);
  }
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("flash attention tile logic: all checks passed\n");
  return 0;
}
