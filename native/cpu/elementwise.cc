// Small memory-bound ops: copies, scaled adds, reductions, the token-order flip, patchify and GELU (the position and
// class embeddings are in embedding.cc). Each parallelises over rows so results do not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>
#include <cstring>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "gelu.h"

namespace tf {
namespace {

constexpr int64_t kGrain = 1 << 14;

// copy(dst, src)
TF_OP(copy) {
  const CopyArgs args = parse_copy(info);
  // memmove: dst may be src itself (the parser refuses other overlaps), which memcpy does not allow.
  std::memmove(args.dst->data<char>(), args.src->data<char>(), args.src->numel() * dtype_size(args.src->dtype()));
  return info.Env().Undefined();
}

// axpby(y, x, alpha, beta): y = alpha * x + beta * y
TF_OP(axpby) {
  const AxpbyArgs args = parse_axpby(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    T* yp = args.y->data<T>();
    const T* xp = args.x->data<T>();
    T a = static_cast<T>(args.alpha), b = static_cast<T>(args.beta);
    parallel_for(args.x->numel(), kGrain, [&](int64_t s, int64_t e) {
      if (args.beta == 0)
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i];
      else
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i] + b * yp[i];
    });
  });
  return info.Env().Undefined();
}

// rowSumSquares(out[B], x[B, ...]): per-sample sum of squares, accumulated in double.
TF_OP(rowSumSquares) {
  const RowSumSquaresArgs args = parse_row_sum_squares(info);
  const int64_t n = args.n;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T* xp = args.x->data<T>();
    T* op = args.out->data<T>();
    parallel_for(args.B, 1, [&](int64_t s, int64_t e) {
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
  Tensor* x = parse_sum_squares(info).x;
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
  Tensor* x = parse_all_finite(info).x;
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
  const MulBroadcastArgs args = parse_mul_broadcast(info);
  const int64_t n = args.n;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    T* xp = args.x->data<T>();
    const T* sp = args.s->data<T>();
    parallel_for(args.x->numel() / n, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b)
        for (int64_t i = 0; i < n; ++i) xp[b * n + i] *= sp[i];
    });
  });
  return info.Env().Undefined();
}

// varUpdate(var[T,D], z[B,T,D], rate): var += rate * (mean_b z^2 - var)  (the VP prior's running variance)
TF_OP(varUpdate) {
  const VarUpdateArgs args = parse_var_update(info);
  const int64_t B = args.B, n = args.n;
  const double rate = args.rate;
  dispatch_float(args.z->dtype(), [&]<typename T>() {
    T* vp = args.var->data<T>();
    const T* zp = args.z->data<T>();
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
  const FlipTokensArgs args = parse_flip_tokens(info);
  const int64_t B = args.B, T = args.T;
  size_t row = args.D * dtype_size(args.x->dtype());
  const char* xp = args.x->data<char>();
  char* yp = args.y->data<char>();
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

TF_OP(patchify) {
  const PatchArgs args = parse_patchify(info);
  dispatch_float(args.image->dtype(), [&]<typename T>() {
    patch_copy<T, true>(args.patches->data<T>(), args.image->data<T>(), args.B, args.C, args.S, args.P);
  });
  return info.Env().Undefined();
}

TF_OP(unpatchify) {
  const PatchArgs args = parse_unpatchify(info);
  dispatch_float(args.patches->dtype(), [&]<typename T>() {
    patch_copy<T, false>(args.patches->data<T>(), args.image->data<T>(), args.B, args.C, args.S, args.P);
  });
  return info.Env().Undefined();
}

// gelu(y, x) and geluBackward(dx, dy, x): the exact (erf) GELU.
TF_OP(gelu) {
  const GeluArgs args = parse_gelu(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T* xp = args.x->data<T>();
    T* yp = args.y->data<T>();
    parallel_for(args.x->numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) yp[i] = tf::gelu(xp[i]);
    });
  });
  return info.Env().Undefined();
}

TF_OP(geluBackward) {
  const GeluBackwardArgs args = parse_gelu_backward(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T* xp = args.x->data<T>();
    const T* dyp = args.dy->data<T>();
    T* dxp = args.dx->data<T>();
    parallel_for(args.x->numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) dxp[i] = dyp[i] * tf::gelu_grad(xp[i]);
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_elementwise(Napi::Env env, Napi::Object ops) { TF_ELEMENTWISE_OPS(TF_EXPORT_OP) }

}  // namespace tf
