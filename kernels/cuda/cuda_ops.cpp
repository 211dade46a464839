// ONNX Runtime custom operator graphprune.SparseMatMul for the CUDAExecutionProvider
// (libgraphprune_kernels_cuda.so; the CPU operators are in libgraphprune_kernels.so, which has no
// CUDA in it). Same ONNX-level inputs and attributes as the CPU op, so one model file runs on
// either provider; register both libraries to let ONNX Runtime place each node.
//
//   SparseMatMul(X[..., K], values, indices, row_ptr?, bias?) -> Y[..., N],  Y = act(X @ W + bias)
//   attributes: k, n, format (bsr | csr | nm), block_rows, block_cols, nm_n, nm_m, activation
//
// Memory: X, bias and Y live on the GPU; values, indices and row_ptr are declared CPU inputs
// (OrtMemTypeCPUInput), so ONNX Runtime keeps those initializers in host memory. They are
// validated and packed by the CPU packer (kernels/src/pack.cpp) when the kernel is created,
// turned into the GPU layout (gpu_layout.cpp), and copied to each device once, at the first run
// on it. Weights that are not initializers are packed and copied on every run.
// Stream: every copy and launch goes to KernelContext_GetGPUComputeStream.
// Written against the C API only (ORT_API_VERSION 21); nothing is linked from libonnxruntime.
#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "gpu_layout.h"
#include "kernel_info.h"
#include "onnxruntime_c_api.h"
#include "sparse_matmul.h"
#include "spmm_device.h"
#include "spmm_launch.h"

#if !defined(ORT_API_VERSION) || ORT_API_VERSION < 21
#error "graphprune kernels need ONNX Runtime headers with ORT_API_VERSION >= 21"
#endif

#define GP_EXPORT extern "C" __attribute__((visibility("default")))
GP_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base);

#ifndef GP_CUDA_ARCHS
#define GP_CUDA_ARCHS "unknown"
#endif

namespace {

using graphprune::FormatSpec;
using graphprune::IndexView;
using graphprune::PackedWeight;
using graphprune::cuda::DeviceProblem;
using graphprune::cuda::DeviceWeight;
using graphprune::cuda::GpuLayout;
using graphprune::ort::node_name;
using graphprune::ort::type_name;
using graphprune::ort::kBias;
using graphprune::ort::kIndices;
using graphprune::ort::kNumInputs;
using graphprune::ort::kResidual;
using graphprune::ort::kRowPtr;
using graphprune::ort::kValues;
using graphprune::ort::kX;

// The attribute reader gives a graphprune::Activation; the device code takes its value.
static_assert(graphprune::cuda::kActNone == static_cast<int>(graphprune::Activation::kNone) &&
                  graphprune::cuda::kActRelu == static_cast<int>(graphprune::Activation::kRelu) &&
                  graphprune::cuda::kActGelu == static_cast<int>(graphprune::Activation::kGelu),
              "graphprune::cuda::Act and graphprune::Activation must agree");

constexpr uint32_t kApiVersion = 21;
constexpr const char* kDomain = "graphprune";
constexpr const char* kProvider = "CUDAExecutionProvider";


#define GP_RETURN_IF_ERROR(expr)    \
  do {                              \
    OrtStatus* _st = (expr);        \
    if (_st != nullptr) return _st; \
  } while (0)

OrtStatus* fail(const OrtApi* api, const std::string& node, const std::string& what,
                OrtErrorCode code = ORT_INVALID_ARGUMENT) {
  std::string m = "graphprune CUDA kernels";
  if (!node.empty()) m += " (node '" + node + "')";
  m += ": " + what;
  return api->CreateStatus(code, m.c_str());
}

OrtStatus* cuda_fail(const OrtApi* api, const std::string& node, const char* what, cudaError_t err) {
  return fail(api, node, std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")",
              ORT_RUNTIME_EXCEPTION);
}

// --- tensors ------------------------------------------------------------------------------------

struct Tensor : graphprune::ort::TensorView {
  bool on_gpu = false;
};

OrtStatus* view(const OrtApi* api, const OrtValue* v, Tensor* out) {
  GP_RETURN_IF_ERROR(graphprune::ort::view_tensor(api, v, out));
  const OrtMemoryInfo* mi = nullptr;
  GP_RETURN_IF_ERROR(api->GetTensorMemoryInfo(v, &mi));
  OrtMemoryInfoDeviceType dt = OrtMemoryInfoDeviceType_CPU;
  api->MemoryInfoGetDeviceType(mi, &dt);
  out->on_gpu = dt == OrtMemoryInfoDeviceType_GPU;
  return nullptr;
}

size_t element_size(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    default: return 0;
  }
}

