// The exact inverse of one flow block: T-1 sequential steps, each feeding one token through the whole layer
// stack against a KV cache. The whole loop is one native call, so the per-token cost is arithmetic, not
// N-API crossings. With guidance the conditional and unconditional passes run as one stacked batch of 2B rows
// (rows [0,B) conditional with temperature 1, rows [B,2B) with the mean class embedding and temperature tau_u),
// and the guidance mix and the affine update happen here too.
#include <cmath>
#include <limits>
#include <vector>

#include "../common/op.h"
#include "../common/threads.h"
#include "gelu.h"
#include "gemm.h"

namespace tf {
namespace {

struct LayerWeights {
  Tensor *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b, *fc1w, *fc1b, *fc2w, *fc2b;
};

struct BlockWeights {
  Tensor *inw, *inb, *pos, *cls, *outw, *outb;
  std::vector<LayerWeights> layers;
};

BlockWeights read_weights(const Napi::Object& o) {
  BlockWeights w;
  w.inw = tensor_prop(o, "projInWeight");
  w.inb = tensor_prop(o, "projInBias");
  w.pos = tensor_prop(o, "pos");
  w.cls = tensor_prop(o, "classEmbed", true);
  w.outw = tensor_prop(o, "projOutWeight");
  w.outb = tensor_prop(o, "projOutBias");
  Napi::Value lv = o.Get("layers");
  if (!lv.IsArray()) throw arg_error("blockReverse: weights.layers must be an array");
  Napi::Array la = lv.As<Napi::Array>();
  for (uint32_t i = 0; i < la.Length(); ++i) {
    Napi::Value e = la.Get(i);
    if (!e.IsObject()) throw arg_error("blockReverse: weights.layers[" + std::to_string(i) + "] must be an object");
    Napi::Object l = e.As<Napi::Object>();
    w.layers.push_back({tensor_prop(l, "ln1Weight"), tensor_prop(l, "ln1Bias"), tensor_prop(l, "qkvWeight"), tensor_prop(l, "qkvBias"),
                        tensor_prop(l, "projWeight"), tensor_prop(l, "projBias"), tensor_prop(l, "ln2Weight"), tensor_prop(l, "ln2Bias"),
                        tensor_prop(l, "fc1Weight"), tensor_prop(l, "fc1Bias"), tensor_prop(l, "fc2Weight"), tensor_prop(l, "fc2Bias")});
  }
  return w;
}

template <typename T>
void dense(T* y, const T* x, Tensor* w, Tensor* b, int64_t rows, bool accumulate) {
  int64_t N = w->dim(0), K = w->dim(1);
  gemm<T>(false, true, rows, N, K, T(1), x, K, w->data<T>(), K, accumulate ? T(1) : T(0), y, N);
  const T* bp = b->data<T>();
  parallel_for(rows, 16, [&](int64_t s, int64_t e) {
    for (int64_t r = s; r < e; ++r)
      for (int64_t j = 0; j < N; ++j) y[r * N + j] += bp[j];
  });
}

template <typename T>
void layer_norm_rows(T* y, const T* x, Tensor* w, Tensor* b, int64_t rows, int64_t C, double eps) {
  const T *wp = w->data<T>(), *bp = b->data<T>();
  parallel_for(rows, 8, [&](int64_t s, int64_t e) {
  for (int64_t r = s; r < e; ++r) {
    const T* xr = x + r * C;
    T m = 0, v = 0;
    for (int64_t i = 0; i < C; ++i) m += xr[i];
    m /= T(C);
    for (int64_t i = 0; i < C; ++i) v += (xr[i] - m) * (xr[i] - m);
    v /= T(C);
    T rs = T(1) / std::sqrt(v + T(eps));
    for (int64_t i = 0; i < C; ++i) y[r * C + i] = (xr[i] - m) * rs * wp[i] + bp[i];
  }
  });
}

struct ReverseOptions {
  bool flip = false, nvp = true, guide_a = true, guide_b = true, annealed = false;
  int64_t heads = 1;
  double guidance = 0, temp_uncond = 1, eps = 1e-5;
};

template <typename T>
void block_reverse(T* x, int64_t B, int64_t Tn, int64_t D, const BlockWeights& w, const int32_t* labels, const ReverseOptions& opt) {
  const int64_t W = w.inw->dim(0), L = static_cast<int64_t>(w.layers.size()), H = opt.heads, hd = W / H, F = w.layers.empty() ? 0 : w.layers[0].fc1w->dim(0);
  const int64_t Do = opt.nvp ? 2 * D : D;
  const bool guided = opt.guidance > 0 && (opt.guide_a || opt.guide_b);
  const int64_t R = guided ? 2 * B : B;
  const int64_t n_cls = w.cls ? w.cls->numel() / W : 0;

  // Work in the block's token order.
  std::vector<T> xs(static_cast<size_t>(B * Tn * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t k = 0; k < D; ++k) xs[(b * Tn + t) * D + k] = x[(b * Tn + (opt.flip ? Tn - 1 - t : t)) * D + k];

  // Per-row class embedding (or zeros for an unconditional model).
  std::vector<T> row_embed(static_cast<size_t>(R * W), T(0));
  if (w.cls) {
    const T* cp = w.cls->data<T>();
    std::vector<T> mean(W, T(0));
    for (int64_t c = 0; c < n_cls; ++c)
      for (int64_t j = 0; j < W; ++j) mean[j] += cp[c * W + j];
    for (int64_t j = 0; j < W; ++j) mean[j] /= T(n_cls);
    for (int64_t r = 0; r < R; ++r) {
      bool cond = r < B && labels && labels[r] >= 0;
      const T* src = cond ? cp + int64_t(labels[r]) * W : mean.data();
      for (int64_t j = 0; j < W; ++j) row_embed[r * W + j] = src[j];
    }
  }

  std::vector<T> kcache(static_cast<size_t>(L * R * Tn * W)), vcache(kcache.size());
  std::vector<T> h(R * W), ln(R * W), qkv(R * 3 * W), att(R * W), f(R * F), o(R * Do), tok(R * D);
  const T* pos = w.pos->data<T>();
  const double scale_c = 1.0 / std::sqrt(double(hd));

  for (int64_t i = 0; i + 1 < Tn; ++i) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < D; ++k) tok[r * D + k] = xs[((r % B) * Tn + i) * D + k];
    dense(h.data(), tok.data(), w.inw, w.inb, R, false);
    const T* prow = pos + (opt.flip ? Tn - 1 - i : i) * W;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < W; ++j) h[r * W + j] += prow[j] + row_embed[r * W + j];

