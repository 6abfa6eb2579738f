// tf::Error, the exception every native failure is thrown as: a message and a stable `code` (the same codes as
// lib/errors.ts). Apart from errors.h, which converts it for JavaScript, so that kernels built without N-API (the
// GEMM benchmark) can throw it too.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>

namespace tf {

struct Error : std::runtime_error {
  std::string code;
  Error(std::string code_, const std::string& message) : std::runtime_error(message), code(std::move(code_)) {}
};

inline Error shape_error(const std::string& message) { return Error("ERR_TARFLOW_SHAPE", message); }
inline Error arg_error(const std::string& message) { return Error("ERR_TARFLOW_INVALID_ARGUMENT", message); }

}  // namespace tf
