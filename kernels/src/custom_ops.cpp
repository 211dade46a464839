// ONNX Runtime custom operators of the "graphprune" domain, written against the C API only
// (ORT_API_VERSION 21; no link against libonnxruntime: the runtime hands us its OrtApiBase).
//
//   SparseMatMul(X[..., K], values, indices, row_ptr?, bias?, residual?) -> Y[..., N]
//                Attention heads (optional attributes, SparseMatMul only): heads_in = H reads X
//                as [B, H, S, D] with H * D = k (an attention output whose heads the graph would
//                merge with Transpose(0,2,1,3) -> Reshape), rows b * S + s; heads_out = H writes
//                Y [B, H, S, n / H] (heads_out_layout "bhsd", the default: Reshape ->
//                Transpose(0,2,1,3)) or [B, H, n / H, S] ("bhds": Transpose(0,2,3,1), a key
//                for Q K^T) from X [B, S, k]. No residual with heads_out.
//   SparseConv  (X[B, C, H, W], values, indices, row_ptr?, bias?, residual?) -> Y[B, N, Ho, Wo]
//                (residual: shaped like Y, added before the activation: Conv -> Add -> Relu)
//                (a convolution, group 1, with W = conv_weight.reshape(N, -1)^T, K = C*kh*kw
//                ordered (c, i, j); 1x1 / stride 1 / no pads: X[B, K, spatial...] of any rank)
//   SparseConvChain(X, values, indices, row_ptr?, bias?, residual?, values2, indices2, row_ptr2?,
//                   bias2?) -> Y, Z   (CPU only)
//                Y as SparseConv computes it, and Z = act2(1x1 conv of Y with W2 + bias2): a
//                pointwise SparseConv fused onto the conv whose output it reads, so each chunk
//                of Y is multiplied by W2 while it is in cache. Attributes: SparseConv's, plus
//                n2 (int: Z's channels; W2 is [n, n2] in the same format and block shape) and
//                activation2. Y may be left out ("") where no other node reads it.
//   SparseMatMulChain(same inputs) -> Y?, Z   (CPU only)
//                The same for two SparseMatMul: Z = act2(Y @ W2 + bias2), W2 [n, n2]; each
//                chunk of rows of Y is multiplied by W2 while in cache; Y (optional) is only
//                written when a node reads it.
//   SoftmaxNanToZero(X, B?) -> Y   (CPU only; attribute axis, default -1, must be the last axis)
//                Softmax over the last axis, with the rows that would give NaN written as zeros:
//                Softmax -> IsNaN -> Where(isnan, 0, softmax), as torch's exporter writes
//                after every attention softmax, in one pass over the scores. B (optional,
//                broadcast to X): added first, as the Add of an attention mask before it.
// Attributes: k, n (int), format ("bsr" | "csr" | "nm"), block_rows, block_cols (int, default 1),
// nm_n, nm_m (int, default 2, 4), activation ("none" | "relu" | "gelu", default "none");
// SparseConv also kernel_shape, strides, dilations (ints, default 1 each), pads (ints
// [top, left, bottom, right], default 0) as in ONNX Conv, for 1-D or 2-D convolutions.
// The weight inputs (values, indices, row_ptr) are normally initializers: they are then packed
// once when the kernel is created; otherwise on every run.
// Threads: work is split with KernelContext_ParallelFor, i.e. the session's intra-op pool.
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"
#include "kernel_info.h"
#include "sparse_matmul.h"

#if !defined(ORT_API_VERSION) || ORT_API_VERSION < 21
#error "graphprune kernels need ONNX Runtime headers with ORT_API_VERSION >= 21"
#endif

#define GP_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using graphprune::Activation;
using graphprune::FormatSpec;
using graphprune::IndexView;
using graphprune::Layout;
using graphprune::PackedWeight;
using graphprune::Problem;
using graphprune::ort::int_attr;
using graphprune::ort::ints_attr;
using graphprune::ort::node_name;
using graphprune::ort::string_attr;
using graphprune::ort::TensorView;
using graphprune::ort::type_name;
using graphprune::ort::view_tensor;
using graphprune::ort::kBias;
using graphprune::ort::kBias2;
using graphprune::ort::kIndices;
using graphprune::ort::kNumChainInputs;
using graphprune::ort::kNumInputs;
using graphprune::ort::kResidual;
using graphprune::ort::kRowPtr;
using graphprune::ort::kValues2;
using graphprune::ort::kValues;
using graphprune::ort::kX;

constexpr uint32_t kApiVersion = 21;
constexpr const char* kDomain = "graphprune";


#define GP_RETURN_IF_ERROR(expr)      \
  do {                                \
    OrtStatus* _st = (expr);          \
    if (_st != nullptr) return _st;   \
  } while (0)

