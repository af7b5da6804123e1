// The CUDA side of conditioning.h: the same sums as csrc/cpu/conditioning.cpp, each output one
// thread's chain of fmaf over its inputs in input order, from the same packed matrices, so a
// stream's conditioning does not depend on the batch, its place in it or the launch shape.
// Two launches: the upsampling into the workspace ([item][d * H + r], items being (stream,
// frame) pairs, stream-major), then the projection straight into the output.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../conditioning.h"

namespace nvwavenet::gpu {
namespace {

constexpr int64_t kBlock = 8;

__host__ __device__ int64_t padded(int64_t rows) { return (rows + kBlock - 1) / kBlock * kBlock; }

// Element (row, k) of a matrix packed in blocks of 8 rows with K columns.
__device__ float packed_at(const float* w, int64_t K, int64_t row, int64_t k) {
  return w[((row / kBlock) * K + k) * kBlock + row % kBlock];
}

__device__ int64_t count_of(const CondParams& p, int64_t stream) {
  return p.counts != nullptr ? p.counts[stream] : p.max_frames;
}

// grid (ceil(C * H / 128), max_frames, batch); thread: one row d * H + r of one item.
__global__ void upsample_kernel(CondParams p, float* hops) {
  const int64_t b = blockIdx.z, q = blockIdx.y, row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t C = p.channels, taps = p.context + 1, up_rows = padded(C * p.hop);
  if (row >= C * p.hop || q >= count_of(p, b)) return;
  const float* window = p.frames + b * p.frames_stride_batch;
  float acc = p.up_b[row];
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t j = 0; j < taps; ++j) {
      const float x = window[c * p.frames_stride_channel + (q + p.context - j) * p.frames_stride_time];
      acc = fmaf(packed_at(p.up_w, C * taps, row, c * taps + j), x, acc);
    }
  }
  hops[(b * p.max_frames + q) * up_rows + row] = acc;
}

// grid (ceil(H / 32), ceil(rows / 8), batch * max_frames), block (32, 8): threads along the
// samples of one output row, so each warp reads and writes consecutive samples.
__global__ void project_kernel(CondParams p, const float* hops) {
  const int64_t item = blockIdx.z, b = item / p.max_frames, q = item % p.max_frames;
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t o = blockIdx.y * int64_t(blockDim.y) + threadIdx.y;
  if (r >= p.hop || o >= p.rows || q >= count_of(p, b)) return;
  const float* x = hops + item * padded(p.channels * p.hop) + r;
  float acc = p.proj_b[o];
  for (int64_t d = 0; d < p.channels; ++d) acc = fmaf(p.proj_w[o * p.channels + d], x[d * p.hop], acc);
  p.out[b * p.out_stride_batch + o * p.out_stride_row + q * p.hop + r] = acc;
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string("conditioning: ") + what + ": " + cudaGetErrorString(status));
}

}  // namespace

int64_t cuda_condition_workspace_bytes(const CondParams& p) {
  return p.batch * p.max_frames * padded(p.channels * p.hop) * int64_t(sizeof(float));
}

void condition_cuda(const CondParams& p) {
  if (p.batch < 0 || p.max_frames < 0 || p.channels <= 0 || p.hop <= 0 || p.rows <= 0 || p.context < 0)
    throw std::invalid_argument("conditioning: sizes must be positive");
  if (p.batch == 0 || p.max_frames == 0) return;
  if (p.workspace == nullptr || p.workspace_bytes < cuda_condition_workspace_bytes(p))
    throw std::invalid_argument("workspace: expected " + std::to_string(cuda_condition_workspace_bytes(p)) +
                                " bytes, got " + std::to_string(p.workspace_bytes));
  if (p.batch > 65535 || p.max_frames > 65535 || p.batch * p.max_frames > 65535)
    throw std::invalid_argument("conditioning: at most 65535 streams x frames per call");
  auto stream = static_cast<cudaStream_t>(p.stream);
  auto* hops = static_cast<float*>(p.workspace);
  const dim3 up_grid(unsigned((p.channels * p.hop + 127) / 128), unsigned(p.max_frames), unsigned(p.batch));
  // cudaLaunchKernel rather than <<<>>>, so that the host build (g++) compiles this file too.
  CondParams arg = p;
  float* up_out = hops;
  void* up_args[] = {&arg, &up_out};
  check(cudaLaunchKernel(upsample_kernel, up_grid, dim3(128), up_args, 0, stream), "upsampling launch");
  const dim3 block(32, 8);
  const dim3 grid(unsigned((p.hop + 31) / 32), unsigned((p.rows + 7) / 8), unsigned(p.batch * p.max_frames));
  const float* project_in = hops;
  void* project_args[] = {&arg, &project_in};
  check(cudaLaunchKernel(project_kernel, grid, block, project_args, 0, stream), "projection launch");
}

}  // namespace nvwavenet::gpu
