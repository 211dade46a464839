// graphprune CUDA SpMM kernels: thin __global__ wrappers around the phases in spmm_device.h.
#include <cuda_runtime.h>

#include "spmm_device.h"
#include "spmm_launch.h"

namespace graphprune {
namespace cuda {
namespace {

template <int BR, int BC>
__global__ void __launch_bounds__(kThreads, 2) spmm_tile_kernel(DeviceWeight w, DeviceProblem p) {
  __shared__ float smem[kSmemFloats];
  float acc[TileShape<BC>::kAcc];
#pragma unroll
  for (int t = 0; t < TileShape<BC>::kAcc; ++t) acc[t] = 0.0f;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t group = blockIdx.y;
  for (int panel = 0; panel < w.npanels; ++panel) {
    tile_load_x(tid, p, w.K, m0, static_cast<int64_t>(panel) * kTileK, smem);
    __syncthreads();
    tile_compute<BR, BC>(tid, w, group, panel, smem, acc);
    __syncthreads();
  }
  tile_stage_out<BC>(tid, acc, smem);
  __syncthreads();
  tile_store<BC>(tid, p, w.N, m0, group, smem);
}

template <int BR, int BC, int MR>
__global__ void __launch_bounds__(kThreads) spmm_rows_kernel(DeviceWeight w, DeviceProblem p) {
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (j >= w.nbc) return;  // whole warps only; no block-wide barrier below
  float acc[MR * BC];
#pragma unroll
  for (int t = 0; t < MR * BC; ++t) acc[t] = 0.0f;
  rows_partial<BR, BC, MR>(lane, w, p, j, acc);
  float mine = 0.0f;
#pragma unroll
  for (int t = 0; t < MR * BC; ++t) {
    float v = acc[t];
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (t == lane) mine = v;
  }
  if (lane < MR * BC) rows_store<BC>(lane, p, w.N, j, mine);
}

template <int BR, int BC>
cudaError_t launch_shape(const DeviceWeight& w, const DeviceProblem& p, cudaStream_t stream) {
  const LaunchPlan lp = plan_launch(BC, w.nbc, p.M);
  if (lp.grid_x < 1 || lp.grid_x > 0x7fffffffLL || lp.grid_y < 1 || lp.grid_y > 65535) return cudaErrorInvalidValue;
  const dim3 block(kThreads);
  if (!lp.rows) {
    spmm_tile_kernel<BR, BC><<<dim3(static_cast<unsigned>(lp.grid_x), static_cast<unsigned>(lp.grid_y)), block, 0,
                               stream>>>(w, p);
  } else {
    const dim3 grid(static_cast<unsigned>(lp.grid_x));
    switch (lp.mr) {
      case 1: spmm_rows_kernel<BR, BC, 1><<<grid, block, 0, stream>>>(w, p); break;
      case 2: spmm_rows_kernel<BR, BC, 2><<<grid, block, 0, stream>>>(w, p); break;
      case 4: spmm_rows_kernel<BR, BC, 4><<<grid, block, 0, stream>>>(w, p); break;
      default: spmm_rows_kernel<BR, BC, 8><<<grid, block, 0, stream>>>(w, p); break;
    }
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_spmm(const DeviceWeight& w, int br, int bc, const DeviceProblem& p, cudaStream_t stream) {
  if (p.M <= 0 || w.N <= 0) return cudaSuccess;
  if (br == 1 && bc == 1) return launch_shape<1, 1>(w, p, stream);
  if (br == 1 && bc == 4) return launch_shape<1, 4>(w, p, stream);
  if (br == 4 && bc == 1) return launch_shape<4, 1>(w, p, stream);
  if (br == 4 && bc == 4) return launch_shape<4, 4>(w, p, stream);
  if (br == 8 && bc == 1) return launch_shape<8, 1>(w, p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace graphprune
