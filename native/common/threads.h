// A small persistent thread pool shared by every CPU kernel.
//
// Why our own pool: no system libraries (no OpenMP runtime to ship), a size the user can pin with
// TARFLOW_THREADS, and results that never depend on the thread count (every kernel splits work so that each
// output element is computed by exactly one thread in a fixed order).
#pragma once
#include <cstdint>
#include <functional>

namespace tf {

// Number of threads kernels split work over (the calling thread included).
int num_threads();
// Changes the pool size (1 = run everything on the calling thread). Not to be called while kernels run.
void set_num_threads(int n);

// Calls fn(begin, end) over disjoint ranges covering [0, n), each at least `grain` long (except the last).
// The calling thread takes part. A call made from inside another parallel_for, or while another thread is
// using the pool, runs serially on the calling thread: kernels stay correct when models run on several
// worker threads at once.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// The most calls of fn that parallel_for(n, grain, fn) makes (at most one per thread, so at most that many run at
// once): what a kernel counts when each call allocates its own working memory.
int64_t parallel_ranges(int64_t n, int64_t grain);

}  // namespace tf
