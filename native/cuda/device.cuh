// Kernel helpers shared by the layer files (.cu only), on top of the host-side glue in device.h.
#pragma once
#include <cuda_runtime.h>

#include "device.h"

namespace tf {

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
