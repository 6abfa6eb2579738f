// Switches read from the environment at each use (kernel choices that tests and benchmarks flip at run time).
#pragma once
#include <cstdlib>
#include <initializer_list>
#include <string>

#include "coded_error.h"

namespace tf {

// Which of `choices` the environment variable `name` holds, as an index; unset or empty is choice 0. Anything else
// is an ERR_TARFLOW_INVALID_ARGUMENT that lists the choices.
inline int env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(name);
  const std::string value = v ? v : "";
  if (value.empty()) return 0;
  int index = 0;
  std::string listed;
  for (const char* c : choices) {
    if (value == c) return index;
    listed += (index == 0 ? "" : index + 1 == int(choices.size()) ? " or " : ", ") + std::string(c);
    ++index;
  }
  throw arg_error(std::string(name) + " must be " + listed + ", not '" + value + "'");
}

}  // namespace tf
