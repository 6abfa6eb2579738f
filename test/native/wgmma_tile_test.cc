// The sm_90a wgmma GEMM's index logic (native/cuda/wgmma_tile.h), checked on the CPU without a GPU.
//
// gemm_wgmma.cu is a thin driver around wgmma_tile.h: staging coordinates, stage words, descriptors and accumulator
// coordinates all come from the header. This program runs that logic for every thread of every block, in the
// kernel's order (stage a slice, barrier, multiply, next slice), with wgmma.mma_async itself emulated below from the
// PTX ISA's description, written independently of the header:
//   - "Matrix Descriptor Format": start address, leading- and stride-dimension byte offsets (each >> 4), swizzle mode;
//   - "Shared Memory Matrix Layout", K-major, no swizzling: the operand is made of core matrices of 8 rows x 16 bytes,
//     each 128 contiguous bytes with its rows 16 bytes apart; the core matrix that follows along K is the leading-
//     dimension byte offset away, the one 8 rows down the stride-dimension byte offset away;
//   - "Register Fragments, wgmma .m64nNk16, matrix D": warp w of the warpgroup holds rows 16 w .. 16 w + 15, each
//     n8 column block as mma.sync's m16n8 C fragment, d[4 j + i] in block j.
// It checks:
//   1. the header's accumulator map against that description, and the descriptor's fields;
//   2. staging writes every element of a stage exactly once, quads as aligned 8-byte stores, and a warp's stores
//      meet no bank conflicts (32-bit: 32 distinct banks a warp; 64-bit: 32 distinct banks each half-warp);
//   3. each warpgroup's multiply at each k16 step reads, through its descriptors, exactly its 64 rows of A and all
//      rows of B^T at that step's 16 k, each element once, from 16-byte aligned starts inside the stage;
//   4-5. whole products (gemm_check.h): every shape, transpose, leading dimension and batch layout the kernels meet.
// test/bf16.test.ts compiles and runs it; the exit status is 0 when every check passes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "../../native/cuda/wgmma_tile.h"
#include "gemm_check.h"
#include "mma_emulation.h"
#include "check.h"

using namespace tf;
using namespace tf::wgmma;
using namespace tf::emu;

namespace {

// ---- wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 from the PTX ISA (no transposes, both operands in shared
// memory), for one warpgroup of 128 threads ----

struct Descriptor {
  uint32_t start, leading, stride;
  int base_offset, swizzle;
};

Descriptor decode(uint64_t d) {
  return {static_cast<uint32_t>(d & 0x3FFF) << 4, static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4,
          static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4, static_cast<int>((d >> 49) & 7), static_cast<int>(d >> 62)};
}

// Byte address of element (row, k) of a K-major operand without swizzling.
uint32_t operand_byte(const Descriptor& d, int row, int k) {
  return d.start + row / 8 * d.stride + k / 8 * d.leading + row % 8 * 16 + k % 8 * 2;
}

// D register i of thread t of the warpgroup.
RowCol spec_d(int t, int i) {
  const RowCol c = spec_c(t % 32, i % 4);
  return {16 * (t / 32) + c.row, 8 * (i / 4) + c.col};
}

// d[t][i] += sum over k of A(row, k) B^T(col, k) for the m64 x n x k16 slab the descriptors give; reads[b / 2] counts
// the reads of each bf16 of the shared window (bytes [0, bytes)).
void warpgroup_mma(std::vector<std::vector<float>>& d, int n, const std::vector<uint8_t>& smem, uint64_t a_desc, uint64_t b_desc,
                   std::vector<int>& reads) {
  const Descriptor a = decode(a_desc), b = decode(b_desc);
  CHECK(a.swizzle == 0 && b.swizzle == 0 && a.base_offset == 0 && b.base_offset == 0, "descriptors ask for swizzling or a base offset");
  auto element = [&](const Descriptor& desc, int row, int k) {
    const uint32_t at = operand_byte(desc, row, k);
    if (at + 2 > smem.size()) {
      CHECK(false, "wgmma reads byte %u, past the %zu-byte stage", at, smem.size());
      return 0.0f;
    }
    ++reads[at / 2];
    uint16_t bits;
    std::memcpy(&bits, &smem[at], 2);
    return bf16_to_float(bits);
  };
  std::vector<float> A(64 * 16), B(static_cast<size_t>(n) * 16);
  for (int r = 0; r < 64; ++r)
    for (int k = 0; k < 16; ++k) A[r * 16 + k] = element(a, r, k);
  for (int c = 0; c < n; ++c)
    for (int k = 0; k < 16; ++k) B[c * 16 + k] = element(b, c, k);
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < n / 2; ++i) {
      const RowCol p = spec_d(t, i);
      float s = d[t][i];
      for (int k = 0; k < 16; ++k) s += A[p.row * 16 + k] * B[p.col * 16 + k];
      d[t][i] = s;
    }
}

