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
#include "gemm_check.h"
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

        run_slices(slices, kBK, fetch, compute, put);

        float* c = C.data() + p.c_off(z);
        int* wr = writes.data() + p.c_off(z);
        for (int warp = 0; warp < kWarps; ++warp)
          for (int lane = 0; lane < 32; ++lane)
            for (int mi = 0; mi < kTilesM; ++mi)
              for (int ni = 0; ni < kTilesN; ++ni)
                for (int i = 0; i < 4; ++i)
                  store_c(p, c, wr, m0 + acc_row(warp, lane, mi, i), n0 + acc_col(warp, lane, ni, i), acc[warp][mi][ni][lane][i], alpha, beta);
      }
}

}  // namespace

int main() {
  check_fragment_maps();

  check_products(run_kernel);
  return report("mma tile logic", vector_loads);
}
