// graphprune CUDA SpMM: Y[M, N] = act(X[M, K] @ W[K, N] + bias), W sparse, fp32.
//
// The per-thread work of both kernels is written here as plain functions of (thread id, block
// id, shared memory) so that nvcc compiles them into the __global__ kernels (spmm.cu) and a host
// C++ compiler compiles the very same code into a sequential emulation (emulate.cpp, used by
// tests/kernels/test_cuda_build.py on machines without a GPU). The kernels only add the
// __syncthreads() between phases and the warp shuffle reduction.
//
// Weight layout on the device (built on the host by gpu_layout.cpp from the CPU packer's
// PackedWeight): for each output block column j (block_cols = BC output columns), its non-zero
// blocks sorted by k, each a first row k0 and BR x BC values stored [BC][BR] (k fastest);
// panel_ptr[j * (npanels + 1) + p] is the first block of column j with k0 >= p * kTileK, and
// panel_ptr[j * (npanels + 1) + npanels] the column's end.
//
// Kernels:
//   tile (M > kRowsMax): a thread block owns kTileM = 32 rows of X (one per lane) and a group of
//     block columns (kColsPerWarp per warp). X is staged in shared memory kTileK rows of K at a
//     time, transposed (xs[k][m], padded: conflict-free writes and reads); each warp walks its
//     columns' blocks in that panel, every lane FMAs the broadcast weight with its own row of X.
//     The results go through shared memory so that the stores to Y are coalesced along N.
//   rows (M <= kRowsMax, e.g. decoding): one warp per block column, the lanes split the column's
//     blocks, each lane accumulates all M rows, then a warp reduction.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define GP_HD __host__ __device__ __forceinline__
#else
#define GP_HD inline
#endif

namespace graphprune {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;                           // per thread block, both kernels
constexpr int kThreads = kWarps * kWarpSize;        // 256
constexpr int kTileM = kWarpSize;                   // rows of X per thread block (tile kernel)
constexpr int kTileK = 256;                         // rows of K staged per step (a multiple of 8)
constexpr int kXStride = kTileM + 1;                // xs[k * kXStride + m]
constexpr int kSmemFloats = kTileK * kXStride;      // 8448 floats = 33 KiB (static shared)
constexpr int kRowsMax = 8;                         // M <= kRowsMax: rows kernel

// A read-only load: through the non-coherent (texture) path on the device, plain on the host.
template <typename T>
GP_HD T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}
#define GP_LDG(p) ::graphprune::cuda::ldg(p)

enum Act : int { kActNone = 0, kActRelu = 1, kActGelu = 2 };

template <int BC>
struct TileShape {
  static constexpr int kColsPerWarp = BC == 1 ? 8 : 4;           // block columns per warp
  static constexpr int kBlockCols = kWarps * kColsPerWarp;       // per thread block: 64 or 32
  static constexpr int kOutCols = kBlockCols * BC;               // output columns: 64 or 128
  static constexpr int kYStride = kOutCols + 1;                  // ys[m * kYStride + n]
  static constexpr int kAcc = kColsPerWarp * BC;                 // accumulators per thread
  static_assert(kTileM * kYStride <= kSmemFloats, "output tile must fit the shared buffer");
};

struct DeviceWeight {
  const int64_t* panel_ptr = nullptr;  // [nbc][npanels + 1]
  const int32_t* k0 = nullptr;         // [nnzb]
  const float* vals = nullptr;         // [nnzb][BC][BR]
  int64_t K = 0, N = 0, nbc = 0;
  int npanels = 1;
};

struct DeviceProblem {
  const float* x = nullptr;     // [M, K] row-major
  float* y = nullptr;           // [M, N] row-major
  const float* bias = nullptr;  // [N] or null
  int64_t M = 0;
  int act = kActNone;
};

GP_HD float activate(float v, int act) {
  if (act == kActRelu) return v > 0.0f ? v : 0.0f;
  if (act == kActGelu) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));  // exact (erf)
  return v;
}

// --- tile kernel phases (M > kRowsMax) -------------------------------------------------------

// Stages X[m0 : m0 + kTileM, kb : kb + kTileK) into xs[k][m]; zeros outside X (rows >= M,
// k >= K: the blocks overhanging K hold zeros, so they add nothing).
GP_HD void tile_load_x(int tid, const DeviceProblem& p, int64_t K, int64_t m0, int64_t kb, float* xs) {
  for (int i = tid; i < kTileM * kTileK; i += kThreads) {
    const int r = i / kTileK, c = i % kTileK;  // a warp reads 32 consecutive k of one row
    const int64_t m = m0 + r, k = kb + c;
    float v = 0.0f;
    if (m < p.M && k < K) v = GP_LDG(p.x + m * K + k);
    xs[c * kXStride + r] = v;
  }
}

