// The CPU's fast bf16 matrix products, on the CPU's own bf16 instructions: Intel AMX tiles (Xeon Sapphire Rapids and
// later) or AVX-512 BF16 (Intel Cooper Lake and later Xeons, AMD Zen 4 and later: Ryzen 7040 laptops, EPYC Genoa).
//
// Why: the reference bf16 product (gemm.cc) rounds copies of the operands to bf16 and multiplies them with the
// float kernel, at the fp32 rate of AVX-512, or slower (the copies). AMX multiplies bf16 tiles in hardware
// (TDPBF16PS: a 16 x 16 fp32 tile += a 16 x 32 bf16 tile times a 32 x 16 one, 16 K pairs per element) at several
// times that rate; VDPBF16PS does two products per fp32 lane where an FMA does one.
//
// What changes: nothing in the products (bf16 x bf16 is exact in fp32); the fp32 sums run in the hardware's own
// order, so results differ from the reference's at fp32 rounding, as the GPU's tensor cores do, and the two kernels
// differ from each other likewise. The hardware also treats bf16 denormal inputs as zero (2^-133 x 2^126 gives 0),
// and VDPBF16PS flushes denormal sums too, all below 1.2e-38 where nothing here lives. What stays: every element of
// C is summed by the same instructions over the whole of K whatever the thread count and whatever M is, so results
// are deterministic and a sample's rows give the same bits in any batch.
//
// Selection (TARFLOW_CPU_GEMM, read per product): 'auto' (default) uses AMX where it is usable, else AVX-512 BF16
// where that is, else the reference; 'reference', 'amx' and 'avx512bf16' name one (and a named fast kernel that
// cannot run here is an error). Usable means: the CPU has the instructions and (for the packing) AVX-512F/BW, the
// operating system enables their state, for AMX the kernel grants this process the tile state (arch_prctl
// ARCH_REQ_XCOMP_PERM, Linux 5.16+), and a check passes: on small-integer operands, where every sum is exact in any
// order, the kernel must reproduce the reference bit for bit for all four transposes with tails in M, N and K.
//
// Layout, shared by both kernels: op(B) is packed once per product to the pair-interleaved ("VNNI") form both
// instructions read: per 16 columns, K/2 rows of 16 (k, k+1) pairs, K padded to 32. Each task then walks its blocks
// of 32 rows of C: it packs those rows of op(A) to bf16 rows of K (a tile row is 64 bytes) in a per-thread buffer
// that stays in L2, computes every 32 x 32 block of the rows over the whole of K (AmxBlock: four accumulator tiles;
// Avx512Bf16Block: 8 rows at a time in registers), and folds the finished rows into C, 128 columns at a time, with
// alpha, beta and the epilogue (gemm.h), as the reference kernel does per panel. Packing all of a row-major op(A) up
// front and reading it back sent the activations through memory twice more: per block, the likelihood model's
// products with K of 384 or 512 run 1.5 to 1.8 times faster (gemm_bench --bf16, 2-core Xeon with AMX). A transposed
// op(A) is still packed whole first (see gemm_packed_bf16).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../common/coded_error.h"
#include "../common/env_choice.h"
#include "../common/exact_gemm_check.h"
#include "../common/threads.h"
#include "gemm.h"
#include "scratch.h"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define TF_HAVE_X86_BF16 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define TF_HAVE_X86_BF16 0
#endif

