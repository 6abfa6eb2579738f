// The CPU backend's entry point: one Tensor class and one table of operations. The CUDA backend exports the
// same table under the same names (native/common/op_table.h), so lib/ never knows which backend it drives.
#include <napi.h>

#include "../common/op.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

TF_OP(getThreads) { return Napi::Number::New(info.Env(), num_threads()); }

TF_OP(setThreads) {
  set_num_threads(static_cast<int>(parse_set_threads(info)));
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("backend", Napi::String::New(env, "cpu"));
  exports.Set("Tensor", Tensor::Init(env));
  exports.Set("ops", make_op_table(env, getThreads, setThreads));
  return exports;
}

}  // namespace tf

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tf::Init(env, exports); }
NODE_API_MODULE(tarflow_cpu, InitAddon)
