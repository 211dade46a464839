// Work splitting, scratch buffers and run-time ISA dispatch for the sparse kernels.
//
// The hot loops (kernels_body.inc) are compiled three times on x86-64: generic (SSE2, 4-float
// vectors), AVX2+FMA (8 floats) and AVX-512F (16 floats; 8 for small M), each in its own
// namespace under a target pragma. The widest one this CPU supports is picked when the library is
// loaded (__builtin_cpu_supports); GRAPHPRUNE_KERNELS_ISA=generic|avx2|avx512 forces one.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sparse_matmul.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>  // kernels_body.inc: masked loads/stores, streaming stores (AVX2, AVX-512)
#endif

namespace graphprune {
namespace {

constexpr int kTileCols = 16;           // output columns per epilogue/store tile
constexpr int64_t kTaskWork = 1 << 16;  // multiply-add lanes per parallel task, roughly
constexpr int64_t kRowTaskWork = 1 << 15;
constexpr int64_t kMaxTasks = 256;
// Per-task column accumulators when K has several panels (see xt_range): at most this much.
constexpr int64_t kAccBytes = 64 * 1024;
// A packed X chunk up to this size is read whole for every column (it stays in L2); a larger one
// panel by panel.
constexpr int64_t kChunkBytes = 384 * 1024;
// Convolutions (im2col): the packed chunks of one wave (packed, then multiplied, then the next
// wave) take about this much scratch, at least kMinWaveChunks chunks; so the scratch is bounded
// by the weight's K, not by the image size.
constexpr int64_t kWaveBytes = 1024 * 1024;
constexpr int64_t kMinWaveChunks = 2;
// Convolutions: a chunk's im2col is split into channel slices (parallel pack tasks) when a wave
// has fewer than this many chunks.
constexpr int64_t kMinPackTasks = 8;
constexpr int64_t kMinSliceRows = 64;  // K rows per pack slice, at least
// From this many chunks on, a task packs and multiplies whole chunks (see sparse_matmul).
constexpr int64_t kChunkTaskMin = 8;
// Chunk tasks take up to kChunkGroup consecutive chunks each (the next one's input is prefetched
// while one is multiplied), keeping at least kChunkGroupMinTasks tasks for the threads to share.
constexpr int64_t kChunkGroup = 4;
constexpr int64_t kChunkGroupMinTasks = 32;
// Outputs of at least this size (chunk tasks: convs, and MatMul with many rows) are written with
// streaming stores (AVX-512, AVX2), which skip reading Y's lines into cache before overwriting
// them: an output this large is evicted before the next layer reads it anyway. ResNet-50 at
// batch 16, 90 % 1x4, 2 threads (A/B by hand): 64->256 1x1 on 56x56 2.88 -> 1.44 ms; whole model
// 125.8 -> 113-120 ms with a threshold of 8 or 24 MiB.
constexpr int64_t kStreamBytes = int64_t{16} << 20;
// SoftmaxNanToZero: about this many floats per parallel task.
constexpr int64_t kSoftmaxTaskFloats = int64_t{1} << 15;
// 4x1 / 8x1 MatMul: interleaved one-vector chunks up to this size (see sparse_matmul).
constexpr int64_t kInterleaveChunkBytes = 64 * 1024;

// Very small M: the row path (vectorised along the blocks) beats the M-vectorised path for
// blocks that are long along K (measured on Zen 4, 768x3072 at 90 % sparsity).
bool use_row_path(int br, int bc, int64_t M) {
  if (br * bc == 1) return false;
  if (br == 1) return M <= 1;
  return M <= 2;  // 8x1 at M = 3: the outer-product path is faster
}

struct XTJob {
  const PackedWeight* w = nullptr;
  const Problem* p = nullptr;
  int vl = 0, nv = 0;
  // mb: floats per packed row of this chunk (nv vectors); pitch: where chunks start, and the
  // size of their slots in xt (mb of a full chunk). mb is narrowed for an image's last, partial
  // chunk (see narrow_partial_chunk).
  int64_t mb = 0, pitch = 0, nchunks = 0, chunks_per_image = 1;
  float* xt = nullptr;       // packed chunks chunk0, chunk0 + 1, ... (one wave)
  int64_t chunk0 = 0;        // first chunk of the wave in xt
  int64_t group = 1;         // chunk tasks: consecutive chunks per task
  int64_t pack_slices = 1;   // kConv: pack tasks per chunk (channel slices)
  const int64_t* range_start = nullptr;
  int64_t nranges = 1;
  bool panels = false;  // K panel by K panel (w->npanels > 1)
  bool interleave = false;  // 4x1 / 8x1 rows: chunks in pack_rows_interleaved's layout
  bool jit = false;         // chunks of 16 rows multiplied by w->jit's code (see use_jit)
  bool stream = false;      // chunk tasks: streaming stores into Y (kStreamBytes)
  int64_t prefetch_end = 0;  // chunk tasks: the input of chunks below it may be prefetched
  // sparse_matmul_chain: the second op's job, run on each finished chunk of Y, and (in a chunk
  // task) the buffer that store_tile fills with that chunk, in the packed-chunk layout.
  const XTJob* chain = nullptr;
  float* chain_xt = nullptr;