// GCC 12's AVX-512 headers seed masked intrinsics with a self-initialised _mm512_undefined_ps(), which
// -Wmaybe-uninitialized reports at every inlined masked load; the warning is about the header (as in gemm.cc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tf {
namespace {

enum class Choice { Auto, Reference, Amx, Avx512Bf16 };  // the order of TARFLOW_CPU_GEMM's values

Choice requested_kernel() {
  return static_cast<Choice>(env_choice("TARFLOW_CPU_GEMM", {"auto", "reference", "amx", "avx512bf16"}));
}

enum class Kernel { Reference, Amx, Avx512Bf16 };
constexpr const char* kKernelNames[] = {"reference", "amx", "avx512bf16"};  // what bf16GemmKernel() reports

constexpr int64_t kBlock = 32;  // rows and columns of C per task step: 2 x 2 tiles of 16 x 16
constexpr int64_t kStepK = 32;  // bf16 values of K per tile row (64 bytes)
constexpr int64_t kGroupCols = 128;  // columns of C finished together: 32 x 128 accumulators, 16 KB

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

#if TF_HAVE_X86_BF16

// The memory layout LDTILECFG reads (palette 1: rows and bytes per row of each tile).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The tile registers configured for the kernel (tiles 0-3 the 16 x 16 fp32 accumulators, 4-5 two 16-row A tiles, 6-7
// two B tiles of 16 pair-rows) while it lives, released however the scope ends: tile state left in use makes every
// context switch of the thread save and restore 8 KB more.
struct TileState {
  __attribute__((target("amx-tile"))) TileState() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;  // every tile 16 rows of 64 bytes
    // GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes of cfg: where this constructor is compiled
    // outside an AMX-target function (any -march without AMX), the stores above were dropped as dead and
    // LDTILECFG read stack garbage. The barrier makes the whole struct an input.
    __asm__ volatile("" : : "m"(cfg) : "memory");
    _tile_loadconfig(&cfg);
  }
  __attribute__((target("amx-tile"))) ~TileState() { _tile_release(); }
  TileState(const TileState&) = delete;
  TileState& operator=(const TileState&) = delete;
};

// Why `kernel` cannot run here, or empty: the instructions, the operating system's support of their register state,
// and (AMX) the permission to use it (granted once per process; Linux refuses it when a signal stack is too small
// for the state). The operand packing uses AVX-512F and BW (every CPU with AMX or AVX-512 BF16 so far has them; a
// build for an older target still compiles them, per function).
std::string missing(Kernel kernel) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return "this CPU does not report its extended features";
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 30));  // AVX-512F, AVX-512BW
  if (kernel == Kernel::Amx) {
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return "this CPU has no AMX-BF16 (it came with Xeon Sapphire Rapids)";
    if (!avx512) return "this CPU has AMX but not AVX-512F and AVX-512BW";
  } else {
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (!__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) || !(a1 & (1u << 5)))
      return "this CPU has no AVX-512 BF16 (Intel Cooper Lake and Sapphire Rapids, AMD Zen 4 and later have it)";
    if (!avx512) return "this CPU has AVX-512 BF16 but not AVX-512F and AVX-512BW";
  }
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return "the operating system does not enable XSAVE";
  uint32_t xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xe6u) != 0xe6u) return "the operating system does not enable the AVX-512 register state";
  if (kernel != Kernel::Amx) return {};
  if ((xcr0_lo & (3u << 17)) != (3u << 17)) return "the operating system does not enable the AMX tile state";
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return "the kernel did not grant this process the AMX tile state (Linux 5.16 or later grants it on request)";
  return {};
}

// bf16_bits (bf16.h) on 16 lanes: each 32-bit lane's low half holds the rounded bits.
__attribute__((target("avx512f,avx512bw"))) inline __m512i bf16_lanes(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
}

// Values k0..k0 + 31 of a contiguous row (zeros from `count` on) as 32 bf16 in order: 64 bytes, or 16 (k, k + 1)
// pairs in 32-bit lanes.
__attribute__((target("avx512f,avx512bw"))) inline __m512i row_bf16x32(const float* src, int64_t count) {
  const __mmask16 lo = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
  const __mmask16 hi = count >= 32 ? __mmask16(0xffff) : count <= 16 ? __mmask16(0) : __mmask16((1u << (count - 16)) - 1);
  const __m256i a = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(lo, src)));
  // Past 16 values the second half is all padding: not even its address is formed (it may lie past the operand).
  const __m256i b = count > 16 ? _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(hi, src + 16))) : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

// Column n of op(B) from a contiguous stored row (transposed B): its 16 pairs of k0..k0 + 31 go to 16 pair-rows of
// the panel, 64 bytes apart (`out` is the first pair-row's slot for n).
__attribute__((target("avx512f,avx512bw"))) inline void pack_b_column(const float* src, int64_t count, uint16_t* out) {
  const __m512i at = _mm512_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960);
  _mm512_i32scatter_epi32(out, at, row_bf16x32(src, count), 1);
}

