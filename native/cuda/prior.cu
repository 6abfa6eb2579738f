// The VP prior's ops: the CUDA twin of native/cpu/prior.cc. varUpdate gives each variance entry one thread that
// sums the batch in sample order, in double, as the CPU does: no atomics, so the result does not depend on scheduling.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "layers.cuh"

namespace tf {
namespace {

constexpr int kThreads = 256;

using cuda::blocks_for;
using cuda::stream;

template <typename T>
__global__ void mul_broadcast_kernel(T* x, const T* s, int64_t total, int64_t n) {
  TF_GRID_LOOP(i, total) x[i] *= s[i % n];
}

template <typename T>
__global__ void var_update_kernel(T* var, const T* z, int64_t B, int64_t n, double rate) {
  TF_GRID_LOOP(i, n) {
    double acc = 0;
    for (int64_t b = 0; b < B; ++b) acc += double(z[b * n + i]) * double(z[b * n + i]);
    var[i] = static_cast<T>(var[i] + rate * (acc / B - var[i]));
  }
}

// mulBroadcast(x[B, ...], s[...]): x[b] *= s for every leading index b.
TF_OP(mulBroadcast) {
  const MulBroadcastArgs args = parse_mul_broadcast(info);
  int64_t total = args.x->numel();
  if (total == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    mul_broadcast_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(args.x->data<T>(), args.s->data<T>(), total, args.n);
  });
  return info.Env().Undefined();
}

// varUpdate(var[T,D], z[B,T,D], rate): var += rate * (mean_b z^2 - var)
TF_OP(varUpdate) {
  const VarUpdateArgs args = parse_var_update(info);
  const int64_t n = args.n;
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.z->dtype(), [&]<typename T>() {
    var_update_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.var->data<T>(), args.z->data<T>(), args.B, n, args.rate);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_prior(Napi::Env env, Napi::Object ops) { TF_PRIOR_OPS(TF_EXPORT_OP) }

}  // namespace tf