  void chunk_rows(int64_t c, int64_t* r0, int64_t* valid) const {
    if (p->layout == Layout::kRows) {
      *r0 = c * pitch;
      *valid = std::min(mb, p->M - *r0);
    } else {
      const int64_t p0 = (c % chunks_per_image) * pitch;
      *r0 = p0;
      *valid = std::min(mb, p->P - p0);
    }
  }
  void chunk_image(int64_t c, int64_t* img, int64_t* p0) const {
    *img = c / chunks_per_image;
    *p0 = (c % chunks_per_image) * pitch;
  }
  float* chunk_xt(int64_t c) const { return xt + (c - chunk0) * w->Kp * pitch; }
};

// softmax_nan_to_zero: rows [t * per_task, (t + 1) * per_task) per task.
struct SoftmaxJob {
  const float* x = nullptr;
  float* y = nullptr;
  int64_t rows = 0, d = 0, per_task = 1;
  const SoftmaxBias* bias = nullptr;
};

struct RowJob {
  const PackedWeight* w = nullptr;
  const Problem* p = nullptr;
  const float* xpad = nullptr;
  const int64_t* range_start = nullptr;
};

// Scratch of the calling thread (ORT's pool threads live as long as the session's pool):
// per-task column accumulators (several K panels) and, in chunk tasks, the packed X chunk.
// One buffer per use: a chunk task holds its packed chunk while the K-panel path inside it
// needs the accumulators.
template <int Use>
float* thread_scratch(size_t n) {
  thread_local AlignedVector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}
float* task_buffer(size_t n) { return thread_scratch<0>(n); }
float* chunk_buffer(size_t n) { return thread_scratch<1>(n); }
float* phase_buffer(size_t n) { return thread_scratch<2>(n); }  // stride-2 im2col (kernels_body)
float* chain_buffer(size_t n) { return thread_scratch<3>(n); }  // sparse_matmul_chain's Y chunk

namespace isa_generic {
#define GP_VL 4
#define GP_VL_HALF 0
#include "kernels_body.inc"
#undef GP_VL
#undef GP_VL_HALF
}  // namespace isa_generic

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GP_HAVE_X86_DISPATCH 1

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace isa_avx2 {
#define GP_VL 8
#define GP_VL_HALF 4
#include "kernels_body.inc"
#undef GP_VL
#undef GP_VL_HALF
}  // namespace isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(GP_ENABLE_AVX512)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif
namespace isa_avx512 {
#define GP_VL 16
#define GP_VL_HALF 8
#include "kernels_body.inc"
#undef GP_VL
#undef GP_VL_HALF
}  // namespace isa_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // GP_ENABLE_AVX512
#endif  // x86-64

struct Isa {
  const char* name;
  int vl, vl_half;
  int nv_max_bc4;  // register budget: 4 output columns x nv vectors of accumulators
  void (*pack)(void*, size_t);
  void (*compute)(void*, size_t);
  void (*row)(void*, size_t);
  void (*chunk)(void*, size_t);
  void (*outer)(void*, size_t);
  void (*softmax)(void*, size_t);
};

const Isa kGeneric = {"generic", 4, 0, 2, isa_generic::xt_pack_task, isa_generic::xt_compute_task,
                      isa_generic::row_task, isa_generic::chunk_task, isa_generic::outer_task,
                      isa_generic::softmax_task};
#ifdef GP_HAVE_X86_DISPATCH
const Isa kAvx2 = {"avx2", 8, 4, 2, isa_avx2::xt_pack_task, isa_avx2::xt_compute_task,
                   isa_avx2::row_task, isa_avx2::chunk_task, isa_avx2::outer_task,
                   isa_avx2::softmax_task};
#ifdef GP_ENABLE_AVX512
const Isa kAvx512 = {"avx512", 16, 8, 4, isa_avx512::xt_pack_task, isa_avx512::xt_compute_task,
                     isa_avx512::row_task, isa_avx512::chunk_task, isa_avx512::outer_task,
                     isa_avx512::softmax_task};
#endif
#endif

const Isa* lookup(const char* name, bool check_cpu) {
  if (std::strcmp(name, "generic") == 0) return &kGeneric;
#ifdef GP_HAVE_X86_DISPATCH
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(name, "avx2") == 0) return (!check_cpu || avx2) ? &kAvx2 : nullptr;
#ifdef GP_ENABLE_AVX512
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (std::strcmp(name, "avx512") == 0) return (!check_cpu || avx512) ? &kAvx512 : nullptr;
#endif
#endif
  return nullptr;
}

const Isa* detect() {
  const char* forced = std::getenv("GRAPHPRUNE_KERNELS_ISA");
  if (forced && *forced) {
    const Isa* isa = lookup(forced, true);
    if (isa) return isa;
  }
#ifdef GP_HAVE_X86_DISPATCH
#ifdef GP_ENABLE_AVX512
  if (const Isa* isa = lookup("avx512", true)) return isa;
#endif
  if (const Isa* isa = lookup("avx2", true)) return isa;
#endif
  return &kGeneric;
}

std::atomic<const Isa*> g_isa{detect()};

// Splits block columns into `parts` ranges of about equal cost (blocks + per-column overhead).
void balanced_ranges(const PackedWeight& w, int64_t parts, std::vector<int64_t>* out) {
  const int64_t nbc = w.nbc;
  const int64_t per_col = 2;  // in blocks: tile/epilogue overhead of a column
  const int64_t total = w.nnzb() + per_col * nbc;
  out->assign(static_cast<size_t>(parts) + 1, nbc);
  (*out)[0] = 0;
  int64_t j = 0;
  for (int64_t r = 1; r < parts; ++r) {
    const int64_t target = total * r / parts;
    while (j < nbc && w.col_ptr[static_cast<size_t>(j)] + per_col * j < target) ++j;
    (*out)[static_cast<size_t>(r)] = j;
  }
}

// Splits the block columns into at least `wanted` ranges (more with K panels, whose per-range
// accumulators, range columns x mb floats, must stay within kAccBytes; at most one per block
// column) and points the job at them.
void split_columns(const PackedWeight& w, int64_t wanted, XTJob* job, std::vector<int64_t>* ranges) {
  int64_t n = wanted;
  if (job->panels)
    n = std::max(n, (w.nbc * w.bc * job->mb * static_cast<int64_t>(sizeof(float)) + kAccBytes - 1) /
                        kAccBytes);
  n = std::max<int64_t>(1, std::min(n, w.nbc));
  balanced_ranges(w, n, ranges);
  job->range_start = ranges->data();
  job->nranges = n;
}

bool uses_panels(const PackedWeight& w, int64_t mb);

// Whether w's generated code (jit.cpp; written only for weights with enough non-zeros per
// column, see kJitMinColumnNnz) multiplies it: it exists, this is the AVX-512 copy, there is at
// least one full chunk of 16 rows (pixels) and a chunk fits without K panels (the code reads all
// of K).
constexpr int64_t kJitMinRows = 16;
bool use_jit(const Isa& isa, const PackedWeight& w, int64_t rows) {
  return w.jit && isa.vl == 16 && rows >= kJitMinRows && !uses_panels(w, 16);
}

// Vector width and vectors of rows (pixels) per chunk for `rows` rows.
void pick_vectors(const Isa& isa, const PackedWeight& w, int64_t rows, int* vl, int64_t* nv) {
  if (use_jit(isa, w, rows)) {  // one vector: the code's X row is one register
    *vl = 16;
    *nv = 1;
    return;
  }
  int v = isa.vl;
  if (isa.vl_half && rows <= isa.vl_half) v = isa.vl_half;
  int64_t n = (rows + v - 1) / v;
  n = n >= 3 ? 4 : n;
  if (w.bc == 4) n = std::min<int64_t>(n, isa.nv_max_bc4);
  *vl = v;
  *nv = n;
}

// Whether a chunk is multiplied K panel by K panel: only when it has several panels and its
// packed rows would not fit kChunkBytes at once.
bool uses_panels(const PackedWeight& w, int64_t mb) {
  return w.npanels > 1 && w.Kp * mb * static_cast<int64_t>(sizeof(float)) > kChunkBytes;
}

// The chunk-task settings shared by sparse_matmul and sparse_matmul_chain: one column range,
// the chunks per task, streaming stores for a large Y.
void setup_chunk_tasks(const PackedWeight& w, int64_t M, XTJob* job, std::vector<int64_t>* ranges) {
  split_columns(w, 1, job, ranges);
  job->group = std::max<int64_t>(1, std::min(kChunkGroup, job->nchunks / kChunkGroupMinTasks));
  job->stream = M * w.N * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
}

void run_tasks(Parallel& par, size_t n, void (*fn)(void*, size_t), void* data) {
  if (n == 1) {
    fn(data, 0);
  } else {
    par.run(n, fn, data);
  }
}

}  // namespace