OrtStatus* fail(const OrtApi* api, const std::string& node, const std::string& what) {
  std::string m = "graphprune kernels";
  if (!node.empty()) m += " (node '" + node + "')";
  m += ": " + what;
  return api->CreateStatus(ORT_INVALID_ARGUMENT, m.c_str());
}

// Reads an optional bias input: null when absent, else float data of exactly n elements.
// The error names the input (`label`, "bias") and the attribute that gives n (`count_attr`, "n").
OrtStatus* read_bias(const OrtApi* api, const std::string& node, const OrtValue* value, int64_t n,
                     const char* label, const char* count_attr, const float** out) {
  *out = nullptr;
  if (!value) return nullptr;
  TensorView b;
  GP_RETURN_IF_ERROR(view_tensor(api, value, &b));
  if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || static_cast<int64_t>(b.count) != n)
    return fail(api, node, std::string(label) + " must be float with " + count_attr + " = " +
                               std::to_string(n) + " elements");
  *out = static_cast<const float*>(b.data);
  return nullptr;
}

// --- kernel ---------------------------------------------------------------------------------------

struct OpDef {
  OrtCustomOp op;  // first member: ORT hands back &op
  const char* name;
  bool conv;
  bool chain;    // SparseConvChain, SparseMatMulChain
  bool softmax;  // SoftmaxNanToZero
};

class OrtParallel : public graphprune::Parallel {
 public:
  OrtParallel(const OrtApi* api, OrtKernelContext* ctx) : api_(api), ctx_(ctx) {}
  void run(size_t n, void (*fn)(void*, size_t), void* data) override {
    OrtStatus* st = api_->KernelContext_ParallelFor(ctx_, fn, n, 0, data);
    if (st) {  // no thread pool reachable: run the (idempotent) tasks here
      api_->ReleaseStatus(st);
      for (size_t i = 0; i < n; ++i) fn(data, i);
    }
  }

 private:
  const OrtApi* api_;
  OrtKernelContext* ctx_;
};

// SparseConv's geometry attributes. rank 0: none given (1x1, X of any rank); otherwise the
// number of spatial dimensions (1 or 2), each attribute in 2-D form (1-D: the H entries trivial).
struct ConvAttrs {
  int rank = 0;
  int64_t kernel[2] = {1, 1}, strides[2] = {1, 1}, dilations[2] = {1, 1};
  int64_t pads[4] = {0, 0, 0, 0};  // top, left, bottom, right
  bool pointwise() const {
    return kernel[0] == 1 && kernel[1] == 1 && strides[0] == 1 && strides[1] == 1 && pads[0] == 0 &&
           pads[1] == 0 && pads[2] == 0 && pads[3] == 0;
  }
};

