// Device-side building blocks shared by every CUDA variant (single_block.cuh, dual_block.cuh,
// persistent.cuh): weight types, the one matrix-vector product, the gate, the sampler, the
// embedding, conditioning and output access, and bounded waits on memory flags.
//
// Numerics (SPEC section 1 in float32): activations, queues, accumulators, logits and the softmax
// are float32 in every precision; only the weights are stored in the network's dtype and widened
// to float32 as they are loaded. float16/bfloat16 therefore means "half the weight bytes", with
// float32 accumulation throughout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../nvwavenet.h"
#include "ptx.cuh"
#include "status.h"

namespace nvwavenet::gpu {

constexpr unsigned kFullMask = 0xffffffffu;

// ------------------------------------------------------------------------------------------------
// Weight element types: how 16 bytes of weights become floats.

template <class W>
struct WeightType;

template <>
struct WeightType<float> {
  static constexpr int kPerVector = 4;  // elements per 16-byte load
  __device__ __forceinline__ static void widen(const uint4& v, float (&out)[4]) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  }
  __device__ __forceinline__ static float to_float(float v) { return v; }
};

template <>
struct WeightType<__half> {
  static constexpr int kPerVector = 8;
  __device__ __forceinline__ static void widen(const uint4& v, float (&out)[8]) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 pair;
      memcpy(&pair, &words[i], sizeof(pair));
      const float2 f = __half22float2(pair);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
};

