// The affine autoregressive coupling of one flow block: the CUDA twin of native/cpu/coupling.cc.
//   v_0 = u_0,  v_i = (u_i - b_{i-1}) * exp(-a_{i-1}) for i >= 1;  logdet = -mean(a) over the T*D entries.
// exp runs in the working precision (fp32 for float32), as on the CPU. The log-determinant is one block per
// sample with a fixed-order tree sum. The inverse with the guidance mix is reverse.cu's update_kernel.
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "device.cuh"

namespace tf {
namespace {

template <typename T>
__global__ void coupling_forward_kernel(T* v, const T* u, const T* o, int64_t B, int64_t Tn, int64_t D, bool nvp) {
  const int64_t Do = nvp ? 2 * D : D;
  TF_GRID_LOOP(idx, B * Tn * D) {
    int64_t k = idx % D, i = (idx / D) % Tn, b = idx / (Tn * D);
    if (i == 0) {
      v[idx] = u[idx];
      continue;
    }
    const T* orow = o + (b * Tn + i - 1) * Do;
    T a = nvp ? orow[k] : T(0);
    T shift = nvp ? orow[D + k] : orow[k];
    v[idx] = (u[idx] - shift) * exp(-a);
  }
}

template <typename T>
__global__ void logdet_kernel(T* logdet, const T* o, int64_t Tn, int64_t D, bool accumulate) {
  T* sh = shared_as<T>();
  const int64_t b = blockIdx.x, n = (Tn - 1) * D;
  T s = T(0);
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) s += o[(b * Tn + e / D) * 2 * D + e % D];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    T ld = -s / T(Tn * D);
    logdet[b] = accumulate ? logdet[b] + ld : ld;
  }
}

// VP blocks have a = 0: the log-determinant is -0, written or added the way the CPU does.
template <typename T>
__global__ void logdet_zero_kernel(T* logdet, int64_t B, bool accumulate) {
  TF_GRID_LOOP(b, B) {
    T ld = -T(0) / T(1);
    logdet[b] = accumulate ? logdet[b] + ld : ld;
  }
}

template <typename T>
__global__ void coupling_backward_kernel(T* du, T* go, const T* gv, const T* u, const T* o, int64_t B, int64_t Tn,
                                         int64_t D, bool nvp, T da_logdet) {
  const int64_t Do = nvp ? 2 * D : D;
  TF_GRID_LOOP(idx, B * Tn * D) {
    int64_t k = idx % D, i = (idx / D) % Tn, b = idx / (Tn * D);
    T g = gv[idx];
    if (i == 0) {
      du[idx] = g;
    } else {
      const T* orow = o + (b * Tn + i - 1) * Do;
      T* grow = go + (b * Tn + i - 1) * Do;
      T a = nvp ? orow[k] : T(0);
      T shift = nvp ? orow[D + k] : orow[k];
      T sc = exp(-a);
      du[idx] = g * sc;
      if (nvp) {
        grow[D + k] = -g * sc;
        grow[k] = -g * (u[idx] - shift) * sc + da_logdet;
      } else {
        grow[k] = -g * sc;
      }
    }
    // The last token's outputs parameterise nothing.
    if (i == Tn - 1) {
      T* last = go + (b * Tn + Tn - 1) * Do;
      last[k] = T(0);
      if (nvp) last[D + k] = T(0);
    }
  }
}

// couplingForward(v, logdet[B], u, o, nvp, accumulateLogdet)
TF_OP(couplingForward) {
  const CouplingForwardArgs args = parse_coupling_forward(info);
  const CouplingDims& d = args.d;
  if (d.B == 0) return info.Env().Undefined();
  // The log-det kernel runs one block per sample; refused before anything is written, so that v is never left
  // half-updated behind an error.
  if (args.nvp && d.B > 2147483647) throw shape_error("couplingForward: at most 2^31 - 1 samples per call; split the batch");
  dispatch_float(args.u->dtype(), [&]<typename T>() {
    cudaStream_t s = cuda::stream();
    int64_t n = d.B * d.T * d.D;
    if (n > 0) {
      coupling_forward_kernel<T><<<cuda::blocks_for(n, 256), 256, 0, s>>>(args.v->data<T>(), args.u->data<T>(), args.o->data<T>(), d.B, d.T, d.D, args.nvp);
      cuda::check_launch("couplingForward");
    }
    if (args.nvp && d.T * d.D > 0) {
      logdet_kernel<T><<<static_cast<unsigned>(d.B), 256, 256 * sizeof(T), s>>>(args.logdet->data<T>(), args.o->data<T>(), d.T, d.D, args.accumulate);
    } else {
      logdet_zero_kernel<T><<<cuda::blocks_for(d.B, 128), 128, 0, s>>>(args.logdet->data<T>(), d.B, args.accumulate);
    }
    cuda::check_launch("couplingForward (logdet)");
  });
  return info.Env().Undefined();
}

// couplingBackward(du, do, dv, u, o, nvp, logdetGrad): du and do are overwritten.
TF_OP(couplingBackward) {
  const CouplingBackwardArgs args = parse_coupling_backward(info);
  const CouplingDims& d = args.d;
  int64_t n = d.B * d.T * d.D;
  if (n == 0) return info.Env().Undefined();
  dispatch_float(args.u->dtype(), [&]<typename T>() {
    const T da_logdet = T(-args.logdet_grad / double(d.T * d.D));
    coupling_backward_kernel<T><<<cuda::blocks_for(n, 256), 256, 0, cuda::stream()>>>(
        args.du->data<T>(), args.dout->data<T>(), args.dv->data<T>(), args.u->data<T>(), args.o->data<T>(), d.B, d.T, d.D, args.nvp, da_logdet);
    cuda::check_launch("couplingBackward");
  });
  return info.Env().Undefined();
}

}  // namespace

void register_coupling(Napi::Env env, Napi::Object ops) { TF_COUPLING_OPS(TF_EXPORT_OP) }

}  // namespace tf
