// Host side of the CUDA SpMM: the device weight layout (see spmm_device.h), built from the CPU
// packer's PackedWeight (kernels/src/pack.cpp, linked in, not duplicated), as one blob that is
// copied to the device in a single transfer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "sparse_matmul.h"
#include "spmm_device.h"

namespace graphprune {
namespace cuda {

struct GpuLayout {
  int64_t K = 0, N = 0, nbc = 0;
  int br = 1, bc = 1;
  int npanels = 1;
  // The blob: panel_ptr (int64) | k0 (int32) | vals (float), each part 256-byte aligned.
  std::vector<unsigned char> blob;
  size_t off_panel = 0, off_k0 = 0, off_vals = 0;
  int64_t nnzb = 0;

  // The weight with its arrays at `base` (a device copy of blob, or blob itself on the host).
  DeviceWeight at(const void* base) const;
};

// Drops the all-zero blocks (the CPU packer's padding to its unroll step; it already dropped
// every other all-zero block) and indexes the blocks by K panels of kTileK rows.
// Returns "" or an error.
std::string build_gpu_layout(const PackedWeight& w, GpuLayout* out);

}  // namespace cuda
}  // namespace graphprune
