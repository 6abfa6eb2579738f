// Small memory-bound ops: the CUDA twin of native/cpu/elementwise.cc. Reductions are deterministic: fixed blocks,
// tree sums in a fixed order, then a final pass in block order; the only atomic-free "flag" is allFinite's, whose
// result does not depend on which thread writes it.
#include <cmath>
#include <vector>

#include "../common/op.h"
#include "layers.cuh"

namespace tf {
namespace cuda {
namespace {

template <typename T>
__global__ void gelu_kernel(T* y, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) {
    T v = x[i];
    y[i] = T(0.5) * v * (T(1) + erf(v * T(0.70710678118654752440)));
  }
}

}  // namespace

template <typename T>
void gelu_forward(T* y, const T* x, int64_t n) {
  if (n <= 0) return;
  gelu_kernel<T><<<blocks_for(n, 256), 256, 0, stream()>>>(y, x, n);
  check_launch("gelu");
}

template void gelu_forward<float>(float*, const float*, int64_t);
template void gelu_forward<double>(double*, const double*, int64_t);

}  // namespace cuda

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
__global__ void gelu_backward_kernel(T* dx, const T* dy, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) {
    T v = x[i];
    T cdf = T(0.5) * (T(1) + erf(v * T(0.70710678118654752440)));
    T pdf = T(0.3989422804014327) * exp(T(-0.5) * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

// The mean class embedding (for dropped or absent labels), summed in class order as on the CPU.
template <typename T>
__global__ void mean_class_kernel(T* mean, const T* cls, int64_t n_cls, int64_t W) {
  TF_GRID_LOOP(w, W) {
    T s = T(0);
    for (int64_t c = 0; c < n_cls; ++c) s += cls[c * W + w];
    mean[w] = s / T(n_cls);
  }
}

template <typename T>
__global__ void add_pos_class_kernel(T* h, const T* pos, const T* cls, const T* mean, const int32_t* labels, int64_t B,
                                     int64_t Tn, int64_t W, bool flip) {
  TF_GRID_LOOP(idx, B * Tn * W) {
    int64_t w = idx % W, t = (idx / W) % Tn, b = idx / (Tn * W);
    T v = h[idx] + pos[(flip ? Tn - 1 - t : t) * W + w];
    if (cls) v += (labels && labels[b] >= 0) ? cls[int64_t(labels[b]) * W + w] : mean[w];
    h[idx] = v;
  }
}

template <typename T>
__global__ void dpos_kernel(T* dpos, const T* g, int64_t B, int64_t Tn, int64_t W, bool flip) {
  TF_GRID_LOOP(idx, Tn * W) {
    int64_t w = idx % W, t = idx / W;
    T* d = dpos + (flip ? Tn - 1 - t : t) * W + w;
    T acc = *d;
    for (int64_t b = 0; b < B; ++b) acc += g[(b * Tn + t) * W + w];
    *d = acc;
  }
}

template <typename T>
__global__ void per_sample_sum_kernel(T* ps, const T* g, int64_t B, int64_t Tn, int64_t W) {
  TF_GRID_LOOP(idx, B * W) {
    int64_t w = idx % W, b = idx / W;
    T acc = T(0);
    for (int64_t t = 0; t < Tn; ++t) acc += g[(b * Tn + t) * W + w];
    ps[idx] = acc;
  }
}

// dclass[c, w] += contributions of the samples in sample order: its own label's samples in full, every dropped
// sample's share 1/n_cls.
template <typename T>
__global__ void dclass_kernel(T* dc, const T* ps, const int32_t* labels, int64_t B, int64_t n_cls, int64_t W) {
  TF_GRID_LOOP(idx, n_cls * W) {
    int64_t w = idx % W, c = idx / W;
    T acc = dc[idx];
    for (int64_t b = 0; b < B; ++b) {
      int32_t y = labels ? labels[b] : -1;
      if (y >= 0) {
        if (y == c) acc += ps[b * W + w];
      } else {
        acc += ps[b * W + w] / T(n_cls);
      }
    }
    dc[idx] = acc;
  }
}

// copy(dst, src)
TF_OP(copy) {
  Tensor* dst = tensor_arg(info, 0, "dst");
  Tensor* src = tensor_arg(info, 1, "src");
  expect_same_dtype(dst, src, "dst", "src");
  expect_numel(dst, src->numel(), "dst");
  size_t bytes = src->numel() * dtype_size(src->dtype());
  if (bytes && dst->data<char>() != src->data<char>())
    cuda::check(cudaMemcpyAsync(dst->data<char>(), src->data<char>(), bytes, cudaMemcpyDeviceToDevice, stream()), "copy");
  return info.Env().Undefined();
}

// axpby(y, x, alpha, beta): y = alpha * x + beta * y
TF_OP(axpby) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  double alpha = number_arg(info, 2, "alpha"), beta = number_arg(info, 3, "beta");
  expect_same_dtype(y, x, "y", "x");
  expect_numel(y, x->numel(), "y");
  int64_t n = x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(x->dtype(), [&]<typename T>() {
    axpby_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(y->data<T>(), x->data<T>(), n, T(alpha), T(beta), beta == 0);
  });
  return info.Env().Undefined();
}

// rowSumSquares(out[B], x[B, ...]): per-sample sum of squares, accumulated in double.
TF_OP(rowSumSquares) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(out, x, "out", "x");
  int64_t B = x->dim(0), n = x->numel() / (B ? B : 1);
  expect_numel(out, B, "out");
  if (B == 0) return info.Env().Undefined();
  if (B > 2147483647) throw shape_error("rowSumSquares: too many rows");
  dispatch_float(x->dtype(), [&]<typename T>() {
    row_sum_squares_kernel<T><<<static_cast<unsigned>(B), kThreads, kThreads * sizeof(double), stream()>>>(out->data<T>(), x->data<T>(), n);
  });
  return info.Env().Undefined();
}

