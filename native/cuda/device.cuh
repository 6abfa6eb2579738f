// The CUDA backend's runtime glue: one stream per addon instance, error conversion, scratch memory and the small
// kernel helpers every layer file shares.
//
// Errors: every CUDA call goes through check(); a failure becomes a tf::Error with code ERR_TARFLOW_DEVICE (or
// ERR_TARFLOW_OUT_OF_MEMORY naming the size). Errors that poison the CUDA context (illegal address, launch
// failure, ...) also mark the backend broken: later calls refuse to run and say why, instead of returning garbage.
//
// Ordering: ops only enqueue work on the stream; the host waits only where a value comes back (toArray,
// sumSquares, allFinite, label validation) or memory is freed. TARFLOW_CUDA_SYNC=1 waits after every op, so an
// asynchronous fault is reported by the op that caused it (use it with compute-sanitizer).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../common/device_memory.h"
#include "../common/errors.h"
#include "../common/tensor.h"

namespace tf {
namespace cuda {

cudaStream_t stream();
void check(cudaError_t err, const char* what);
// After a kernel launch: reports bad launch configurations at once (asynchronous faults come at the next sync).
void check_launch(const char* what);
void sync(const char* what);
// Number of GPUs the runtime sees; 0 (never throws) when there is no driver or device. why gets the reason.
int device_count(std::string* why);

// Per-instance growable device scratch. Slots are independent buffers; a pointer stays valid until the same slot
// is requested again with a larger size. Work is stream-ordered, so reusing a slot in the next op is safe.
void* scratch(int slot, size_t bytes);
template <typename T>
T* scratch_as(int slot, int64_t count) {
  return static_cast<T*>(scratch(slot, static_cast<size_t>(count > 0 ? count : 1) * sizeof(T)));
}

// A device buffer owned by one call (for ops that run rarely, such as blockReverse).
class Buffer {
 public:
  explicit Buffer(size_t bytes) { ptr_ = mem::alloc_zeroed(bytes); }
  ~Buffer() { mem::release(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

// Copies a small device tensor to the host (waits for the stream): labels to validate, results to return.
void copy_to_host(void* host_dst, const void* device_src, size_t bytes);

inline unsigned blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  // Grid-stride loops cover the rest: the cap keeps the grid within limits for any tensor size.
  return static_cast<unsigned>(b > 65535LL * 32 ? 65535LL * 32 : b);
}

}  // namespace cuda

// Loops over [0, n) with every thread of the grid.
#define TF_GRID_LOOP(i, n)                                                                     \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

// Sum of one value per thread over the block, in a fixed tree order (deterministic). blockDim.x must be a power
// of two no larger than 1024; every thread of the block must call it; the result is returned to all threads.
template <typename A>
__device__ A block_sum(A v, A* shared /* blockDim.x elements */) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  A r = shared[0];
  __syncthreads();
  return r;
}

template <typename A>
__device__ A block_max(A v, A* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = shared[threadIdx.x] > shared[threadIdx.x + s] ? shared[threadIdx.x] : shared[threadIdx.x + s];
    __syncthreads();
  }
  A r = shared[0];
  __syncthreads();
  return r;
}

// Dynamic shared memory as an array of A (one extern declaration per type would clash between instantiations).
template <typename A>
__device__ A* shared_as() {
  extern __shared__ __align__(16) unsigned char tf_shared_bytes[];
  return reinterpret_cast<A*>(tf_shared_bytes);
}

}  // namespace tf