const char* isa_name() { return g_isa.load()->name; }

bool force_isa(const char* name) {
  const Isa* isa = (name == nullptr || *name == '\0') ? detect() : lookup(name, true);
  if (!isa) return false;
  g_isa.store(isa);
  return true;
}

void sparse_matmul(const PackedWeight& w, const Problem& p, Parallel& par,
                   AlignedVector<float>* scratch) {
  const Isa& isa = *g_isa.load();
  const int64_t N = w.N, K = w.K, Kp = w.Kp;
  const int64_t M = p.layout == Layout::kRows ? p.M : p.batch * p.P;
  if (M <= 0 || N <= 0) return;
  const int64_t bs = static_cast<int64_t>(w.br) * w.bc;
  const int64_t col_cost = w.nnzb() * bs + 2 * w.nbc * w.bc;  // multiply-adds per row
  std::vector<int64_t> ranges;

  if (p.layout == Layout::kRows && use_row_path(w.br, w.bc, p.M)) {
    const size_t need = static_cast<size_t>(p.M * Kp);
    if (scratch->size() < need) scratch->resize(need);
    float* xpad = scratch->data();
    for (int64_t m = 0; m < p.M; ++m) {
      if (p.x_heads.none()) {
        std::memcpy(xpad + m * Kp, p.x + m * K, static_cast<size_t>(K) * sizeof(float));
      } else {  // row m of X [B, H, S, D]: one run of D floats per head
        const int64_t D = p.x_heads.dim, S = p.x_heads.seq;
        const float* row = head_row(p.x_heads, p.x, K, m);
        for (int64_t h = 0; h < K / D; ++h)
          std::memcpy(xpad + m * Kp + h * D, row + h * S * D, static_cast<size_t>(D) * sizeof(float));
      }
      std::fill(xpad + m * Kp + K, xpad + (m + 1) * Kp, 0.0f);
    }
    const int64_t ntasks = std::max<int64_t>(
        1, std::min<int64_t>({p.M * col_cost / kRowTaskWork, w.nbc, int64_t{64}}));
    balanced_ranges(w, ntasks, &ranges);
    RowJob job;
    job.w = &w;
    job.p = &p;
    job.xpad = xpad;
    job.range_start = ranges.data();
    run_tasks(par, static_cast<size_t>(ntasks), isa.row, &job);
    return;
  }

  // Vectorised over rows of X (over spatial positions for the channel layout).
  const int64_t rows = p.layout == Layout::kRows ? p.M : p.P;
  int vl = 0;
  int64_t nv = 0;
  pick_vectors(isa, w, rows, &vl, &nv);
  // 4x1 / 8x1 MatMul with one vector of rows: outer products, tile of output columns by tile
  // (see outer_tile). By hand on Zen 5, one thread, 90 %, 768x3072: 8x1 at M = 3..16 on AVX2
  // and AVX-512 46-63 us against 54-127 us for the column path; 4x1 only gains with 16-float
  // vectors (M = 16: 78 against 92 us; with 8 floats 79 against 52-59 us).
  const bool outer = p.layout == Layout::kRows && !w.outer.empty() && rows <= vl &&
                     (w.br == 8 || vl >= 16);
  // Column blocks (4x1, 8x1) of MatMul: chunks of one vector of rows, interleaved (one weight
  // load per block), where such a chunk stays near L1. With a larger K the weights, streamed
  // once per chunk, cost more than that saves (measured on Zen 5: 768x768 at M = 128, 90 %:
  // x2.2-2.7 -> x3.0-3.7; 3072x768: x3.5 -> x3.0, so not there).
  const bool interleave = !outer && p.layout == Layout::kRows && p.x_heads.none() && w.bc == 1 &&
                          (w.br == 4 || w.br == 8) && w.br <= vl &&
                          w.Kp * vl * static_cast<int64_t>(sizeof(float)) <= kInterleaveChunkBytes;
  if (interleave) nv = 1;
  const int64_t mb = nv * vl;

  XTJob job;
  job.w = &w;
  job.p = &p;
  job.vl = vl;
  job.nv = static_cast<int>(nv);
  job.mb = job.pitch = mb;
  job.interleave = interleave;
  if (p.layout == Layout::kRows) {
    job.nchunks = (p.M + mb - 1) / mb;
  } else {
    job.chunks_per_image = (p.P + mb - 1) / mb;
    job.nchunks = p.batch * job.chunks_per_image;
  }
  job.panels = uses_panels(w, mb);
  job.jit = use_jit(isa, w, rows);

  // Many chunks: one task per chunk packs it into its thread's buffer and runs every column
  // on it while it is in cache. Packing every chunk first wrote a copy of X (the size of X for
  // MatMul and 1x1 convs, kh*kw times it for im2col) and read it back from memory: at batch
  // 16 a ResNet-50 activation is 51 MB.
  if (job.nchunks >= kChunkTaskMin) {
    setup_chunk_tasks(w, M, &job, &ranges);
    const int64_t ntasks = (job.nchunks + job.group - 1) / job.group;
    run_tasks(par, static_cast<size_t>(ntasks), isa.chunk, &job);
    return;
  }

  // Waves of chunks: all of them at once for MatMul and 1x1 Conv (X is at most copied); for
  // im2col, as many as fit in kWaveBytes (equal waves).
  const int64_t chunk_floats = Kp * mb;
  int64_t per_wave = job.nchunks;
  if (p.layout == Layout::kConv) {
    per_wave = std::max(kMinWaveChunks, kWaveBytes / (chunk_floats * static_cast<int64_t>(sizeof(float))));
    per_wave = std::min(per_wave, job.nchunks);
    const int64_t nwaves = (job.nchunks + per_wave - 1) / per_wave;
    per_wave = (job.nchunks + nwaves - 1) / nwaves;
    const int64_t C = p.conv.C;
    const int64_t max_slices = std::max<int64_t>(1, std::min(C, K / kMinSliceRows));
    job.pack_slices = std::min(max_slices, (kMinPackTasks + per_wave - 1) / per_wave);
  }
  const size_t need = static_cast<size_t>(per_wave * chunk_floats);
  if (scratch->size() < need) scratch->resize(need);
  job.xt = scratch->data();
  if (outer) {  // the one chunk, then the tiles of output columns
    isa.pack(&job, 0);
    run_tasks(par, static_cast<size_t>(w.outer.ntiles()), isa.outer, &job);
    return;
  }

  const int64_t padded_rows = per_wave * mb;
  const bool pack_parallel = padded_rows * K >= 4 * kTaskWork;
  const int64_t work = padded_rows * col_cost;
  const int64_t ntasks = std::max<int64_t>(1, std::min<int64_t>(work / kTaskWork, kMaxTasks));
  split_columns(w, (ntasks + per_wave - 1) / per_wave, &job, &ranges);
  const int64_t nranges = job.nranges;

  for (int64_t c0 = 0; c0 < job.nchunks; c0 += per_wave) {
    const int64_t nc = std::min(per_wave, job.nchunks - c0);
    job.chunk0 = c0;
    const int64_t pack_tasks = nc * job.pack_slices;
    if (!pack_parallel) {
      for (int64_t t = 0; t < pack_tasks; ++t) isa.pack(&job, static_cast<size_t>(t));
    } else {
      run_tasks(par, static_cast<size_t>(pack_tasks), isa.pack, &job);
    }
    run_tasks(par, static_cast<size_t>(nc * nranges), isa.compute, &job);
  }
}