// sumSquares(x) -> number (double accumulation over fixed chunks, then the chunks in order)
TF_OP(sumSquares) {
  Tensor* x = tensor_arg(info, 0, "x");
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
  Tensor* x = tensor_arg(info, 0, "x");
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
  Tensor* x = tensor_arg(info, 0, "x");
  Tensor* sc = tensor_arg(info, 1, "s");
  expect_same_dtype(x, sc, "x", "s");
  int64_t n = sc->numel();
  if (n == 0 || x->numel() % n) throw shape_error("mulBroadcast: " + sc->describe() + " does not tile " + x->describe());
  int64_t total = x->numel();
  if (total == 0) return info.Env().Undefined();
  dispatch_float(x->dtype(), [&]<typename T>() {
    mul_broadcast_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(x->data<T>(), sc->data<T>(), total, n);
  });
  return info.Env().Undefined();
}

// varUpdate(var[T,D], z[B,T,D], rate): var += rate * (mean_b z^2 - var)
TF_OP(varUpdate) {
  Tensor* var = tensor_arg(info, 0, "var");
  Tensor* z = tensor_arg(info, 1, "z");
  double rate = number_arg(info, 2, "rate");
  expect_same_dtype(var, z, "var", "z");
  int64_t B = z->dim(0), n = var->numel();
  expect_numel(z, B * n, "z");
  if (n == 0) return info.Env().Undefined();
  dispatch_float(z->dtype(), [&]<typename T>() {
    var_update_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(var->data<T>(), z->data<T>(), B, n, rate);
  });
  return info.Env().Undefined();
}

// flipTokens(y[B,T,D], x[B,T,D]): y[b,t] = x[b,T-1-t]
TF_OP(flipTokens) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(y, x, "y", "x");
  if (x->ndim() != 3) throw shape_error("flipTokens: x must be [B, T, D], got " + x->describe());
  expect_shape(y, x->shape(), "y");
  if (y->data<char>() == x->data<char>()) throw arg_error("flipTokens: y and x must be different tensors");
  int64_t n = x->numel();
  if (n == 0) return info.Env().Undefined();
  if (x->dtype() == DType::F64) {
    flip_kernel<double><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(y->data<double>(), x->data<double>(), x->dim(0), x->dim(1), x->dim(2));
  } else {
    // float32 and int32 are both 4-byte values: move them as bits.
    flip_kernel<int32_t><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(y->data<int32_t>(), x->data<int32_t>(), x->dim(0), x->dim(1), x->dim(2));
  }
  return info.Env().Undefined();
}

