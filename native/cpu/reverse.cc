// The exact inverse of one flow block: T-1 sequential steps, each feeding one token through the whole layer
// stack against a KV cache. The whole loop is one native call, so the per-token cost is arithmetic, not
// N-API crossings. With guidance the conditional and unconditional passes run as one stacked batch of 2B rows
// (rows [0,B) conditional with temperature 1, rows [B,2B) with the mean class embedding and temperature tau_u),
// and the guidance mix and the affine update happen here too.
//
// Precision (options precision and kvCache, float32 only): 'bf16' matrix products round their inputs as training's
// do (gemm.h); a 'bf16' cache stores each key and value rounded to bf16, half the memory, and the attention reads
// them back exactly as the GPU's does, so the CPU is the reference for both of the GPU's reduced-precision paths.
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "fast_exp.h"
#include "gelu.h"
#include "gemm.h"
#include "layernorm.h"

namespace tf {
namespace {

// The block's weights, packed once per call for every token step's products (fp32 only: bf16 products round their
// operands per product, as training's do).
template <typename T>
struct PackedLayer {
  PackedB<T> qkv, proj, fc1, fc2;
};

template <typename T>
PackedB<T> packed(Tensor* w) {
  return PackedB<T>(true, w->dim(0), w->dim(1), w->data<T>(), w->dim(1));
}

template <typename T>
struct PackedBlock {
  PackedB<T> in, out;
  std::vector<PackedLayer<T>> layers;
  explicit PackedBlock(const BlockWeights& w) : in(packed<T>(w.inw)), out(packed<T>(w.outw)) {
    layers.reserve(w.layers.size());
    for (const LayerWeights& lw : w.layers) layers.push_back({packed<T>(lw.qkvw), packed<T>(lw.projw), packed<T>(lw.fc1w), packed<T>(lw.fc2w)});
  }
  static size_t bytes(const BlockWeights& w) {
    auto of = [](Tensor* t) { return PackedB<T>::bytes(t->dim(0), t->dim(1)); };
    size_t total = of(w.inw) + of(w.outw);
    for (const LayerWeights& lw : w.layers) total += of(lw.qkvw) + of(lw.projw) + of(lw.fc1w) + of(lw.fc2w);
    return total;
  }
};

// y = (or +=) x W^T + b, then GELU in place when gelu is set: all of it in the GEMM's epilogue, as training's linear.
// With pw (W packed), the same product without re-packing W.
template <typename T>
void dense(T* y, const T* x, Tensor* w, const PackedB<T>* pw, Tensor* b, int64_t rows, bool accumulate, Precision precision,
           bool gelu = false) {
  int64_t N = w->dim(0), K = w->dim(1);
  const GemmEpilogue<T> ep{b->data<T>(), gelu ? y : nullptr, nullptr};
  if (pw) gemm<T>(rows, T(1), x, K, *pw, accumulate ? T(1) : T(0), y, N, true, &ep);
  else gemm<T>(precision, false, true, rows, N, K, T(1), x, K, w->data<T>(), K, accumulate ? T(1) : T(0), y, N, true, &ep);
}

template <typename T>
void layer_norm_rows(T* y, const T* x, Tensor* w, Tensor* b, int64_t rows, int64_t C, double eps) {
  const T *wp = w->data<T>(), *bp = b->data<T>();
  parallel_for(rows, 8, [&](int64_t s, int64_t e) {
    T mean, rstd;
    for (int64_t r = s; r < e; ++r) layer_norm_row(y + r * C, x + r * C, wp, bp, C, eps, mean, rstd);
  });
}

// The sizes of reverse_images' buffers for B images: the KV cache grows with the batch and the tokens. rows holds
// each step's h, ln, att (R x W each), qkv (R x 3W), f, o and tok.
struct ReverseSizes {
  int64_t W, L, H, hd, F, Do, R, n_cls;
  bool guided;
  size_t xs_n, embed_n, cache_n, rows_n;
  ReverseSizes(int64_t B, int64_t Tn, int64_t D, const BlockWeights& w, const ReverseOptions& opt)
      : W(w.inw->dim(0)), L(static_cast<int64_t>(w.layers.size())), H(opt.heads), hd(W / H),
        F(w.layers.empty() ? 0 : w.layers[0].fc1w->dim(0)), Do(opt.nvp ? 2 * D : D), R(0), n_cls(w.cls ? w.cls->numel() / W : 0),
        guided(opt.guidance > 0 && (opt.guide_a || opt.guide_b)) {
    R = guided ? 2 * B : B;
    xs_n = B * Tn * D, embed_n = R * W, cache_n = L * R * Tn * W, rows_n = R * (6 * W + F + Do + D);
  }
  // Bytes, the class-mean vector included.
  template <typename T, typename C>
  size_t bytes() const { return sizeof(T) * (xs_n + embed_n + W + rows_n) + sizeof(C) * 2 * cache_n; }
};

// The inverse for images [0, B) of x, in place. C is the cache's storage: T, or Bf16 (float only).
template <typename T, typename C>
void reverse_images(T* x, int64_t B, int64_t Tn, int64_t D, const BlockWeights& w, const PackedBlock<T>* pw, const int32_t* labels,
                    const ReverseOptions& opt) {
  const ReverseSizes z(B, Tn, D, w, opt);
  const int64_t W = z.W, L = z.L, H = z.H, hd = z.hd, F = z.F, Do = z.Do, R = z.R, n_cls = z.n_cls;
  const bool guided = z.guided;
  const size_t xs_n = z.xs_n, embed_n = z.embed_n, cache_n = z.cache_n, rows_n = z.rows_n;

  // Work in the block's token order.
  std::vector<T> xs(xs_n);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t k = 0; k < D; ++k) xs[(b * Tn + t) * D + k] = x[(b * Tn + (opt.flip ? Tn - 1 - t : t)) * D + k];

