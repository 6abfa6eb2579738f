// Small memory-bound ops: the CUDA twin of native/cpu/elementwise.cc (the embeddings are in embedding.cu).
// Reductions are deterministic: fixed blocks, tree sums in a fixed order, then a final pass in block order; the only
// atomic-free "flag" is allFinite's, whose result does not depend on which thread writes it.
#include <cmath>

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

template <typename T>
__global__ void mul_broadcast_kernel(T* x, const T* s, int64_t total, int64_t n) {
  TF_GRID_LOOP(i, total) x[i] *= s[i % n];
}

template <typename T>
__global__ void var_update_kernel(T* var, const T* z, int64_t B, int64_t n, double rate) {
  TF_GRID_LOOP(i, n) {
    double acc = 0;
    for (int64_t b = 0; b < B; ++b) acc += double(z[b * n + i]) * double(z[b * n + i]);
    var[i] = static_cast<T>(var[i] + rate * (acc / B - var[i]));
  }
}

template <typename T>
__global__ void flip_kernel(T* y, const T* x, int64_t B, int64_t Tn, int64_t D) {
  TF_GRID_LOOP(idx, B * Tn * D) {
    int64_t k = idx % D, t = (idx / D) % Tn, b = idx / (Tn * D);
    y[idx] = x[(b * Tn + (Tn - 1 - t)) * D + k];
  }
}

// One thread per image element; the patch index follows the spec's layout (c*P*P + ky*P + kx).
template <typename T, bool kToPatches>
__global__ void patch_kernel(T* patches, T* image, int64_t B, int64_t C, int64_t S, int64_t P) {
  const int64_t G = S / P, Tn = G * G, D = C * P * P;
  TF_GRID_LOOP(idx, B * C * S * S) {
    int64_t xx = idx % S, yy = (idx / S) % S, c = (idx / (S * S)) % C, b = idx / (C * S * S);
    int64_t gy = yy / P, ky = yy % P, gx = xx / P, kx = xx % P;
    int64_t p = ((b * Tn) + gy * G + gx) * D + c * P * P + ky * P + kx;
    if (kToPatches) patches[p] = image[idx];
    else image[idx] = patches[p];
  }
}

template <typename T>
__global__ void gelu_kernel(T* y, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) y[i] = cuda::gelu_value(x[i]);
}

template <typename T>
__global__ void gelu_backward_kernel(T* dx, const T* dy, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) dx[i] = dy[i] * cuda::gelu_grad_value(x[i]);
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

// mulBroadcast(x[B, ...], s[...]): x[b] *= s for every leading index b.
TF_OP(mulBroadcast) {
  const MulBroadcastArgs args = parse_mul_broadcast(info);
  int64_t total = args.x->numel();
  if (total == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    mul_broadcast_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(args.x->data<T>(), args.s->data<T>(), total, args.n);
  });
  return info.Env().Undefined();
}

// varUpdate(var[T,D], z[B,T,D], rate): var += rate * (mean_b z^2 - var)
TF_OP(varUpdate) {
  const VarUpdateArgs args = parse_var_update(info);
  const int64_t n = args.n;
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.z->dtype(), [&]<typename T>() {
    var_update_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.var->data<T>(), args.z->data<T>(), args.B, n, args.rate);
  });
  return info.Env().Undefined();
}

// flipTokens(y[B,T,D], x[B,T,D]): y[b,t] = x[b,T-1-t]
TF_OP(flipTokens) {
  const FlipTokensArgs args = parse_flip_tokens(info);
  int64_t n = args.x->numel();
  if (n == 0) return info.Env().Undefined();
  if (args.x->dtype() == DType::F64) {
    flip_kernel<double><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.y->data<double>(), args.x->data<double>(), args.B, args.T, args.D);
  } else {
    // float32 and int32 are both 4-byte values: move them as bits.
    flip_kernel<int32_t><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.y->data<int32_t>(), args.x->data<int32_t>(), args.B, args.T, args.D);
  }
  return info.Env().Undefined();
}

TF_OP(patchify) {
  const PatchArgs args = parse_patchify(info);
  int64_t n = args.image->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.image->dtype(), [&]<typename T>() {
    patch_kernel<T, true><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.patches->data<T>(), args.image->data<T>(), args.B, args.C,
                                                                              args.S, args.P);
  });
  return info.Env().Undefined();
}

TF_OP(unpatchify) {
  const PatchArgs args = parse_unpatchify(info);
  int64_t n = args.image->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.patches->dtype(), [&]<typename T>() {
    patch_kernel<T, false><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.patches->data<T>(), args.image->data<T>(), args.B, args.C,
                                                                               args.S, args.P);
  });
  return info.Env().Undefined();
}

TF_OP(gelu) {
  const GeluArgs args = parse_gelu(info);
  int64_t n = args.x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    gelu_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.y->data<T>(), args.x->data<T>(), n);
  });
  return info.Env().Undefined();
}

TF_OP(geluBackward) {
  const GeluBackwardArgs args = parse_gelu_backward(info);
  int64_t n = args.x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    gelu_backward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.dx->data<T>(), args.dy->data<T>(), args.x->data<T>(), n);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_elementwise(Napi::Env env, Napi::Object ops) { TF_ELEMENTWISE_OPS(TF_EXPORT_OP) }

}  // namespace tf
