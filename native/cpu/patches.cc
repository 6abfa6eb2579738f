// The token layout of an image: patchify and unpatchify (image <-> patch rows; each is the other's inverse, and so
// its backward) and flipTokens (the odd blocks' reversed token order, its own inverse), so the layout needs no
// backward ops of its own. They only move values: exact, whatever the thread count.
#include <cstring>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

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

}  // namespace

void register_patches(Napi::Env env, Napi::Object ops) { TF_PATCH_OPS(TF_EXPORT_OP) }

}  // namespace tf
