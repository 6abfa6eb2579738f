// The GELU ops, gelu and geluBackward (the exact, erf GELU): the unfused references that linear's GELU epilogue is
// tested against (lib/ calls linear). Both evaluate gelu.h, as the epilogue does, so a difference between the two
// paths is the GEMM's, never the function's. Each element is independent: no dependence on the thread count.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "gelu.h"

namespace tf {
namespace {

constexpr int64_t kGrain = 1 << 14;

// gelu(y, x) and geluBackward(dx, dy, x): the exact (erf) GELU.
TF_OP(gelu) {
  const GeluArgs args = parse_gelu(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T* xp = args.x->data<T>();
    T* yp = args.y->data<T>();
    parallel_for(args.x->numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) yp[i] = tf::gelu(xp[i]);
    });
  });
  return info.Env().Undefined();
}

TF_OP(geluBackward) {
  const GeluBackwardArgs args = parse_gelu_backward(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T* xp = args.x->data<T>();
    const T* dyp = args.dy->data<T>();
    T* dxp = args.dx->data<T>();
    parallel_for(args.x->numel(), kGrain, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) dxp[i] = dyp[i] * tf::gelu_grad(xp[i]);
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_gelu(Napi::Env env, Napi::Object ops) { TF_GELU_OPS(TF_EXPORT_OP) }

}  // namespace tf
