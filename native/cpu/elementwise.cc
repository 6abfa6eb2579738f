// Small memory-bound ops: copies, scaled adds, reductions, the token-order flip, patchify and the embeddings
// added to the input projection. Each parallelises over rows so results do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>
#include <cstring>

#include "../common/op.h"
#include "../common/threads.h"
#include "gelu.h"

namespace tf {
namespace {

constexpr int64_t kGrain = 1 << 14;

// copy(dst, src)
TF_OP(copy) {
  Tensor* dst = tensor_arg(info, 0, "dst");
  Tensor* src = tensor_arg(info, 1, "src");
  expect_same_dtype(dst, src, "dst", "src");
  expect_numel(dst, src->numel(), "dst");
  std::memcpy(dst->data<char>(), src->data<char>(), src->numel() * dtype_size(src->dtype()));
  return info.Env().Undefined();
}

// axpby(y, x, alpha, beta): y = alpha * x + beta * y
TF_OP(axpby) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  double alpha = number_arg(info, 2, "alpha"), beta = number_arg(info, 3, "beta");
  expect_same_dtype(y, x, "y", "x");
  expect_numel(y, x->numel(), "y");
  dispatch_float(x->dtype(), [&]<typename T>() {
    T* yp = y->data<T>();
    const T* xp = x->data<T>();
    T a = static_cast<T>(alpha), b = static_cast<T>(beta);
    parallel_for(x->numel(), kGrain, [&](int64_t s, int64_t e) {
      if (beta == 0)
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i];
      else
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i] + b * yp[i];
    });
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
  dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    T* op = out->data<T>();
    parallel_for(B, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b) {
        double acc = 0;
        const T* r = xp + b * n;
        for (int64_t i = 0; i < n; ++i) acc += double(r[i]) * double(r[i]);
        op[b] = static_cast<T>(acc);
      }
    });
  });
  return info.Env().Undefined();
}

// sumSquares(x) -> number (double accumulation, fixed blocking so the thread count does not change it)
TF_OP(sumSquares) {
  Tensor* x = tensor_arg(info, 0, "x");
  double total = dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    int64_t n = x->numel(), blocks = (n + kGrain - 1) / kGrain;
    std::vector<double> partial(blocks, 0.0);
    parallel_for(blocks, 1, [&](int64_t s, int64_t e) {
      for (int64_t k = s; k < e; ++k) {
        double acc = 0;
        for (int64_t i = k * kGrain; i < std::min(n, (k + 1) * kGrain); ++i) acc += double(xp[i]) * double(xp[i]);
        partial[k] = acc;
      }
    });
    double t = 0;
    for (double p : partial) t += p;
    return t;
  });
  return Napi::Number::New(info.Env(), total);
}

// allFinite(x) -> boolean
TF_OP(allFinite) {
  Tensor* x = tensor_arg(info, 0, "x");
  bool ok = dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    int64_t n = x->numel();
    std::atomic<bool> finite{true};
    parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
      T acc = 0;
      for (int64_t i = s; i < e; ++i) acc += xp[i] * T(0);  // NaN or Inf anywhere makes the product NaN
      if (acc != acc) finite = false;
    });
    return finite.load();
  });
  return Napi::Boolean::New(info.Env(), ok);
}

// mulBroadcast(x[B, ...], s[...]): x[b] *= s for every leading index b (the VP prior's sqrt(var) on latents).
TF_OP(mulBroadcast) {
  Tensor* x = tensor_arg(info, 0, "x");
  Tensor* sc = tensor_arg(info, 1, "s");
  expect_same_dtype(x, sc, "x", "s");
  int64_t n = sc->numel();
  if (n == 0 || x->numel() % n) throw shape_error("mulBroadcast: " + sc->describe() + " does not tile " + x->describe());
  dispatch_float(x->dtype(), [&]<typename T>() {
    T* xp = x->data<T>();
    const T* sp = sc->data<T>();
    parallel_for(x->numel() / n, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b)
        for (int64_t i = 0; i < n; ++i) xp[b * n + i] *= sp[i];
    });
  });
  return info.Env().Undefined();
}

// varUpdate(var[T,D], z[B,T,D], rate): var += rate * (mean_b z^2 - var)  (the VP prior's running variance)
TF_OP(varUpdate) {
  Tensor* var = tensor_arg(info, 0, "var");
  Tensor* z = tensor_arg(info, 1, "z");
  double rate = number_arg(info, 2, "rate");
  expect_same_dtype(var, z, "var", "z");
  int64_t B = z->dim(0), n = var->numel();
  expect_numel(z, B * n, "z");
  dispatch_float(z->dtype(), [&]<typename T>() {
    T* vp = var->data<T>();
    const T* zp = z->data<T>();
    parallel_for(n, 256, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        double acc = 0;
        for (int64_t b = 0; b < B; ++b) acc += double(zp[b * n + i]) * double(zp[b * n + i]);
        vp[i] = static_cast<T>(vp[i] + rate * (acc / B - vp[i]));
      }
    });
  });
  return info.Env().Undefined();
}

