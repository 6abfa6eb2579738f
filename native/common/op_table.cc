#include "op_table.h"

#include <string>

#include "op.h"

namespace tf {
void register_elementwise(Napi::Env, Napi::Object);
void register_prior(Napi::Env, Napi::Object);
void register_patches(Napi::Env, Napi::Object);
void register_gelu(Napi::Env, Napi::Object);
void register_embedding(Napi::Env, Napi::Object);
void register_layernorm(Napi::Env, Napi::Object);
void register_linear(Napi::Env, Napi::Object);
void register_attention(Napi::Env, Napi::Object);
void register_flash_attention(Napi::Env, Napi::Object);
void register_coupling(Napi::Env, Napi::Object);
void register_rng(Napi::Env, Napi::Object);
void register_adamw(Napi::Env, Napi::Object);
void register_reverse(Napi::Env, Napi::Object);

namespace {

// nativeMemory(resetPeak?) -> { buffers, bytes, handles, peakBytes, limitBytes }: live native (on CUDA: device)
// buffers, for leak tests, their high-water mark, for memory benchmarks (resetPeak starts a new mark after reading),
// and the limit set by setMemoryLimit.
TF_HOST_OP(nativeMemory) {
  const bool reset = info.Length() > 0 && !info[0].IsUndefined() && bool_arg(info, 0, "resetPeak");
  StorageStats st = storage_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("buffers", Napi::Number::New(info.Env(), static_cast<double>(st.buffers)));
  o.Set("bytes", Napi::Number::New(info.Env(), static_cast<double>(st.bytes)));
  o.Set("handles", Napi::Number::New(info.Env(), static_cast<double>(st.handles)));
  o.Set("peakBytes", Napi::Number::New(info.Env(), static_cast<double>(st.peak_bytes)));
  o.Set("limitBytes", Napi::Number::New(info.Env(), static_cast<double>(st.limit_bytes)));
  if (reset) reset_peak_bytes();
  return o;
}

// setMemoryLimit(bytes): live buffers may total at most this many bytes (0: no limit).
TF_HOST_OP(setMemoryLimit) {
  int64_t n = int_arg(info, 0, "bytes");
  if (n < 0) throw arg_error("setMemoryLimit: bytes must be 0 (no limit) or more, got " + std::to_string(n));
  set_memory_limit(n);
  return info.Env().Undefined();
}

}  // namespace

Napi::Object make_op_table(Napi::Env env, OpFn get_threads, OpFn set_threads) {
  Napi::Object ops = Napi::Object::New(env);
  for (Registrar r : {register_elementwise, register_prior, register_patches, register_gelu, register_embedding,
                      register_layernorm, register_linear, register_attention, register_flash_attention,
                      register_coupling, register_rng, register_adamw, register_reverse})
    r(env, ops);
  export_op(env, ops, "getThreads", get_threads);
  export_op(env, ops, "setThreads", set_threads);
  export_op(env, ops, "nativeMemory", nativeMemory);
  export_op(env, ops, "setMemoryLimit", setMemoryLimit);
  return ops;
}

int64_t parse_set_threads(const Napi::CallbackInfo& info) {
  int64_t n = int_arg(info, 0, "threads");
  if (n < 1 || n > 256) throw arg_error("threads must be between 1 and 256, got " + std::to_string(n));
  return n;
}

}  // namespace tf
