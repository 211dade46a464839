// The CUDA SpMM launcher (spmm.cu), for the ONNX Runtime op (cuda_ops.cpp).
#pragma once

#include <cuda_runtime.h>

#include "spmm_device.h"

namespace graphprune {
namespace cuda {

// Y = act(X @ W + bias) on `stream` for a weight of br x bc blocks (1x1, 1x4, 4x1, 4x4, 8x1).
// Returns the launch status (cudaErrorInvalidValue for an unsupported block shape or a grid too
// large); errors of the running kernel surface on the stream later, as usual.
cudaError_t launch_spmm(const DeviceWeight& w, int br, int bc, const DeviceProblem& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace graphprune
