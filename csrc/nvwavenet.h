// The one params struct behind every engine (the CPU engine and each CUDA kernel variant).
//
// Plain C++ with no torch or CUDA types, so the module builds against any PyTorch or none. The
// Python side (nvwavenet/engines.py) owns every buffer as a torch tensor and fills this struct
// with raw pointers: host pointers for the CPU engine, device pointers for the CUDA kernels.
// What one call computes is SPEC section 1 for `num_samples` steps of `batch` streams.
#pragma once

#include <cstdint>

namespace nvwavenet {

enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Functions below that the CUDA kernels call too.
#ifdef __CUDACC__
#define NVWAVENET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NVWAVENET_HOST_DEVICE inline
#endif

// The CUDA kernel variants, the one table of their names in C++: enumerator (also the name of the
// variant's class template in csrc/cuda/host.h, which launch.cu dispatches to), nvwavenet.Impl
// value, nvwavenet.Impl name (tests/test_session.py checks it against nvwavenet.Impl).
#define NVWAVENET_FOR_EACH_VARIANT(X)  \
  X(SingleBlock, 1, "SINGLE_BLOCK")    \
  X(DualBlock, 2, "DUAL_BLOCK")        \
  X(Persistent, 3, "PERSISTENT")       \
  X(Cluster, 4, "CLUSTER")             \
  X(TensorCore, 5, "TENSOR_CORE")      \
  X(ClusterFold, 6, "CLUSTER_FOLD")    \
  X(ClusterBatched, 7, "CLUSTER_BATCHED") \
  X(ClusterRoles, 8, "CLUSTER_ROLES")    \
  X(ClusterSkipBlocks, 9, "CLUSTER_SKIP_BLOCKS")

#define NVWAVENET_VARIANT_ENUMERATOR(enumerator, value, name) enumerator = value,
enum class Variant : int32_t { Auto = 0, NVWAVENET_FOR_EACH_VARIANT(NVWAVENET_VARIANT_ENUMERATOR) };
#undef NVWAVENET_VARIANT_ENUMERATOR

// "AUTO", a variant's name, or nullptr for a value that names none.
inline const char* variant_name(int32_t variant) {
  if (variant == 0) return "AUTO";
#define NVWAVENET_VARIANT_NAME(enumerator, value, name) \
  if (variant == value) return name;
  NVWAVENET_FOR_EACH_VARIANT(NVWAVENET_VARIANT_NAME)
#undef NVWAVENET_VARIANT_NAME
  return nullptr;
}

// The dilation pattern (SPEC section 1), walked in one place for every engine: layer dilations
// double from 1 up to max_dilation, then start over. Layer l owns rows
// [layer_queue_offset(l), layer_queue_offset(l) + layer_dilation(l)) of a stream's queue block.
NVWAVENET_HOST_DEVICE int next_dilation(int dilation, int max_dilation) {
  return dilation == max_dilation ? 1 : 2 * dilation;
}

// Queue offset and dilation of layer `layer`, walking the layers from the first.
NVWAVENET_HOST_DEVICE void layer_position(int layer, int max_dilation, int64_t& offset, int& dilation) {
  offset = 0;
  dilation = 1;
  for (int l = 0; l < layer; ++l) {
    offset += dilation;
    dilation = next_dilation(dilation, max_dilation);
  }
}

NVWAVENET_HOST_DEVICE int layer_dilation(int layer, int max_dilation) {
  int64_t offset;
  int dilation;
  layer_position(layer, max_dilation, offset, dilation);
  return dilation;
}

NVWAVENET_HOST_DEVICE int64_t layer_queue_offset(int layer, int max_dilation) {
  int64_t offset;
  int dilation;
  layer_position(layer, max_dilation, offset, dilation);
  return offset;
}

// Rows of one stream's queue block: the sum of all layers' dilations.
NVWAVENET_HOST_DEVICE int64_t queue_rows(int layers, int max_dilation) { return layer_queue_offset(layers, max_dilation); }

struct Params {
  // Network sizes: A audio classes, R residual, S skip channels, L layers.
  int32_t R = 0, S = 0, A = 0, L = 0;
  int32_t max_dilation = 1;
  bool use_embed_tanh = false;

  // Work: `batch` streams, `num_samples` steps each.
  int32_t batch = 0;
  int64_t num_samples = 0;

  // Weights, contiguous, row-major [out][in], all in weight_dtype.
  DType weight_dtype = DType::Float32;
  const void* embed_prev = nullptr;  // [A][R]
  const void* embed_curr = nullptr;  // [A][R]
  const void* dilate_w = nullptr;    // [L][2R][2R]: columns [0, R) multiply x_l[t - d_l], [R, 2R) x_l[t]
  const void* dilate_b = nullptr;    // [L][2R]: rows [0, R) feed tanh, [R, 2R) feed sigmoid
  const void* res_w = nullptr;       // [L-1][R][R]
  const void* res_b = nullptr;       // [L-1][R]
  const void* skip_w = nullptr;      // [L][S][R]
  const void* skip_b = nullptr;      // [L][S]
  const void* out_w = nullptr;       // [A][S]
  const void* out_b = nullptr;       // [A]
  const void* end_w = nullptr;       // [A][A]
  const void* end_b = nullptr;       // [A]
  // CLUSTER_FOLD only (the others ignore them): F_l = W_cur(l+1) W_res(l) and g_l = W_cur(l+1) b_res(l),
  // made in float64 from the weights above and rounded once to weight_dtype (engines.PackedWeights),
  // so that layer l+1's x_t-tap product W_cur(l+1) x_{l+1} = W_cur(l+1) x_l + F_l h_l + g_l.
  const void* fold_w = nullptr;  // [L-1][2R][R], W_cur(l+1) = dilate_w[l+1][:, R:2R]
  const void* fold_b = nullptr;  // [L-1][2R]