std::string join(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Reads and checks kernel_shape, strides, pads, dilations, group and auto_pad. "" or an error.
std::string read_conv_attrs(const OrtApi* api, const OrtKernelInfo* info, int64_t k, ConvAttrs* out) {
  std::vector<int64_t> ks, st, pd, dl;
  const bool has_k = ints_attr(api, info, "kernel_shape", &ks);
  const bool has_s = ints_attr(api, info, "strides", &st);
  const bool has_p = ints_attr(api, info, "pads", &pd);
  const bool has_d = ints_attr(api, info, "dilations", &dl);
  int64_t group = 1;
  if (int_attr(api, info, "group", &group) && group != 1)
    return "group=" + std::to_string(group) + " is not supported (SparseConv needs group 1)";
  std::string auto_pad;
  if (string_attr(api, info, "auto_pad", &auto_pad) && !auto_pad.empty() && auto_pad != "NOTSET")
    return "auto_pad=" + auto_pad + " is not supported: give explicit pads";
  size_t rank = has_k ? ks.size() : has_s ? st.size() : has_d ? dl.size() : has_p ? pd.size() / 2 : 0;
  if ((has_k || has_s || has_d || has_p) && (rank < 1 || rank > 2))
    return "SparseConv supports 1-D and 2-D convolutions (kernel_shape, strides, dilations of "
           "length 1 or 2), got kernel_shape=" + join(ks) + ", strides=" + join(st) + ", dilations=" +
           join(dl) + ", pads=" + join(pd);
  if (has_k && ks.size() != rank) return "kernel_shape " + join(ks) + " must have " + std::to_string(rank) + " entries";
  if (has_s && st.size() != rank) return "strides " + join(st) + " must have " + std::to_string(rank) + " entries";
  if (has_d && dl.size() != rank) return "dilations " + join(dl) + " must have " + std::to_string(rank) + " entries";
  if (has_p && pd.size() != 2 * rank)
    return "pads " + join(pd) + " must have " + std::to_string(2 * rank) +
           " entries (begin of each spatial axis, then end of each)";
  for (int64_t v : ks) if (v < 1) return "kernel_shape " + join(ks) + " must be >= 1";
  for (int64_t v : st) if (v < 1) return "strides " + join(st) + " must be >= 1";
  for (int64_t v : dl) if (v < 1) return "dilations " + join(dl) + " must be >= 1";
  for (int64_t v : pd) if (v < 0) return "pads " + join(pd) + " must be >= 0";
  for (int64_t v : ks) if (v > (int64_t{1} << 20)) return "kernel_shape " + join(ks) + " is too large";
  out->rank = static_cast<int>(rank);
  const int o = rank == 1 ? 1 : 0;  // 1-D: the W entries
  for (size_t a = 0; a < rank; ++a) {
    if (has_k) out->kernel[o + a] = ks[a];
    if (has_s) out->strides[o + a] = st[a];
    if (has_d) out->dilations[o + a] = dl[a];
    if (has_p) {
      out->pads[o + a] = pd[a];
      out->pads[2 + o + a] = pd[rank + a];
    }
  }
  const int64_t taps = out->kernel[0] * out->kernel[1];
  if (k % taps != 0)
    return "k=" + std::to_string(k) + " is not a multiple of kernel_shape's kh*kw=" + std::to_string(taps) +
           " (k must be C*kh*kw)";
  return "";
}

struct Kernel {
  const OrtApi* api = nullptr;
  bool conv = false;
  ConvAttrs geom;
  std::string name;
  FormatSpec spec;
  Activation act = Activation::kNone;
  bool prepacked = false;
  PackedWeight weight;
  // SparseMatMul's attention-head layouts (heads_in, heads_out, heads_out_layout; 0: none).
  int64_t heads_in = 0, heads_out = 0;
  graphprune::HeadLayout out_layout = graphprune::HeadLayout::kSD;
  // SoftmaxNanToZero (none of the weight fields are used then).
  bool softmax = false;
  int64_t axis = -1;
  // SparseConvChain / SparseMatMulChain: the second op, applied to Y.
  bool chain = false;
  FormatSpec spec2;
  Activation act2 = Activation::kNone;
  bool prepacked2 = false;
  PackedWeight weight2;
  std::mutex scratch_mu;
  graphprune::AlignedVector<float> scratch;
  graphprune::AlignedVector<float> y_scratch;  // a chain's unread Y where the chain cannot fuse

  OrtStatus* pack(const FormatSpec& fs, const OrtValue* values, const OrtValue* indices,
                  const OrtValue* row_ptr, PackedWeight* out) const {
    TensorView v, ix, rp;
    if (!values || !indices) return fail(api, name, "inputs 'values' and 'indices' are required");
    GP_RETURN_IF_ERROR(view_tensor(api, values, &v));
    GP_RETURN_IF_ERROR(view_tensor(api, indices, &ix));
    if (v.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return fail(api, name, std::string("input 'values' must be float, got ") + type_name(v.type));
    auto is_int = [](ONNXTensorElementDataType t) {
      return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    };
    if (!is_int(ix.type))
      return fail(api, name, std::string("input 'indices' must be int32 or int64, got ") + type_name(ix.type));
    IndexView iv{ix.data, ix.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ix.count};
    IndexView rv;
    if (row_ptr) {
      GP_RETURN_IF_ERROR(view_tensor(api, row_ptr, &rp));
      if (!is_int(rp.type))
        return fail(api, name, std::string("input 'row_ptr' must be int32 or int64, got ") + type_name(rp.type));
      rv = IndexView{rp.data, rp.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, rp.count};
    }
    std::string err = graphprune::pack_weight(fs, static_cast<const float*>(v.data), v.count, iv, rv, out);
    if (!err.empty()) return fail(api, name, err);
    return nullptr;
  }

  // The im2col problem of a k x k (or strided, padded) convolution; Y's shape.
  OrtStatus* conv_problem(const TensorView& x, Problem* p, std::vector<int64_t>* yshape) const {
    const int64_t taps = geom.kernel[0] * geom.kernel[1];
    const size_t rank = static_cast<size_t>(geom.rank);
    if (x.shape.size() != 2 + rank)
      return fail(api, name, "X " + join(x.shape) + " must be " + (rank == 1 ? "[batch, C, L]" : "[batch, C, H, W]") +
                                 " for kernel_shape of " + std::to_string(rank) + " entries");
    graphprune::ConvGeometry& g = p->conv;
    g.C = x.shape[1];
    g.H = rank == 1 ? 1 : x.shape[2];
    g.W = x.shape[x.shape.size() - 1];
    if (g.C * taps != spec.k)
      return fail(api, name, "X " + join(x.shape) + " has C=" + std::to_string(g.C) + " channels, but k=" +
                                 std::to_string(spec.k) + " = C*kh*kw needs C=" + std::to_string(spec.k / taps) +
                                 " for kernel_shape " + std::to_string(geom.kernel[0]) + "x" +
                                 std::to_string(geom.kernel[1]));
    g.kh = geom.kernel[0];
    g.kw = geom.kernel[1];
    g.sh = geom.strides[0];
    g.sw = geom.strides[1];
    g.dh = geom.dilations[0];
    g.dw = geom.dilations[1];
    g.pt = geom.pads[0];
    g.pl = geom.pads[1];
    const int64_t eh = g.H + geom.pads[0] + geom.pads[2] - (g.kh - 1) * g.dh;  // extent left for the strides
    const int64_t ew = g.W + geom.pads[1] + geom.pads[3] - (g.kw - 1) * g.dw;
    if (eh < 1 || ew < 1)
      return fail(api, name, "X " + join(x.shape) + " is smaller than the (dilated) kernel even with the pads");
    g.Ho = (eh - 1) / g.sh + 1;
    g.Wo = (ew - 1) / g.sw + 1;
    p->layout = Layout::kConv;
    p->batch = x.shape[0];
    p->P = g.Ho * g.Wo;
    (*yshape)[1] = spec.n;
    if (rank == 1) {
      (*yshape)[2] = g.Wo;
    } else {
      (*yshape)[2] = g.Ho;
      (*yshape)[3] = g.Wo;
    }
    return nullptr;
  }

  // SparseMatMul with heads_in / heads_out: rows b * S + s, and Y's shape.
  OrtStatus* heads_problem(const TensorView& x, Problem* p, std::vector<int64_t>* yshape) const {
    int64_t B = 0, S = 0;
    if (heads_in) {
      if (x.shape.size() != 4 || x.shape[1] != heads_in || x.shape[1] * x.shape[3] != spec.k)
        return fail(api, name, "X " + join(x.shape) + " must be [batch, heads_in = " + std::to_string(heads_in) +
                                   ", seq, " + std::to_string(spec.k / heads_in) + "] for heads_in and k = " +
                                   std::to_string(spec.k));
      B = x.shape[0];
      S = x.shape[2];
      p->x_heads = {graphprune::HeadLayout::kSD, x.shape[3], S};
    } else {
      if (x.shape.size() != 3 || x.shape[2] != spec.k)
        return fail(api, name, "X " + join(x.shape) + " must be [batch, seq, k = " + std::to_string(spec.k) +
                                   "] for heads_out");
      B = x.shape[0];
      S = x.shape[1];
    }
    p->layout = Layout::kRows;
    p->M = B * S;
    if (!heads_out) {
      *yshape = {B, S, spec.n};
      return nullptr;
    }
    const int64_t D = spec.n / heads_out;
    p->y_heads = {out_layout, D, S};
    if (out_layout == graphprune::HeadLayout::kSD) *yshape = {B, heads_out, S, D};
    else *yshape = {B, heads_out, D, S};
    return nullptr;
  }

  OrtStatus* compute_softmax(OrtKernelContext* ctx) {
    const OrtValue* xv = nullptr;
    GP_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, 0, &xv));
    if (!xv) return fail(api, name, "input X is missing");
    TensorView x;
    GP_RETURN_IF_ERROR(view_tensor(api, xv, &x));
    if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return fail(api, name, std::string("input X must be float, got ") + type_name(x.type));
    const int64_t rank = static_cast<int64_t>(x.shape.size());
    if (rank < 1 || (axis != -1 && axis != rank - 1))
      return fail(api, name, "axis=" + std::to_string(axis) + " must be the last axis of X " + join(x.shape));
    OrtValue* y = nullptr;
    GP_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 0, x.shape.data(), x.shape.size(), &y));
    void* ydata = nullptr;
    GP_RETURN_IF_ERROR(api->GetTensorMutableData(y, &ydata));
    const int64_t d = x.shape.back();
    graphprune::SoftmaxBias bias;
    GP_RETURN_IF_ERROR(softmax_bias(ctx, x.shape, &bias));
    OrtParallel par(api, ctx);
    graphprune::softmax_nan_to_zero(static_cast<const float*>(x.data), static_cast<float*>(ydata),
                                    d > 0 ? static_cast<int64_t>(x.count) / d : 0, d, par, &bias);
    return nullptr;
  }

  // SoftmaxNanToZero's optional input B, broadcast to X (numpy rules): its strides along X's
  // row axes (0 where B has size 1 or lacks the axis). No B: out->data stays null.
  OrtStatus* softmax_bias(OrtKernelContext* ctx, const std::vector<int64_t>& xshape,
                          graphprune::SoftmaxBias* out) const {
    size_t n_inputs = 0;
    GP_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &n_inputs));
    const OrtValue* bv = nullptr;
    if (n_inputs > 1) GP_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, 1, &bv));
    if (!bv) return nullptr;
    TensorView b;
    GP_RETURN_IF_ERROR(view_tensor(api, bv, &b));
    const size_t rank = xshape.size(), brank = b.shape.size();
    bool fits = b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && brank <= rank &&
                rank - 1 <= static_cast<size_t>(graphprune::kMaxSoftmaxRows);
    for (size_t i = 0; fits && i < brank; ++i) {
      const int64_t bd = b.shape[brank - 1 - i], xd = xshape[rank - 1 - i];
      fits = bd == xd || bd == 1;
    }
    if (!fits)
      return fail(api, name, "bias " + join(b.shape) + " must be float and broadcast to X " + join(xshape) +
                                 " (at most " + std::to_string(graphprune::kMaxSoftmaxRows + 1) + " axes)");
    out->data = static_cast<const float*>(b.data);
    out->per_column = brank > 0 && b.shape.back() != 1;
    out->rank = static_cast<int>(rank) - 1;
    int64_t stride = brank > 0 ? b.shape.back() : 1;
    for (int a = out->rank - 1; a >= 0; --a) {  // X's row axis a is B's axis a - (rank - brank)
      const int64_t ba = a - static_cast<int64_t>(rank - brank);
      const int64_t bd = ba >= 0 ? b.shape[static_cast<size_t>(ba)] : 1;
      out->dims[a] = xshape[static_cast<size_t>(a)];
      out->strides[a] = bd == 1 ? 0 : stride;
      stride *= bd;
    }
    return nullptr;
  }

  OrtStatus* compute(OrtKernelContext* ctx) {
    if (softmax) return compute_softmax(ctx);
    size_t n_inputs = 0;
    GP_RETURN_IF_ERROR(api->KernelContext_GetInputCount(ctx, &n_inputs));
    const OrtValue* in[kNumChainInputs] = {};
    const size_t n_expected = chain ? size_t{kNumChainInputs} : size_t{kNumInputs};
    for (size_t i = 0; i < n_expected && i < n_inputs; ++i)
      GP_RETURN_IF_ERROR(api->KernelContext_GetInput(ctx, i, &in[i]));
    if (!in[kX]) return fail(api, name, "input X is missing");

    PackedWeight local;
    const PackedWeight* w = &weight;
    if (!prepacked) {
      GP_RETURN_IF_ERROR(pack(spec, in[kValues], in[kIndices], in[kRowPtr], &local));
      w = &local;
    }

    TensorView x;
    GP_RETURN_IF_ERROR(view_tensor(api, in[kX], &x));
    if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return fail(api, name, std::string("input X must be float, got ") + type_name(x.type));
    const float* bias = nullptr;
    GP_RETURN_IF_ERROR(read_bias(api, name, in[kBias], spec.n, "bias", "n", &bias));

    Problem p;
    p.x = static_cast<const float*>(x.data);
    p.bias = bias;
    p.act = act;
    std::vector<int64_t> yshape = x.shape;
    if (!conv && (heads_in || heads_out)) {
      GP_RETURN_IF_ERROR(heads_problem(x, &p, &yshape));
      if (heads_out && in[kResidual])
        return fail(api, name, "a residual input cannot be combined with heads_out");
    } else if (!conv) {
      if (x.shape.empty() || x.shape.back() != spec.k)
        return fail(api, name, "X must have last dimension k = " + std::to_string(spec.k));
      p.layout = Layout::kRows;
      p.M = spec.k ? static_cast<int64_t>(x.count) / spec.k : 0;
      yshape.back() = spec.n;
    } else if (geom.pointwise()) {
      if (x.shape.size() < 2 || x.shape[1] != spec.k ||
          (geom.rank > 0 && x.shape.size() != static_cast<size_t>(2 + geom.rank)))
        return fail(api, name, "X " + join(x.shape) + " must be [batch, k = " + std::to_string(spec.k) +
                                   (geom.rank == 0 ? ", spatial...]" : geom.rank == 1 ? ", L]" : ", H, W]"));
      p.layout = Layout::kChannels;
      p.batch = x.shape[0];
      p.P = 1;
      for (size_t i = 2; i < x.shape.size(); ++i) p.P *= x.shape[i];
      yshape[1] = spec.n;
    } else {
      GP_RETURN_IF_ERROR(conv_problem(x, &p, &yshape));
    }
    OrtValue* y = nullptr;
    GP_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 0, yshape.data(), yshape.size(), &y));
    void* ydata = nullptr;
    if (y) GP_RETURN_IF_ERROR(api->GetTensorMutableData(y, &ydata));
    else if (!chain) return fail(api, name, "output Y is missing");
    p.y = static_cast<float*>(ydata);  // null: a chain's Y that no other node reads
    if (in[kResidual]) {
      TensorView z;
      GP_RETURN_IF_ERROR(view_tensor(api, in[kResidual], &z));
      if (z.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || z.shape != yshape)
        return fail(api, name, "residual must be float and shaped like Y " + join(yshape) +
                                   ", got " + join(z.shape));
      p.residual = static_cast<const float*>(z.data);
    }

    OrtParallel par(api, ctx);
    std::unique_lock<std::mutex> lock(scratch_mu, std::try_to_lock);
    graphprune::AlignedVector<float> own;
    if (!chain) {
      graphprune::sparse_matmul(*w, p, par, lock.owns_lock() ? &scratch : &own);
      return nullptr;
    }
    PackedWeight local2;
    const PackedWeight* w2 = &weight2;
    if (!prepacked2) {
      GP_RETURN_IF_ERROR(pack(spec2, in[kValues2], in[kValues2 + 1], in[kValues2 + 2], &local2));
      w2 = &local2;
    }
    Problem p2;
    p2.x = p.y;
    p2.act = act2;
    GP_RETURN_IF_ERROR(read_bias(api, name, in[kBias2], spec2.n, "bias2", "n2", &p2.bias));
    std::vector<int64_t> zshape = yshape;
    if (conv) {
      zshape[1] = spec2.n;
      p2.layout = Layout::kChannels;
      p2.batch = zshape[0];
      p2.P = 1;
      for (size_t i = 2; i < zshape.size(); ++i) p2.P *= zshape[i];
    } else {
      zshape.back() = spec2.n;
      p2.layout = Layout::kRows;
      p2.M = p.M;
    }
    OrtValue* z = nullptr;
    GP_RETURN_IF_ERROR(api->KernelContext_GetOutput(ctx, 1, zshape.data(), zshape.size(), &z));
    void* zdata = nullptr;
    GP_RETURN_IF_ERROR(api->GetTensorMutableData(z, &zdata));
    p2.y = static_cast<float*>(zdata);
    graphprune::AlignedVector<float> own_y;
    graphprune::sparse_matmul_chain(*w, p, *w2, p2, par, lock.owns_lock() ? &scratch : &own,
                                    lock.owns_lock() ? &y_scratch : &own_y);
    return nullptr;
  }
};

