// Linear layers y = x W^T + b (W is (out, in), as in PyTorch) and their backward, on top of the GEMM kernel.
// The residual connections use accumulate=true (y += x W^T + b), so no separate add pass is needed.
#include <algorithm>
#include <vector>

#include "../common/op.h"
#include "../common/threads.h"
#include "gemm.h"

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
    T* yp = y->data<T>();
    gemm<T>(false, true, d.M, d.N, d.K, T(1), x->data<T>(), d.K, w->data<T>(), d.K, accumulate ? T(1) : T(0), yp, d.N);
    if (b) {
      const T* bp = b->data<T>();
      parallel_for(d.M, 64, [&](int64_t s, int64_t e) {
        for (int64_t r = s; r < e; ++r)
          for (int64_t j = 0; j < d.N; ++j) yp[r * d.N + j] += bp[j];
      });
    }
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
    if (dx) gemm<T>(false, false, d.M, d.K, d.N, T(1), g, d.N, w->data<T>(), d.K, accumulate ? T(1) : T(0), dx->data<T>(), d.K);
    if (dw) gemm<T>(true, false, d.N, d.K, d.M, T(1), g, d.N, x->data<T>(), d.K, T(1), dw->data<T>(), d.K);
    if (db) {
      constexpr int64_t kRows = 256;
      int64_t blocks = (d.M + kRows - 1) / kRows;
      std::vector<T> partial(static_cast<size_t>(blocks * d.N), T(0));
      parallel_for(blocks, 1, [&](int64_t s, int64_t e) {
        for (int64_t k = s; k < e; ++k) {
          T* p = partial.data() + k * d.N;
          for (int64_t r = k * kRows; r < std::min(d.M, (k + 1) * kRows); ++r)
            for (int64_t j = 0; j < d.N; ++j) p[j] += g[r * d.N + j];
        }
      });
      T* dbp = db->data<T>();
      for (int64_t k = 0; k < blocks; ++k)
        for (int64_t j = 0; j < d.N; ++j) dbp[j] += partial[k * d.N + j];
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
