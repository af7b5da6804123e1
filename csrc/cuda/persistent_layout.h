// How PERSISTENT splits the network over one cluster's blocks, and the shared-memory layout that
// follows; host code (planning, the list of built sizes) and device code (persistent.cuh) use the same one.
#pragma once

#include <cstdint>

namespace nvwavenet::gpu {

constexpr int kPersistentThreads = 512;
constexpr int kMaxClusterBlocks = 16;                // the largest (non-portable) cluster on sm_90
constexpr int64_t kSm90SharedPerBlock = 227 * 1024;  // the most shared memory one sm_90 block can opt into

// Trace stamps per block (persistent.cuh, trace_event), and the workspace they take.
constexpr int kTraceEvents = 32;
#ifdef NVWAVENET_TRACE
constexpr int64_t kPersistentTraceBytes = int64_t(kMaxClusterBlocks) * kTraceEvents * 8;
#else
constexpr int64_t kPersistentTraceBytes = 0;
#endif

// How one cluster's blocks share the network; passed to the kernel by value.
struct PersistentSplit {
  int layer_blocks;  // ranks [0, layer_blocks) hold layers
  int head_blocks;   // the next head_blocks ranks hold rows of the head; the first samples
  int layers_base;   // layer block j holds layers_base layers, plus one when j < layers_extra
  int layers_extra;
  int layer_capacity;  // the most layers any block holds (shared-memory layout)
  int head_rows;       // rows of W_out and W_end per head block
};

// Byte offsets in shared memory. Every block computes the same layout, so a producer can address
// its consumer's buffers; the buffers that other blocks write come first, at fixed offsets.
template <int R, int S, int A, class W>
struct PersistentLayout {
  static constexpr int64_t kW = sizeof(W);
  // uint64 counters at offset 0, advanced by producers: inputs (layer blocks), skip shares,
  // z slices, logit slices (head blocks).
  static constexpr int kInputCounter = 0;
  static constexpr int kSkipCounter = 1;
  static constexpr int kHiddenCounter = 2;
  static constexpr int kLogitCounter = 3;
  // CLUSTER: uint64 per counter above at this index, the bytes all producers sent into that slot
  // over the call (added once, at exit; persistent.cuh, add_sent_bytes).
  static constexpr int kSentBytes = 4;
  // Every activation buffer below is per stream: `streams` copies side by side, stream-major
  // (float[streams][...]), so that one product reads all streams of the cluster at a fixed stride.
  static constexpr int64_t kInput = 64;  // layer block: float[streams][R], x entering its first layer
  static constexpr int64_t kSlots = 64;  // head block: float[layer_blocks][streams][S], the skip shares

  // Layer block, for `capacity` layers. With the fold (CLUSTER_FOLD), also F and g for each layer
  // but the block's first (fold_w [capacity-1][2R][R], fold_b [capacity-1][2R]), the next layer's
  // x (next_x [R]: x is read while the next one is made) and the fold's running sum (fold_cur [2R]).
  int64_t dilate_w, res_w, skip_w, dilate_b, res_b, skip_b, pre, gated, partial, fold_w, fold_b, next_x, fold_cur,
      layer_end;
  // Head block, for `layer_blocks` skip shares and `rows` rows.
  int64_t hidden, logits, out_w, end_w, out_b, end_b, skip_sum, head_end;

  __host__ __device__ PersistentLayout(int capacity, int layer_blocks, int rows, bool fold = false,
                                       int streams = 1) {
    dilate_w = kInput + streams * R * 4;
    res_w = dilate_w + capacity * 4 * R * R * kW;
    skip_w = res_w + capacity * R * R * kW;
    dilate_b = skip_w + capacity * S * R * kW;
    res_b = dilate_b + capacity * 2 * R * kW;
    skip_b = res_b + capacity * R * kW;
    pre = skip_b + capacity * S * kW;              // [capacity][streams][2R]
    gated = pre + streams * capacity * 2 * R * 4;  // [capacity][streams][R]
    partial = gated + streams * capacity * R * 4;  // [streams][S]
    const int64_t folds = fold && capacity > 1 ? capacity - 1 : 0;
    fold_w = partial + streams * S * 4;
    fold_b = fold_w + folds * 2 * R * R * kW;
    next_x = fold_b + folds * 2 * R * kW;
    fold_cur = next_x + (fold ? R * 4 : 0);
    layer_end = fold_cur + (fold ? 2 * R * 4 : 0);

    hidden = kSlots + int64_t(layer_blocks) * streams * S * 4;  // [streams][A]
    logits = hidden + streams * A * 4;                           // [streams][A]
    out_w = logits + streams * A * 4;
    end_w = out_w + rows * S * kW;
    out_b = end_w + rows * A * kW;
    end_b = out_b + rows * kW;
    skip_sum = end_b + rows * kW;  // [streams][S]
    head_end = skip_sum + streams * S * 4;
  }
  // `streams`: per cluster (CLUSTER_BATCHED's k, a compile-time constant in the kernel; 1 for the
  // other variants).
  __host__ __device__ PersistentLayout(const PersistentSplit& split, bool fold = false, int streams = 1)
      : PersistentLayout(split.layer_capacity, split.layer_blocks, split.head_rows, fold, streams) {}

  __host__ __device__ int64_t bytes() const { return layer_end > head_end ? layer_end : head_end; }
};

// Whether one layer of this size can live in one sm_90 block at all; sizes where it cannot are
// not compiled for PERSISTENT.
template <int R, int S, int A, class W>
constexpr bool persistent_layer_fits() {
  return 64 + R * 4 + (4 * R * R + R * R + S * R + 2 * R + R + S) * int64_t(sizeof(W)) + (2 * R + R + S) * 4 <=
         kSm90SharedPerBlock;
}

}  // namespace nvwavenet::gpu
