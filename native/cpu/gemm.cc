// Packed, cache-blocked GEMM (GotoBLAS/BLIS-style layering, written for this project).
//
// Layering, outermost first, for one thread's rectangle of C:
//   jc: columns of C in blocks of NC  -> the packed B block (KC x NC) is sized to stay in L2
//   pc: K in blocks of kc             -> kc depends only on K, which fixes every element's summation order
//   ir: rows of C in panels of MR     -> one packed A panel (MR x kc) is reused from L1 across the whole jr sweep
//   jr: columns in panels of NR       -> micro-kernel: MR x NR accumulators held in registers for all of kc
// With the ir-outer order the A panel is the L1-resident operand and B streams from L2, which the hardware
// prefetcher handles well; so row-major A is packed just in time, one panel at a time (or not at all, for
// narrow N), and only transposed A is packed as an MC-row block, to read its source rows contiguously.
//
// Threads get disjoint rectangles of C (split over M and/or N, never over K), each running the serial
// algorithm above; so a C element's value never depends on how many threads there are.
#include "gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/threads.h"
#include "gelu.h"
#include "scratch.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#define TF_GEMM_SIMD_F32 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define TF_GEMM_SIMD_F32 1
#endif

// GCC 12's AVX-512 headers seed masked intrinsics with a self-initialised _mm512_undefined_ps(), which
// -Wmaybe-uninitialized reports at every inlined shuffle; the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace tf {
namespace {

// How the micro-kernel folds its accumulators into C. kOverwrite never reads C (beta == 0 on the first K block).
enum UpdateMode { kOverwrite = 0, kAccumulate = 1, kScale = 2 };

// ---------------------------------------------------------------------------------------------------------
// Micro-kernels. Each computes acc = sum_k a[k*MR + r] * b[k*NR + j] over packed panels, then updates the
// mr x nr corner of C. Edge tiles run the same arithmetic as interior ones (masked loads/stores, not a
// different code path), so an element's result does not depend on where a thread split puts tile edges.

#if defined(__AVX512F__)

// 14 x 32: 28 zmm accumulators + 2 B vectors + 1 broadcast = 31 of 32 registers. Per k step, 28 FMAs
// against 16 loads keeps the FMA pipes the bottleneck. NV = 1 gives a 14 x 16 kernel for C with at most 16
// columns (dX of the 16-wide layer), where the wide kernel would waste half its lanes.
constexpr int kMRf = 14, kNRf = 32, kNRfNarrow = 16, kVecF32 = 16;

// kDirectA: read A straight from row-major storage (row stride lda) instead of a packed panel. For narrow N
// the A panel is used by only a couple of kernel calls, so transposing it into a packed panel costs as much
// as the multiply itself. Otherwise A is k-major, MR values a k step: a packed panel (lda 0: steps MR apart), or a
// transposed A read in place (steps lda apart, the stored rows; gemm_serial_nr says when). Every kernel below
// takes the same three forms.
template <bool kDirectA, int NV>
void kernel_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, float* c,
                int64_t ldc, float alpha, float beta, int mode, int mr, int nr) {
  constexpr int NR = 16 * NV;
  __m512 acc[kMRf][NV];
#pragma GCC unroll 14
  for (int r = 0; r < kMRf; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);
#pragma GCC unroll 14
    for (int r = 0; r < kMRf; ++r) {
      __m512 av = _mm512_set1_ps(kDirectA ? a[r * lda] : a[r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
    a += kDirectA ? 1 : lda ? lda : kMRf;
    b += NR;
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  __mmask16 m[NV];
  for (int v = 0; v < NV; ++v) {
    const int w = nr - 16 * v;
    m[v] = w >= 16 ? __mmask16(0xFFFF) : w <= 0 ? __mmask16(0) : __mmask16((1u << w) - 1);
  }
  // The update is spelled with explicit FMAs: left as mul + add, the compiler may contract it in one kernel
  // instantiation and not another, and results would then depend on which kernel a thread split picked.
#pragma GCC unroll 14
  for (int r = 0; r < kMRf; ++r) {
    if (r >= mr) break;
    float* cr = c + r * ldc;
    for (int v = 0; v < NV; ++v) {
      __m512 x;
      if (nr == NR) {
        if (mode == kOverwrite) x = _mm512_mul_ps(va, acc[r][v]);
        else if (mode == kAccumulate) x = _mm512_fmadd_ps(va, acc[r][v], _mm512_loadu_ps(cr + 16 * v));
        else x = _mm512_fmadd_ps(va, acc[r][v], _mm512_mul_ps(vb, _mm512_loadu_ps(cr + 16 * v)));
        _mm512_storeu_ps(cr + 16 * v, x);
      } else {
        if (mode == kOverwrite) x = _mm512_mul_ps(va, acc[r][v]);
        else if (mode == kAccumulate) x = _mm512_fmadd_ps(va, acc[r][v], _mm512_maskz_loadu_ps(m[v], cr + 16 * v));
        else x = _mm512_fmadd_ps(va, acc[r][v], _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m[v], cr + 16 * v)));
        _mm512_mask_storeu_ps(cr + 16 * v, m[v], x);
      }
    }
  }
}

#elif defined(__AVX2__) && defined(__FMA__)

// 6 x 16: 12 ymm accumulators + 2 B vectors + 1 broadcast within the 16 ymm registers.
constexpr int kMRf = 6, kNRf = 16, kNRfNarrow = 16, kVecF32 = 16;  // the kernel's NV is always 1

template <bool kDirectA, int NV>
void kernel_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, float* c,
                int64_t ldc, float alpha, float beta, int mode, int mr, int nr) {
  __m256 acc[kMRf][2];
#pragma GCC unroll 6
  for (int r = 0; r < kMRf; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kMRf; ++r) {
      __m256 av = _mm256_broadcast_ss(kDirectA ? a + r * lda : a + r);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
    a += kDirectA ? 1 : lda ? lda : kMRf;
    b += kNRf;
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
#pragma GCC unroll 6
  for (int r = 0; r < kMRf; ++r) {
    if (r >= mr) break;
    float* cr = c + r * ldc;
    __m256 v0, v1;
    if (mode == kOverwrite) {
      v0 = _mm256_mul_ps(va, acc[r][0]);
      v1 = _mm256_mul_ps(va, acc[r][1]);
    } else if (mode == kAccumulate) {
      v0 = _mm256_fmadd_ps(va, acc[r][0], _mm256_maskload_ps(cr, m0));
      v1 = _mm256_fmadd_ps(va, acc[r][1], _mm256_maskload_ps(cr + 8, m1));
    } else {
      v0 = _mm256_fmadd_ps(va, acc[r][0], _mm256_mul_ps(vb, _mm256_maskload_ps(cr, m0)));
      v1 = _mm256_fmadd_ps(va, acc[r][1], _mm256_mul_ps(vb, _mm256_maskload_ps(cr + 8, m1)));
    }
    _mm256_maskstore_ps(cr, m0, v0);
    _mm256_maskstore_ps(cr + 8, m1, v1);
  }
}

#elif defined(__aarch64__) && defined(__ARM_NEON)

// 6 x 16: 24 q-register accumulators + 4 B vectors + 2 A vectors of the 32. Per k step, 24 FMAs (each row's A value
// taken from a vector lane, so A costs 2 loads, not 6 broadcasts) against 6 loads. AArch64 always has NEON, so this is
// what Apple Silicon, Graviton and Raspberry Pi builds run; before it they got the portable kernel.
constexpr int kMRf = 6, kNRf = 16, kNRfNarrow = 16, kVecF32 = 4;

// acc[v] += b[v] * a[L] for each of the row's NV vectors (the lane must be a compile-time constant).
template <int L, int NV>
inline void fma_lane(float32x4_t (&acc)[NV], const float32x4_t (&b)[NV], float32x4_t a) {
  for (int v = 0; v < NV; ++v) acc[v] = vfmaq_laneq_f32(acc[v], b[v], a, L);
}
template <int L, int NV>
inline void fma_lane(float32x4_t (&acc)[NV], const float32x4_t (&b)[NV], float32x2_t a) {
  for (int v = 0; v < NV; ++v) acc[v] = vfmaq_lane_f32(acc[v], b[v], a, L);
}

template <bool kDirectA, int NV>
void kernel_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, float* c,
                int64_t ldc, float alpha, float beta, int mode, int mr, int nr) {
  static_assert(kMRf == 6, "the k step below spells out six rows");
  float32x4_t acc[kMRf][NV];
#pragma GCC unroll 6
  for (int r = 0; r < kMRf; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = vdupq_n_f32(0.0f);
  for (int64_t k = 0; k < kc; ++k) {
    float32x4_t bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = vld1q_f32(b + 4 * v);
    float32x4_t a0;
    float32x2_t a1;
    if constexpr (kDirectA) {  // rows lda apart, loaded into the lanes one by one
      a0 = vld1q_lane_f32(a, vdupq_n_f32(0.0f), 0);
      a0 = vld1q_lane_f32(a + lda, a0, 1);
      a0 = vld1q_lane_f32(a + 2 * lda, a0, 2);
      a0 = vld1q_lane_f32(a + 3 * lda, a0, 3);
      a1 = vld1_lane_f32(a + 4 * lda, vdup_n_f32(0.0f), 0);
      a1 = vld1_lane_f32(a + 5 * lda, a1, 1);
    } else {
      a0 = vld1q_f32(a);
      a1 = vld1_f32(a + 4);  // 64 bits: a 128-bit load would read past the panel's last k step
    }
    fma_lane<0>(acc[0], bv, a0);
    fma_lane<1>(acc[1], bv, a0);
    fma_lane<2>(acc[2], bv, a0);
    fma_lane<3>(acc[3], bv, a0);
    fma_lane<0>(acc[4], bv, a1);
    fma_lane<1>(acc[5], bv, a1);
    a += kDirectA ? 1 : lda ? lda : kMRf;
    b += 4 * NV;
  }
  // The sums leave the registers unconditionally, every index a constant: GCC 12 keeps acc in memory, storing it at
  // every k step, as soon as any access to it depends on mr or nr.
  float sums[kMRf][4 * NV];
#pragma GCC unroll 6
  for (int r = 0; r < kMRf; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vst1q_f32(&sums[r][4 * v], acc[r][v]);
  // Partial vectors go through a zero-padded copy of C, so edge tiles run the same vector arithmetic as interior ones.
  const float32x4_t va = vdupq_n_f32(alpha), vb = vdupq_n_f32(beta);
  for (int r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    for (int v = 0; v < NV; ++v) {
      const int w = nr - 4 * v;
      if (w <= 0) break;
      float edge[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      float* dst = w >= 4 ? cr + 4 * v : edge;
      if (w < 4 && mode != kOverwrite) std::memcpy(edge, cr + 4 * v, sizeof(float) * w);
      const float32x4_t sum = vld1q_f32(&sums[r][4 * v]);
      float32x4_t x;
      if (mode == kOverwrite) x = vmulq_f32(va, sum);
      else if (mode == kAccumulate) x = vfmaq_f32(vld1q_f32(dst), va, sum);
      else x = vfmaq_f32(vmulq_f32(vb, vld1q_f32(dst)), va, sum);
      vst1q_f32(dst, x);
      if (w < 4) std::memcpy(cr + 4 * v, edge, sizeof(float) * w);
    }
  }
}

#endif

template <typename T>
inline T madd(T a, T b, T c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  volatile T p = a * b;  // volatile blocks contraction so every column rounds the same way
  return p + c;
#endif
}

// Portable kernel: used for double everywhere and for float when no SIMD path was compiled in. Plain loops
// over a fixed-size accumulator block, which compilers vectorise along NR.
template <typename T, int MR, int NR, bool kDirectA>
void kernel_generic(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b, T* c, int64_t ldc,
                    T alpha, T beta, int mode, int mr, int nr) {
  T acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = T(0);
  for (int64_t k = 0; k < kc; ++k) {
    for (int r = 0; r < MR; ++r) {
      const T av = kDirectA ? a[r * lda] : a[r];
      for (int j = 0; j < NR; ++j) acc[r][j] += av * b[j];
    }
    a += kDirectA ? 1 : lda ? lda : MR;
    b += NR;
  }
  for (int r = 0; r < mr; ++r) {
    T* cr = c + r * ldc;
    // Explicit fma (when the target has it): the compiler must not contract the vectorised body and the
    // scalar tail differently, or an element's value would depend on its column position in the tile.
    for (int j = 0; j < nr; ++j) {
      if (mode == kOverwrite) cr[j] = alpha * acc[r][j];
      else cr[j] = madd(alpha, acc[r][j], mode == kAccumulate ? cr[j] : beta * cr[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Per-type blocking. KC bounds the packed panels' depth; NC bounds the packed B block (KC x NC in L2).

template <typename T>
struct Blocking;

template <>
struct Blocking<float> {
#if defined(TF_GEMM_SIMD_F32)
  static constexpr int MR = kMRf, NR = kNRf, NR_NARROW = kNRfNarrow;
  static constexpr bool kInPlaceA = true;
  template <bool kDirectA, int W>
  static void kernel(int64_t kc, const float* a, int64_t lda, const float* b, float* c, int64_t ldc, float alpha,
                     float beta, int mode, int mr, int nr) {
    kernel_f32<kDirectA, W / kVecF32>(kc, a, lda, b, c, ldc, alpha, beta, mode, mr, nr);
  }
#else
  // 6 x 8: with 128-bit vectors (SSE2, the least an x86-64 build has) 12 accumulators + 2 B + 1 A fit the 16
  // registers; the 4 x 16 this was before spilled, and ran at a quarter of the speed (gemm_bench, -march=x86-64).
  static constexpr int MR = 6, NR = 8, NR_NARROW = 8;
  // GCC 12 vectorises the generic kernel's in-place A reads across k and over-reads past the last row.
  static constexpr bool kInPlaceA = false;
  template <bool kDirectA, int W>
  static void kernel(int64_t kc, const float* a, int64_t lda, const float* b, float* c, int64_t ldc, float alpha,
                     float beta, int mode, int mr, int nr) {
    kernel_generic<float, MR, W, kDirectA>(kc, a, lda, b, c, ldc, alpha, beta, mode, mr, nr);
  }
#endif
  // KC: a 14 x 384 A panel (21 KiB) sits in L1 during its jr sweep; NC: the 384 x 512 B block (768 KiB)
  // stays in the 1 MiB L2. Neither was sensitive in tuning (256..512, 256..1024 within noise).
  static constexpr int64_t KC = 384, NC = 512, MC = 16 * MR;
};

template <>
struct Blocking<double> {
  static constexpr int MR = 4, NR = 16, NR_NARROW = 16;
  template <bool kDirectA, int W>
  static void kernel(int64_t kc, const double* a, int64_t lda, const double* b, double* c, int64_t ldc,
                     double alpha, double beta, int mode, int mr, int nr) {
    kernel_generic<double, MR, W, kDirectA>(kc, a, lda, b, c, ldc, alpha, beta, mode, mr, nr);
  }
  static constexpr int64_t KC = 256, NC = 256, MC = 16 * MR;
  static constexpr bool kInPlaceA = false;
};

// ---------------------------------------------------------------------------------------------------------
// Packing. Panels are k-major (MR or NR values per k step) and zero-padded to full width, so the kernel
// never branches on edges inside its k loop.

// d[0..W) = s[0..n) followed by zeros (n <= W). The contiguous-copy packs are dominated by this; left to
// itself the compiler turns it into a memmove call per k step.
template <typename T, int W>
inline void copy_pad(T* __restrict d, const T* __restrict s, int n) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    for (int o = 0; o < W; o += 16) {
      const int width = W - o < 16 ? W - o : 16, c = n - o < 0 ? 0 : n - o > width ? width : n - o;
      const __mmask16 lm = __mmask16((1u << c) - 1), sm = __mmask16((1u << width) - 1);
      _mm512_mask_storeu_ps(reinterpret_cast<float*>(d) + o, sm,
                            _mm512_maskz_loadu_ps(lm, reinterpret_cast<const float*>(s) + o));
    }
    return;
  }
#endif
  if (n == W) {  // a fixed size: inlined as vector moves, where a runtime-sized loop became a memmove call
    std::memcpy(d, s, sizeof(T) * W);
    return;
  }
  int i = 0;
  for (; i < n; ++i) d[i] = s[i];
  for (; i < W; ++i) d[i] = T(0);
}

// Transposing packs: dst[k * stride + i] = src[i * ld + k] for i < n (zero for n <= i < W), k < kc. With
// AVX-512 this runs as 16 x 16 register transposes (three shuffle stages), several times faster than the
// scalar gather it replaces; the forward pass's W^T operand and small-M calls lean on it.
template <typename T, int W>
void pack_transpose(const T* src, int64_t ld, int n, int64_t kc, T* __restrict dst, int64_t stride) {
  int64_t k0 = 0;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4 && W <= 16) {
    const __mmask16 sm = __mmask16((1u << W) - 1);
    for (; k0 + 16 <= kc; k0 += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < n ? _mm512_loadu_ps(reinterpret_cast<const float*>(src) + i * ld + k0) : _mm512_setzero_ps();
      for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      // r[4i + c] now holds, in 128-bit lane l, rows 4i..4i+3 of column 4l + c; a 4 x 4 transpose of lanes
      // finishes the job.
      float* d = reinterpret_cast<float*>(dst) + k0 * stride;
      for (int c = 0; c < 4; ++c) {
        const __m512 u0 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 u1 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
        const __m512 u2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 u3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
        _mm512_mask_storeu_ps(d + (0 + c) * stride, sm, _mm512_shuffle_f32x4(u0, u2, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_mask_storeu_ps(d + (4 + c) * stride, sm, _mm512_shuffle_f32x4(u0, u2, _MM_SHUFFLE(3, 1, 3, 1)));
        _mm512_mask_storeu_ps(d + (8 + c) * stride, sm, _mm512_shuffle_f32x4(u1, u3, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_mask_storeu_ps(d + (12 + c) * stride, sm, _mm512_shuffle_f32x4(u1, u3, _MM_SHUFFLE(3, 1, 3, 1)));
      }
    }
  }
#elif defined(__AVX2__) && defined(__FMA__)
  // The AVX2 kernel's packs (A panels of 6 rows, B panels of 16): 8 x 8 register transposes, each group of up to 8
  // destination values per k stored under a mask. The scalar gather below took a tenth of an AVX2 training step.
  if constexpr (sizeof(T) == 4 && W <= 16) {
    for (; k0 + 8 <= kc; k0 += 8) {
      for (int i0 = 0; i0 < W; i0 += 8) {
        const int width = W - i0 < 8 ? W - i0 : 8;
        __m256 r[8];
        for (int i = 0; i < 8; ++i)
          r[i] = i0 + i < n ? _mm256_loadu_ps(reinterpret_cast<const float*>(src) + (i0 + i) * ld + k0) : _mm256_setzero_ps();
        // After two interleaving stages q[c] (c < 4) holds column k0 + c of rows i0..i0+3 in its low 128 bits and
        // column k0 + c + 4 in its high ones; q[4 + c] the same for rows i0+4..i0+7. Pairing halves finishes it.
        __m256 t[8], q[8];
        for (int i = 0; i < 4; ++i) {
          t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
          t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for (int h = 0; h < 2; ++h) {
          q[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
          q[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
          q[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
          q[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(width), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        float* d = reinterpret_cast<float*>(dst) + k0 * stride + i0;
        for (int c = 0; c < 4; ++c) {
          const __m256 lo = _mm256_permute2f128_ps(q[c], q[4 + c], 0x20), hi = _mm256_permute2f128_ps(q[c], q[4 + c], 0x31);
          if (width == 8) {
            _mm256_storeu_ps(d + c * stride, lo);
            _mm256_storeu_ps(d + (c + 4) * stride, hi);
          } else {
            _mm256_maskstore_ps(d + c * stride, mask, lo);
            _mm256_maskstore_ps(d + (c + 4) * stride, mask, hi);
          }
        }
      }
    }
  }
#elif defined(__aarch64__) && defined(__ARM_NEON)
  // The NEON kernel's packs (A panels of 6 rows, B panels of 16): 4 x 4 transposes in registers (vtrn, then the
  // halves recombined), as the AVX2 ones above; the last group of a 6-wide panel stores 2 values per k.
  if constexpr (sizeof(T) == 4 && W <= 16 && W % 2 == 0) {
    for (; k0 + 4 <= kc; k0 += 4) {
      for (int i0 = 0; i0 < W; i0 += 4) {
        const int width = W - i0 < 4 ? W - i0 : 4;
        float32x4_t r[4];
        for (int i = 0; i < 4; ++i)
          r[i] = i0 + i < n ? vld1q_f32(reinterpret_cast<const float*>(src) + (i0 + i) * ld + k0) : vdupq_n_f32(0.0f);
        const float32x4x2_t t01 = vtrnq_f32(r[0], r[1]), t23 = vtrnq_f32(r[2], r[3]);
        const float32x4_t col[4] = {vcombine_f32(vget_low_f32(t01.val[0]), vget_low_f32(t23.val[0])),
                                    vcombine_f32(vget_low_f32(t01.val[1]), vget_low_f32(t23.val[1])),
                                    vcombine_f32(vget_high_f32(t01.val[0]), vget_high_f32(t23.val[0])),
                                    vcombine_f32(vget_high_f32(t01.val[1]), vget_high_f32(t23.val[1]))};
        float* d = reinterpret_cast<float*>(dst) + k0 * stride + i0;
        for (int c = 0; c < 4; ++c) {
          float* dc = d + c * stride;
          if (width == 4)
            vst1q_f32(dc, col[c]);
          else
            vst1_f32(dc, vget_low_f32(col[c]));
        }
      }
    }
  }
#endif
  constexpr int64_t kChunk = 16;
  for (; k0 < kc; k0 += kChunk) {
    const int64_t k1 = std::min(kc, k0 + kChunk);
    for (int i = 0; i < n; ++i) {
      const T* row = src + i * ld;
      for (int64_t k = k0; k < k1; ++k) dst[k * stride + i] = row[k];
    }
    for (int i = n; i < W; ++i)
      for (int64_t k = k0; k < k1; ++k) dst[k * stride + i] = T(0);
  }
}

// transA: op(A)[i, k] = a[k * lda + i]. Packs mc rows (all of this block's MR-panels at once) x kc, walking
// each source row once across the whole block: panel-by-panel packing would read every source row in
// MR-wide strided slivers, which the prefetchers handle badly. Under a triangular A, panels is how many panels
// (counted from the first) are read at step k: panel p (its rows from row0 = p * MR) reads nothing at steps before
// k_begin(row0) or from k_end(row0 + MR - 1) on (gemm_serial_nr), so those are not packed.
template <typename T, int MR, typename Panels>
void pack_a_block_trans(const T* a, int64_t lda, int64_t mc, int64_t kc, T* __restrict dst, Panels panels) {
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = a + k * lda;
    const auto [first, end] = panels(k);
    T* d = dst + k * MR + first * MR * kc;
    for (int64_t ir = first * MR; ir < std::min(mc, end * MR); ir += MR, d += MR * kc)
      copy_pad<T, MR>(d, src + ir, static_cast<int>(std::min<int64_t>(MR, mc - ir)));
  }
}

// !transA: op(A)[i, k] = a[i * lda + k]; packs one panel of mr (<= MR) rows x kc: a gather across the rows,
// walked in k chunks so each row's cache lines stay hot while they are transposed.
template <typename T, int MR>
void pack_a_panel(const T* a, int64_t lda, int mr, int64_t kc, T* __restrict dst) {
  pack_transpose<T, MR>(a, lda, mr, kc, dst, MR);
}

// b points at op(B)[k0, j0]; packs kc x nc into NR-wide panels (panel p at dst + p * NR * kc).
template <typename T, int NR>
void pack_b(bool transB, const T* b, int64_t ldb, int64_t nc, int64_t kc, T* __restrict dst) {
  if (!transB) {
    // op(B)[k, j] = b[k * ldb + j]: walk each source row once across all panels.
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = b + k * ldb;
      T* d = dst + k * NR;
      for (int64_t jr = 0; jr < nc; jr += NR, d += NR * kc)
        copy_pad<T, NR>(d, src + jr, static_cast<int>(std::min<int64_t>(NR, nc - jr)));
    }
    return;
  }
  // op(B)[k, j] = b[j * ldb + k]: transpose nr rows of b into each panel, 16 columns at a time.
  constexpr int kW = NR < 16 ? NR : 16;
  for (int64_t jr = 0; jr < nc; jr += NR) {
    T* d = dst + jr * kc;
    for (int h = 0; h < NR; h += kW) {
      const int64_t left = nc - jr - h;
      const int n = static_cast<int>(left < 0 ? 0 : left > kW ? kW : left);
      pack_transpose<T, kW>(b + (jr + h) * ldb, ldb, n, kc, d + h, NR);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The packed panels live in per-thread scratch (scratch.h), so steady-state calls never allocate.
thread_local Scratch scratch_a, scratch_b;

// K block size: a function of K alone (never of M, N or thread count), balanced so the last block is not a
// sliver.
template <typename T>
int64_t k_block(int64_t K) {
  const int64_t nb = (K + Blocking<T>::KC - 1) / Blocking<T>::KC;
  return (K + nb - 1) / nb;
}

// C = beta * C for the degenerate cases (K == 0 or alpha == 0, or rows of op(A) a triangle makes all zero),
// honouring "beta == 0 never reads C".
template <typename T>
void scale_c(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    T* cr = C + i * ldc;
    if (beta == T(0)) std::fill(cr, cr + N, T(0));
    else if (beta != T(1))
      for (int64_t j = 0; j < N; ++j) cr[j] *= beta;
  }
}

// What a triangle (gemm.h) leaves of the product for the rows [row0, row0 + mr): the k range [begin, end) of op(A)
// that may be nonzero, and how many columns of C are wanted.
struct PanelRange {
  int64_t k_begin, k_end, cols;
};

inline PanelRange panel_range(const GemmTriangle& tri, int64_t row0, int mr, int64_t K, int64_t N) {
  const int64_t last_row = row0 + mr - 1;
  PanelRange r{0, K, N};
  if (tri.kind == GemmTriangle::kLowerA) r.k_end = std::clamp<int64_t>(last_row + tri.diag + 1, 0, K);
  if (tri.kind == GemmTriangle::kUpperA) r.k_begin = std::clamp<int64_t>(row0 + tri.diag, 0, K);
  if (tri.kind == GemmTriangle::kLowerC) r.cols = std::clamp<int64_t>(last_row + tri.diag + 1, 0, N);
  return r;
}

template <typename T, int NR>
void gemm_serial_nr(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                    int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const GemmEpilogue<T>* ep,
                    const GemmTriangle& tri, const T* prepacked) {
  using Bk = Blocking<T>;
  constexpr int MR = Bk::MR;
  const int64_t kcb = k_block<T>(K);
  const int64_t ncb = std::min<int64_t>(Bk::NC, (N + NR - 1) / NR * NR);
  const int64_t mcb = transA ? std::min<int64_t>(Bk::MC, (M + MR - 1) / MR * MR) : MR;
  T* ap = static_cast<T*>(scratch_a.get(sizeof(T) * mcb * kcb));
  T* const b_scratch = prepacked ? nullptr : static_cast<T*>(scratch_b.get(sizeof(T) * kcb * ncb));
  const T* bp = b_scratch;
  const int first_mode = beta == T(0) ? kOverwrite : beta == T(1) ? kAccumulate : kScale;
  // Reading A in place skips the transposing pack, which costs about as much as the multiply once N is no
  // wider than one panel (each packed A element would feed just NR FMAs). For wider N the packed panel wins
  // (contiguous broadcasts, no TLB/set pressure from MR row streams). Never when lda is a multiple of 4 KiB:
  // the MR rows would alias to one L1 set and evict each other.
  const bool direct_a = Bk::kInPlaceA && !transA && N <= NR && (lda * sizeof(T)) % 4096 != 0;
  // A transposed A is already k-major: each k step's MR values of a panel are adjacent in a stored row, so the
  // kernel can read them where they are, lda apart, instead of from a packed copy. Packing it cost as much as a
  // third of the weight gradients' products (dY^T X, K the batch's tokens, where each packed value feeds only N
  // FMAs): in place, the `small` preset's dW products with 384 and 512 rows ran 1.45-1.5 times as fast (gemm_bench's
  // dW cases, 2-core EPYC; those with 128 rows within noise). Not when lda is a multiple of 4 KiB, as above.
  const bool in_place_at = Bk::kInPlaceA && transA && (lda * sizeof(T)) % 4096 != 0;
  // The part of B any row may use: columns of a lower C, k of a triangular A (the first and last rows bound it).
  const PanelRange first = panel_range(tri, 0, 1, K, N), last = panel_range(tri, M - 1, 1, K, N);
  const int64_t n_used = last.cols, k_used_begin = first.k_begin, k_used_end = last.k_end;

  for (int64_t jc = 0; jc < n_used; jc += ncb) {
    const int64_t nc = std::min(ncb, n_used - jc);
    // K blocks stay on the grid of k_block(K) whatever the triangle, so each element sums in the same order as
    // in the full product.
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min(kcb, K - pc);
      const bool b_used = pc < k_used_end && pc + kc > k_used_begin;
      if (b_used && prepacked) bp = prepacked + jc * K + pc * ((nc + NR - 1) / NR * NR);  // PackedB's layout
      else if (b_used) pack_b<T, NR>(transB, transB ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, nc, kc, b_scratch);
      for (int64_t ic = 0; ic < M; ic += mcb) {
        const int64_t mc = std::min(mcb, M - ic);
        if (transA && b_used && !in_place_at) {
          const int64_t block_panels = (mc + MR - 1) / MR;
          // The panels of this block that read step pc + k: those whose rows' k range (panel_range) holds it.
          auto panels = [&](int64_t k) -> std::pair<int64_t, int64_t> {
            const int64_t kg = pc + k, rel = kg - tri.diag - ic;
            if (tri.kind == GemmTriangle::kUpperA)  // row0 + diag <= kg
              return {0, std::clamp<int64_t>(rel < 0 ? 0 : rel / MR + 1, 0, block_panels)};
            if (tri.kind == GemmTriangle::kLowerA)  // row0 + MR - 1 + diag >= kg
              return {std::clamp<int64_t>(rel <= 0 ? 0 : rel / MR, 0, block_panels), block_panels};
            return {0, block_panels};
          };
          pack_a_block_trans<T, MR>(A + pc * lda + ic, lda, mc, kc, ap, panels);
        }
        for (int64_t ir = 0; ir < mc; ir += MR) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
          const PanelRange range = panel_range(tri, ic + ir, mr, K, N);
          const int64_t ncols = std::min(nc, range.cols - jc);
          if (ncols <= 0) continue;  // a lower C: none of these columns is wanted by these rows
          T* crow = C + (ic + ir) * ldc + jc;
          if (range.k_begin >= range.k_end) {  // a triangle makes these rows of op(A) all zero
            if (pc == 0) {
              scale_c(static_cast<int64_t>(mr), ncols, beta, crow, ldc);
              if (ep) apply_epilogue(*ep, crow, ldc, (ic + ir) * ldc + jc, jc, mr, ncols);
            }
            continue;
          }
          const int64_t k0 = std::max(pc, range.k_begin), k1 = std::min(pc + kc, range.k_end);
          if (k0 >= k1) continue;
          const int mode = k0 == range.k_begin ? first_mode : kAccumulate;
          const bool finished = k1 == range.k_end;  // the epilogue follows the panel's last K block
          const int64_t kn = k1 - k0;
          const T* bpanels = bp + (k0 - pc) * NR;  // panels are k-major: k0's row of each
          // The kernel over every NR-column panel of these rows, A read as `a` with step a_ld (the kernel's three forms),
          // then the epilogue once the last K block has swept them.
          const auto sweep = [&]<bool kDirectA>(const T* a, int64_t a_ld) {
            for (int64_t jr = 0; jr < ncols; jr += NR) {
              const int nr = static_cast<int>(std::min<int64_t>(NR, ncols - jr));
              Bk::template kernel<kDirectA, NR>(kn, a, a_ld, bpanels + jr * kc, crow + jr, ldc, alpha, beta, mode, mr, nr);
            }
            if (ep && finished) apply_epilogue(*ep, crow, ldc, (ic + ir) * ldc + jc, jc, mr, ncols);
          };
          if (direct_a && mr == MR) {
            sweep.template operator()<true>(A + (ic + ir) * lda + k0, lda);
            continue;
          }
          if (in_place_at && mr == MR) {
            sweep.template operator()<false>(A + k0 * lda + ic + ir, lda);  // op(A)[ic + ir + r, k] at [(k - k0) * lda + r]
            continue;
          }
          const T* panel = ap + ir * kc + (k0 - pc) * MR;
          if (in_place_at) {  // a last, short panel: packed alone, zero-padded to MR rows, the same way
            pack_a_block_trans<T, MR>(A + pc * lda + ic + ir, lda, mr, kc, ap, [](int64_t) { return std::pair<int64_t, int64_t>{0, 1}; });
            panel = ap + (k0 - pc) * MR;
          }
          if (!transA) {
            pack_a_panel<T, MR>(A + (ic + ir) * lda + k0, lda, mr, kn, ap);
            panel = ap;
          }
          sweep.template operator()<false>(panel, 0);
        }
      }
    }
  }
}

// Results do not depend on the panel width chosen here: both kernels accumulate each element over k in order
// and apply the same update.
template <typename T>
void gemm_serial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const GemmEpilogue<T>* ep, const GemmTriangle& tri,
                 const T* prepacked = nullptr) {
  if (N <= Blocking<T>::NR_NARROW)
    gemm_serial_nr<T, Blocking<T>::NR_NARROW>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep, tri, prepacked);
  else
    gemm_serial_nr<T, Blocking<T>::NR>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep, tri, prepacked);
}

// The epilogue of the sub-product whose C starts at row i0, column j0 of the whole one.
template <typename T>
GemmEpilogue<T> shifted(const GemmEpilogue<T>& ep, int64_t i0, int64_t j0, int64_t ldc) {
  const int64_t at = i0 * ldc + j0;
  return {ep.bias ? ep.bias + j0 : nullptr, ep.gelu ? ep.gelu + at : nullptr, ep.gelu_grad_of ? ep.gelu_grad_of + at : nullptr};
}

}  // namespace

template <typename T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc, bool parallel, const GemmEpilogue<T>* ep, GemmTriangle tri) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {
    scale_c(M, N, beta, C, ldc);
    if (ep) apply_epilogue(*ep, C, ldc, 0, 0, M, N);
    return;
  }
  constexpr int MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  const int64_t mt = (M + MR - 1) / MR, ntl = (N + NR - 1) / NR;
  int nt = parallel ? num_threads() : 1;
  // Waking the pool costs tens of microseconds (measured ~50 us per parallel_for on the 2-core VM), which
  // is what ~4M FMAs take on one core; below that a second core cannot pay for itself.
  if (static_cast<double>(M) * N * K < 4.0e6) nt = 1;

  // Split C into tm x tn rectangles (tm * tn = nt). Each thread repacks its own A rows and B columns, so pick
  // the split minimising per-thread work: its tile area (load balance) plus a packing term per row/column.
  int tm = 1, tn = 1;
  if (nt > 1) {
    double best = -1;
    for (int a = 1; a <= nt; ++a) {
      if (nt % a) continue;
      const int b = nt / a;
      if (a > mt || b > ntl) continue;
      const double rows = static_cast<double>((mt + a - 1) / a) * MR, cols = static_cast<double>((ntl + b - 1) / b) * NR;
      const double cost = rows * cols + 16.0 * (rows + cols);
      if (best < 0 || cost < best) best = cost, tm = a, tn = b;
    }
  }
  if (tm * tn == 1) {
    gemm_serial<T>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep, tri);
    return;
  }
  parallel_for(tm * tn, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ci = t / tn, cj = t % tn;
      const int64_t i0 = mt * ci / tm * MR, i1 = std::min(M, mt * (ci + 1) / tm * MR);
      const int64_t j0 = ntl * cj / tn * NR, j1 = std::min(N, ntl * (cj + 1) / tn * NR);
      if (i0 >= i1 || j0 >= j1) continue;
      const T* a = transA ? A + i0 : A + i0 * lda;
      const T* b = transB ? B + j0 * ldb : B + j0;
      const GemmEpilogue<T> sub = ep ? shifted(*ep, i0, j0, ldc) : GemmEpilogue<T>{};
      // The sub-product's row 0 is row i0 (and its column 0 column j0) of the whole one.
      const GemmTriangle sub_tri{tri.kind, tri.diag + i0 - (tri.kind == GemmTriangle::kLowerC ? j0 : 0)};
      gemm_serial<T>(transA, transB, i1 - i0, j1 - j0, K, alpha, a, lda, b, ldb, beta, C + i0 * ldc + j0, ldc, ep ? &sub : nullptr, sub_tri);
    }
  });
}

// PackedB holds what gemm_serial_nr's pack_b makes for each (jc, pc) block of the whole op(B), one after another:
// the jc block of nc columns (padded to NR) at jc * K, its pc block of kc steps at + pc * padded nc. NR is the one
// gemm_serial picks for this N.
template <typename T>
int64_t packed_b_panel_width(int64_t N) {
  return N <= Blocking<T>::NR_NARROW ? Blocking<T>::NR_NARROW : Blocking<T>::NR;
}

template <typename T>
size_t PackedB<T>::bytes(int64_t N, int64_t K) {
  const int64_t nr = packed_b_panel_width<T>(N);
  return (sizeof(T) * static_cast<size_t>((N + nr - 1) / nr * nr * K) + 63) & ~size_t(63);
}

template <typename T>
PackedB<T>::PackedB(bool transB, int64_t N, int64_t K, const T* B, int64_t ldb) : n_(N), k_(K), data_(nullptr) {
  if (N <= 0 || K <= 0) return;
  data_ = static_cast<T*>(std::aligned_alloc(64, bytes(N, K)));
  if (!data_) throw std::bad_alloc();
  auto pack_all = [&]<int NR>() {
    const int64_t kcb = k_block<T>(K), ncb = std::min<int64_t>(Blocking<T>::NC, (N + NR - 1) / NR * NR);
    for (int64_t jc = 0; jc < N; jc += ncb) {
      const int64_t nc = std::min(ncb, N - jc), padded = (nc + NR - 1) / NR * NR;
      for (int64_t pc = 0; pc < K; pc += kcb)
        pack_b<T, NR>(transB, transB ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, nc, std::min(kcb, K - pc), data_ + jc * K + pc * padded);
    }
  };
  if (packed_b_panel_width<T>(N) == Blocking<T>::NR_NARROW) pack_all.template operator()<Blocking<T>::NR_NARROW>();
  else pack_all.template operator()<Blocking<T>::NR>();
}

template <typename T>
PackedB<T>::PackedB(PackedB&& other) noexcept : n_(other.n_), k_(other.k_), data_(other.data_) {
  other.data_ = nullptr;
}

template <typename T>
PackedB<T>::~PackedB() {
  std::free(data_);
}

template <typename T>
void gemm(int64_t M, T alpha, const T* A, int64_t lda, const PackedB<T>& B, T beta, T* C, int64_t ldc, bool parallel,
          const GemmEpilogue<T>* ep) {
  const int64_t N = B.N(), K = B.K();
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {
    scale_c(M, N, beta, C, ldc);
    if (ep) apply_epilogue(*ep, C, ldc, 0, 0, M, N);
    return;
  }
  constexpr int MR = Blocking<T>::MR;
  const int64_t panels = (M + MR - 1) / MR;
  // The same threshold as the unpacked product's (below it a second core cannot pay for waking the pool); rows only,
  // since the packed blocks' layout assumes the whole of N.
  int64_t nt = parallel && static_cast<double>(M) * N * K >= 4.0e6 ? std::min<int64_t>(num_threads(), panels) : 1;
  auto rows = [&](int64_t i0, int64_t i1) {
    const GemmEpilogue<T> sub = ep ? shifted(*ep, i0, 0, ldc) : GemmEpilogue<T>{};
    gemm_serial<T>(false, false, i1 - i0, N, K, alpha, A + i0 * lda, lda, nullptr, 0, beta, C + i0 * ldc, ldc, ep ? &sub : nullptr, {},
                   B.data());
  };
  if (nt <= 1) return rows(0, M);
  parallel_for(nt, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i0 = panels * t / nt * MR, i1 = std::min(M, panels * (t + 1) / nt * MR);
      if (i0 < i1) rows(i0, i1);
    }
  });
}

template <typename T>
void gemm(Precision precision, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, bool parallel, const GemmEpilogue<T>* ep,
          GemmTriangle tri) {
  if (precision == Precision::F32) return gemm<T>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, parallel, ep, tri);
  if constexpr (!std::is_same_v<T, float>) {
    throw std::invalid_argument("gemm: precision 'bf16' needs float32 operands");  // the ops' parsing refuses it first
  } else {
    if (M > 0 && N > 0 && K > 0 && alpha != 0.0f && gemm_bf16_fast(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, parallel, ep, tri))
      return;
    // Only the rows x cols that op() reads are copied: a stored operand may be a strided slice (attention's heads).
    auto rounded = [parallel](const float* src, int64_t rows, int64_t cols, int64_t ld) {
      std::vector<float> out(static_cast<size_t>(rows * cols));
      auto body = [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
          for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = round_to_bf16(src[r * ld + c]);
      };
      if (parallel) parallel_for(rows, 64, body);
      else body(0, rows);
      return out;
    };
    const int64_t a_rows = transA ? K : M, a_cols = transA ? M : K, b_rows = transB ? N : K, b_cols = transB ? K : N;
    const std::vector<float> a = rounded(A, a_rows, a_cols, lda), b = rounded(B, b_rows, b_cols, ldb);
    gemm<float>(transA, transB, M, N, K, alpha, a.data(), a_cols, b.data(), b_cols, beta, C, ldc, parallel, ep, tri);
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t, bool, const GemmEpilogue<float>*, GemmTriangle);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t, bool, const GemmEpilogue<double>*, GemmTriangle);
template class PackedB<float>;
template class PackedB<double>;
template void gemm<float>(int64_t, float, const float*, int64_t, const PackedB<float>&, float, float*, int64_t, bool, const GemmEpilogue<float>*);
template void gemm<double>(int64_t, double, const double*, int64_t, const PackedB<double>&, double, double*, int64_t, bool,
                           const GemmEpilogue<double>*);
template void gemm<float>(Precision, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                          int64_t, float, float*, int64_t, bool, const GemmEpilogue<float>*, GemmTriangle);
template void gemm<double>(Precision, bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t, bool, const GemmEpilogue<double>*, GemmTriangle);

}  // namespace tf
