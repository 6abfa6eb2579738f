// The VP prior's ops: mulBroadcast (the latents scaled by sqrt(var) before the blocks' inverse) and varUpdate (the
// running variance a VP model's training keeps). varUpdate sums each entry over the batch in sample order, in
// double, and mulBroadcast parallelises over samples, so results do not depend on the thread count.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

// mulBroadcast(x[B, ...], s[...]): x[b] *= s for every leading index b (the VP prior's sqrt(var) on latents).
TF_OP(mulBroadcast) {
  const MulBroadcastArgs args = parse_mul_broadcast(info);
  const int64_t n = args.n;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    T* xp = args.x->data<T>();
    const T* sp = args.s->data<T>();
    parallel_for(args.x->numel() / n, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b)
        for (int64_t i = 0; i < n; ++i) xp[b * n + i] *= sp[i];
    });
  });
  return info.Env().Undefined();
}

// varUpdate(var[T,D], z[B,T,D], rate): var += rate * (mean_b z^2 - var)  (the VP prior's running variance)
TF_OP(varUpdate) {
  const VarUpdateArgs args = parse_var_update(info);
  const int64_t B = args.B, n = args.n;
  const double rate = args.rate;
  dispatch_float(args.z->dtype(), [&]<typename T>() {
    T* vp = args.var->data<T>();
    const T* zp = args.z->data<T>();
    parallel_for(n, 256, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        double acc = 0;
        for (int64_t b = 0; b < B; ++b) acc += double(zp[b * n + i]) * double(zp[b * n + i]);
        vp[i] = static_cast<T>(vp[i] + rate * (acc / B - vp[i]));
      }
    });
  });
  return info.Env().Undefined();
}

}  // namespace

void register_prior(Napi::Env env, Napi::Object ops) { TF_PRIOR_OPS(TF_EXPORT_OP) }

}  // namespace tf