// The weight inputs are declared CPU inputs; should one still arrive in device memory, it is
// copied to `storage` first (synchronously: this happens at most at kernel creation or once per
// run for weights that are not initializers).
OrtStatus* to_host(const OrtApi* api, const std::string& node, Tensor* t, std::vector<unsigned char>* storage) {
  if (!t->on_gpu || t->count == 0) return nullptr;
  const size_t bytes = t->count * element_size(t->type);
  storage->resize(bytes);
  cudaError_t e = cudaMemcpy(storage->data(), t->data, bytes, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return cuda_fail(api, node, "copying a weight input to the host", e);
  t->data = storage->data();
  t->on_gpu = false;
  return nullptr;
}

// --- kernel -------------------------------------------------------------------------------------

struct OpDef {
  OrtCustomOp op;  // first member: ONNX Runtime hands back &op
  const char* name;
};

struct DeviceCopy {
  int device = -1;
  void* ptr = nullptr;
};

struct Kernel {
  const OrtApi* api = nullptr;
  std::string name;
  FormatSpec spec;
  int act = graphprune::cuda::kActNone;
  bool prepacked = false;
  GpuLayout layout;  // host blob, kept to copy to further devices
  std::mutex mu;
  std::vector<DeviceCopy> copies;  // one per device the kernel ran on

  ~Kernel() {
    if (copies.empty()) return;
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess) current = -1;
    for (DeviceCopy& c : copies) {
      if (cudaSetDevice(c.device) == cudaSuccess) cudaFree(c.ptr);  // errors at exit: nothing to do
    }
    if (current >= 0) cudaSetDevice(current);
    cudaGetLastError();
  }

  OrtStatus* pack(const OrtValue* values, const OrtValue* indices, const OrtValue* row_ptr, GpuLayout* out) const {
    if (!values || !indices) return fail(api, name, "inputs 'values' and 'indices' are required");
    Tensor v, ix, rp;
    std::vector<unsigned char> hv, hix, hrp;
    GP_RETURN_IF_ERROR(view(api, values, &v));
    GP_RETURN_IF_ERROR(view(api, indices, &ix));
    if (v.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return fail(api, name, std::string("input 'values' must be float, got ") + type_name(v.type));
    auto is_int = [](ONNXTensorElementDataType t) {
      return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    };
    if (!is_int(ix.type))
      return fail(api, name, std::string("input 'indices' must be int32 or int64, got ") + type_name(ix.type));
    GP_RETURN_IF_ERROR(to_host(api, name, &v, &hv));
    GP_RETURN_IF_ERROR(to_host(api, name, &ix, &hix));
    IndexView iv{ix.data, ix.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ix.count};
    IndexView rv;
    if (row_ptr) {
      GP_RETURN_IF_ERROR(view(api, row_ptr, &rp));
      if (!is_int(rp.type))
        return fail(api, name, std::string("input 'row_ptr' must be int32 or int64, got ") + type_name(rp.type));
      GP_RETURN_IF_ERROR(to_host(api, name, &rp, &hrp));
      rv = IndexView{rp.data, rp.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, rp.count};
    }
    PackedWeight packed;  // the CPU packer validates and converts every format
    std::string err = graphprune::pack_weight(spec, static_cast<const float*>(v.data), v.count, iv, rv, &packed);
    if (err.empty()) err = graphprune::cuda::build_gpu_layout(packed, out);
    if (!err.empty()) return fail(api, name, err);
    return nullptr;
  }

  // The packed weight on the current device, copied there on first use (then read-only).
  OrtStatus* device_weight(cudaStream_t stream, const void** base) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return cuda_fail(api, name, "cudaGetDevice", e);
    std::lock_guard<std::mutex> lock(mu);
    for (const DeviceCopy& c : copies) {
      if (c.device == dev) {
        *base = c.ptr;
        return nullptr;
      }
    }
    DeviceCopy c;
    c.device = dev;
    e = cudaMalloc(&c.ptr, layout.blob.size());
    if (e != cudaSuccess) return cuda_fail(api, name, "allocating the packed weight on the GPU", e);
    e = cudaMemcpyAsync(c.ptr, layout.blob.data(), layout.blob.size(), cudaMemcpyHostToDevice, stream);
    // Complete before publishing: other runs may use the copy from other streams.
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) {
      cudaFree(c.ptr);
      return cuda_fail(api, name, "copying the packed weight to the GPU", e);
    }
    copies.push_back(c);
    *base = c.ptr;
    return nullptr;
  }

  OrtStatus* compute(OrtKernelContext* ctx) {
    size_t n_inputs = 0;
    GP_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &n_inputs));
    const OrtValue* in[kNumInputs] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    for (size_t i = 0; i < kNumInputs && i < n_inputs; ++i)
      GP_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, i, &in[i]));
    if (!in[kX]) return fail(api, name, "input X is missing");
    if (in[kResidual])
      return fail(api, name, "the CUDA SparseMatMul has no residual input (add it after the op)");

    Tensor x;
    GP_RETURN_IF_ERROR(view(api, in[kX], &x));
    if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return fail(api, name, std::string("input X must be float, got ") + type_name(x.type));
    if (x.shape.empty() || x.shape.back() != spec.k)
      return fail(api, name, "X must have last dimension k = " + std::to_string(spec.k));
    if (x.count > 0 && !x.on_gpu) return fail(api, name, "input X is not in GPU memory");
    const float* bias = nullptr;
    if (in[kBias]) {
      Tensor b;
      GP_RETURN_IF_ERROR(view(api, in[kBias], &b));
      if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || static_cast<int64_t>(b.count) != spec.n)
        return fail(api, name, "bias must be float with n = " + std::to_string(spec.n) + " elements");
      if (!b.on_gpu) return fail(api, name, "input bias is not in GPU memory");
      bias = static_cast<const float*>(b.data);
    }

    std::vector<int64_t> yshape = x.shape;
    yshape.back() = spec.n;
    OrtValue* y = nullptr;
    GP_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 0, yshape.data(), yshape.size(), &y));
    void* ydata = nullptr;
    GP_RETURN_IF_ERROR(api->GetTensorMutableData(y, &ydata));
    const int64_t M = static_cast<int64_t>(x.count) / spec.k;
    if (M == 0) return nullptr;

    void* stream_ptr = nullptr;
    GP_RETURN_IF_ERROR(api->KernelContext_GetGPUComputeStream(ctx, &stream_ptr));
    cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);  // null: the default stream

    DeviceProblem p;
    p.x = static_cast<const float*>(x.data);
    p.y = static_cast<float*>(ydata);
    p.bias = bias;
    p.M = M;
    p.act = act;

    if (prepacked) {
      const void* base = nullptr;
      GP_RETURN_IF_ERROR(device_weight(stream, &base));
      cudaError_t e = graphprune::cuda::launch_spmm(layout.at(base), layout.br, layout.bc, p, stream);
      if (e != cudaSuccess) return cuda_fail(api, name, "launching the SpMM kernel", e);
      return nullptr;
    }

    // Weights that are not initializers: pack now, copy on the stream, free after the kernel.
    GpuLayout local;
    GP_RETURN_IF_ERROR(pack(in[kValues], in[kIndices], in[kRowPtr], &local));
    void* ptr = nullptr;
    bool pooled = true;
    cudaError_t e = cudaMallocAsync(&ptr, local.blob.size(), stream);
    if (e == cudaErrorNotSupported) {  // no stream-ordered allocator: plain malloc, synchronised
      cudaGetLastError();
      pooled = false;
      e = cudaMalloc(&ptr, local.blob.size());
    }
    if (e != cudaSuccess) return cuda_fail(api, name, "allocating the packed weight on the GPU", e);
    // From pageable memory: returns once the data is staged, so `local` may go away after it.
    e = cudaMemcpyAsync(ptr, local.blob.data(), local.blob.size(), cudaMemcpyHostToDevice, stream);
    if (e == cudaSuccess) e = graphprune::cuda::launch_spmm(local.at(ptr), local.br, local.bc, p, stream);
    const cudaError_t launch_err = e;
    if (pooled) {
      e = cudaFreeAsync(ptr, stream);
    } else {
      e = cudaStreamSynchronize(stream);
      cudaFree(ptr);
    }
    if (launch_err != cudaSuccess) return cuda_fail(api, name, "running the SpMM kernel", launch_err);
    if (e != cudaSuccess) return cuda_fail(api, name, "freeing the packed weight", e);
    return nullptr;
  }
};

