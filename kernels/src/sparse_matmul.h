// graphprune sparse kernels: weight packing and compute (no ONNX Runtime types in here).
//
// Y[M, N] = X[M, K] @ W[K, N] (+ bias[N]) (+ activation), W sparse.
//
// ONNX-level formats of W (what graphprune.kernels.pack writes; see docs in pack.py):
//   bsr : scipy's BSR of W [K, N] with blocks of block_rows (along K) x block_cols (along N):
//         values [nnzb, br, bc], indices [nnzb] = block column, row_ptr [ceil(K/br) + 1].
//         Blocks overhanging K or N hold zeros there.
//   csr : scipy's CSR of W (bsr with 1x1 blocks): values [nnz], indices [nnz] = column n,
//         row_ptr [K + 1].
//   nm  : N:M along K for every output column: W^T [N, K] split in groups of m consecutive k
//         (the last group padded with zeros); values [N, G, n_keep], indices [N, G, n_keep] the
//         absolute k of each kept weight (k >= K only in the padded last group, value 0).
//         No row_ptr.
// Internally every format becomes one layout: for each output block column j (bc columns), the
// non-zero K-blocks (first row k0, values [bc][br], k fastest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace graphprune {

enum class Activation : int { kNone = 0, kRelu = 1, kGelu = 2 };

struct FormatSpec {
  std::string format;  // "bsr" | "csr" | "nm"
  int64_t k = 0, n = 0;
  int br = 1, bc = 1;        // block rows (along K) x block cols (along N)
  int nm_n = 2, nm_m = 4;    // N:M
};

// 64-byte aligned storage for the arrays the kernels stream through.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = ::operator new(n * sizeof(T), std::align_val_t(64));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

constexpr int64_t kPanelRows = 512;
// Floats of zeros after PackedWeight::vals (a vector read from the last block stays inside).
constexpr size_t kValsTailPad = 16;

// 4x1 / 8x1 blocks (bc == 1) once more, for the outer-product path (one vector of rows, see
// sparse_matmul): tile by tile of tile_cols output columns, the tile's blocks block row by
// block row ("groups": the blocks of one k0).
struct OuterLayout {
  int64_t tile_cols = 0;
  std::vector<int64_t> tile_ptr;    // ntiles + 1 offsets into the groups
  AlignedVector<int32_t> group_k0;  // first k of each group
  std::vector<int64_t> group_ptr;   // ngroups + 1 offsets into col / vals
  AlignedVector<int32_t> col;       // output column of each block, relative to its tile
  AlignedVector<float> vals;        // [nnzb][br]
  bool empty() const { return tile_ptr.empty(); }
  int64_t ntiles() const { return static_cast<int64_t>(tile_ptr.size()) - 1; }
};

// Machine code written for one unstructured (1x1 block) weight (jit.cpp; AVX-512F, x86-64
// Linux): group g multiplies a packed chunk of 16 rows by output columns [g * group_cols,
// (g + 1) * group_cols) into a tile [columns][16]: fn[g](xt, w.data() + w_offset[g], tile).
constexpr int kJitGroupCols = 30;  // accumulator registers (zmm0-29; zmm31 holds X)
// Code is written only for weights with at least this many non-zeros per output column on
// average. With fewer, the 16-row chunks' own costs (packing, one 64-byte run per output channel,
// the groups' zeroing and stores) outweigh the saving: bench/kernels.py conv --batch 16 at 90 %,
// 64->256 1x1 on 56x56 (6 per column) 2.46 -> 2.95 ms, 64->64 3x3 (58) 5.9 -> 7.0 ms;
// 128->128 3x3 (115) 4.68 -> 4.36 ms, 1024->256 1x1 (102) 2.50 -> 1.73 ms.
constexpr int64_t kJitMinColumnNnz = 64;
using JitGroupFn = void (*)(const float* xt, const float* w, float* out);
struct JitKernel {
  int64_t group_cols = kJitGroupCols;
  std::vector<JitGroupFn> fn;
  std::vector<int64_t> w_offset;
  AlignedVector<float> w;  // the weights in the order the code reads them
  void* code = nullptr;
  size_t code_bytes = 0;
  JitKernel() = default;
  JitKernel(const JitKernel&) = delete;
  JitKernel& operator=(const JitKernel&) = delete;
  ~JitKernel();
};

