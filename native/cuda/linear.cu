// Linear layers y = x W^T + b (W is (out, in)) and their backward: the CUDA twin of native/cpu/linear.cc.
// The bias is added in the GEMM's epilogue, after the optional accumulation, as the CPU does it; so is the GELU
// of the gelu option.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "gemm.cuh"

namespace tf {
namespace {

constexpr int64_t kRows = 256;  // rows per partial sum of the bias gradient (as on the CPU)

// partial[k, j] = sum of g[r, j] over rows r of block k: each thread owns one column of one row block. Row blocks
// run along x, whose limit (2^31 - 1) no row count reaches; columns along y.
template <typename T>
__global__ void bias_partial_kernel(T* partial, const T* g, int64_t M, int64_t N) {
  int64_t j = int64_t(blockIdx.y) * blockDim.x + threadIdx.x, k = blockIdx.x;
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

// linear(y, x, weight, bias|null, accumulate, {precision, gelu}?): bias and GELU in the GEMM's epilogue.
TF_OP(linear) {
  const LinearArgs args = parse_linear(info);
  const LinearDims& d = args.d;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    cuda::gemm<T>(false, true, d.M, d.N, d.K, T(1), args.x->data<T>(), d.K, args.weight->data<T>(), d.K, args.accumulate ? T(1) : T(0),
                  args.y->data<T>(), d.N,
                  {.bias = args.bias ? args.bias->data<T>() : nullptr, .gelu = args.gelu ? args.gelu->data<T>() : nullptr,
                   .precision = args.precision});
  });
  return info.Env().Undefined();
}

// linearBackward(dx|null, dweight|null, dbias|null, dy, x, weight, accumulateDx, {precision, geluInput}?)
// dweight += dy^T x and dbias += sum_rows dy (gradients accumulate over a step); dx = (or +=) dy W. With bf16 the
// two products run on the tensor cores; the bias gradient is an fp32 sum of dy. geluInput: dx = (dy W) * GELU'(u)
// in the dx product's epilogue (the MLP's backward without a separate pass over its widest activation).
TF_OP(linearBackward) {
  const LinearBackwardArgs args = parse_linear_backward(info);
  const LinearDims& d = args.d;
  dispatch_float(args.weight->dtype(), [&]<typename T>() {
    const T* g = args.dy->data<T>();
    const cuda::GemmOptions<T> o{.precision = args.precision};
    if (args.dx) {
      cuda::GemmOptions<T> through_gelu = o;
      through_gelu.gelu_grad_of = args.gelu_input ? args.gelu_input->data<T>() : nullptr;
      cuda::gemm<T>(false, false, d.M, d.K, d.N, T(1), g, d.N, args.weight->data<T>(), d.K, args.accumulate ? T(1) : T(0), args.dx->data<T>(),
                    d.K, through_gelu);
    }
    if (args.dweight) cuda::gemm<T>(true, false, d.N, d.K, d.M, T(1), g, d.N, args.x->data<T>(), d.K, T(1), args.dweight->data<T>(), d.K, o);
    if (args.dbias && d.M > 0 && d.N > 0) {
      int64_t blocks = (d.M + kRows - 1) / kRows, col_blocks = (d.N + 127) / 128;
      if (col_blocks > 65535) throw shape_error("linearBackward: too many output features for the bias reduction: " + std::to_string(d.N));
      T* partial = cuda::scratch_as<T>(0, blocks * d.N);
      cudaStream_t s = cuda::stream();
      bias_partial_kernel<T><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(col_blocks)), 128, 0, s>>>(partial, g, d.M, d.N);
      cuda::check_launch("linearBackward (bias partials)");
      bias_reduce_kernel<T><<<cuda::blocks_for(d.N, 128), 128, 0, s>>>(args.dbias->data<T>(), partial, blocks, d.N);
      cuda::check_launch("linearBackward (bias)");
    }
  });
  return info.Env().Undefined();
}

}  // namespace

void register_linear(Napi::Env env, Napi::Object ops) { TF_LINEAR_OPS(TF_EXPORT_OP) }

}  // namespace tf
