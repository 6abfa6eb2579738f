// The argument checks of every op (see op_args.h). The order of the checks is part of the behaviour: when several
// arguments are wrong, the first failing check names the error, on both backends alike.
#include "op_args.h"

#include <cmath>
#include <string>

#ifdef TF_BACKEND_CUDA
#include "device_memory.h"
#endif

namespace tf {
namespace {

// Throws bad_label(b, y) for the first label y >= n_cls (negative labels mean "no label"). Usually the labels'
// buffer bound (Storage::int32_upper) already proves them in range; only otherwise are they read, which on the CUDA
// backend copies them to the host and waits for the stream.
template <typename F>
void check_labels_below(const Tensor* labels, int64_t B, int64_t n_cls, F&& bad_label) {
  if (labels->int32_upper() < n_cls) return;
#ifdef TF_BACKEND_CUDA
  std::vector<int32_t> host(static_cast<size_t>(B));
  mem::to_host(host.data(), labels->data<int32_t>(), B * sizeof(int32_t));
  const int32_t* y = host.data();
#else
  const int32_t* y = labels->data<int32_t>();
#endif
  for (int64_t b = 0; b < B; ++b)
    if (y[b] >= n_cls) bad_label(b, y[b]);
}

void check_patch_shapes(Tensor* patches, Tensor* image, int64_t P) {
  if (image->ndim() != 4 || image->dim(2) != image->dim(3))
    throw shape_error("image tensor must be [B, C, S, S], got " + image->describe());
  int64_t B = image->dim(0), C = image->dim(1), S = image->dim(2);
  if (C < 1 || S < 1) throw shape_error("image tensor needs at least one channel and one pixel ([B, C, S, S], C, S >= 1), got " + image->describe());
  if (P <= 0 || S % P) throw shape_error("patch size " + std::to_string(P) + " does not divide image size " + std::to_string(S));
  expect_shape(patches, {B, (S / P) * (S / P), C * P * P}, "patches");
  expect_same_dtype(patches, image, "patches", "image");
}

PatchArgs patch_args(Tensor* patches, Tensor* image, int64_t P) {
  check_patch_shapes(patches, image, P);
  return {patches, image, image->dim(0), image->dim(1), image->dim(2), P};
}

// classEmbed [numClasses, 1, W] beside a width-W tensor `like`: returns numClasses.
static int64_t class_count(Tensor* cls, int64_t W, Tensor* like, const char* like_name) {
  if (cls->numel() % W || cls->numel() == 0) throw shape_error("classEmbed must be [numClasses, 1, W], got " + cls->describe());
  expect_same_dtype(cls, like, "classEmbed", like_name);
  return cls->numel() / W;
}

// Shapes of the embedding ops, and that every label is below the class count.
void check_embed_args(Tensor* h, Tensor* pos, Tensor* cls, Tensor* labels, int64_t& B, int64_t& Tn, int64_t& W, int64_t& n_cls) {
  if (h->ndim() != 3) throw shape_error("h must be [B, T, W], got " + h->describe());
  B = h->dim(0), Tn = h->dim(1), W = h->dim(2);
  if (W < 1) throw shape_error("h must have a width of at least 1 ([B, T, W]), got " + h->describe());
  expect_shape(pos, {Tn, W}, "pos");
  expect_same_dtype(h, pos, "h", "pos");
  n_cls = cls ? class_count(cls, W, h, "h") : 0;
  if (labels) {
    expect_dtype(labels, DType::I32, "labels");
    expect_numel(labels, B, "labels");
    check_labels_below(labels, B, n_cls, [&](int64_t b, int32_t y) {
      throw Error("ERR_TARFLOW_INVALID_ARGUMENT", "label " + std::to_string(y) + " of sample " + std::to_string(b) +
                                                                     " is out of range: the model has " + std::to_string(n_cls) + " classes (use -1 for no label)");
    });
  }
}

LinearDims linear_dims(Tensor* x, Tensor* w, const char* xname) {
  if (w->ndim() != 2) throw shape_error("weight must be [out, in], got " + w->describe());
  int64_t N = w->dim(0), K = w->dim(1);
  if (K < 1) throw shape_error("weight needs at least one input column, got " + w->describe());
  if (x->ndim() < 1 || x->dim(-1) != K)
    throw shape_error(std::string(xname) + " must end in the weight's input size " + std::to_string(K) + ", got " + x->describe());
  return {x->numel() / K, N, K};
}

// A precision option ('fp32' when absent, or 'bf16', which only float32 tensors take).
Precision precision_prop(const Napi::Object& obj, const char* key, const char* op, DType dtype) {
  Napi::Value p = obj.Get(key);
  if (p.IsUndefined()) return Precision::F32;
  const std::string name = p.IsString() ? p.As<Napi::String>().Utf8Value() : "";
  if (name != "bf16" && name != "fp32") throw arg_error(std::string(op) + ": " + key + " must be 'fp32' or 'bf16'");
  if (name == "bf16" && dtype != DType::F32)
    throw arg_error(std::string(op) + ": " + key + " 'bf16' needs float32 tensors, got " + dtype_name(dtype));
  return name == "bf16" ? Precision::BF16 : Precision::F32;
}

// The options object of a matrix op (see op_args.h), argument i; absent means fp32 and no GELU output.
struct MatmulOptions {
  Precision precision = Precision::F32;
  Tensor* gelu = nullptr;
  Tensor* gelu_input = nullptr;
};
MatmulOptions matmul_options(const Napi::CallbackInfo& info, size_t i, const char* op, DType dtype, bool allow_gelu,
                             bool allow_gelu_input = false) {
  MatmulOptions o;
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return o;
  if (!info[i].IsObject()) throw arg_error(std::string(op) + ": options must be an object like {precision: 'bf16'}");
  Napi::Object obj = info[i].As<Napi::Object>();
  o.precision = precision_prop(obj, "precision", op, dtype);
  if (allow_gelu) o.gelu = tensor_prop(obj, "gelu", true);
  else if (!obj.Get("gelu").IsUndefined()) throw arg_error(std::string(op) + ": has no gelu option");
  if (allow_gelu_input) o.gelu_input = tensor_prop(obj, "geluInput", true);
  else if (!obj.Get("geluInput").IsUndefined()) throw arg_error(std::string(op) + ": has no geluInput option");
  return o;
}

AttnDims attn_dims(Tensor* qkv, int64_t heads) {
  if (qkv->ndim() != 3 || qkv->dim(2) % 3) throw shape_error("qkv must be [B, T, 3W], got " + qkv->describe());
  int64_t W = qkv->dim(2) / 3;
  if (W < 1 || qkv->dim(1) < 1) throw shape_error("qkv must have at least one token and a width of at least 1 ([B, T, 3W]), got " + qkv->describe());
  if (heads <= 0 || W % heads) throw arg_error("heads (" + std::to_string(heads) + ") must divide the width " + std::to_string(W));
  return {qkv->dim(0), qkv->dim(1), W, heads, W / heads};
}

CouplingDims coupling_dims(Tensor* u, Tensor* o, bool nvp) {
  if (u->ndim() != 3) throw shape_error("u must be [B, T, D], got " + u->describe());
  int64_t B = u->dim(0), T = u->dim(1), D = u->dim(2), Do = nvp ? 2 * D : D;
  // The log-determinant is a mean over T x D, and the backward zeroes the last token's row: both need a token.
  if (T < 1 || D < 1) throw shape_error("u must have at least one token of at least one value ([B, T, D], T, D >= 1), got " + u->describe());
  expect_shape(o, {B, T, Do}, nvp ? "o (NVP: 2D outputs per token)" : "o (VP: D outputs per token)");
  expect_same_dtype(u, o, "u", "o");
  return {B, T, D, Do};
}

uint64_t u64_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double d = number_arg(info, i, name);
  if (!(d >= 0) || d > 9007199254740991.0 || d != double(uint64_t(d)))
    throw arg_error(std::string(name) + " must be an integer in [0, 2^53), got " + std::to_string(d));
  return uint64_t(d);
}

BlockWeights read_weights(const Napi::Object& o) {
  BlockWeights w;
  w.inw = tensor_prop(o, "projInWeight");
  w.inb = tensor_prop(o, "projInBias");
  w.pos = tensor_prop(o, "pos");
  w.cls = tensor_prop(o, "classEmbed", true);
  w.outw = tensor_prop(o, "projOutWeight");
  w.outb = tensor_prop(o, "projOutBias");
  Napi::Value lv = o.Get("layers");
  if (!lv.IsArray()) throw arg_error("blockReverse: weights.layers must be an array");
  Napi::Array la = lv.As<Napi::Array>();
  for (uint32_t i = 0; i < la.Length(); ++i) {
    Napi::Value e = la.Get(i);
    if (!e.IsObject()) throw arg_error("blockReverse: weights.layers[" + std::to_string(i) + "] must be an object");
    Napi::Object l = e.As<Napi::Object>();
    w.layers.push_back({tensor_prop(l, "ln1Weight"), tensor_prop(l, "ln1Bias"), tensor_prop(l, "qkvWeight"), tensor_prop(l, "qkvBias"),
                        tensor_prop(l, "projWeight"), tensor_prop(l, "projBias"), tensor_prop(l, "ln2Weight"), tensor_prop(l, "ln2Bias"),
                        tensor_prop(l, "fc1Weight"), tensor_prop(l, "fc1Bias"), tensor_prop(l, "fc2Weight"), tensor_prop(l, "fc2Bias")});
  }
  return w;
}

bool opt_bool(const Napi::Object& o, const char* k, bool dflt) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return dflt;
  if (!v.IsBoolean()) throw arg_error(std::string("blockReverse: option '") + k + "' must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

double opt_num(const Napi::Object& o, const char* k, double dflt) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return dflt;
  if (!v.IsNumber()) throw arg_error(std::string("blockReverse: option '") + k + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

}  // namespace

// ---- elementwise ----

CopyArgs parse_copy(const Napi::CallbackInfo& info) {
  Tensor* dst = tensor_arg(info, 0, "dst");
  Tensor* src = tensor_arg(info, 1, "src");
  expect_same_dtype(dst, src, "dst", "src");
  expect_numel(dst, src->numel(), "dst");
  if (dst->overlaps(src) && !dst->same_elements(src)) throw arg_error("copy: dst and src are overlapping views of one buffer");
  dst->note_int32_written_from(src);
  return {dst, src};
}

AxpbyArgs parse_axpby(const Napi::CallbackInfo& info) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  double alpha = number_arg(info, 2, "alpha"), beta = number_arg(info, 3, "beta");
  expect_same_dtype(y, x, "y", "x");
  expect_numel(y, x->numel(), "y");
  return {y, x, alpha, beta};
}

RowSumSquaresArgs parse_row_sum_squares(const Napi::CallbackInfo& info) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(out, x, "out", "x");
  int64_t B = x->dim(0), n = x->numel() / (B ? B : 1);
  expect_numel(out, B, "out");
  return {out, x, B, n};
}