OrtStatus* create_kernel(const OrtApi* api, const OrtKernelInfo* info, void** out) {
  std::unique_ptr<Kernel> k(new (std::nothrow) Kernel());
  if (!k) return api->CreateStatus(ORT_FAIL, "graphprune CUDA kernels: out of memory");
  k->api = api;
  k->name = node_name(api, info);

  graphprune::Activation act = graphprune::Activation::kNone;
  std::string err = graphprune::ort::read_weight_attrs(api, info, &k->spec, &act);
  if (!err.empty()) return fail(api, k->name, err);
  k->act = static_cast<int>(act);
  int64_t heads = 0;
  if (graphprune::ort::int_attr(api, info, "heads_in", &heads) ||
      graphprune::ort::int_attr(api, info, "heads_out", &heads))
    return fail(api, k->name,
                "the CUDA SparseMatMul has no attention-head layouts (heads_in / heads_out): "
                "sparsify with SparsifyConfig(fuse_heads=False) for the GPU");

  // Pack now if the weight inputs are initializers.
  const OrtValue* cv[3] = {nullptr, nullptr, nullptr};
  bool all_const = true;
  GP_RETURN_IF_ERROR(graphprune::ort::constant_inputs(api, info, kValues, 3, cv, &all_const));
  if (all_const && cv[0] && cv[1]) {
    GP_RETURN_IF_ERROR(k->pack(cv[0], cv[1], cv[2], &k->layout));
    k->prepacked = true;
  }
  *out = k.release();
  return nullptr;
}

