// The exact inverse of one flow block on the GPU: the CUDA twin of native/cpu/reverse.cc. T-1 sequential token
// steps; each runs the whole layer stack for R = B rows (or 2B with guidance: rows [0,B) conditional at
// temperature 1, rows [B,2B) with the mean class embedding at temperature tau_u) against a KV cache kept in device
// memory, then mixes the guidance and applies the affine update on the device. Nothing comes back to the host
// until the op returns.
//
// Options precision and kvCache (float only): bf16 matrix products on the tensor cores, and keys and values cached
// in bf16, which halves the bytes each step reads (the steps of a large batch are bound by those reads); the CPU
// computes both the same way (native/cpu/reverse.cc) and is their reference.
//
// Three ways to run the steps, TARFLOW_CUDA_SAMPLER (read at each call, so tests can compare them):
//   reference  the host loops over the steps, passing the token index to each kernel; attention is one block per
//              (row, head) over all cached keys: the simple version the others are tested against;
//   direct     the kernels read the token index from a device counter that the step's last kernel advances, and
//              attention is split over the keys (decode_tile.h); the host still enqueues every step;
//   graph      (default) as direct, but the first step is enqueued and the second captured in a CUDA Graph,
//              replayed for the rest: one launch per step instead of about 10 per layer. Never under
//              TARFLOW_CUDA_SYNC=1, whose per-op synchronisation compute-sanitizer runs rely on.
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../common/env_choice.h"
#include "../common/op.h"
#include "../common/op_args.h"
#include "../common/op_table.h"
#include "decode_tile.h"
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

// The token index of a step: given by the host (reference) or read from a device counter (direct, graph), so
// that one captured step serves every step.
struct Step {
  int64_t i;
  const int64_t* counter;
  __device__ int64_t get() const { return counter ? *counter : i; }
};

__global__ void advance_kernel(int64_t* counter) { ++*counter; }

// tok[r] = xs[r mod B, i]: both passes read the same partially inverted sequence.
template <typename T>
__global__ void gather_token_kernel(T* tok, const T* xs, Step step, int64_t B, int64_t R, int64_t Tn, int64_t D) {
  const int64_t i = step.get();
  TF_GRID_LOOP(idx, R * D) {
    int64_t k = idx % D, r = idx / D;
    tok[idx] = xs[((r % B) * Tn + i) * D + k];
  }
}

// h += the position embedding of token i (in natural order) + the row's class embedding.
template <typename T>
__global__ void add_embed_kernel(T* h, const T* pos, const T* embed, Step step, bool flip, int64_t Tn, int64_t R, int64_t W) {
  const int64_t i = step.get();
  const T* pos_row = pos + (flip ? Tn - 1 - i : i) * W;
  TF_GRID_LOOP(idx, R * W) {
    int64_t j = idx % W;
    h[idx] += pos_row[j] + embed[idx];
  }
}

// Stores token i's keys and values in the cache's storage C (T, or bf16 rounded to nearest).
template <typename T, typename C>
__global__ void store_kv_kernel(C* kc, C* vc, const T* qkv, Step step, int64_t R, int64_t Tn, int64_t W) {
  const int64_t i = step.get();
  TF_GRID_LOOP(idx, R * W) {
    int64_t j = idx % W, r = idx / W;
    kc[(r * Tn + i) * W + j] = to_cache<C>(qkv[r * 3 * W + W + j]);
    vc[(r * Tn + i) * W + j] = to_cache<C>(qkv[r * 3 * W + 2 * W + j]);
  }
}

// The reference attention: one query token against the cached keys/values 0..i, one block per (row, head).
// Shared memory holds the i+1 logits and the reduction buffer.
template <typename T, typename C>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(T* att, const T* qkv, const C* kc, const C* vc, int64_t i,
                                                                    int64_t B, int64_t H, int64_t Tn, int64_t W, int64_t hd,
                                                                    T scale_cond, T scale_uncond) {
  T* logits = shared_as<T>();
  T* red = logits + (i + 1);
  const int64_t r = blockIdx.x / H, hh = blockIdx.x % H;
  const T scale = r >= B ? scale_uncond : scale_cond;
  const T* q = qkv + r * 3 * W + hh * hd;
  T mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
    const C* kr = kc + (r * Tn + j) * W + hh * hd;
    T dot = T(0);
    for (int64_t c = 0; c < hd; ++c) dot += q[c] * T(cache_value(kr[c]));
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
    for (int64_t j = 0; j <= i; ++j) acc += (logits[j] / sum) * T(cache_value(vc[(r * Tn + j) * W + hh * hd + c]));
    out[c] = acc;
  }
}

