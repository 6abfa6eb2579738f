#include "tensor.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#ifdef TF_BACKEND_CUDA
#include "device_memory.h"
#endif

namespace tf {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I32: return "int32";
  }
  return "?";
}

size_t dtype_size(DType d) { return d == DType::F64 ? 8 : 4; }

static DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "float64") return DType::F64;
  if (s == "int32") return DType::I32;
  throw Error("ERR_TARFLOW_DTYPE", "unknown dtype '" + s + "'; use 'float32', 'float64' or 'int32'");
}

namespace {
std::atomic<int64_t> live_storages{0}, live_bytes{0}, peak_bytes{0}, limit_bytes{0};

// Counts a buffer before it is allocated, so that allocations racing on several threads cannot pass the limit
// together; a refused or failed allocation is uncounted again. Returns the live bytes with this buffer, which
// raise_peak records once the allocation has succeeded (a failed one is no high-water mark).
int64_t reserve(size_t n, const std::string& what = "a tensor") {
  int64_t now = live_bytes += static_cast<int64_t>(n);
  int64_t limit = limit_bytes.load();
  if (limit > 0 && now > limit) {
    live_bytes -= static_cast<int64_t>(n);
    throw Error("ERR_TARFLOW_OUT_OF_MEMORY", "could not allocate " + std::to_string(n) + " bytes for " + what + ": " +
                                                 std::to_string(now - static_cast<int64_t>(n)) + " bytes are in use and the memory limit is " +
                                                 std::to_string(limit) + " (setMemoryLimit or TARFLOW_MEMORY_LIMIT); reduce the batch or model size, or raise the limit");
  }
  live_storages++;
  return now;
}

void raise_peak(int64_t now) {
  int64_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
}

void count_release(size_t n) {
  live_storages--;
  live_bytes -= static_cast<int64_t>(n);
}
}  // namespace

MemoryReservation::MemoryReservation(size_t bytes, const std::string& what) : bytes_(bytes) { raise_peak(reserve(bytes, what)); }
MemoryReservation::~MemoryReservation() { count_release(bytes_); }

std::atomic<int64_t> live_handles{0};
StorageStats storage_stats() { return {live_storages.load(), live_bytes.load(), live_handles.load(), peak_bytes.load(), limit_bytes.load()}; }
void reset_peak_bytes() { peak_bytes = live_bytes.load(); }
void set_memory_limit(int64_t bytes) { limit_bytes = bytes > 0 ? bytes : 0; }

#ifdef TF_BACKEND_CUDA
// GPU memory (cudaMalloc alignment is 256 bytes), zeroed on the addon's stream.
Storage::Storage(size_t n) : bytes(n) {
  const int64_t live = reserve(n);
  try {
    data = mem::alloc_zeroed(n);
  } catch (...) {
    count_release(n);
    throw;
  }
  raise_peak(live);
}
Storage::~Storage() {
  mem::release(data);
  count_release(bytes);
}
#else
// Buffers of a page or more come straight from mmap: the kernel hands out zeroed pages lazily, and munmap returns them at
// once. Through malloc, the small allocations N-API makes between two tensors land in the freed holes and the
// heap grows without bound over create/dispose cycles. Small buffers use aligned_alloc (64 bytes: whole cache
// lines, aligned AVX-512 loads).
constexpr size_t kMmapThreshold = 4096;