struct PackedWeight {
  int64_t K = 0, N = 0;
  int br = 1, bc = 1;
  int64_t Kp = 0;                 // K rounded up to a multiple of br
  int64_t nbc = 0;                // output block columns: ceil(N / bc)
  std::vector<int64_t> col_ptr;   // nbc + 1 offsets into k0 (in blocks)
  AlignedVector<int32_t> k0;      // first k of each block
  AlignedVector<float> vals;      // [nnzb][bc][br]
  // K panels of kPanelRows rows (large K): panel_ptr[j * (npanels + 1) + p] is the first block
  // of column j with k0 >= p * kPanelRows (p = npanels: the column's end).
  int64_t npanels = 1;
  std::vector<int64_t> panel_ptr;
  OuterLayout outer;              // bsr 4x1 / 8x1 only
  std::shared_ptr<const JitKernel> jit;  // 1x1 blocks where attach_jit could write code
  int64_t nnzb() const { return static_cast<int64_t>(k0.size()); }
};

// A view of an integer tensor that is int32 or int64.
struct IndexView {
  const void* data = nullptr;
  bool is64 = false;
  size_t size = 0;
  int64_t operator[](size_t i) const {
    return is64 ? static_cast<const int64_t*>(data)[i] : static_cast<const int32_t*>(data)[i];
  }
};

// Validates the ONNX-level format and builds the internal layout. Returns "" or an error.
std::string validate_spec(const FormatSpec& spec);
std::string pack_weight(const FormatSpec& spec, const float* values, size_t n_values,
                        IndexView indices, IndexView row_ptr, PackedWeight* out);

// Writes w's machine code (w->jit) where it applies: 1x1 blocks, kJitMinColumnNnz, a CPU with
// AVX-512F, x86-64 Linux, GRAPHPRUNE_KERNELS_JIT not "0"/"off", code within a size cap.
// Otherwise w->jit stays empty and the column kernel multiplies w. For constant weights (packed
// once per session).
void attach_jit(PackedWeight* w);
// How many column ranges the generated code has multiplied in this process (for tests).
int64_t jit_calls();
extern int64_t g_jit_calls;

// Runs fn(data, i) for i in [0, n), possibly in parallel.
class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual void run(size_t n, void (*fn)(void*, size_t), void* data) = 0;
};

class SerialParallel : public Parallel {
 public:
  void run(size_t n, void (*fn)(void*, size_t), void* data) override {
    for (size_t i = 0; i < n; ++i) fn(data, i);
  }
};

// Layout of the activation operand and result.
//   kRows: X [M, K] row-major, Y [M, N] row-major (MatMul).
//   kChannels: X [B, K, P], Y [B, N, P] (1x1 Conv on NCHW, P = H*W): M = B*P.
//   kConv: X [B, C, H, W], Y [B, N, P] with P = Ho*Wo (k x k Conv on NCHW through im2col):
//          K = C*kh*kw ordered (c, i, j), M = B*P; geometry in Problem::conv.
enum class Layout : int { kRows = 0, kChannels = 1, kConv = 2 };

// A 2-D convolution's geometry (ONNX Conv semantics, group 1). 1-D: H = kh = 1.
struct ConvGeometry {
  int64_t C = 0, H = 0, W = 0;   // input channels and spatial size
  int64_t kh = 1, kw = 1;        // kernel
  int64_t sh = 1, sw = 1;        // strides
  int64_t dh = 1, dw = 1;        // dilations
  int64_t pt = 0, pl = 0;        // pads at the top and on the left (bottom/right only set Ho, Wo)
  int64_t Ho = 0, Wo = 0;        // output spatial size
};

// kRows only: an attention projection's heads, laid out by the op itself instead of by the
// Reshape -> Transpose (or Transpose -> Reshape) around it. Rows m = b * seq + s, columns of the
// merged side c = h * head_dim + d.
//   y: kSD writes Y [B, H, S, D] (Transpose perm 0,2,1,3 of the split Y), kDS Y [B, H, D, S]
//      (perm 0,2,3,1: a key already transposed for Q K^T).
//   x: kSD reads X [B, H, S, D] (the heads of an attention output, merged into K = H * D).
enum class HeadLayout : int { kNone = 0, kSD = 1, kDS = 2 };

