// The GELU ops: the CUDA twin of native/cpu/gelu.cc. They evaluate layers.cuh's gelu_value and gelu_grad_value,
// the functions of the GEMM epilogue they are the reference for, so the op and the epilogue cannot drift apart.
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
__global__ void gelu_kernel(T* y, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) y[i] = cuda::gelu_value(x[i]);
}

template <typename T>
__global__ void gelu_backward_kernel(T* dx, const T* dy, const T* x, int64_t n) {
  TF_GRID_LOOP(i, n) dx[i] = dy[i] * cuda::gelu_grad_value(x[i]);
}

TF_OP(gelu) {
  const GeluArgs args = parse_gelu(info);
  int64_t n = args.x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    gelu_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.y->data<T>(), args.x->data<T>(), n);
  });
  return info.Env().Undefined();
}

TF_OP(geluBackward) {
  const GeluBackwardArgs args = parse_gelu_backward(info);
  int64_t n = args.x->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    gelu_backward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(args.dx->data<T>(), args.dy->data<T>(), args.x->data<T>(), n);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_gelu(Napi::Env env, Napi::Object ops) { TF_GELU_OPS(TF_EXPORT_OP) }

}  // namespace tf