// heads_in, heads_out, heads_out_layout (see the top of this file). "" or what is wrong.
std::string read_head_attrs(const OrtApi* api, const OrtKernelInfo* info, Kernel* k, bool other_op) {
  const bool has_in = int_attr(api, info, "heads_in", &k->heads_in);
  const bool has_out = int_attr(api, info, "heads_out", &k->heads_out);
  std::string layout;
  const bool has_layout = string_attr(api, info, "heads_out_layout", &layout);
  if (!has_in && !has_out && !has_layout) return "";
  if (other_op) return "heads_in / heads_out / heads_out_layout are SparseMatMul attributes only";
  if (k->heads_in < 0 || (k->heads_in > 0 && k->spec.k % k->heads_in != 0))
    return "heads_in=" + std::to_string(k->heads_in) + " must divide k=" + std::to_string(k->spec.k);
  if (k->heads_out < 0 || (k->heads_out > 0 && k->spec.n % k->heads_out != 0))
    return "heads_out=" + std::to_string(k->heads_out) + " must divide n=" + std::to_string(k->spec.n);
  if (has_layout && layout != "bhsd" && layout != "bhds")
    return "heads_out_layout='" + layout + "' must be 'bhsd' or 'bhds'";
  if (has_layout && !k->heads_out) return "heads_out_layout needs heads_out";
  k->out_layout = layout == "bhds" ? graphprune::HeadLayout::kDS : graphprune::HeadLayout::kSD;
  return "";
}