Storage::Storage(size_t n) : bytes(n) {
  const int64_t live = reserve(n);
  size_t rounded = ((n ? n : 1) + 63) / 64 * 64;
  if (rounded >= kMmapThreshold) {
    void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data = p == MAP_FAILED ? nullptr : p;
    // Big activations in 2 MiB pages where the system allows it (transparent huge pages in "madvise" mode): 40% fewer
    // page faults for a one-shot `tarflow sample`, and a 2-3% faster training step from fewer TLB misses. A hint only.
    if (data && rounded >= (size_t(4) << 20)) madvise(data, rounded, MADV_HUGEPAGE);
  } else {
    data = std::aligned_alloc(64, rounded);
    if (data) std::memset(data, 0, rounded);
  }
  if (!data) {
    count_release(n);
    throw Error("ERR_TARFLOW_OUT_OF_MEMORY", "could not allocate " + std::to_string(n) + " bytes for a tensor; reduce the batch or model size");
  }
  raise_peak(live);
}
Storage::~Storage() {
  size_t rounded = ((bytes ? bytes : 1) + 63) / 64 * 64;
  if (rounded >= kMmapThreshold) munmap(data, rounded);
  else std::free(data);
  count_release(bytes);
}
#endif

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::string Tensor::describe() const { return std::string(dtype_name(dtype_)) + shape_string(shape_); }

struct TensorClass {
  Napi::FunctionReference constructor;
};

// Marker passed as the constructor's first argument when C++ builds a handle around existing storage.
struct AdoptRequest {
  DType dtype;
  std::vector<int64_t> shape;
  std::shared_ptr<Storage> storage;
  size_t offset;
};

Napi::Function Tensor::Init(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "Tensor", {});
  Napi::Object proto = cls.Get("prototype").As<Napi::Object>();
  // Configurable, as class members are: lib/backend.ts wraps them to turn native errors into TarflowErrors.
  const auto method = static_cast<napi_property_attributes>(napi_writable | napi_configurable);
  proto.DefineProperties({
      Napi::PropertyDescriptor::Function(env, proto, "toArray", &Tensor::OnTensor<&Tensor::ToArray>, method),
      Napi::PropertyDescriptor::Function(env, proto, "copyFrom", &Tensor::OnTensor<&Tensor::CopyFrom>, method),
      Napi::PropertyDescriptor::Function(env, proto, "view", &Tensor::OnTensor<&Tensor::View>, method),
      Napi::PropertyDescriptor::Function(env, proto, "fill", &Tensor::OnTensor<&Tensor::Fill>, method),
      Napi::PropertyDescriptor::Function(env, proto, "dispose", &Tensor::OnTensor<&Tensor::Dispose>, method),
      Napi::PropertyDescriptor::Accessor<&Tensor::OnTensor<&Tensor::GetShape>>("shape", napi_configurable),
      Napi::PropertyDescriptor::Accessor<&Tensor::OnTensor<&Tensor::GetDType>>("dtype", napi_configurable),
      Napi::PropertyDescriptor::Accessor<&Tensor::OnTensor<&Tensor::GetSize>>("size", napi_configurable),
      Napi::PropertyDescriptor::Accessor<&Tensor::OnTensor<&Tensor::GetDisposed>>("disposed", napi_configurable),
  });
  auto* holder = new TensorClass();
  holder->constructor = Napi::Persistent(cls);
  env.SetInstanceData<TensorClass>(holder);
  return cls;
}

Napi::Object Tensor::NewInstance(Napi::Env env, DType dtype, const std::vector<int64_t>& shape,
                                 std::shared_ptr<Storage> storage, size_t offset) {
  AdoptRequest req{dtype, shape, std::move(storage), offset};
  auto* holder = env.GetInstanceData<TensorClass>();
  return holder->constructor.New({Napi::External<AdoptRequest>::New(env, &req)});
}

static std::vector<int64_t> parse_shape(const Napi::Value& v) {
  if (!v.IsArray()) throw arg_error("shape must be an array of non-negative integers");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> shape;
  int64_t n = 1;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0) || d > 9e15 || d != std::trunc(d))  // the range before any conversion (undefined outside int64_t)
      throw arg_error("shape must be an array of non-negative integers, got element " + std::to_string(i) + " = " + e.ToString().Utf8Value());
    shape.push_back(static_cast<int64_t>(d));
    // Bounded before multiplying, and over the nonzero dims: an empty tensor may not carry dims whose products would
    // overflow the ops' index arithmetic (or make them loop over nothing for hours).
    if (d > 0) {
      if (n > (int64_t(1) << 40) / shape.back()) throw Error("ERR_TARFLOW_OUT_OF_MEMORY", "tensor shape " + shape_string(shape) + " is too large");
      n *= shape.back();
    }
  }
  return shape;
}

