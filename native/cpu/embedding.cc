// The embeddings added to each block's input projection: the learned position embedding (read in the block's token
// order) and the class embedding (the mean over classes for a dropped or absent label), forward and backward.
// Each parallelises over rows, or sums in sample order, so results do not depend on the thread count.
#include <algorithm>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

// The class embedding a sample gets: its class row, or the mean over classes for a dropped (negative) or absent label.
template <typename T>
void mean_class_row(const T* cls, int64_t n_cls, int64_t W, std::vector<T>& mean) {
  mean.assign(W, T(0));
  for (int64_t c = 0; c < n_cls; ++c)
    for (int64_t w = 0; w < W; ++w) mean[w] += cls[c * W + w];
  for (int64_t w = 0; w < W; ++w) mean[w] /= T(n_cls);
}

// addPosClass(h[B,T,W], pos[T,W], classEmbed|null, labels|null, flip): h += pi(pos) + e(y)
TF_OP(addPosClass) {
  const AddPosClassArgs args = parse_add_pos_class(info);
  const int64_t Tn = args.Tn, W = args.W;
  const bool flip = args.flip;
  dispatch_float(args.h->dtype(), [&]<typename T>() {
    T* hp = args.h->data<T>();
    const T* pp = args.pos->data<T>();
    const T* cp = args.cls ? args.cls->data<T>() : nullptr;
    const int32_t* y = args.labels ? args.labels->data<int32_t>() : nullptr;
    std::vector<T> mean;
    if (cp) mean_class_row(cp, args.n_cls, W, mean);
    parallel_for(args.B * Tn, 16, [&](int64_t s, int64_t e) {
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
  const AddPosClassBackwardArgs args = parse_add_pos_class_backward(info);
  const int64_t B = args.B, Tn = args.Tn, W = args.W, n_cls = args.n_cls;
  const bool flip = args.flip;
  // No gradient to add; and the per-sample class sums below would loop B x W times over nothing (2^40 for an empty
  // dh of [2^20, 0, 2^20]).
  if (B == 0 || Tn == 0) return info.Env().Undefined();
  dispatch_float(args.dh->dtype(), [&]<typename T>() {
    const T* g = args.dh->data<T>();
    T* dp = args.dpos->data<T>();
    parallel_for(Tn, 1, [&](int64_t s, int64_t e) {
      for (int64_t t = s; t < e; ++t) {
        T* drow = dp + (flip ? Tn - 1 - t : t) * W;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t w = 0; w < W; ++w) drow[w] += g[(b * Tn + t) * W + w];
      }
    });
    if (!args.dcls) return;
    T* dc = args.dcls->data<T>();
    const int32_t* y = args.labels ? args.labels->data<int32_t>() : nullptr;
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

void register_embedding(Napi::Env env, Napi::Object ops) { TF_EMBEDDING_OPS(TF_EXPORT_OP) }

}  // namespace tf
