// Where tensor storage lives. The CPU addon keeps the host allocator inline in tensor.cc; the CUDA addon compiles
// tensor.cc with TF_BACKEND_CUDA and these hooks (native/cuda/device.cu) put every buffer in GPU memory, so the
// Tensor class, views and argument checks stay one shared implementation. Pointers returned here are device
// pointers: only kernels may dereference them.
#pragma once
#include <cstddef>
#include <cstdint>

namespace tf {
enum class DType;

namespace mem {
void* alloc_zeroed(size_t bytes);                       // throws ERR_TARFLOW_OUT_OF_MEMORY naming the size
void release(void* p) noexcept;                          // never throws: runs from finalizers
void to_host(void* host_dst, const void* src, size_t bytes);
void from_host(void* dst, const void* host_src, size_t bytes);
void fill(void* dst, DType dtype, int64_t n, double value);
}  // namespace mem

// Called around every exported op (see op.h): refuse work on a broken backend, then surface launch errors.
void backend_enter();
void backend_leave();
// Called instead of backend_leave when the op threw: takes the launch error its earlier launches may have left, so the
// next op is not blamed for it (a sticky one marks the backend broken). Never throws.
void backend_abandon() noexcept;
}  // namespace tf
