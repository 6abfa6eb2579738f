// A growable, 64-byte aligned buffer, kept per thread (thread_local) by the GEMM kernels for their packed panels, so
// that steady-state calls never allocate: a large block freed after each product may go back to the operating
// system, and its pages are then faulted in and zeroed again by the next one.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

namespace tf {

struct Scratch {
  void* p = nullptr;
  size_t cap = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(p); }
  // At least `bytes`, 64-byte aligned; the contents are unspecified (a larger request discards them).
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      p = nullptr;
      cap = 0;
      const size_t want = (bytes + 63) & ~size_t(63);
      p = std::aligned_alloc(64, want);
      if (!p) throw std::bad_alloc();
      cap = want;
    }
    return p;
  }
};

}  // namespace tf
