// Host emulation of the CUDA SpMM kernels, for tests on machines without a GPU: runs the same
// per-thread phases as spmm.cu (spmm_device.h) block by block and thread by thread, with the
// barriers as phase boundaries and the warp reduction as a sum over the 32 lanes. Built by
// tests/kernels/test_cuda_build.py with the host C++ compiler (no CUDA needed); not part of the
// libraries.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_layout.h"
#include "sparse_matmul.h"
#include "spmm_device.h"

namespace graphprune {
namespace cuda {
namespace {

template <int BR, int BC>
void emulate_tile(const DeviceWeight& w, const DeviceProblem& p, const LaunchPlan& lp) {
  constexpr int A = TileShape<BC>::kAcc;
  std::vector<float> smem(kSmemFloats);
  std::vector<float> acc(static_cast<size_t>(kThreads) * A);
  for (int64_t bx = 0; bx < lp.grid_x; ++bx) {
    for (int64_t by = 0; by < lp.grid_y; ++by) {
      const int64_t m0 = bx * kTileM;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(smem.begin(), smem.end(), -1e30f);  // garbage: reading unwritten smem shows
      for (int panel = 0; panel < w.npanels; ++panel) {
        for (int t = 0; t < kThreads; ++t) tile_load_x(t, p, w.K, m0, static_cast<int64_t>(panel) * kTileK, smem.data());
        for (int t = 0; t < kThreads; ++t) tile_compute<BR, BC>(t, w, by, panel, smem.data(), acc.data() + t * A);
      }
      std::fill(smem.begin(), smem.end(), -1e30f);
      for (int t = 0; t < kThreads; ++t) tile_stage_out<BC>(t, acc.data() + t * A, smem.data());
      for (int t = 0; t < kThreads; ++t) tile_store<BC>(t, p, w.N, m0, by, smem.data());
    }
  }
}

template <int BR, int BC, int MR>
void emulate_rows(const DeviceWeight& w, const DeviceProblem& p, const LaunchPlan& lp) {
  for (int64_t bx = 0; bx < lp.grid_x; ++bx) {
    for (int warp = 0; warp < kWarps; ++warp) {
      const int64_t j = bx * kWarps + warp;
      if (j >= w.nbc) continue;
      float sum[MR * BC] = {};
      for (int lane = 0; lane < kWarpSize; ++lane) {
        float acc[MR * BC] = {};
        rows_partial<BR, BC, MR>(lane, w, p, j, acc);
        for (int t = 0; t < MR * BC; ++t) sum[t] += acc[t];
      }
      for (int e = 0; e < MR * BC; ++e) rows_store<BC>(e, p, w.N, j, sum[e]);  // lane e
    }
  }
}

template <int BR, int BC>
void emulate_shape(const DeviceWeight& w, const DeviceProblem& p, const LaunchPlan& lp) {
  if (!lp.rows) return emulate_tile<BR, BC>(w, p, lp);
  switch (lp.mr) {
    case 1: return emulate_rows<BR, BC, 1>(w, p, lp);
    case 2: return emulate_rows<BR, BC, 2>(w, p, lp);
    case 4: return emulate_rows<BR, BC, 4>(w, p, lp);
    default: return emulate_rows<BR, BC, 8>(w, p, lp);
  }
}

void put(char* err, size_t len, const std::string& s) {
  if (!err || len == 0) return;
  std::strncpy(err, s.c_str(), len - 1);
  err[len - 1] = '\0';
}

}  // namespace
}  // namespace cuda
}  // namespace graphprune

// Y[M, N] = act(X[M, K] @ W + bias) through the CUDA kernels' code, emulated. indices/row_ptr:
// int64 (row_ptr may be null for nm). force: 0 pick by M (as the op does), 1 rows kernel
// (M <= 8), 2 tile kernel. Returns 0, or -1 with the message in err.
extern "C" __attribute__((visibility("default"))) int graphprune_cuda_emulate(
    const char* format, int64_t k, int64_t n, int br, int bc, int nm_n, int nm_m, const float* values,
    size_t n_values, const int64_t* indices, size_t n_indices, const int64_t* row_ptr, size_t n_row_ptr,
    const float* x, int64_t M, const float* bias, int act, float* y, int force, char* err, size_t err_len) {
  using namespace graphprune;
  using namespace graphprune::cuda;
  FormatSpec spec;
  spec.format = format;
  spec.k = k;
  spec.n = n;
  spec.br = br;
  spec.bc = bc;
  spec.nm_n = nm_n;
  spec.nm_m = nm_m;
  PackedWeight packed;
  IndexView iv{indices, true, n_indices};
  IndexView rv{row_ptr, true, row_ptr ? n_row_ptr : 0};
  std::string e = pack_weight(spec, values, n_values, iv, rv, &packed);
  GpuLayout layout;
  if (e.empty()) e = build_gpu_layout(packed, &layout);
  if (!e.empty()) {
    put(err, err_len, e);
    return -1;
  }
  if (force == 1 && M > kRowsMax) {
    put(err, err_len, "the rows kernel takes M <= 8");
    return -1;
  }
  const DeviceWeight w = layout.at(layout.blob.data());
  DeviceProblem p;
  p.x = x;
  p.y = y;
  p.bias = bias;
  p.M = M;
  p.act = act;
  if (M <= 0) return 0;
  const LaunchPlan lp = plan_launch(layout.bc, w.nbc, M, force);
  const int sbr = layout.br, sbc = layout.bc;
  if (sbr == 1 && sbc == 1) emulate_shape<1, 1>(w, p, lp);
  else if (sbr == 1 && sbc == 4) emulate_shape<1, 4>(w, p, lp);
  else if (sbr == 4 && sbc == 1) emulate_shape<4, 1>(w, p, lp);
  else if (sbr == 4 && sbc == 4) emulate_shape<4, 4>(w, p, lp);
  else if (sbr == 8 && sbc == 1) emulate_shape<8, 1>(w, p, lp);
  else {
    put(err, err_len, "unsupported block shape");
    return -1;
  }
  return 0;
}