ReduceArgs parse_sum_squares(const Napi::CallbackInfo& info) { return {tensor_arg(info, 0, "x")}; }
ReduceArgs parse_all_finite(const Napi::CallbackInfo& info) { return {tensor_arg(info, 0, "x")}; }

// ---- prior ----

MulBroadcastArgs parse_mul_broadcast(const Napi::CallbackInfo& info) {
  Tensor* x = tensor_arg(info, 0, "x");
  Tensor* s = tensor_arg(info, 1, "s");
  expect_same_dtype(x, s, "x", "s");
  int64_t n = s->numel();
  if (n == 0 || x->numel() % n) throw shape_error("mulBroadcast: " + s->describe() + " does not tile " + x->describe());
  return {x, s, n};
}

VarUpdateArgs parse_var_update(const Napi::CallbackInfo& info) {
  Tensor* var = tensor_arg(info, 0, "var");
  Tensor* z = tensor_arg(info, 1, "z");
  double rate = number_arg(info, 2, "rate");
  expect_same_dtype(var, z, "var", "z");
  int64_t B = z->dim(0), n = var->numel();
  // Compared by division: B * n can overflow for an empty z with huge other dims.
  if (B > 0 && (z->numel() % B || z->numel() / B != n))
    throw shape_error("z must be [B, ...var's shape], got " + z->describe() + " for var " + var->describe());
  return {var, z, rate, B, n};
}

