// Seeded noise on the GPU: normal(out, seed, stream, offset) and uniform(out, seed, stream, offset). The generator
// is common/philox.h, compiled for the device: element offset + i of a stream is the same number the CPU draws,
// bit for bit (the transforms use only exactly rounded float operations and explicit fmaf, so neither side's
// library functions nor nvcc's multiply-add contraction can change a result).
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/philox.h"
#include "device.cuh"

namespace tf {
namespace {

template <typename T, bool kNormal>
__global__ void random_kernel(T* p, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
  TF_GRID_LOOP(i, n) {
    uint64_t idx = offset + uint64_t(i);
    p[i] = static_cast<T>(kNormal ? philox_normal(seed, stream, idx) : philox_uniform(seed, stream, idx));
  }
}

template <bool kNormal>
Napi::Value fill_random(const Napi::CallbackInfo& info) {
  const RandomArgs args = parse_random(info);
  int64_t n = args.out->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.out->dtype(), [&]<typename T>() {
    random_kernel<T, kNormal><<<cuda::blocks_for(n, 256), 256, 0, cuda::stream()>>>(args.out->data<T>(), n, args.seed, args.stream, args.offset);
  });
  return info.Env().Undefined();
}

TF_OP(normal) { return fill_random<true>(info); }
TF_OP(uniform) { return fill_random<false>(info); }

}  // namespace

void register_rng(Napi::Env env, Napi::Object ops) { TF_RNG_OPS(TF_EXPORT_OP) }

}  // namespace tf
