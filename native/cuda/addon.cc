// The CUDA backend's entry point: the same Tensor class and op table as the CPU addon (native/cpu/addon.cc), with
// every buffer in GPU memory. deviceCount() never throws: lib/backend.ts calls it to decide whether a GPU answers.
#include <napi.h>

#include "../common/op.h"
#include "device.h"

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

// The GPU decides its own parallelism; the thread count exists for API parity with the CPU backend.
TF_OP(getThreads) { return Napi::Number::New(info.Env(), 1); }

TF_OP(setThreads) {
  int64_t n = int_arg(info, 0, "threads");
  if (n < 1 || n > 256) throw arg_error("threads must be between 1 and 256, got " + std::to_string(n));
  return info.Env().Undefined();
}

// nativeMemory() -> { buffers, bytes, handles }: live device buffers, for leak tests (as in the CPU addon).
TF_OP(nativeMemory) {
  StorageStats st = storage_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("buffers", Napi::Number::New(info.Env(), static_cast<double>(st.buffers)));
  o.Set("bytes", Napi::Number::New(info.Env(), static_cast<double>(st.bytes)));
  o.Set("handles", Napi::Number::New(info.Env(), static_cast<double>(st.handles)));
  return o;
}

Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), cuda::device_count(nullptr));
}

// deviceInfo() -> { count, reason, name, computeCapability, memoryBytes }: for diagnostics and the test that
// checks why the backend was skipped. Never throws.
Napi::Value DeviceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string why;
  int n = cuda::device_count(&why);
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", Napi::Number::New(env, n));
  o.Set("reason", n > 0 ? env.Null() : Napi::String::New(env, why));
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  o.Set("runtimeVersion", Napi::Number::New(env, runtime));
  if (n > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
      o.Set("name", Napi::String::New(env, prop.name));
      o.Set("computeCapability", Napi::String::New(env, std::to_string(prop.major) + "." + std::to_string(prop.minor)));
      o.Set("memoryBytes", Napi::Number::New(env, static_cast<double>(prop.totalGlobalMem)));
    }
    cudaGetLastError();
  }
  return o;
}

// synchronize(): waits for all queued work; reports asynchronous faults (for tests and benchmarks).
TF_OP(synchronize) {
  cuda::sync("synchronize");
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("backend", Napi::String::New(env, "cuda"));
  exports.Set("Tensor", Tensor::Init(env));
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount, "deviceCount"));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo, "deviceInfo"));
  Napi::Object ops = Napi::Object::New(env);
  for (Registrar r : {register_elementwise, register_layernorm, register_linear, register_attention, register_coupling,
                      register_rng, register_adamw, register_reverse})
    r(env, ops);
  export_op(env, ops, "getThreads", getThreads);
  export_op(env, ops, "setThreads", setThreads);
  export_op(env, ops, "nativeMemory", nativeMemory);
  exports.Set("ops", ops);
  exports.Set("synchronize", Napi::Function::New(env, synchronize, "synchronize"));
  napi_add_env_cleanup_hook(env, [](void*) { cuda::release_context(); }, nullptr);
  return exports;
}

}  // namespace tf

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tf::Init(env, exports); }
NODE_API_MODULE(tarflow_cuda, InitAddon)
