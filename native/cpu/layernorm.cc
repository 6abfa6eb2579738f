// LayerNorm over the last dimension. Statistics are in the tensors' own float type: fp32 for float32 tensors,
// whatever the matrix products' precision (the spec keeps them fp32 under bf16), and double for the float64 tensors
// of the gradient checks. mean and rstd are saved for the backward.
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "layernorm.h"

namespace tf {
namespace {

// layerNorm(y, mean, rstd, x, weight, bias, eps)
TF_OP(layerNorm) {
  const LayerNormArgs args = parse_layer_norm(info);
  const int64_t N = args.N, C = args.C;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T *xp = args.x->data<T>(), *wp = args.weight->data<T>(), *bp = args.bias->data<T>();
    T *yp = args.y->data<T>(), *mp = args.mean->data<T>(), *rp = args.rstd->data<T>();
    parallel_for(N, 16, [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) layer_norm_row(yp + r * C, xp + r * C, wp, bp, C, args.eps, mp[r], rp[r]);
    });
  });
  return info.Env().Undefined();
}

// layerNormBackward(dx, dweight, dbias, dy, x, mean, rstd, weight, accumulateDx)
// dweight/dbias accumulate; row partials are reduced in a fixed order so threads do not change the result.
TF_OP(layerNormBackward) {
  const LayerNormBackwardArgs args = parse_layer_norm_backward(info);
  const int64_t N = args.N, C = args.C;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T *xp = args.x->data<T>(), *dyp = args.dy->data<T>(), *mp = args.mean->data<T>(), *rp = args.rstd->data<T>(), *wp = args.weight->data<T>();
    T *dxp = args.dx->data<T>(), *dwp = args.dweight->data<T>(), *dbp = args.dbias->data<T>();
    constexpr int64_t kRowsPerBlock = 64;
    int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    std::vector<T> partial(static_cast<size_t>(blocks) * 2 * C, T(0));
    parallel_for(blocks, 1, [&](int64_t s, int64_t e) {
      for (int64_t k = s; k < e; ++k) {
        T* pw = partial.data() + k * 2 * C;
        T* pb = pw + C;
        for (int64_t r = k * kRowsPerBlock; r < std::min(N, (k + 1) * kRowsPerBlock); ++r) {
          const T *xr = xp + r * C, *g = dyp + r * C;
          T m = mp[r], rs = rp[r];
          T sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
          for (int64_t i = 0; i < C; ++i) {
            T xhat = (xr[i] - m) * rs;
            T gw = g[i] * wp[i];
            sum_g += gw;
            sum_gx += gw * xhat;
            pw[i] += g[i] * xhat;
            pb[i] += g[i];
          }
          sum_g /= T(C);
          sum_gx /= T(C);
          T* dr = dxp + r * C;
#pragma omp simd
          for (int64_t i = 0; i < C; ++i) {
            T xhat = (xr[i] - m) * rs;
            T v = (g[i] * wp[i] - sum_g - xhat * sum_gx) * rs;
            dr[i] = args.accumulate ? dr[i] + v : v;
          }
        }
      }
    });
    for (int64_t k = 0; k < blocks; ++k)
      for (int64_t i = 0; i < C; ++i) {
        dwp[i] += partial[k * 2 * C + i];
        dbp[i] += partial[k * 2 * C + C + i];
      }
  });
  return info.Env().Undefined();
}

}  // namespace

void register_layernorm(Napi::Env env, Napi::Object ops) { TF_LAYERNORM_OPS(TF_EXPORT_OP) }

}  // namespace tf
