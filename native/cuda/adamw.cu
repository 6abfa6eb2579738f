// AdamW over the flat parameter buffer in one pass: the CUDA twin of native/cpu/adamw.cc (same formula, same
// working-precision arithmetic, constants prepared in double on the host).
#include <cmath>

#include "../common/op.h"
#include "device.cuh"

namespace tf {
namespace {

template <typename T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, int64_t n, T decay, T b1, T b2, T step_size, T rbc2, T eps) {
  TF_GRID_LOOP(i, n) {
    T gi = g[i];
    T mi = b1 * m[i] + (T(1) - b1) * gi;
    T vi = b2 * v[i] + (T(1) - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (sqrt(vi) * rbc2 + eps);
  }
}

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
  int64_t n = p->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(p->dtype(), [&]<typename T>() {
    adamw_kernel<T><<<cuda::blocks_for(n, 256), 256, 0, cuda::stream()>>>(
        p->data<T>(), g->data<T>(), m->data<T>(), v->data<T>(), n, T(1 - lr * wd), T(b1), T(b2), T(lr / bc1),
        T(1 / std::sqrt(bc2)), T(eps));
  });
  return info.Env().Undefined();
}

}  // namespace

void register_adamw(Napi::Env env, Napi::Object ops) { export_op(env, ops, "adamw", adamw); }

}  // namespace tf
