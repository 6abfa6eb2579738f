// Seeded noise: normal(out, seed, stream, offset) and uniform(out, seed, stream, offset) fill out[i] with element
// offset + i of the stream. See common/philox.h for why the generator is counter-based.
#include "../common/op.h"
#include "../common/philox.h"
#include "../common/threads.h"

namespace tf {
namespace {

uint64_t u64_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double d = number_arg(info, i, name);
  if (!(d >= 0) || d > 9007199254740991.0 || d != double(uint64_t(d)))
    throw arg_error(std::string(name) + " must be an integer in [0, 2^53), got " + std::to_string(d));
  return uint64_t(d);
}

template <bool kNormal>
Napi::Value fill_random(const Napi::CallbackInfo& info) {
  Tensor* out = tensor_arg(info, 0, "out");
  uint64_t seed = u64_arg(info, 1, "seed"), stream = u64_arg(info, 2, "stream"), offset = u64_arg(info, 3, "offset");
  dispatch_float(out->dtype(), [&]<typename T>() {
    T* p = out->data<T>();
    parallel_for(out->numel(), 4096, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i)
        p[i] = static_cast<T>(kNormal ? philox_normal(seed, stream, offset + i) : philox_uniform(seed, stream, offset + i));
    });
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
