// The bf16 tensor-core GEMM's index logic (native/cuda/mma_tile.h), checked on the CPU without a GPU.
//
// gemm_bf16.cu is a thin driver around mma_tile.h: staging coordinates, stage words, fragment words and accumulator
// coordinates all come from the header. This program runs that logic for every thread of every block, in the
// kernel's order (stage a slice, barrier, fragments, mma, next slice), with mma.sync itself emulated from the PTX
// ISA's description of the m16n8k16 .bf16 fragments, written out below independently of the header. It checks:
//   1. the header's fragment maps against that description (and the description against the PTX figures' corners);
//   2. staging (pairs, or quads for k-contiguous operands, by float4 only at 16-byte aligned addresses) writes every
//      data word of a stage exactly once and never a padding word;
//   3. each mma tile's fragments read every word of its A and B slices exactly once, only data words, and the
//      kernel's ldmatrix.x4 loads (emulated) give the same registers from aligned rows without bank conflicts;
//   4. every element of C inside the matrix is written exactly once, nothing outside it;
//   5. whole products, for all four transposes, M/N/K tails, leading dimensions beyond the minimum and two-level
//      batch strides: exactly (bit for bit) for small-integer inputs, where every partial sum is exact in fp32,
//      and to fp32 rounding for random inputs, against a double-precision product of the bf16-rounded inputs.
// test/bf16.test.ts compiles and runs it; the exit status is 0 when every check passes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "../../native/cuda/mma_tile.h"
#include "mma_emulation.h"
#include "check.h"

using namespace tf;
using namespace tf::mma;
using namespace tf::emu;

namespace {

// ---- 1. The header's maps against the description ----
void check_fragment_maps() {
  // The description covers each tile element exactly once (a check of the transcription in mma_emulation.h).
  int seen_a[16][16] = {}, seen_b[16][8] = {}, seen_c[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) ++seen_a[spec_a(lane, i).row][spec_a(lane, i).col];
    for (int i = 0; i < 4; ++i) {
      ++seen_b[spec_b(lane, i).row][spec_b(lane, i).col];
      ++seen_c[spec_c(lane, i).row][spec_c(lane, i).col];
    }
  }
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) CHECK(seen_a[r][c] == 1, "spec A element (%d,%d) held %d times", r, c, seen_a[r][c]);
    for (int c = 0; c < 8; ++c) {
      CHECK(seen_b[r][c] == 1, "spec B element (%d,%d) held %d times", r, c, seen_b[r][c]);
      CHECK(seen_c[r][c] == 1, "spec C element (%d,%d) held %d times", r, c, seen_c[r][c]);
    }
  }
  // Corners of the PTX figures: lane 0 holds a0 at (0,0), a2 at (8,0), a4 at (0,8), a6 at (8,8); lane 5 holds a0
  // at (1,2); lane 31 holds a7 at (15,15), b3 at k 15 / n 7, c3 at (15,7); lane 4 holds b0 at k 0 / n 1.
  CHECK(spec_a(0, 2).row == 8 && spec_a(0, 2).col == 0 && spec_a(0, 4).row == 0 && spec_a(0, 4).col == 8, "spec A, lane 0");
  CHECK(spec_a(5, 0).row == 1 && spec_a(5, 0).col == 2 && spec_a(31, 7).row == 15 && spec_a(31, 7).col == 15, "spec A, lanes 5 and 31");
  CHECK(spec_b(31, 3).row == 15 && spec_b(31, 3).col == 7 && spec_b(4, 0).row == 0 && spec_b(4, 0).col == 1, "spec B corners");
  CHECK(spec_c(31, 3).row == 15 && spec_c(31, 3).col == 7 && spec_c(1, 1).row == 0 && spec_c(1, 1).col == 3, "spec C corners");

  // The lower element of a pair goes to the low half. (The products alone cannot show this: swapping the halves of
  // both operands permutes k alike in A and B and leaves every sum as it was.)
  CHECK(pack_bf16x2(1.0f, 2.0f) == 0x40003f80u, "pack_bf16x2(1, 2) = %08x", pack_bf16x2(1.0f, 2.0f));
  CHECK(bf16_bits(1.00390625f) == 0x3f80 && bf16_bits(1.01171875f) == 0x3f82 && round_to_bf16(-3.0f) == -3.0f, "bf16 ties to even");

  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      RowCol lo = spec_a(lane, 2 * r), hi = spec_a(lane, 2 * r + 1);
      CHECK(lo.row == hi.row && hi.col == lo.col + 1, "spec A register %d of lane %d is not a k pair", r, lane);
      CHECK(a_frag_row(lane, r) == lo.row && a_frag_k(lane, r) == lo.col, "A register %d of lane %d: header (%d,%d), PTX (%d,%d)", r,
            lane, a_frag_row(lane, r), a_frag_k(lane, r), lo.row, lo.col);
    }
    for (int r = 0; r < 2; ++r) {
      RowCol lo = spec_b(lane, 2 * r), hi = spec_b(lane, 2 * r + 1);
      CHECK(lo.col == hi.col && hi.row == lo.row + 1, "spec B register %d of lane %d is not a k pair", r, lane);
      CHECK(b_frag_col(lane) == lo.col && b_frag_k(lane, r) == lo.row, "B register %d of lane %d: header (k %d, n %d), PTX (k %d, n %d)",
            r, lane, b_frag_k(lane, r), b_frag_col(lane), lo.row, lo.col);
    }
    for (int i = 0; i < 4; ++i)
      CHECK(c_frag_row(lane, i) == spec_c(lane, i).row && c_frag_col(lane, i) == spec_c(lane, i).col, "C element %d of lane %d", i, lane);
  }
}