static int64_t product(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// new Tensor(dtype, shape[, typedArray]) allocates zeroed storage (and copies the data when given).
// A constructor that throws never reaches ~Tensor, so the handle is counted only once construction has succeeded, and
// a failure gives back the external-memory report it made (CopyFrom's refusals arrive as JavaScript errors).
Tensor::Tensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tensor>(info) {
  Napi::Env env = info.Env();
  auto unreport = [&] {
    if (accounted_bytes_) Napi::MemoryManagement::AdjustExternalMemory(env, -accounted_bytes_);
    accounted_bytes_ = 0;
  };
  try {
    if (info.Length() == 1 && info[0].IsExternal()) {
      auto* req = info[0].As<Napi::External<AdoptRequest>>().Data();
      dtype_ = req->dtype;
      shape_ = req->shape;
      numel_ = product(shape_);
      storage_ = req->storage;
      offset_ = req->offset;
    } else {
      if (info.Length() < 2 || !info[0].IsString())
        throw arg_error("new Tensor(dtype, shape[, data]): dtype must be 'float32', 'float64' or 'int32'");
      dtype_ = parse_dtype(info[0].As<Napi::String>().Utf8Value());
      shape_ = parse_shape(info[1]);
      numel_ = product(shape_);
      storage_ = std::make_shared<Storage>(static_cast<size_t>(numel_) * dtype_size(dtype_));
      accounted_bytes_ = static_cast<int64_t>(storage_->bytes);
      Napi::MemoryManagement::AdjustExternalMemory(env, accounted_bytes_);
      if (info.Length() >= 3 && !info[2].IsUndefined() && !info[2].IsNull()) CopyFrom(info);  // data sits at index 2
    }
  } catch (const Error& e) {
    unreport();
    throw to_js_error(env, e.code, e.what());
  } catch (const std::bad_alloc&) {
    unreport();
    throw to_js_error(env, "ERR_TARFLOW_OUT_OF_MEMORY", "could not allocate a tensor of shape " + shape_string(shape_));
  } catch (...) {
    unreport();
    throw;
  }
  live_handles++;
}

Tensor::~Tensor() {
  storage_.reset();
  live_handles--;
}

void Tensor::Finalize(Napi::Env env) { release(env); }

void Tensor::release(Napi::Env env) {
  if (accounted_bytes_) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -accounted_bytes_);
    accounted_bytes_ = 0;
  }
  storage_.reset();
}

// The tensor an object wraps, or null: unlike ObjectWrap::Unwrap, this does not throw an uncoded error for an object
// that wraps nothing (a plain object, or one made from the prototype alone by Object.create(Tensor.prototype)).
static Tensor* wrapped_tensor(Napi::Value v) {
  void* wrapped = nullptr;
  if (!v.IsObject() || napi_unwrap(v.Env(), v, &wrapped) != napi_ok) return nullptr;
  return static_cast<Tensor*>(wrapped);
}

template <Napi::Value (Tensor::*Member)(const Napi::CallbackInfo&)>
Napi::Value Tensor::OnTensor(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() {
    Tensor* t = wrapped_tensor(info.This());
    if (!t) throw arg_error("a Tensor method or property was used on an object that is not a Tensor made by new Tensor()");
    return (t->*Member)(info);
  });
}

Napi::Value Tensor::GetShape(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env(), shape_.size());
  for (size_t i = 0; i < shape_.size(); ++i) a.Set(i, Napi::Number::New(info.Env(), static_cast<double>(shape_[i])));
  return a;
}
Napi::Value Tensor::GetDType(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtype_name(dtype_)); }
Napi::Value Tensor::GetSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(numel_)); }
Napi::Value Tensor::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed()); }