struct Heads {
  HeadLayout layout = HeadLayout::kNone;
  int64_t dim = 0;  // D
  int64_t seq = 0;  // S
  bool none() const { return layout == HeadLayout::kNone; }
};

// Row m of an X given as heads (h.layout kSD, K = H * D): where its head-0 run of D floats
// starts; head j's run is j * seq * dim floats further on.
inline const float* head_row(const Heads& h, const float* x, int64_t K, int64_t m) {
  return x + (m / h.seq) * K * h.seq + (m % h.seq) * h.dim;
}

// Where element (row m, column n) of an [M, N] result lies in head layout h (not kNone).
inline int64_t head_offset(const Heads& h, int64_t N, int64_t m, int64_t n) {
  const int64_t b = m / h.seq, s = m % h.seq, head = n / h.dim, d = n % h.dim;
  const int64_t plane = b * (N / h.dim) + head;
  return h.layout == HeadLayout::kSD ? (plane * h.seq + s) * h.dim + d : (plane * h.dim + d) * h.seq + s;
}

struct Problem {
  Layout layout = Layout::kRows;
  const float* x = nullptr;
  float* y = nullptr;
  int64_t M = 0;        // rows (kRows)
  int64_t batch = 1;    // B (kChannels)
  int64_t P = 0;        // spatial size (kChannels), output spatial size (kConv)
  ConvGeometry conv;    // kConv
  const float* bias = nullptr;  // [N] or null
  // Added before the activation (a residual connection), laid out like y; or null.
  const float* residual = nullptr;
  Activation act = Activation::kNone;
  Heads x_heads, y_heads;  // kRows only; no residual with y_heads
};

// scratch: grown as needed, reused between calls by the caller.
void sparse_matmul(const PackedWeight& w, const Problem& p, Parallel& par,
                   AlignedVector<float>* scratch);

// A convolution then a pointwise one on its output (p as for sparse_matmul, kConv or kChannels;
// p2 kChannels), or two MatMuls (both kRows, p2.M == p.M): Z = act2(Y @ W2 + bias2), p2.x ==
// p.y. Where both take the chunk-task path with the same chunks, each chunk of Y is multiplied
// by W2 while it is still in cache, instead of being read back from memory by a second pass.
// Y is written whole unless p.y is null (no other node reads it). Otherwise the two passes, one
// after the other (through y_scratch, grown as needed, if p.y is null). No head layouts here
// (the operators refuse them on chain nodes).
void sparse_matmul_chain(const PackedWeight& w, const Problem& p, const PackedWeight& w2,
                         const Problem& p2, Parallel& par, AlignedVector<float>* scratch,
                         AlignedVector<float>* y_scratch);

// An additive bias of softmax's input broadcast to X [rows..., d] (an attention mask, added by
// the op instead of by an Add over the whole score tensor): row r's bias starts at
// data + sum over X's row axes a of index_a(r) * strides[a] (0 where the bias has size 1), and
// has d floats (per_column) or one value for the whole row.
constexpr int kMaxSoftmaxRows = 8;  // row axes of X at most
struct SoftmaxBias {
  const float* data = nullptr;
  bool per_column = true;
  int rank = 0;  // X's row axes (its rank - 1)
  int64_t dims[kMaxSoftmaxRows] = {};
  int64_t strides[kMaxSoftmaxRows] = {};
};

// y = softmax(x (+ bias)) over rows of d floats, where a row that would give NaN (a NaN or +inf
// in it, or all -inf) gives zeros: ONNX (Add ->) Softmax -> IsNaN -> Where(isnan, 0, softmax),
// the guard torch's exporter writes after every attention softmax, in one pass.
void softmax_nan_to_zero(const float* x, float* y, int64_t rows, int64_t d, Parallel& par,
                         const SoftmaxBias* bias = nullptr);

// "avx512", "avx2" or "generic": the code path picked at load time.
const char* isa_name();
// Forces a code path ("generic", "avx2", "avx512"); returns false if not available here.
bool force_isa(const char* name);

}  // namespace graphprune