void softmax_nan_to_zero(const float* x, float* y, int64_t rows, int64_t d, Parallel& par,
                         const SoftmaxBias* bias) {
  if (rows <= 0 || d <= 0) return;
  SoftmaxJob job;
  job.bias = bias && bias->data ? bias : nullptr;
  job.x = x;
  job.y = y;
  job.rows = rows;
  job.d = d;
  job.per_task = std::max<int64_t>(1, kSoftmaxTaskFloats / d);
  const int64_t ntasks = (rows + job.per_task - 1) / job.per_task;
  run_tasks(par, static_cast<size_t>(ntasks), g_isa.load()->softmax, &job);
}

void sparse_matmul_chain(const PackedWeight& w, const Problem& p, const PackedWeight& w2,
                         const Problem& p2, Parallel& par, AlignedVector<float>* scratch,
                         AlignedVector<float>* y_scratch) {
  const Isa& isa = *g_isa.load();
  const bool rows = p.layout == Layout::kRows;
  const int64_t M = rows ? p.M : p.batch * p.P;
  int vl = 0, vl2 = 0;
  int64_t nv = 0, nv2 = 0;
  pick_vectors(isa, w, rows ? p.M : p.P, &vl, &nv);
  pick_vectors(isa, w2, rows ? p2.M : p2.P, &vl2, &nv2);
  const int64_t mb = vl * nv;
  const int64_t per_image = rows ? (p.M + mb - 1) / mb : (p.P + mb - 1) / mb;
  const int64_t nchunks = rows ? per_image : p.batch * per_image;
  const bool same_rows = rows ? p2.layout == Layout::kRows && p2.M == p.M
                              : p2.layout == Layout::kChannels && p2.batch == p.batch && p2.P == p.P;
  // 4x1 / 8x1 MatMul have paths of their own (interleaved chunks, outer products).
  auto own_paths = [](const PackedWeight& v) { return v.bc == 1 && (v.br == 4 || v.br == 8); };
  const bool fused = same_rows && !(rows && (own_paths(w) || own_paths(w2))) && w2.K == w.N &&
                     vl == vl2 && nv == nv2 && M > 0 && w.N > 0 && w2.N > 0 &&
                     nchunks >= kChunkTaskMin;
  if (!fused) {  // two passes; a Y that no node reads goes to a temporary
    Problem first = p, second = p2;
    if (!first.y) {
      const size_t y_floats = static_cast<size_t>(M * w.N);
      if (y_scratch->size() < y_floats) y_scratch->resize(y_floats);
      first.y = y_scratch->data();
    }
    second.x = first.y;
    sparse_matmul(w, first, par, scratch);
    sparse_matmul(w2, second, par, scratch);
    return;
  }
  XTJob job, job2;
  std::vector<int64_t> ranges, ranges2;
  XTJob* jobs[2] = {&job, &job2};
  const PackedWeight* ws[2] = {&w, &w2};
  const Problem* ps[2] = {&p, &p2};
  for (int i = 0; i < 2; ++i) {
    XTJob& j = *jobs[i];
    j.w = ws[i];
    j.p = ps[i];
    j.vl = vl;
    j.nv = static_cast<int>(nv);
    j.mb = j.pitch = mb;
    j.chunks_per_image = rows ? 1 : per_image;
    j.nchunks = nchunks;
    j.panels = uses_panels(*ws[i], mb);
    j.jit = use_jit(isa, *ws[i], rows ? ps[i]->M : ps[i]->P) && nv == 1;
    setup_chunk_tasks(*ws[i], M, &j, i == 0 ? &ranges : &ranges2);
  }
  job.chain = &job2;
  const int64_t ntasks = (job.nchunks + job.group - 1) / job.group;
  run_tasks(par, static_cast<size_t>(ntasks), isa.chunk, &job);
}

}  // namespace graphprune
