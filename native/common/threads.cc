#include "threads.h"

#include "denormals.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define TF_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
// ISB waits a few tens of cycles, as PAUSE does on x86; std::this_thread::yield would make every spin a system call.
#define TF_CPU_RELAX() __asm__ __volatile__("isb" ::: "memory")
#else
#define TF_CPU_RELAX() std::this_thread::yield()
#endif

namespace tf {
namespace {

thread_local bool in_parallel_region = false;

// Workers spin briefly before sleeping: the sampler issues thousands of small parallel loops per second, and a
// condition-variable wake-up (tens of microseconds) would cost more than many of those loops themselves.
constexpr int kSpinIterations = 1000;

class Pool {
 public:
  Pool() { resize(default_threads()); }
  ~Pool() { stop_workers(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> busy(busy_);
    stop_workers();
    n = std::max(1, std::min(n, 256));
    stopping_ = false;
    // A new worker must not mistake the last finished job for a new one: it starts from the current generation.
    uint64_t gen = generation_.load();
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this, i, gen] { worker_loop(i + 1, gen); });
  }

  // How many ranges run() splits [0, n) into: one per thread at most, each at least `grain` long.
  int64_t chunks_for(int64_t n, int64_t grain) {
    if (n <= 0) return 0;
    grain = std::max<int64_t>(grain, 1);
    return std::min<int64_t>(size(), (n + grain - 1) / grain);
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    // The calling thread computes in the workers' mode (native callers outside an op: the standalone checks).
    FlushDenormals flush;
    const int64_t chunks = chunks_for(n, grain);
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (chunks <= 1 || in_parallel_region || !busy.owns_lock()) {
      bool was = in_parallel_region;
      in_parallel_region = true;
      try {
        fn(0, n);
      } catch (...) {
        in_parallel_region = was;
        throw;
      }
      in_parallel_region = was;
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      job_n_ = n;
      job_chunks_ = chunks;
      error_ = nullptr;
      pending_.store(static_cast<int>(chunks) - 1);
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    in_parallel_region = true;
    run_chunk(0);
    in_parallel_region = false;
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0 && spin < kSpinIterations; ++spin) TF_CPU_RELAX();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [this] { return pending_.load() == 0; });
    }
    job_ = nullptr;
    // A failure on any thread (an allocation, say) reaches the caller as an exception, never std::terminate.
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static int default_threads() {
    if (const char* env = std::getenv("TARFLOW_THREADS")) {
      int n = std::atoi(env);
      if (n > 0) return n;
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw ? static_cast<int>(hw) : 1;
  }

  void run_chunk(int64_t c) {
    int64_t begin = job_n_ * c / job_chunks_, end = job_n_ * (c + 1) / job_chunks_;
    if (begin >= end) return;
    try {
      (*job_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void worker_loop(int index, uint64_t seen) {
    in_parallel_region = true;
    FlushDenormals::set_for_this_thread();
    for (;;) {
      for (int spin = 0; generation_.load(std::memory_order_acquire) == seen && spin < kSpinIterations && !stopping_flag_.load(); ++spin)
        TF_CPU_RELAX();
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_.load() != seen; });
        if (stopping_) return;
        seen = generation_.load();
        if (index >= job_chunks_) continue;
      }
      run_chunk(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      stopping_flag_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stopping_flag_.store(false);
  }

  std::vector<std::thread> workers_;
  std::mutex busy_;  // held by the one caller that currently owns the workers
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunks_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_flag_{false};
  std::exception_ptr error_;
  bool stopping_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: worker threads must not be joined during static teardown
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) { pool().run(n, grain, fn); }
int64_t parallel_ranges(int64_t n, int64_t grain) { return pool().chunks_for(n, grain); }

}  // namespace tf