// ---- 1. Maps and descriptors ----
void check_maps() {
  int seen[64][kBN] = {};
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < kAccs; ++i) {
      const RowCol p = spec_d(t, i);
      ++seen[p.row][p.col];
      for (int group = 0; group < 2; ++group) {
        const int warp = 4 * group + t / 32, lane = t % 32;
        CHECK(acc_row(warp, lane, i) == kGroupRows * group + p.row && acc_col(lane, i) == p.col,
              "accumulator %d of warp %d lane %d: header (%d, %d), PTX (%d, %d)", i, warp, lane, acc_row(warp, lane, i), acc_col(lane, i),
              kGroupRows * group + p.row, p.col);
      }
    }
  for (int r = 0; r < 64; ++r)
    for (int c = 0; c < kBN; ++c) CHECK(seen[r][c] == 1, "D element (%d, %d) held %d times", r, c, seen[r][c]);
  // Corners of the PTX figure: thread 0 holds d0 at (0, 0) and d2 at (8, 0); thread 127 its last register at (63, 127).
  CHECK(spec_d(0, 2).row == 8 && spec_d(0, 2).col == 0 && spec_d(127, kAccs - 1).row == 63 && spec_d(127, kAccs - 1).col == kBN - 1,
        "D fragment corners");

  const Descriptor d = decode(descriptor(0x1230));
  CHECK(d.start == 0x1230 && d.leading == uint32_t(kLBO) && d.stride == uint32_t(kSBO) && d.swizzle == 0 && d.base_offset == 0,
        "descriptor fields: start %u, leading %u, stride %u", d.start, d.leading, d.stride);
  CHECK((descriptor(0) >> 14 & 3) == 0 && (descriptor(0) >> 30 & 3) == 0 && (descriptor(0) >> 46 & 7) == 0, "reserved descriptor bits set");
}

// ---- 2-5. The kernel, thread by thread ----

int64_t vector_loads = 0;

// The number of shared-memory wavefronts of one store instruction: words[lane] (-1: lane idle) of `width` words each.
// Lanes that hit the same bank at different words conflict; a 64-bit store is split into half-warps by the hardware.
int wavefronts(const int (&words)[32], int width) {
  const int phase_lanes = width == 2 ? 16 : 32;
  int total = 0;
  for (int first = 0; first < 32; first += phase_lanes) {
    int worst = 0;
    for (int bank = 0; bank < 32; ++bank) {
      std::vector<int> distinct;
      for (int lane = first; lane < first + phase_lanes; ++lane)
        for (int w = 0; w < width; ++w)
          if (words[lane] >= 0 && (words[lane] + w) % 32 == bank) {
            bool seen = false;
            for (int x : distinct) seen |= x == words[lane] + w;
            if (!seen) distinct.push_back(words[lane] + w);
          }
      if (static_cast<int>(distinct.size()) > worst) worst = static_cast<int>(distinct.size());
    }
    total += worst;
  }
  return total;
}

