// AdamW over the flat parameter buffer in one pass (PyTorch's formulation): decoupled weight decay
// p -= lr*wd*p first, then the bias-corrected Adam step p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

// adamw(params, grads, m, v, {lr, beta1, beta2, eps, weightDecay, step})  (step counts from 1)
TF_OP(adamw) {
  const AdamWArgs args = parse_adamw(info);
  const double lr = args.lr, b1 = args.beta1, b2 = args.beta2, eps = args.eps, wd = args.weight_decay, step = args.step;
  double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  dispatch_float(args.params->dtype(), [&]<typename T>() {
    T *pp = args.params->data<T>(), *mp = args.m->data<T>(), *vp = args.v->data<T>();
    const T* gp = args.grads->data<T>();
    const T decay = T(1 - lr * wd), tb1 = T(b1), tb2 = T(b2), step_size = T(lr / bc1), rbc2 = T(1 / std::sqrt(bc2)), teps = T(eps);
    parallel_for(args.params->numel(), 1 << 14, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        T gi = gp[i];
        T mi = tb1 * mp[i] + (T(1) - tb1) * gi;
        T vi = tb2 * vp[i] + (T(1) - tb2) * gi * gi;
        mp[i] = mi;
        vp[i] = vi;
        pp[i] = pp[i] * decay - step_size * mi / (std::sqrt(vi) * rbc2 + teps);
      }
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_adamw(Napi::Env env, Napi::Object ops) { TF_ADAMW_OPS(TF_EXPORT_OP) }

}  // namespace tf