// ---- 2-5. The kernel, thread by thread ----

struct Problem {
  bool transA, transB;
  int64_t M, N, K, lda, ldb, ldc;
  int64_t count = 1, inner = 1, a_outer = 0, a_inner = 0, b_outer = 0, b_inner = 0, c_outer = 0, c_inner = 0;
  int64_t a_off(int64_t z) const { return z / inner * a_outer + z % inner * a_inner; }
  int64_t b_off(int64_t z) const { return z / inner * b_outer + z % inner * b_inner; }
  int64_t c_off(int64_t z) const { return z / inner * c_outer + z % inner * c_inner; }
};

int64_t vector_loads = 0;  // float4 loads the products made: the aligned path must be exercised

// C = alpha * op(A) op(B) + beta * C, as gemm_bf16_kernel computes it; writes[i] counts the stores to C[i].
void run_kernel(const Problem& p, const std::vector<float>& A, const std::vector<float>& B, std::vector<float>& C, float alpha,
                float beta, std::vector<int>& writes) {
  constexpr int kWarps = kThreads / 32;
  constexpr uint32_t kPoison = 0x7fc17fc1u;  // a NaN pair: a word read before any thread wrote it spoils the sum
  const int64_t row_tiles = (p.M + kBM - 1) / kBM, col_tiles = (p.N + kBN - 1) / kBN, slices = (p.K + kBK - 1) / kBK;
  std::vector<uint32_t> stage(2 * 2 * kStageWords);
  auto word = [&](int s, int operand, int w) -> uint32_t& { return stage[(s * 2 + operand) * kStageWords + w]; };
  static float next[kThreads][2][2 * kPairs];  // [thread][A, B]: kPairs pairs or kQuads quads, as the kernel holds them
  static float acc[kWarps][kTilesM][kTilesN][32][4];

  for (int64_t z = 0; z < p.count; ++z)
    for (int64_t by = 0; by < row_tiles; ++by)
      for (int64_t bx = 0; bx < col_tiles; ++bx) {
        // The kernel's operands: k-contiguous ones (A not transposed, B transposed) by quads, float4 where the host
        // found every row 16-byte aligned; the others by pairs.
        const bool quads[2] = {!p.transA, p.transB};
        const Operand a{A.data() + p.a_off(z), p.lda, p.M, p.K, quads[0] && rows_aligned16(A.data(), p.lda, p.a_outer, p.a_inner)};
        const Operand b{B.data() + p.b_off(z), p.ldb, p.N, p.K, quads[1] && rows_aligned16(B.data(), p.ldb, p.b_outer, p.b_inner)};
        const int64_t m0 = by * kBM, n0 = bx * kBN;
        for (uint32_t& w : stage) w = kPoison;
        for (auto& warp : acc)
          for (auto& row : warp)
            for (auto& tile : row)
              for (auto& lane : tile)
                for (float& v : lane) v = 0.0f;

        auto fetch = [&](int64_t k0) {
          for (int tid = 0; tid < kThreads; ++tid)
            for (int operand = 0; operand < 2; ++operand) {
              const Operand& op = operand == 0 ? a : b;
              const int64_t row0 = operand == 0 ? m0 : n0;
              float* v = next[tid][operand];
              for (int q = 0; q < kQuads && quads[operand]; ++q) {
                const PairCoord c = quad_coord(tid, q);
                const int64_t r = row0 + c.row, k = k0 + c.k;
                if (op.vec4 && r < op.rows && k + 3 < op.K) {  // the kernel's float4 load
                  const uintptr_t address = reinterpret_cast<uintptr_t>(op.src + r * op.ld + k);
                  CHECK(address % 16 == 0, "operand %d row %lld k %lld: a float4 load at an address that is not 16-byte aligned", operand,
                        (long long)r, (long long)k);
                  ++vector_loads;
                }
                load_quad(op, row0, k0, c, v + 4 * q);
              }
              for (int q = 0; q < kPairs && !quads[operand]; ++q) load_pair(op, row0, k0, pair_coord(tid, q), v[2 * q], v[2 * q + 1]);
            }
        };
        auto put = [&](int s) {
          std::vector<int> stores(2 * kStageWords, 0);
          auto store = [&](int operand, int w, uint32_t value) {
            CHECK(w >= 0 && w < kStageWords, "stage word %d out of the stage", w);
            if (w < 0 || w >= kStageWords) return;
            word(s, operand, w) = value;
            ++stores[operand * kStageWords + w];
          };
          for (int tid = 0; tid < kThreads; ++tid)
            for (int operand = 0; operand < 2; ++operand) {
              const float* v = next[tid][operand];
              for (int q = 0; q < kQuads && quads[operand]; ++q) {
                const int w = stage_word(quad_coord(tid, q));
                CHECK(w % 2 == 0, "quad stage word %d is not 8-byte aligned (the kernel stores it as one uint2)", w);
                store(operand, w, pack_bf16x2(v[4 * q], v[4 * q + 1]));
                store(operand, w + 1, pack_bf16x2(v[4 * q + 2], v[4 * q + 3]));
              }
              for (int q = 0; q < kPairs && !quads[operand]; ++q) store(operand, stage_word(pair_coord(tid, q)), pack_bf16x2(v[2 * q], v[2 * q + 1]));
            }
          for (int operand = 0; operand < 2; ++operand)
            for (int w = 0; w < kStageWords; ++w) {
              const int expected = w % kRowWords < kBK / 2 ? 1 : 0;
              CHECK(stores[operand * kStageWords + w] == expected, "operand %d stage word %d (row %d, word %d) stored %d times", operand, w,
                    w / kRowWords, w % kRowWords, stores[operand * kStageWords + w]);
            }
        };
        auto compute = [&](int s) {
          for (int warp = 0; warp < kWarps; ++warp)
            for (int step = 0; step < kSteps; ++step) {
              uint32_t af[kTilesM][32][4], bf[kTilesN][32][2];
              std::vector<int> reads_a(kStageWords, 0), reads_b(kStageWords, 0);
              for (int mi = 0; mi < kTilesM; ++mi)
                for (int lane = 0; lane < 32; ++lane)
                  for (int i = 0; i < 4; ++i) {
                    const int w = a_frag_word(warp, lane, mi, step, i);
                    CHECK(w >= 0 && w < kStageWords && w % kRowWords < kBK / 2, "A fragment word %d is not a data word", w);
                    af[mi][lane][i] = word(s, 0, w);
                    ++reads_a[w];
                  }
              for (int ni = 0; ni < kTilesN; ++ni)
                for (int lane = 0; lane < 32; ++lane)
                  for (int i = 0; i < 2; ++i) {
                    const int w = b_frag_word(warp, lane, ni, step, i);
                    CHECK(w >= 0 && w < kStageWords && w % kRowWords < kBK / 2, "B fragment word %d is not a data word", w);
                    bf[ni][lane][i] = word(s, 1, w);
                    ++reads_b[w];
                  }
              // The kernel loads these registers by ldmatrix.x4 (a4_word, b4_word): the same words, aligned rows, no
              // bank conflicts (the emulator checks both as it runs).
              for (int mi = 0; mi < kTilesM; ++mi) {
                const uint32_t* at[32];
                uint32_t r[32][4];
                for (int lane = 0; lane < 32; ++lane) at[lane] = &word(s, 0, a4_word(warp, lane, mi, step));
                emu::ldmatrix_x4(r, at);
                for (int lane = 0; lane < 32; ++lane)
                  for (int i = 0; i < 4; ++i)
                    CHECK(r[lane][i] == af[mi][lane][i], "warp %d step %d: ldmatrix gives lane %d A register %d of tile %d another word", warp,
                          step, lane, i, mi);
              }
              for (int nj = 0; nj < kTilesN / 2; ++nj) {
                const uint32_t* at[32];
                uint32_t r[32][4];
                for (int lane = 0; lane < 32; ++lane) at[lane] = &word(s, 1, b4_word(warp, lane, nj, step));
                emu::ldmatrix_x4(r, at);
                for (int lane = 0; lane < 32; ++lane)
                  for (int m = 0; m < 4; ++m)
                    CHECK(r[lane][m] == bf[2 * nj + (m >> 1)][lane][m & 1], "warp %d step %d: ldmatrix gives lane %d B register %d of tile %d another word",
                          warp, step, lane, m & 1, 2 * nj + (m >> 1));
              }
              // Each word of the warp's rows (columns) at this k16 step is read exactly once.
              for (int w = 0; w < kStageWords; ++w) {
                const int row = w / kRowWords, kw = w % kRowWords;
                const bool in_step = kw >= 8 * step && kw < 8 * step + 8;
                const bool a_row = row >= warp_row0(warp) && row < warp_row0(warp) + kWarpM;
                const bool b_row = row >= warp_col0(warp) && row < warp_col0(warp) + kWarpN;
                CHECK(reads_a[w] == (in_step && a_row ? 1 : 0), "warp %d step %d read A word %d %d times", warp, step, w, reads_a[w]);
                CHECK(reads_b[w] == (in_step && b_row ? 1 : 0), "warp %d step %d read B word %d %d times", warp, step, w, reads_b[w]);
              }
              for (int mi = 0; mi < kTilesM; ++mi)
                for (int ni = 0; ni < kTilesN; ++ni) warp_mma(acc[warp][mi][ni], af[mi], bf[ni]);
            }
        };

        fetch(0);
        put(0);
        for (int64_t t = 0; t < slices; ++t) {
          const int cur = static_cast<int>(t & 1);
          const bool more = t + 1 < slices;
          if (more) fetch((t + 1) * kBK);
          compute(cur);
          if (more) put(cur ^ 1);
        }

        float* c = C.data() + p.c_off(z);
        int* wr = writes.data() + p.c_off(z);
        for (int warp = 0; warp < kWarps; ++warp)
          for (int lane = 0; lane < 32; ++lane)
            for (int mi = 0; mi < kTilesM; ++mi)
              for (int ni = 0; ni < kTilesN; ++ni)
                for (int i = 0; i < 4; ++i) {
                  const int64_t m = m0 + acc_row(warp, lane, mi, i), n = n0 + acc_col(warp, lane, ni, i);
                  if (m >= p.M || n >= p.N) continue;
                  float v = alpha * acc[warp][mi][ni][lane][i];
                  if (beta != 0.0f) v += beta * c[m * p.ldc + n];
                  c[m * p.ldc + n] = v;
                  ++wr[m * p.ldc + n];
                }
      }
}