OrtStatus* create_kernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** out) {
  const OpDef* def = reinterpret_cast<const OpDef*>(op);
  std::unique_ptr<Kernel> k(new (std::nothrow) Kernel());
  if (!k) return api->CreateStatus(ORT_FAIL, "graphprune kernels: out of memory");
  k->api = api;
  k->conv = def->conv;
  k->name = node_name(api, info);
  if (def->softmax) {
    k->softmax = true;
    int_attr(api, info, "axis", &k->axis);
    if (k->axis < -1) return fail(api, k->name, "axis=" + std::to_string(k->axis) + ": only the last axis is supported");
    *out = k.release();
    return nullptr;
  }

  std::string err = graphprune::ort::read_weight_attrs(api, info, &k->spec, &k->act);
  if (!err.empty()) return fail(api, k->name, err);
  if (k->conv) {
    err = read_conv_attrs(api, info, k->spec.k, &k->geom);
    if (!err.empty()) return fail(api, k->name, err);
  }
  err = read_head_attrs(api, info, k.get(), def->conv || def->chain);
  if (!err.empty()) return fail(api, k->name, err);

  // Pack now if the weight inputs are constant (initializers).
  const OrtValue* cv[3] = {nullptr, nullptr, nullptr};
  bool all_const = true;
  GP_RETURN_IF_ERROR(graphprune::ort::constant_inputs(api, info, kValues, 3, cv, &all_const));
  if (all_const && cv[0] && cv[1]) {
    GP_RETURN_IF_ERROR(k->pack(k->spec, cv[0], cv[1], cv[2], &k->weight));
    graphprune::attach_jit(&k->weight);
    k->prepacked = true;
  }
  if (def->chain) {
    k->chain = true;
    k->spec2 = k->spec;
    k->spec2.k = k->spec.n;
    if (!int_attr(api, info, "n2", &k->spec2.n)) return fail(api, k->name, "attribute 'n2' (int) is required");
    err = graphprune::ort::read_activation(api, info, "activation2", &k->act2);
    if (err.empty()) err = graphprune::validate_spec(k->spec2);
    if (!err.empty()) return fail(api, k->name, err);
    GP_RETURN_IF_ERROR(graphprune::ort::constant_inputs(api, info, kValues2, 3, cv, &all_const));
    if (all_const && cv[0] && cv[1]) {
      GP_RETURN_IF_ERROR(k->pack(k->spec2, cv[0], cv[1], cv[2], &k->weight2));
      graphprune::attach_jit(&k->weight2);
      k->prepacked2 = true;
    }
  }
  *out = k.release();
  return nullptr;
}

