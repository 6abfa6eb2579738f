// The per-thread index logic of the bf16 tensor-core GEMM (gemm_bf16.cu), in plain C++ so that a CPU program
// (test/native/mma_tile_test.cc) runs exactly this logic for every thread of a block and checks the products:
// which elements of A and B a thread stages into shared memory, which shared words it hands to mma.sync as
// fragments, and which element of C each of its accumulators is.
//
// Block tile kBM x kBN, K in slices of kBK. 8 warps in a 2 x 4 grid; each warp owns a 64 x 32 tile of C, that is
// 4 x 4 mma tiles of m16 n8, and steps through a slice in two k16 halves.
//
// Shared memory holds both operands K-contiguous, as 32-bit words of two bf16 (the lower k in the low half, as
// the fragments want them): A as [m][k], B as [n][k], i.e. B^T. One row of a stage is kRowWords words: kBK / 2
// of data and 4 of padding. With 20 words per row, the 8 rows a fragment load touches (groupID 0..7 at one
// threadID_in_group) land in 8 different groups of 4 banks, so fragment loads are free of bank conflicts.
#pragma once
#include <cstdint>

#include "../common/bf16.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

namespace tf {
namespace mma {

constexpr int kBM = 128, kBN = 128, kBK = 32, kThreads = 256;
constexpr int kWarpsM = 2, kWarpsN = 4;
constexpr int kWarpM = kBM / kWarpsM, kWarpN = kBN / kWarpsN;  // 64 x 32
constexpr int kTilesM = kWarpM / 16, kTilesN = kWarpN / 8;     // 4 x 4 mma tiles per warp
constexpr int kSteps = kBK / 16;                               // k16 steps per slice
constexpr int kRowWords = kBK / 2 + 4;
constexpr int kStageWords = kBM * kRowWords;  // one operand of one stage (kBM == kBN rows)
constexpr int kPairs = kBM * kBK / 2 / kThreads;  // pairs of consecutive k a thread stages per operand per slice

static_assert(kBM == kBN, "one stage layout serves both operands");
static_assert(kWarpsM * kWarpsN * 32 == kThreads, "the warp grid covers the block");
static_assert(kBM * kBK / 2 % kThreads == 0, "every thread stages the same number of pairs");

// ---- Staging: global fp32 -> bf16 pairs in shared memory ----

// An operand tile, seen as rows x k: A is M x K; B is seen as B^T, N x K. Row r, element k sits at
// src[r * ld + k] when the operand is contiguous along k (A not transposed, B transposed), else at src[k * ld + r].
// The two kinds are staged differently (quads and pairs, below) so that a warp's loads are contiguous either way.
struct Operand {
  const float* src;
  int64_t ld, rows, K;
  bool vec4 = false;  // k-contiguous with every row 16-byte aligned: whole quads load as one float4 (rows_aligned16)
};

// An operand that is not k-contiguous (A transposed, B not) is staged by pairs: two consecutive k of one row, read
// as two loads ld apart. Pair p (0 <= p < kPairs) of thread tid: a warp reads 32 consecutive rows at one k, and
// again at the next k: consecutive addresses.
struct PairCoord {
  int row, k;
};
TF_HOST_DEVICE inline PairCoord pair_coord(int tid, int p) {
  const int e = tid + p * kThreads;
  return {e % kBM, 2 * (e / kBM)};
}

// The two values of pair c of an operand that is not k-contiguous (zeros outside the matrix, so the tails add
// nothing), for a tile whose first row is row0 and a slice that starts at k0.
TF_HOST_DEVICE inline void load_pair(const Operand& op, int64_t row0, int64_t k0, PairCoord c, float& lo, float& hi) {
  const int64_t r = row0 + c.row, k = k0 + c.k;
  lo = hi = 0.0f;
  if (r >= op.rows) return;
  const float* p = op.src + k * op.ld + r;
  if (k < op.K) lo = p[0];
  if (k + 1 < op.K) hi = p[op.ld];
}

// A k-contiguous operand is staged by quads: 4 consecutive k of one row, one 128-bit load when the operand's
// rows are 16-byte aligned (and the quad lies inside K), and two stage words. Quad q (0 <= q < kQuads) of thread tid:
// a warp reads 4 rows x 32 consecutive k, four whole 128-byte lines. A quad is two pairs, so stage_word places it.
constexpr int kQuads = kBM * kBK / 4 / kThreads;
static_assert(kQuads * 4 == kPairs * 2, "a thread stages as many values by quads as by pairs");
TF_HOST_DEVICE inline PairCoord quad_coord(int tid, int q) {
  const int e = tid + q * kThreads;
  return {e / (kBK / 4), 4 * (e % (kBK / 4))};
}

// Whether every row start of a k-contiguous operand, in every batch entry, is 16-byte aligned: the base address, the
// row stride and both batch strides (in floats) must all allow it.
inline bool rows_aligned16(const float* base, int64_t ld, int64_t outer_stride, int64_t inner_stride) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && ld % 4 == 0 && outer_stride % 4 == 0 && inner_stride % 4 == 0;
}

// The four values of quad c (zeros outside the matrix) of a k-contiguous operand.
TF_HOST_DEVICE inline void load_quad(const Operand& op, int64_t row0, int64_t k0, PairCoord c, float v[4]) {
  const int64_t r = row0 + c.row, k = k0 + c.k;
  v[0] = v[1] = v[2] = v[3] = 0.0f;
  if (r >= op.rows) return;
  const float* p = op.src + r * op.ld + k;
  if (op.vec4 && k + 3 < op.K) {
#if defined(__CUDA_ARCH__)
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
#else
    for (int i = 0; i < 4; ++i) v[i] = p[i];
#endif
    return;
  }
  for (int i = 0; i < 4; ++i)
    if (k + i < op.K) v[i] = p[i];
}

// Where pair c goes in a stage: the word of its row that holds k and k + 1.
TF_HOST_DEVICE inline int stage_word(PairCoord c) { return c.row * kRowWords + c.k / 2; }

// Two floats as a bf16x2 word, lo in the low half; both round to nearest even.
TF_HOST_DEVICE inline uint32_t pack_bf16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (the low half) = lo
  uint32_t w;
  memcpy(&w, &v, sizeof w);
  return w;
#else
  return uint32_t(bf16_bits(lo)) | (uint32_t(bf16_bits(hi)) << 16);
#endif
}

