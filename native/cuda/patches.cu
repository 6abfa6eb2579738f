// The token layout of an image: the CUDA twin of native/cpu/patches.cc. One thread per value moved and no
// arithmetic, so the GPU's patches and flipped tokens equal the CPU's bit for bit.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "layers.cuh"

namespace tf {
namespace {

constexpr int kThreads = 256;

using cuda::blocks_for;
using cuda::stream;

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

}  // namespace

void register_patches(Napi::Env env, Napi::Object ops) { TF_PATCH_OPS(TF_EXPORT_OP) }

}  // namespace tf
