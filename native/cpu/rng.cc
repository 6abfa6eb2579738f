// Seeded noise: normal(out, seed, stream, offset) and uniform(out, seed, stream, offset) fill out[i] with element
// offset + i of the stream. See common/philox.h for why the generator is counter-based.
#include <algorithm>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/philox.h"
#include "../common/threads.h"

namespace tf {
namespace {

// Blocks per pass: the Philox words of a pass stay in L1, and each of the two loops over them (generate, then
// transform) is a plain loop the compiler vectorises.
constexpr int64_t kBlocksPerPass = 256;

// Element i of a stream comes from Philox block i/2 (normals: a Box-Muller pair) or i/4 (uniforms). Whole blocks
// are computed once and all their values used; only a range's ragged ends use the per-element form, which
// computes the same numbers.
template <typename T, bool kNormal>
void fill_range(T* p, uint64_t seed, uint64_t stream, uint64_t first, int64_t n) {
  constexpr uint64_t per = kNormal ? 2 : 4;
  auto single = [&](uint64_t i) { return kNormal ? philox_normal(seed, stream, i) : philox_uniform(seed, stream, i); };
  int64_t i = 0;
  for (; i < n && (first + i) % per; ++i) p[i] = static_cast<T>(single(first + i));
  uint32_t words[4][kBlocksPerPass];
  for (int64_t blocks; (blocks = std::min<int64_t>((n - i) / int64_t(per), kBlocksPerPass)) > 0; i += blocks * int64_t(per)) {
    const uint64_t j0 = (first + i) / per;
    for (int64_t b = 0; b < blocks; ++b) {
      Philox4 r = philox_block(seed, stream, j0 + b);
      for (int k = 0; k < int(per); ++k) words[k][b] = r.v[k];
    }
    T* out = p + i;
    for (int64_t b = 0; b < blocks; ++b) {
      if constexpr (kNormal) {
        float radius = box_muller_radius(words[0][b]);
        CosSin cs = turn_cos_sin(words[1][b]);
        out[2 * b] = static_cast<T>(radius * cs.cos);
        out[2 * b + 1] = static_cast<T>(radius * cs.sin);
      } else {
        for (int k = 0; k < 4; ++k) out[4 * b + k] = static_cast<T>(uniform_from_word(words[k][b]));
      }
    }
  }
  for (; i < n; ++i) p[i] = static_cast<T>(single(first + i));
}

template <bool kNormal>
Napi::Value fill_random(const Napi::CallbackInfo& info) {
  const RandomArgs args = parse_random(info);
  dispatch_float(args.out->dtype(), [&]<typename T>() {
    T* p = args.out->data<T>();
    parallel_for(args.out->numel(), 4096, [&](int64_t s, int64_t e) {
      fill_range<T, kNormal>(p + s, args.seed, args.stream, args.offset + s, e - s);
    });
  });
  return info.Env().Undefined();
}

TF_OP(normal) { return fill_random<true>(info); }
TF_OP(uniform) { return fill_random<false>(info); }

}  // namespace

void register_rng(Napi::Env env, Napi::Object ops) { TF_RNG_OPS(TF_EXPORT_OP) }

}  // namespace tf