template <>
struct WeightType<__nv_bfloat16> {
  static constexpr int kPerVector = 8;
  __device__ __forceinline__ static void widen(const uint4& v, float (&out)[8]) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __nv_bfloat162 pair;
      memcpy(&pair, &words[i], sizeof(pair));
      const float2 f = __bfloat1622float2(pair);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ __forceinline__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

// Where weights are read from: 16 bytes for a product, or one element (a bias) as float. Weights
// never change during a launch, so global reads take the read-only path.
struct WeightsInGlobal {
  template <class W>
  __device__ __forceinline__ static uint4 load16(const W* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
  }
  template <class W>
  __device__ __forceinline__ static float value(const W* p) {
    return WeightType<W>::to_float(__ldg(p));
  }
};
struct WeightsInShared {
  template <class W>
  __device__ __forceinline__ static uint4 load16(const W* p) {
    return *reinterpret_cast<const uint4*>(p);
  }
  template <class W>
  __device__ __forceinline__ static float value(const W* p) {
    return WeightType<W>::to_float(*p);
  }
};

// Weights read from global memory come from L2 unless they are already in L1. A sequential chain
// (layer after layer) knows which weights come next long before it needs them, so it asks L1 to
// fetch them during the current layer: the next layer's loads then wait for L1 instead of L2.
// Blocks larger than this are not prefetched, so as not to evict what is in use.
constexpr int64_t kL1PrefetchBytes = 128 * 1024;

template <int64_t kBytes>
__device__ __forceinline__ void prefetch_l1(const void* base, int tid, int threads) {
  if constexpr (kBytes <= kL1PrefetchBytes) {
    const char* const start = static_cast<const char*>(base);
    for (int offset = tid * 128; offset < kBytes; offset += threads * 128)
      ptx::prefetch_global_l1(start + offset);
  }
}

// Where a matrix-vector product reads its input vector from: memory this block wrote (shared
// memory, or the queues in global memory), with plain loads; or global memory another block
// wrote, bypassing L1 so that no stale line is read.
struct InputFromThisBlock {
  __device__ __forceinline__ static float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
};
struct InputFromOtherBlock {
  __device__ __forceinline__ static float4 load4(const float* p) { return __ldcg(reinterpret_cast<const float4*>(p)); }
};

struct NoTransform {
  __device__ __forceinline__ float operator()(float v) const { return v; }
};
struct ReluTransform {
  __device__ __forceinline__ float operator()(float v) const { return fmaxf(v, 0.f); }
};

// ------------------------------------------------------------------------------------------------
// Activations. Written out because --use_fast_math turns tanhf into tanh.approx.f32, whose
// 2^-11 relative error is too coarse for the float32 tolerance (1e-4 on the logits); these are
// within a few 1e-7 absolute.

__device__ __forceinline__ float accurate_tanh(float x) {
  const float e = __expf(2.f * fabsf(x));  // inf for large |x|: the result is then exactly +-1
  return copysignf(1.f - 2.f * __frcp_rn(e + 1.f), x);
}

__device__ __forceinline__ float sigmoid(float x) { return __frcp_rn(1.f + __expf(-x)); }

// h = tanh(a[:R]) * sigmoid(a[R:]), one channel.
__device__ __forceinline__ float gate(float tanh_input, float sigmoid_input) {
  return accurate_tanh(tanh_input) * sigmoid(sigmoid_input);
}

// ------------------------------------------------------------------------------------------------
// The matrix-vector product, y[m][b] = sum_k W[m][k] * x[b][k], used for every product of every
// variant. W is row-major [out][in] (the Params layout), so the threads that share a row read it
// with 16-byte loads, coalesced across the lanes of the row group; x is float32.
//
// Work split among the NT threads of a group (a block or a named-barrier group):
// - a row is read by kLanesPerRow lanes of one warp (16-byte chunk c goes to lane c % kLanesPerRow),
//   so a warp handles kRowsPerWarp rows at once and the group kRowsPerPass;
// - each lane accumulates BT streams (batch tile) times NP rows, then the row group sums the
//   partials with a butterfly that halves the vector at each level (reduce-scatter), so a tile of
//   BT streams costs about BT shuffles per row instead of BT * log2(kLanesPerRow);
// - NP = 2 pairs row m with row m + pair_rows in the same lanes: the dilated convolution produces
//   the tanh and the sigmoid input of channel m together, so the gate needs no extra barrier.
//
// The epilogue epi(m, b, v) runs exactly once per (row m, stream b), on a fixed thread for a given
// shape (so epilogues that accumulate across calls of the same shape need no barrier between them).
// Requirements: K a power-of-two multiple of the vector width, rows % kRowsPerWarp == 0, 16-byte
// aligned rows (ldw * sizeof(W) % 16 == 0) and input rows (ldx % 4 == 0).
template <class W, int K, int NT>
struct MatvecShape {
  static constexpr int kVec = WeightType<W>::kPerVector;
  static constexpr int kChunks = K / kVec;
  static constexpr int kLanesPerRow = kChunks < 32 ? kChunks : 32;
  static constexpr int kChunksPerLane = kChunks / kLanesPerRow;
  static constexpr int kRowsPerWarp = 32 / kLanesPerRow;
  static constexpr int kWarps = NT / 32;
  static constexpr int kRowsPerPass = kWarps * kRowsPerWarp;
  static_assert(NT % 32 == 0, "a matvec group is made of whole warps");
  static_assert(K % kVec == 0 && (kChunks & (kChunks - 1)) == 0 && kChunks >= 2,
                "K must be a power-of-two multiple of the 16-byte vector width");
};

// Butterfly reduce-scatter over the lanes of a row group: at the level with lane distance OFFSET,
// the vector of N streams is halved, each lane keeping the half selected by its OFFSET bit and
// adding its partner's copy of that half. Once one stream is left, plain xor reduction finishes.
// Afterwards lane r of the group holds streams [r * BT / LPR, ...) (see matvec).
template <int OFFSET, int N, int BT, int NP>
__device__ __forceinline__ void reduce_scatter(float (&v)[BT][NP], int lane) {
  if constexpr (OFFSET > 0) {
    if constexpr (N > 1) {
      constexpr int H = N / 2;
      const bool upper = (lane & OFFSET) != 0;
#pragma unroll
      for (int i = 0; i < H; ++i) {
#pragma unroll
        for (int p = 0; p < NP; ++p) {
          const float send = upper ? v[i][p] : v[i + H][p];
          const float keep = upper ? v[i + H][p] : v[i][p];
          v[i][p] = keep + __shfl_xor_sync(kFullMask, send, OFFSET);
        }
      }
      reduce_scatter<OFFSET / 2, H, BT, NP>(v, lane);
    } else {
#pragma unroll
      for (int p = 0; p < NP; ++p) v[0][p] += __shfl_xor_sync(kFullMask, v[0][p], OFFSET);
      reduce_scatter<OFFSET / 2, 1, BT, NP>(v, lane);
    }
  }
}

template <class W, int K, int BT, int NP, int NT, class WSource, class XSource, class XForm, class Epilogue>
__device__ __forceinline__ void matvec(const W* __restrict__ w, int ldw, int pair_rows, int rows, const float* x,
                                       int64_t ldx, int tid, XForm xform, Epilogue&& epi) {
  using Shape = MatvecShape<W, K, NT>;
  constexpr int V = Shape::kVec;
  constexpr int LPR = Shape::kLanesPerRow;
  constexpr int CPL = Shape::kChunksPerLane;
  static_assert((BT & (BT - 1)) == 0, "the batch tile must be a power of two");
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int r = lane % LPR;  // position within the row group
  const int g = lane / LPR;  // row group within the warp

  // The lane's slice of x is the same for every row: keep it in registers when it is small.
  constexpr bool kCacheX = BT * CPL * V <= 32;
  float xc[kCacheX ? BT : 1][kCacheX ? CPL * V : 1];
  if constexpr (kCacheX) {
#pragma unroll
    for (int b = 0; b < BT; ++b)
#pragma unroll
      for (int j = 0; j < CPL; ++j)
#pragma unroll
        for (int q = 0; q < V / 4; ++q) {
          const float4 f = XSource::load4(x + b * ldx + (r + j * LPR) * V + 4 * q);
          xc[b][j * V + 4 * q + 0] = xform(f.x);
          xc[b][j * V + 4 * q + 1] = xform(f.y);
          xc[b][j * V + 4 * q + 2] = xform(f.z);
          xc[b][j * V + 4 * q + 3] = xform(f.w);
        }
  }

  // Ownership after the reduce-scatter.
  constexpr int kOut = BT >= LPR ? BT / LPR : 1;
  const int first = (r * BT) / LPR;
  const bool owner = BT >= LPR || (r % (LPR / (BT < LPR ? BT : LPR))) == 0;

  // Two rows in flight per lane for a single stream; a tile already has BT independent sums.
  constexpr int kRowUnroll = BT == 1 ? 2 : 1;
#pragma unroll kRowUnroll
  for (int m0 = warp * Shape::kRowsPerWarp; m0 < rows; m0 += Shape::kRowsPerPass) {
    const int m = m0 + g;
    const auto load_chunk = [&](int j, int p) {
      return WSource::load16(w + static_cast<int64_t>(m + p * pair_rows) * ldw + (r + j * LPR) * V);
    };
    // A single stream's row loads all go out at once (latency: the chains wait on them); a tile,
    // which has BT sums per row to keep busy and few registers to spare, loads chunk by chunk.
    constexpr bool kLoadAll = BT == 1;
    uint4 wv[kLoadAll ? CPL : 1][NP];
    if constexpr (kLoadAll) {
#pragma unroll
      for (int j = 0; j < CPL; ++j)
#pragma unroll
        for (int p = 0; p < NP; ++p) wv[j][p] = load_chunk(j, p);
    }

    float acc[BT][NP];
#pragma unroll
    for (int b = 0; b < BT; ++b)
#pragma unroll
      for (int p = 0; p < NP; ++p) acc[b][p] = 0.f;

    // A tile's inputs (BT x V floats per chunk) are many registers: one chunk at a time, or the
    // compiler hoists every chunk's loads and spills.
    // The x cache is indexed by chunk, so a cached tile unrolls too (else the cache goes to local memory).
  constexpr int kChunkUnroll = BT == 1 || kCacheX ? CPL : 1;
#pragma unroll kChunkUnroll
    for (int j = 0; j < CPL; ++j) {
      float wf[NP][V];
#pragma unroll
      for (int p = 0; p < NP; ++p) WeightType<W>::widen(kLoadAll ? wv[j][p] : load_chunk(j, p), wf[p]);
#pragma unroll
      for (int b = 0; b < BT; ++b) {
        float xv[V];
        if constexpr (kCacheX) {
#pragma unroll
          for (int e = 0; e < V; ++e) xv[e] = xc[b][j * V + e];
        } else {
#pragma unroll
          for (int q = 0; q < V / 4; ++q) {
            const float4 f = XSource::load4(x + b * ldx + (r + j * LPR) * V + 4 * q);
            xv[4 * q + 0] = xform(f.x);
            xv[4 * q + 1] = xform(f.y);
            xv[4 * q + 2] = xform(f.z);
            xv[4 * q + 3] = xform(f.w);
          }
        }
#pragma unroll
        for (int p = 0; p < NP; ++p)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[b][p] = fmaf(wf[p][e], xv[e], acc[b][p]);
      }
    }

    reduce_scatter<LPR / 2, BT, BT, NP>(acc, r);
    if (owner) {
#pragma unroll
      for (int i = 0; i < kOut; ++i) epi(m, first + i, acc[i]);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Network pieces. The dilation walk and the queue indexing (next_dilation, layer_position,
// queue_rows, queue_slot) are nvwavenet.h's, shared with the CPU engine.

// x_0[k] = E_prev[y_{t-2}][k] + E_curr[y_{t-1}][k], tanh'ed when the network says so.
template <class W, int R>
__device__ __forceinline__ float embed(const Params& p, int y_prev2, int y_prev1, int k) {
  const W* prev = static_cast<const W*>(p.embed_prev);
  const W* curr = static_cast<const W*>(p.embed_curr);
  const float v = WeightType<W>::to_float(__ldg(prev + static_cast<int64_t>(y_prev2) * R + k)) +
                  WeightType<W>::to_float(__ldg(curr + static_cast<int64_t>(y_prev1) * R + k));
  return p.use_embed_tanh ? accurate_tanh(v) : v;
}

// cond[channel, stream, layer, t], any strides, float32 or float16.
__device__ __forceinline__ float load_cond(const Params& p, int64_t stream, int layer, int channel, int64_t t) {
  const int64_t offset = channel * p.cond_stride_channel + stream * p.cond_stride_batch + layer * p.cond_stride_layer +
                         t * p.cond_stride_time;
  if (p.cond_dtype == DType::Float16) return __half2float(__ldg(static_cast<const __half*>(p.cond) + offset));
  return __ldg(static_cast<const float*>(p.cond) + offset);
}

__device__ __forceinline__ float load_selector(const Params& p, int64_t stream, int64_t t) {
  return __ldg(p.selectors + stream * p.selectors_stride_batch + t * p.selectors_stride_time);
}

// The class fed back as the past: the teacher's when teacher forcing, else the drawn one.
__device__ __forceinline__ int fed_back_class(const Params& p, int64_t stream, int64_t t, int drawn) {
  return p.teacher ? __ldg(p.teacher + stream * p.teacher_stride_batch + t * p.teacher_stride_time) : drawn;
}

// The part of each layer's pre-activation that does not depend on x_l[t], for one stream:
//   pre[i][:] = W_prev,l x_l[t - d_l] + b_l + cond[:, stream, l, t],   l = first + i, i < count.
// Every x_l[t - d_l] is already in the queues when step t starts, so these products can all run
// before, and off, the sequential layer chain, which then only needs W_cur,l x_l[t].
// dilate_w / dilate_b point at layer `first`'s [2R][2R] weights and 2R biases (in global or
// shared memory, per WSource); pre is [count][2R].
template <class W, int R, int NT, class WSource>
__device__ __forceinline__ void precompute_layers(const Params& p, const W* dilate_w, const W* dilate_b, int first,
                                                  int count, int64_t stream, int64_t rows, int64_t t, float* pre,
                                                  int tid) {
  int64_t offset;
  int dilation;
  layer_position(first, p.max_dilation, offset, dilation);
  for (int i = 0; i < count; ++i) {
    const int l = first + i;
    const float* past = p.queues + queue_slot(p, stream, rows, offset, dilation, t) * R;
    const W* bias = dilate_b + int64_t(i) * 2 * R;
    float* out = pre + int64_t(i) * 2 * R;
    matvec<W, R, 1, 2, NT, WSource, InputFromThisBlock>(
        dilate_w + int64_t(i) * 4 * R * R, 2 * R, R, R, past, 0, tid, NoTransform{},
        [&](int m, int, const float (&v)[2]) {
          out[m] = v[0] + WSource::value(bias + m) + load_cond(p, stream, l, m, t);
          out[R + m] = v[1] + WSource::value(bias + R + m) + load_cond(p, stream, l, R + m, t);
        });
    offset += dilation;
    dilation = next_dilation(dilation, p.max_dilation);
  }
}

// One warp draws the class of one stream from A float32 logits in shared memory: the smallest k
// with u * sum(e) < e_0 + ... + e_k, e_k = exp(logit_k - max) (A - 1 when rounding leaves none),
// which is SPEC's "u < cumsum(softmax)" without dividing every term. Every lane returns it.
template <int A>
__device__ __forceinline__ int warp_sample(const float* logits, float u, int lane) {
  constexpr int kPer = A / 32;  // consecutive classes per lane, so lane order is class order
  static_assert(A % 128 == 0, "the sampler reads each lane's classes as float4");
  float v[kPer];
#pragma unroll
  for (int q = 0; q < kPer / 4; ++q) {
    const float4 f = *reinterpret_cast<const float4*>(logits + lane * kPer + 4 * q);
    v[4 * q] = f.x;
    v[4 * q + 1] = f.y;
    v[4 * q + 2] = f.z;
    v[4 * q + 3] = f.w;
  }
  float top = v[0];
#pragma unroll
  for (int i = 1; i < kPer; ++i) top = fmaxf(top, v[i]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) top = fmaxf(top, __shfl_xor_sync(kFullMask, top, o));

  float prefix[kPer];
  float own = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    own += __expf(v[i] - top);
    prefix[i] = own;
  }
  float inclusive = own;  // warp inclusive scan of the lanes' sums
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const float before = __shfl_up_sync(kFullMask, inclusive, o);
    if (lane >= o) inclusive += before;
  }
  const float total = __shfl_sync(kFullMask, inclusive, 31);
  const float exclusive = inclusive - own;
  const float threshold = u * total;
  // The cumulative sums never decrease, so the classes at or below the threshold are exactly
  // those before the answer: count them.
  int below = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) below += (exclusive + prefix[i] <= threshold) ? 1 : 0;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) below += __shfl_xor_sync(kFullMask, below, o);
  return below < A - 1 ? below : A - 1;
}

// One warp writes one stream's step outputs: the drawn class and, when asked for, the logits.
template <int A>
__device__ __forceinline__ void write_step_outputs(const Params& p, int64_t stream, int64_t t, int drawn,
                                                   const float* logits, int lane) {
  if (lane == 0) p.samples[stream * p.samples_stride_batch + t * p.samples_stride_time] = drawn;
  if (p.logits) {
    float* out = p.logits + stream * p.logits_stride_batch + t * p.logits_stride_time;
    for (int k = lane; k < A; k += 32) out[k * p.logits_stride_class] = logits[k];
  }
}

// ------------------------------------------------------------------------------------------------
// Memory flags between blocks and bounded waits.
//
// Protocol: a producer's threads write the data, meet at a barrier, then one thread publishes a
// monotonically increasing 64-bit counter with release semantics (the barrier makes the other
// threads' writes part of what it releases); a consumer thread reads the counter with acquire
// semantics until it reaches the value it needs, then meets its own threads at a barrier before
// they read the data.

__device__ __forceinline__ uint64_t load_acquire_gpu(const uint64_t* p) { return ptx::ld_acquire_gpu(p); }
__device__ __forceinline__ void store_release_gpu(uint64_t* p, uint64_t v) { ptx::st_release_gpu(p, v); }
__device__ __forceinline__ uint64_t load_acquire_cluster(const uint64_t* p) { return ptx::ld_acquire_cluster(p); }
// Adds to a counter in (possibly another block's) shared memory of this cluster.
__device__ __forceinline__ void add_release_cluster(uint64_t* p, uint64_t v) { ptx::red_release_cluster_add(p, v); }
__device__ __forceinline__ int32_t load_relaxed_gpu(const int32_t* p) { return ptx::ld_relaxed_gpu(p); }
__device__ __forceinline__ uint64_t global_timer_ns() { return ptx::globaltimer(); }

struct WaitContext {
  DeviceStatus* status;
  int64_t timeout_ns;
  int32_t site;
  int64_t step;
};

__device__ __forceinline__ bool aborted(const DeviceStatus* status) { return load_relaxed_gpu(&status->abort) != 0; }

// Records the first failure and tells every block to stop. Out of line: it is the cold path of
// every wait, and keeping it out keeps the waits small.
static __device__ __noinline__ void report_timeout(WaitContext ctx, uint64_t observed, uint64_t expected) {
  if (atomicCAS(&ctx.status->code, kStatusOk, kStatusTimeout) == kStatusOk) {
    ctx.status->site = ctx.site;
    ctx.status->block = static_cast<int32_t>(blockIdx.x);
    ctx.status->step = ctx.step;
    ctx.status->observed = observed;
    ctx.status->expected = expected;
  }
  __threadfence();
  atomicExch(&ctx.status->abort, 1);
}

// Spins until load() >= target; `seen` is the last value read. Returns false, without waiting
// longer, when another block has aborted or when ctx.timeout_ns have passed (then it reports the
// timeout itself).
template <class Load>
__device__ __forceinline__ bool bounded_wait(Load load, uint64_t target, const WaitContext& ctx, uint64_t& seen) {
  seen = load();
  if (seen >= target) return true;
  const uint64_t start = global_timer_ns();
  for (uint32_t spin = 1;; ++spin) {
    seen = load();
    if (seen >= target) return true;
    if ((spin & 255u) == 0) {
      if (aborted(ctx.status)) return false;
      if (static_cast<int64_t>(global_timer_ns() - start) > ctx.timeout_ns) {
        report_timeout(ctx, seen, target);
        return false;
      }
    }
  }
}

// Block-wide agreement: true when every thread passed true. Also a full barrier.
__device__ __forceinline__ bool block_all(bool ok) { return __syncthreads_and(ok ? 1 : 0) != 0; }

// Named barrier over the first `threads` threads of the block (barrier 0 is __syncthreads).
__device__ __forceinline__ void group_barrier(int id, int threads) { ptx::bar_sync(id, threads); }
// Arrives at a named barrier without waiting: a producer's side of a producer/consumer barrier.
__device__ __forceinline__ void group_arrive(int id, int threads) { ptx::bar_arrive(id, threads); }
// Named-barrier agreement: true when every participating thread passed true.
__device__ __forceinline__ bool group_all(int id, int threads, bool ok) { return ptx::bar_red_and(id, threads, ok); }

// Copies `bytes` (a multiple of 16, 16-byte aligned both sides) with the threads of a block.
__device__ __forceinline__ void copy16(void* dst, const void* src, int64_t bytes, int tid, int threads) {
  uint4* d = static_cast<uint4*>(dst);
  const uint4* s = static_cast<const uint4*>(src);
  for (int64_t i = tid; i < bytes / 16; i += threads) d[i] = __ldg(s + i);
}

}  // namespace nvwavenet::gpu