    for (int64_t l = 0; l < L; ++l) {
      const LayerWeights& lw = w.layers[l];
      layer_norm_rows(ln.data(), h.data(), lw.ln1w, lw.ln1b, R, W, opt.eps);
      dense(qkv.data(), ln.data(), lw.qkvw, lw.qkvb, R, false);
      T* kc = kcache.data() + l * R * Tn * W;
      T* vc = vcache.data() + l * R * Tn * W;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < W; ++j) {
          kc[(r * Tn + i) * W + j] = qkv[r * 3 * W + W + j];
          vc[(r * Tn + i) * W + j] = qkv[r * 3 * W + 2 * W + j];
        }
      parallel_for(R * H, 4, [&](int64_t s, int64_t e) {
        std::vector<T> logits(i + 1);
        for (int64_t rh = s; rh < e; ++rh) {
          int64_t r = rh / H, hh = rh % H;
          T scale = T(scale_c / (r >= B ? opt.temp_uncond : 1.0));
          const T* q = qkv.data() + r * 3 * W + hh * hd;
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j <= i; ++j) {
            const T* kr = kc + (r * Tn + j) * W + hh * hd;
            T dot = 0;
            for (int64_t c = 0; c < hd; ++c) dot += q[c] * kr[c];
            logits[j] = dot * scale;
            mx = std::max(mx, logits[j]);
          }
          T sum = 0;
          for (int64_t j = 0; j <= i; ++j) {
            logits[j] = std::exp(logits[j] - mx);
            sum += logits[j];
          }
          T* out = att.data() + r * W + hh * hd;
          for (int64_t c = 0; c < hd; ++c) out[c] = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const T* vr = vc + (r * Tn + j) * W + hh * hd;
            T p = logits[j] / sum;
            for (int64_t c = 0; c < hd; ++c) out[c] += p * vr[c];
          }
        }
      });
      dense(h.data(), att.data(), lw.projw, lw.projb, R, true);
      layer_norm_rows(ln.data(), h.data(), lw.ln2w, lw.ln2b, R, W, opt.eps);
      dense(f.data(), ln.data(), lw.fc1w, lw.fc1b, R, false);
      parallel_for(static_cast<int64_t>(f.size()), 4096, [&](int64_t s, int64_t e) {
        for (int64_t j = s; j < e; ++j) f[j] = tf::gelu(f[j]);
      });
      dense(h.data(), f.data(), lw.fc2w, lw.fc2b, R, true);
    }
    dense(o.data(), h.data(), w.outw, w.outb, R, false);

    const T g = T(opt.annealed ? opt.guidance * double(i + 1) / double(Tn - 1) : opt.guidance);
    for (int64_t b = 0; b < B; ++b) {
      const T* oc = o.data() + b * Do;
      const T* ou = guided ? o.data() + (B + b) * Do : nullptr;
      T* target = xs.data() + (b * Tn + i + 1) * D;
      for (int64_t k = 0; k < D; ++k) {
        T a = opt.nvp ? oc[k] : T(0);
        T sh = opt.nvp ? oc[D + k] : oc[k];
        if (guided) {
          if (opt.nvp && opt.guide_a) a = a + g * (a - ou[k]);
          if (opt.guide_b) sh = sh + g * (sh - (opt.nvp ? ou[D + k] : ou[k]));
        }
        target[k] = target[k] * std::exp(a) + sh;
      }
    }
  }

  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t k = 0; k < D; ++k) x[(b * Tn + (opt.flip ? Tn - 1 - t : t)) * D + k] = xs[(b * Tn + t) * D + k];
}

