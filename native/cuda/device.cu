// Runtime glue for the CUDA backend: streams, errors, memory hooks for the shared Tensor class, scratch buffers.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "device.cuh"

namespace tf {
namespace cuda {
namespace {

// Errors after which the CUDA context is unusable for the rest of the process.
bool is_sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorECCUncorrectable:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

std::atomic<bool> g_broken{false};
std::mutex g_broken_mu;
std::string g_broken_reason;

void mark_broken(const std::string& reason) {
  std::lock_guard<std::mutex> lk(g_broken_mu);
  if (!g_broken.load()) g_broken_reason = reason;
  g_broken.store(true);
}

std::string broken_reason() {
  std::lock_guard<std::mutex> lk(g_broken_mu);
  return g_broken_reason;
}

constexpr int kSlots = 4;

// Per addon instance state. Each Node.js environment (main thread or worker) runs on its own thread and tensors
// never cross environments, so a thread-local context is one context per addon instance.
struct Context {
  cudaStream_t stream = nullptr;
  void* slot[kSlots] = {};
  size_t slot_bytes[kSlots] = {};
};

thread_local Context* t_ctx = nullptr;

std::string error_text(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

}  // namespace

bool sync_every_op() {
  static const bool on = [] {
    const char* v = std::getenv("TARFLOW_CUDA_SYNC");
    return v && *v && std::string(v) != "0";
  }();
  return on;
}

void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::string msg = std::string("CUDA error in ") + what + " (" + error_text(err) + ")";
  if (is_sticky(err)) {
    mark_broken(msg);
    throw Error("ERR_TARFLOW_DEVICE", msg + "; the CUDA backend is now unusable in this process");
  }
  cudaGetLastError();  // clear a non-sticky error so it is not reported again by the next call
  if (err == cudaErrorMemoryAllocation) throw Error("ERR_TARFLOW_OUT_OF_MEMORY", msg);
  throw Error("ERR_TARFLOW_DEVICE", msg);
}

void check_launch(const char* what) {
  check(cudaGetLastError(), what);
}

cudaStream_t stream() {
  if (!t_ctx) {
    auto* ctx = new Context();
    cudaError_t err = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    if (err != cudaSuccess) {
      delete ctx;
      check(err, "cudaStreamCreate (is a GPU present and the driver loaded?)");
    }
    t_ctx = ctx;
  }
  return t_ctx->stream;
}

void sync(const char* what) { check(cudaStreamSynchronize(stream()), what); }

// Defined with the tensors' allocator below.
void trim_memory_pool(cudaStream_t s);

void* scratch(int slot, size_t bytes) {
  cudaStream_t s = stream();
  Context& c = *t_ctx;
  if (c.slot_bytes[slot] < bytes) {
    if (c.slot[slot]) {
      // Earlier work may still read the old buffer.
      check(cudaStreamSynchronize(s), "scratch reallocation");
      cudaFree(c.slot[slot]);
      c.slot[slot] = nullptr;
      c.slot_bytes[slot] = 0;
    }
    size_t rounded = (bytes + 4095) / 4096 * 4096;
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, rounded);
    if (err == cudaErrorMemoryAllocation) {
      // The tensors' pool keeps freed blocks for reuse, out of cudaMalloc's reach: hand them back and try again.
      cudaGetLastError();
      trim_memory_pool(s);
      err = cudaMalloc(&p, rounded);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw Error("ERR_TARFLOW_OUT_OF_MEMORY", "could not allocate " + std::to_string(rounded) +
                                                   " bytes of GPU scratch memory; reduce the batch size or model size");
    }
    check(err, "cudaMalloc (scratch)");
    c.slot[slot] = p;
    c.slot_bytes[slot] = rounded;
  }
  return c.slot[slot];
}

void copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  if (!bytes) return;
  cudaStream_t s = stream();
  check(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpy device->host");
  check(cudaStreamSynchronize(s), "cudaMemcpy device->host");
}

int device_count(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = error_text(err);
    cudaGetLastError();
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device";
  return n;
}

// Frees this thread's stream and scratch when its Node.js environment shuts down (see addon.cc).
void release_context() {
  Context* c = t_ctx;
  if (!c) return;
  t_ctx = nullptr;
  cudaStreamSynchronize(c->stream);
  for (int i = 0; i < kSlots; ++i)
    if (c->slot[i]) cudaFree(c->slot[i]);
  cudaStreamDestroy(c->stream);
  delete c;
}

bool backend_broken() { return g_broken.load(); }

void ensure_usable() {
  if (g_broken.load())
    throw Error("ERR_TARFLOW_DEVICE", "the CUDA backend is unusable after an earlier error (" + broken_reason() +
                                          "); restart the process, or use device 'cpu'");
}

namespace {

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, T v) {
  TF_GRID_LOOP(i, n) p[i] = v;
}

}  // namespace
}  // namespace cuda

