// The CUDA backend's entry point: the same Tensor class and op table (native/common/op_table.h) as the CPU addon, with
// every buffer in GPU memory. deviceCount() never throws: lib/backend.ts calls it to decide whether a GPU answers.
#include <napi.h>

#include "../common/op.h"
#include "../common/op_table.h"
#include "device.h"

namespace tf {
namespace {

// The GPU decides its own parallelism; the thread count exists for API parity with the CPU backend.
TF_HOST_OP(getThreads) { return Napi::Number::New(info.Env(), 1); }

TF_HOST_OP(setThreads) {
  parse_set_threads(info);  // checked as on the CPU, so a bad value fails alike on both backends
  return info.Env().Undefined();
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

// bf16GemmKernel() -> 'wgmma' | 'mma': the kernel bf16 products run on now (TARFLOW_CUDA_GEMM, native/cuda/gemm_bf16.cu);
// the first call outside a graph capture on an sm_90a build runs the wgmma kernel's check. For tests and benchmarks.
TF_OP(bf16GemmKernel) { return Napi::String::New(info.Env(), cuda::bf16_gemm_kernel()); }

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("backend", Napi::String::New(env, "cuda"));
  exports.Set("Tensor", Tensor::Init(env));
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount, "deviceCount"));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo, "deviceInfo"));
  exports.Set("ops", make_op_table(env, getThreads, setThreads));
  exports.Set("synchronize", Napi::Function::New(env, synchronize, "synchronize"));
  exports.Set("bf16GemmKernel", Napi::Function::New(env, bf16GemmKernel, "bf16GemmKernel"));
  // Node aborts on a second hook with the same function and argument, and loading the addon again in one environment
  // (a cleared require cache) runs Init again: each load registers its own token. Releasing twice is harmless.
  napi_add_env_cleanup_hook(
      env,
      [](void* token) {
        delete static_cast<char*>(token);
        cuda::release_context();
      },
      new char(0));
  return exports;
}

}  // namespace tf

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tf::Init(env, exports); }
NODE_API_MODULE(tarflow_cuda, InitAddon)