void run_kernel(const Problem& p, const std::vector<float>& A, const std::vector<float>& B, std::vector<float>& C, float alpha,
                float beta, std::vector<int>& writes) {
  constexpr int kWarps = kThreads / 32;
  const int64_t row_tiles = (p.M + kBM - 1) / kBM, col_tiles = (p.N + kBN - 1) / kBN, slices = (p.K + kBK - 1) / kBK;
  // Shared memory as the kernel lays it out: [stage][A, B^T], kTileBytes each; descriptors address from its start.
  std::vector<uint8_t> smem(4 * kTileBytes);
  static float next[kThreads][2][2 * kPairs];
  std::vector<std::vector<float>> acc[2];

  for (int64_t z = 0; z < p.count; ++z)
    for (int64_t by = 0; by < row_tiles; ++by)
      for (int64_t bx = 0; bx < col_tiles; ++bx) {
        const bool quads[2] = {!p.transA, p.transB};
        const mma::Operand a{A.data() + p.a_off(z), p.lda, p.M, p.K, quads[0] && mma::rows_aligned16(A.data(), p.lda, p.a_outer, p.a_inner)};
        const mma::Operand b{B.data() + p.b_off(z), p.ldb, p.N, p.K, quads[1] && mma::rows_aligned16(B.data(), p.ldb, p.b_outer, p.b_inner)};
        const int64_t m0 = by * kBM, n0 = bx * kBN;
        std::memset(smem.data(), 0xC1, smem.size());  // NaN bf16s: a read of an unstaged element spoils the sums
        for (auto& g : acc) g.assign(128, std::vector<float>(kAccs, 0.0f));

        auto fetch = [&](int64_t k0) {
          for (int tid = 0; tid < kThreads; ++tid)
            for (int operand = 0; operand < 2; ++operand) {
              const mma::Operand& op = operand == 0 ? a : b;
              const int64_t row0 = operand == 0 ? m0 : n0;
              float* v = next[tid][operand];
              for (int q = 0; q < kQuads && quads[operand]; ++q) {
                const mma::PairCoord c = quad_coord(tid, q);
                const int64_t r = row0 + c.row, k = k0 + c.k;
                if (op.vec4 && r < op.rows && k + 3 < op.K) {
                  CHECK(reinterpret_cast<uintptr_t>(op.src + r * op.ld + k) % 16 == 0, "a float4 load at an address that is not 16-byte aligned");
                  ++vector_loads;
                }
                mma::load_quad(op, row0, k0, c, v + 4 * q);
              }
              for (int q = 0; q < kPairs && !quads[operand]; ++q) mma::load_pair(op, row0, k0, pair_coord(tid, q), v[2 * q], v[2 * q + 1]);
            }
        };
        auto put = [&](int s) {
          std::vector<int> stores(2 * kTileBytes / 4, 0);
          auto store = [&](int operand, int w, uint32_t value) {
            CHECK(w >= 0 && w < kTileBytes / 4, "stage word %d out of the tile", w);
            if (w < 0 || w >= kTileBytes / 4) return;
            std::memcpy(&smem[(2 * s + operand) * kTileBytes + 4 * w], &value, 4);
            ++stores[operand * kTileBytes / 4 + w];
          };
          for (int operand = 0; operand < 2; ++operand) {
            for (int tid = 0; tid < kThreads; ++tid) {
              const float* v = next[tid][operand];
              for (int q = 0; q < kQuads && quads[operand]; ++q) {
                const int w = wgmma::stage_word(quad_coord(tid, q));
                CHECK(w % 2 == 0, "quad stage word %d is not 8-byte aligned (the kernel stores it as one uint2)", w);
                store(operand, w, mma::pack_bf16x2(v[4 * q], v[4 * q + 1]));
                store(operand, w + 1, mma::pack_bf16x2(v[4 * q + 2], v[4 * q + 3]));
              }
              for (int q = 0; q < kPairs && !quads[operand]; ++q)
                store(operand, wgmma::stage_word(pair_coord(tid, q)), mma::pack_bf16x2(v[2 * q], v[2 * q + 1]));
            }
            // Each store instruction of each warp: 32 banks, one wavefront per 128 bytes.
            for (int warp = 0; warp < kWarps; ++warp)
              for (int q = 0; q < (quads[operand] ? kQuads : kPairs); ++q) {
                int words[32];
                for (int lane = 0; lane < 32; ++lane)
                  words[lane] = wgmma::stage_word(quads[operand] ? quad_coord(32 * warp + lane, q) : pair_coord(32 * warp + lane, q));
                const int width = quads[operand] ? 2 : 1, ideal = width;
                CHECK(wavefronts(words, width) == ideal, "operand %d warp %d store %d: %d wavefronts, not %d (bank conflicts)", operand, warp, q,
                      wavefronts(words, width), ideal);
              }
          }
          for (int w = 0; w < 2 * kTileBytes / 4; ++w) CHECK(stores[w] == 1, "stage word %d stored %d times", w, stores[w]);
        };
        auto compute = [&](int s) {
          const uint32_t a_tile = (2 * s) * kTileBytes, b_tile = a_tile + kTileBytes;
          for (int step = 0; step < kSteps; ++step)
            for (int group = 0; group < 2; ++group) {
              std::vector<int> reads(smem.size() / 2, 0);
              const uint32_t a_start = a_tile + a_step_byte(group, step), b_start = b_tile + b_step_byte(step);
              CHECK(a_start % 16 == 0 && b_start % 16 == 0, "descriptor start addresses %u, %u are not 16-byte aligned", a_start, b_start);
              warpgroup_mma(acc[group], kBN, smem, descriptor(a_start), descriptor(b_start), reads);
              // Exactly this group's 64 rows of A and all of B^T at this step's k, each once.
              for (int r = 0; r < kBM; ++r)
                for (int k = 0; k < kBK; ++k) {
                  const bool in_step = k / 16 == step;
                  const int ra = reads[(a_tile + tile_byte(r, k)) / 2], rb = reads[(b_tile + tile_byte(r, k)) / 2];
                  CHECK(ra == (in_step && r / kGroupRows == group ? 1 : 0), "group %d step %d read A (%d, %d) %d times", group, step, r, k, ra);
                  CHECK(rb == (in_step ? 1 : 0), "group %d step %d read B^T (%d, %d) %d times", group, step, r, k, rb);
                }
            }
        };

        run_slices(slices, kBK, fetch, compute, put);

        float* c = C.data() + p.c_off(z);
        int* wr = writes.data() + p.c_off(z);
        for (int warp = 0; warp < kWarps; ++warp)
          for (int lane = 0; lane < 32; ++lane)
            for (int i = 0; i < kAccs; ++i)
              store_c(p, c, wr, m0 + acc_row(warp, lane, i), n0 + acc_col(lane, i), acc[warp / 4][32 * (warp % 4) + lane][i], alpha, beta);
      }
}

}  // namespace

int main() {
  check_maps();
  check_products(run_kernel);
  return report("wgmma tile logic", vector_loads);
}
