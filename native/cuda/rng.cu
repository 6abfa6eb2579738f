// Seeded noise on the GPU: normal(out, seed, stream, offset) and uniform(out, seed, stream, offset). The generator
// is common/philox.h, compiled for the device: element offset + i of a stream is the same number the CPU draws
// (the Box-Muller step runs in double on both sides; the libm and CUDA double functions may differ in the last
// bit, which float32 rounding absorbs almost always).
#include "../common/op.h"
#include "../common/philox.h"
#include "device.cuh"

namespace tf {
namespace {

uint64_t u64_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double d = number_arg(info, i, name);
  if (!(d >= 0) || d > 9007199254740991.0 || d != double(uint64_t(d)))
    throw arg_error(std::string(name) + " must be an integer in [0, 2^53), got " + std::to_string(d));
  return uint64_t(d);
}

template <typename T, bool kNormal>
__global__ void random_kernel(T* p, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
  TF_GRID_LOOP(i, n) {
    uint64_t idx = offset + uint64_t(i);
    p[i] = static_cast<T>(kNormal ? philox_normal(seed, stream, idx) : philox_uniform(seed, stream, idx));
  }
}

template <bool kNormal>
Napi::Value fill_random(const Napi::CallbackInfo& info) {
  Tensor* out = tensor_arg(info, 0, "out");
  uint64_t seed = u64_arg(info, 1, "seed"), stream = u64_arg(info, 2, "stream"), offset = u64_arg(info, 3, "offset");
  int64_t n = out->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(out->dtype(), [&]<typename T>() {
    random_kernel<T, kNormal><<<cuda::blocks_for(n, 256), 256, 0, cuda::stream()>>>(out->data<T>(), n, seed, stream, offset);
  });
  return info.Env().Undefined();
}

TF_OP(normal) { return fill_random<true>(info); }
TF_OP(uniform) { return fill_random<false>(info); }

}  // namespace

void register_rng(Napi::Env env, Napi::Object ops) {
  export_op(env, ops, "normal", normal);
  export_op(env, ops, "uniform", uniform);
}

}  // namespace tf