namespace {

// Tensors are allocated and freed in stream order (cudaMallocAsync, cudaFreeAsync) where the device supports memory
// pools, as every GPU of compute capability 8.0 and newer on Linux does: a free then waits only for this thread's
// queued work, on the device, instead of stopping the host until the stream drains (cudaFree synchronises the whole
// device), and freed blocks are reused without asking the driver. The pool keeps what it has (release threshold at
// the maximum) so that the syncs of every step (a loss read back) do not hand memory back only to request it again;
// on an allocation failure it is trimmed and the allocation tried once more.
struct StreamOrdered {
  bool supported = false;
  cudaMemPool_t pool = nullptr;
};

const StreamOrdered& stream_ordered() {
  static const StreamOrdered so = [] {
    StreamOrdered r;
    int dev = 0, supported = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess || !supported ||
        cudaDeviceGetDefaultMemPool(&r.pool, dev) != cudaSuccess) {
      cudaGetLastError();
      return r;
    }
    uint64_t keep_all = UINT64_MAX;
    if (cudaMemPoolSetAttribute(r.pool, cudaMemPoolAttrReleaseThreshold, &keep_all) != cudaSuccess) cudaGetLastError();
    r.supported = true;
    return r;
  }();
  return so;
}

cudaError_t allocate(void** p, size_t bytes, cudaStream_t s) {
  const StreamOrdered& so = stream_ordered();
  if (!so.supported) return cudaMalloc(p, bytes);
  cudaError_t err = cudaMallocAsync(p, bytes, s);
  if (err != cudaErrorMemoryAllocation) return err;
  cudaGetLastError();
  cuda::trim_memory_pool(s);
  return cudaMallocAsync(p, bytes, s);
}

}  // namespace

namespace cuda {

// Blocks freed by work still queued, and blocks the pool holds for reuse, count as used until then.
void trim_memory_pool(cudaStream_t s) {
  const StreamOrdered& so = stream_ordered();
  if (!so.supported) return;
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (before retrying an allocation)");
  check(cudaMemPoolTrimTo(so.pool, 0), "cudaMemPoolTrimTo");
}

}  // namespace cuda

namespace mem {

void* alloc_zeroed(size_t bytes) {
  cuda::ensure_usable();
  cudaStream_t s = cuda::stream();
  size_t n = bytes ? bytes : 1;
  void* p = nullptr;
  cudaError_t err = allocate(&p, n, s);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw Error("ERR_TARFLOW_OUT_OF_MEMORY", "could not allocate " + std::to_string(bytes) + " bytes of GPU memory for a tensor (" +
                                                 std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
                                                 " MiB); reduce the batch size or model size");
  }
  cuda::check(err, "GPU allocation (cudaMallocAsync or cudaMalloc)");
  err = cudaMemsetAsync(p, 0, n, s);
  if (err != cudaSuccess) {
    release(p);
    cuda::check(err, "cudaMemset");
  }
  return p;
}

void release(void* p) noexcept {
  if (!p) return;
  // Errors are ignored: this runs from finalizers, and a broken context reports itself on the next op.
  if (stream_ordered().supported) {
    // After the environment's context is gone (its stream drained and destroyed) no queued work can use p.
    cudaFreeAsync(p, cuda::t_ctx ? cuda::t_ctx->stream : nullptr);
  } else {
    // Kernels queued on the stream may still use the buffer; wait for them before handing it back.
    if (cuda::t_ctx) cudaStreamSynchronize(cuda::t_ctx->stream);
    cudaFree(p);
  }
  cudaGetLastError();
}

void to_host(void* host_dst, const void* src, size_t bytes) {
  cuda::ensure_usable();
  cuda::copy_to_host(host_dst, src, bytes);
}

void from_host(void* dst, const void* host_src, size_t bytes) {
  cuda::ensure_usable();
  cudaStream_t s = cuda::stream();
  // The source is pageable JavaScript memory that may move or be freed once we return: wait for the copy.
  cuda::check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpy host->device");
  cuda::check(cudaStreamSynchronize(s), "cudaMemcpy host->device");
}

void fill(void* dst, DType dtype, int64_t n, double value) {
  cuda::ensure_usable();
  if (n <= 0) return;
  cudaStream_t s = cuda::stream();
  unsigned grid = cuda::blocks_for(n, 256);
  if (dtype == DType::F32) cuda::fill_kernel<float><<<grid, 256, 0, s>>>(static_cast<float*>(dst), n, static_cast<float>(value));
  else if (dtype == DType::F64) cuda::fill_kernel<double><<<grid, 256, 0, s>>>(static_cast<double*>(dst), n, value);
  else cuda::fill_kernel<int32_t><<<grid, 256, 0, s>>>(static_cast<int32_t*>(dst), n, static_cast<int32_t>(value));
  cuda::check_launch("fill");
  if (cuda::sync_every_op()) cuda::sync("fill");
}

}  // namespace mem

void backend_enter() { cuda::ensure_usable(); }

void backend_abandon() noexcept {
  if (!cuda::t_ctx) return;
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess || !cuda::is_sticky(err)) return;  // a non-sticky one belongs to the op that threw
  try {
    cuda::mark_broken(std::string("CUDA error after an op failed (") + cuda::error_text(err) + ")");
  } catch (...) {
  }
}

void backend_leave() {
  if (!cuda::t_ctx) return;  // the op touched no GPU state (getThreads, argument errors before any launch)
  cuda::check_launch("kernel launch");
  if (cuda::sync_every_op()) cuda::sync("kernel (TARFLOW_CUDA_SYNC)");
}

}  // namespace tf
