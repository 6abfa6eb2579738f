// The CPU backend's entry point: one Tensor class and one table of operations. The CUDA backend exports the
// same table under the same names (native/common/op_table.h), so lib/ never knows which backend it drives.
#include <napi.h>

#include "../common/op.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "gemm.h"

namespace tf {
namespace {

TF_OP(getThreads) { return Napi::Number::New(info.Env(), num_threads()); }

TF_OP(setThreads) {
  set_num_threads(static_cast<int>(parse_set_threads(info)));
  return info.Env().Undefined();
}

// bf16GemmKernel() -> 'amx' | 'avx512bf16' | 'reference': the kernel bf16 products run on now (TARFLOW_CPU_GEMM,
// native/cpu/gemm_bf16.cc); the first call on a CPU with AMX or AVX-512 BF16 runs its check. For tests and benchmarks.
TF_OP(bf16GemmKernel) { return Napi::String::New(info.Env(), cpu_bf16_gemm_kernel()); }

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("backend", Napi::String::New(env, "cpu"));
  exports.Set("Tensor", Tensor::Init(env));
  exports.Set("ops", make_op_table(env, getThreads, setThreads));
  exports.Set("bf16GemmKernel", Napi::Function::New(env, bf16GemmKernel, "bf16GemmKernel"));
  return exports;
}

}  // namespace tf

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tf::Init(env, exports); }
NODE_API_MODULE(tarflow_cpu, InitAddon)