bool opt_bool(const Napi::Object& o, const char* k, bool dflt) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return dflt;
  if (!v.IsBoolean()) throw arg_error(std::string("blockReverse: option '") + k + "' must be a boolean");
  return v.As<Napi::Boolean>().Value();
}
double opt_num(const Napi::Object& o, const char* k, double dflt) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return dflt;
  if (!v.IsNumber()) throw arg_error(std::string("blockReverse: option '") + k + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// blockReverse(x[B,T,D] (in place, natural token order), weights, options)
TF_OP(blockReverse) {
  Tensor* x = tensor_arg(info, 0, "x");
  if (info.Length() < 3 || !info[1].IsObject() || !info[2].IsObject()) throw arg_error("blockReverse(x, weights, options)");
  BlockWeights w = read_weights(info[1].As<Napi::Object>());
  Napi::Object oo = info[2].As<Napi::Object>();
  ReverseOptions opt;
  opt.flip = opt_bool(oo, "flip", false);
  opt.nvp = opt_bool(oo, "nvp", true);
  opt.guide_a = opt_bool(oo, "guideA", true);
  opt.guide_b = opt_bool(oo, "guideB", true);
  opt.annealed = opt_bool(oo, "annealed", false);
  opt.heads = static_cast<int64_t>(opt_num(oo, "heads", 1));
  opt.guidance = opt_num(oo, "guidance", 0);
  opt.temp_uncond = opt_num(oo, "tempUncond", 1);
  opt.eps = opt_num(oo, "eps", 1e-5);
  Tensor* labels = tensor_prop(oo, "labels", true);

  if (x->ndim() != 3) throw shape_error("blockReverse: x must be [B, T, D], got " + x->describe());
  int64_t B = x->dim(0), Tn = x->dim(1), D = x->dim(2), W = w.inw->dim(0);
  expect_shape(w.inw, {W, D}, "projInWeight");
  expect_shape(w.pos, {Tn, W}, "pos");
  expect_shape(w.outw, {opt.nvp ? 2 * D : D, W}, "projOutWeight");
  if (opt.heads <= 0 || W % opt.heads) throw arg_error("blockReverse: heads must divide the width");
  if (labels) {
    expect_dtype(labels, DType::I32, "labels");
    expect_numel(labels, B, "labels");
    int64_t n_cls = w.cls ? w.cls->numel() / W : 0;
    for (int64_t b = 0; b < B; ++b)
      if (labels->data<int32_t>()[b] >= n_cls)
        throw arg_error("blockReverse: label " + std::to_string(labels->data<int32_t>()[b]) + " is out of range for " + std::to_string(n_cls) + " classes");
  }
  for (Tensor* t : {w.inw, w.inb, w.pos, w.outw, w.outb}) expect_same_dtype(t, x, "weight", "x");
  for (const auto& l : w.layers) {
    int64_t F = l.fc1w->dim(0);
    for (Tensor* t : {l.ln1w, l.ln1b, l.ln2w, l.ln2b, l.projb, l.fc2b}) expect_numel(t, W, "layer norm/bias");
    expect_shape(l.qkvw, {3 * W, W}, "qkvWeight");
    expect_numel(l.qkvb, 3 * W, "qkvBias");
    expect_shape(l.projw, {W, W}, "projWeight");
    expect_shape(l.fc1w, {F, W}, "fc1Weight");
    expect_numel(l.fc1b, F, "fc1Bias");
    expect_shape(l.fc2w, {W, F}, "fc2Weight");
    if (F != w.layers[0].fc1w->dim(0)) throw shape_error("blockReverse: every layer must have the same MLP width");
  }
  expect_numel(w.inb, W, "projInBias");
  expect_numel(w.outb, opt.nvp ? 2 * D : D, "projOutBias");
  if (w.cls && (w.cls->numel() % W || w.cls->numel() == 0)) throw shape_error("classEmbed must be [numClasses, 1, W]");
  for (const auto& l : w.layers)
    for (Tensor* t : {l.ln1w, l.ln1b, l.qkvw, l.qkvb, l.projw, l.projb, l.ln2w, l.ln2b, l.fc1w, l.fc1b, l.fc2w, l.fc2b}) expect_same_dtype(t, x, "weight", "x");
  dispatch_float(x->dtype(), [&]<typename T>() {
    block_reverse<T>(x->data<T>(), B, Tn, D, w, labels ? labels->data<int32_t>() : nullptr, opt);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_reverse(Napi::Env env, Napi::Object ops) { export_op(env, ops, "blockReverse", blockReverse); }

}  // namespace tf
