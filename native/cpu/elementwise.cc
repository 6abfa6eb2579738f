// Small memory-bound ops that no one layer owns: copies, scaled adds, the reductions and allFinite (the layers' own
// ops are in theirs: patches.cc, gelu.cc, prior.cc, embedding.cc). Each parallelises over rows so results do not
// depend on the thread count.
#include <algorithm>
#include <atomic>
#include <vector>
#include <cstring>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "../common/threads.h"

namespace tf {
namespace {

constexpr int64_t kGrain = 1 << 14;

// copy(dst, src)
TF_OP(copy) {
  const CopyArgs args = parse_copy(info);
  // memmove: dst may be src itself (the parser refuses other overlaps), which memcpy does not allow.
  std::memmove(args.dst->data<char>(), args.src->data<char>(), args.src->numel() * dtype_size(args.src->dtype()));
  return info.Env().Undefined();
}

// axpby(y, x, alpha, beta): y = alpha * x + beta * y
TF_OP(axpby) {
  const AxpbyArgs args = parse_axpby(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    T* yp = args.y->data<T>();
    const T* xp = args.x->data<T>();
    T a = static_cast<T>(args.alpha), b = static_cast<T>(args.beta);
    parallel_for(args.x->numel(), kGrain, [&](int64_t s, int64_t e) {
      if (args.beta == 0)
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i];
      else
        for (int64_t i = s; i < e; ++i) yp[i] = a * xp[i] + b * yp[i];
    });
  });
  return info.Env().Undefined();
}

// rowSumSquares(out[B], x[B, ...]): per-sample sum of squares, accumulated in double.
TF_OP(rowSumSquares) {
  const RowSumSquaresArgs args = parse_row_sum_squares(info);
  const int64_t n = args.n;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    const T* xp = args.x->data<T>();
    T* op = args.out->data<T>();
    parallel_for(args.B, 1, [&](int64_t s, int64_t e) {
      for (int64_t b = s; b < e; ++b) {
        double acc = 0;
        const T* r = xp + b * n;
        for (int64_t i = 0; i < n; ++i) acc += double(r[i]) * double(r[i]);
        op[b] = static_cast<T>(acc);
      }
    });
  });
  return info.Env().Undefined();
}

// sumSquares(x) -> number (double accumulation, fixed blocking so the thread count does not change it)
TF_OP(sumSquares) {
  Tensor* x = parse_sum_squares(info).x;
  double total = dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    int64_t n = x->numel(), blocks = (n + kGrain - 1) / kGrain;
    std::vector<double> partial(blocks, 0.0);
    parallel_for(blocks, 1, [&](int64_t s, int64_t e) {
      for (int64_t k = s; k < e; ++k) {
        double acc = 0;
        for (int64_t i = k * kGrain; i < std::min(n, (k + 1) * kGrain); ++i) acc += double(xp[i]) * double(xp[i]);
        partial[k] = acc;
      }
    });
    double t = 0;
    for (double p : partial) t += p;
    return t;
  });
  return Napi::Number::New(info.Env(), total);
}

// allFinite(x) -> boolean
TF_OP(allFinite) {
  Tensor* x = parse_all_finite(info).x;
  bool ok = dispatch_float(x->dtype(), [&]<typename T>() {
    const T* xp = x->data<T>();
    int64_t n = x->numel();
    std::atomic<bool> finite{true};
    parallel_for(n, kGrain, [&](int64_t s, int64_t e) {
      T acc = 0;
      for (int64_t i = s; i < e; ++i) acc += xp[i] * T(0);  // NaN or Inf anywhere makes the product NaN
      if (acc != acc) finite = false;
    });
    return finite.load();
  });
  return Napi::Boolean::New(info.Env(), ok);
}

}  // namespace

void register_elementwise(Napi::Env env, Napi::Object ops) { TF_ELEMENTWISE_OPS(TF_EXPORT_OP) }

}  // namespace tf