// One panel: the warp's block columns, every lane its own row of the tile.
template <int BR, int BC>
GP_HD void tile_compute(int tid, const DeviceWeight& w, int64_t group, int panel, const float* xs,
                        float* acc) {
  using S = TileShape<BC>;
  const int warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int kbase = panel * kTileK;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int jj = 0; jj < S::kColsPerWarp; ++jj) {
    const int64_t j = group * S::kBlockCols + warp * S::kColsPerWarp + jj;
    if (j >= w.nbc) break;  // the same for the whole warp
    const int64_t* pp = w.panel_ptr + j * (w.npanels + 1) + panel;
    const int64_t b1 = GP_LDG(pp + 1);
    for (int64_t b = GP_LDG(pp); b < b1; ++b) {
      const int kk = GP_LDG(w.k0 + b) - kbase;  // 0 <= kk <= kTileK - BR
      const float* v = w.vals + b * (BR * BC);
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int r = 0; r < BR; ++r) {
        const float x = xs[(kk + r) * kXStride + lane];
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int c = 0; c < BC; ++c) acc[jj * BC + c] += x * GP_LDG(v + c * BR + r);
      }
    }
  }
}

// Accumulators -> ys[m][n] (shared), so that the stores to Y can run along N.
template <int BC>
GP_HD void tile_stage_out(int tid, const float* acc, float* ys) {
  using S = TileShape<BC>;
  const int warp = tid / kWarpSize, lane = tid % kWarpSize;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int t = 0; t < S::kAcc; ++t) ys[lane * S::kYStride + warp * S::kAcc + t] = acc[t];
}

// ys -> Y with bias and activation; consecutive threads write consecutive n.
template <int BC>
GP_HD void tile_store(int tid, const DeviceProblem& p, int64_t N, int64_t m0, int64_t group,
                      const float* ys) {
  using S = TileShape<BC>;
  const int64_t n0 = group * S::kOutCols;
  for (int i = tid; i < kTileM * S::kOutCols; i += kThreads) {
    const int r = i / S::kOutCols, c = i % S::kOutCols;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < p.M && n < N) {
      float v = ys[r * S::kYStride + c];
      if (p.bias) v += GP_LDG(p.bias + n);
      p.y[m * N + n] = activate(v, p.act);
    }
  }
}

// --- rows kernel phases (M <= kRowsMax) ------------------------------------------------------

// Lane `lane` of the warp owning block column j: its share of the column's blocks, for all
// MR (>= M) rows. acc[m * BC + c].
template <int BR, int BC, int MR>
GP_HD void rows_partial(int lane, const DeviceWeight& w, const DeviceProblem& p, int64_t j, float* acc) {
  const int64_t* pp = w.panel_ptr + j * (w.npanels + 1);
  const int64_t b1 = GP_LDG(pp + w.npanels);
  for (int64_t b = GP_LDG(pp) + lane; b < b1; b += kWarpSize) {
    const int64_t k = GP_LDG(w.k0 + b);
    const float* v = w.vals + b * (BR * BC);
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int r = 0; r < BR; ++r) {
      if (k + r >= w.K) break;  // rows of a block overhanging K: zero weights, no X there
#if defined(__CUDACC__)
#pragma unroll
#endif
      for (int m = 0; m < MR; ++m) {
        if (m >= p.M) break;
        const float x = GP_LDG(p.x + m * w.K + k + r);
#if defined(__CUDACC__)
#pragma unroll
#endif
        for (int c = 0; c < BC; ++c) acc[m * BC + c] += x * GP_LDG(v + c * BR + r);
      }
    }
  }
}

// After the warp reduction: entry e = m * BC + c (e < MR * BC; lane e writes it in the kernel)
// with its sum `value`. (No MR in here: the caller bounds e.)
template <int BC>
GP_HD void rows_store(int e, const DeviceProblem& p, int64_t N, int64_t j, float value) {
  const int m = e / BC, c = e % BC;
  const int64_t n = j * BC + c;
  if (m < p.M && n < N) {
    if (p.bias) value += GP_LDG(p.bias + n);
    p.y[m * N + n] = activate(value, p.act);
  }
}

// --- launch plan (host) ----------------------------------------------------------------------

struct LaunchPlan {
  bool rows = false;       // rows kernel (else tile)
  int mr = 0;              // rows kernel: rows per warp, 1, 2, 4 or 8 (>= M)
  int64_t grid_x = 0;      // tile: ceil(M / kTileM); rows: ceil(nbc / kWarps)
  int64_t grid_y = 1;      // tile: ceil(nbc / kBlockCols)
};

// force: 0 = pick by M, 1 = rows kernel (M <= kRowsMax only), 2 = tile kernel.
inline LaunchPlan plan_launch(int bc, int64_t nbc, int64_t M, int force = 0) {
  LaunchPlan lp;
  lp.rows = force == 1 || (force == 0 && M <= kRowsMax);
  if (lp.rows) {
    lp.mr = M <= 1 ? 1 : M <= 2 ? 2 : M <= 4 ? 4 : 8;
    lp.grid_x = (nbc + kWarps - 1) / kWarps;
  } else {
    const int64_t cols = bc == 1 ? TileShape<1>::kBlockCols : TileShape<4>::kBlockCols;
    lp.grid_x = (M + kTileM - 1) / kTileM;
    lp.grid_y = (nbc + cols - 1) / cols;
  }
  return lp;
}

}  // namespace cuda
}  // namespace graphprune
