// The exact inverse of one flow block on the GPU: the CUDA twin of native/cpu/reverse.cc. T-1 sequential token
// steps; each runs the whole layer stack for R = B rows (or 2B with guidance: rows [0,B) conditional at
// temperature 1, rows [B,2B) with the mean class embedding at temperature tau_u) against a KV cache kept in device
// memory, then mixes the guidance and applies the affine update on the device. The token loop runs on the host
// and only enqueues kernels on the stream; nothing comes back to the host until the op returns.
//
// TODO(perf): capture one token step in a CUDA Graph (or run a persistent kernel) to remove launch overhead;
// that is a later issue.
#include <cmath>

#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "gemm.cuh"
#include "layers.cuh"

namespace tf {
namespace {

using cuda::blocks_for;
using cuda::stream;

constexpr int kThreads = 128;

// dst[b, t] = src[b, flip ? T-1-t : t]: into the block's token order and back (the flip is its own inverse).
template <typename T>
__global__ void order_kernel(T* dst, const T* src, int64_t B, int64_t Tn, int64_t D, bool flip) {
  TF_GRID_LOOP(idx, B * Tn * D) {
    int64_t k = idx % D, t = (idx / D) % Tn, b = idx / (Tn * D);
    dst[idx] = src[(b * Tn + (flip ? Tn - 1 - t : t)) * D + k];
  }
}

// Per-row class embedding: the label's row for conditional rows with a label, the class mean otherwise.
template <typename T>
__global__ void row_embed_kernel(T* embed, const T* cls, const int32_t* labels, int64_t n_cls, int64_t B, int64_t R, int64_t W) {
  TF_GRID_LOOP(w, W) {
    T mean = T(0);
    for (int64_t c = 0; c < n_cls; ++c) mean += cls[c * W + w];
    mean /= T(n_cls);
    for (int64_t r = 0; r < R; ++r) {
      bool cond = r < B && labels && labels[r] >= 0;
      embed[r * W + w] = cond ? cls[int64_t(labels[r]) * W + w] : mean;
    }
  }
}

// tok[r] = xs[r mod B, i]: both passes read the same partially inverted sequence.
template <typename T>
__global__ void gather_token_kernel(T* tok, const T* xs, int64_t i, int64_t B, int64_t R, int64_t Tn, int64_t D) {
  TF_GRID_LOOP(idx, R * D) {
    int64_t k = idx % D, r = idx / D;
    tok[idx] = xs[((r % B) * Tn + i) * D + k];
  }
}

template <typename T>
__global__ void add_embed_kernel(T* h, const T* pos_row, const T* embed, int64_t R, int64_t W) {
  TF_GRID_LOOP(idx, R * W) {
    int64_t j = idx % W;
    h[idx] += pos_row[j] + embed[idx];
  }
}

template <typename T>
__global__ void store_kv_kernel(T* kc, T* vc, const T* qkv, int64_t i, int64_t R, int64_t Tn, int64_t W) {
  TF_GRID_LOOP(idx, R * W) {
    int64_t j = idx % W, r = idx / W;
    kc[(r * Tn + i) * W + j] = qkv[r * 3 * W + W + j];
    vc[(r * Tn + i) * W + j] = qkv[r * 3 * W + 2 * W + j];
  }
}

// One query token against the cached keys/values 0..i, one block per (row, head). Shared memory holds the i+1
// logits and the reduction buffer.
template <typename T>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(T* att, const T* qkv, const T* kc, const T* vc, int64_t i,
                                                                    int64_t B, int64_t H, int64_t Tn, int64_t W, int64_t hd,
                                                                    T scale_cond, T scale_uncond) {
  T* logits = shared_as<T>();
  T* red = logits + (i + 1);
  const int64_t r = blockIdx.x / H, hh = blockIdx.x % H;
  const T scale = r >= B ? scale_uncond : scale_cond;
  const T* q = qkv + r * 3 * W + hh * hd;
  T mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
    const T* kr = kc + (r * Tn + j) * W + hh * hd;
    T dot = T(0);
    for (int64_t c = 0; c < hd; ++c) dot += q[c] * kr[c];
    T l = dot * scale;
    logits[j] = l;
    mx = l > mx ? l : mx;
  }
  mx = block_max(mx, red);
  T sum = T(0);
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
    T e = exp(logits[j] - mx);
    logits[j] = e;
    sum += e;
  }
  sum = block_sum(sum, red);  // its __syncthreads also publishes every logit to the whole block
  T* out = att + r * W + hh * hd;
  for (int64_t c = threadIdx.x; c < hd; c += blockDim.x) {
    T acc = T(0);
    for (int64_t j = 0; j <= i; ++j) acc += (logits[j] / sum) * vc[(r * Tn + j) * W + hh * hd + c];
    out[c] = acc;
  }
}

