// A tensor is a handle to native memory: dtype, shape, and a view (offset + length) into shared storage.
// JavaScript holds handles, never pointers; data crosses only through toArray()/copyFrom(). Views let the
// parameters, gradients and optimizer moments each live in one contiguous buffer (one AdamW pass, one
// checkpoint copy) while every layer still sees its own named tensor.
#pragma once
#include <napi.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"

namespace tf {

enum class DType { F32, F64, I32 };

const char* dtype_name(DType d);
size_t dtype_size(DType d);

// Live native buffers, for leak tests and diagnostics.
struct StorageStats {
  int64_t buffers;
  int64_t bytes;
  int64_t handles;  // Tensor handles not yet collected by the garbage collector
  int64_t peak_bytes;  // the most live bytes since the last reset_peak_bytes()
  int64_t limit_bytes;  // allocations past this many live bytes fail (0: no limit)
};
StorageStats storage_stats();
// Starts a new peak at the present live bytes (to measure one step's high-water mark).
void reset_peak_bytes();
// Caps the live bytes of this addon's buffers (0 removes the cap): a long-running service bounds its native memory,
// and an allocation past the cap fails as out of memory would, before the system runs out.
void set_memory_limit(int64_t bytes);

// Working memory that an op allocates for itself, outside any tensor (blockReverse's KV cache and rows), counted
// like a tensor's buffer for as long as this object lives: against the memory limit, in the live bytes and in their
// peak. Construct it before the allocation it stands for; past the limit it throws ERR_TARFLOW_OUT_OF_MEMORY.
class MemoryReservation {
 public:
  MemoryReservation(size_t bytes, const std::string& what);
  ~MemoryReservation();
  MemoryReservation(const MemoryReservation&) = delete;
  MemoryReservation& operator=(const MemoryReservation&) = delete;

 private:
  size_t bytes_;
};

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  // An upper bound on every int32 value in this buffer. Buffers start zeroed, so it starts at 0; every write that can
  // put int32 values here (host copies, fill, the dtype-agnostic copy and flipTokens) raises it. A label check whose
  // class count is above the bound needs no read of the labels, which on the GPU would wait for the stream.
  std::atomic<int32_t> int32_upper{0};
  void raise_int32_upper(int32_t v) {
    int32_t cur = int32_upper.load(std::memory_order_relaxed);
    while (v > cur && !int32_upper.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
  }
  explicit Storage(size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor : public Napi::ObjectWrap<Tensor> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, DType dtype, const std::vector<int64_t>& shape,
                                  std::shared_ptr<Storage> storage, size_t offset);
  explicit Tensor(const Napi::CallbackInfo& info);
  ~Tensor() override;
  void Finalize(Napi::Env env) override;

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return numel_; }
  // Dimension i (negative: from the end). Parsers call it before they have checked the rank, so a missing dimension
  // is a shape error rather than a read past the shape.
  int64_t dim(int i) const {
    const int64_t k = i < 0 ? static_cast<int64_t>(shape_.size()) + i : i;
    if (k < 0 || k >= static_cast<int64_t>(shape_.size()))
      throw shape_error("expected a tensor with a dimension " + std::to_string(i) + ", got " + describe());
    return shape_[static_cast<size_t>(k)];
  }
  int ndim() const { return static_cast<int>(shape_.size()); }
  bool disposed() const { return !storage_; }
  // Whether the two handles share any byte of one buffer (a view and its parent, or overlapping views).
  bool overlaps(const Tensor* o) const {
    return storage_ && storage_ == o->storage_ && first_byte() < o->first_byte() + o->bytes() && o->first_byte() < first_byte() + bytes();
  }
  // Whether the two handles cover exactly the same bytes.
  bool same_elements(const Tensor* o) const {
    return storage_ && storage_ == o->storage_ && first_byte() == o->first_byte() && bytes() == o->bytes();
  }
  std::string describe() const;  // "float32[4, 16, 12]"

  // Upper bound on this tensor's int32 values (see Storage::int32_upper), and the hook for ops that write one int32
  // tensor from another.
  int32_t int32_upper() const { return storage_->int32_upper.load(std::memory_order_relaxed); }
  void note_int32_written_from(const Tensor* src) const {
    if (dtype_ == DType::I32) storage_->raise_int32_upper(src->int32_upper());
  }

  // The kernels' pointer. The null check catches a tensor disposed after its op unwrapped it (by a getter on an options
  // object that the op reads later), which would otherwise be a null dereference.
  template <typename T>
  T* data() const {
    if (!storage_) throw Error("ERR_TARFLOW_DISPOSED", "a tensor argument was disposed while the op was reading its arguments");
    return reinterpret_cast<T*>(static_cast<char*>(storage_->data) + first_byte());
  }

 private:
  // The methods and accessors live on the prototype as plain functions (not ObjectWrap members) that find their tensor
  // themselves, so that using one on an object that is not a tensor is a coded error rather than V8's "Illegal
  // invocation" or node-addon-api's bare "Invalid argument".
  template <Napi::Value (Tensor::*Member)(const Napi::CallbackInfo&)>
  static Napi::Value OnTensor(const Napi::CallbackInfo& info);
  Napi::Value GetShape(const Napi::CallbackInfo& info);
  Napi::Value GetDType(const Napi::CallbackInfo& info);
  Napi::Value GetSize(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value ToArray(const Napi::CallbackInfo& info);
  Napi::Value CopyFrom(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Fill(const Napi::CallbackInfo& info);

  void release(Napi::Env env);
  // Whether this handle spans its whole buffer, so that a write through it replaces every value.
  bool covers_storage() const { return offset_ == 0 && bytes() == storage_->bytes; }
  // This handle's span of its buffer, in bytes.
  size_t first_byte() const { return offset_ * dtype_size(dtype_); }
  size_t bytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  DType dtype_ = DType::F32;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  int64_t accounted_bytes_ = 0;  // reported to V8 so the GC feels native memory pressure
};

// Argument unpacking shared by every op: each helper names the argument in its error message.
Tensor* tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
Tensor* optional_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name);  // null/undefined -> nullptr
double number_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
Tensor* tensor_prop(const Napi::Object& obj, const char* key, bool optional = false);

// Shape and dtype checks with messages that say what was expected and what came.
void expect_dtype(const Tensor* t, DType d, const char* name);
void expect_same_dtype(const Tensor* a, const Tensor* b, const char* name_a, const char* name_b);
void expect_shape(const Tensor* t, const std::vector<int64_t>& shape, const char* name);
void expect_numel(const Tensor* t, int64_t n, const char* name);
std::string shape_string(const std::vector<int64_t>& shape);

// Calls f.template operator()<T>() with T = float or double according to the dtype.
template <typename F>
auto dispatch_float(DType d, F&& f) {
  if (d == DType::F32) return f.template operator()<float>();
  if (d == DType::F64) return f.template operator()<double>();
  throw Error("ERR_TARFLOW_DTYPE", "this operation needs float32 or float64 tensors");
}

}  // namespace tf