// Split-KV attention, one block per (row, head, chunk of keys): partial (m, l, o) per chunk (decode_tile.h); the
// cache is read in packs of V elements.
template <typename T, typename C, int V>
__global__ void __launch_bounds__(decode::kThreads) split_attention_kernel(T* ml, T* o, const T* qkv, const C* kc, const C* vc,
                                                                           decode::Problem p, Step step, T scale_cond, T scale_uncond) {
  const decode::Block b = decode::block_of(p, blockIdx.x, step.get() + 1);
  if (!b.live) return;
  const decode::Shared<T> sh(shared_as<T>(), p);
  const int tid = threadIdx.x;
  decode::stage<V>(p, b, tid, qkv, kc, vc, sh);
  __syncthreads();
  const T logit = decode::score(p, b, tid, sh, scale_cond, scale_uncond);
  const T m = block_max(logit, sh.red);
  const T l = block_sum(decode::weight(b, tid, logit, m, sh), sh.red);  // its barriers publish p
  decode::accumulate(p, b, tid, sh);
  __syncthreads();
  decode::finish(p, b, tid, sh, m, l, ml, o, flash::Plain{});
}

template <typename T>
__global__ void combine_attention_kernel(T* att, const T* ml, const T* o, decode::Problem p, Step step) {
  const int64_t n = step.get() + 1;
  TF_GRID_LOOP(idx, p.pairs() * p.hd) decode::combine(p, idx, n, ml, o, att, flash::Plain{});
}

// The guidance mix and the affine inverse for token i+1 of every sample; annealed guidance grows with i as on
// the host (the same double arithmetic, so the same g).
template <typename T>
__global__ void update_kernel(T* xs, const T* o, Step step, int64_t B, int64_t Tn, int64_t D, bool nvp, bool guided, bool guide_a,
                              bool guide_b, double guidance, bool annealed) {
  const int64_t i = step.get();
  const T g = T(annealed ? guidance * double(i + 1) / double(Tn - 1) : guidance);
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

// y (+)= x W^T + b; with gelu, y becomes GELU of that (the MLP's first layer, in the GEMM's epilogue). With bf16
// precision the product runs on the tensor cores, as in training.
template <typename T>
void dense(T* y, const T* x, Tensor* w, Tensor* b, int64_t rows, bool accumulate, Precision precision, bool gelu = false) {
  int64_t N = w->dim(0), K = w->dim(1);
  cuda::gemm<T>(false, true, rows, N, K, T(1), x, K, w->data<T>(), K, accumulate ? T(1) : T(0), y, N,
                {.bias = b->data<T>(), .gelu = gelu ? y : nullptr, .precision = precision});
}

enum class Mode { Reference, Direct, Graph };

Mode sampler_mode() {
  switch (env_choice("TARFLOW_CUDA_SAMPLER", {"graph", "direct", "reference"})) {
    case 2: return Mode::Reference;
    case 1: return Mode::Direct;
    default: return cuda::sync_every_op() ? Mode::Direct : Mode::Graph;  // nothing may be captured then
  }
}

// The most dynamic shared memory one block may opt in to on this device.
size_t max_shared_per_block() {
  int dev = 0, max_smem = 0;
  cuda::check(cudaGetDevice(&dev), "cudaGetDevice");
  cuda::check(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  return size_t(max_smem);
}

// Raises a kernel's dynamic shared memory limit past the default 48 KiB when it needs more, or says it cannot.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes, const std::string& why) {
  if (bytes <= 48 * 1024) return;
  if (bytes > max_shared_per_block()) throw shape_error("blockReverse: " + why + " exceed the attention kernel's shared memory");
  cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "cudaFuncSetAttribute");
}

// Owns a graph and its executable; ends a capture that an exception interrupted, so no path leaks either.
class StepGraph {
 public:
  explicit StepGraph(cudaStream_t s) : s_(s) {}
  ~StepGraph() {
    if (capturing_) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(s_, &g);
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();  // the error being thrown already says what went wrong
    }
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
  }
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Records what enqueue puts on the stream (nothing runs) and instantiates it.
  template <typename Enqueue>
  void capture(Enqueue&& enqueue) {
    cuda::check(cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal), "blockReverse (begin graph capture)");
    capturing_ = true;
    enqueue();
    capturing_ = false;
    cuda::check(cudaStreamEndCapture(s_, &graph_), "blockReverse (end graph capture)");
    cuda::check(cudaGraphInstantiate(&exec_, graph_, 0), "blockReverse (graph instantiate)");
  }
  void launch() { cuda::check(cudaGraphLaunch(exec_, s_), "blockReverse (graph launch)"); }

 private:
  cudaStream_t s_;
  bool capturing_ = false;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// C is the cache's storage: T, or Bf16 (float only).
