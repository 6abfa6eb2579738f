// bf16 matrix products on Intel AMX (Advanced Matrix Extensions: Xeon Sapphire Rapids and later), the CPU's fast
// path for precision 'bf16'.
//
// Why: the reference bf16 product (gemm.cc) rounds copies of the operands to bf16 and multiplies them with the
// float kernel, at the fp32 rate of AVX-512. AMX multiplies bf16 tiles in hardware (TDPBF16PS: a 16 x 16 fp32 tile
// += a 16 x 32 bf16 tile times a 32 x 16 one, 16 K pairs per element) at several times that rate.
//
// What changes: nothing in the products (bf16 x bf16 is exact in fp32); the fp32 sums run in the hardware's own
// order, so results differ from the reference's at fp32 rounding, as the GPU's tensor cores do. The hardware also
// treats bf16 denormal inputs as zero (2^-133 x 2^126 gives 0), below 1.2e-38 where nothing here lives. What stays: every element of C is summed by the same tile instructions over
// the whole of K whatever the thread count and whatever M is, so results are deterministic and a sample's rows give
// the same bits in any batch.
//
// Selection (TARFLOW_CPU_GEMM, read per product): 'auto' (default) uses AMX where it is usable, 'reference' the
// reference, 'amx' insists. Usable means: the CPU has AMX-BF16, AMX-TILE and (for the packing) AVX-512F/BW, the
// operating system enables their state, the kernel grants this process the tile state (arch_prctl
// ARCH_REQ_XCOMP_PERM, Linux 5.16+), and a check passes: on small-integer operands, where every sum is exact in any
// order, AMX must reproduce the reference bit for bit for all four transposes with tails in M, N and K.
//
// Layout: op(A) is packed to bf16 rows of K padded to 32 (a tile row is 64 bytes), M padded to 32; op(B) to the
// pair-interleaved ("VNNI") form TDPBF16PS reads: per 16 columns, K/2 rows of 16 (k, k+1) pairs. Each task computes
// 32 x 32 blocks of C in four accumulator tiles over the whole of K, then folds them into C with alpha, beta and
// the epilogue (gemm.h), as the reference kernel does per panel.
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

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define TF_HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define TF_HAVE_AMX 0
#endif

// GCC 12's AVX-512 headers seed masked intrinsics with a self-initialised _mm512_undefined_ps(), which
// -Wmaybe-uninitialized reports at every inlined masked load; the warning is about the header (as in gemm.cc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tf {
namespace {

enum class Choice { Auto, Reference, Amx };  // the order of TARFLOW_CPU_GEMM's values

Choice requested_kernel() { return static_cast<Choice>(env_choice("TARFLOW_CPU_GEMM", {"auto", "reference", "amx"})); }

constexpr int64_t kBlock = 32;  // rows and columns of C per task step: 2 x 2 tiles of 16 x 16
constexpr int64_t kStepK = 32;  // bf16 values of K per tile row (64 bytes)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

#if TF_HAVE_AMX

// The register file's shape: palette 1, tiles 0-3 the 16 x 16 fp32 accumulators, 4-5 two 16-row A tiles, 6-7 two
// B tiles of 16 pair-rows.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Why AMX cannot run here, or empty: the instructions, the operating system's support of their state, and the
// permission to use it (granted once per process; Linux refuses it when a signal stack is too small for the state).
std::string amx_missing() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24)))
    return "this CPU has no AMX-BF16 (it came with Xeon Sapphire Rapids)";
  // The operand packing uses AVX-512F and BW (every AMX CPU so far has them; a build for an older target still
  // compiles them, per function).
  if (!(b & (1u << 16)) || !(b & (1u << 30))) return "this CPU has AMX but not AVX-512F and AVX-512BW";
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return "the operating system does not enable XSAVE";
  uint32_t xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xe6u) != 0xe6u) return "the operating system does not enable the AVX-512 register state";
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