// ---- patches ----

FlipTokensArgs parse_flip_tokens(const Napi::CallbackInfo& info) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(y, x, "y", "x");
  if (x->ndim() != 3) throw shape_error("flipTokens: x must be [B, T, D], got " + x->describe());
  expect_shape(y, x->shape(), "y");
  if (x->dim(2) < 1) throw shape_error("flipTokens: tokens need at least one value ([B, T, D], D >= 1), got " + x->describe());
  if (y->overlaps(x)) throw arg_error("flipTokens: y and x must not share elements (it reads token T-1-t while writing t)");
  y->note_int32_written_from(x);
  return {y, x, x->dim(0), x->dim(1), x->dim(2)};
}

PatchArgs parse_patchify(const Napi::CallbackInfo& info) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  int64_t P = int_arg(info, 2, "patchSize");
  return patch_args(out, x, P);
}

PatchArgs parse_unpatchify(const Napi::CallbackInfo& info) {
  Tensor* out = tensor_arg(info, 0, "out");
  Tensor* x = tensor_arg(info, 1, "x");
  int64_t P = int_arg(info, 2, "patchSize");
  return patch_args(x, out, P);
}

// ---- gelu ----

GeluArgs parse_gelu(const Napi::CallbackInfo& info) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* x = tensor_arg(info, 1, "x");
  expect_same_dtype(y, x, "y", "x");
  expect_numel(y, x->numel(), "y");
  return {y, x};
}

