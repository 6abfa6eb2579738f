// The position and class embeddings added to each block's input projection: the CUDA twin of
// native/cpu/embedding.cc. The class gradient sums each class's samples in sample order, as the CPU does, without
// atomics, so it does not depend on scheduling.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "layers.cuh"

namespace tf {
namespace {

constexpr int kThreads = 256;

using cuda::blocks_for;
using cuda::stream;

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

// addPosClass(h[B,T,W], pos[T,W], classEmbed|null, labels|null, flip): h += pi(pos) + e(y)
TF_OP(addPosClass) {
  const AddPosClassArgs args = parse_add_pos_class(info);
  const int64_t B = args.B, Tn = args.Tn, W = args.W;
  int64_t n = B * Tn * W;
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.h->dtype(), [&]<typename T>() {
    const T* cp = args.cls ? args.cls->data<T>() : nullptr;
    T* mean = nullptr;
    if (cp) {
      mean = cuda::scratch_as<T>(0, W);
      mean_class_kernel<T><<<blocks_for(W, kThreads), kThreads, 0, stream()>>>(mean, cp, args.n_cls, W);
      cuda::check_launch("addPosClass (mean class)");
    }
    add_pos_class_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        args.h->data<T>(), args.pos->data<T>(), cp, mean, args.labels ? args.labels->data<int32_t>() : nullptr, B, Tn, W, args.flip);
  });
  return info.Env().Undefined();
}

// addPosClassBackward(dpos, dclassEmbed|null, dh, labels|null, flip): accumulates into dpos and dclassEmbed.
TF_OP(addPosClassBackward) {
  const AddPosClassBackwardArgs args = parse_add_pos_class_backward(info);
  const int64_t B = args.B, Tn = args.Tn, W = args.W;
  if (Tn * W == 0) return info.Env().Undefined();
  dispatch_float(args.dh->dtype(), [&]<typename T>() {
    const T* g = args.dh->data<T>();
    dpos_kernel<T><<<blocks_for(Tn * W, kThreads), kThreads, 0, stream()>>>(args.dpos->data<T>(), g, B, Tn, W, args.flip);
    cuda::check_launch("addPosClassBackward (pos)");
    if (!args.dcls || B == 0) return;
    T* ps = cuda::scratch_as<T>(0, B * W);
    per_sample_sum_kernel<T><<<blocks_for(B * W, kThreads), kThreads, 0, stream()>>>(ps, g, B, Tn, W);
    cuda::check_launch("addPosClassBackward (per sample)");
    dclass_kernel<T><<<blocks_for(args.n_cls * W, kThreads), kThreads, 0, stream()>>>(
        args.dcls->data<T>(), ps, args.labels ? args.labels->data<int32_t>() : nullptr, B, args.n_cls, W);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_embedding(Napi::Env env, Napi::Object ops) { TF_EMBEDDING_OPS(TF_EXPORT_OP) }

}  // namespace tf
