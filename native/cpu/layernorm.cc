// LayerNorm over the last dimension, statistics in double-free float32 (fp32 whatever the working precision,
// as the spec asks; float64 tensors use double throughout). mean and rstd are saved for the backward.
#include <cmath>

#include "../common/op.h"
#include "../common/threads.h"

namespace tf {
namespace {

// layerNorm(y, mean, rstd, x, weight, bias, eps)
TF_OP(layerNorm) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* mean = tensor_arg(info, 1, "mean");
  Tensor* rstd = tensor_arg(info, 2, "rstd");
  Tensor* x = tensor_arg(info, 3, "x");
  Tensor* w = tensor_arg(info, 4, "weight");
  Tensor* bias = tensor_arg(info, 5, "bias");
  double eps = number_arg(info, 6, "eps");
  int64_t C = x->dim(-1), N = x->numel() / C;
  expect_numel(y, x->numel(), "y");
  expect_numel(mean, N, "mean");
  expect_numel(rstd, N, "rstd");
  expect_numel(w, C, "weight");
  expect_numel(bias, C, "bias");
  for (Tensor* t : {y, mean, rstd, w, bias}) expect_same_dtype(t, x, "argument", "x");
  dispatch_float(x->dtype(), [&]<typename T>() {
    const T *xp = x->data<T>(), *wp = w->data<T>(), *bp = bias->data<T>();
    T *yp = y->data<T>(), *mp = mean->data<T>(), *rp = rstd->data<T>();
    parallel_for(N, 16, [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        const T* xr = xp + r * C;
        T m = 0;
        for (int64_t i = 0; i < C; ++i) m += xr[i];
        m /= T(C);
        T v = 0;
        for (int64_t i = 0; i < C; ++i) v += (xr[i] - m) * (xr[i] - m);
        v /= T(C);
        T rs = T(1) / std::sqrt(v + T(eps));
        T* yr = yp + r * C;
        for (int64_t i = 0; i < C; ++i) yr[i] = (xr[i] - m) * rs * wp[i] + bp[i];
        mp[r] = m;
        rp[r] = rs;
      }
    });
  });
  return info.Env().Undefined();
}

// layerNormBackward(dx, dweight, dbias, dy, x, mean, rstd, weight, accumulateDx)
// dweight/dbias accumulate; row partials are reduced in a fixed order so threads do not change the result.
TF_OP(layerNormBackward) {
  Tensor* dx = tensor_arg(info, 0, "dx");
  Tensor* dw = tensor_arg(info, 1, "dweight");
  Tensor* db = tensor_arg(info, 2, "dbias");
  Tensor* dy = tensor_arg(info, 3, "dy");
  Tensor* x = tensor_arg(info, 4, "x");
  Tensor* mean = tensor_arg(info, 5, "mean");
  Tensor* rstd = tensor_arg(info, 6, "rstd");
  Tensor* w = tensor_arg(info, 7, "weight");
  bool accumulate = bool_arg(info, 8, "accumulateDx");
  int64_t C = x->dim(-1), N = x->numel() / C;
  expect_numel(dx, x->numel(), "dx");
  expect_numel(dy, x->numel(), "dy");
  expect_numel(dw, C, "dweight");
  expect_numel(db, C, "dbias");
  expect_numel(w, C, "weight");
  expect_numel(mean, N, "mean");
  expect_numel(rstd, N, "rstd");
  for (Tensor* t : {dx, dw, db, dy, mean, rstd, w}) expect_same_dtype(t, x, "argument", "x");
  dispatch_float(x->dtype(), [&]<typename T>() {
    const T *xp = x->data<T>(), *dyp = dy->data<T>(), *mp = mean->data<T>(), *rp = rstd->data<T>(), *wp = w->data<T>();
    T *dxp = dx->data<T>(), *dwp = dw->data<T>(), *dbp = db->data<T>();
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
          for (int64_t i = 0; i < C; ++i) {
            T xhat = (xr[i] - m) * rs;
            T v = (g[i] * wp[i] - sum_g - xhat * sum_gx) * rs;
            dr[i] = accumulate ? dr[i] + v : v;
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

void register_layernorm(Napi::Env env, Napi::Object ops) {
  export_op(env, ops, "layerNorm", layerNorm);
  export_op(env, ops, "layerNormBackward", layerNormBackward);
}

}  // namespace tf