GeluBackwardArgs parse_gelu_backward(const Napi::CallbackInfo& info) {
  Tensor* dx = tensor_arg(info, 0, "dx");
  Tensor* dy = tensor_arg(info, 1, "dy");
  Tensor* x = tensor_arg(info, 2, "x");
  expect_same_dtype(dx, x, "dx", "x");
  expect_same_dtype(dy, x, "dy", "x");
  expect_numel(dx, x->numel(), "dx");
  expect_numel(dy, x->numel(), "dy");
  return {dx, dy, x};
}

// ---- embedding ----

AddPosClassArgs parse_add_pos_class(const Napi::CallbackInfo& info) {
  AddPosClassArgs a;
  a.h = tensor_arg(info, 0, "h");
  a.pos = tensor_arg(info, 1, "pos");
  a.cls = optional_tensor_arg(info, 2, "classEmbed");
  a.labels = optional_tensor_arg(info, 3, "labels");
  a.flip = bool_arg(info, 4, "flip");
  check_embed_args(a.h, a.pos, a.cls, a.labels, a.B, a.Tn, a.W, a.n_cls);
  return a;
}

AddPosClassBackwardArgs parse_add_pos_class_backward(const Napi::CallbackInfo& info) {
  AddPosClassBackwardArgs a;
  a.dpos = tensor_arg(info, 0, "dpos");
  a.dcls = optional_tensor_arg(info, 1, "dclassEmbed");
  a.dh = tensor_arg(info, 2, "dh");
  a.labels = optional_tensor_arg(info, 3, "labels");
  a.flip = bool_arg(info, 4, "flip");
  check_embed_args(a.dh, a.dpos, a.dcls, a.labels, a.B, a.Tn, a.W, a.n_cls);
  return a;
}

// ---- layernorm ----

// The normalised (last) dimension; rows are counted by dividing by it, so an empty one is refused first.
static int64_t last_dim(const Tensor* x, const char* name) {
  if (x->ndim() < 1 || x->dim(-1) < 1) throw shape_error(std::string(name) + " needs a non-empty last dimension, got " + x->describe());
  return x->dim(-1);
}

