// Mel frames to NVWaveNet conditioning for a batch of streams in one call, in a fixed order of
// arithmetic: every output is one chain of fused multiply-adds over its inputs, in input order,
// computed by one thread. A stream's conditioning therefore does not depend on which other
// streams share the call, where it sits in the batch, or how many threads run it
// (nvwavenet/conditioning.py describes the maths; csrc/cpu/conditioning.cpp and
// csrc/cuda/conditioning.cu implement it).
#pragma once

#include <cstdint>

namespace nvwavenet {

struct CondParams {
  int64_t batch = 0;       // streams
  int64_t max_frames = 0;  // new frames of the stream with the most
  const int32_t* counts = nullptr;  // [batch] new frames per stream (<= max_frames); nullptr: max_frames each
  int64_t channels = 0;    // C, mel bands
  int64_t context = 0;     // earlier frames whose upsampling window reaches a frame's hop
  int64_t hop = 0;         // H, samples per frame
  int64_t rows = 0;        // 2R * L output channels, layer-major

  // Stream b's window: its `context` earlier frames then its new ones, frame f of channel c at
  // frames[b * frames_stride_batch + c * frames_stride_channel + f * frames_stride_time].
  const float* frames = nullptr;
  int64_t frames_stride_batch = 0, frames_stride_channel = 0, frames_stride_time = 0;

  // The upsampling matrix, packed in blocks of 8 rows (cpu/packing.h): element (row, k) at
  // ((row / 8) * K + k) * 8 + row % 8, rows padded with zeros to a multiple of 8. Rows d * H + r
  // (channel d, hop sample r), K = C * (context + 1) inputs, input c * (context + 1) + j being
  // channel c of the frame j before the one computed.
  const float* up_w = nullptr;
  const float* up_b = nullptr;  // [rows of up_w]: the bias of channel d at rows d * H + r
  // The per-layer 1x1 projection, row-major [rows][C], and its bias [rows].
  const float* proj_w = nullptr;
  const float* proj_b = nullptr;

  // Stream b's conditioning of output channel o at sample s (s < counts[b] * hop) at
  // out[b * out_stride_batch + o * out_stride_row + s]; samples beyond its count are not written.
  float* out = nullptr;
  int64_t out_stride_batch = 0, out_stride_row = 0;

  int num_threads = 0;  // CPU: 0 for every CPU this process may use

  // CUDA: the stream to launch on, and a device workspace of cuda_condition_workspace_bytes().
  void* stream = nullptr;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

namespace cpu {
// Fills p.out on the calling thread and the engine's pool; throws std::invalid_argument for
// sizes that do not fit together.
void condition_cpu(const CondParams& p);
}  // namespace cpu

namespace gpu {
int64_t cuda_condition_workspace_bytes(const CondParams& p);
// Launches on p.stream and returns without waiting; launch errors become std::runtime_error.
void condition_cuda(const CondParams& p);
}  // namespace gpu

}  // namespace nvwavenet
