// Linear layers y = x W^T + b (W is (out, in)) and their backward: the CUDA twin of native/cpu/linear.cc.
// The bias is added in the GEMM's epilogue, after the optional accumulation, as the CPU does it.
#include "../common/op.h"
#include "gemm.cuh"

namespace tf {
namespace {

struct LinearDims {
  int64_t M, N, K;
};

LinearDims linear_dims(Tensor* x, Tensor* w, const char* xname) {
  if (w->ndim() != 2) throw shape_error("weight must be [out, in], got " + w->describe());
  int64_t N = w->dim(0), K = w->dim(1);
  if (x->ndim() < 1 || x->dim(-1) != K)
    throw shape_error(std::string(xname) + " must end in the weight's input size " + std::to_string(K) + ", got " + x->describe());
  return {x->numel() / K, N, K};
}

constexpr int64_t kRows = 256;  // rows per partial sum of the bias gradient (as on the CPU)

// partial[k, j] = sum of g[r, j] over rows r of block k: each thread owns one column of one row block.
template <typename T>
__global__ void bias_partial_kernel(T* partial, const T* g, int64_t M, int64_t N) {
  int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, k = blockIdx.y;
  if (j >= N) return;
  int64_t end = (k + 1) * kRows < M ? (k + 1) * kRows : M;
  T acc = T(0);
  for (int64_t r = k * kRows; r < end; ++r) acc += g[r * N + j];
  partial[k * N + j] = acc;
}

// db[j] += partials in block order: a fixed summation order, so the result never depends on scheduling.
template <typename T>
__global__ void bias_reduce_kernel(T* db, const T* partial, int64_t blocks, int64_t N) {
  TF_GRID_LOOP(j, N) {
    T acc = db[j];
    for (int64_t k = 0; k < blocks; ++k) acc += partial[k * N + j];
    db[j] = acc;
  }
}

// linear(y, x, weight, bias|null, accumulate)
TF_OP(linear) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  Tensor* w = tensor_arg(info, 2, "weight");
  Tensor* b = optional_tensor_arg(info, 3, "bias");
  bool accumulate = bool_arg(info, 4, "accumulate");
  LinearDims d = linear_dims(x, w, "x");
  expect_numel(y, d.M * d.N, "y");
  if (y->dim(-1) != d.N) throw shape_error("y must end in the weight's output size " + std::to_string(d.N) + ", got " + y->describe());
  expect_same_dtype(x, w, "x", "weight");
  expect_same_dtype(y, w, "y", "weight");
  if (b) {
    expect_numel(b, d.N, "bias");
    expect_same_dtype(b, w, "bias", "weight");
  }
  dispatch_float(x->dtype(), [&]<typename T>() {
    cuda::gemm<T>(false, true, d.M, d.N, d.K, T(1), x->data<T>(), d.K, w->data<T>(), d.K, accumulate ? T(1) : T(0),
                  y->data<T>(), d.N, b ? b->data<T>() : nullptr);
  });
  return info.Env().Undefined();
}

// linearBackward(dx|null, dweight|null, dbias|null, dy, x, weight, accumulateDx)
// dweight += dy^T x and dbias += sum_rows dy (gradients accumulate over a step); dx = (or +=) dy W.
TF_OP(linearBackward) {
  Tensor* dx = optional_tensor_arg(info, 0, "dx");
  Tensor* dw = optional_tensor_arg(info, 1, "dweight");
  Tensor* db = optional_tensor_arg(info, 2, "dbias");
  Tensor* dy = tensor_arg(info, 3, "dy");
  Tensor* x = tensor_arg(info, 4, "x");
  Tensor* w = tensor_arg(info, 5, "weight");
  bool accumulate = bool_arg(info, 6, "accumulateDx");
  LinearDims d = linear_dims(x, w, "x");
  expect_numel(dy, d.M * d.N, "dy");
  for (Tensor* t : {dx, dw, db, dy, x})
    if (t) expect_same_dtype(t, w, "gradient", "weight");
  if (dx) expect_numel(dx, d.M * d.K, "dx");
  if (dw) expect_numel(dw, d.N * d.K, "dweight");
  if (db) expect_numel(db, d.N, "dbias");
  dispatch_float(w->dtype(), [&]<typename T>() {
    const T* g = dy->data<T>();
    if (dx) cuda::gemm<T>(false, false, d.M, d.K, d.N, T(1), g, d.N, w->data<T>(), d.K, accumulate ? T(1) : T(0), dx->data<T>(), d.K);
    if (dw) cuda::gemm<T>(true, false, d.N, d.K, d.M, T(1), g, d.N, x->data<T>(), d.K, T(1), dw->data<T>(), d.K);
    if (db && d.M > 0 && d.N > 0) {
      int64_t blocks = (d.M + kRows - 1) / kRows;
      if (blocks > 65535) throw shape_error("linearBackward: too many rows for the bias reduction: " + std::to_string(d.M));
      T* partial = cuda::scratch_as<T>(0, blocks * d.N);
      cudaStream_t s = cuda::stream();
      bias_partial_kernel<T><<<dim3(static_cast<unsigned>((d.N + 127) / 128), static_cast<unsigned>(blocks)), 128, 0, s>>>(partial, g, d.M, d.N);
      cuda::check_launch("linearBackward (bias partials)");
      bias_reduce_kernel<T><<<cuda::blocks_for(d.N, 128), 128, 0, s>>>(db->data<T>(), partial, blocks, d.N);
      cuda::check_launch("linearBackward (bias)");
    }
  });
  return info.Env().Undefined();
}

}  // namespace

void register_linear(Napi::Env env, Napi::Object ops) {
  export_op(env, ops, "linear", linear);
  export_op(env, ops, "linearBackward", linearBackward);
}

}  // namespace tf