LayerNormArgs parse_layer_norm(const Napi::CallbackInfo& info) {
  Tensor* y = tensor_arg(info, 0, "y");
  Tensor* mean = tensor_arg(info, 1, "mean");
  Tensor* rstd = tensor_arg(info, 2, "rstd");
  Tensor* x = tensor_arg(info, 3, "x");
  Tensor* w = tensor_arg(info, 4, "weight");
  Tensor* bias = tensor_arg(info, 5, "bias");
  double eps = number_arg(info, 6, "eps");
  int64_t C = last_dim(x, "layerNorm: x"), N = x->numel() / C;
  expect_numel(y, x->numel(), "y");
  expect_numel(mean, N, "mean");
  expect_numel(rstd, N, "rstd");
  expect_numel(w, C, "weight");
  expect_numel(bias, C, "bias");
  for (Tensor* t : {y, mean, rstd, w, bias}) expect_same_dtype(t, x, "argument", "x");
  return {y, mean, rstd, x, w, bias, eps, N, C};
}

LayerNormBackwardArgs parse_layer_norm_backward(const Napi::CallbackInfo& info) {
  Tensor* dx = tensor_arg(info, 0, "dx");
  Tensor* dw = tensor_arg(info, 1, "dweight");
  Tensor* db = tensor_arg(info, 2, "dbias");
  Tensor* dy = tensor_arg(info, 3, "dy");
  Tensor* x = tensor_arg(info, 4, "x");
  Tensor* mean = tensor_arg(info, 5, "mean");
  Tensor* rstd = tensor_arg(info, 6, "rstd");
  Tensor* w = tensor_arg(info, 7, "weight");
  bool accumulate = bool_arg(info, 8, "accumulateDx");
  int64_t C = last_dim(x, "layerNormBackward: x"), N = x->numel() / C;
  expect_numel(dx, x->numel(), "dx");
  expect_numel(dy, x->numel(), "dy");
  expect_numel(dw, C, "dweight");
  expect_numel(db, C, "dbias");
  expect_numel(w, C, "weight");
  expect_numel(mean, N, "mean");
  expect_numel(rstd, N, "rstd");
  for (Tensor* t : {dx, dw, db, dy, mean, rstd, w}) expect_same_dtype(t, x, "argument", "x");
  return {dx, dw, db, dy, x, mean, rstd, w, accumulate, N, C};
}

// ---- linear ----

LinearArgs parse_linear(const Napi::CallbackInfo& info) {
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
  MatmulOptions o = matmul_options(info, 5, "linear", w->dtype(), true);
  if (o.gelu) {
    expect_shape(o.gelu, y->shape(), "gelu");
    expect_same_dtype(o.gelu, w, "gelu", "weight");
  }
  return {y, x, w, b, accumulate, d, o.precision, o.gelu};
}

LinearBackwardArgs parse_linear_backward(const Napi::CallbackInfo& info) {
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
  const MatmulOptions o = matmul_options(info, 7, "linearBackward", w->dtype(), false, true);
  if (o.gelu_input) {
    if (!dx) throw arg_error("linearBackward: geluInput needs dx (it applies GELU's derivative to dx)");
    if (accumulate) throw arg_error("linearBackward: geluInput needs accumulateDx false (the derivative applies to this product alone)");
    expect_shape(o.gelu_input, dx->shape(), "geluInput");
    expect_same_dtype(o.gelu_input, w, "geluInput", "weight");
  }
  return {dx, dw, db, dy, x, w, accumulate, d, o.precision, o.gelu_input};
}

// ---- attention ----

namespace {

// The layout all four attention ops share: their tensors first (one of them qkv, which fixes the dims), then
// heads, temp and the options; every tensor has qkv's dtype. `t` holds the tensors in argument order.
struct AttnCall {
  std::vector<Tensor*> t;
  double temp;
  AttnDims d;
  Precision precision;
};

AttnCall parse_attn_call(const Napi::CallbackInfo& info, std::initializer_list<const char*> names, const char* op) {
  AttnCall c;
  Tensor* qkv = nullptr;
  for (const char* name : names) {
    c.t.push_back(tensor_arg(info, static_cast<int>(c.t.size()), name));
    if (std::string(name) == "qkv") qkv = c.t.back();
  }
  const int n = static_cast<int>(c.t.size());
  int64_t heads = int_arg(info, n, "heads");
  c.temp = number_arg(info, n + 1, "temp");
  // The scores are scaled by 1/(sqrt(hd) temp): 0, a negative or a non-finite temperature has no meaning there.
  if (!(c.temp > 0) || !std::isfinite(c.temp))
    throw arg_error(std::string(op) + ": temp (the attention temperature) must be a finite number above 0, got " + std::to_string(c.temp));
  c.d = attn_dims(qkv, heads);
  auto name = names.begin();
  for (Tensor* x : c.t) expect_same_dtype(x, qkv, *name++, "qkv");
  c.precision = matmul_options(info, n + 2, op, qkv->dtype(), false).precision;
  return c;
}

}  // namespace

