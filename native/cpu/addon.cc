// The CPU backend's entry point: one Tensor class and one table of operations. The CUDA backend exports the
// same table under the same names, so lib/ never knows which backend it drives.
#include <napi.h>

#include "../common/op.h"
#include "../common/threads.h"

namespace tf {
void register_elementwise(Napi::Env, Napi::Object);
void register_layernorm(Napi::Env, Napi::Object);
void register_linear(Napi::Env, Napi::Object);
void register_attention(Napi::Env, Napi::Object);
void register_coupling(Napi::Env, Napi::Object);
void register_rng(Napi::Env, Napi::Object);
void register_adamw(Napi::Env, Napi::Object);
void register_reverse(Napi::Env, Napi::Object);

namespace {

TF_OP(getThreads) { return Napi::Number::New(info.Env(), num_threads()); }

TF_OP(nativeMemory) {
  StorageStats st = storage_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("buffers", Napi::Number::New(info.Env(), static_cast<double>(st.buffers)));
  o.Set("bytes", Napi::Number::New(info.Env(), static_cast<double>(st.bytes)));
  o.Set("handles", Napi::Number::New(info.Env(), static_cast<double>(st.handles)));
  return o;
}

TF_OP(setThreads) {
  int64_t n = int_arg(info, 0, "threads");
  if (n < 1 || n > 256) throw arg_error("threads must be between 1 and 256, got " + std::to_string(n));
  set_num_threads(static_cast<int>(n));
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("backend", Napi::String::New(env, "cpu"));
  exports.Set("Tensor", Tensor::Init(env));
  Napi::Object ops = Napi::Object::New(env);
  for (Registrar r : {register_elementwise, register_layernorm, register_linear, register_attention, register_coupling,
                      register_rng, register_adamw, register_reverse})
    r(env, ops);
  export_op(env, ops, "getThreads", getThreads);
  export_op(env, ops, "setThreads", setThreads);
  export_op(env, ops, "nativeMemory", nativeMemory);
  exports.Set("ops", ops);
  return exports;
}

}  // namespace tf

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tf::Init(env, exports); }
NODE_API_MODULE(tarflow_cpu, InitAddon)