// --- OrtCustomOp callbacks ------------------------------------------------------------------------

const char* ORT_API_CALL op_name(const OrtCustomOp* op) { return reinterpret_cast<const OpDef*>(op)->name; }
const char* ORT_API_CALL op_ep(const OrtCustomOp*) { return nullptr; }  // CPU
bool is_chain(const OrtCustomOp* op) { return reinterpret_cast<const OpDef*>(op)->chain; }
bool is_softmax(const OrtCustomOp* op) { return reinterpret_cast<const OpDef*>(op)->softmax; }
// SparseConvChain's input kValues2 + i is typed like input kValues + i.
size_t base_input(size_t i) { return i >= kNumInputs ? i - (kValues2 - kValues) : i; }
size_t ORT_API_CALL op_input_count(const OrtCustomOp* op) {
  return is_softmax(op) ? 2 : is_chain(op) ? kNumChainInputs : kNumInputs;  // softmax: X, B?
}
ONNXTensorElementDataType ORT_API_CALL op_input_type(const OrtCustomOp*, size_t i) {
  return graphprune::ort::sparse_input_type(base_input(i));  // SoftmaxNanToZero: X, float
}
size_t ORT_API_CALL op_output_count(const OrtCustomOp* op) { return is_chain(op) ? 2 : 1; }
ONNXTensorElementDataType ORT_API_CALL op_output_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
OrtCustomOpInputOutputCharacteristic ORT_API_CALL op_input_char(const OrtCustomOp* op, size_t i) {
  if (is_softmax(op)) return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  return graphprune::ort::sparse_input_characteristic(base_input(i));
}
// A chain's first output may be left out (a MatMul's that only the chained one reads).
OrtCustomOpInputOutputCharacteristic ORT_API_CALL op_output_char(const OrtCustomOp* op, size_t i) {
  return is_chain(op) && i == 0 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL op_input_mem(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL op_one(const OrtCustomOp*) { return 1; }
int ORT_API_CALL op_end_version(const OrtCustomOp*) { return INT_MAX; }
void ORT_API_CALL op_destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
OrtStatusPtr ORT_API_CALL op_create_v2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                       void** kernel) {
  try {
    return create_kernel(op, api, info, kernel);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string("graphprune kernels: ") + e.what()).c_str());
  }
}
OrtStatusPtr ORT_API_CALL op_compute_v2(void* kernel, OrtKernelContext* ctx) {
  Kernel* k = static_cast<Kernel*>(kernel);
  try {
    return k->compute(ctx);
  } catch (const std::exception& e) {
    return k->api->CreateStatus(ORT_FAIL, (std::string("graphprune kernels: ") + e.what()).c_str());
  }
}