// flipTokens(y[B,T,D], x[B,T,D]): y[b,t] = x[b,T-1-t] (the odd blocks' patch order; its own inverse)
TF_OP(flipTokens) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(y, x, "y", "x");
  if (x->ndim() != 3) throw shape_error("flipTokens: x must be [B, T, D], got " + x->describe());
  expect_shape(y, x->shape(), "y");
  if (y->data<char>() == x->data<char>()) throw arg_error("flipTokens: y and x must be different tensors");
  int64_t B = x->dim(0), T = x->dim(1), D = x->dim(2);
  size_t row = D * dtype_size(x->dtype());
  const char* xp = x->data<char>();
  char* yp = y->data<char>();
  parallel_for(B * T, 64, [&](int64_t s, int64_t e) {
    for (int64_t r = s; r < e; ++r) {
      int64_t b = r / T, t = r % T;
      std::memcpy(yp + (b * T + t) * row, xp + (b * T + (T - 1 - t)) * row, row);
    }
  });
  return info.Env().Undefined();
}

// patchify(out[B,T,D], x[B,C,S,S], P): patch t row-major over the grid, value index c*P*P + ky*P + kx.
// unpatchify is the exact inverse (and so also patchify's backward).
template <typename T, bool kToPatches>
void patch_copy(T* patches, T* image, int64_t B, int64_t C, int64_t S, int64_t P) {
  int64_t G = S / P, Tn = G * G, D = C * P * P;
  parallel_for(B * Tn, 16, [&](int64_t s, int64_t e) {
    for (int64_t r = s; r < e; ++r) {
      int64_t b = r / Tn, t = r % Tn, gy = t / G, gx = t % G;
      T* prow = patches + r * D;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t ky = 0; ky < P; ++ky) {
          T* img = image + ((b * C + c) * S + gy * P + ky) * S + gx * P;
          T* pat = prow + c * P * P + ky * P;
          for (int64_t kx = 0; kx < P; ++kx) {
            if (kToPatches) pat[kx] = img[kx];
            else img[kx] = pat[kx];
          }
        }
    }
  });
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
  dispatch_float(x->dtype(), [&]<typename T>() {
    patch_copy<T, true>(out->data<T>(), x->data<T>(), x->dim(0), x->dim(1), x->dim(2), P);
  });
  return info.Env().Undefined();
}

TF_OP(unpatchify) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  int64_t P = int_arg(info, 2, "patchSize");
  check_patch_shapes(x, out, P);
  dispatch_float(x->dtype(), [&]<typename T>() {
    patch_copy<T, false>(x->data<T>(), out->data<T>(), out->dim(0), out->dim(1), out->dim(2), P);
  });
  return info.Env().Undefined();
}

// gelu(y, x) and geluBackward(dx, dy, x): the exact (erf) GELU.
TF_OP(gelu) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(y, x, "y", "x");
  expect_numel(y, x->numel(), "y");
  dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    T* yp = y->data<T>();
    parallel_for(x->numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) yp[i] = tf::gelu(xp[i]);
    });
  });
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
  dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    const T* dyp = dy->data<T>();
    T* dxp = dx->data<T>();
    parallel_for(x->numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) dxp[i] = dyp[i] * tf::gelu_grad(xp[i]);
    });
  });
  return info.Env().Undefined();
}

// The class embedding a sample gets: its class row, or the mean over classes for a dropped (negative) or absent label.
template <typename T>
void mean_class_row(const T* cls, int64_t n_cls, int64_t W, std::vector<T>& mean) {
  mean.assign(W, T(0));
  for (int64_t c = 0; c < n_cls; ++c)
    for (int64_t w = 0; w < W; ++w) mean[w] += cls[c * W + w];
  for (int64_t w = 0; w < W; ++w) mean[w] /= T(n_cls);
}

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
    const int32_t* y = labels->data<int32_t>();
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
  dispatch_float(h->dtype(), [&]<typename T>() {
    T* hp = h->data<T>();
    const T* pp = pos->data<T>();
    const T* cp = cls ? cls->data<T>() : nullptr;
    const int32_t* y = labels ? labels->data<int32_t>() : nullptr;
    std::vector<T> mean;
    if (cp) mean_class_row(cp, n_cls, W, mean);
    parallel_for(B * Tn, 16, [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        int64_t b = r / Tn, t = r % Tn;
        const T* prow = pp + (flip ? Tn - 1 - t : t) * W;
        T* hrow = hp + r * W;
        for (int64_t w = 0; w < W; ++w) hrow[w] += prow[w];
        if (cp) {
          const T* crow = (y && y[b] >= 0) ? cp + int64_t(y[b]) * W : mean.data();
          for (int64_t w = 0; w < W; ++w) hrow[w] += crow[w];
        }
      }
    });
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
  dispatch_float(dh->dtype(), [&]<typename T>() {
    const T* g = dh->data<T>();
    T* dp = dpos->data<T>();
    parallel_for(Tn, 1, [&](int64_t s, int64_t e) {
      for (int64_t t = s; t < e; ++t) {
        T* drow = dp + (flip ? Tn - 1 - t : t) * W;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t w = 0; w < W; ++w) drow[w] += g[(b * Tn + t) * W + w];
      }
    });
    if (!dcls) return;
    T* dc = dcls->data<T>();
    const int32_t* y = labels ? labels->data<int32_t>() : nullptr;
    std::vector<T> per_sample(W);
    for (int64_t b = 0; b < B; ++b) {
      std::fill(per_sample.begin(), per_sample.end(), T(0));
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t w = 0; w < W; ++w) per_sample[w] += g[(b * Tn + t) * W + w];
      if (y && y[b] >= 0) {
        for (int64_t w = 0; w < W; ++w) dc[int64_t(y[b]) * W + w] += per_sample[w];
      } else {
        for (int64_t c = 0; c < n_cls; ++c)
          for (int64_t w = 0; w < W; ++w) dc[c * W + w] += per_sample[w] / T(n_cls);
      }
    }
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
