// Linear layers y = x W^T + b (W is (out, in), as in PyTorch) and their backward, on top of the GEMM kernel.
// The residual connections use accumulate=true (y += x W^T + b), so no separate add pass is needed; the MLP's
// activation comes out of the same call (the gelu option), as it does from the GPU's GEMM epilogue.
#include <algorithm>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "gelu.h"
#include "gemm.h"

namespace tf {
namespace {

// linear(y, x, weight, bias|null, accumulate, {precision, gelu}?)
TF_OP(linear) {
  const LinearArgs args = parse_linear(info);
  const LinearDims& d = args.d;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    T* yp = args.y->data<T>();
    gemm<T>(args.precision, false, true, d.M, d.N, d.K, T(1), args.x->data<T>(), d.K, args.weight->data<T>(), d.K,
            args.accumulate ? T(1) : T(0), yp, d.N);
    const T* bp = args.bias ? args.bias->data<T>() : nullptr;
    T* gp = args.gelu ? args.gelu->data<T>() : nullptr;
    if (bp || gp) {
      parallel_for(d.M, 64, [&](int64_t s, int64_t e) {
        for (int64_t r = s; r < e; ++r) {
          if (bp)
            for (int64_t j = 0; j < d.N; ++j) yp[r * d.N + j] += bp[j];
          if (gp)
            for (int64_t j = 0; j < d.N; ++j) gp[r * d.N + j] = tf::gelu(yp[r * d.N + j]);
        }
      });
    }
  });
  return info.Env().Undefined();
}

// linearBackward(dx|null, dweight|null, dbias|null, dy, x, weight, accumulateDx, {precision}?)
// dweight += dy^T x and dbias += sum_rows dy (gradients accumulate over a step); dx = (or +=) dy W. With bf16 the
// two products take bf16 inputs; the bias gradient is an fp32 sum of dy.
TF_OP(linearBackward) {
  const LinearBackwardArgs args = parse_linear_backward(info);
  const LinearDims& d = args.d;
  dispatch_float(args.weight->dtype(), [&]<typename T>() {
    const T* g = args.dy->data<T>();
    if (args.dx)
      gemm<T>(args.precision, false, false, d.M, d.K, d.N, T(1), g, d.N, args.weight->data<T>(), d.K, args.accumulate ? T(1) : T(0),
              args.dx->data<T>(), d.K);
    if (args.dweight)
      gemm<T>(args.precision, true, false, d.N, d.K, d.M, T(1), g, d.N, args.x->data<T>(), d.K, T(1), args.dweight->data<T>(), d.K);
    if (args.dbias) {
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
      T* dbp = args.dbias->data<T>();
      for (int64_t k = 0; k < blocks; ++k)
        for (int64_t j = 0; j < d.N; ++j) dbp[j] += partial[k * d.N + j];
    }
  });
  return info.Env().Undefined();
}

}  // namespace

void register_linear(Napi::Env env, Napi::Object ops) { TF_LINEAR_OPS(TF_EXPORT_OP) }

}  // namespace tf
