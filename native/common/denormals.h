// Denormal (subnormal) floats are flushed to zero while our CPU kernels run.
//
// Why: x86 cores handle an operation that reads or produces a denormal in microcode, many times slower than a
// normal one, and a trained model produces them in bulk: in a training step of the shipped likelihood model, 1.1%
// of the saved softmax weights (sharp attention rows) and 2.8% of the gradients through them are denormal. Its
// training step took 950-1010 ms with them and 670-730 ms flushed (`npm run bench -- --only train`, the row from
// the shipped weights); fresh weights, which have none, ran at the same speed either way.
// Flushing changes only values below 1.2e-38 (float) and 2.2e-308 (double), far below any tolerance the model is
// held to, and the same way on every thread, so results stay independent of the thread count (and the test set's
// bits/dim of the shipped model came out the same to all 16 digits). TensorFlow's CPU thread pools run this way
// too; PyTorch offers it as torch.set_flush_denormal.
//
// The mode is a per-thread register (MXCSR on x86, FPCR on AArch64). The pool's workers set it once for good (they
// run only our kernels); a thread that calls into us (the JavaScript thread) gets it for the length of one call and
// its own mode back afterwards, since JavaScript's numbers must keep IEEE denormals.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <cstdint>

namespace tf {

class FlushDenormals {
 public:
  FlushDenormals() : saved_(read_mode()) { write_mode(saved_ | kFlushBits); }
  ~FlushDenormals() { write_mode(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

  // For threads that run nothing else (the pool's workers): set and never restored.
  static void set_for_this_thread() { write_mode(read_mode() | kFlushBits); }
  // Whether this CPU's build flushes at all, and whether the calling thread does now (for the checks).
  static constexpr bool supported() { return kFlushBits != 0; }
  static bool active() { return supported() && (read_mode() & kFlushBits) == kFlushBits; }

 private:
#if defined(__x86_64__) || defined(_M_X64)
  using Mode = unsigned;
  static constexpr Mode kFlushBits = 0x8040;  // FTZ (bit 15): results; DAZ (bit 6): inputs
  static Mode read_mode() { return _mm_getcsr(); }
  static void write_mode(Mode m) { _mm_setcsr(m); }
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
  using Mode = uint64_t;
  static constexpr Mode kFlushBits = uint64_t{1} << 24;  // FPCR.FZ: inputs and results
  static Mode read_mode() {
    Mode m;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(m));
    return m;
  }
  static void write_mode(Mode m) { __asm__ __volatile__("msr fpcr, %0" : : "r"(m)); }
#else
  // Elsewhere the mode is left as it is (denormals kept, at whatever speed the CPU handles them).
  using Mode = unsigned;
  static constexpr Mode kFlushBits = 0;
  static Mode read_mode() { return 0; }
  static void write_mode(Mode) {}
#endif
  Mode saved_;
};

}  // namespace tf