// Columns n..n+15 of stored rows k and k + 1 (src, src + ldb) as one pair-row: 16 (k, k + 1) pairs, 64 bytes.
__attribute__((target("avx512f,avx512bw"))) inline void pack_b_pairs(const float* src, int64_t ldb, uint16_t* out) {
  const __m512i b0 = bf16_lanes(_mm512_loadu_ps(src)), b1 = bf16_lanes(_mm512_loadu_ps(src + ldb));
  _mm512_storeu_si512(out, _mm512_or_si512(b0, _mm512_slli_epi32(b1, 16)));
}

// fp32 -> bf16 bits, as the reference rounds (bf16.h), into packed operands with zero padding. Each loop nest reads
// its source along rows (the stored operand's contiguous direction).

// In place, the 16 x 16 transpose of 32-bit elements: r[i] lane j becomes r[j] lane i (three shuffle stages).
__attribute__((target("avx512f,avx512bw"))) inline void transpose_16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // r[4i + c] now holds, in 128-bit lane l, rows 4i..4i+3 of column 4l + c; a 4 x 4 transpose of lanes finishes.
  for (int c = 0; c < 4; ++c) {
    const __m512i u0 = _mm512_shuffle_i32x4(r[c], r[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i u1 = _mm512_shuffle_i32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i u2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i u3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    t[0 + c] = _mm512_shuffle_i32x4(u0, u2, _MM_SHUFFLE(2, 0, 2, 0));
    t[4 + c] = _mm512_shuffle_i32x4(u0, u2, _MM_SHUFFLE(3, 1, 3, 1));
    t[8 + c] = _mm512_shuffle_i32x4(u1, u3, _MM_SHUFFLE(2, 0, 2, 0));
    t[12 + c] = _mm512_shuffle_i32x4(u1, u3, _MM_SHUFFLE(3, 1, 3, 1));
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Rows [i0, i0 + count) of a transposed op(A) (count a multiple of 32; zero past M, and past K up to Kp) as bf16 rows of
// Kp values at `out`. op(A)(i, k) = A[k * lda + i]: stored row k holds column k of op(A). Per 32 values of K and 16 of
// M, the (k, k + 1) pairs of stored rows make 16 vectors of 16 pairs, one per pair of rows; transposed, each is one
// output row's 64 bytes. K outermost, so that each stored row's span [i0, i0 + rows) is read in one pass, along its
// length.
__attribute__((target("avx512f,avx512bw"))) void pack_a_transposed(int64_t M, int64_t K, const float* A, int64_t lda, uint16_t* out,
                                                                    int64_t Kp, int64_t i0, int64_t count) {
  const int64_t rows = std::clamp<int64_t>(M - i0, 0, count);
  for (int64_t k0 = 0; k0 < Kp; k0 += kStepK) {
    for (int64_t h = 0; h < rows; h += 16) {
      const int64_t live = std::min<int64_t>(16, rows - h);
      const __mmask16 lanes = live == 16 ? __mmask16(0xffff) : __mmask16((1u << live) - 1);
      const float* col = A + i0 + h;
      __m512i r[16];
      for (int p = 0; p < 16; ++p) {
        const int64_t k = k0 + 2 * p;
        const __m512i lo = k < K ? bf16_lanes(_mm512_maskz_loadu_ps(lanes, col + k * lda)) : _mm512_setzero_si512();
        const __m512i hi = k + 1 < K ? bf16_lanes(_mm512_maskz_loadu_ps(lanes, col + (k + 1) * lda)) : _mm512_setzero_si512();
        r[p] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      }
      transpose_16x16_epi32(r);
      for (int64_t i = 0; i < live; ++i) _mm512_storeu_si512(out + (h + i) * Kp + k0, r[i]);
    }
  }
  std::fill(out + rows * Kp, out + count * Kp, uint16_t(0));  // rows past M: 16-row tiles read them
}

// Rows [i0, i0 + 32) of a row-major op(A), values [k_lo, k_hi) of K (multiples of 32; zero past M and past K), as
// bf16 rows of Kp values at `out`: one block, of which a triangle may need only some K steps.
__attribute__((target("avx512f,avx512bw"))) void pack_a_block(int64_t M, int64_t K, const float* A, int64_t lda, uint16_t* out, int64_t Kp,
                                                               int64_t i0, int64_t k_lo, int64_t k_hi) {
  const int64_t rows = std::clamp<int64_t>(M - i0, 0, kBlock);
  for (int64_t i = 0; i < kBlock; ++i)
    for (int64_t k = k_lo; k < k_hi; k += kStepK)
      _mm512_storeu_si512(out + i * Kp + k, i < rows ? row_bf16x32(A + (i0 + i) * lda + k, K - k) : _mm512_setzero_si512());
}

// Columns [c0, c1) (multiples of 16) of op(B) in pair-interleaved tiles: element (k, n) at
// ((n / 16) * Kp / 2 + k / 2) * 32 + (n % 16) * 2 + k % 2.
__attribute__((target("avx512f,avx512bw"))) void pack_b(bool transB, int64_t K, int64_t N, const float* B, int64_t ldb, uint16_t* out, int64_t Kp, int64_t c0, int64_t c1) {
  const auto at = [Kp](int64_t k, int64_t n) { return ((n / 16) * (Kp / 2) + k / 2) * 32 + (n % 16) * 2 + (k & 1); };
  const int64_t live = std::min(c1, N);
  if (transB) {
    // op(B)(k, n) = B[n * ldb + k]: row n of the stored B is column n of op(B).
    for (int64_t n = c0; n < live; ++n)
      for (int64_t k = 0; k < Kp; k += kStepK) pack_b_column(B + n * ldb + k, K - k, out + at(k, n));
  } else {
    // Stored rows k and k + 1 give a whole 64-byte pair-row of each 16-column panel.
    int64_t k = 0;
    for (; k + 2 <= K; k += 2) {
      const float* src = B + k * ldb;
      int64_t n = c0;
      for (; n + 16 <= live; n += 16) pack_b_pairs(src + n, ldb, out + at(k, n));
      for (; n < live; ++n) out[at(k, n)] = bf16_bits(src[n]), out[at(k + 1, n)] = bf16_bits(src[ldb + n]);
    }
    for (; k < K; ++k)
      for (int64_t n = c0; n < live; ++n) out[at(k, n)] = bf16_bits(B[k * ldb + n]);
  }
  // Padding: K past its end in live columns (the transposed path wrote it), and whole columns past N.
  for (int64_t n = c0; n < c1; ++n)
    for (int64_t k = n >= live ? 0 : transB ? Kp : K; k < Kp; ++k) out[at(k, n)] = 0;
}

// Rows [i0, i0 + mr) of C, columns [j0, j0 + nr) = alpha * acc + beta * C, then the epilogue; the same update as the
// reference kernel's (fma for beta 1, never reading C for beta 0). Per group of kGroupCols columns rather than per
// 32 x 32 block: the loops are long enough to vectorise without remainders, and the accumulators stay in L1 (fc1 with
// bias and GELU went from 5.7-8.0 to 5.1-5.8 ms in gemm_bench --bf16; the GELU's arithmetic is most of what is left).
void finish_rows(const float* acc, float alpha, float beta, float* C, int64_t ldc, int64_t i0, int64_t j0, int64_t mr, int64_t nr,
                 const GemmEpilogue<float>* ep) {
  for (int64_t r = 0; r < mr; ++r) {
    const float* a = acc + r * kGroupCols;
    float* c = C + (i0 + r) * ldc + j0;
    if (beta == 0.0f)
      for (int64_t j = 0; j < nr; ++j) c[j] = alpha * a[j];
    else if (beta == 1.0f)
      for (int64_t j = 0; j < nr; ++j) c[j] = std::fma(alpha, a[j], c[j]);
    else
      for (int64_t j = 0; j < nr; ++j) c[j] = std::fma(alpha, a[j], beta * c[j]);
  }
  if (ep) apply_epilogue(*ep, C + i0 * ldc + j0, ldc, i0 * ldc + j0, j0, mr, nr);
}

// Per-thread working memory of the row blocks: the block of op(A) (kept in L2 while every column of C uses it).
thread_local Scratch a_block_scratch;

// The two ways to compute one 32 x 32 block of C over K steps [s_begin, s_end): `a0` its 32 packed rows of op(A)
// (`rows` of them real, the rest zero), `b0` the packed panel of its first 16 columns (the next 16 follow at
// b0 + b_panel), sums stored to `acc` (row stride kGroupCols). Each is constructed once per task, so the AMX tile
// configuration is loaded once for all of the task's blocks.
struct AmxBlock {
  TileState tiles;  // tiles 0-3 the four 16 x 16 accumulators, 4-5 the A tiles, 6-7 the B tiles

  __attribute__((target("amx-tile,amx-bf16"))) void operator()(const uint16_t* a0, int64_t Kp, const uint16_t* b0, int64_t b_panel,
                                                                 int64_t s_begin, int64_t s_end, int64_t /*rows*/, float* acc) const {
    const uint16_t* a1 = a0 + 16 * Kp;
    const uint16_t* b1 = b0 + b_panel;
    const int64_t a_stride = Kp * 2;
    constexpr int64_t acc_stride = kGroupCols * 4;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = s_begin; s < s_end; ++s) {
      _tile_loadd(4, a0 + s * kStepK, a_stride);
      _tile_loadd(5, a1 + s * kStepK, a_stride);
      _tile_loadd(6, b0 + s * 16 * 32, 64);
      _tile_loadd(7, b1 + s * 16 * 32, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, acc, acc_stride);
    _tile_stored(1, acc + 16, acc_stride);
    _tile_stored(2, acc + 16 * kGroupCols, acc_stride);
    _tile_stored(3, acc + 16 * kGroupCols + 16, acc_stride);
  }
};

// AVX-512 BF16 (VDPBF16PS: 16 fp32 lanes each += the two products of a (k, k + 1) pair) reads the same packed
// operands: a pair-row of a B panel is one vector of 16 columns' pairs, and a row's pair of A is one 32-bit
// broadcast. Eight rows at a time: 16 accumulators (8 rows x 32 columns) and the two B vectors stay in the 32
// registers, and each K pair costs 2 loads and 8 broadcasts for 16 dot products. Rows past `rows` are padding and
// are skipped, which the sampler's short batches (a few images per thread) gain from.
struct Avx512Bf16Block {
  static constexpr int kRows = 8;

  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static void eight_rows(const uint16_t* a, int64_t Kp, const uint16_t* b0,
                                                                                  const uint16_t* b1, int64_t p_begin, int64_t p_end,
                                                                                  float* acc) {
    __m512 c[kRows][2];
    for (int r = 0; r < kRows; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int64_t p = p_begin; p < p_end; ++p) {
      const __m512bh x0 = (__m512bh)_mm512_loadu_si512(b0 + p * 32);
      const __m512bh x1 = (__m512bh)_mm512_loadu_si512(b1 + p * 32);
      for (int r = 0; r < kRows; ++r) {
        int32_t pair;
        std::memcpy(&pair, a + r * Kp + 2 * p, sizeof pair);
        const __m512bh y = (__m512bh)_mm512_set1_epi32(pair);
        c[r][0] = _mm512_dpbf16_ps(c[r][0], y, x0);
        c[r][1] = _mm512_dpbf16_ps(c[r][1], y, x1);
      }
    }
    for (int r = 0; r < kRows; ++r) {
      _mm512_storeu_ps(acc + r * kGroupCols, c[r][0]);
      _mm512_storeu_ps(acc + r * kGroupCols + 16, c[r][1]);
    }
  }

  void operator()(const uint16_t* a0, int64_t Kp, const uint16_t* b0, int64_t b_panel, int64_t s_begin, int64_t s_end, int64_t rows,
                  float* acc) const {
    // A K step is 32 values, 16 pairs.
    for (int64_t r = 0; r < rows; r += kRows)
      eight_rows(a0 + r * Kp, Kp, b0, b0 + b_panel, s_begin * 16, s_end * 16, acc + r * kGroupCols);
  }
};

// Row blocks [b0, b1) of C (32 rows each; the last may be short), every column, from op(A) and the packed op(B):
// each block packs its 32 rows of row-major op(A) (or takes them from `a_packed`, all of op(A) packed up front), then
// per group of kGroupCols columns computes every 32 x 32 block over the whole of K with `block` and finishes the
// group. Under a triangle (gemm.h), a block skips the 32-wide K steps whose A is all zero and the column blocks not
// wanted.
template <typename Block>
__attribute__((target("avx512f,avx512bw"))) void row_blocks(const Block& block, const uint16_t* a_packed, const float* A, int64_t lda,
                                                            const uint16_t* bp, int64_t Kp, int64_t M, int64_t N, int64_t K, int64_t b0,
                                                            int64_t b1, float alpha, float beta, float* C, int64_t ldc,
                                                            const GemmEpilogue<float>* ep, const GemmTriangle& tri) {
  const int64_t Np = round_up(N, kBlock);
  uint16_t* const a_block =
      a_packed ? nullptr : static_cast<uint16_t*>(a_block_scratch.get(sizeof(uint16_t) * static_cast<size_t>(kBlock * Kp)));
  alignas(64) float acc[kBlock * kGroupCols];
  const int64_t steps = Kp / kStepK, b_panel = (Kp / 2) * 32;  // b_panel: elements per 16 columns
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t i = blk * kBlock;
    const int64_t last_row = std::min(i + kBlock, M) - 1;
    int64_t j_end = Np, s_begin = 0, s_end = steps;
    if (tri.kind == GemmTriangle::kLowerC) j_end = std::clamp<int64_t>(round_up(last_row + tri.diag + 1, kBlock), 0, Np);
    if (tri.kind == GemmTriangle::kLowerA) s_end = (std::clamp<int64_t>(last_row + tri.diag + 1, 0, K) + kStepK - 1) / kStepK;
    if (tri.kind == GemmTriangle::kUpperA) s_begin = std::clamp<int64_t>(i + tri.diag, 0, K) / kStepK;
    if (j_end == 0) continue;  // no column of these rows is wanted
    if (!a_packed) pack_a_block(M, K, A, lda, a_block, Kp, i, s_begin * kStepK, std::max(s_begin, s_end) * kStepK);
    const uint16_t* a0 = a_packed ? a_packed + i * Kp : a_block;
    for (int64_t g = 0; g < j_end; g += kGroupCols) {
      const int64_t g_end = std::min(g + kGroupCols, j_end);
      for (int64_t j = g; j < g_end; j += kBlock)
        block(a0, Kp, bp + (j / 16) * b_panel, b_panel, s_begin, s_end, last_row + 1 - i, acc + (j - g));
      finish_rows(acc, alpha, beta, C, ldc, i, g, last_row + 1 - i, std::min(g_end, N) - g, ep);
    }
  }
}

void gemm_packed_bf16(Kernel kernel, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                      const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel, const GemmEpilogue<float>* ep,
                      const GemmTriangle& tri) {
  const int64_t Mp = round_up(M, kBlock), Np = round_up(N, kBlock), Kp = round_up(K, kStepK);
  // Uninitialised: the packs write every element, padding included. A transposed op(A) (the weight gradient's dY^T,
  // K the token count) is packed whole up front: per block, each stored row would be read 128 bytes at a time.
  const std::unique_ptr<uint16_t[]> bp(new uint16_t[static_cast<size_t>(Kp * Np)]);
  const std::unique_ptr<uint16_t[]> ap(transA ? new uint16_t[static_cast<size_t>(Mp * Kp)] : nullptr);
  const auto run = [&](int64_t n, int64_t grain, auto&& body) {
    if (parallel) parallel_for(n, grain, body);
    else body(0, n);
  };
  if (transA) run(Mp / kBlock, 1, [&](int64_t s, int64_t e) { pack_a_transposed(M, K, A, lda, ap.get() + s * kBlock * Kp, Kp, s * kBlock, (e - s) * kBlock); });
  run(Np / 16, 1, [&](int64_t s, int64_t e) { pack_b(transB, K, N, B, ldb, bp.get(), Kp, s * 16, e * 16); });
  run(Mp / kBlock, 1, [&](int64_t s, int64_t e) {
    const auto rows = [&](const auto& block) { row_blocks(block, ap.get(), A, lda, bp.get(), Kp, M, N, K, s, e, alpha, beta, C, ldc, ep, tri); };
    if (kernel == Kernel::Amx) rows(AmxBlock{});
    else rows(Avx512Bf16Block{});
  });
}

#else

std::string missing(Kernel) { return "the CPU's bf16 kernels need an x86-64 Linux build"; }

void gemm_packed_bf16(Kernel, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
                      int64_t, bool, const GemmEpilogue<float>*, const GemmTriangle&) {
  throw Error("ERR_TARFLOW_NATIVE", "the CPU's bf16 kernels are not compiled into this build");
}

#endif

// Empty when `kernel` reproduces the reference on the check problems (exact_gemm_check.h), else what differed.
std::string check_against_reference(Kernel kernel) {
  // K 95: the last K pair is half padding; N 150: a second group of kGroupCols columns.
  for (int t = 0; t < 8; ++t) {
    const ExactGemmCheck p(t % 4, t < 4 ? 70 : 33, t < 4 ? 50 : 150, t < 4 ? 95 : 40, 3, 12345u);
    std::vector<float> by_reference = p.c, by_kernel = p.c;
    gemm<float>(p.transA, p.transB, p.M, p.N, p.K, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f, by_reference.data(), p.ldc, false);
    gemm_packed_bf16(kernel, p.transA, p.transB, p.M, p.N, p.K, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f, by_kernel.data(), p.ldc,
                     false, nullptr, {});
    const std::string difference = p.first_difference(by_kernel.data(), kKernelNames[int(kernel)], by_reference.data(), "the reference");
    if (!difference.empty()) return difference;
  }
  return {};
}

// Whether a kernel can run here, decided once per process, then read without the lock: `usable` is published after
// `why`.
struct Standing {
  std::once_flag decided;
  std::atomic<bool> usable{false};
  std::string why;  // when not usable
};
Standing standings[3];  // by Kernel; the reference's is never asked

bool usable(Kernel kernel) {
  Standing& s = standings[int(kernel)];
  std::call_once(s.decided, [&s, kernel] {
    s.why = missing(kernel);
    if (s.why.empty()) {
      const std::string mismatch = check_against_reference(kernel);
      if (!mismatch.empty()) {
        std::fprintf(stderr, "tarflow: the %s bf16 GEMM is not used: it failed its check against the reference: %s. Please "
                             "report this.\n", kKernelNames[int(kernel)], mismatch.c_str());
        s.why = "it failed its check against the reference kernel: " + mismatch;
      }
    }
    s.usable.store(s.why.empty(), std::memory_order_release);
  });
  return s.usable.load(std::memory_order_acquire);
}

// The kernel TARFLOW_CPU_GEMM asks for, or 'auto''s pick: AMX, else AVX-512 BF16, else the reference. A named kernel
// that cannot run here is an error rather than a silent fallback, so a benchmark measures what it names.
Kernel chosen_kernel() {
  const Choice choice = requested_kernel();
  if (choice == Choice::Reference) return Kernel::Reference;
  if (choice == Choice::Auto) return usable(Kernel::Amx) ? Kernel::Amx : usable(Kernel::Avx512Bf16) ? Kernel::Avx512Bf16 : Kernel::Reference;
  const Kernel named = choice == Choice::Amx ? Kernel::Amx : Kernel::Avx512Bf16;
  if (!usable(named))
    throw Error("ERR_TARFLOW_DEVICE", std::string("TARFLOW_CPU_GEMM=") + kKernelNames[int(named)] + ": " + standings[int(named)].why +
                                          " (use auto or reference)");
  return named;
}

}  // namespace

const char* cpu_bf16_gemm_kernel() { return kKernelNames[int(chosen_kernel())]; }

bool gemm_bf16_fast(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float beta, float* C, int64_t ldc, bool parallel, const GemmEpilogue<float>* ep,
                    GemmTriangle tri) {
  const Kernel kernel = chosen_kernel();
  if (kernel == Kernel::Reference) return false;
  gemm_packed_bf16(kernel, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, parallel, ep, tri);
  return true;
}

size_t bf16_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;  // no product runs
  const size_t reference = sizeof(float) * static_cast<size_t>((M + N) * K);
  // The packed op(B), and op(A) whole when transposed, else a block of it per task (parallel_ranges <= Mp / 32 of them).
  // The per-thread blocks are kept between products, so steady-state calls do not allocate. Both fast kernels pack
  // the same way.
  const int64_t Mp = round_up(M, kBlock), Np = round_up(N, kBlock), Kp = round_up(K, kStepK);
  const size_t packed = sizeof(uint16_t) * static_cast<size_t>((Np + Mp) * Kp);
  return std::max(reference, packed);
}

}  // namespace tf
