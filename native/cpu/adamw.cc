// AdamW over the flat parameter buffer in one pass (PyTorch's formulation): decoupled weight decay
// p -= lr*wd*p first, then the bias-corrected Adam step p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
#include <cmath>

#include "../common/op.h"
#include "../common/threads.h"

namespace tf {
namespace {

// adamw(params, grads, m, v, {lr, beta1, beta2, eps, weightDecay, step})  (step counts from 1)
TF_OP(adamw) {
  Tensor* p = tensor_arg(info, 0, "params");
  Tensor* g = tensor_arg(info, 1, "grads");
  Tensor* m = tensor_arg(info, 2, "m");
  Tensor* v = tensor_arg(info, 3, "v");
  if (info.Length() < 5 || !info[4].IsObject()) throw arg_error("adamw: options {lr, beta1, beta2, eps, weightDecay, step} are required");
  Napi::Object o = info[4].As<Napi::Object>();
  auto num = [&](const char* k) {
    Napi::Value x = o.Get(k);
    if (!x.IsNumber()) throw arg_error(std::string("adamw: option '") + k + "' must be a number");
    return x.As<Napi::Number>().DoubleValue();
  };
  double lr = num("lr"), b1 = num("beta1"), b2 = num("beta2"), eps = num("eps"), wd = num("weightDecay"), step = num("step");
  if (step < 1) throw arg_error("adamw: step counts from 1");
  for (Tensor* t : {g, m, v}) {
    expect_same_dtype(t, p, "optimizer buffer", "params");
    expect_numel(t, p->numel(), "optimizer buffer");
  }
  double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  dispatch_float(p->dtype(), [&]<typename T>() {
    T *pp = p->data<T>(), *mp = m->data<T>(), *vp = v->data<T>();
    const T* gp = g->data<T>();
    const T decay = T(1 - lr * wd), tb1 = T(b1), tb2 = T(b2), step_size = T(lr / bc1), rbc2 = T(1 / std::sqrt(bc2)), teps = T(eps);
    parallel_for(p->numel(), 1 << 14, [&](int64_t s, int64_t e) {
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

void register_adamw(Napi::Env env, Napi::Object ops) { export_op(env, ops, "adamw", adamw); }

}  // namespace tf
