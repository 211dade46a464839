// See kernel_info.h.
#include "kernel_info.h"

namespace graphprune {
namespace ort {

namespace {

// Runs a two-call ONNX Runtime string getter (size query, then fill); false on any error.
template <typename Getter>
bool read_string(const OrtApi* api, Getter get, std::string* out) {
  size_t size = 0;
  OrtStatus* st = get(nullptr, &size);
  if (!st) {
    out->assign(size, '\0');
    st = get(&(*out)[0], &size);
  }
  if (st) {
    api->ReleaseStatus(st);
    return false;
  }
  while (!out->empty() && out->back() == '\0') out->pop_back();
  return true;
}

}  // namespace

bool int_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  OrtStatus* st = api->KernelInfoGetAttribute_int64(info, name, out);
  if (st) api->ReleaseStatus(st);
  return st == nullptr;
}

bool ints_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name,
               std::vector<int64_t>* out) {
  size_t size = 0;
  OrtStatus* st = api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (!st) {
    out->assign(size, 0);
    if (size == 0) return true;
    st = api->KernelInfoGetAttributeArray_int64(info, name, out->data(), &size);
  }
  if (st) {
    api->ReleaseStatus(st);
    return false;
  }
  out->resize(size);
  return true;
}

bool string_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::string* out) {
  return read_string(api, [&](char* buf, size_t* size) {
    return api->KernelInfoGetAttribute_string(info, name, buf, size);
  }, out);
}

std::string node_name(const OrtApi* api, const OrtKernelInfo* info) {
  std::string s;
  if (!read_string(api, [&](char* buf, size_t* size) {
        return api->KernelInfo_GetNodeName(info, buf, size);
      }, &s))
    return "";
  return s;
}

OrtStatus* view_tensor(const OrtApi* api, const OrtValue* v, TensorView* out) {
  OrtTensorTypeAndShapeInfo* ti = nullptr;
  OrtStatus* st = api->GetTensorTypeAndShape(v, &ti);
  if (st) return st;
  size_t rank = 0;
  st = api->GetTensorElementType(ti, &out->type);
  if (!st) st = api->GetDimensionsCount(ti, &rank);
  if (!st) {
    out->shape.assign(rank, 0);
    st = api->GetDimensions(ti, out->shape.data(), rank);
  }
  if (!st) st = api->GetTensorShapeElementCount(ti, &out->count);
  api->ReleaseTensorTypeAndShapeInfo(ti);
  if (st) return st;
  void* data = nullptr;
  st = api->GetTensorMutableData(const_cast<OrtValue*>(v), &data);
  if (st) return st;
  out->data = data;
  return nullptr;
}

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
    default: return "another type";
  }
}

std::string read_weight_attrs(const OrtApi* api, const OrtKernelInfo* info, FormatSpec* spec,
                              Activation* act) {
  int64_t v = 0;
  if (!int_attr(api, info, "k", &spec->k)) return "attribute 'k' (int) is required";
  if (!int_attr(api, info, "n", &spec->n)) return "attribute 'n' (int) is required";
  if (!string_attr(api, info, "format", &spec->format))
    return "attribute 'format' (bsr, csr or nm) is required";
  spec->br = int_attr(api, info, "block_rows", &v) ? static_cast<int>(v) : 1;
  spec->bc = int_attr(api, info, "block_cols", &v) ? static_cast<int>(v) : 1;
  spec->nm_n = int_attr(api, info, "nm_n", &v) ? static_cast<int>(v) : 2;
  spec->nm_m = int_attr(api, info, "nm_m", &v) ? static_cast<int>(v) : 4;
  std::string err = read_activation(api, info, "activation", act);
  return err.empty() ? validate_spec(*spec) : err;
}

std::string read_activation(const OrtApi* api, const OrtKernelInfo* info, const char* attr,
                            Activation* act) {
  std::string name = "none";
  string_attr(api, info, attr, &name);
  if (name == "none" || name.empty()) *act = Activation::kNone;
  else if (name == "relu") *act = Activation::kRelu;
  else if (name == "gelu") *act = Activation::kGelu;
  else return std::string(attr) + " '" + name + "' is not one of none, relu, gelu";
  return "";
}

OrtStatus* constant_inputs(const OrtApi* api, const OrtKernelInfo* info, size_t first,
                           size_t count, const OrtValue** values, bool* all_constant) {
  *all_constant = true;
  size_t n_inputs = 0;
  OrtStatus* st = api->KernelInfo_GetInputCount(info, &n_inputs);
  if (st) return st;
  for (size_t i = 0; i < count; ++i) {
    values[i] = nullptr;
    const size_t idx = first + i;
    if (idx >= n_inputs) continue;  // an absent trailing optional input
    int is_const = 0;
    st = api->KernelInfoGetConstantInput_tensor(info, idx, &is_const, &values[i]);
    if (st) {
      api->ReleaseStatus(st);
      is_const = 0;
    }
    if (is_const) continue;
    values[i] = nullptr;
    // An absent optional input (empty name) is fine; any other non-constant input means
    // packing on every run.
    char name[2] = {0, 0};
    size_t size = sizeof(name);
    st = api->KernelInfo_GetInputName(info, idx, name, &size);
    const bool absent = (st == nullptr && name[0] == '\0');
    if (st) api->ReleaseStatus(st);
    if (!absent) *all_constant = false;
  }
  return nullptr;
}

ONNXTensorElementDataType sparse_input_type(size_t i) {
  return (i == kIndices || i == kRowPtr) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED
                                         : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic sparse_input_characteristic(size_t i) {
  return (i == kRowPtr || i == kBias || i == kResidual) ? INPUT_OUTPUT_OPTIONAL
                                                        : INPUT_OUTPUT_REQUIRED;
}

}  // namespace ort
}  // namespace graphprune