// 16 rows (i0..i0+15) x 4 values of K (k..k+3) of a transposed A: stored rows k..k+3 hold them as 16 consecutive
// floats each. Two k-pairs per 32-bit lane, then (pair, pair) per 64-bit element, scattered to the 16 output rows.
__attribute__((target("avx512f,avx512bw"))) inline void pack_a_16x4(const float* src, int64_t lda, uint16_t* out, int64_t Kp) {
  const __m512i b0 = bf16_lanes(_mm512_loadu_ps(src)), b1 = bf16_lanes(_mm512_loadu_ps(src + lda));
  const __m512i b2 = bf16_lanes(_mm512_loadu_ps(src + 2 * lda)), b3 = bf16_lanes(_mm512_loadu_ps(src + 3 * lda));
  const __m512i p01 = _mm512_or_si512(b0, _mm512_slli_epi32(b1, 16)), p23 = _mm512_or_si512(b2, _mm512_slli_epi32(b3, 16));
  // unpack works within 128-bit lanes: lo holds rows 0,1,4,5,8,9,12,13 and hi rows 2,3,6,7,10,11,14,15.
  const long long r = Kp * 2;  // bytes per output row
  const __m512i at_lo = _mm512_setr_epi64(0, r, 4 * r, 5 * r, 8 * r, 9 * r, 12 * r, 13 * r);
  const __m512i at_hi = _mm512_setr_epi64(2 * r, 3 * r, 6 * r, 7 * r, 10 * r, 11 * r, 14 * r, 15 * r);
  _mm512_i64scatter_epi64(out, at_lo, _mm512_unpacklo_epi32(p01, p23), 1);
  _mm512_i64scatter_epi64(out, at_hi, _mm512_unpackhi_epi32(p01, p23), 1);
}