// --- OrtCustomOp callbacks ----------------------------------------------------------------------

const char* ORT_API_CALL op_name(const OrtCustomOp* op) { return reinterpret_cast<const OpDef*>(op)->name; }
const char* ORT_API_CALL op_ep(const OrtCustomOp*) { return kProvider; }
size_t ORT_API_CALL op_input_count(const OrtCustomOp*) { return kNumInputs; }
ONNXTensorElementDataType ORT_API_CALL op_input_type(const OrtCustomOp*, size_t i) {
  return graphprune::ort::sparse_input_type(i);
}
size_t ORT_API_CALL op_output_count(const OrtCustomOp*) { return 1; }
ONNXTensorElementDataType ORT_API_CALL op_output_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL op_input_char(const OrtCustomOp*, size_t i) {
  return graphprune::ort::sparse_input_characteristic(i);  // residual: declared, refused here
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL op_output_char(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL op_input_mem(const OrtCustomOp*, size_t i) {
  // The sparse weight is packed on the host: keep it there. X and bias: device memory.
  return (i == kValues || i == kIndices || i == kRowPtr) ? OrtMemTypeCPUInput : OrtMemTypeDefault;
}
int ORT_API_CALL op_one(const OrtCustomOp*) { return 1; }
int ORT_API_CALL op_end_version(const OrtCustomOp*) { return INT_MAX; }
void ORT_API_CALL op_destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
OrtStatusPtr ORT_API_CALL op_create_v2(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                                       void** kernel) {
  try {
    return create_kernel(api, info, kernel);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("graphprune CUDA kernels: ") + e.what()).c_str());
  }
}
OrtStatusPtr ORT_API_CALL op_compute_v2(void* kernel, OrtKernelContext* ctx) {
  Kernel* k = static_cast<Kernel*>(kernel);
  try {
    return k->compute(ctx);
  } catch (const std::exception& e) {
    return k->api->CreateStatus(ORT_FAIL, (std::string("graphprune CUDA kernels: ") + e.what()).c_str());
  }
}