AttentionArgs parse_attention(const Napi::CallbackInfo& info) {
  AttnCall c = parse_attn_call(info, {"out", "probs", "qkv"}, "attention");
  const AttnDims& d = c.d;
  expect_shape(c.t[0], {d.B, d.T, d.W}, "out");
  expect_shape(c.t[1], {d.B, d.H, d.T, d.T}, "probs");
  return {c.t[0], c.t[1], c.t[2], c.temp, d, c.precision};
}

AttentionBackwardArgs parse_attention_backward(const Napi::CallbackInfo& info) {
  AttnCall c = parse_attn_call(info, {"dqkv", "dout", "qkv", "probs"}, "attentionBackward");
  const AttnDims& d = c.d;
  expect_shape(c.t[0], c.t[2]->shape(), "dqkv");
  expect_shape(c.t[1], {d.B, d.T, d.W}, "dout");
  expect_shape(c.t[3], {d.B, d.H, d.T, d.T}, "probs");
  return {c.t[0], c.t[1], c.t[2], c.t[3], c.temp, d, c.precision};
}

FlashAttentionArgs parse_flash_attention(const Napi::CallbackInfo& info) {
  AttnCall c = parse_attn_call(info, {"out", "lse", "qkv"}, "flashAttention");
  const AttnDims& d = c.d;
  expect_shape(c.t[0], {d.B, d.T, d.W}, "out");
  expect_shape(c.t[1], {d.B, d.H, d.T}, "lse");
  return {c.t[0], c.t[1], c.t[2], c.temp, d, c.precision};
}

FlashAttentionBackwardArgs parse_flash_attention_backward(const Napi::CallbackInfo& info) {
  AttnCall c = parse_attn_call(info, {"dqkv", "dout", "qkv", "out", "lse"}, "flashAttentionBackward");
  const AttnDims& d = c.d;
  expect_shape(c.t[0], c.t[2]->shape(), "dqkv");
  expect_shape(c.t[1], {d.B, d.T, d.W}, "dout");
  expect_shape(c.t[3], {d.B, d.T, d.W}, "out");
  expect_shape(c.t[4], {d.B, d.H, d.T}, "lse");
  return {c.t[0], c.t[1], c.t[2], c.t[3], c.t[4], c.temp, d, c.precision};
}

// ---- coupling ----

CouplingForwardArgs parse_coupling_forward(const Napi::CallbackInfo& info) {
  Tensor* v = tensor_arg(info, 0, "v");
  Tensor* logdet = tensor_arg(info, 1, "logdet");
  Tensor* u = tensor_arg(info, 2, "u");
  Tensor* o = tensor_arg(info, 3, "o");
  bool nvp = bool_arg(info, 4, "nvp");
  bool accumulate = bool_arg(info, 5, "accumulateLogdet");
  CouplingDims d = coupling_dims(u, o, nvp);
  expect_shape(v, u->shape(), "v");
  expect_numel(logdet, d.B, "logdet");
  expect_same_dtype(v, u, "v", "u");
  expect_same_dtype(logdet, u, "logdet", "u");
  // Each element reads o's row before it; only u itself may be overwritten in place.
  if (v->overlaps(o) || (v->overlaps(u) && !v->same_elements(u)))
    throw arg_error("couplingForward: v must not share elements with o, or with u unless it is u itself");
  return {v, logdet, u, o, nvp, accumulate, d};
}

