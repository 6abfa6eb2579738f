// AdamW over the flat parameter buffer in one pass: the CUDA twin of native/cpu/adamw.cc (same formula, same
// working-precision arithmetic, constants prepared in double on the host).
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
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
  const AdamWArgs args = parse_adamw(info);
  const double lr = args.lr, b1 = args.beta1, b2 = args.beta2, eps = args.eps, wd = args.weight_decay, step = args.step;
  double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
  int64_t n = args.params->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.params->dtype(), [&]<typename T>() {
    adamw_kernel<T><<<cuda::blocks_for(n, 256), 256, 0, cuda::stream()>>>(
        args.params->data<T>(), args.grads->data<T>(), args.m->data<T>(), args.v->data<T>(), n, T(1 - lr * wd), T(b1), T(b2), T(lr / bc1),
        T(1 / std::sqrt(bc2)), T(eps));
  });
  return info.Env().Undefined();
}

}  // namespace

void register_adamw(Napi::Env env, Napi::Object ops) { TF_ADAMW_OPS(TF_EXPORT_OP) }

}  // namespace tf