// op(X)[r][k] for a stored operand.
float elem(const float* x, int64_t ld, bool trans, int64_t r, int64_t k) { return trans ? x[k * ld + r] : x[r * ld + k]; }

// Storage sizes: the largest offset a batch entry reaches, plus its matrix.
int64_t span(int64_t rows_stored, int64_t ld, int64_t count, int64_t inner, int64_t outer_stride, int64_t inner_stride) {
  return (count - 1) / inner * outer_stride + (inner - 1) * inner_stride + rows_stored * ld;
}

void check_product(const char* name, const Problem& p, bool integers, uint32_t seed) {
  const int64_t a_rows = p.transA ? p.K : p.M, b_rows = p.transB ? p.N : p.K;
  const int64_t inner_n = p.count < p.inner ? p.count : p.inner;
  std::vector<float> A(span(a_rows, p.lda, p.count, inner_n, p.a_outer, p.a_inner)), B(span(b_rows, p.ldb, p.count, inner_n, p.b_outer, p.b_inner));
  std::vector<float> C(span(p.M, p.ldc, p.count, inner_n, p.c_outer, p.c_inner));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-4, 4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : A) v = integers ? float(small(rng)) : normal(rng);
  for (float& v : B) v = integers ? float(small(rng)) : normal(rng);
  for (float& v : C) v = integers ? float(small(rng)) : normal(rng);
  const float alpha = integers ? 1.0f : 0.75f, beta = integers ? 1.0f : -0.5f;

  std::vector<float> out = C;
  std::vector<int> writes(C.size(), 0);
  run_kernel(p, A, B, out, alpha, beta, writes);

  std::vector<char> covered(C.size(), 0);
  int64_t bad = 0;
  double worst = 0;
  for (int64_t z = 0; z < p.count; ++z) {
    const float* a = A.data() + p.a_off(z);
    const float* b = B.data() + p.b_off(z);
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) {
        const int64_t at = p.c_off(z) + m * p.ldc + n;
        covered[at] = 1;
        CHECK(writes[at] == 1, "%s: C(%lld, %lld, %lld) written %d times", name, (long long)z, (long long)m, (long long)n, writes[at]);
        double s = 0, mag = 0;
        for (int64_t k = 0; k < p.K; ++k) {
          const double x = round_to_bf16(elem(a, p.lda, p.transA, m, k)) * double(round_to_bf16(elem(b, p.ldb, !p.transB, n, k)));
          s += x;
          mag += std::fabs(x);
        }
        const double want = alpha * s + beta * double(C[at]);
        const double err = std::fabs(out[at] - want);
        if (integers ? err != 0 : err > 1e-5 * (std::fabs(alpha) * mag + std::fabs(beta * C[at])) + 1e-30) {
          if (bad++ < 3)
            std::fprintf(stderr, "%s: C(%lld, %lld, %lld) = %.9g, want %.9g\n", name, (long long)z, (long long)m, (long long)n, out[at], want);
        }
        if (mag > 0) worst = std::fmax(worst, err / mag);
      }
  }
  CHECK(bad == 0, "%s: %lld wrong elements (largest error %.3g of the sum of |products|)", name, (long long)bad, worst);
  for (size_t i = 0; i < C.size(); ++i)
    CHECK(covered[i] || (writes[i] == 0 && out[i] == C[i]), "%s: C storage %zu outside the matrices was touched", name, i);
}

}  // namespace

