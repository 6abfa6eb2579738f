// The per-thread index logic of the sm_90a bf16 GEMM (gemm_wgmma.cu), in plain C++ so that a CPU program
// (test/native/wgmma_tile_test.cc) runs it for every thread of a block against an emulated wgmma and checks the
// products, as mma_tile_test does for the mma.sync kernel.
//
// Why a second tensor-core kernel: on Hopper, mma.sync issues one m16n8k16 per warp instruction and every fragment
// passes through registers (ldmatrix), which caps it well below the chip's bf16 rate; wgmma.mma_async has a whole
// warpgroup (4 warps) multiply a 64 x N x 16 slab with both operands read by the tensor cores straight from shared
// memory, asynchronously, so the warps can stage the next slice meanwhile.
//
// Block tile kBM x kBN = 128 x 128, K in slices of kBK = 32 (two k16 steps). Two warpgroups: warpgroup g owns rows
// 64 g .. 64 g + 63 of the tile and all 128 columns (one m64n128k16 per k16 step, 64 fp32 accumulators a thread).
// Operands arrive as fp32 and are rounded to bf16 as they are staged, exactly as in the mma.sync kernel (whose
// global-load helpers, mma_tile.h's load_quad and load_pair, this kernel shares), so the two kernels multiply the
// same bf16 values and differ only in the order of the fp32 sums.
//
// Shared memory: each operand tile (A as [m][k], B as B^T, [n][k]) in wgmma's K-major layout without swizzling
// (PTX ISA, "Shared Memory Matrix Layout"): 8 x 8 "core matrices" of 8 rows x 16 bytes, each 128 contiguous bytes
// (row r of the core matrix at byte 16 r). Core matrix (row group i, k group j) starts at byte i * kSBO + j * kLBO:
// kLBO (the leading-dimension byte offset: the next core matrix along K) = 128, kSBO (the stride-dimension byte
// offset: the next 8 rows) = kBK / 8 * 128 = 512. So a row group's whole slice is one contiguous 512-byte run.
#pragma once
#include <cstdint>

#include "mma_tile.h"