// The guidance mix and the affine inverse for token i+1 of every sample.
template <typename T>
__global__ void update_kernel(T* xs, const T* o, int64_t i, int64_t B, int64_t Tn, int64_t D, bool nvp, bool guided,
                              bool guide_a, bool guide_b, T g) {
  const int64_t Do = nvp ? 2 * D : D;
  TF_GRID_LOOP(idx, B * D) {
    int64_t k = idx % D, b = idx / D;
    const T* oc = o + b * Do;
    const T* ou = o + (B + b) * Do;
    T a = nvp ? oc[k] : T(0);
    T sh = nvp ? oc[D + k] : oc[k];
    if (guided) {
      if (nvp && guide_a) a = a + g * (a - ou[k]);
      if (guide_b) sh = sh + g * (sh - (nvp ? ou[D + k] : ou[k]));
    }
    T* target = xs + (b * Tn + i + 1) * D + k;
    *target = *target * exp(a) + sh;
  }
}

// y (+)= x W^T + b; with gelu, y becomes GELU of that (the MLP's first layer, in the GEMM's epilogue).
template <typename T>
void dense(T* y, const T* x, Tensor* w, Tensor* b, int64_t rows, bool accumulate, bool gelu = false) {
  int64_t N = w->dim(0), K = w->dim(1);
  cuda::gemm<T>(false, true, rows, N, K, T(1), x, K, w->data<T>(), K, accumulate ? T(1) : T(0), y, N,
                {.bias = b->data<T>(), .gelu = gelu ? y : nullptr});
}

