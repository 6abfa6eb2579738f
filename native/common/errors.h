// Native failures travel to JavaScript as Errors with a stable `code` (the same codes as lib/errors.ts).
// Kernels throw tf::Error; every exported op runs inside tf::guard, which converts it (and std::bad_alloc)
// into a JavaScript exception, so no C++ exception ever reaches N-API and nothing aborts the process.
#pragma once
#include <napi.h>

#include <new>
#include <stdexcept>
#include <string>

#include "coded_error.h"

namespace tf {

inline Napi::Error to_js_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  err.Set("name", Napi::String::New(env, "TarflowError"));
  return err;
}

// Runs body(); converts any C++ failure into a pending JavaScript exception.
template <typename F>
Napi::Value guard(Napi::Env env, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw to_js_error(env, e.code, e.what());
  } catch (const std::bad_alloc&) {
    throw to_js_error(env, "ERR_TARFLOW_OUT_OF_MEMORY", "native memory allocation failed; reduce the batch size or model size");
  } catch (const std::exception& e) {
    throw to_js_error(env, "ERR_TARFLOW_NATIVE", std::string("native error: ") + e.what());
  }
}

}  // namespace tf