  // Per-row class embedding (or zeros for an unconditional model).
  std::vector<T> row_embed(embed_n, T(0));
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

  std::vector<C> kcache(cache_n), vcache(cache_n);
  std::vector<T> rows(rows_n);
  T* const h = rows.data();
  T* const ln = h + R * W;
  T* const att = ln + R * W;
  T* const qkv = att + R * W;
  T* const f = qkv + R * 3 * W;
  T* const o = f + R * F;
  T* const tok = o + R * Do;
  const T* pos = w.pos->data<T>();
  const double scale_c = 1.0 / std::sqrt(double(hd));

  for (int64_t i = 0; i + 1 < Tn; ++i) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < D; ++k) tok[r * D + k] = xs[((r % B) * Tn + i) * D + k];
    dense(h, tok, w.inw, pw ? &pw->in : nullptr, w.inb, R, false, opt.precision);
    const T* prow = pos + (opt.flip ? Tn - 1 - i : i) * W;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < W; ++j) h[r * W + j] += prow[j] + row_embed[r * W + j];

    for (int64_t l = 0; l < L; ++l) {
      const LayerWeights& lw = w.layers[l];
      layer_norm_rows(ln, h, lw.ln1w, lw.ln1b, R, W, opt.eps);
      const PackedLayer<T>* pl = pw ? &pw->layers[l] : nullptr;
      dense(qkv, ln, lw.qkvw, pl ? &pl->qkv : nullptr, lw.qkvb, R, false, opt.precision);
      C* kc = kcache.data() + l * R * Tn * W;
      C* vc = vcache.data() + l * R * Tn * W;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < W; ++j) {
          kc[(r * Tn + i) * W + j] = to_cache<C>(qkv[r * 3 * W + W + j]);
          vc[(r * Tn + i) * W + j] = to_cache<C>(qkv[r * 3 * W + 2 * W + j]);
        }
      parallel_for(R * H, 4, [&](int64_t s, int64_t e) {
        // One logits row per thread, kept across token steps and calls: no allocation inside the token loop.
        static thread_local std::vector<T> logits;
        if (logits.size() < size_t(i + 1)) logits.resize(size_t(Tn));
        for (int64_t rh = s; rh < e; ++rh) {
          int64_t r = rh / H, hh = rh % H;
          T scale = T(scale_c / (r >= B ? opt.temp_uncond : 1.0));
          const T* q = qkv + r * 3 * W + hh * hd;
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j <= i; ++j) {
            const C* kr = kc + (r * Tn + j) * W + hh * hd;
            // A vector reduction (lanes summed at the end): written as a plain loop the dot product is one chain of
            // dependent adds, and the sampler spent most of its time waiting on it.
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < hd; ++c) dot += q[c] * T(cache_value(kr[c]));
            logits[j] = dot * scale;
            mx = std::max(mx, logits[j]);
          }
          T sum = 0;
          for (int64_t j = 0; j <= i; ++j) {
            logits[j] = fast_exp(logits[j] - mx);
            sum += logits[j];
          }
          T* out = att + r * W + hh * hd;
          for (int64_t c = 0; c < hd; ++c) out[c] = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const C* vr = vc + (r * Tn + j) * W + hh * hd;
            T p = logits[j] / sum;
            for (int64_t c = 0; c < hd; ++c) out[c] += p * T(cache_value(vr[c]));
          }
        }
      });
      dense(h, att, lw.projw, pl ? &pl->proj : nullptr, lw.projb, R, true, opt.precision);
      layer_norm_rows(ln, h, lw.ln2w, lw.ln2b, R, W, opt.eps);
      dense(f, ln, lw.fc1w, pl ? &pl->fc1 : nullptr, lw.fc1b, R, false, opt.precision, true);
      dense(h, f, lw.fc2w, pl ? &pl->fc2 : nullptr, lw.fc2b, R, true, opt.precision);
    }
    dense(o, h, w.outw, pw ? &pw->out : nullptr, w.outb, R, false, opt.precision);

    const T g = T(opt.annealed ? opt.guidance * double(i + 1) / double(Tn - 1) : opt.guidance);
    for (int64_t b = 0; b < B; ++b) {
      const T* oc = o + b * Do;
      const T* ou = guided ? o + (B + b) * Do : nullptr;
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

// Images are independent (an image and its unconditional twin under guidance share nothing with the others), so
// the batch is split over the threads, each running every token step of its images with serial products: the
// per-op parallel loops of one step (a dozen per layer, on 100-row products) spent a third of the sampler's time
// waking and waiting for the pool. Every row's arithmetic is the same either way (the GEMM's results do not depend on
// M or on the rows beside them), so images do not depend on the batch or the split. A single image (or a one-thread
// pool) keeps the per-op parallel loops.
template <typename T, typename C>
void block_reverse(T* x, int64_t B, int64_t Tn, int64_t D, const BlockWeights& w, const int32_t* labels, const ReverseOptions& opt) {
  // Every buffer, counted against the memory limit before any is allocated (each split allocates its share, and
  // its own class mean), and the packed weights.
  const int64_t splits = parallel_ranges(B, 1);
  const bool pack = opt.precision == Precision::F32;
  const MemoryReservation counted(ReverseSizes(B, Tn, D, w, opt).bytes<T, C>() + sizeof(T) * w.inw->dim(0) * std::max<int64_t>(splits - 1, 0) +
                                      (pack ? PackedBlock<T>::bytes(w) : 0),
                                  "blockReverse's KV cache, working rows and packed weights");
  const std::optional<PackedBlock<T>> pw = pack ? std::optional<PackedBlock<T>>(std::in_place, w) : std::nullopt;
  const PackedBlock<T>* packed_weights = pw ? &*pw : nullptr;
  if (splits <= 1) return reverse_images<T, C>(x, B, Tn, D, w, packed_weights, labels, opt);
  parallel_for(B, 1, [&](int64_t s, int64_t e) {
    reverse_images<T, C>(x + s * Tn * D, e - s, Tn, D, w, packed_weights, labels ? labels + s : nullptr, opt);
  });
}

// blockReverse(x[B,T,D] (in place, natural token order), weights, options)
TF_OP(blockReverse) {
  const BlockReverseArgs args = parse_block_reverse(info);
  const int32_t* labels = args.labels ? args.labels->data<int32_t>() : nullptr;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    if constexpr (std::is_same_v<T, float>) {
      if (args.opt.kv_cache == Precision::BF16) return block_reverse<T, Bf16>(args.x->data<T>(), args.B, args.Tn, args.D, args.w, labels, args.opt);
    }
    block_reverse<T, T>(args.x->data<T>(), args.B, args.Tn, args.D, args.w, labels, args.opt);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_reverse(Napi::Env env, Napi::Object ops) { TF_REVERSE_OPS(TF_EXPORT_OP) }

}  // namespace tf
