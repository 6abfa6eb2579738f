// The affine autoregressive coupling of one flow block, in the block's own token order:
//   v_0 = u_0,  v_i = (u_i - b_{i-1}) * exp(-a_{i-1})  for i >= 1,
// where (a, b) are the block output o split in halves (NVP) or a = 0, b = o (VP): the shift by one makes
// position i depend only on tokens before it. logdet = -mean(a) over the T*D entries (the zero row included).
// exp is evaluated in the working precision's float (fp32 for float32), matching the reference.
// The inverse (sampling), with the guidance mix, is not here: it runs inside the sampler's token loop, in
// reverse.cc, and a change to the coupling must be made there too.
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

// couplingForward(v, logdet[B], u, o, nvp, accumulateLogdet)
TF_OP(couplingForward) {
  const CouplingForwardArgs args = parse_coupling_forward(info);
  const CouplingDims& d = args.d;
  dispatch_float(args.u->dtype(), [&]<typename T>() {
    const T *up = args.u->data<T>(), *opp = args.o->data<T>();
    T *vp = args.v->data<T>(), *lp = args.logdet->data<T>();
    parallel_for(d.B, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b) {
        const T* ub = up + b * d.T * d.D;
        T* vb = vp + b * d.T * d.D;
        for (int64_t k = 0; k < d.D; ++k) vb[k] = ub[k];
        T sum_a = 0;
        for (int64_t i = 1; i < d.T; ++i) {
          const T* orow = opp + (b * d.T + i - 1) * d.Do;
          const T* shift = args.nvp ? orow + d.D : orow;
          for (int64_t k = 0; k < d.D; ++k) {
            T a = args.nvp ? orow[k] : T(0);
            sum_a += a;
            vb[i * d.D + k] = (ub[i * d.D + k] - shift[k]) * std::exp(-a);
          }
        }
        T ld = -sum_a / T(d.T * d.D);
        lp[b] = args.accumulate ? lp[b] + ld : ld;
      }
    });
  });
  return info.Env().Undefined();
}

// couplingBackward(du, do, dv, u, o, nvp, logdetGrad): du and do are overwritten. logdetGrad is
// dLoss/dlogdet for every sample (-1/B for the training loss).
TF_OP(couplingBackward) {
  const CouplingBackwardArgs args = parse_coupling_backward(info);
  const CouplingDims& d = args.d;
  dispatch_float(args.u->dtype(), [&]<typename T>() {
    const T *up = args.u->data<T>(), *opp = args.o->data<T>(), *gv = args.dv->data<T>();
    T *gu = args.du->data<T>(), *go = args.dout->data<T>();
    const T da_logdet = T(-args.logdet_grad / double(d.T * d.D));
    parallel_for(d.B, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b) {
        const T* ub = up + b * d.T * d.D;
        const T* gvb = gv + b * d.T * d.D;
        T* gub = gu + b * d.T * d.D;
        for (int64_t k = 0; k < d.D; ++k) gub[k] = gvb[k];
        for (int64_t i = 1; i < d.T; ++i) {
          const T* orow = opp + (b * d.T + i - 1) * d.Do;
          T* grow = go + (b * d.T + i - 1) * d.Do;
          const T* shift = args.nvp ? orow + d.D : orow;
          T* gshift = args.nvp ? grow + d.D : grow;
          for (int64_t k = 0; k < d.D; ++k) {
            T a = args.nvp ? orow[k] : T(0);
            T sc = std::exp(-a);
            T g = gvb[i * d.D + k];
            gub[i * d.D + k] = g * sc;
            gshift[k] = -g * sc;
            if (args.nvp) grow[k] = -g * (ub[i * d.D + k] - shift[k]) * sc + da_logdet;
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

void register_coupling(Napi::Env env, Napi::Object ops) { TF_COUPLING_OPS(TF_EXPORT_OP) }

}  // namespace tf