int main() {
  check_fragment_maps();

  struct Shape {
    int64_t M, N, K;
  };
  // One mma tile, one block tile, tails in every dimension, K below one slice and one element, shapes thinner than
  // a warp tile, and more than one block in each direction.
  const Shape shapes[] = {{16, 8, 16}, {128, 128, 32}, {1, 1, 1}, {130, 70, 50}, {257, 129, 97}, {5, 300, 33}, {64, 40, 1}, {200, 9, 64}};
  int count = 0;
  for (bool integers : {true, false})
    for (bool aligned : {false, true})
      for (const Shape& s : shapes)
        for (int t = 0; t < 4; ++t) {
          Problem p;
          p.transA = t & 1;
          p.transB = t & 2;
          p.M = s.M, p.N = s.N, p.K = s.K;
          // Leading dimensions beyond the minimum, so that a row/column mix-up cannot pass by accident; odd ones keep
          // k-contiguous operands on scalar loads, multiples of 4 put them on float4 loads.
          p.lda = (p.transA ? s.M : s.K) + (aligned ? 4 : 3);
          p.ldb = (p.transB ? s.K : s.N) + (aligned ? 8 : 5);
          p.ldc = s.N + 2;
          if (aligned) p.lda = (p.lda + 3) / 4 * 4, p.ldb = (p.ldb + 3) / 4 * 4;
          char name[128];
          std::snprintf(name, sizeof name, "%s %lldx%lldx%lld transA=%d transB=%d lda=%lld ldb=%lld", integers ? "integers" : "random",
                        (long long)s.M, (long long)s.N, (long long)s.K, int(p.transA), int(p.transB), (long long)p.lda, (long long)p.ldb);
          check_product(name, p, integers, 1000u + static_cast<uint32_t>(count++));
        }

  // Two-level batch strides: (sample, head) slices of one buffer, as attention.cu multiplies q k^T, P v and dS^T q
  // (C slices interleaved in one buffer for the last), and a transA-transB product over strided slices.
  {
    const int64_t T = 37, hd = 24, H = 2, Bs = 3, W = H * hd, ld = 3 * W, TT = T * T;
    Problem qk{false, true, T, T, hd, ld, ld, T, Bs * H, H, T * ld, hd, T * ld, hd, H * TT, TT};
    Problem pv{false, false, T, hd, T, T, ld, W, Bs * H, H, H * TT, TT, T * ld, hd, T * W, hd};
    Problem dk{true, false, T, hd, T, T, ld, ld, Bs * H, H, H * TT, TT, T * ld, hd, T * ld, hd};
    Problem tt{true, true, hd, T, T, ld, T, T + 1, Bs * H, H, T * ld, hd, H * TT, TT, H * hd * (T + 1), hd * (T + 1)};
    const std::pair<const char*, Problem> batched[] = {{"batched q k^T", qk}, {"batched P v", pv}, {"batched dS^T q", dk}, {"batched A^T B^T", tt}};
    for (const auto& [name, p] : batched) {
      check_product(name, p, true, 77u + static_cast<uint32_t>(count++));
      check_product(name, p, false, 77u + static_cast<uint32_t>(count++));
    }
  }

  CHECK(vector_loads > 0, "no product took the float4 path");
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("mma tile logic: all checks passed (%lld float4 loads)\n", (long long)vector_loads);
  return 0;
}