// Values k0..k0 + 31 of a contiguous row (zeros from `count` on) as 32 bf16 in order: 64 bytes, or 16 (k, k + 1)
// pairs in 32-bit lanes.
__attribute__((target("avx512f,avx512bw"))) inline __m512i row_bf16x32(const float* src, int64_t count) {
  const __mmask16 lo = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
  const __mmask16 hi = count >= 32 ? __mmask16(0xffff) : count <= 16 ? __mmask16(0) : __mmask16((1u << (count - 16)) - 1);
  const __m256i a = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(lo, src)));
  const __m256i b = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(hi, src + 16)));
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
// its source along rows (the stored operand's contiguous direction) and scatters into a few dozen output lines.
__attribute__((target("avx512f,avx512bw"))) void pack_a(bool transA, int64_t M, int64_t K, const float* A, int64_t lda, uint16_t* out, int64_t Kp, int64_t r0, int64_t r1) {
  const int64_t live = std::min(r1, M);
  if (transA) {
    // op(A)(i, k) = A[k * lda + i]: row k of the stored A holds column k of op(A). By blocks of 32 stored rows, read
    // whole (this task's columns of them), each written as 16 x 32 blocks: every output line is written once, whole,
    // and every input line read once. (Walking all of K per 16 output rows read each input line 16 times, from
    // memory; the pack then took three times the product.)
    for (int64_t k0 = 0; k0 < K; k0 += kStepK) {
      const int64_t k1 = std::min(k0 + kStepK, K);
      for (int64_t i0 = r0; i0 < live; i0 += 16) {
        const int64_t i1 = std::min(i0 + 16, live);
        int64_t k = k0;
        if (i1 - i0 == 16)
          for (; k + 4 <= k1; k += 4) pack_a_16x4(A + k * lda + i0, lda, out + i0 * Kp + k, Kp);
        for (; k < k1; ++k) {
          const float* src = A + k * lda;
          for (int64_t i = i0; i < i1; ++i) out[i * Kp + k] = bf16_bits(src[i]);
        }
      }
    }
    for (int64_t i = r0; i < live; ++i) std::fill(out + i * Kp + K, out + (i + 1) * Kp, uint16_t(0));
  } else {
    for (int64_t i = r0; i < live; ++i)
      for (int64_t k = 0; k < Kp; k += kStepK) _mm512_storeu_si512(out + i * Kp + k, row_bf16x32(A + i * lda + k, K - k));
  }
  for (int64_t i = std::max(r0, live); i < r1; ++i) std::fill(out + i * Kp, out + (i + 1) * Kp, uint16_t(0));
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

// C block (rows [i0, i0 + mr), columns [j0, j0 + nr)) = alpha * acc + beta * C, then the epilogue; the same
// update as the reference kernel's (fma for beta 1, never reading C for beta 0).
void finish_block(const float* acc, float alpha, float beta, float* C, int64_t ldc, int64_t i0, int64_t j0, int64_t mr, int64_t nr,
                  const GemmEpilogue<float>* ep) {
  for (int64_t r = 0; r < mr; ++r) {
    const float* a = acc + r * kBlock;
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

// Rows [i0, i1) of C (multiples of 32 but the matrix's end), every column, from the packed operands.
// Under a triangle (gemm.h), a block skips the 32-wide K steps whose A is all zero and the column blocks not wanted.
__attribute__((target("amx-tile,amx-bf16"))) void amx_rows(const uint16_t* ap, const uint16_t* bp, int64_t Kp, int64_t M, int64_t N,
                                                          int64_t K, int64_t i0, int64_t i1, float alpha, float beta, float* C,
                                                          int64_t ldc, const GemmEpilogue<float>* ep, const GemmTriangle& tri) {
  TileConfig cfg;
  for (int t = 0; t < 4; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;      // 16 x 16 fp32
  for (int t = 4; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;      // A: 16 rows x 32 bf16; B: 16 pair-rows x 16 pairs
  _tile_loadconfig(&cfg);
  alignas(64) float acc[kBlock * kBlock];
  const int64_t a_stride = Kp * 2, steps = Kp / kStepK, b_panel = (Kp / 2) * 32;  // b_panel: elements per 16 columns
  const int64_t Np = round_up(N, kBlock);
  for (int64_t i = i0; i < i1; i += kBlock) {
    const uint16_t* a0 = ap + i * Kp;
    const uint16_t* a1 = a0 + 16 * Kp;
    const int64_t last_row = std::min(i + kBlock, M) - 1;
    int64_t j_end = Np, s_begin = 0, s_end = steps;
    if (tri.kind == GemmTriangle::kLowerC) j_end = std::clamp<int64_t>(round_up(last_row + tri.diag + 1, kBlock), 0, Np);
    if (tri.kind == GemmTriangle::kLowerA) s_end = (std::clamp<int64_t>(last_row + tri.diag + 1, 0, K) + kStepK - 1) / kStepK;
    if (tri.kind == GemmTriangle::kUpperA) s_begin = std::clamp<int64_t>(i + tri.diag, 0, K) / kStepK;
    for (int64_t j = 0; j < j_end; j += kBlock) {
      const uint16_t* b0 = bp + (j / 16) * b_panel;
      const uint16_t* b1 = b0 + b_panel;
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
      _tile_stored(0, acc, kBlock * 4);
      _tile_stored(1, acc + 16, kBlock * 4);
      _tile_stored(2, acc + 16 * kBlock, kBlock * 4);
      _tile_stored(3, acc + 16 * kBlock + 16, kBlock * 4);
      finish_block(acc, alpha, beta, C, ldc, i, j, std::min(kBlock, M - i), std::min(kBlock, N - j), ep);
    }
  }
  _tile_release();
}

void gemm_amx(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
              int64_t ldb, float beta, float* C, int64_t ldc, bool parallel, const GemmEpilogue<float>* ep, const GemmTriangle& tri) {
  const int64_t Mp = round_up(M, kBlock), Np = round_up(N, kBlock), Kp = round_up(K, kStepK);
  // Uninitialised: the packs write every element, padding included.
  const std::unique_ptr<uint16_t[]> ap(new uint16_t[static_cast<size_t>(Mp * Kp)]), bp(new uint16_t[static_cast<size_t>(Kp * Np)]);
  const auto run = [&](int64_t n, int64_t grain, auto&& body) {
    if (parallel) parallel_for(n, grain, body);
    else body(0, n);
  };
  run(Mp / 16, 4, [&](int64_t s, int64_t e) { pack_a(transA, M, K, A, lda, ap.get(), Kp, s * 16, e * 16); });
  run(Np / 16, 1, [&](int64_t s, int64_t e) { pack_b(transB, K, N, B, ldb, bp.get(), Kp, s * 16, e * 16); });
  run(Mp / kBlock, 1, [&](int64_t s, int64_t e) {
    amx_rows(ap.get(), bp.get(), Kp, M, N, K, s * kBlock, std::min(M, e * kBlock), alpha, beta, C, ldc, ep, tri);
  });
}

#else

std::string amx_missing() { return "AMX needs an x86-64 Linux build"; }

void gemm_amx(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*, int64_t, bool,
              const GemmEpilogue<float>*, const GemmTriangle&) {
  throw Error("ERR_TARFLOW_NATIVE", "AMX is not compiled into this build");
}

#endif

// Empty when AMX reproduces the reference on the check problems (exact_gemm_check.h), else what differed.
std::string check_amx_against_reference() {
  for (int t = 0; t < 4; ++t) {
    const ExactGemmCheck p(t, 70, 50, 90, 3, 12345u);
    std::vector<float> by_reference = p.c, by_amx = p.c;
    gemm<float>(p.transA, p.transB, p.M, p.N, p.K, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f, by_reference.data(), p.ldc, false);
    gemm_amx(p.transA, p.transB, p.M, p.N, p.K, 1.0f, p.a.data(), p.lda, p.b.data(), p.ldb, 1.0f, by_amx.data(), p.ldc, false, nullptr, {});
    const std::string difference = p.first_difference(by_amx.data(), "AMX", by_reference.data(), "the reference");
    if (!difference.empty()) return difference;
  }
  return {};
}

// Decided once per process, then read without the lock: `usable` is published after `why`.
struct AmxStanding {
  std::once_flag decided;
  std::atomic<bool> usable{false};
  std::string why;  // when not usable
};
AmxStanding amx_standing;

bool use_amx() {
  const Choice choice = requested_kernel();
  if (choice == Choice::Reference) return false;
  AmxStanding& s = amx_standing;
  std::call_once(s.decided, [&s] {
    s.why = amx_missing();
    if (s.why.empty()) {
      const std::string mismatch = check_amx_against_reference();
      if (!mismatch.empty()) {
        std::fprintf(stderr, "tarflow: the AMX bf16 GEMM is not used: it failed its check against the reference: %s. bf16 products "
                             "run on the reference kernel; please report this.\n", mismatch.c_str());
        s.why = "it failed its check against the reference kernel: " + mismatch;
      }
    }
    s.usable.store(s.why.empty(), std::memory_order_release);
  });
  const bool usable = s.usable.load(std::memory_order_acquire);
  if (!usable && choice == Choice::Amx) throw Error("ERR_TARFLOW_DEVICE", "TARFLOW_CPU_GEMM=amx: " + s.why + " (use auto or reference)");
  return usable;
}

}  // namespace

const char* cpu_bf16_gemm_kernel() { return use_amx() ? "amx" : "reference"; }

bool gemm_bf16_fast(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float beta, float* C, int64_t ldc, bool parallel, const GemmEpilogue<float>* ep,
                    GemmTriangle tri) {
  if (!use_amx()) return false;
  gemm_amx(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, parallel, ep, tri);
  return true;
}

size_t bf16_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0 || K <= 0) return 0;  // no product runs
  const size_t reference = sizeof(float) * static_cast<size_t>((M + N) * K);
  const size_t amx = sizeof(uint16_t) * static_cast<size_t>((round_up(M, kBlock) + round_up(N, kBlock)) * round_up(K, kStepK));
  return std::max(reference, amx);
}

}  // namespace tf
