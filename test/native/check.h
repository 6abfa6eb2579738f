// The one assertion of the emulation tests: it counts failures and prints the first 25, so that one run shows a
// pattern (which lanes, which tiles) instead of stopping at the first mismatch. A test's exit status is failures != 0.
#pragma once
#include <cstdio>

namespace {
int failures = 0;
}  // namespace

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      if (failures < 25) {                                  \
        std::fprintf(stderr, "FAIL (line %d): ", __LINE__); \
        std::fprintf(stderr, __VA_ARGS__);                  \
        std::fputc('\n', stderr);                           \
      }                                                     \
      ++failures;                                           \
    }                                                       \
  } while (0)
