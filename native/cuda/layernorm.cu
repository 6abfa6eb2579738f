// LayerNorm over the last dimension: the CUDA twin of native/cpu/layernorm.cc. One block per row; statistics in
// the working precision's float (fp32 for float32, double for float64), two passes (mean, then variance) as on the
// CPU. The weight and bias gradients are reduced through per-64-row partials in a fixed order: no float atomics.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "layers.cuh"

namespace tf {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kRowsPerBlock = 64;

unsigned row_grid(int64_t rows) { return static_cast<unsigned>(rows < (1 << 30) ? rows : (1 << 30)); }

template <typename T>
__global__ void __launch_bounds__(kThreads) ln_forward_kernel(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b,
                                                              int64_t N, int64_t C, T eps) {
  T* sh = shared_as<T>();
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* xr = x + r * C;
    T s = T(0);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += xr[i];
    T m = block_sum(s, sh) / T(C);
    T v = T(0);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      T d = xr[i] - m;
      v += d * d;
    }
    v = block_sum(v, sh) / T(C);
    T rs = T(1) / sqrt(v + eps);
    T* yr = y + r * C;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) yr[i] = (xr[i] - m) * rs * w[i] + b[i];
    if (threadIdx.x == 0) {
      if (mean) mean[r] = m;
      if (rstd) rstd[r] = rs;
    }
  }
}

// partial[k] = (sum over rows of block k of dy * xhat, sum of dy), one column per thread. Row blocks run along x
// (no row count reaches its limit), columns along y.
template <typename T>
__global__ void ln_param_partial_kernel(T* partial, const T* dy, const T* x, const T* mean, const T* rstd, int64_t N, int64_t C) {
  int64_t i = int64_t(blockIdx.y) * blockDim.x + threadIdx.x, k = blockIdx.x;
  if (i >= C) return;
  int64_t end = (k + 1) * kRowsPerBlock < N ? (k + 1) * kRowsPerBlock : N;
  T pw = T(0), pb = T(0);
  for (int64_t r = k * kRowsPerBlock; r < end; ++r) {
    T g = dy[r * C + i];
    T xhat = (x[r * C + i] - mean[r]) * rstd[r];
    pw += g * xhat;
    pb += g;
  }
  partial[k * 2 * C + i] = pw;
  partial[k * 2 * C + C + i] = pb;
}

template <typename T>
__global__ void ln_param_reduce_kernel(T* dw, T* db, const T* partial, int64_t blocks, int64_t C) {
  TF_GRID_LOOP(i, C) {
    T aw = dw[i], ab = db[i];
    for (int64_t k = 0; k < blocks; ++k) {
      aw += partial[k * 2 * C + i];
      ab += partial[k * 2 * C + C + i];
    }
    dw[i] = aw;
    db[i] = ab;
  }
}

// dx = (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)) * rstd, per row. dx may alias dy: each thread reads an
// element before it writes the same element.
template <typename T>
__global__ void __launch_bounds__(kThreads) ln_dx_kernel(T* dx, const T* dy, const T* x, const T* mean, const T* rstd,
                                                         const T* w, int64_t N, int64_t C, bool accumulate) {
  T* sh = shared_as<T>();
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T *xr = x + r * C, *g = dy + r * C;
    T m = mean[r], rs = rstd[r];
    T sg = T(0), sgx = T(0);
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      T xhat = (xr[i] - m) * rs;
      T gw = g[i] * w[i];
      sg += gw;
      sgx += gw * xhat;
    }
    sg = block_sum(sg, sh) / T(C);
    sgx = block_sum(sgx, sh) / T(C);
    T* dr = dx + r * C;
    for (int64_t i = threadIdx.x; i < C; i += blockDim.x) {
      T xhat = (xr[i] - m) * rs;
      T v = (g[i] * w[i] - sg - xhat * sgx) * rs;
      dr[i] = accumulate ? dr[i] + v : v;
    }
  }
}

}  // namespace

template <typename T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* weight, const T* bias, int64_t N, int64_t C, double eps) {
  if (N <= 0 || C <= 0) return;
  ln_forward_kernel<T><<<row_grid(N), kThreads, kThreads * sizeof(T), stream()>>>(y, mean, rstd, x, weight, bias, N, C, T(eps));
  check_launch("layerNorm");
}

template void layer_norm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, double);
template void layer_norm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, double);

}  // namespace cuda

namespace {

// layerNorm(y, mean, rstd, x, weight, bias, eps)
TF_OP(layerNorm) {
  const LayerNormArgs args = parse_layer_norm(info);
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    cuda::layer_norm_forward<T>(args.y->data<T>(), args.mean->data<T>(), args.rstd->data<T>(), args.x->data<T>(), args.weight->data<T>(),
                                args.bias->data<T>(), args.N, args.C, args.eps);
  });
  return info.Env().Undefined();
}

// layerNormBackward(dx, dweight, dbias, dy, x, mean, rstd, weight, accumulateDx)
TF_OP(layerNormBackward) {
  const LayerNormBackwardArgs args = parse_layer_norm_backward(info);
  const int64_t N = args.N, C = args.C;
  if (N <= 0 || C <= 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    cudaStream_t s = cuda::stream();
    int64_t blocks = (N + cuda::kRowsPerBlock - 1) / cuda::kRowsPerBlock, col_blocks = (C + 127) / 128;
    if (col_blocks > 65535) throw shape_error("layerNormBackward: too many features: " + std::to_string(C));
    T* partial = cuda::scratch_as<T>(0, blocks * 2 * C);
    // The parameter gradients read dy before the dx kernel runs, so dx may alias dy.
    cuda::ln_param_partial_kernel<T><<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(col_blocks)), 128, 0, s>>>(
        partial, args.dy->data<T>(), args.x->data<T>(), args.mean->data<T>(), args.rstd->data<T>(), N, C);
    cuda::check_launch("layerNormBackward (parameter partials)");
    cuda::ln_param_reduce_kernel<T><<<cuda::blocks_for(C, 128), 128, 0, s>>>(args.dweight->data<T>(), args.dbias->data<T>(), partial, blocks, C);
    cuda::check_launch("layerNormBackward (parameters)");
    cuda::ln_dx_kernel<T><<<cuda::row_grid(N), cuda::kThreads, cuda::kThreads * sizeof(T), s>>>(
        args.dx->data<T>(), args.dy->data<T>(), args.x->data<T>(), args.mean->data<T>(), args.rstd->data<T>(), args.weight->data<T>(), N, C,
        args.accumulate);
    cuda::check_launch("layerNormBackward (dx)");
  });
  return info.Env().Undefined();
}

}  // namespace

void register_layernorm(Napi::Env env, Napi::Object ops) { TF_LAYERNORM_OPS(TF_EXPORT_OP) }

}  // namespace tf