OpDef make_op(const char* name, bool conv, bool chain = false, bool softmax = false) {
  OpDef d;
  std::memset(&d, 0, sizeof(d));
  OrtCustomOp& o = d.op;
  o.version = kApiVersion;
  o.CreateKernel = nullptr;
  o.GetName = op_name;
  o.GetExecutionProviderType = op_ep;
  o.GetInputType = op_input_type;
  o.GetInputTypeCount = op_input_count;
  o.GetOutputType = op_output_type;
  o.GetOutputTypeCount = op_output_count;
  o.KernelCompute = nullptr;
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
  o.InferOutputShapeFn = nullptr;
  o.GetStartVersion = op_one;
  o.GetEndVersion = op_end_version;
  o.GetMayInplace = nullptr;
  o.ReleaseMayInplace = nullptr;
  o.GetAliasMap = nullptr;
  o.ReleaseAliasMap = nullptr;
  d.name = name;
  d.conv = conv;
  d.chain = chain;
  d.softmax = softmax;
  return d;
}

OpDef g_sparse_matmul = make_op("SparseMatMul", false);
OpDef g_sparse_conv = make_op("SparseConv", true);
OpDef g_sparse_conv_chain = make_op("SparseConvChain", true, true);
OpDef g_sparse_matmul_chain = make_op("SparseMatMulChain", false, true);
OpDef g_softmax_nan_to_zero = make_op("SoftmaxNanToZero", false, false, true);

