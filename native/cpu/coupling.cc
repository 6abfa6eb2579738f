// The affine autoregressive coupling of one flow block, in the block's own token order:
//   v_0 = u_0,  v_i = (u_i - b_{i-1}) * exp(-a_{i-1})  for i >= 1,
// where (a, b) are the block output o split in halves (NVP) or a = 0, b = o (VP): the shift by one makes
// position i depend only on tokens before it. logdet = -mean(a) over the T*D entries (the zero row included).
// exp is evaluated in the working precision's float (fp32 for float32), matching the reference.
#include <cmath>

#include "../common/op.h"
#include "../common/threads.h"

namespace tf {
namespace {

struct CouplingDims {
  int64_t B, T, D, Do;
};

CouplingDims coupling_dims(Tensor* u, Tensor* o, bool nvp) {
  if (u->ndim() != 3) throw shape_error("u must be [B, T, D], got " + u->describe());
  int64_t B = u->dim(0), T = u->dim(1), D = u->dim(2), Do = nvp ? 2 * D : D;
  expect_shape(o, {B, T, Do}, nvp ? "o (NVP: 2D outputs per token)" : "o (VP: D outputs per token)");
  expect_same_dtype(u, o, "u", "o");
  return {B, T, D, Do};
}

// couplingForward(v, logdet[B], u, o, nvp, accumulateLogdet)
TF_OP(couplingForward) {
  Tensor* v = tensor_arg(info, 0, "v");
  Tensor* logdet = tensor_arg(info, 1, "logdet");
  Tensor* u = tensor_arg(info, 2, "u");
  Tensor* o = tensor_arg(info, 3, "o");
  bool nvp = bool_arg(info, 4, "nvp");
  bool accumulate = bool_arg(info, 5, "accumulateLogdet");
  CouplingDims d = coupling_dims(u, o, nvp);
  expect_shape(v, u->shape(), "v");
  expect_numel(logdet, d.B, "logdet");
  expect_same_dtype(v, u, "v", "u");
  expect_same_dtype(logdet, u, "logdet", "u");
  dispatch_float(u->dtype(), [&]<typename T>() {
    const T *up = u->data<T>(), *opp = o->data<T>();
    T *vp = v->data<T>(), *lp = logdet->data<T>();
    parallel_for(d.B, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b) {
        const T* ub = up + b * d.T * d.D;
        T* vb = vp + b * d.T * d.D;
        for (int64_t k = 0; k < d.D; ++k) vb[k] = ub[k];
        T sum_a = 0;
        for (int64_t i = 1; i < d.T; ++i) {
          const T* orow = opp + (b * d.T + i - 1) * d.Do;
          const T* shift = nvp ? orow + d.D : orow;
          for (int64_t k = 0; k < d.D; ++k) {
            T a = nvp ? orow[k] : T(0);
            sum_a += a;
            vb[i * d.D + k] = (ub[i * d.D + k] - shift[k]) * std::exp(-a);
          }
        }
        T ld = -sum_a / T(d.T * d.D);
        lp[b] = accumulate ? lp[b] + ld : ld;
      }
    });
  });
  return info.Env().Undefined();
}

// couplingBackward(du, do, dv, u, o, nvp, logdetGrad): du and do are overwritten. logdetGrad is
// dLoss/dlogdet for every sample (-1/B for the training loss).
TF_OP(couplingBackward) {
  Tensor* du = tensor_arg(info, 0, "du");
  Tensor* dout = tensor_arg(info, 1, "do");
  Tensor* dv = tensor_arg(info, 2, "dv");
  Tensor* u = tensor_arg(info, 3, "u");
  Tensor* o = tensor_arg(info, 4, "o");
  bool nvp = bool_arg(info, 5, "nvp");
  double logdet_grad = number_arg(info, 6, "logdetGrad");
  CouplingDims d = coupling_dims(u, o, nvp);
  expect_shape(du, u->shape(), "du");
  expect_shape(dv, u->shape(), "dv");
  expect_shape(dout, o->shape(), "do");
  for (Tensor* t : {du, dout, dv}) expect_same_dtype(t, u, "gradient", "u");
  dispatch_float(u->dtype(), [&]<typename T>() {
    const T *up = u->data<T>(), *opp = o->data<T>(), *gv = dv->data<T>();
    T *gu = du->data<T>(), *go = dout->data<T>();
    const T da_logdet = T(-logdet_grad / double(d.T * d.D));
    parallel_for(d.B, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b) {
        const T* ub = up + b * d.T * d.D;
        const T* gvb = gv + b * d.T * d.D;
        T* gub = gu + b * d.T * d.D;
        for (int64_t k = 0; k < d.D; ++k) gub[k] = gvb[k];
        for (int64_t i = 1; i < d.T; ++i) {
          const T* orow = opp + (b * d.T + i - 1) * d.Do;
          T* grow = go + (b * d.T + i - 1) * d.Do;
          const T* shift = nvp ? orow + d.D : orow;
          T* gshift = nvp ? grow + d.D : grow;
          for (int64_t k = 0; k < d.D; ++k) {
            T a = nvp ? orow[k] : T(0);
            T sc = std::exp(-a);
            T g = gvb[i * d.D + k];
            gub[i * d.D + k] = g * sc;
            gshift[k] = -g * sc;
            if (nvp) grow[k] = -g * (ub[i * d.D + k] - shift[k]) * sc + da_logdet;
          }
        }
        T* last = go + (b * d.T + d.T - 1) * d.Do;
        for (int64_t k = 0; k < d.Do; ++k) last[k] = 0;
      }
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_coupling(Napi::Env env, Napi::Object ops) {
  export_op(env, ops, "couplingForward", couplingForward);
  export_op(env, ops, "couplingBackward", couplingBackward);
}

}  // namespace tf