CouplingBackwardArgs parse_coupling_backward(const Napi::CallbackInfo& info) {
  Tensor* du = tensor_arg(info, 0, "du");
  Tensor* dout = tensor_arg(info, 1, "do");
  Tensor* dv = tensor_arg(info, 2, "dv");
  Tensor* u = tensor_arg(info, 3, "u");
  Tensor* o = tensor_arg(info, 4, "o");
  bool nvp = bool_arg(info, 5, "nvp");
  double logdet_grad = number_arg(info, 6, "logdetGrad");
  CouplingDims d = coupling_dims(u, o, nvp);
  expect_shape(du, u->shape(), "du");
  expect_shape(dv, u->shape(), "dv");
  expect_shape(dout, o->shape(), "do");
  for (Tensor* t : {du, dout, dv}) expect_same_dtype(t, u, "gradient", "u");
  // The GPU writes du and do while other threads still read u, o and dv: only dv itself may become du.
  if (du->overlaps(u) || du->overlaps(o) || du->overlaps(dout) || (du->overlaps(dv) && !du->same_elements(dv)))
    throw arg_error("couplingBackward: du must not share elements with u, o or do, or with dv unless it is dv itself");
  if (dout->overlaps(u) || dout->overlaps(o) || dout->overlaps(dv))
    throw arg_error("couplingBackward: do must not share elements with u, o or dv");
  return {du, dout, dv, u, o, nvp, logdet_grad, d};
}

// ---- adamw ----

AdamWArgs parse_adamw(const Napi::CallbackInfo& info) {
  Tensor* p = tensor_arg(info, 0, "params");
  Tensor* g = tensor_arg(info, 1, "grads");
  Tensor* m = tensor_arg(info, 2, "m");
  Tensor* v = tensor_arg(info, 3, "v");
  if (info.Length() < 5 || !info[4].IsObject()) throw arg_error("adamw: options {lr, beta1, beta2, eps, weightDecay, step} are required");
  Napi::Object o = info[4].As<Napi::Object>();
  auto num = [&](const char* k) {
    Napi::Value x = o.Get(k);
    if (!x.IsNumber()) throw arg_error(std::string("adamw: option '") + k + "' must be a number");
    return x.As<Napi::Number>().DoubleValue();
  };
  double lr = num("lr"), b1 = num("beta1"), b2 = num("beta2"), eps = num("eps"), wd = num("weightDecay"), step = num("step");
  if (!(step >= 1)) throw arg_error("adamw: step counts from 1, got " + std::to_string(step));
  for (Tensor* t : {g, m, v}) {
    expect_same_dtype(t, p, "optimizer buffer", "params");
    expect_numel(t, p->numel(), "optimizer buffer");
  }
  return {p, g, m, v, lr, b1, b2, eps, wd, step};
}

// ---- rng ----

RandomArgs parse_random(const Napi::CallbackInfo& info) {
  Tensor* out = tensor_arg(info, 0, "out");
  uint64_t seed = u64_arg(info, 1, "seed"), stream = u64_arg(info, 2, "stream"), offset = u64_arg(info, 3, "offset");
  return {out, seed, stream, offset};
}

// ---- reverse ----

