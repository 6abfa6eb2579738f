// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 emulated on the CPU for one warp, written from the PTX ISA's
// description of the fragments ("Matrix Fragments for mma.m16n8k16 with floating point type") independently of the
// kernels' headers, which the emulation tests (mma_tile_test.cc, flash_tile_test.cc) check against it.
#pragma once
#include <cstdint>

#include "../../native/common/bf16.h"
#include "check.h"

namespace tf {
namespace emu {

// ---- The PTX ISA's fragment description for mma.m16n8k16 with .bf16 A and B and .f32 C/D ----
// groupID = %laneid >> 2, threadID_in_group = %laneid % 4. Elements are numbered low to high: register r of A
// holds a(2r) in its low half and a(2r+1) in its high half, likewise for B.
struct RowCol {
  int row, col;
};

// A (16 x 16): row = groupID for ai with 0 <= i < 2 or 4 <= i < 6, else groupID + 8;
//              col = threadID_in_group * 2 + (i & 1) for i < 4, else that + 8.
inline RowCol spec_a(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
  const int col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
  return {row, col};
}

// B (16 x 8, rows are k): row = threadID_in_group * 2 + (i & 1) for i < 2, else that + 8; col = groupID.
inline RowCol spec_b(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8, group};
}

// C, D (16 x 8): row = groupID for i < 2, else groupID + 8; col = threadID_in_group * 2 + (i & 1).
inline RowCol spec_c(int lane, int i) {
  const int group = lane >> 2, tig = lane % 4;
  return {i < 2 ? group : group + 8, tig * 2 + (i & 1)};
}

inline float half_of(uint32_t word, int high) { return bf16_to_float(static_cast<uint16_t>(high ? word >> 16 : word & 0xffffu)); }

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for one warp: d += a b, from the lanes' registers.
inline void warp_mma(float d[32][4], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      RowCol p = spec_a(lane, i);
      A[p.row][p.col] = half_of(a[lane][i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      RowCol p = spec_b(lane, i);
      B[p.row][p.col] = half_of(b[lane][i / 2], i % 2);
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      RowCol p = spec_c(lane, i);
      float s = d[lane][i];
      for (int k = 0; k < 16; ++k) s += A[p.row][k] * B[k][p.col];
      d[lane][i] = s;
    }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 for one warp (PTX ISA): lanes 8 m to 8 m + 7 give the 16-byte aligned
// addresses of the 8 rows (4 words each) of matrix m; lane t receives word t % 4 of row t / 4 of each matrix, in
// register m. One matrix is read per phase: its 8 rows must fall in 8 different groups of 4 banks.
inline void ldmatrix_x4(uint32_t (*r)[4], const uint32_t* const* at) {
  for (int m = 0; m < 4; ++m) {
    unsigned groups = 0;
    for (int row = 0; row < 8; ++row) {
      const uintptr_t address = reinterpret_cast<uintptr_t>(at[8 * m + row]);
      CHECK(address % 16 == 0, "ldmatrix row address %p is not 16-byte aligned", static_cast<const void*>(at[8 * m + row]));
      groups |= 1u << (address / 16 % 8);
    }
    CHECK(groups == 0xffu, "ldmatrix matrix %d has bank conflicts", m);
    for (int lane = 0; lane < 32; ++lane) r[lane][m] = at[8 * m + lane / 4][lane % 4];
  }
}

}  // namespace emu
}  // namespace tf
