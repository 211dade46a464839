// Reading a graphprune sparse node's attributes and constant weight inputs from ONNX Runtime's
// OrtKernelInfo: shared by the CPU operators (custom_ops.cpp) and the CUDA one
// (cuda/cuda_ops.cpp), which take the same ONNX-level inputs and attributes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"
#include "sparse_matmul.h"

namespace graphprune {
namespace ort {

// The inputs of SparseMatMul / SparseConv, the same on every execution provider (ONNX Runtime
// requires one signature per op name across providers):
// X, values, indices, row_ptr?, bias?, residual? (shaped like Y, added before the activation).
enum SparseInput : size_t {
  kX = 0, kValues = 1, kIndices = 2, kRowPtr = 3, kBias = 4, kResidual = 5, kNumInputs = 6
};
// SparseConvChain / SparseMatMulChain (CPU only) take those, then the second weight and its
// bias: input kValues2 + i is like input kValues + i.
enum ChainInput : size_t {
  kValues2 = 6, kIndices2 = 7, kRowPtr2 = 8, kBias2 = 9, kNumChainInputs = 10
};
// Input i's element type: indices / row_ptr int32 or int64 (undefined = any type, checked at
// kernel creation), the others float.
ONNXTensorElementDataType sparse_input_type(size_t i);
// Whether input i is optional (row_ptr, bias, residual) or required.
OrtCustomOpInputOutputCharacteristic sparse_input_characteristic(size_t i);

// Attribute getters: false when the attribute is absent (or of another type).
bool int_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out);
bool ints_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name,
               std::vector<int64_t>* out);
bool string_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::string* out);
// The node's name, or "" when the runtime cannot say.
std::string node_name(const OrtApi* api, const OrtKernelInfo* info);

// A tensor's element type, shape, element count and data pointer.
struct TensorView {
  const void* data = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  size_t count = 0;
};
OrtStatus* view_tensor(const OrtApi* api, const OrtValue* v, TensorView* out);
// "float", "int64", ...: for error messages.
const char* type_name(ONNXTensorElementDataType t);

// The weight format (k, n, format, block_rows, block_cols, nm_n, nm_m) and the fused activation
// of a SparseMatMul / SparseConv node, validated. Returns "" or what is wrong.
std::string read_weight_attrs(const OrtApi* api, const OrtKernelInfo* info, FormatSpec* spec,
                              Activation* act);

// A fused activation attribute ("none" when absent). Returns "" or what is wrong.
std::string read_activation(const OrtApi* api, const OrtKernelInfo* info, const char* attr,
                            Activation* act);

// The `count` weight inputs from `first` on (values, indices, row_ptr) when they are constant
// (initializers): `values[i]` is null for a non-constant or absent input; `*all_constant` is
// false when some present input is not constant (the weight must then be packed every run).
OrtStatus* constant_inputs(const OrtApi* api, const OrtKernelInfo* info, size_t first,
                           size_t count, const OrtValue** values, bool* all_constant);

}  // namespace ort
}  // namespace graphprune