  // The CPU engine's own copy of the weights above, blocked for streaming through the cache:
  // filled once by pack_cpu_weights() (csrc/cpu/packing.h) into a buffer of cpu_packed_bytes()
  // that Python owns. Read only by generate_cpu; the CUDA kernels ignore it.
  const void* cpu_weights = nullptr;
  int64_t cpu_weights_bytes = 0;

  // Conditioning, logical [2R][batch][L][num_samples], any element strides, in cond_dtype.
  const void* cond = nullptr;
  DType cond_dtype = DType::Float32;
  int64_t cond_stride_channel = 0, cond_stride_batch = 0, cond_stride_layer = 0, cond_stride_time = 0;

  // Uniform numbers u_t in [0, 1), float32 [batch][num_samples].
  const float* selectors = nullptr;
  int64_t selectors_stride_batch = 0, selectors_stride_time = 0;

  // Optional teacher forcing, int32 [batch][num_samples]: fed back as the past instead of the
  // drawn sample (the drawn one is still written). nullptr: free running.
  const int32_t* teacher = nullptr;
  int64_t teacher_stride_batch = 0, teacher_stride_time = 0;

  // Outputs: drawn classes, int32 [batch][num_samples]; optional logits, float32 [batch][A][num_samples].
  int32_t* samples = nullptr;
  int64_t samples_stride_batch = 0, samples_stride_time = 0;
  float* logits = nullptr;
  int64_t logits_stride_batch = 0, logits_stride_class = 0, logits_stride_time = 0;

  // Generation state, read and updated in place (nvwavenet/state.py, nvwavenet/session.py): a pool
  // of `pool_rows` streams' rows, queues float32 [pool_rows][sum_l d_l][R] and history int32
  // [pool_rows][2] = y_{t-2}, y_{t-1}. Call stream b uses pool row slots[b] and has generated
  // positions[b] steps before this call; queue slot `(positions[b] + t) % d_l` of layer l holds
  // x_l[t - d_l] at step t. Rows that no call stream names are neither read nor written, so
  // streams join and leave a pool at any step without touching each other.
  // slots == nullptr: stream b uses row b (pool_rows >= batch); positions == nullptr: every stream
  // is at `position` (the whole-batch layout of nvwavenet/state.py). pool_rows == 0 means batch.
  // slots and positions are host memory for the CPU engine (checked there: rows in range and
  // distinct, positions >= 0 with room for num_samples more), device memory for the CUDA kernels
  // (checked by the caller: nvwavenet.session.Session keeps them valid by construction).
  float* queues = nullptr;
  int32_t* history = nullptr;
  int64_t position = 0;
  int64_t pool_rows = 0;
  const int32_t* slots = nullptr;     // [batch]
  const int64_t* positions = nullptr; // [batch]
  // Each stream's own number of steps, int64 [batch] in [0, num_samples], host memory (the CPU
  // engine only; the CUDA kernels refuse it): stream b runs steps [0, steps[b]) of the call and
  // its state, samples and logits at later steps are left untouched, so streams with fewer steps
  // ready can share a call. nullptr: every stream runs num_samples steps.
  const int64_t* steps = nullptr;

  // Engine resources: device scratch owned by Python, the CUDA stream, CPU threads (0: default).
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  void* stream = nullptr;
  int32_t num_threads = 0;

  // CUDA engine controls (the CPU engine ignores them). The workspace (zero-filled by each CUDA
  // call itself, on `stream`) must hold at least nvwavenet::gpu::plan(...).workspace_bytes; it carries the
  // kernel's status block (csrc/cuda/status.h) and the DUAL_BLOCK flags and mailboxes.
  int32_t device = 0;                       // CUDA device index that every pointer above lives on
  int32_t streams_per_block = 0;            // SINGLE_BLOCK batch tile: 1, 2, 4 or 8 streams (0 means 1);
                                            // TENSOR_CORE: 8, 16, 32 or 64 (0: its plan chooses)
  int64_t spin_timeout_ns = 2000000000;     // a wait on another block longer than this stops the
                                            // kernel, which then reports a RuntimeError
};

// The pool row and the position of call stream b (see Params::slots).
NVWAVENET_HOST_DEVICE int64_t stream_row(const Params& p, int64_t b) { return p.slots != nullptr ? p.slots[b] : b; }
NVWAVENET_HOST_DEVICE int64_t stream_position(const Params& p, int64_t b) {
  return p.positions != nullptr ? p.positions[b] : p.position;
}

// The steps call stream b runs (see Params::steps).
NVWAVENET_HOST_DEVICE int64_t stream_steps(const Params& p, int64_t b) {
  return p.steps != nullptr ? p.steps[b] : p.num_samples;
}

// The queue row, in the pool (`rows` per stream: queue_rows), of call stream b's layer l (first
// row `offset`, dilation d) at step t of this call: it holds x_l[t - d] on entry and receives
// x_l[t]. Every engine's queue indexing.
NVWAVENET_HOST_DEVICE int64_t queue_slot(const Params& p, int64_t b, int64_t rows, int64_t offset, int dilation,
                                         int64_t t) {
  return stream_row(p, b) * rows + offset + ((stream_position(p, b) + t) & (dilation - 1));
}
#undef NVWAVENET_HOST_DEVICE

}  // namespace nvwavenet