void check_patch_shapes(Tensor* patches, Tensor* image, int64_t P) {
  if (image->ndim() != 4 || image->dim(2) != image->dim(3))
    throw shape_error("image tensor must be [B, C, S, S], got " + image->describe());
  int64_t B = image->dim(0), C = image->dim(1), S = image->dim(2);
  if (P <= 0 || S % P) throw shape_error("patch size " + std::to_string(P) + " does not divide image size " + std::to_string(S));
  expect_shape(patches, {B, (S / P) * (S / P), C * P * P}, "patches");
  expect_same_dtype(patches, image, "patches", "image");
}

TF_OP(patchify) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  int64_t P = int_arg(info, 2, "patchSize");
  check_patch_shapes(out, x, P);
  int64_t n = x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(x->dtype(), [&]<typename T>() {
    patch_kernel<T, true><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(out->data<T>(), x->data<T>(), x->dim(0), x->dim(1), x->dim(2), P);
  });
  return info.Env().Undefined();
}

TF_OP(unpatchify) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  int64_t P = int_arg(info, 2, "patchSize");
  check_patch_shapes(x, out, P);
  int64_t n = out->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(x->dtype(), [&]<typename T>() {
    patch_kernel<T, false><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(x->data<T>(), out->data<T>(), out->dim(0), out->dim(1), out->dim(2), P);
  });
  return info.Env().Undefined();
}

TF_OP(gelu) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(y, x, "y", "x");
  expect_numel(y, x->numel(), "y");
  dispatch_float(x->dtype(), [&]<typename T>() { cuda::gelu_forward<T>(y->data<T>(), x->data<T>(), x->numel()); });
  return info.Env().Undefined();
}

TF_OP(geluBackward) {
  Tensor* dx = tensor_arg(info, 0, "dx");
  Tensor* dy = tensor_arg(info, 1, "dy");
  Tensor* x = tensor_arg(info, 2, "x");
  expect_same_dtype(dx, x, "dx", "x");
  expect_same_dtype(dy, x, "dy", "x");
  expect_numel(dx, x->numel(), "dx");
  expect_numel(dy, x->numel(), "dy");
  int64_t n = x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(x->dtype(), [&]<typename T>() {
    gelu_backward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(dx->data<T>(), dy->data<T>(), x->data<T>(), n);
  });
  return info.Env().Undefined();
}

// Validates shapes and (on the host: one small copy) that every label is below the class count.
void check_embed_args(Tensor* h, Tensor* pos, Tensor* cls, Tensor* labels, int64_t& B, int64_t& Tn, int64_t& W, int64_t& n_cls) {
  if (h->ndim() != 3) throw shape_error("h must be [B, T, W], got " + h->describe());
  B = h->dim(0), Tn = h->dim(1), W = h->dim(2);
  expect_shape(pos, {Tn, W}, "pos");
  expect_same_dtype(h, pos, "h", "pos");
  n_cls = 0;
  if (cls) {
    if (cls->numel() % W || cls->numel() == 0) throw shape_error("classEmbed must be [numClasses, 1, W], got " + cls->describe());
    n_cls = cls->numel() / W;
    expect_same_dtype(h, cls, "h", "classEmbed");
  }
  if (labels) {
    expect_dtype(labels, DType::I32, "labels");
    expect_numel(labels, B, "labels");
    // TODO(perf): this waits for the stream once per call; a device-side check with a deferred error flag
    // would keep the training step free of host round trips.
    std::vector<int32_t> y(static_cast<size_t>(B));
    cuda::copy_to_host(y.data(), labels->data<int32_t>(), B * sizeof(int32_t));
    for (int64_t b = 0; b < B; ++b)
      if (y[b] >= n_cls) throw Error("ERR_TARFLOW_INVALID_ARGUMENT", "label " + std::to_string(y[b]) + " of sample " + std::to_string(b) +
                                                                        " is out of range: the model has " + std::to_string(n_cls) + " classes (use -1 for no label)");
  }
}