BlockReverseArgs parse_block_reverse(const Napi::CallbackInfo& info) {
  Tensor* x = tensor_arg(info, 0, "x");
  if (info.Length() < 3 || !info[1].IsObject() || !info[2].IsObject()) throw arg_error("blockReverse(x, weights, options)");
  BlockWeights w = read_weights(info[1].As<Napi::Object>());
  Napi::Object oo = info[2].As<Napi::Object>();
  ReverseOptions opt;
  opt.flip = opt_bool(oo, "flip", false);
  opt.nvp = opt_bool(oo, "nvp", true);
  opt.guide_a = opt_bool(oo, "guideA", true);
  opt.guide_b = opt_bool(oo, "guideB", true);
  opt.annealed = opt_bool(oo, "annealed", false);
  const double heads = opt_num(oo, "heads", 1);
  // Bounded only so the conversion is exact; a count that does not divide the width is refused below.
  if (!(heads >= 1 && heads <= 9007199254740991.0) || heads != std::floor(heads))
    throw arg_error("blockReverse: option 'heads' must be a whole number of at least 1, got " + std::to_string(heads));
  opt.heads = static_cast<int64_t>(heads);
  opt.guidance = opt_num(oo, "guidance", 0);
  if (!std::isfinite(opt.guidance)) throw arg_error("blockReverse: option 'guidance' must be a finite number, got " + std::to_string(opt.guidance));
  opt.temp_uncond = opt_num(oo, "tempUncond", 1);
  if (!(opt.temp_uncond > 0) || !std::isfinite(opt.temp_uncond))
    throw arg_error("blockReverse: option 'tempUncond' (the unconditional branch's attention temperature) must be a finite number above 0, got " +
                    std::to_string(opt.temp_uncond));
  opt.eps = opt_num(oo, "eps", 1e-5);
  opt.precision = precision_prop(oo, "precision", "blockReverse", x->dtype());
  opt.kv_cache = precision_prop(oo, "kvCache", "blockReverse", x->dtype());
  Tensor* labels = tensor_prop(oo, "labels", true);

  if (x->ndim() != 3) throw shape_error("blockReverse: x must be [B, T, D], got " + x->describe());
  if (w.inw->ndim() != 2) throw shape_error("blockReverse: projInWeight must be [W, D], got " + w.inw->describe());
  int64_t B = x->dim(0), Tn = x->dim(1), D = x->dim(2), W = w.inw->dim(0);
  // Its scratch is sized by B and W: with no values per token there is nothing to invert, and B could be anything.
  if (Tn < 1 || D < 1 || W < 1)
    throw shape_error("blockReverse: needs at least one token, one value per token and a width of 1 (x [B, T, D], projInWeight [W, D]), got x " +
                      x->describe() + ", projInWeight " + w.inw->describe());
  expect_shape(w.inw, {W, D}, "projInWeight");
  expect_shape(w.pos, {Tn, W}, "pos");
  expect_shape(w.outw, {opt.nvp ? 2 * D : D, W}, "projOutWeight");
  if (opt.heads <= 0 || W % opt.heads) throw arg_error("blockReverse: heads must divide the width");
  const int64_t n_cls = w.cls ? class_count(w.cls, W, x, "x") : 0;
  if (labels) {
    expect_dtype(labels, DType::I32, "labels");
    expect_numel(labels, B, "labels");
    check_labels_below(labels, B, n_cls, [&](int64_t, int32_t y) {
      throw arg_error("blockReverse: label " + std::to_string(y) + " is out of range for " + std::to_string(n_cls) + " classes");
    });
  }
  for (Tensor* t : {w.inw, w.inb, w.pos, w.outw, w.outb}) expect_same_dtype(t, x, "weight", "x");
  for (const auto& l : w.layers) {
    if (l.fc1w->ndim() != 2) throw shape_error("blockReverse: fc1Weight must be [F, W], got " + l.fc1w->describe());
    int64_t F = l.fc1w->dim(0);
    for (Tensor* t : {l.ln1w, l.ln1b, l.ln2w, l.ln2b, l.projb, l.fc2b}) expect_numel(t, W, "layer norm/bias");
    expect_shape(l.qkvw, {3 * W, W}, "qkvWeight");
    expect_numel(l.qkvb, 3 * W, "qkvBias");
    expect_shape(l.projw, {W, W}, "projWeight");
    expect_shape(l.fc1w, {F, W}, "fc1Weight");
    expect_numel(l.fc1b, F, "fc1Bias");
    expect_shape(l.fc2w, {W, F}, "fc2Weight");
    if (F != w.layers[0].fc1w->dim(0)) throw shape_error("blockReverse: every layer must have the same MLP width");
  }
  expect_numel(w.inb, W, "projInBias");
  expect_numel(w.outb, opt.nvp ? 2 * D : D, "projOutBias");
  for (const auto& l : w.layers)
    for (Tensor* t : {l.ln1w, l.ln1b, l.qkvw, l.qkvb, l.projw, l.projb, l.ln2w, l.ln2b, l.fc1w, l.fc1b, l.fc2w, l.fc2b}) expect_same_dtype(t, x, "weight", "x");
  return {x, std::move(w), opt, labels, B, Tn, D, W};
}

}  // namespace tf
