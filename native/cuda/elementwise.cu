// Small memory-bound ops: the CUDA twin of native/cpu/elementwise.cc (the layers' own ops are in theirs: patches.cu,
// gelu.cu, prior.cu, embedding.cu).
// Reductions are deterministic: fixed blocks, tree sums in a fixed order, then a final pass in block order; the only
// atomic-free "flag" is allFinite's, whose result does not depend on which thread writes it.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "layers.cuh"

namespace tf {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 14;  // elements per partial sum of sumSquares (the CPU's kGrain)

using cuda::blocks_for;
using cuda::stream;

template <typename T>
__global__ void axpby_kernel(T* y, const T* x, int64_t n, T a, T b, bool beta_zero) {
  TF_GRID_LOOP(i, n) y[i] = beta_zero ? a * x[i] : a * x[i] + b * y[i];
}

template <typename T>
__global__ void row_sum_squares_kernel(T* out, const T* x, int64_t n) {
  double* sh = shared_as<double>();
  const T* r = x + int64_t(blockIdx.x) * n;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += double(r[i]) * double(r[i]);
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<T>(acc);
}

template <typename T>
__global__ void chunk_sum_squares_kernel(double* partial, const T* x, int64_t n) {
  double* sh = shared_as<double>();
  int64_t begin = int64_t(blockIdx.x) * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += double(x[i]) * double(x[i]);
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(double* out, const double* partial, int64_t blocks) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double t = 0;
    for (int64_t k = 0; k < blocks; ++k) t += partial[k];
    *out = t;
  }
}

template <typename T>
__global__ void all_finite_kernel(int* bad, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) {
    T v = x[i] * T(0);  // NaN for NaN or +-Inf, as on the CPU
    if (v != v) *bad = 1;  // every writer stores the same value: no atomic needed
  }
}

// copy(dst, src)
TF_OP(copy) {
  const CopyArgs args = parse_copy(info);
  size_t bytes = args.src->numel() * dtype_size(args.src->dtype());
  if (bytes && args.dst->data<char>() != args.src->data<char>())
    cuda::check(cudaMemcpyAsync(args.dst->data<char>(), args.src->data<char>(), bytes, cudaMemcpyDeviceToDevice, stream()), "copy");
  return info.Env().Undefined();
}

// axpby(y, x, alpha, beta): y = alpha * x + beta * y
TF_OP(axpby) {
  const AxpbyArgs args = parse_axpby(info);
  int64_t n = args.x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    axpby_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.y->data<T>(), args.x->data<T>(), n, T(args.alpha), T(args.beta),
                                                                        args.beta == 0);
  });
  return info.Env().Undefined();
}

// rowSumSquares(out[B], x[B, ...]): per-sample sum of squares, accumulated in double.
TF_OP(rowSumSquares) {
  const RowSumSquaresArgs args = parse_row_sum_squares(info);
  if (args.B == 0) return info.Env().Undefined();
  if (args.B > 2147483647) throw shape_error("rowSumSquares: at most 2^31 - 1 rows per call; split the batch");
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    row_sum_squares_kernel<T><<<static_cast<unsigned>(args.B), kThreads, kThreads * sizeof(double), stream()>>>(args.out->data<T>(),
                                                                                                              args.x->data<T>(), args.n);
  });
  return info.Env().Undefined();
}

// sumSquares(x) -> number (double accumulation over fixed chunks, then the chunks in order)
TF_OP(sumSquares) {
  Tensor* x = parse_sum_squares(info).x;
  double total = dispatch_float(x->dtype(), [&]<typename T>() -> double {
    int64_t n = x->numel();
    if (n == 0) return 0.0;
    int64_t blocks = (n + kChunk - 1) / kChunk;
    double* partial = cuda::scratch_as<double>(2, blocks + 1);
    chunk_sum_squares_kernel<T><<<static_cast<unsigned>(blocks), kThreads, kThreads * sizeof(double), stream()>>>(partial, x->data<T>(), n);
    cuda::check_launch("sumSquares");
    sum_partials_kernel<<<1, 32, 0, stream()>>>(partial + blocks, partial, blocks);
    cuda::check_launch("sumSquares");
    double t = 0;
    cuda::copy_to_host(&t, partial + blocks, sizeof(double));
    return t;
  });
  return Napi::Number::New(info.Env(), total);
}

// allFinite(x) -> boolean
TF_OP(allFinite) {
  Tensor* x = parse_all_finite(info).x;
  bool ok = dispatch_float(x->dtype(), [&]<typename T>() -> bool {
    int64_t n = x->numel();
    if (n == 0) return true;
    int* flag = cuda::scratch_as<int>(3, 1);
    cuda::check(cudaMemsetAsync(flag, 0, sizeof(int), stream()), "allFinite");
    all_finite_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(flag, x->data<T>(), n);
    cuda::check_launch("allFinite");
    int bad = 0;
    cuda::copy_to_host(&bad, flag, sizeof(int));
    return bad == 0;
  });
  return Napi::Boolean::New(info.Env(), ok);
}

}  // namespace

void register_elementwise(Napi::Env env, Napi::Object ops) { TF_ELEMENTWISE_OPS(TF_EXPORT_OP) }

}  // namespace tf
