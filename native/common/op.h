// Glue for exporting an op: the function body runs inside tf::guard, so any failure becomes a JS exception.
#pragma once
#include <napi.h>

#include "errors.h"
#include "tensor.h"

// An op that only reads or sets host bookkeeping (memory counters, the thread count). On the CUDA addon it must keep
// answering after a sticky GPU error has made the backend refuse device work, so that a service can still report and
// clean up. On the CPU addon nothing is sticky, and the only difference is that TF_OP runs with denormals flushed.
#define TF_HOST_OP(name)                                                \
  static Napi::Value name##_impl(const Napi::CallbackInfo& info);       \
  static Napi::Value name(const Napi::CallbackInfo& info) {             \
    return tf::guard(info.Env(), [&]() { return name##_impl(info); }); \
  }                                                                     \
  static Napi::Value name##_impl(const Napi::CallbackInfo& info)

#ifdef TF_BACKEND_CUDA
// The CUDA addon checks that the backend is usable before every op and surfaces launch errors after it.
#include "device_memory.h"
#define TF_OP(name)                                                     \
  static Napi::Value name##_impl(const Napi::CallbackInfo& info);       \
  static Napi::Value name(const Napi::CallbackInfo& info) {             \
    return tf::guard(info.Env(), [&]() {                                \
      tf::backend_enter();                                              \
      Napi::Value result;                                               \
      try {                                                             \
        result = name##_impl(info);                                     \
      } catch (...) {                                                   \
        tf::backend_abandon();                                          \
        throw;                                                          \
      }                                                                 \
      tf::backend_leave();                                              \
      return result;                                                    \
    });                                                                 \
  }                                                                     \
  static Napi::Value name##_impl(const Napi::CallbackInfo& info)
#else
// The CPU addon's ops run with denormals flushed (denormals.h), the caller's floating-point mode restored after.
#include "denormals.h"
#define TF_OP(name)                                                     \
  static Napi::Value name##_impl(const Napi::CallbackInfo& info);       \
  static Napi::Value name(const Napi::CallbackInfo& info) {             \
    return tf::guard(info.Env(), [&]() {                                \
      tf::FlushDenormals flush;                                         \
      return name##_impl(info);                                         \
    });                                                                 \
  }                                                                     \
  static Napi::Value name##_impl(const Napi::CallbackInfo& info)
#endif

namespace tf {
using Registrar = void (*)(Napi::Env, Napi::Object);
inline void export_op(Napi::Env env, Napi::Object ops, const char* js_name, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
  ops.Set(js_name, Napi::Function::New(env, fn, js_name));
}
}  // namespace tf