static void check_alive(const Tensor* t, const char* what) {
  if (t->disposed()) throw Error("ERR_TARFLOW_DISPOSED", std::string(what) + ": the tensor was disposed; create a new one");
}

Napi::Value Tensor::ToArray(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    check_alive(this, "toArray");
    Napi::Env env = info.Env();
    size_t bytes = static_cast<size_t>(numel_) * dtype_size(dtype_);
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, bytes);
#ifdef TF_BACKEND_CUDA
    if (bytes) mem::to_host(buf.Data(), data<char>(), bytes);
#else
    if (bytes) std::memcpy(buf.Data(), data<char>(), bytes);
#endif
    switch (dtype_) {
      case DType::F32: return Napi::Float32Array::New(env, numel_, buf, 0);
      case DType::F64: return Napi::Float64Array::New(env, numel_, buf, 0);
      default: return Napi::Int32Array::New(env, numel_, buf, 0);
    }
  });
}

// copyFrom(typedArray): the array's element type must match the dtype and its length the size.
Napi::Value Tensor::CopyFrom(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    check_alive(this, "copyFrom");
    Napi::Value v = info.Length() >= 3 ? info[2] : info[0];
    if (!v.IsTypedArray()) throw arg_error("copyFrom: expected a typed array matching the tensor dtype " + describe());
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    napi_typedarray_type want = dtype_ == DType::F32 ? napi_float32_array : dtype_ == DType::F64 ? napi_float64_array : napi_int32_array;
    static const char* names[] = {"Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
                                  "Uint32Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array"};
    if (ta.TypedArrayType() != want) {
      int k = static_cast<int>(ta.TypedArrayType());
      throw Error("ERR_TARFLOW_DTYPE", std::string("copyFrom: a ") + dtype_name(dtype_) + " tensor needs a " +
                                           names[want] + ", got a " + (k >= 0 && k < 11 ? names[k] : "typed array"));
    }
    if (static_cast<int64_t>(ta.ElementLength()) != numel_)
      throw shape_error("copyFrom: tensor " + describe() + " has " + std::to_string(numel_) + " elements, the array has " +
                        std::to_string(ta.ElementLength()));
    const char* src = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    if (dtype_ == DType::I32) {
      const int32_t* v = reinterpret_cast<const int32_t*>(src);
      int32_t top = numel_ ? *std::max_element(v, v + numel_) : 0;
      // A write over the whole buffer replaces every value, so the bound can come down as well as go up.
      if (covers_storage()) storage_->int32_upper.store(top, std::memory_order_relaxed);
      else storage_->raise_int32_upper(top);
    }
#ifdef TF_BACKEND_CUDA
    if (numel_) mem::from_host(data<char>(), src, bytes());
#else
    if (numel_) std::memcpy(data<char>(), src, bytes());
#endif
    return info.This();
  });
}

// view(offset, shape): a handle on elements [offset, offset + prod(shape)) of the same storage.
Napi::Value Tensor::View(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    check_alive(this, "view");
    int64_t off = int_arg(info, 0, "offset");
    std::vector<int64_t> shape = parse_shape(info[1]);
    int64_t n = product(shape);
    if (off < 0 || off > numel_ || n > numel_ - off)
      throw shape_error("view: " + std::to_string(n) + " elements from offset " + std::to_string(off) + " fall outside tensor " + describe());
    return NewInstance(info.Env(), dtype_, shape, storage_, offset_ + static_cast<size_t>(off));
  });
}