std::mutex g_domains_mu;
std::vector<OrtCustomOpDomain*> g_domains;  // kept for the life of the process

}  // namespace

GP_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // cannot even report: nothing registered
  const OrtApi* api = api_base->GetApi(kApiVersion);
  if (api == nullptr) {
    // CreateStatus is in every API version: use the newest one this runtime offers to report.
    const OrtApi* old = nullptr;
    for (uint32_t v = kApiVersion - 1; v >= 1 && old == nullptr; --v) old = api_base->GetApi(v);
    const char* have = api_base->GetVersionString ? api_base->GetVersionString() : "unknown";
    std::string m = std::string("graphprune kernels need ONNX Runtime 1.21 or newer (C API version ") +
                    std::to_string(kApiVersion) + "); this runtime is " + (have ? have : "unknown") +
                    ": upgrade onnxruntime";
    return old ? old->CreateStatus(ORT_NOT_IMPLEMENTED, m.c_str()) : nullptr;
  }
  // GRAPHPRUNE_KERNELS_ISA=generic|avx2|avx512 forces a code path (tests, comparisons); unset:
  // the best this CPU supports. Process-wide, decided at each registration.
  const char* isa = std::getenv("GRAPHPRUNE_KERNELS_ISA");
  if (!graphprune::force_isa(isa ? isa : ""))
    return api->CreateStatus(ORT_INVALID_ARGUMENT,
                             (std::string("graphprune kernels: GRAPHPRUNE_KERNELS_ISA=") + isa +
                              " is not available on this CPU (generic, avx2, avx512)").c_str());
  std::lock_guard<std::mutex> lock(g_domains_mu);
  OrtCustomOpDomain* domain = nullptr;
  GP_RETURN_IF_ERROR(api->CreateCustomOpDomain(kDomain, &domain));
  OrtStatus* st = api->CustomOpDomain_Add(domain, &g_sparse_matmul.op);
  if (!st) st = api->CustomOpDomain_Add(domain, &g_sparse_conv.op);
  if (!st) st = api->CustomOpDomain_Add(domain, &g_sparse_conv_chain.op);
  if (!st) st = api->CustomOpDomain_Add(domain, &g_sparse_matmul_chain.op);
  if (!st) st = api->CustomOpDomain_Add(domain, &g_softmax_nan_to_zero.op);
  if (!st) st = api->AddCustomOpDomain(options, domain);
  if (st) {
    api->ReleaseCustomOpDomain(domain);
    return st;
  }
  g_domains.push_back(domain);
  return nullptr;
}

// For the Python side (ctypes): the code path in use and the API version targeted.
GP_EXPORT const char* graphprune_kernels_isa() { return graphprune::isa_name(); }
// Column ranges multiplied by generated code (jit.cpp) so far in this process: tests check that
// the path they mean to cover ran.
GP_EXPORT int64_t graphprune_kernels_jit_calls() { return graphprune::jit_calls(); }
GP_EXPORT int graphprune_kernels_api_version() { return static_cast<int>(kApiVersion); }