template <typename T, typename C>
void block_reverse(T* x, int64_t B, int64_t Tn, int64_t D, const BlockWeights& w, const int32_t* labels, const ReverseOptions& opt) {
  const int64_t W = w.inw->dim(0), L = static_cast<int64_t>(w.layers.size()), H = opt.heads, hd = W / H;
  const int64_t F = w.layers.empty() ? 0 : w.layers[0].fc1w->dim(0);
  const int64_t Do = opt.nvp ? 2 * D : D;
  const bool guided = opt.guidance > 0 && (opt.guide_a || opt.guide_b);
  const int64_t R = guided ? 2 * B : B;
  const int64_t n_cls = w.cls ? w.cls->numel() / W : 0;
  const decode::Problem dp{R, B, H, Tn, W, hd};
  Mode mode = sampler_mode();
  // The split kernel stages a 64-key chunk of keys and values per head in shared memory, which for very wide heads
  // (over about 440 floats on an H100) does not fit; the reference kernel's shared memory grows with the tokens
  // instead, so such models still sample (as on the CPU), only without the split and the graph.
  const size_t split_smem = sizeof(T) * dp.shared_words();
  if (mode != Mode::Reference && split_smem > 48 * 1024 && split_smem > max_shared_per_block()) mode = Mode::Reference;
  const bool split = mode != Mode::Reference;
  cudaStream_t s = stream();

  // One allocation per call (not per step) for everything the token loop needs, counted against the memory limit.
  // The working rows share one buffer, each starting on 16 bytes so the products keep their vector loads.
  const auto padded = [](int64_t n) { constexpr int64_t a = 16 / sizeof(T); return (n + a - 1) / a * a; };
  const int64_t rows_w = padded(R * W), rows_qkv = padded(R * 3 * W), rows_f = padded(R * F), rows_o = padded(R * Do),
                rows_d = padded(R * D);
  const size_t xs_bytes = sizeof(T) * B * Tn * D, embed_bytes = sizeof(T) * R * W, cache_bytes = sizeof(C) * L * R * Tn * W,
               work_bytes = sizeof(T) * (rows_w * 3 + rows_qkv + rows_f + rows_o + rows_d + 2 * R),
               part_bytes = split ? sizeof(T) * (dp.ml_words() + dp.o_words()) : 0;
  const MemoryReservation counted(xs_bytes + embed_bytes + 2 * cache_bytes + work_bytes + part_bytes + sizeof(int64_t),
                                  "blockReverse's KV cache and working rows");
  cuda::Buffer xs_buf(xs_bytes), embed_buf(embed_bytes), kc_buf(cache_bytes), vc_buf(cache_bytes), work_buf(work_bytes),
      part_buf(part_bytes), counter_buf(sizeof(int64_t));
  T* xs = xs_buf.as<T>();
  T* embed = embed_buf.as<T>();
  C* kcache = kc_buf.as<C>();
  C* vcache = vc_buf.as<C>();
  T* h = work_buf.as<T>();
  T* ln = h + rows_w;
  T* att = ln + rows_w;
  T* qkv = att + rows_w;
  T* f = qkv + rows_qkv;
  T* o = f + rows_f;
  T* tok = o + rows_o;
  T* mean = tok + rows_d;
  T* rstd = mean + R;
  T* part_ml = part_buf.as<T>();
  T* part_o = part_ml + dp.ml_words();
  int64_t* counter = counter_buf.as<int64_t>();

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
  constexpr int kPack = 16 / sizeof(C);
  const bool packed = decode::pack_width<C>(dp) == kPack;
  if (split) {
    if (packed) allow_shared(split_attention_kernel<T, C, kPack>, split_smem, "heads of " + std::to_string(hd));
    else allow_shared(split_attention_kernel<T, C, 1>, split_smem, "heads of " + std::to_string(hd));
  } else {
    allow_shared(decode_attention_kernel<T, C>, attn_smem_base + sizeof(T) * Tn, std::to_string(Tn) + " tokens");
  }

  const auto attention = [&](C* kc, C* vc, Step step) {
    if (!split) {
      decode_attention_kernel<T, C><<<static_cast<unsigned>(R * H), kThreads, attn_smem_base + sizeof(T) * (step.i + 1), s>>>(
          att, qkv, kc, vc, step.i, B, H, Tn, W, hd, scale_cond, scale_uncond);
      cuda::check_launch("blockReverse (attention)");
      return;
    }
    const auto grid = static_cast<unsigned>(dp.blocks());
    if (packed)
      split_attention_kernel<T, C, kPack><<<grid, decode::kThreads, split_smem, s>>>(part_ml, part_o, qkv, kc, vc, dp, step, scale_cond, scale_uncond);
    else
      split_attention_kernel<T, C, 1><<<grid, decode::kThreads, split_smem, s>>>(part_ml, part_o, qkv, kc, vc, dp, step, scale_cond, scale_uncond);
    cuda::check_launch("blockReverse (split attention)");
    combine_attention_kernel<T><<<blocks_for(dp.pairs() * hd, 128), 128, 0, s>>>(att, part_ml, part_o, dp, step);
    cuda::check_launch("blockReverse (attention combine)");
  };

  // One token step: the whole layer stack for every row, then the update of token i+1.
  const auto token_step = [&](Step step) {
    gather_token_kernel<T><<<blocks_for(R * D, 128), 128, 0, s>>>(tok, xs, step, B, R, Tn, D);
    cuda::check_launch("blockReverse (token)");
    dense(h, tok, w.inw, w.inb, R, false, opt.precision);
    add_embed_kernel<T><<<blocks_for(R * W, 128), 128, 0, s>>>(h, pos, embed, step, opt.flip, Tn, R, W);
    cuda::check_launch("blockReverse (embedding)");

    for (int64_t l = 0; l < L; ++l) {
      const LayerWeights& lw = w.layers[l];
      cuda::layer_norm_forward<T>(ln, mean, rstd, h, lw.ln1w->data<T>(), lw.ln1b->data<T>(), R, W, opt.eps);
      dense(qkv, ln, lw.qkvw, lw.qkvb, R, false, opt.precision);
      C* kc = kcache + l * R * Tn * W;
      C* vc = vcache + l * R * Tn * W;
      store_kv_kernel<T, C><<<blocks_for(R * W, 128), 128, 0, s>>>(kc, vc, qkv, step, R, Tn, W);
      cuda::check_launch("blockReverse (kv cache)");
      attention(kc, vc, step);
      dense(h, att, lw.projw, lw.projb, R, true, opt.precision);
      cuda::layer_norm_forward<T>(ln, mean, rstd, h, lw.ln2w->data<T>(), lw.ln2b->data<T>(), R, W, opt.eps);
      dense(f, ln, lw.fc1w, lw.fc1b, R, false, opt.precision, true);
      dense(h, f, lw.fc2w, lw.fc2b, R, true, opt.precision);
    }
    dense(o, h, w.outw, w.outb, R, false, opt.precision);

    update_kernel<T><<<blocks_for(B * D, 128), 128, 0, s>>>(xs, o, step, B, Tn, D, opt.nvp, guided, opt.guide_a, opt.guide_b, opt.guidance,
                                                           opt.annealed);
    cuda::check_launch("blockReverse (update)");
    if (step.counter) {
      advance_kernel<<<1, 1, 0, s>>>(counter);
      cuda::check_launch("blockReverse (next token)");
    }
  };

  if (mode == Mode::Reference) {
    for (int64_t i = 0; i + 1 < Tn; ++i) token_step({i, nullptr});
  } else if (mode == Mode::Direct || Tn <= 2) {
    for (int64_t i = 0; i + 1 < Tn; ++i) token_step({0, counter});
  } else {
    // The first step runs as it is enqueued, so whatever a launch does once (module loading, attributes) is done
    // before the capture; the graph then serves steps 1..T-2.
    token_step({0, counter});
    StepGraph graph(s);
    graph.capture([&] { token_step({0, counter}); });
    for (int64_t i = 1; i + 1 < Tn; ++i) graph.launch();
  }

  order_kernel<T><<<blocks_for(B * Tn * D, 256), 256, 0, s>>>(x, xs, B, Tn, D, opt.flip);
  cuda::check_launch("blockReverse (order back)");
}

// blockReverse(x[B,T,D] (in place, natural token order), weights, options)
TF_OP(blockReverse) {
  const BlockReverseArgs args = parse_block_reverse(info);
  if (args.B * args.Tn * args.D == 0) return info.Env().Undefined();
  const int32_t* labels = args.labels ? args.labels->data<int32_t>() : nullptr;
  dispatch_float(args.x->dtype(), [&]<typename T>() {
    if constexpr (std::is_same_v<T, float>) {
      if (args.opt.kv_cache == Precision::BF16) return block_reverse<T, Bf16>(args.x->data<T>(), args.B, args.Tn, args.D, args.w, labels, args.opt);
    }
    block_reverse<T, T>(args.x->data<T>(), args.B, args.Tn, args.D, args.w, labels, args.opt);
  });
  return info.Env().Undefined();
}

}  // namespace

void register_reverse(Napi::Env env, Napi::Object ops) { TF_REVERSE_OPS(TF_EXPORT_OP) }

}  // namespace tf