// ---- Fragments of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ----
// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type": lane = 4 * groupID + threadID_in_group.
// A (16 x 16): register i holds elements a(2i), a(2i+1): row groupID (+8 for odd i), k 2 * threadID_in_group
//   (+8 for i >= 2) and the next k.
// B (16 x 8, k x n): register i holds b(2i), b(2i+1): column groupID, k 2 * threadID_in_group (+8 for i = 1) and
//   the next k.
// C and D (16 x 8, fp32): element i at row groupID (+8 for i >= 2), column 2 * threadID_in_group + (i & 1).

TF_HOST_DEVICE inline int a_frag_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
TF_HOST_DEVICE inline int a_frag_k(int lane, int i) { return 2 * (lane & 3) + 8 * (i >> 1); }
TF_HOST_DEVICE inline int b_frag_col(int lane) { return lane >> 2; }
TF_HOST_DEVICE inline int b_frag_k(int lane, int i) { return 2 * (lane & 3) + 8 * i; }
TF_HOST_DEVICE inline int c_frag_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
TF_HOST_DEVICE inline int c_frag_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// The warp's 64 x 32 tile of C inside the block tile.
TF_HOST_DEVICE inline int warp_row0(int warp) { return (warp % kWarpsM) * kWarpM; }
TF_HOST_DEVICE inline int warp_col0(int warp) { return (warp / kWarpsM) * kWarpN; }

// The fragment maps word by word: the kernel loads by ldmatrix (a4_word, b4_word below); these are the reference
// mma_tile_test checks those addresses against, and that it checks against the PTX fragment description.
// The stage word that is register i of the A fragment of mma tile row mi at k16 step s, for this lane.
TF_HOST_DEVICE inline int a_frag_word(int warp, int lane, int mi, int s, int i) {
  return (warp_row0(warp) + 16 * mi + a_frag_row(lane, i)) * kRowWords + (16 * s + a_frag_k(lane, i)) / 2;
}

// The stage word that is register i of the B fragment of mma tile column ni at k16 step s.
TF_HOST_DEVICE inline int b_frag_word(int warp, int lane, int ni, int s, int i) {
  return (warp_col0(warp) + 8 * ni + b_frag_col(lane)) * kRowWords + (16 * s + b_frag_k(lane, i)) / 2;
}

// The same fragments by ldmatrix.sync.aligned.m8n8.x4.shared.b16, one instruction for four registers: lanes 8 m to
// 8 m + 7 give the row addresses of 8 x 8 matrix m (8 rows of 4 words), and lane t receives word t % 4 of row t / 4
// of matrix m in register m. Every row address is 16-byte aligned (kRowWords words per row, data words at multiples of
// 4), and the 8 rows of a matrix, kRowWords = 20 words apart, fall in 8 different groups of 4 banks.
//
// A: matrix m is register m of the A fragment of tile row mi at k16 step s: rows + 8 (m & 1), k + 8 (m >> 1).
TF_HOST_DEVICE inline int a4_word(int warp, int lane, int mi, int s) {
  const int m = lane >> 3;
  return (warp_row0(warp) + 16 * mi + (lane & 7) + 8 * (m & 1)) * kRowWords + 8 * s + 4 * (m >> 1);
}
// B, two n8 tiles at once: matrix m is register m & 1 of the B fragment of tile column 2 nj + (m >> 1).
TF_HOST_DEVICE inline int b4_word(int warp, int lane, int nj, int s) {
  const int m = lane >> 3;
  return (warp_col0(warp) + 8 * (2 * nj + (m >> 1)) + (lane & 7)) * kRowWords + 8 * s + 4 * (m & 1);
}
static_assert(kRowWords % 4 == 0 && kTilesN % 2 == 0, "ldmatrix rows are 16-byte aligned; B tiles come in pairs");

// Accumulator i of mma tile (mi, ni): its row and column in the block tile.
TF_HOST_DEVICE inline int acc_row(int warp, int lane, int mi, int i) { return warp_row0(warp) + 16 * mi + c_frag_row(lane, i); }
TF_HOST_DEVICE inline int acc_col(int warp, int lane, int ni, int i) { return warp_col0(warp) + 8 * ni + c_frag_col(lane, i); }

#if defined(__CUDACC__)
// The four registers lane receives from ldmatrix.x4 when it gives the row address at (see a4_word). The "memory"
// clobber: the asm reads shared memory the compiler cannot see through its operands, so it must stay between the
// staging stores and barriers around it.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const uint32_t* at) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<unsigned>(__cvta_generic_to_shared(at)))
               : "memory");
}

// d += a b for one m16n8k16 tile, fragments as laid out above.
__device__ __forceinline__ void mma_16x8x16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // unreachable: the host refuses bf16 below compute capability 8.0
#endif
}
#endif

}  // namespace mma
}  // namespace tf
