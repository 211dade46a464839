// Validation of the ONNX-level sparse formats and conversion to the internal layout.
#include <algorithm>
#include <cstring>
#include <sstream>

#include "sparse_matmul.h"

namespace graphprune {
namespace {

bool supported_block(int br, int bc) {
  return (br == 1 && bc == 1) || (br == 1 && bc == 4) || (br == 4 && bc == 1) ||
         (br == 4 && bc == 4) || (br == 8 && bc == 1);
}

template <typename... Args>
std::string msg(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Pads every column's block list with zero blocks to a multiple of the kernel's unroll step
// (see xt_column: G = U / br blocks, U <= 4 accumulator sets for bc = 1, <= 2 for bc = 4), so
// the kernel never runs a data-dependent tail. Padding repeats the column's last row, which is
// in cache already.
void pad_columns(PackedWeight* w) {
  const int bs = w->br * w->bc;
  const int64_t step = w->bc == 4 ? std::max(1, 2 / w->br) : std::max(1, 4 / w->br);
  if (step == 1) return;
  std::vector<int64_t> ptr(static_cast<size_t>(w->nbc) + 1, 0);
  for (int64_t j = 0; j < w->nbc; ++j) {
    const int64_t n = w->col_ptr[static_cast<size_t>(j) + 1] - w->col_ptr[static_cast<size_t>(j)];
    ptr[static_cast<size_t>(j) + 1] = ptr[static_cast<size_t>(j)] + (n + step - 1) / step * step;
  }
  AlignedVector<int32_t> k0(static_cast<size_t>(ptr.back()), 0);
  AlignedVector<float> vals(static_cast<size_t>(ptr.back()) * bs, 0.0f);
  for (int64_t j = 0; j < w->nbc; ++j) {
    const int64_t s = w->col_ptr[static_cast<size_t>(j)], e = w->col_ptr[static_cast<size_t>(j) + 1];
    const int64_t d = ptr[static_cast<size_t>(j)], de = ptr[static_cast<size_t>(j) + 1];
    std::copy(w->k0.begin() + s, w->k0.begin() + e, k0.begin() + d);
    std::copy(w->vals.begin() + s * bs, w->vals.begin() + e * bs, vals.begin() + d * bs);
    const int32_t last = e > s ? w->k0[static_cast<size_t>(e) - 1] : 0;
    for (int64_t t = d + (e - s); t < de; ++t) k0[static_cast<size_t>(t)] = last;
  }
  w->col_ptr.swap(ptr);
  w->k0.swap(k0);
  w->vals.swap(vals);
}

void build_panels(PackedWeight* w) {
  w->npanels = (w->Kp + kPanelRows - 1) / kPanelRows;
  if (w->npanels <= 1) {
    w->npanels = 1;
    w->panel_ptr.clear();
    return;
  }
  const int64_t np = w->npanels;
  w->panel_ptr.assign(static_cast<size_t>(w->nbc * (np + 1)), 0);
  for (int64_t j = 0; j < w->nbc; ++j) {
    int64_t b = w->col_ptr[static_cast<size_t>(j)];
    const int64_t e = w->col_ptr[static_cast<size_t>(j) + 1];
    int64_t* pp = w->panel_ptr.data() + j * (np + 1);
    for (int64_t p = 0; p < np; ++p) {
      while (b < e && w->k0[static_cast<size_t>(b)] < p * kPanelRows) ++b;
      pp[p] = b;
    }
    pp[np] = e;
  }
}

// The outer-product layout of 4x1 / 8x1 blocks (see OuterLayout) from the BSR input, whose
// block rows come in order: within a tile, groups follow k.
void build_outer(const float* values, IndexView indices, IndexView row_ptr,
                 const std::vector<char>& keep, PackedWeight* w) {
  const int br = w->br;
  const int64_t Kb = w->Kp / br;
  OuterLayout& o = w->outer;
  // Wide tiles put more blocks in each group (a group loads br vectors of X, and its loop's
  // exit is a mispredicted branch): Zen 5, one thread, 4x1, M = 16, 90 %: 128 -> 512 columns
  // took 768x768 from 1.22 to 1.11 ns per block and 3072x768 from 1.19 to 1.10. But the tiles
  // are the parallel tasks: about 8 of them, 128 to 512 columns, multiples of 16 (the store's
  // transposed tiles).
  const int64_t T = std::clamp<int64_t>((w->N + 8 * 16 - 1) / (8 * 16) * 16, 128, 512);
  o.tile_cols = T;
  const int64_t ntiles = (w->N + T - 1) / T;
  // Blocks before each tile (counting sort by tile).
  std::vector<int64_t> start(static_cast<size_t>(ntiles) + 1, 0);
  for (size_t b = 0; b < indices.size; ++b)
    if (keep[b]) ++start[static_cast<size_t>(indices[b] / T) + 1];
  for (size_t t = 0; t < static_cast<size_t>(ntiles); ++t) start[t + 1] += start[t];
  const size_t kept = static_cast<size_t>(start.back());
  o.col.resize(kept);
  o.vals.resize(kept * static_cast<size_t>(br));
  std::vector<int64_t> block_row(kept);  // of each block, in the new order
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < Kb; ++i) {
    for (int64_t b = row_ptr[static_cast<size_t>(i)]; b < row_ptr[static_cast<size_t>(i) + 1]; ++b) {
      if (!keep[static_cast<size_t>(b)]) continue;
      const int64_t n = indices[static_cast<size_t>(b)];
      const size_t d = static_cast<size_t>(fill[static_cast<size_t>(n / T)]++);
      o.col[d] = static_cast<int32_t>(n % T);
      block_row[d] = i;
      std::copy(values + b * br, values + (b + 1) * br, o.vals.begin() + static_cast<int64_t>(d) * br);
    }
  }
  // Groups: runs of one block row within a tile.
  o.tile_ptr.assign(1, 0);
  o.group_ptr.assign(1, 0);
  o.group_k0.clear();
  for (size_t t = 0; t < static_cast<size_t>(ntiles); ++t) {
    const size_t first = static_cast<size_t>(start[t]), end = static_cast<size_t>(start[t + 1]);
    for (size_t d = first; d < end; ++d) {
      if (d > first && block_row[d] == block_row[d - 1]) continue;
      if (d > first) o.group_ptr.push_back(static_cast<int64_t>(d));  // the previous group ends
      o.group_k0.push_back(static_cast<int32_t>(block_row[d] * br));
    }
    if (end > first) o.group_ptr.push_back(static_cast<int64_t>(end));
    o.tile_ptr.push_back(static_cast<int64_t>(o.group_k0.size()));
  }
}

}  // namespace

std::string validate_spec(const FormatSpec& s) {
  if (s.k < 1 || s.n < 1) return msg("attributes k and n must be >= 1 (got k=", s.k, ", n=", s.n, ")");
  if (s.k > (int64_t{1} << 31) - 16) return msg("k=", s.k, " is too large");
  if (s.format == "bsr") {
    if (!supported_block(s.br, s.bc))
      return msg("block_rows x block_cols = ", s.br, "x", s.bc,
                 " is not supported (bsr supports 1x4, 4x1, 4x4, 8x1 and 1x1)");
  } else if (s.format == "csr") {
    if (s.br != 1 || s.bc != 1)
      return msg("format 'csr' takes no block shape (got block_rows=", s.br, ", block_cols=", s.bc, ")");
  } else if (s.format == "nm") {
    if (s.nm_m < 1 || s.nm_n < 1 || s.nm_n > s.nm_m || s.nm_m > 1024)
      return msg("nm_n:nm_m = ", s.nm_n, ":", s.nm_m, " is not a valid N:M pattern");
  } else {
    return msg("format '", s.format, "' is not one of bsr, csr, nm");
  }
  return "";
}

std::string pack_weight(const FormatSpec& s, const float* values, size_t n_values,
                        IndexView indices, IndexView row_ptr, PackedWeight* out) {
  std::string err = validate_spec(s);
  if (!err.empty()) return err;
  PackedWeight& w = *out;
  w = PackedWeight();
  w.K = s.k;
  w.N = s.n;

  if (s.format == "nm") {
    const int64_t G = (s.k + s.nm_m - 1) / s.nm_m;
    const size_t per_col = static_cast<size_t>(G) * static_cast<size_t>(s.nm_n);
    const size_t expect = per_col * static_cast<size_t>(s.n);
    if (n_values != expect)
      return msg("format 'nm': values has ", n_values, " elements, expected n*ceil(k/m)*n_keep = ", expect);
    if (indices.size != expect)
      return msg("format 'nm': indices has ", indices.size, " elements, expected ", expect);
    w.br = w.bc = 1;
    w.Kp = s.k;
    w.nbc = s.n;
    w.col_ptr.assign(static_cast<size_t>(w.nbc) + 1, 0);
    w.k0.reserve(expect);
    w.vals.reserve(expect);
    for (int64_t j = 0; j < s.n; ++j) {
      for (int64_t g = 0; g < G; ++g) {
        for (int t = 0; t < s.nm_n; ++t) {
          const size_t e = static_cast<size_t>(j) * per_col + static_cast<size_t>(g) * s.nm_n + t;
          const int64_t kk = indices[e];
          if (kk < g * s.nm_m || kk >= (g + 1) * s.nm_m)
            return msg("format 'nm': index ", kk, " of output column ", j, " lies outside its group [",
                       g * s.nm_m, ", ", (g + 1) * s.nm_m, ")");
          if (kk >= s.k || values[e] == 0.0f) continue;  // padding or pruned anyway
          w.k0.push_back(static_cast<int32_t>(kk));
          w.vals.push_back(values[e]);
        }
      }
      w.col_ptr[static_cast<size_t>(j) + 1] = w.nnzb();
    }
    pad_columns(&w);
    build_panels(&w);
    return "";
  }

  // bsr / csr (csr is bsr with 1x1 blocks): scipy layout of W [K, N].
  const int br = s.br, bc = s.bc;
  const int bsz = br * bc;
  const int64_t Kb = (s.k + br - 1) / br;
  const int64_t Nb = (s.n + bc - 1) / bc;
  if (row_ptr.data == nullptr)
    return msg("format '", s.format, "' needs the row_ptr input");
  if (row_ptr.size != static_cast<size_t>(Kb) + 1)
    return msg("row_ptr has ", row_ptr.size, " elements, expected ceil(k/block_rows)+1 = ", Kb + 1);
  if (row_ptr[0] != 0) return msg("row_ptr[0] must be 0 (got ", row_ptr[0], ")");
  for (int64_t i = 0; i < Kb; ++i)
    if (row_ptr[static_cast<size_t>(i) + 1] < row_ptr[static_cast<size_t>(i)])
      return msg("row_ptr decreases at ", i);
  const int64_t nnzb = row_ptr[static_cast<size_t>(Kb)];
  if (indices.size != static_cast<size_t>(nnzb))
    return msg("indices has ", indices.size, " elements, row_ptr[-1] says ", nnzb);
  if (n_values != static_cast<size_t>(nnzb) * static_cast<size_t>(bsz))
    return msg("values has ", n_values, " elements, expected ", nnzb, " blocks x ", bsz, " = ",
               nnzb * bsz);
  for (size_t e = 0; e < indices.size; ++e)
    if (indices[e] < 0 || indices[e] >= Nb)
      return msg("indices[", e, "] = ", indices[e], " is outside [0, ", Nb, ")");

  w.br = br;
  w.bc = bc;
  w.Kp = Kb * br;
  w.nbc = Nb;
  // Which blocks are all zero (dropped).
  std::vector<char> keep(static_cast<size_t>(nnzb), 1);
  for (int64_t b = 0; b < nnzb; ++b) {
    bool any = false;
    const float* v = values + b * bsz;
    for (int t = 0; t < bsz; ++t) any |= (v[t] != 0.0f);
    keep[static_cast<size_t>(b)] = any;
  }
  w.col_ptr.assign(static_cast<size_t>(Nb) + 1, 0);
  for (int64_t b = 0; b < nnzb; ++b)
    if (keep[static_cast<size_t>(b)]) ++w.col_ptr[static_cast<size_t>(indices[static_cast<size_t>(b)]) + 1];
  for (int64_t j = 0; j < Nb; ++j) w.col_ptr[static_cast<size_t>(j) + 1] += w.col_ptr[static_cast<size_t>(j)];
  const int64_t kept = w.col_ptr[static_cast<size_t>(Nb)];
  w.k0.resize(static_cast<size_t>(kept));
  w.vals.resize(static_cast<size_t>(kept) * bsz);
  std::vector<int64_t> fill(w.col_ptr.begin(), w.col_ptr.end() - 1);
  for (int64_t i = 0; i < Kb; ++i) {  // rows in order: blocks of a column end up sorted by k
    for (int64_t b = row_ptr[static_cast<size_t>(i)]; b < row_ptr[static_cast<size_t>(i) + 1]; ++b) {
      if (!keep[static_cast<size_t>(b)]) continue;
      const int64_t j = indices[static_cast<size_t>(b)];
      const int64_t dst = fill[static_cast<size_t>(j)]++;
      w.k0[static_cast<size_t>(dst)] = static_cast<int32_t>(i * br);
      const float* src = values + b * bsz;       // [br][bc]
      float* d = w.vals.data() + dst * bsz;      // [bc][br]
      for (int r = 0; r < br; ++r)
        for (int c = 0; c < bc; ++c) d[c * br + r] = src[r * bc + c];
    }
  }
  if (bc == 1 && (br == 4 || br == 8)) build_outer(values, indices, row_ptr, keep, &w);
  pad_columns(&w);
  build_panels(&w);
  // Zeros past the last block: the 4x1 / 8x1 kernel reads a whole vector from a block's
  // weights and uses its first br lanes (one load, no partial-vector store and reload).
  w.vals.resize(w.vals.size() + kValsTailPad, 0.0f);
  return "";
}

}  // namespace graphprune
