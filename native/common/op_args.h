// Argument unpacking and validation for every op, shared by both backends. Each parse_* function reads one op's
// arguments (in the order of the comment above it: the JavaScript call), checks shapes and dtypes, and returns
// the validated tensors, dims and options; every failure throws the tf::Error the op reports. A backend's op
// wrapper is then: parse -> dispatch on dtype -> run its kernel. The checks do not depend on the dtype, so the
// dtype dispatch (and its ERR_TARFLOW_DTYPE for int32 tensors) stays with the wrapper, after the parse.
#pragma once
#include <napi.h>

#include <cstdint>
#include <vector>

#include "bf16.h"
#include "tensor.h"

namespace tf {

// ---- elementwise ----

// copy(dst, src)
struct CopyArgs {
  Tensor *dst, *src;
};
CopyArgs parse_copy(const Napi::CallbackInfo& info);

// axpby(y, x, alpha, beta): y = alpha * x + beta * y
struct AxpbyArgs {
  Tensor *y, *x;
  double alpha, beta;
};
AxpbyArgs parse_axpby(const Napi::CallbackInfo& info);

// rowSumSquares(out[B], x[B, ...]): n is the size of one row of x.
struct RowSumSquaresArgs {
  Tensor *out, *x;
  int64_t B, n;
};
RowSumSquaresArgs parse_row_sum_squares(const Napi::CallbackInfo& info);

// sumSquares(x) and allFinite(x): one tensor in, one value back.
struct ReduceArgs {
  Tensor* x;
};
ReduceArgs parse_sum_squares(const Napi::CallbackInfo& info);
ReduceArgs parse_all_finite(const Napi::CallbackInfo& info);

// ---- prior ----

// mulBroadcast(x[B, ...], s[...]): n is the size of s, which tiles x.
struct MulBroadcastArgs {
  Tensor *x, *s;
  int64_t n;
};
MulBroadcastArgs parse_mul_broadcast(const Napi::CallbackInfo& info);

// varUpdate(var[T,D], z[B,T,D], rate): n is the size of var.
struct VarUpdateArgs {
  Tensor *var, *z;
  double rate;
  int64_t B, n;
};
VarUpdateArgs parse_var_update(const Napi::CallbackInfo& info);

// ---- patches ----

// flipTokens(y[B,T,D], x[B,T,D]); y and x are different tensors.
struct FlipTokensArgs {
  Tensor *y, *x;
  int64_t B, T, D;
};
FlipTokensArgs parse_flip_tokens(const Napi::CallbackInfo& info);

// patchify(out=patches[B,T,D], x=image[B,C,S,S], P) and unpatchify(out=image, x=patches, P): the same pair of
// tensors, named by role.
struct PatchArgs {
  Tensor *patches, *image;
  int64_t B, C, S, P;
};
PatchArgs parse_patchify(const Napi::CallbackInfo& info);
PatchArgs parse_unpatchify(const Napi::CallbackInfo& info);

// ---- gelu ----

// gelu(y, x)
struct GeluArgs {
  Tensor *y, *x;
};
GeluArgs parse_gelu(const Napi::CallbackInfo& info);

// geluBackward(dx, dy, x)
struct GeluBackwardArgs {
  Tensor *dx, *dy, *x;
};
GeluBackwardArgs parse_gelu_backward(const Napi::CallbackInfo& info);

// ---- embedding ----

// addPosClass(h[B,T,W], pos[T,W], classEmbed|null, labels|null, flip). Every label is below n_cls (checked on the
// host: on the CUDA backend that is one small copy that waits for the stream).
struct AddPosClassArgs {
  Tensor *h, *pos, *cls, *labels;  // cls and labels may be null
  bool flip;
  int64_t B, Tn, W, n_cls;
};
AddPosClassArgs parse_add_pos_class(const Napi::CallbackInfo& info);

// addPosClassBackward(dpos, dclassEmbed|null, dh, labels|null, flip)
struct AddPosClassBackwardArgs {
  Tensor *dpos, *dcls, *dh, *labels;  // dcls and labels may be null
  bool flip;
  int64_t B, Tn, W, n_cls;
};
AddPosClassBackwardArgs parse_add_pos_class_backward(const Napi::CallbackInfo& info);

// ---- layernorm ----

// layerNorm(y, mean, rstd, x, weight, bias, eps): N rows of C.
struct LayerNormArgs {
  Tensor *y, *mean, *rstd, *x, *weight, *bias;
  double eps;
  int64_t N, C;
};
LayerNormArgs parse_layer_norm(const Napi::CallbackInfo& info);

// layerNormBackward(dx, dweight, dbias, dy, x, mean, rstd, weight, accumulateDx)
struct LayerNormBackwardArgs {
  Tensor *dx, *dweight, *dbias, *dy, *x, *mean, *rstd, *weight;
  bool accumulate;
  int64_t N, C;
};
LayerNormBackwardArgs parse_layer_norm_backward(const Napi::CallbackInfo& info);

// ---- linear ----

// x is [M, K] (any leading dims), W is [N, K], y is [M, N].
struct LinearDims {
  int64_t M, N, K;
};

// The matrix ops (linear, attention and their backwards) end in an optional options object:
//   {precision: 'fp32' (default) | 'bf16'}, and for linear also {gelu: Tensor}.
// 'bf16' (float32 tensors only) rounds the inputs of every matrix product to bf16 and keeps fp32 sums (see bf16.h).
// gelu: y's shape; receives GELU(y) as well, so the MLP's activation is the first GEMM's epilogue.

// linear(y, x, weight, bias|null, accumulate, options?)
struct LinearArgs {
  Tensor *y, *x, *weight, *bias;  // bias may be null
  bool accumulate;
  LinearDims d;
  Precision precision;
  Tensor* gelu;  // may be null
};
LinearArgs parse_linear(const Napi::CallbackInfo& info);

// linearBackward(dx|null, dweight|null, dbias|null, dy, x, weight, accumulateDx, options?)
struct LinearBackwardArgs {
  Tensor *dx, *dweight, *dbias, *dy, *x, *weight;  // dx, dweight and dbias may be null
  bool accumulate;
  LinearDims d;
  Precision precision;
  Tensor* gelu_input;  // may be null: dx = (dy W) * GELU'(gelu_input)
};
LinearBackwardArgs parse_linear_backward(const Napi::CallbackInfo& info);

// ---- attention ----

// qkv is [B, T, 3W]; H heads of hd = W / H columns.
struct AttnDims {
  int64_t B, T, W, H, hd;
};

// attention(out[B,T,W], probs[B,H,T,T], qkv[B,T,3W], heads, temp, options?): with bf16, both products
// (q k^T and P v) take bf16 inputs; the softmax stays fp32.
struct AttentionArgs {
  Tensor *out, *probs, *qkv;
  double temp;
  AttnDims d;
  Precision precision;
};
AttentionArgs parse_attention(const Napi::CallbackInfo& info);

// attentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, probs, heads, temp, options?)
struct AttentionBackwardArgs {
  Tensor *dqkv, *dout, *qkv, *probs;
  double temp;
  AttnDims d;
  Precision precision;
};
AttentionBackwardArgs parse_attention_backward(const Napi::CallbackInfo& info);

// The fused form (FlashAttention-2): the same out, gradients and options as attention/attentionBackward, but the
// forward saves only each row's log-sum-exp of the logits, lse [B, H, T], and the backward recomputes P from it.
// flashAttention(out[B,T,W], lse[B,H,T], qkv[B,T,3W], heads, temp, options?)
struct FlashAttentionArgs {
  Tensor *out, *lse, *qkv;
  double temp;
  AttnDims d;
  Precision precision;
};
FlashAttentionArgs parse_flash_attention(const Napi::CallbackInfo& info);

// flashAttentionBackward(dqkv[B,T,3W], dout[B,T,W], qkv, out, lse, heads, temp, options?): out and lse are the
// forward's.
struct FlashAttentionBackwardArgs {
  Tensor *dqkv, *dout, *qkv, *out, *lse;
  double temp;
  AttnDims d;
  Precision precision;
};
FlashAttentionBackwardArgs parse_flash_attention_backward(const Napi::CallbackInfo& info);

// ---- coupling ----

// u is [B, T, D]; o is [B, T, Do] with Do = 2D (NVP: scale and shift) or D (VP: shift only).
struct CouplingDims {
  int64_t B, T, D, Do;
};

// couplingForward(v, logdet[B], u, o, nvp, accumulateLogdet)
struct CouplingForwardArgs {
  Tensor *v, *logdet, *u, *o;
  bool nvp, accumulate;
  CouplingDims d;
};
CouplingForwardArgs parse_coupling_forward(const Napi::CallbackInfo& info);

// couplingBackward(du, do, dv, u, o, nvp, logdetGrad)
struct CouplingBackwardArgs {
  Tensor *du, *dout, *dv, *u, *o;
  bool nvp;
  double logdet_grad;
  CouplingDims d;
};
CouplingBackwardArgs parse_coupling_backward(const Napi::CallbackInfo& info);

// ---- adamw ----

// adamw(params, grads, m, v, {lr, beta1, beta2, eps, weightDecay, step})  (step counts from 1)
struct AdamWArgs {
  Tensor *params, *grads, *m, *v;
  double lr, beta1, beta2, eps, weight_decay, step;
};
AdamWArgs parse_adamw(const Napi::CallbackInfo& info);

// ---- rng ----

// normal(out, seed, stream, offset) and uniform(out, seed, stream, offset)
struct RandomArgs {
  Tensor* out;
  uint64_t seed, stream, offset;
};
RandomArgs parse_random(const Napi::CallbackInfo& info);

// ---- reverse ----

struct LayerWeights {
  Tensor *ln1w, *ln1b, *qkvw, *qkvb, *projw, *projb, *ln2w, *ln2b, *fc1w, *fc1b, *fc2w, *fc2b;
};

struct BlockWeights {
  Tensor *inw, *inb, *pos, *cls, *outw, *outb;  // cls may be null
  std::vector<LayerWeights> layers;
};

struct ReverseOptions {
  bool flip = false, nvp = true, guide_a = true, guide_b = true, annealed = false;
  int64_t heads = 1;
  double guidance = 0, temp_uncond = 1, eps = 1e-5;
  Precision precision = Precision::F32;  // of the layers' matrix products, as in training
  Precision kv_cache = Precision::F32;   // storage of the cached keys and values (BF16: half the bytes per step)
};

// blockReverse(x[B,T,D] (in place, natural token order), weights, options). W is the block's width; every label
// is below the class count (checked on the host, as for addPosClass).
struct BlockReverseArgs {
  Tensor* x;
  BlockWeights w;
  ReverseOptions opt;
  Tensor* labels;  // may be null
  int64_t B, Tn, D, W;
};
BlockReverseArgs parse_block_reverse(const Napi::CallbackInfo& info);

}  // namespace tf