OpDef make_op(const char* name) {
  OpDef d;
  std::memset(&d, 0, sizeof(d));
  OrtCustomOp& o = d.op;
  o.version = kApiVersion;
  o.GetName = op_name;
  o.GetExecutionProviderType = op_ep;
  o.GetInputType = op_input_type;
  o.GetInputTypeCount = op_input_count;
  o.GetOutputType = op_output_type;
  o.GetOutputTypeCount = op_output_count;
  o.KernelDestroy = op_destroy;
  o.GetInputCharacteristic = op_input_char;
  o.GetOutputCharacteristic = op_output_char;
  o.GetInputMemoryType = op_input_mem;
  o.GetVariadicInputMinArity = op_one;
  o.GetVariadicInputHomogeneity = op_one;
  o.GetVariadicOutputMinArity = op_one;
  o.GetVariadicOutputHomogeneity = op_one;
  o.CreateKernelV2 = op_create_v2;
  o.KernelComputeV2 = op_compute_v2;
  o.GetStartVersion = op_one;
  o.GetEndVersion = op_end_version;
  d.name = name;
  return d;
}

OpDef g_sparse_matmul = make_op("SparseMatMul");

std::mutex g_domains_mu;
std::vector<OrtCustomOpDomain*> g_domains;  // kept for the life of the process

// --- the CPU operators in the same domain ---------------------------------------------------------
// ONNX Runtime refuses two custom-op domains of one name in a session ("Domain already set in
// registry"), so this library and libgraphprune_kernels.so cannot both be registered. With
// GRAPHPRUNE_KERNELS_CPU_LIBRARY=/path/to/libgraphprune_kernels.so, RegisterCustomOps loads the CPU
// library and runs its RegisterCustomOps against a copy of the API table in which creating the
// domain hands out this library's domain and adding it to the session does nothing: the CPU
// operators (SparseMatMul, SparseConv) join the CUDA SparseMatMul in one "graphprune" domain, and
// ONNX Runtime places each node on the provider that has a kernel for it. The CPU library is not
// modified; it only ever sees API calls it makes anyway.

OrtCustomOpDomain* g_shared_domain = nullptr;  // set while the CPU library registers (g_domains_mu)
const OrtApiBase* g_real_base = nullptr;
const OrtApi* g_real_api = nullptr;
OrtApi g_proxy_api;

OrtStatusPtr ORT_API_CALL proxy_create_domain(const char* domain, OrtCustomOpDomain** out) noexcept {
  if (g_shared_domain && domain && std::strcmp(domain, kDomain) == 0) {
    *out = g_shared_domain;
    return nullptr;
  }
  return g_real_api->CreateCustomOpDomain(domain, out);
}
OrtStatusPtr ORT_API_CALL proxy_add_domain(OrtSessionOptions* options, OrtCustomOpDomain* domain) noexcept {
  if (domain == g_shared_domain) return nullptr;  // added once, by us
  return g_real_api->AddCustomOpDomain(options, domain);
}
void ORT_API_CALL proxy_release_domain(OrtCustomOpDomain* domain) {
  if (domain != g_shared_domain) g_real_api->ReleaseCustomOpDomain(domain);
}
const OrtApi* ORT_API_CALL proxy_get_api(uint32_t version) noexcept {
  return version == kApiVersion ? &g_proxy_api : g_real_base->GetApi(version);
}
const char* ORT_API_CALL proxy_version() noexcept { return g_real_base->GetVersionString(); }

