// The operation table both addons export (ops): every layer file's ops, under the same names on both backends,
// so lib/ never knows which backend it drives. Each backend's addon.cc adds what differs (its thread count,
// device queries) and sets the exports.
//
// A new op touches: its layer's list below; its argument parsing in op_args.{h,cc} (shared, so both backends
// check the same things); its TF_OP in native/cpu/<layer>.cc and native/cuda/<layer>.cu; the Ops interface in
// lib/backend.ts; and a case in test/cuda-parity.test.ts (the GPU against the CPU) beside its CPU test.
#pragma once
#include <napi.h>

#include <cstdint>

// The ops of each layer, in table order. Each name is both the op's JavaScript name and the name of its TF_OP
// function in that layer's file on each backend; every layer file's register_<layer>() exports its list with
// TF_EXPORT_OP, so the two backends' tables cannot drift apart.
#define TF_ELEMENTWISE_OPS(X) X(copy) X(axpby) X(rowSumSquares) X(sumSquares) X(allFinite)
#define TF_PRIOR_OPS(X) X(varUpdate) X(mulBroadcast)
#define TF_PATCH_OPS(X) X(flipTokens) X(patchify) X(unpatchify)
#define TF_GELU_OPS(X) X(gelu) X(geluBackward)
#define TF_EMBEDDING_OPS(X) X(addPosClass) X(addPosClassBackward)
#define TF_LAYERNORM_OPS(X) X(layerNorm) X(layerNormBackward)
#define TF_LINEAR_OPS(X) X(linear) X(linearBackward)
#define TF_ATTENTION_OPS(X) X(attention) X(attentionBackward)
#define TF_FLASH_ATTENTION_OPS(X) X(flashAttention) X(flashAttentionBackward)
#define TF_COUPLING_OPS(X) X(couplingForward) X(couplingBackward)
#define TF_RNG_OPS(X) X(normal) X(uniform)
#define TF_ADAMW_OPS(X) X(adamw)
#define TF_REVERSE_OPS(X) X(blockReverse)

// Inside register_<layer>(Napi::Env env, Napi::Object ops): TF_LINEAR_OPS(TF_EXPORT_OP) exports each op by name.
#define TF_EXPORT_OP(name) export_op(env, ops, #name, name);

namespace tf {

using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);

// The table: the ops of every layer (one register_<layer> per layer file, the same files on both sides), then
// getThreads and setThreads (the backend's own), then nativeMemory and setMemoryLimit.
Napi::Object make_op_table(Napi::Env env, OpFn get_threads, OpFn set_threads);

// setThreads(n): the requested thread count, checked to be in [1, 256].
int64_t parse_set_threads(const Napi::CallbackInfo& info);

}  // namespace tf
