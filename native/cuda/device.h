// The CUDA backend's runtime glue (host side, usable from plain C++): one stream per addon instance, error
// conversion, scratch memory. device.cuh adds the kernel helpers for .cu files.
//
// Errors: every CUDA call goes through check(); a failure becomes a tf::Error with code ERR_TARFLOW_DEVICE (or
// ERR_TARFLOW_OUT_OF_MEMORY naming the size). Errors that poison the CUDA context (illegal address, launch
// failure, ...) also mark the backend broken: later calls refuse to run and say why, instead of returning garbage.
//
// Ordering: ops only enqueue work on the stream; the host waits only where a value comes back (toArray,
// sumSquares, allFinite, label validation) or memory is freed. TARFLOW_CUDA_SYNC=1 waits after every op, so an
// asynchronous fault is reported by the op that caused it (use it with compute-sanitizer).
#pragma once
#include <cuda_runtime_api.h>

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
// TARFLOW_CUDA_SYNC=1: every op waits for its work (and nothing may be captured into a CUDA Graph).
bool sync_every_op();
// Throws ERR_TARFLOW_DEVICE when an earlier sticky error broke the backend.
void ensure_usable();
// Whether a sticky error has broken the backend (ensure_usable would throw).
bool backend_broken();
// Frees the calling thread's stream and scratch (at environment shutdown).
void release_context();
// Number of GPUs the runtime sees; 0 (never throws) when there is no driver or device. why gets the reason.
int device_count(std::string* why);

// Per-instance growable device scratch. Slots are independent buffers; a pointer stays valid until the same slot
// is requested again with a larger size. Work is stream-ordered, so reusing a slot in the next op is safe.
// Slots in use: 0 row-block partial sums (linear, layerNorm) and embedding temporaries; 1 attention's dS and
// flashAttentionBackward's row dots; 2 sumSquares partials; 3 allFinite's flag. An op must not take one slot twice.
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

// Which kernel bf16 products run on now: "wgmma" or "mma" (gemm_bf16.cu; runs the wgmma kernel's check when due).
const char* bf16_gemm_kernel();

// Copies a small device tensor to the host (waits for the stream): labels to validate, results to return.
void copy_to_host(void* host_dst, const void* device_src, size_t bytes);

inline unsigned blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  // Grid-stride loops cover the rest: the cap keeps the grid within limits for any tensor size.
  return static_cast<unsigned>(b > 65535LL * 32 ? 65535LL * 32 : b);
}

}  // namespace cuda
}  // namespace tf
