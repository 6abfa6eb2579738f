// Seeded noise: normal(out, seed, stream, offset) and uniform(out, seed, stream, offset) fill out[i] with element
// offset + i of the stream. See common/philox.h for why the generator is counter-based.
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/philox.h"
#include "../common/threads.h"

namespace tf {
namespace {

// Element i of a stream comes from Philox block i/2 (normals: a Box-Muller pair) or i/4 (uniforms). Whole blocks
// are computed once and all their values used; only a range's ragged ends fall back to the per-element form,
// which gives the same numbers.
template <typename T, bool kNormal>
void fill_range(T* p, uint64_t seed, uint64_t stream, uint64_t first, int64_t n) {
  constexpr uint64_t per = kNormal ? 2 : 4;
  auto single = [&](uint64_t i) { return kNormal ? philox_normal(seed, stream, i) : philox_uniform(seed, stream, i); };
  int64_t i = 0;
  for (; i < n && (first + i) % per; ++i) p[i] = static_cast<T>(single(first + i));
  for (; i + int64_t(per) <= n; i += per) {
    uint64_t g = first + i;
    Philox4 r = philox_block(seed, stream, g / per);
    if constexpr (kNormal) {
      double u1 = (double(r.v[0]) + 1.0) * (1.0 / 4294967296.0);
      double u2 = double(r.v[1]) * (1.0 / 4294967296.0);
      double radius = std::sqrt(-2.0 * std::log(u1)), angle = 6.283185307179586 * u2;
      p[i] = static_cast<T>(radius * std::cos(angle));
      p[i + 1] = static_cast<T>(radius * std::sin(angle));
    } else {
      for (int k = 0; k < 4; ++k) p[i + k] = static_cast<T>(double(r.v[k] >> 8) * (1.0 / 16777216.0));
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
