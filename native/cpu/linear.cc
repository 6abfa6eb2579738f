// Linear layers y = x W^T + b (W is (out, in), as in PyTorch) and their backward, on top of the GEMM kernel.
// The residual connections use accumulate=true (y += x W^T + b), so no separate add pass is needed; the bias, the
// MLP's activation (the gelu option) and, in the backward, the GELU's derivative (geluInput) are applied in the
// GEMM's epilogue on each finished tile, on the CPU as on the GPU.
#include <algorithm>
#include <array>
#include <initializer_list>
#include <optional>
#include <vector>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"
#include "gemm.h"

namespace tf {
namespace {

// Under precision 'bf16' the GEMM multiplies rounded copies of its two operands (gemm.cc, gemm_bf16.cc). They grow with
// the batch, so they count against the memory limit as tensors do, for the op's duration: the larger of the op's
// products, (M, N, K) each.
void count_bf16_copies(std::optional<MemoryReservation>& counted, Precision precision, std::initializer_list<std::array<int64_t, 3>> products) {
  if (precision != Precision::BF16) return;
  size_t bytes = 0;
  for (const auto& p : products) bytes = std::max(bytes, bf16_gemm_scratch_bytes(p[0], p[1], p[2]));
  counted.emplace(bytes, "the bf16-rounded operands of a product");
}

// linear(y, x, weight, bias|null, accumulate, {precision, gelu}?)
TF_OP(linear) {
  const LinearArgs args = parse_linear(info);
  const LinearDims& d = args.d;
  std::optional<MemoryReservation> counted;
  count_bf16_copies(counted, args.precision, {{d.M, d.N, d.K}});
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const GemmEpilogue<T> ep{args.bias ? args.bias->data<T>() : nullptr, args.gelu ? args.gelu->data<T>() : nullptr, nullptr};
    gemm<T>(args.precision, false, true, d.M, d.N, d.K, T(1), args.x->data<T>(), d.K, args.weight->data<T>(), d.K,
            args.accumulate ? T(1) : T(0), args.y->data<T>(), d.N, true, &ep);
  });
  return info.Env().Undefined();
}

// linearBackward(dx|null, dweight|null, dbias|null, dy, x, weight, accumulateDx, {precision, geluInput}?)
// dweight += dy^T x and dbias += sum_rows dy (gradients accumulate over a step); dx = (or +=) dy W. With bf16 the
// two products take bf16 inputs; the bias gradient is an fp32 sum of dy. geluInput (the pre-activation u of this
// layer's input x = GELU(u)) carries dx on through the GELU: dx = (dy W) * GELU'(u), in the product's epilogue.
TF_OP(linearBackward) {
  const LinearBackwardArgs args = parse_linear_backward(info);
  const LinearDims& d = args.d;
  std::optional<MemoryReservation> counted;
  count_bf16_copies(counted, args.precision, {{args.dx ? d.M : 0, d.K, d.N}, {args.dweight ? d.N : 0, d.K, d.M}});
  dispatch_float(args.weight->dtype(), [&]<typename T>() {
    const T* g = args.dy->data<T>();
    const GemmEpilogue<T> through_gelu{nullptr, nullptr, args.gelu_input ? args.gelu_input->data<T>() : nullptr};
    if (args.dx)
      gemm<T>(args.precision, false, false, d.M, d.K, d.N, T(1), g, d.N, args.weight->data<T>(), d.K, args.accumulate ? T(1) : T(0),
              args.dx->data<T>(), d.K, true, args.gelu_input ? &through_gelu : nullptr);
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
