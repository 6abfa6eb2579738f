// General matrix multiply for the CPU backend.
//
// Why our own: the addon ships with no BLAS. The float path is a packed, cache-blocked, register-tiled kernel
// (AVX-512 or AVX2+FMA when the build targets them, plain C++ otherwise); the double path exists for float64
// gradient checks and only needs to be right.
//
// Determinism: every C element is accumulated in the same order (K blocks of a size that depends only on K, in
// increasing k) whatever the thread count, so results are bit-identical for any TARFLOW_THREADS.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../common/bf16.h"
#include "gelu.h"

namespace tf {

// What a product does to each finished element c of C (at row m, column n) after alpha * acc + beta * C, in this
// order: c += bias[n]; then gelu[m * ldc + n] = GELU(c) (the MLP's activation), or c *= GELU'(gelu_grad_of[m * ldc + n])
// (the backward through that activation). It runs on each panel of MR rows of C once the last K block has swept it,
// while the panel is still in cache, and computes exactly what separate passes would (the same operations in the
// same order).
template <typename T>
struct GemmEpilogue {
  const T* bias = nullptr;
  T* gelu = nullptr;                // C's layout (ldc)
  const T* gelu_grad_of = nullptr;  // C's layout (ldc); not together with gelu
};

// The epilogue above on rows [0, mr) x columns [0, nr) of finished C at c, which is element `at` of C's storage and
// column n0 (the epilogue's pointers share C's origin). Shared by both CPU kernels. gemm.cc calls it per panel (MR
// rows by up to NC columns) rather than per MR x NR tile: the activation rows it reads or writes are then long enough
// for the hardware prefetcher, and the loops long enough to vectorise without remainders; per tile, the same work
// took twice as long (gemm_bench's fc cases). gemm_bf16.cc calls it per 32 rows by up to 128 columns of C.
template <typename T>
inline void apply_epilogue(const GemmEpilogue<T>& ep, T* c, int64_t ldc, int64_t at, int64_t n0, int64_t mr, int64_t nr) {
  for (int64_t r = 0; r < mr; ++r) {
    T* cr = c + r * ldc;
    const int64_t row = at + r * ldc;
    if (ep.bias)
      for (int64_t j = 0; j < nr; ++j) cr[j] += ep.bias[n0 + j];
    if (ep.gelu) {
      T* g = ep.gelu + row;
      for (int64_t j = 0; j < nr; ++j) g[j] = tf::gelu(cr[j]);
    }
    if (ep.gelu_grad_of) {
      const T* x = ep.gelu_grad_of + row;
      for (int64_t j = 0; j < nr; ++j) cr[j] = cr[j] * tf::gelu_grad(x[j]);
    }
  }
}

// Causal structure a product may skip (attention's, where half of every T x T matrix is masked). With diag d:
//   kLowerC: only C[i, j] with j <= i + d is wanted; C's other elements are left unspecified.
//   kLowerA: op(A)[i, k] == 0 for k > i + d;  kUpperA: op(A)[i, k] == 0 for k < i + d (the caller guarantees it).
// The reference kernel skips the MR x NR tiles and the k ranges of each MR-row panel outside the structure, the fast
// bf16 kernels their 32 x 32 blocks and 32-wide k steps; the elements computed equal the full product's bit for bit:
// the skipped terms are exact zeros (B finite), and the rest are added in the same order.
struct GemmTriangle {
  enum Kind { kNone, kLowerC, kLowerA, kUpperA } kind = kNone;
  int64_t diag = 0;
};

// Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, where op(X) = X or X^T.
// A is M x K (lda >= K) when !transA, K x M (lda >= M) when transA; B is K x N (ldb >= N) when !transB,
// N x K (ldb >= K) when transB. beta == 0 means C is overwritten and never read (garbage/NaN in C is fine).
// parallel=false runs on the calling thread only (for use inside other parallel kernels).
template <typename T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc, bool parallel = true, const GemmEpilogue<T>* epilogue = nullptr,
          GemmTriangle triangle = {});

// The same product at a working precision. Precision::BF16 (float only) rounds op(A) and op(B) to bf16 and keeps
// fp32 sums: the CPU reference of the GPU's tensor-core path (bf16 products are exact in fp32, so the two differ
// only in the order of the sums). It rounds copies of the operands: a reference, not a fast path; where the CPU has
// AMX or AVX-512 BF16, gemm_bf16_fast below runs instead (TARFLOW_CPU_GEMM).
template <typename T>
void gemm(Precision precision, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, bool parallel = true,
          const GemmEpilogue<T>* epilogue = nullptr, GemmTriangle triangle = {});

// op(B) [K, N] packed once into the kernel's panels, for products that share it: the sampler multiplies the same
// weights at every token step, and packing them once per block instead of at each step made it 3-8% faster.
// 64-byte aligned; owns its memory.
template <typename T>
class PackedB {
 public:
  PackedB(bool transB, int64_t N, int64_t K, const T* B, int64_t ldb);
  ~PackedB();
  PackedB(const PackedB&) = delete;
  PackedB& operator=(const PackedB&) = delete;
  PackedB(PackedB&& other) noexcept;
  int64_t N() const { return n_; }
  int64_t K() const { return k_; }
  const T* data() const { return data_; }
  // The bytes a PackedB of these dims holds (for memory accounting before packing).
  static size_t bytes(int64_t N, int64_t K);

 private:
  int64_t n_, k_;
  T* data_;
};

// C[M,N] = alpha * A[M,K] * B + beta * C with B packed (A row-major, not transposed): the same results as gemm()
// with the unpacked B, bit for bit. Threads split M only.
template <typename T>
void gemm(int64_t M, T alpha, const T* A, int64_t lda, const PackedB<T>& B, T beta, T* C, int64_t ldc, bool parallel = true,
          const GemmEpilogue<T>* epilogue = nullptr);

// The fast bf16 path (gemm_bf16.cc): when TARFLOW_CPU_GEMM and the CPU allow it, computes the bf16 product on AMX
// tiles or with AVX-512 BF16 and returns true; otherwise returns false and the caller runs the reference. Needs M, N,
// K > 0, alpha != 0.
bool gemm_bf16_fast(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
                    int64_t ldb, float beta, float* C, int64_t ldc, bool parallel, const GemmEpilogue<float>* epilogue,
                    GemmTriangle triangle);
// 'amx', 'avx512bf16' or 'reference': the kernel bf16 products run on now (throws for a TARFLOW_CPU_GEMM it cannot honour).
const char* cpu_bf16_gemm_kernel();
// The most working memory a bf16 product of these dims allocates (operand copies), on either path.
size_t bf16_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K);

extern template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                 const float*, int64_t, float, float*, int64_t, bool, const GemmEpilogue<float>*, GemmTriangle);
extern template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t, bool, const GemmEpilogue<double>*, GemmTriangle);

extern template class PackedB<float>;
extern template class PackedB<double>;
extern template void gemm<float>(int64_t, float, const float*, int64_t, const PackedB<float>&, float, float*, int64_t, bool,
                                 const GemmEpilogue<float>*);
extern template void gemm<double>(int64_t, double, const double*, int64_t, const PackedB<double>&, double, double*, int64_t, bool,
                                  const GemmEpilogue<double>*);

extern template void gemm<float>(Precision, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                 const float*, int64_t, float, float*, int64_t, bool, const GemmEpilogue<float>*, GemmTriangle);
extern template void gemm<double>(Precision, bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t, bool, const GemmEpilogue<double>*, GemmTriangle);

}  // namespace tf