// addPosClass(h[B,T,W], pos[T,W], classEmbed|null, labels|null, flip): h += pi(pos) + e(y)
TF_OP(addPosClass) {
  Tensor* h = tensor_arg(info, 0, "h");
  Tensor* pos = tensor_arg(info, 1, "pos");
  Tensor* cls = optional_tensor_arg(info, 2, "classEmbed");
  Tensor* labels = optional_tensor_arg(info, 3, "labels");
  bool flip = bool_arg(info, 4, "flip");
  int64_t B, Tn, W, n_cls;
  check_embed_args(h, pos, cls, labels, B, Tn, W, n_cls);
  int64_t n = B * Tn * W;
  if (n == 0) return info.Env().Undefined();
  dispatch_float(h->dtype(), [&]<typename T>() {
    const T* cp = cls ? cls->data<T>() : nullptr;
    T* mean = nullptr;
    if (cp) {
      mean = cuda::scratch_as<T>(0, W);
      mean_class_kernel<T><<<blocks_for(W, kThreads), kThreads, 0, stream()>>>(mean, cp, n_cls, W);
      cuda::check_launch("addPosClass (mean class)");
    }
    add_pos_class_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        h->data<T>(), pos->data<T>(), cp, mean, labels ? labels->data<int32_t>() : nullptr, B, Tn, W, flip);
  });
  return info.Env().Undefined();
}

// addPosClassBackward(dpos, dclassEmbed|null, dh, labels|null, flip): accumulates into dpos and dclassEmbed.
TF_OP(addPosClassBackward) {
  Tensor* dpos = tensor_arg(info, 0, "dpos");
  Tensor* dcls = optional_tensor_arg(info, 1, "dclassEmbed");
  Tensor* dh = tensor_arg(info, 2, "dh");
  Tensor* labels = optional_tensor_arg(info, 3, "labels");
  bool flip = bool_arg(info, 4, "flip");
  int64_t B, Tn, W, n_cls;
  check_embed_args(dh, dpos, dcls, labels, B, Tn, W, n_cls);
  if (Tn * W == 0) return info.Env().Undefined();
  dispatch_float(dh->dtype(), [&]<typename T>() {
    const T* g = dh->data<T>();
    dpos_kernel<T><<<blocks_for(Tn * W, kThreads), kThreads, 0, stream()>>>(dpos->data<T>(), g, B, Tn, W, flip);
    cuda::check_launch("addPosClassBackward (pos)");
    if (!dcls || B == 0) return;
    T* ps = cuda::scratch_as<T>(0, B * W);
    per_sample_sum_kernel<T><<<blocks_for(B * W, kThreads), kThreads, 0, stream()>>>(ps, g, B, Tn, W);
    cuda::check_launch("addPosClassBackward (per sample)");
    dclass_kernel<T><<<blocks_for(n_cls * W, kThreads), kThreads, 0, stream()>>>(
        dcls->data<T>(), ps, labels ? labels->data<int32_t>() : nullptr, B, n_cls, W);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_elementwise(Napi::Env env, Napi::Object ops) {
  export_op(env, ops, "copy", copy);
  export_op(env, ops, "axpby", axpby);
  export_op(env, ops, "rowSumSquares", rowSumSquares);
  export_op(env, ops, "sumSquares", sumSquares);
  export_op(env, ops, "allFinite", allFinite);
  export_op(env, ops, "varUpdate", varUpdate);
  export_op(env, ops, "mulBroadcast", mulBroadcast);
  export_op(env, ops, "flipTokens", flipTokens);
  export_op(env, ops, "patchify", patchify);
  export_op(env, ops, "unpatchify", unpatchify);
  export_op(env, ops, "gelu", gelu);
  export_op(env, ops, "geluBackward", geluBackward);
  export_op(env, ops, "addPosClass", addPosClass);
  export_op(env, ops, "addPosClassBackward", addPosClassBackward);
}

}  // namespace tf