template <typename T>
void block_reverse(T* x, int64_t B, int64_t Tn, int64_t D, const BlockWeights& w, const int32_t* labels, const ReverseOptions& opt) {
  const int64_t W = w.inw->dim(0), L = static_cast<int64_t>(w.layers.size()), H = opt.heads, hd = W / H;
  const int64_t F = w.layers.empty() ? 0 : w.layers[0].fc1w->dim(0);
  const int64_t Do = opt.nvp ? 2 * D : D;
  const bool guided = opt.guidance > 0 && (opt.guide_a || opt.guide_b);
  const int64_t R = guided ? 2 * B : B;
  const int64_t n_cls = w.cls ? w.cls->numel() / W : 0;
  cudaStream_t s = stream();

  // One allocation per call (not per step) for everything the token loop needs.
  cuda::Buffer xs_buf(sizeof(T) * B * Tn * D), embed_buf(sizeof(T) * R * W), kc_buf(sizeof(T) * (L * R * Tn * W + 1)),
      vc_buf(sizeof(T) * (L * R * Tn * W + 1)), work_buf(sizeof(T) * (R * W * 3 + R * 3 * W + R * (F + 1) + R * Do + R * D + 2 * R));
  T* xs = xs_buf.as<T>();
  T* embed = embed_buf.as<T>();
  T* kcache = kc_buf.as<T>();
  T* vcache = vc_buf.as<T>();
  T* h = work_buf.as<T>();
  T* ln = h + R * W;
  T* att = ln + R * W;
  T* qkv = att + R * W;
  T* f = qkv + R * 3 * W;
  T* o = f + R * (F + 1);
  T* tok = o + R * Do;
  T* mean = tok + R * D;
  T* rstd = mean + R;

  order_kernel<T><<<blocks_for(B * Tn * D, 256), 256, 0, s>>>(xs, x, B, Tn, D, opt.flip);
  cuda::check_launch("blockReverse (order)");
  if (w.cls) {
    row_embed_kernel<T><<<blocks_for(W, 128), 128, 0, s>>>(embed, w.cls->data<T>(), labels, n_cls, B, R, W);
    cuda::check_launch("blockReverse (class embedding)");
  }  // else: the buffer is zeroed, as the CPU's row_embed

  const T* pos = w.pos->data<T>();
  const double scale_c = 1.0 / std::sqrt(double(hd));
  const T scale_cond = T(scale_c / 1.0), scale_uncond = T(scale_c / opt.temp_uncond);
  const size_t attn_smem_base = sizeof(T) * kThreads;
  int max_smem = 48 * 1024;
  if (attn_smem_base + sizeof(T) * Tn > size_t(max_smem)) {
    // Long sequences need more than the default 48 KiB of dynamic shared memory for the logits.
    int dev = 0;
    cuda::check(cudaGetDevice(&dev), "cudaGetDevice");
    cuda::check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    if (attn_smem_base + sizeof(T) * Tn > size_t(max_smem))
      throw shape_error("blockReverse: " + std::to_string(Tn) + " tokens exceed the attention kernel's shared memory");
    cuda::check(cudaFuncSetAttribute(decode_attention_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem),
                "cudaFuncSetAttribute");
  }

  for (int64_t i = 0; i + 1 < Tn; ++i) {
    gather_token_kernel<T><<<blocks_for(R * D, 128), 128, 0, s>>>(tok, xs, i, B, R, Tn, D);
    cuda::check_launch("blockReverse (token)");
    dense(h, tok, w.inw, w.inb, R, false);
    add_embed_kernel<T><<<blocks_for(R * W, 128), 128, 0, s>>>(h, pos + (opt.flip ? Tn - 1 - i : i) * W, embed, R, W);
    cuda::check_launch("blockReverse (embedding)");

    for (int64_t l = 0; l < L; ++l) {
      const LayerWeights& lw = w.layers[l];
      cuda::layer_norm_forward<T>(ln, mean, rstd, h, lw.ln1w->data<T>(), lw.ln1b->data<T>(), R, W, opt.eps);
      dense(qkv, ln, lw.qkvw, lw.qkvb, R, false);
      T* kc = kcache + l * R * Tn * W;
      T* vc = vcache + l * R * Tn * W;
      store_kv_kernel<T><<<blocks_for(R * W, 128), 128, 0, s>>>(kc, vc, qkv, i, R, Tn, W);
      cuda::check_launch("blockReverse (kv cache)");
      decode_attention_kernel<T><<<static_cast<unsigned>(R * H), kThreads, attn_smem_base + sizeof(T) * (i + 1), s>>>(
          att, qkv, kc, vc, i, B, H, Tn, W, hd, scale_cond, scale_uncond);
      cuda::check_launch("blockReverse (attention)");
      dense(h, att, lw.projw, lw.projb, R, true);
      cuda::layer_norm_forward<T>(ln, mean, rstd, h, lw.ln2w->data<T>(), lw.ln2b->data<T>(), R, W, opt.eps);
      dense(f, ln, lw.fc1w, lw.fc1b, R, false, true);
      dense(h, f, lw.fc2w, lw.fc2b, R, true);
    }
    dense(o, h, w.outw, w.outb, R, false);

    const T g = T(opt.annealed ? opt.guidance * double(i + 1) / double(Tn - 1) : opt.guidance);
    update_kernel<T><<<blocks_for(B * D, 128), 128, 0, s>>>(xs, o, i, B, Tn, D, opt.nvp, guided, opt.guide_a, opt.guide_b, g);
    cuda::check_launch("blockReverse (update)");
  }

  order_kernel<T><<<blocks_for(B * Tn * D, 256), 256, 0, s>>>(x, xs, B, Tn, D, opt.flip);
  cuda::check_launch("blockReverse (order back)");
}

// blockReverse(x[B,T,D] (in place, natural token order), weights, options)
TF_OP(blockReverse) {
  const BlockReverseArgs args = parse_block_reverse(info);
  if (args.B * args.Tn * args.D == 0) return info.Env().Undefined();
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    block_reverse<T>(args.x->data<T>(), args.B, args.Tn, args.D, args.w, args.labels ? args.labels->data<int32_t>() : nullptr, args.opt);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_reverse(Napi::Env env, Napi::Object ops) { TF_REVERSE_OPS(TF_EXPORT_OP) }

}  // namespace tf
