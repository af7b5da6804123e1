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
  int head_rows;       // rows of W_out and W_end per head block (CLUSTER_SKIP_BLOCKS: the base, below)
  // CLUSTER_SKIP_BLOCKS only (zero for the others). Rows are split in units of `unit` rows (the
  // rows one warp of the product computes: persistent.cuh, skip_blocks_units): a block k of n holds
  // base rows, plus one unit when k < extra, from row k * base + min(k, extra) * unit on.
  int head_rows_extra;  // head blocks with head_rows + one unit rows
  int skip_blocks;      // ranks [layer_blocks + head_blocks, + skip_blocks) hold rows [chain_skip_rows, S) of W_skip
  int chain_skip_rows;  // c: the layer blocks hold rows [0, c) of their layers' W_skip
  int skip_rows_base;   // rows of W_skip (from row c) per skip block, plus one unit when k < skip_rows_extra
  int skip_rows_extra;
};

// Rows [first, first + count) of block k of a split into `base` rows each plus one `unit` more
// for the first `extra` blocks (PersistentSplit's head and skip rows).
struct RowRange {
  int first, count;
};
__host__ __device__ inline RowRange split_rows(int k, int base, int extra, int unit) {
  return RowRange{k * base + (k < extra ? k : extra) * unit, base + (k < extra ? unit : 0)};
}

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
  // CLUSTER_SKIP_BLOCKS's skip block, for `layers` layers and `skip_rows` rows of W_skip: the
  // layers' gated h at kInput (float[layers][R], written by the layer blocks), its rows of every
  // layer's W_skip ([layers][skip_rows][R]), the layers' biases of each row summed (float[skip_rows])
  // and its share of the skip sum (float[skip_rows]).
  int64_t rows_w, rows_bias, rows_share, skip_block_end;

  // skip_blocks: CLUSTER_SKIP_BLOCKS's layout (with_skip_blocks): chain_skip_rows rows of each
  // layer's W_skip in a layer block, `layer_blocks` = layer blocks + skip blocks skip shares into a
  // head block, uneven head rows, so the buffers after a row count are rounded up to 16 bytes (the
  // other variants' row counts keep them aligned: their offsets are the ones they always had).
  __host__ __device__ PersistentLayout(int capacity, int layer_blocks, int rows, bool fold = false,
                                       int streams = 1, int chain_skip_rows = S, int layers = 0,
                                       int skip_rows = 0, bool skip_blocks = false) {
    dilate_w = kInput + streams * R * 4;
    res_w = dilate_w + capacity * 4 * R * R * kW;
    skip_w = res_w + capacity * R * R * kW;
    dilate_b = skip_w + capacity * chain_skip_rows * R * kW;
    res_b = dilate_b + capacity * 2 * R * kW;
    skip_b = res_b + capacity * R * kW;
    pre = skip_b + aligned(capacity * chain_skip_rows * kW, skip_blocks);  // [capacity][streams][2R]
    gated = pre + streams * capacity * 2 * R * 4;  // [capacity][streams][R]
    partial = gated + streams * capacity * R * 4;  // [streams][S]
    const int64_t folds = fold && capacity > 1 ? capacity - 1 : 0;
    fold_w = partial + aligned(streams * chain_skip_rows * 4, skip_blocks);
    fold_b = fold_w + folds * 2 * R * R * kW;
    next_x = fold_b + folds * 2 * R * kW;
    fold_cur = next_x + (fold ? R * 4 : 0);
    layer_end = fold_cur + (fold ? 2 * R * 4 : 0);

    hidden = kSlots + int64_t(layer_blocks) * streams * S * 4;  // [streams][A]
    logits = hidden + streams * A * 4;                           // [streams][A]
    out_w = logits + streams * A * 4;
    end_w = out_w + rows * S * kW;
    out_b = end_w + rows * A * kW;
    end_b = out_b + aligned(rows * kW, skip_blocks);
    skip_sum = end_b + aligned(rows * kW, skip_blocks);  // [streams][S]
    head_end = skip_sum + streams * S * 4;

    rows_w = kInput + int64_t(layers) * R * 4;
    rows_bias = rows_w + int64_t(layers) * skip_rows * R * kW;
    rows_share = rows_bias + aligned(skip_rows * 4, true);
    skip_block_end = rows_share + aligned(skip_rows * 4, true);
  }
  // `streams`: per cluster (CLUSTER_BATCHED's k, a compile-time constant in the kernel; 1 for the
  // other variants).
  __host__ __device__ PersistentLayout(const PersistentSplit& split, bool fold = false, int streams = 1)
      : PersistentLayout(split.layer_capacity, split.layer_blocks, split.head_rows, fold, streams) {}

  // A split with skip blocks (CLUSTER_SKIP_BLOCKS) for `layers` layers: W_skip rows [0, c) in the
  // layer blocks, the head blocks' skip shares from layer blocks and skip blocks, rows up to one
  // unit (`unit`) more than the base in head and skip blocks.
  __host__ __device__ static PersistentLayout with_skip_blocks(const PersistentSplit& split, int layers, int head_unit,
                                                               int skip_unit) {
    return PersistentLayout(split.layer_capacity, split.layer_blocks + split.skip_blocks,
                            split.head_rows + (split.head_rows_extra > 0 ? head_unit : 0), false, 1,
                            split.chain_skip_rows, layers,
                            split.skip_rows_base + (split.skip_rows_extra > 0 ? skip_unit : 0), true);
  }

  __host__ __device__ int64_t bytes() const {
    const int64_t most = layer_end > head_end ? layer_end : head_end;
    return most > skip_block_end ? most : skip_block_end;
  }

 private:
  __host__ __device__ static int64_t aligned(int64_t bytes, bool round) {
    return round ? (bytes + 15) / 16 * 16 : bytes;
  }
};

// Whether one layer of this size can live in one sm_90 block at all; sizes where it cannot are
// not compiled for PERSISTENT.
template <int R, int S, int A, class W>
constexpr bool persistent_layer_fits() {
  return 64 + R * 4 + (4 * R * R + R * R + S * R + 2 * R + R + S) * int64_t(sizeof(W)) + (2 * R + R + S) * 4 <=
         kSm90SharedPerBlock;
}

}  // namespace nvwavenet::gpu
