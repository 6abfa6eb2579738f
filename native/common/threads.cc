#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace tf {
namespace {

thread_local bool in_parallel_region = false;

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
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this, i, gen = generation_] { worker_loop(i + 1, gen); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    int64_t chunks = std::min<int64_t>(size(), (n + grain - 1) / grain);
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (chunks <= 1 || in_parallel_region || !busy.owns_lock()) {
      bool was = in_parallel_region;
      in_parallel_region = true;
      fn(0, n);
      in_parallel_region = was;
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      job_n_ = n;
      job_chunks_ = chunks;
      pending_ = static_cast<int>(chunks) - 1;
      ++generation_;
    }
    cv_.notify_all();
    in_parallel_region = true;
    run_chunk(0);
    in_parallel_region = false;
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
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
    if (begin < end) (*job_)(begin, end);
  }

  void worker_loop(int index, uint64_t seen) {
    in_parallel_region = true;
    for (;;) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      if (index >= job_chunks_) continue;
      lk.unlock();
      run_chunk(index);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex busy_;  // held by the one caller that currently owns the workers
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunks_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
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

}  // namespace tf