Napi::Value Tensor::Fill(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    check_alive(this, "fill");
    double v = number_arg(info, 0, "value");
    if (dtype_ == DType::I32) {
      if (!(v >= INT32_MIN && v <= INT32_MAX) || v != std::floor(v))
        throw arg_error("fill: an int32 tensor takes whole numbers from -2147483648 to 2147483647, got " + std::to_string(v));
      if (covers_storage()) storage_->int32_upper.store(static_cast<int32_t>(v), std::memory_order_relaxed);
      else storage_->raise_int32_upper(static_cast<int32_t>(v));
    }
#ifdef TF_BACKEND_CUDA
    mem::fill(data<char>(), dtype_, numel_, v);
#else
    if (dtype_ == DType::F32) { float* p = data<float>(); for (int64_t i = 0; i < numel_; ++i) p[i] = static_cast<float>(v); }
    else if (dtype_ == DType::F64) { double* p = data<double>(); for (int64_t i = 0; i < numel_; ++i) p[i] = v; }
    else { int32_t* p = data<int32_t>(); for (int64_t i = 0; i < numel_; ++i) p[i] = static_cast<int32_t>(v); }
#endif
    return info.This();
  });
}

// dispose() drops this handle's reference to the storage at once; views and the parent keep it alive until
// all of them are disposed or collected.
Napi::Value Tensor::Dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

Tensor* tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Tensor* t = optional_tensor_arg(info, i, name);
  if (!t) throw arg_error(std::string("argument '") + name + "' must be a Tensor, got nothing");
  return t;
}

static Tensor* unwrap_tensor(Napi::Value v, const char* name) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  auto* holder = v.Env().GetInstanceData<TensorClass>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(holder->constructor.Value()))
    throw arg_error(std::string("argument '") + name + "' must be a Tensor");
  // InstanceOf passes for an object made from the prototype alone (Object.create(Tensor.prototype)), which wraps nothing.
  Tensor* t = wrapped_tensor(v);
  if (!t) throw arg_error(std::string("argument '") + name + "' must be a Tensor made by new Tensor(), got an object that only shares its prototype");
  if (t->disposed()) throw Error("ERR_TARFLOW_DISPOSED", std::string("argument '") + name + "' is a disposed tensor");
  return t;
}

Tensor* optional_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return i < info.Length() ? unwrap_tensor(info[i], name) : nullptr;
}

Tensor* tensor_prop(const Napi::Object& obj, const char* key, bool optional) {
  Tensor* t = unwrap_tensor(obj.Get(key), key);
  if (!t && !optional) throw arg_error(std::string("missing tensor '") + key + "'");
  return t;
}

double number_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) throw arg_error(std::string("argument '") + name + "' must be a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double d = number_arg(info, i, name);
  // Range first: converting NaN or a double outside int64_t's range is undefined behaviour, not a wrong value.
  constexpr double kTwo63 = 9223372036854775808.0;
  if (!(d >= -kTwo63 && d < kTwo63) || d != std::trunc(d))
    throw arg_error(std::string("argument '") + name + "' must be an integer between -2^63 and 2^63, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean()) throw arg_error(std::string("argument '") + name + "' must be a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

void expect_dtype(const Tensor* t, DType d, const char* name) {
  if (t->dtype() != d)
    throw Error("ERR_TARFLOW_DTYPE", std::string(name) + " must be " + dtype_name(d) + ", got " + t->describe());
}

void expect_same_dtype(const Tensor* a, const Tensor* b, const char* name_a, const char* name_b) {
  if (a->dtype() != b->dtype())
    throw Error("ERR_TARFLOW_DTYPE", std::string(name_a) + " is " + a->describe() + " but " + name_b + " is " + b->describe() +
                                         "; all float tensors of one call must share a dtype");
}

void expect_shape(const Tensor* t, const std::vector<int64_t>& shape, const char* name) {
  if (t->shape() != shape)
    throw shape_error(std::string(name) + " must have shape " + shape_string(shape) + ", got " + t->describe());
}

void expect_numel(const Tensor* t, int64_t n, const char* name) {
  if (t->numel() != n)
    throw shape_error(std::string(name) + " must have " + std::to_string(n) + " elements, got " + t->describe());
}

}  // namespace tf
