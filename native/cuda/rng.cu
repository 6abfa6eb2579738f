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

// One thread per Philox block: a block gives 2 normals (a Box-Muller pair) or 4 uniforms, so each is computed once and
// all its values that fall inside [offset, offset + n) are stored (only the first and last blocks can be partial).
template <bool kNormal>
constexpr uint64_t kValuesPerBlock = kNormal ? 2 : 4;

template <typename T, bool kNormal>
__global__ void random_kernel(T* p, int64_t blocks, uint64_t first_block, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
  constexpr uint64_t per = kValuesPerBlock<kNormal>;
  TF_GRID_LOOP(b, blocks) {
    const uint64_t j = first_block + uint64_t(b);
    const Philox4 r = philox_block(seed, stream, j);
    float v[4];
    if constexpr (kNormal) {
      const float radius = box_muller_radius(r.v[0]);
      const CosSin cs = turn_cos_sin(r.v[1]);
      v[0] = radius * cs.cos;
      v[1] = radius * cs.sin;
    } else {
      for (int k = 0; k < 4; ++k) v[k] = uniform_from_word(r.v[k]);
    }
    for (uint64_t k = 0; k < per; ++k) {
      const uint64_t idx = j * per + k;  // element idx of the stream is out[idx - offset]
      if (idx >= offset && idx - offset < uint64_t(n)) p[idx - offset] = static_cast<T>(v[k]);
    }
  }
}

template <bool kNormal>
Napi::Value fill_random(const Napi::CallbackInfo& info) {
  const RandomArgs args = parse_random(info);
  int64_t n = args.out->numel();
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.out->dtype(), [&]<typename T>() {
    constexpr uint64_t per = kValuesPerBlock<kNormal>;
    const uint64_t first = args.offset / per, last = (args.offset + uint64_t(n) - 1) / per;
    const int64_t blocks = int64_t(last - first + 1);
    random_kernel<T, kNormal><<<cuda::blocks_for(blocks, 256), 256, 0, cuda::stream()>>>(args.out->data<T>(), blocks, first, n, args.seed,
                                                                                        args.stream, args.offset);
    cuda::check_launch(kNormal ? "normal" : "uniform");
  });
  return info.Env().Undefined();
}

TF_OP(normal) { return fill_random<true>(info); }
TF_OP(uniform) { return fill_random<false>(info); }

}  // namespace

void register_rng(Napi::Env env, Napi::Object ops) { TF_RNG_OPS(TF_EXPORT_OP) }

}  // namespace tf