namespace tf {
namespace wgmma {

constexpr int kBM = 128, kBN = 128, kBK = 32, kThreads = 256;
constexpr int kGroupRows = 64;                  // rows of the tile per warpgroup (wgmma's M)
constexpr int kSteps = kBK / 16;                // k16 steps per slice
constexpr int kAccs = kBN / 2;                  // fp32 accumulators per thread: m64n128 over 128 threads
constexpr int kLBO = 128, kSBO = kBK / 8 * 128;  // bytes, see above
constexpr int kTileBytes = kBM * kBK * 2;       // one operand of one stage
constexpr int kQuads = kBM * kBK / 4 / kThreads, kPairs = kBM * kBK / 2 / kThreads;

static_assert(kBM == kBN && kBM == mma::kBM && kBN == mma::kBN, "the host's grid is the mma.sync kernel's");
static_assert(kThreads == 2 * 128 && kBM == 2 * kGroupRows, "two warpgroups, one per 64 rows");
static_assert(kBK % 16 == 0 && kTileBytes == kBM / 8 * kSBO, "whole core matrices and k16 steps");

// Byte offset of element (row, k) of an operand tile: core matrix (row / 8, k / 8), then row r % 8, element k % 8.
TF_HOST_DEVICE inline int tile_byte(int row, int k) { return row / 8 * kSBO + k / 8 * kLBO + row % 8 * 16 + k % 8 * 2; }

// Staging coordinates (mma::PairCoord: row of the operand tile, first k). The lane bits are chosen for shared memory:
// in both kinds, the 8 lanes of a row group hold 8 consecutive rows, so the stores of a warp spread over all 32 banks
// (a warp's pairs: 8 rows x 4 pairs of one k group, 32 distinct words; a half-warp's quads, stored as 8 bytes:
// 8 rows x 2 quads of one core matrix, 128 contiguous bytes). mma_tile.h's orders (a warp along 32 rows of one k,
// or 4 rows x 32 k) would put 4 lanes on each bank. Global reads stay whole 32-byte sectors: 8 floats of a row along k
// (quads), 8 consecutive rows of one k (pairs).
//
// Quad q of thread tid: 4 consecutive k of a row of a k-contiguous operand (one float4 load where aligned).
TF_HOST_DEVICE inline mma::PairCoord quad_coord(int tid, int q) {
  const int e = tid + q * kThreads, group = e / 32;
  return {8 * (group % (kBM / 8)) + e % 8, 16 * (group / (kBM / 8)) + 4 * (e / 8 % 4)};
}
// Pair p of thread tid: 2 consecutive k of a row of an operand that is not k-contiguous (two loads ld apart).
TF_HOST_DEVICE inline mma::PairCoord pair_coord(int tid, int p) {
  const int e = tid + p * kThreads, group = e / 32;
  return {8 * (group % (kBM / 8)) + e % 8, 8 * (group / (kBM / 8)) + 2 * (e / 8 % 4)};
}
static_assert(kQuads * kThreads * 4 == kBM * kBK && kPairs * kThreads * 2 == kBM * kBK, "every thread stages the same count");
static_assert(kBK / 16 * (kBM / 8) * 32 == kQuads * kThreads && kBK / 8 * (kBM / 8) * 32 == kPairs * kThreads,
              "the coordinates' groups cover the tile");

// The 32-bit word of a stage that holds k and k + 1 of a row (k even); a quad is the word pair starting there.
TF_HOST_DEVICE inline int stage_word(mma::PairCoord c) { return tile_byte(c.row, c.k) / 4; }

// ---- Shared-memory matrix descriptors (PTX ISA, "Matrix Descriptor Format") ----
// Bits 0-13: start address >> 4; 16-29: leading-dimension byte offset >> 4; 32-45: stride-dimension byte offset >> 4;
// 49-51: base offset (0: no swizzling); 62-63: swizzle mode (0: none). Addresses are shared-window byte addresses.
TF_HOST_DEVICE inline uint64_t descriptor(uint32_t start_byte) {
  return uint64_t((start_byte >> 4) & 0x3FFFu) | (uint64_t((kLBO >> 4) & 0x3FFF) << 16) | (uint64_t((kSBO >> 4) & 0x3FFF) << 32);
}
// Where warpgroup g's A (rows 64 g.., k16 step s) and the block's B (all kBN rows of B^T, step s) start in their tiles.
TF_HOST_DEVICE inline int a_step_byte(int group, int s) { return tile_byte(kGroupRows * group, 16 * s); }
TF_HOST_DEVICE inline int b_step_byte(int s) { return tile_byte(0, 16 * s); }

// Accumulator i (0 <= i < kAccs) of a thread (warp w of the block, lane), in the block tile: warp w % 4 of warpgroup
// w / 4 holds rows 16 (w % 4) .. + 15 of the group's 64, each 8 columns as mma.sync's m16n8 C fragment (PTX ISA,
// "Register Fragments: wgmma .m64nNk16, matrix D").
TF_HOST_DEVICE inline int acc_row(int warp, int lane, int i) {
  return kGroupRows * (warp / 4) + 16 * (warp % 4) + (lane >> 2) + 8 * ((i >> 1) & 1);
}
TF_HOST_DEVICE inline int acc_col(int lane, int i) { return 8 * (i >> 2) + 2 * (lane & 3) + (i & 1); }

#if defined(__CUDACC__)
// The instructions below exist on sm_90a only (wgmma.*) or sm_90 and newer (fence.proxy.async); kCompiled says
// whether this compilation pass has them. The host learns which pass the loaded code came from (gemm_wgmma.cu).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr bool kCompiled = true;
#else
constexpr bool kCompiled = false;
#endif

// Makes this thread's generic-proxy shared stores (the staging) visible to the async proxy that wgmma reads through;
// the barrier that follows publishes them to the other threads.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Orders earlier register and shared accesses before the wgmma that follow (required before the first one, and
// whenever the accumulators were touched by other instructions in between).
__device__ __forceinline__ void fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit_group() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most kPending committed groups of this warpgroup are unfinished.
template <int kPending>
__device__ __forceinline__ void wait_group() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// Keeps the compiler from moving accumulator reads or writes across the asynchronous multiply that owns them.
__device__ __forceinline__ void pin(float (&d)[kAccs]) {
#pragma unroll
  for (int i = 0; i < kAccs; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d += A B^T for one m64n128k16 slab: A (64 x 16) and B^T (128 x 16) K-major in shared memory, no transposes.
__device__ __forceinline__ void mma_m64n128k16(float (&d)[kAccs], uint64_t a_desc, uint64_t b_desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a_desc), "l"(b_desc)
      : "memory");
#else
  (void)d, (void)a_desc, (void)b_desc;
  __trap();  // unreachable: the host runs this kernel only where the loaded code is sm_90a's
#endif
}
#endif

}  // namespace wgmma
}  // namespace tf