// Adds the CPU library's operators to `domain`; nullptr or the error.
OrtStatus* add_cpu_ops(const OrtApi* api, const OrtApiBase* api_base, OrtSessionOptions* options,
                       OrtCustomOpDomain* domain, const char* path) {
  void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);  // never closed: the ops live in it
  if (!handle) {
    const char* why = dlerror();
    return fail(api, "", std::string("GRAPHPRUNE_KERNELS_CPU_LIBRARY=") + path + " cannot be loaded: " +
                             (why ? why : "unknown error"));
  }
  using RegisterFn = OrtStatus*(ORT_API_CALL*)(OrtSessionOptions*, const OrtApiBase*);
  RegisterFn reg = reinterpret_cast<RegisterFn>(dlsym(handle, "RegisterCustomOps"));
  if (!reg) return fail(api, "", std::string(path) + " has no RegisterCustomOps");
  if (reg == &RegisterCustomOps)
    return fail(api, "", "GRAPHPRUNE_KERNELS_CPU_LIBRARY names the CUDA library itself, not libgraphprune_kernels.so");
  g_real_base = api_base;
  g_real_api = api;
  std::memcpy(&g_proxy_api, api, sizeof(OrtApi));  // the runtime's table has at least these entries
  g_proxy_api.CreateCustomOpDomain = proxy_create_domain;
  g_proxy_api.AddCustomOpDomain = proxy_add_domain;
  g_proxy_api.ReleaseCustomOpDomain = proxy_release_domain;
  static OrtApiBase proxy_base = {proxy_get_api, proxy_version};
  g_shared_domain = domain;
  OrtStatus* st = reg(options, &proxy_base);
  g_shared_domain = nullptr;
  return st;
}

}  // namespace

GP_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;
  const OrtApi* api = api_base->GetApi(kApiVersion);
  if (api == nullptr) {
    const OrtApi* old = nullptr;
    for (uint32_t v = kApiVersion - 1; v >= 1 && old == nullptr; --v) old = api_base->GetApi(v);
    const char* have = api_base->GetVersionString ? api_base->GetVersionString() : "unknown";
    std::string m = std::string("graphprune CUDA kernels need ONNX Runtime 1.21 or newer (C API version ") +
                    std::to_string(kApiVersion) + "); this runtime is " + (have ? have : "unknown");
    return old ? old->CreateStatus(ORT_NOT_IMPLEMENTED, m.c_str()) : nullptr;
  }
  // No CUDA call here: registering works on a machine without a GPU (the CUDA op is then never
  // picked, as no session there has the CUDAExecutionProvider).
  std::lock_guard<std::mutex> lock(g_domains_mu);
  OrtCustomOpDomain* domain = nullptr;
  GP_RETURN_IF_ERROR(api->CreateCustomOpDomain(kDomain, &domain));
  OrtStatus* st = api->CustomOpDomain_Add(domain, &g_sparse_matmul.op);
  const char* cpu_lib = std::getenv("GRAPHPRUNE_KERNELS_CPU_LIBRARY");
  if (!st && cpu_lib && *cpu_lib) st = add_cpu_ops(api, api_base, options, domain, cpu_lib);
  if (!st) st = api->AddCustomOpDomain(options, domain);
  if (st) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  g_domains.push_back(domain);
  return nullptr;
}

// For the Python side (ctypes), without touching the GPU: what was built.
GP_EXPORT const char* graphprune_kernels_cuda_build_info() {
  static const std::string info = std::string("cuda_runtime=") + std::to_string(CUDART_VERSION) +
                                  " archs=" GP_CUDA_ARCHS " api=" + std::to_string(kApiVersion);
  return info.c_str();
}
