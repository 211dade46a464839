#include "gpu_layout.h"

#include <climits>
#include <cstring>

namespace graphprune {
namespace cuda {
namespace {

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

DeviceWeight GpuLayout::at(const void* base) const {
  const unsigned char* b = static_cast<const unsigned char*>(base);
  DeviceWeight w;
  w.panel_ptr = reinterpret_cast<const int64_t*>(b + off_panel);
  w.k0 = reinterpret_cast<const int32_t*>(b + off_k0);
  w.vals = reinterpret_cast<const float*>(b + off_vals);
  w.K = K;
  w.N = N;
  w.nbc = nbc;
  w.npanels = npanels;
  return w;
}

std::string build_gpu_layout(const PackedWeight& w, GpuLayout* out) {
  GpuLayout& g = *out;
  g = GpuLayout();
  g.K = w.K;
  g.N = w.N;
  g.nbc = w.nbc;
  g.br = w.br;
  g.bc = w.bc;
  if (kTileK % w.br != 0) return "block_rows must divide the CUDA kernel's K tile";
  const int64_t np = (w.Kp + kTileK - 1) / kTileK;
  if (np > INT_MAX / 2) return "k is too large for the CUDA kernel";
  g.npanels = np < 1 ? 1 : static_cast<int>(np);
  const int bs = w.br * w.bc;

  // Which blocks to keep: any non-zero value.
  const int64_t total = w.nnzb();
  std::vector<char> keep(static_cast<size_t>(total), 0);
  int64_t kept = 0;
  for (int64_t b = 0; b < total; ++b) {
    const float* v = w.vals.data() + b * bs;
    bool any = false;
    for (int t = 0; t < bs; ++t) any |= (v[t] != 0.0f);
    keep[static_cast<size_t>(b)] = any;
    kept += any;
  }
  g.nnzb = kept;

  const size_t n_panel = static_cast<size_t>(g.nbc) * static_cast<size_t>(g.npanels + 1);
  g.off_panel = 0;
  g.off_k0 = align_up(n_panel * sizeof(int64_t));
  g.off_vals = g.off_k0 + align_up(static_cast<size_t>(kept) * sizeof(int32_t));
  g.blob.assign(g.off_vals + static_cast<size_t>(kept) * bs * sizeof(float), 0);
  int64_t* pp = reinterpret_cast<int64_t*>(g.blob.data() + g.off_panel);
  int32_t* k0 = reinterpret_cast<int32_t*>(g.blob.data() + g.off_k0);
  float* vals = reinterpret_cast<float*>(g.blob.data() + g.off_vals);

  int64_t d = 0;
  for (int64_t j = 0; j < g.nbc; ++j) {
    int64_t* col = pp + j * (g.npanels + 1);
    int p = 0;  // next panel whose start is still to be written
    int32_t prev = INT_MIN;
    for (int64_t b = w.col_ptr[static_cast<size_t>(j)]; b < w.col_ptr[static_cast<size_t>(j) + 1]; ++b) {
      if (!keep[static_cast<size_t>(b)]) continue;
      const int32_t k = w.k0[static_cast<size_t>(b)];
      if (k < prev || k < 0 || k >= w.Kp) return "internal error: packed blocks out of order or outside K";
      prev = k;
      const int panel = k / kTileK;
      while (p <= panel) col[p++] = d;  // panels up to this block's start here
      k0[d] = k;
      std::memcpy(vals + d * bs, w.vals.data() + b * bs, sizeof(float) * static_cast<size_t>(bs));
      ++d;
    }
    while (p <= g.npanels) col[p++] = d;  // the remaining panels (and the end) are empty
  }
  return "";
}

}  // namespace cuda
}  // namespace graphprune
