// PERSISTENT: the weights are split across the blocks of one thread-block cluster (sm_90) and
// stay in their shared memory for the whole call; one cluster generates one stream, and clusters
// for further streams run side by side or one after another (they never wait on each other).
//
//   ranks [0, layer_blocks)              layer blocks: a contiguous run of layers each, holding
//                                        W_dil (both taps), W_res, W_skip and biases
//   ranks [layer_blocks, +head_blocks)   head blocks: a slice of rows of W_out and W_end each;
//                                        the first also samples
//
// Per step t:
//   layer block j   waits for x entering its first layer (from block j-1, or from the sampler);
//                   for its layers: a = pre_l + W_cur,l x, h_l = gate(a), x += W_res,l h_l + b;
//                   sends x to block j+1; sends its share of the skip sum, sum of W_skip,l h_l + b,
//                   to every head block; then computes the next step's pre_l = W_prev,l x_l[t+1-d_l]
//                   + b_l + cond_l[t+1] (precompute_layers) while the rest of the cluster works.
//   head block h    waits for all skip shares, sums them, computes its slice of
//                   z = relu(W_out relu(s) + b) and writes it into every head block (all-gather),
//                   then its slice of logits = W_end z + b into the sampling block.
//   sampling block  waits for all logit slices, samples, writes the outputs and sends
//                   x_0[t+1] = embedding of the fed-back classes to layer block 0.
// Hand-offs go through distributed shared memory, in one of two ways (handoff.cuh), the rest of
// the kernel being the same: PERSISTENT (FlagHandoff) stores into the consumer's shared memory,
// meets its threads at a barrier, and one thread adds to a counter in the consumer's shared memory
// with release semantics at cluster scope; the consumer polls its own counter (acquire, bounded)
// and meets its threads at a barrier. CLUSTER (MbarrierHandoff) sends each element with st.async,
// which completes bytes on the consumer's mbarrier: no producer barrier, no fence, no polling of
// memory; the consumer's thread 0 waits on the phase (bounded) and meets its threads at a barrier. Buffers are single: every
// producer writes step t+1's data only after a chain of hand-offs that starts from the consumer
// having finished with step t's. CLUSTER_ROLES is CLUSTER with each layer block's warps split into
// a chain role and a skip-product role (kRoles; see roles_skip_warps). CLUSTER_BATCHED is CLUSTER
// generating KS streams per cluster, each product over all of them (see persistent_layer_block).
// CLUSTER_SKIP_BLOCKS is CLUSTER with rows [c, S) of every layer's W_skip in skip blocks of their
// own, ranks [layer_blocks + head_blocks, + skip_blocks), fed each layer's gated h by the layer
// blocks (kSkipBlocks; see persistent_skip_block), so that more layers fit a layer block.
//
// Co-residency: a cluster's blocks are scheduled together by the hardware, so waiting on each
// other is safe; before launch the plan checks that one cluster of this size and shared memory
// can be resident at all (cudaOccupancyMaxActiveClusters), and refuses with the reason otherwise.
// What fits: everything must be resident in at most 16 blocks of (on the H100) 227 KB each, one
// whole layer per block at least. In practice R <= 64 in float16/bfloat16 (e.g. R64/S256/A256:
// 3 layers per block, L=20 in 7 layer blocks + 2 head blocks) and small L in float32; R >= 128
// layers never fit one block, so those sizes are not compiled for this variant.
//
// What bounds it (design estimate for the H100, R64/S256/A256 L20 fp16, not a measurement): the
// step is a chain of 11 hand-offs (7 between layer blocks, skip shares, the z all-gather, the
// logits, x_0) at ~0.25 us each, 20 layers of two products out of shared memory with two barriers
// each (~0.12 us per layer), and the last block's skip products, the head and the sampler
// (~1 us): ~6-7 us per step, ~150k samples/s. Latency-bound: the hand-off count (blocks in the
// chain) and the barriers per layer are what to cut next, not bandwidth.
#pragma once

#include <cooperative_groups.h>

#include <type_traits>

#include "common.cuh"
#include "handoff.cuh"
#include "host.h"
#include "persistent_layout.h"

namespace nvwavenet::gpu {

// CLUSTER_SKIP_BLOCKS splits rows of W_skip (products over R) and of the head (over S and A)
// between blocks in whole units of the rows one warp of matvec computes (its rows % kRowsPerWarp).
template <int R, int S, int A, class W>
struct SkipBlocksUnits {
  static constexpr int kSkip = MatvecShape<W, R, kPersistentThreads>::kRowsPerWarp;
  static constexpr int kHeadS = MatvecShape<W, S, kPersistentThreads>::kRowsPerWarp;
  static constexpr int kHeadA = MatvecShape<W, A, kPersistentThreads>::kRowsPerWarp;
  static constexpr int kHead = kHeadS > kHeadA ? kHeadS : kHeadA;
};

// CLUSTER_SKIP_BLOCKS's split for its block counts and c = chain_skip_rows (the planner tries
// these; the launcher rebuilds the plan's): layers as the other variants split them, the head's A
// rows and W_skip's rows [c, S) as evenly as whole units allow.
template <int R, int S, int A, class W>
PersistentSplit skip_blocks_split(int L, int layer_blocks, int head_blocks, int skip_blocks, int chain_skip_rows) {
  using Units = SkipBlocksUnits<R, S, A, W>;
  PersistentSplit split{};
  split.layer_blocks = layer_blocks;
  split.layers_base = L / layer_blocks;
  split.layers_extra = L % layer_blocks;
  split.layer_capacity = split.layers_base + (split.layers_extra > 0 ? 1 : 0);
  split.head_blocks = head_blocks;
  split.head_rows = A / Units::kHead / head_blocks * Units::kHead;
  split.head_rows_extra = A / Units::kHead % head_blocks;
  split.skip_blocks = skip_blocks;
  split.chain_skip_rows = chain_skip_rows;
  if (skip_blocks > 0) {
    const int units = (S - chain_skip_rows) / Units::kSkip;
    split.skip_rows_base = units / skip_blocks * Units::kSkip;
    split.skip_rows_extra = units % skip_blocks;
  }
  return split;
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
namespace cg = cooperative_groups;

// NVWAVENET_TRACE (compile-time, scripts/gpu_check.sh): thread 0 of each block of stream 0's
// cluster stamps %globaltimer at the events below in step T / 2 into the workspace after the
// status header (kPersistentTraceBytes more; launch.cu prints them), so that the time of each
// hop, layer and the head is measured rather than estimated. Layer blocks: 0 input arrived,
// 1 + i layer i done, 30 x sent on, 31 skip share sent. Head blocks: 0 skip shares arrived,
// 1 z sent, 2 z complete, 3 logits sent, 4 logits complete (sampler), 5 sampled and x_0 sent.
// Skip blocks (CLUSTER_SKIP_BLOCKS): 0 every layer's h arrived, 31 skip share sent.
// `thread`: the stamping thread (CLUSTER_ROLES: the skip warps' first stamps event 31).
__device__ __forceinline__ void trace_event(const Params& p, int rank, int event, int64_t t, unsigned thread = 0) {
#ifdef NVWAVENET_TRACE
  if (threadIdx.x == thread && blockIdx.x == unsigned(rank) && t == p.num_samples / 2)
    reinterpret_cast<uint64_t*>(static_cast<char*>(p.workspace) + kWorkspaceHeaderBytes)[rank * kTraceEvents + event] =
        global_timer_ns();
#endif
}

// Where a block's step loop stopped: at the wait `site` of step `step` that gave up, or after all
// steps (kSiteNone, step = T). Within a step a block waits at increasing sites (input; skip,
// hidden, logits), so this says how many phases of each of its waits completed.
struct StopPoint {
  int64_t step;
  int32_t site;
};
__device__ __forceinline__ int64_t phases_done(StopPoint stop, int32_t site, int64_t T) {
  return stop.site == kSiteNone ? T : stop.step + (site < stop.site ? 1 : 0);
}

// Thread 0 waits (bounded) for phase `phase` of a hand-off slot in this block's shared memory
// (`signals` producer signals in all, `bytes` bytes this phase: H uses one or the other); then the
// whole block agrees on the outcome, which is also the barrier before anyone reads what arrived.
// False: a timeout or another block's abort, already reported.
template <class H>
__device__ __forceinline__ bool block_wait(uint64_t* slot, int64_t phase, uint64_t signals, uint32_t bytes,
                                           int32_t site, WaitContext& wait) {
  bool ready = true;
  if (threadIdx.x == 0) {
    wait.site = site;
    ready = H::wait(slot, phase, signals, bytes, wait);
  }
  return block_all(ready);
}

// CLUSTER_ROLES (issue 24, design item 4): in a layer block, warps 0-7 run the chain (the input
// wait, W_cur + gate, W_res, x on to the next block, the next step's W_prev terms) and warps 8-15
// the skip products, layer i's as soon as the chain has gated h_i, so that only the last layer's
// skip product is left after x has gone on. The roles meet at named barriers, the chain arriving
// (bar.arrive, it never waits for the skip warps within a step) and the skip warps waiting
// (bar.sync), as DUAL_BLOCK's publisher does:
//   ready(i)   chain -> skip: gated h_i of this step is written (one barrier id per layer of the
//              block, so a chain that runs layers ahead never adds arrivals to a barrier the skip
//              warps have not completed yet: hence at most kRolesMaxLayers layers per block);
//   consumed   skip -> chain: the skip warps read every gated h_i of the previous step, so the
//              chain may overwrite them. The hand-offs already order this (the next input comes
//              after the heads had this block's share); the barrier is what makes the abort path
//              safe: a chain that gave up arrives at ready(0) once more, which must not count
//              towards the skip warps' previous phase of it;
//   chain, skip  each role among its own 256 threads (__syncthreads without roles).
// The skip share may leave before the chain has sent x on: the next x into this block's input
// buffer comes after the heads had the last layer block's share, which that block sends only
// after its input, i.e. after every x read of this block (x sent on is its last); in the last
// layer block, the last x read is its last layer's W_cur product, before that layer's ready.
// Every product keeps its shape and per-row summation order (matvec's rows do not depend on the
// thread count), so the results are CLUSTER's bit for bit.
constexpr int kRoleThreads = kPersistentThreads / 2;
constexpr int kRolesChainBarrier = 1;
constexpr int kRolesSkipBarrier = 2;
constexpr int kRolesConsumedBarrier = 3;
constexpr int kRolesReadyBarrier = 4;  // + layer index within the block
constexpr int kRolesMaxLayers = 16 - kRolesReadyBarrier;  // sm_90 has 16 named barriers per block

// The step at whose input wait the chain gave up (T: none yet); the skip warps read it after
// ready(0), which a chain that gave up arrives at once more. Only the step that gave up is ever
// written, so a skip warp still reading it for an earlier step never mistakes it.
__device__ __forceinline__ int64_t& roles_chain_stop() {
  __shared__ int64_t step;
  return step;
}

// The chain's barrier within a step: its own named barrier with roles, else the whole block's.
template <bool kRoles>
__device__ __forceinline__ void chain_sync() {
  if constexpr (kRoles)
    group_barrier(kRolesChainBarrier, kRoleThreads);
  else
    __syncthreads();
}

// Layer i's skip product into partial (the block's share of the skip sum). Each row has one
// owner thread for all layers (one shape), so accumulating across layers needs no barrier.
// `rows`: rows [0, rows) of each layer's W_skip are in the block (S but for CLUSTER_SKIP_BLOCKS).
template <int R, int S, class W, int NT, int KS = 1>
__device__ __forceinline__ void skip_product(const W* skip_w, const W* skip_b, const float* gated, float* partial,
                                             int i, int tid, int live = 1, int rows = S) {
  matvec<W, R, KS, 1, NT, WeightsInShared, InputFromThisBlock>(
      skip_w + int64_t(i) * rows * R, R, 0, rows, gated + i * KS * R, R, tid, NoTransform{},
      [&](int m, int b, const float (&v)[1]) {
        if (b >= live) return;
        const float term = v[0] + WeightsInShared::value(skip_b + i * rows + m);
        partial[b * S + m] = i == 0 ? term : partial[b * S + m] + term;
      });
}

// The block's share of the skip sum to every head block, by the NT threads that computed it
// (after a barrier of theirs); the `live` first of KS streams' rows. `rows`: rows [0, rows) of the
// share (S but for CLUSTER_SKIP_BLOCKS's layer blocks, whose KS is 1).
template <int R, int S, int A, class W, class H, int NT, int KS = 1>
__device__ __forceinline__ void send_skip_share(const PersistentSplit& split, char* smem,
                                                const cg::cluster_group& cluster, int rank, const float* partial,
                                                int tid, int live = 1, int rows = S) {
  using Layout = PersistentLayout<R, S, A, W>;
  uint64_t* const counters = reinterpret_cast<uint64_t*>(smem);
  float* const own_slot = reinterpret_cast<float*>(smem + Layout::kSlots) + int64_t(rank) * KS * S;
  for (int h = 0; h < split.head_blocks; ++h)
    for (int k = tid; k < live * rows; k += NT)
      H::put(cluster, own_slot + k, split.layer_blocks + h, counters + Layout::kSkipCounter, partial[k]);
  if constexpr (H::kProducerSignals) {
    __syncthreads();
    if (tid < split.head_blocks) H::signal(cluster, counters + Layout::kSkipCounter, split.layer_blocks + tid);
  }
}

// CLUSTER_ROLES: the skip warps' step loop (threads kRoleThreads..511; tid counts from 0 there).
template <int R, int S, int A, class W, class H>
__device__ void roles_skip_warps(const Params& p, const PersistentSplit& split, char* smem,
                                 const cg::cluster_group& cluster, int rank, const W* skip_w, const W* skip_b,
                                 const float* gated, float* partial, int count, int tid) {
  const int64_t T = p.num_samples;
  for (int64_t t = 0; t < T; ++t) {
    group_arrive(kRolesConsumedBarrier, kPersistentThreads);  // step t - 1's gated h are read
    for (int i = 0; i < count; ++i) {
      group_barrier(kRolesReadyBarrier + i, kPersistentThreads);
      if (i == 0 && roles_chain_stop() == t) return;
      skip_product<R, S, W, kRoleThreads>(skip_w, skip_b, gated, partial, i, tid);
    }
    group_barrier(kRolesSkipBarrier, kRoleThreads);
    send_skip_share<R, S, A, W, H, kRoleThreads>(split, smem, cluster, rank, partial, tid);
    trace_event(p, rank, 31, t, kRoleThreads);
  }
}

// CLUSTER_FOLD's layers of one layer block in step t (issue 24, design item 1; csrc/cuda/NOTES.md).
// Layer l after the block's first gets its x_t-tap term from layer l-1's input and output,
//   W_cur(l) x_l = W_cur(l) x_{l-1} + F_{l-1} h_{l-1} + g_{l-1}   (F, g: Params::fold_w, fold_b),
// so h_l needs only products of h_{l-1} and x_{l-1}, and x_l = x_{l-1} + W_res(l-1) h_{l-1} + b is
// made between the same two barriers, beside them: one barrier per layer, where CLUSTER has two.
// The block's first layer multiplies the x that arrived, as CLUSTER does, and x leaving the block
// is made after its last layer as CLUSTER makes it, so nothing changes across a block boundary.
// x (the input buffer) and next_x alternate as x_{l-1} and x_l; on return x holds x entering the
// next block (when the block's last layer is not the network's), as CLUSTER's loop leaves it.
template <int R, class W>
__device__ __forceinline__ void fold_layers(const Params& p, const W* dilate_w, const W* res_w, const W* res_b,
                                            const W* fold_w, const W* fold_b, const float* pre, float* gated, float* x,
                                            float* next_x, float* fold_cur, int first, int count, int64_t stream,
                                            int64_t rows, int64_t offset, int dilation, int64_t t, int rank,
                                            int tid) {
  constexpr int NT = kPersistentThreads;
  const int64_t first_slot = queue_slot(p, stream, rows, offset, dilation, t);
  for (int k = tid; k < R; k += NT) p.queues[first_slot * R + k] = x[k];
  matvec<W, R, 1, 2, NT, WeightsInShared, InputFromThisBlock>(
      dilate_w + R, 2 * R, R, R, x, 0, tid, NoTransform{},
      [&](int m, int, const float (&v)[2]) { gated[m] = gate(v[0] + pre[m], v[1] + pre[R + m]); });
  __syncthreads();
  trace_event(p, rank, 1, t);
  // x_l of the block's layer i: x for even i, next_x for odd (selected, not indexed: an indexed
  // pair of pointers would live in local memory).
  const auto x_of = [&](int i) { return (i & 1) != 0 ? next_x : x; };
  for (int i = 1; i < count; ++i) {
    offset += dilation;
    dilation = next_dilation(dilation, p.max_dilation);
    const int64_t slot = queue_slot(p, stream, rows, offset, dilation, t);
    const float* const x_prev = x_of(i - 1);
    float* const x_this = x_of(i);
    const float* const h_prev = gated + (i - 1) * R;
    const W* const bias_prev = res_b + (i - 1) * R;
    matvec<W, R, 1, 1, NT, WeightsInShared, InputFromThisBlock>(
        res_w + int64_t(i - 1) * R * R, R, 0, R, h_prev, 0, tid, NoTransform{}, [&](int m, int, const float (&v)[1]) {
          const float value = x_prev[m] + (v[0] + WeightsInShared::value(bias_prev + m));
          x_this[m] = value;
          p.queues[slot * R + m] = value;
        });
    // fold_cur carries each row pair from the first product to the second: both have the same
    // shape, so rows m and R + m have the same owner thread in both, and no barrier is needed.
    matvec<W, R, 1, 2, NT, WeightsInShared, InputFromThisBlock>(
        dilate_w + int64_t(i) * 4 * R * R + R, 2 * R, R, R, x_prev, 0, tid, NoTransform{},
        [&](int m, int, const float (&v)[2]) {
          fold_cur[m] = v[0];
          fold_cur[R + m] = v[1];
        });
    const float* const layer_pre = pre + i * 2 * R;
    const W* const g = fold_b + (i - 1) * 2 * R;
    float* const layer_gated = gated + i * R;
    matvec<W, R, 1, 2, NT, WeightsInShared, InputFromThisBlock>(
        fold_w + int64_t(i - 1) * 2 * R * R, R, R, R, h_prev, 0, tid, NoTransform{},
        [&](int m, int, const float (&v)[2]) {
          const float tanh_in = fold_cur[m] + (v[0] + WeightsInShared::value(g + m));
          const float sigmoid_in = fold_cur[R + m] + (v[1] + WeightsInShared::value(g + R + m));
          layer_gated[m] = gate(tanh_in + layer_pre[m], sigmoid_in + layer_pre[R + m]);
        });
    __syncthreads();
    trace_event(p, rank, 1 + i, t);
  }
  if (first + count - 1 < p.L - 1) {  // x entering the next block, into the input buffer
    const float* const x_last = x_of(count - 1);
    const W* const bias_last = res_b + (count - 1) * R;
    matvec<W, R, 1, 1, NT, WeightsInShared, InputFromThisBlock>(
        res_w + int64_t(count - 1) * R * R, R, 0, R, gated + (count - 1) * R, 0, tid, NoTransform{},
        [&](int m, int, const float (&v)[1]) { x[m] = x_last[m] + (v[0] + WeightsInShared::value(bias_last + m)); });
    __syncthreads();
  }
}

// CLUSTER_BATCHED's W_prev terms: precompute_layers for the KS streams of a cluster at once, so
// that each weight read serves every stream. The streams' x_l[t - d_l] sit in different queue rows,
// so they are first gathered into `staging` ([count][KS][R]; the layer block passes `gated`, free
// between the skip products and the next step's chain). Per (row, stream) the same products and
// sums as precompute_layers (matvec's per-stream order does not depend on the tile).
template <class W, int R, int KS, int NT>
__device__ __forceinline__ void precompute_layers_batched(const Params& p, const W* dilate_w, const W* dilate_b,
                                                          int first, int count, int64_t stream0, int live,
                                                          int64_t rows, int64_t t, float* pre, float* staging,
                                                          int tid) {
  int64_t offset;
  int dilation;
  layer_position(first, p.max_dilation, offset, dilation);
  for (int i = 0; i < count; ++i) {
    for (int k = tid; k < live * R; k += NT)
      staging[int64_t(i) * KS * R + k] =
          p.queues[queue_slot(p, stream0 + k / R, rows, offset, dilation, t) * R + k % R];
    offset += dilation;
    dilation = next_dilation(dilation, p.max_dilation);
  }
  __syncthreads();
  for (int i = 0; i < count; ++i) {
    const int l = first + i;
    const W* bias = dilate_b + int64_t(i) * 2 * R;
    matvec<W, R, KS, 2, NT, WeightsInShared, InputFromThisBlock>(
        dilate_w + int64_t(i) * 4 * R * R, 2 * R, R, R, staging + int64_t(i) * KS * R, R, tid, NoTransform{},
        [&](int m, int b, const float (&v)[2]) {
          if (b >= live) return;
          float* out = pre + (int64_t(i) * KS + b) * 2 * R;
          out[m] = v[0] + WeightsInShared::value(bias + m) + load_cond(p, stream0 + b, l, m, t);
          out[R + m] = v[1] + WeightsInShared::value(bias + R + m) + load_cond(p, stream0 + b, l, R + m, t);
        });
  }
}

// KS streams per cluster (CLUSTER_BATCHED; 1 for PERSISTENT and CLUSTER): streams
// [stream0, stream0 + live) of the call, live < KS only in a partial last group. Every product
// runs over the KS streams' buffers at once (matvec's batch tile). A missing stream's rows are
// computed from whatever its buffers hold (matvec keeps streams apart) and go nowhere: the
// epilogues skip them, nothing of theirs is read from or written to global memory or sent, and
// the hand-offs carry the live streams' bytes.
//
// CLUSTER_SKIP_BLOCKS (kSkipBlocks): the block holds rows [0, c) of its layers' W_skip
// (c = split.chain_skip_rows); each layer's gated h goes to every skip block as soon as it is made,
// and the block's share of the skip sum is rows [0, c).
template <int R, int S, int A, class W, class H, bool kRoles, bool kFold, int KS, bool kSkipBlocks>
__device__ StopPoint persistent_layer_block(const Params& p, const PersistentSplit& split, char* smem,
                                       const cg::cluster_group& cluster, int rank, int64_t stream0, int group_live,
                                       DeviceStatus* status) {
  static_assert(KS == 1 || (!H::kProducerSignals && !kRoles && !kFold),
                "several streams per cluster only with the mbarrier hand-offs, without roles or the fold");
  const int live = KS == 1 ? 1 : group_live;  // a constant for every variant but CLUSTER_BATCHED
  using Layout = PersistentLayout<R, S, A, W>;
  using Units = SkipBlocksUnits<R, S, A, W>;
  constexpr int NT = kRoles ? kRoleThreads : kPersistentThreads;  // the chain's threads
  const Layout layout =
      kSkipBlocks ? Layout::with_skip_blocks(split, p.L, Units::kHead, Units::kSkip) : Layout(split, kFold, KS);
  const int skip_rows = kSkipBlocks ? split.chain_skip_rows : S;  // rows of W_skip per layer here
  const int tid = threadIdx.x;
  const int first = rank * split.layers_base + (rank < split.layers_extra ? rank : split.layers_extra);
  const int count = split.layers_base + (rank < split.layers_extra ? 1 : 0);
  const bool last_block = rank == split.layer_blocks - 1;
  const int L = p.L;
  const int64_t T = p.num_samples;
  const int64_t rows = queue_rows(L, p.max_dilation);

  uint64_t* const counters = reinterpret_cast<uint64_t*>(smem);
  float* const x = reinterpret_cast<float*>(smem + Layout::kInput);  // [KS][R]
  const W* const dilate_w = reinterpret_cast<const W*>(smem + layout.dilate_w);
  const W* const res_w = reinterpret_cast<const W*>(smem + layout.res_w);
  const W* const skip_w = reinterpret_cast<const W*>(smem + layout.skip_w);
  const W* const dilate_b = reinterpret_cast<const W*>(smem + layout.dilate_b);
  const W* const res_b = reinterpret_cast<const W*>(smem + layout.res_b);
  const W* const skip_b = reinterpret_cast<const W*>(smem + layout.skip_b);
  float* const pre = reinterpret_cast<float*>(smem + layout.pre);          // [count][KS][2R]
  float* const gated = reinterpret_cast<float*>(smem + layout.gated);      // [count][KS][R]
  float* const partial = reinterpret_cast<float*>(smem + layout.partial);  // [KS][S]

  int64_t first_offset;
  int first_dilation;
  layer_position(first, p.max_dilation, first_offset, first_dilation);
  WaitContext wait{status, p.spin_timeout_ns, kSitePersistentInput, 0};

  if constexpr (kRoles) {
    static_assert(!H::kProducerSignals, "the roles hand off with st.async (no producer barrier of the whole block)");
    if (tid == 0) roles_chain_stop() = T;  // seen by the skip warps after ready(0), which comes later
    if (tid >= kRoleThreads) {  // (the stop point that counts is thread 0's)
      roles_skip_warps<R, S, A, W, H>(p, split, smem, cluster, rank, skip_w, skip_b, gated, partial, count,
                                      tid - kRoleThreads);
      return StopPoint{T, kSiteNone};
    }
  }
  const auto precompute = [&](int64_t t) {
    if constexpr (KS == 1)
      precompute_layers<W, R, NT, WeightsInShared>(p, dilate_w, dilate_b, first, count, stream0, rows, t, pre, tid);
    else
      precompute_layers_batched<W, R, KS, NT>(p, dilate_w, dilate_b, first, count, stream0, live, rows, t, pre, gated,
                                              tid);
  };
  precompute(0);
  for (int64_t t = 0; t < T; ++t) {
    wait.step = t;
    if constexpr (kRoles) {
      // The chain meets where the skip warps say step t - 1's gated h are read; a chain that gave
      // up releases the skip warps from ready(0).
      if (tid == 0) {
        wait.site = kSitePersistentInput;
        if (!H::wait(counters + Layout::kInputCounter, t, uint64_t(t) + 1, R * 4, wait)) roles_chain_stop() = t;
      }
      group_barrier(kRolesConsumedBarrier, kPersistentThreads);
      if (roles_chain_stop() == t) {
        group_arrive(kRolesReadyBarrier, kPersistentThreads);
        return StopPoint{t, kSitePersistentInput};
      }
    } else {
      if (!block_wait<H>(counters + Layout::kInputCounter, t, uint64_t(t) + 1, uint32_t(live) * R * 4,
                         kSitePersistentInput, wait))
        return StopPoint{t, kSitePersistentInput};
    }
    trace_event(p, rank, 0, t);

    if constexpr (kFold) {
      fold_layers<R, W>(p, dilate_w, res_w, res_b, reinterpret_cast<const W*>(smem + layout.fold_w),
                        reinterpret_cast<const W*>(smem + layout.fold_b), pre, gated, x,
                        reinterpret_cast<float*>(smem + layout.next_x),
                        reinterpret_cast<float*>(smem + layout.fold_cur), first, count, stream0, rows, first_offset,
                        first_dilation, t, rank, tid);
    } else {
      int64_t offset = first_offset;
      int dilation = first_dilation;
      for (int i = 0; i < count; ++i) {
        const int l = first + i;
        for (int b = 0; b < live; ++b) {
          const int64_t slot = queue_slot(p, stream0 + b, rows, offset, dilation, t);
          for (int k = tid; k < R; k += NT) p.queues[slot * R + k] = x[b * R + k];
        }
        const float* layer_pre = pre + i * KS * 2 * R;
        float* layer_gated = gated + i * KS * R;
        matvec<W, R, KS, 2, NT, WeightsInShared, InputFromThisBlock>(
            dilate_w + int64_t(i) * 4 * R * R + R, 2 * R, R, R, x, R, tid, NoTransform{},
            [&](int m, int b, const float (&v)[2]) {
              if (b < live)
                layer_gated[b * R + m] = gate(v[0] + layer_pre[b * 2 * R + m], v[1] + layer_pre[b * 2 * R + R + m]);
            });
        if constexpr (kRoles) group_arrive(kRolesReadyBarrier + i, kPersistentThreads);
        chain_sync<kRoles>();
        if constexpr (kSkipBlocks) {  // h_l into row l of every skip block's h buffer
          float* const h_row = reinterpret_cast<float*>(smem + Layout::kInput) + l * R;
          const int skip_rank0 = split.layer_blocks + split.head_blocks;
          for (int k = tid; k < split.skip_blocks * R; k += NT)
            H::put(cluster, h_row + k % R, skip_rank0 + k / R, counters + Layout::kInputCounter,
                   layer_gated[k % R]);
        }
        if (l < L - 1) {
          matvec<W, R, KS, 1, NT, WeightsInShared, InputFromThisBlock>(
              res_w + int64_t(i) * R * R, R, 0, R, layer_gated, R, tid, NoTransform{},
              [&](int m, int b, const float (&v)[1]) {
                if (b < live) x[b * R + m] += v[0] + WeightsInShared::value(res_b + i * R + m);
              });
          chain_sync<kRoles>();
        }
        trace_event(p, rank, 1 + i, t);
        offset += dilation;
        dilation = next_dilation(dilation, p.max_dilation);
      }
    }

    if (!last_block) {  // x entering the next block's first layer
      for (int k = tid; k < live * R; k += NT)
        H::put(cluster, x + k, rank + 1, counters + Layout::kInputCounter, x[k]);
      if constexpr (H::kProducerSignals) {
        __syncthreads();
        if (tid == 0) H::signal(cluster, counters + Layout::kInputCounter, rank + 1);
      }
      trace_event(p, rank, 30, t);
    }

    if constexpr (!kRoles) {  // this block's share of the skip sum, to every head block
      for (int i = 0; i < count; ++i)
        skip_product<R, S, W, NT, KS>(skip_w, skip_b, gated, partial, i, tid, live, skip_rows);
      __syncthreads();
      send_skip_share<R, S, A, W, H, NT, KS>(split, smem, cluster, rank, partial, tid, live, skip_rows);
      trace_event(p, rank, 31, t);
    }

    // Next step's W_prev terms while the head works; the next input wait ends with a barrier
    // (with roles, the chain's part of the consumed barrier).
    if (t + 1 < T) precompute(t + 1);
  }
  return StopPoint{T, kSiteNone};
}

// Streams as in persistent_layer_block; the sampler draws stream stream0 + w with its warp w.
// CLUSTER_SKIP_BLOCKS (kSkipBlocks): the skip sum's rows [0, c) are the layer blocks' shares summed,
// rows [c, S) each one skip block's share; head blocks hold uneven rows (split_rows).
template <int R, int S, int A, class W, class H, int KS, bool kSkipBlocks>
__device__ StopPoint persistent_head_block(const Params& p, const PersistentSplit& split, char* smem,
                                      const cg::cluster_group& cluster, int rank, int64_t stream0, int group_live,
                                      DeviceStatus* status) {
  const int live = KS == 1 ? 1 : group_live;
  using Layout = PersistentLayout<R, S, A, W>;
  using Units = SkipBlocksUnits<R, S, A, W>;
  constexpr int NT = kPersistentThreads;
  const Layout layout =
      kSkipBlocks ? Layout::with_skip_blocks(split, p.L, Units::kHead, Units::kSkip) : Layout(split, false, KS);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int head = rank - split.layer_blocks;
  const RowRange own_rows = kSkipBlocks ? split_rows(head, split.head_rows, split.head_rows_extra, Units::kHead)
                                        : RowRange{head * split.head_rows, split.head_rows};
  const int row0 = own_rows.first;
  const int c = split.chain_skip_rows;
  // Bytes of skip shares per step: every stream's S rows from each layer block, or (skip blocks)
  // rows [0, c) from each layer block and rows [c, S) once.
  const uint32_t skip_bytes = kSkipBlocks ? uint32_t(split.layer_blocks * c + S - c) * 4
                                          : uint32_t(split.layer_blocks) * uint32_t(live) * S * 4;
  const int sampler_rank = split.layer_blocks;
  const bool sampler = rank == sampler_rank;
  const int64_t T = p.num_samples;

  uint64_t* const counters = reinterpret_cast<uint64_t*>(smem);
  const float* const slots = reinterpret_cast<const float*>(smem + Layout::kSlots);  // [layer_blocks][KS][S]
  float* const hidden = reinterpret_cast<float*>(smem + layout.hidden);              // [KS][A], all of z
  float* const logits = reinterpret_cast<float*>(smem + layout.logits);              // [KS][A] (sampler)
  const W* const out_w = reinterpret_cast<const W*>(smem + layout.out_w);            // [rows][S]
  const W* const end_w = reinterpret_cast<const W*>(smem + layout.end_w);            // [rows][A]
  const W* const out_b = reinterpret_cast<const W*>(smem + layout.out_b);
  const W* const end_b = reinterpret_cast<const W*>(smem + layout.end_b);
  float* const skip_sum = reinterpret_cast<float*>(smem + layout.skip_sum);  // [KS][S]
  // The sampler's warp w draws stream stream0 + w and sends its x_0 into rank 0's input row w.
  const bool sampling_warp = sampler && warp < live;
  const int own = KS == 1 ? 0 : (warp < live ? warp : 0);
  const int64_t stream = stream0 + own;
  float* const first_input = reinterpret_cast<float*>(smem + Layout::kInput) + own * R;

  // The sampler tracks the fed-back classes: x_0 needs the last two.
  int y_prev2 = p.history[stream_row(p, stream) * 2];
  int y_prev1 = p.history[stream_row(p, stream) * 2 + 1];
  if (sampling_warp) {  // x_0[0]
    for (int k = lane; k < R; k += 32)
      H::put(cluster, first_input + k, 0, counters + Layout::kInputCounter, embed<W, R>(p, y_prev2, y_prev1, k));
    if constexpr (H::kProducerSignals) {
      __syncwarp();
      if (lane == 0) H::signal(cluster, counters + Layout::kInputCounter, 0);
    }
  }

  WaitContext wait{status, p.spin_timeout_ns, kSitePersistentSkip, 0};
  for (int64_t t = 0; t < T; ++t) {
    float u = 0.f;
    int teacher = 0;
    if (sampling_warp) {
      u = load_selector(p, stream, t);
      teacher = fed_back_class(p, stream, t, 0);
    }
    wait.step = t;

    if (!block_wait<H>(counters + Layout::kSkipCounter, t, uint64_t(split.layer_blocks) * uint64_t(t + 1),
                       skip_bytes, kSitePersistentSkip, wait))
      return StopPoint{t, kSitePersistentSkip};
    trace_event(p, rank, 0, t);
    for (int k = tid; k < live * (kSkipBlocks ? c : S); k += NT) {
      float sum = 0.f;
      for (int j = 0; j < split.layer_blocks; ++j) sum += slots[j * KS * S + k];
      skip_sum[k] = sum;
    }
    if constexpr (kSkipBlocks) {  // skip block k's rows sit in its own slot, slot layer_blocks + k
      for (int k = 0; k < split.skip_blocks; ++k) {
        const RowRange rows = split_rows(k, split.skip_rows_base, split.skip_rows_extra, Units::kSkip);
        const float* const share = slots + (split.layer_blocks + k) * S + c + rows.first;
        for (int m = tid; m < rows.count; m += NT) skip_sum[c + rows.first + m] = share[m];
      }
    }
    __syncthreads();
    matvec<W, S, KS, 1, NT, WeightsInShared, InputFromThisBlock>(
        out_w, S, 0, own_rows.count, skip_sum, S, tid, ReluTransform{}, [&](int m, int b, const float (&v)[1]) {
          if (b >= live) return;
          const float z = fmaxf(v[0] + WeightsInShared::value(out_b + m), 0.f);
          for (int h = 0; h < split.head_blocks; ++h)
            H::put(cluster, hidden + b * A + row0 + m, split.layer_blocks + h, counters + Layout::kHiddenCounter, z);
        });
    if constexpr (H::kProducerSignals) {
      __syncthreads();
      if (tid < split.head_blocks) H::signal(cluster, counters + Layout::kHiddenCounter, split.layer_blocks + tid);
    }
    trace_event(p, rank, 1, t);

    if (!block_wait<H>(counters + Layout::kHiddenCounter, t, uint64_t(split.head_blocks) * uint64_t(t + 1),
                       uint32_t(live) * A * 4, kSitePersistentHidden, wait))
      return StopPoint{t, kSitePersistentHidden};
    trace_event(p, rank, 2, t);
    matvec<W, A, KS, 1, NT, WeightsInShared, InputFromThisBlock>(
        end_w, A, 0, own_rows.count, hidden, A, tid, NoTransform{},
        [&](int m, int b, const float (&v)[1]) {
          if (b < live)
            H::put(cluster, logits + b * A + row0 + m, sampler_rank, counters + Layout::kLogitCounter,
                   v[0] + WeightsInShared::value(end_b + m));
        });
    if constexpr (H::kProducerSignals) {
      __syncthreads();
      if (tid == 0) H::signal(cluster, counters + Layout::kLogitCounter, sampler_rank);
    }
    trace_event(p, rank, 3, t);

    if (sampler) {
      if (!block_wait<H>(counters + Layout::kLogitCounter, t, uint64_t(split.head_blocks) * uint64_t(t + 1),
                         uint32_t(live) * A * 4, kSitePersistentLogits, wait))
        return StopPoint{t, kSitePersistentLogits};
      trace_event(p, rank, 4, t);
      if (sampling_warp) {
        const float* const own_logits = logits + own * A;
        const int drawn = warp_sample<A>(own_logits, u, lane);
        write_step_outputs<A>(p, stream, t, drawn, own_logits, lane);
        const int fed = p.teacher ? teacher : drawn;
        y_prev2 = y_prev1;
        y_prev1 = fed;
        if (t + 1 < T) {  // x_0[t+1] to layer block 0
          for (int k = lane; k < R; k += 32)
            H::put(cluster, first_input + k, 0, counters + Layout::kInputCounter, embed<W, R>(p, y_prev2, y_prev1, k));
          if constexpr (H::kProducerSignals) {
            __syncwarp();
            if (lane == 0) H::signal(cluster, counters + Layout::kInputCounter, 0);
          }
        }
        trace_event(p, rank, 5, t);
      }
    }
  }
  if (sampling_warp && lane < 2) p.history[stream_row(p, stream) * 2 + lane] = lane == 0 ? y_prev2 : y_prev1;
  return StopPoint{T, kSiteNone};
}

// CLUSTER_SKIP_BLOCKS's skip block k: rows [r0, r0 + q) of the skip sum, r0 = c + split_rows(k).first
// (issue 24, design item 2; csrc/cuda/NOTES.md). Per step it waits for all L layers' gated h (the
// layer blocks put each into row l of its h buffer as soon as it is made), sums W_skip,l h_l over
// the layers in order, adds the layers' biases (summed once per call in the prologue), and sends
// the q sums to every head block, into its own slot (slot layer_blocks + k) at rows [r0, r0 + q).
// h of step t + 1 arrives only after the sampler drew step t, i.e. after every head had this
// block's share of step t, which it sends after its last read of h (the barrier before it).
template <int R, int S, int A, class W, class H>
__device__ StopPoint persistent_skip_block(const Params& p, const PersistentSplit& split, char* smem,
                                           const cg::cluster_group& cluster, int rank, DeviceStatus* status) {
  using Layout = PersistentLayout<R, S, A, W>;
  using Units = SkipBlocksUnits<R, S, A, W>;
  constexpr int NT = kPersistentThreads;
  const Layout layout = Layout::with_skip_blocks(split, p.L, Units::kHead, Units::kSkip);
  const int tid = threadIdx.x;
  const int k = rank - split.layer_blocks - split.head_blocks;
  const RowRange own = split_rows(k, split.skip_rows_base, split.skip_rows_extra, Units::kSkip);
  const int r0 = split.chain_skip_rows + own.first;
  const int q = own.count;
  const int L = p.L;
  const int64_t T = p.num_samples;

  uint64_t* const counters = reinterpret_cast<uint64_t*>(smem);
  const float* const h = reinterpret_cast<const float*>(smem + Layout::kInput);  // [L][R]
  const W* const w = reinterpret_cast<const W*>(smem + layout.rows_w);            // [L][q][R]
  const float* const bias = reinterpret_cast<const float*>(smem + layout.rows_bias);
  float* const share = reinterpret_cast<float*>(smem + layout.rows_share);
  float* const slot = reinterpret_cast<float*>(smem + Layout::kSlots) + (split.layer_blocks + k) * S + r0;

  WaitContext wait{status, p.spin_timeout_ns, kSitePersistentSkipInput, 0};
  for (int64_t t = 0; t < T; ++t) {
    wait.step = t;
    if (!block_wait<H>(counters + Layout::kInputCounter, t, 0, uint32_t(L) * R * 4, kSitePersistentSkipInput, wait))
      return StopPoint{t, kSitePersistentSkipInput};
    trace_event(p, rank, 0, t);
    // Each row has one owner thread for every layer (one shape): no barrier between the layers.
    for (int l = 0; l < L; ++l)
      matvec<W, R, 1, 1, NT, WeightsInShared, InputFromThisBlock>(
          w + int64_t(l) * q * R, R, 0, q, h + l * R, 0, tid, NoTransform{}, [&](int m, int, const float (&v)[1]) {
            const float sum = l == 0 ? v[0] : share[m] + v[0];
            share[m] = l == L - 1 ? sum + bias[m] : sum;
          });
    __syncthreads();
    for (int head = 0; head < split.head_blocks; ++head)
      for (int m = tid; m < q; m += NT)
        H::put(cluster, slot + m, split.layer_blocks + head, counters + Layout::kSkipCounter, share[m]);
    trace_event(p, rank, 31, t);
  }
  return StopPoint{T, kSiteNone};
}

// CLUSTER's exit (issue 24). A block whose wait gave up leaves its step loop while producers that
// have not seen the abort yet may already have issued st.async into its shared memory; those
// bytes may land after the final cluster barrier (it orders memory operations, not the
// completion of st.async), i.e. after the block exited. So each block, before that barrier,
// adds the bytes it sent over the whole call into a word per hand-off slot of each consumer
// (add_sent_bytes; Layout::kSentBytes), and after it each consumer completes every phase that
// can still receive bytes (MbarrierHandoff::drain). Only the open phase of a slot can: a producer sends
// phase c + 1 only after a chain of hand-offs that starts with its consumer completing phase c,
// so bytes sent - completed phases x bytes per phase are that phase's, at most one phase.
// Thread 0 only; every block after its step loop, off the steps' path (once per call). Every
// hand-off carries `live` streams' rows (CLUSTER_BATCHED), hence the byte counts x live.
// CLUSTER_SKIP_BLOCKS (kSkipBlocks): a layer block's h goes to every skip block and its share is
// c rows; a skip block sends its q rows after each completed wait for h; head rows are uneven.
template <int R, int S, int A, class W, bool kSkipBlocks>
__device__ void add_sent_bytes(const Params& p, const PersistentSplit& split, char* smem,
                               const cg::cluster_group& cluster, int rank, StopPoint stop, int live) {
  using Layout = PersistentLayout<R, S, A, W>;
  using Units = SkipBlocksUnits<R, S, A, W>;
  uint64_t* const sent = reinterpret_cast<uint64_t*>(smem) + Layout::kSentBytes;
  const int64_t T = p.num_samples;
  const auto add = [&](int consumer, int slot, int64_t phases, int64_t bytes) {
    if (phases > 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(cluster.map_shared_rank(sent + slot, consumer)),
                static_cast<unsigned long long>(phases * bytes * live));
  };
  const int skip_rank0 = split.layer_blocks + split.head_blocks;
  if (rank < split.layer_blocks) {  // x and the skip share go out once per completed input wait
    const int64_t phases = phases_done(stop, kSitePersistentInput, T);
    if (rank + 1 < split.layer_blocks) add(rank + 1, Layout::kInputCounter, phases, R * 4);
    const int share_rows = kSkipBlocks ? split.chain_skip_rows : S;
    for (int h = 0; h < split.head_blocks; ++h)
      add(split.layer_blocks + h, Layout::kSkipCounter, phases, share_rows * 4);
    if constexpr (kSkipBlocks) {  // and each of its layers' h into every skip block
      const int count = split.layers_base + (rank < split.layers_extra ? 1 : 0);
      for (int k = 0; k < split.skip_blocks; ++k) add(skip_rank0 + k, Layout::kInputCounter, phases, count * R * 4);
    }
  } else if (kSkipBlocks && rank >= skip_rank0) {  // its rows after each completed wait for h
    const int64_t phases = phases_done(stop, kSitePersistentSkipInput, T);
    const int q = split_rows(rank - skip_rank0, split.skip_rows_base, split.skip_rows_extra, Units::kSkip).count;
    for (int h = 0; h < split.head_blocks; ++h) add(split.layer_blocks + h, Layout::kSkipCounter, phases, q * 4);
  } else {  // z rows after each skip wait, logit rows after each hidden wait, x_0 before step 0
            // and after each sample but the last
    const int rows = kSkipBlocks ? split_rows(rank - split.layer_blocks, split.head_rows, split.head_rows_extra,
                                              Units::kHead).count
                                 : split.head_rows;
    const int64_t z_phases = phases_done(stop, kSitePersistentSkip, T);
    for (int h = 0; h < split.head_blocks; ++h)
      add(split.layer_blocks + h, Layout::kHiddenCounter, z_phases, rows * 4);
    add(split.layer_blocks, Layout::kLogitCounter, phases_done(stop, kSitePersistentHidden, T), rows * 4);
    if (rank == split.layer_blocks) {
      const int64_t sampled = phases_done(stop, kSitePersistentLogits, T);
      add(0, Layout::kInputCounter, sampled + 1 < T ? sampled + 1 : T, R * 4);
    }
  }
}

// Thread 0, after the final cluster barrier: drains each slot this block consumes.
template <int R, int S, int A, class W, bool kSkipBlocks>
__device__ void drain_handoffs(const Params& p, const PersistentSplit& split, char* smem, int rank, StopPoint stop,
                               int live, DeviceStatus* status) {
  using Layout = PersistentLayout<R, S, A, W>;
  uint64_t* const counters = reinterpret_cast<uint64_t*>(smem);
  const int64_t T = p.num_samples;
  const auto drain = [&](int slot, int32_t site, int64_t stream_bytes) {
    const int64_t phase_bytes = stream_bytes * live;
    const int64_t phase = phases_done(stop, site, T);
    const WaitContext wait{status, p.spin_timeout_ns, site, phase};
    MbarrierHandoff::drain(counters + slot, phase, stop.site == site ? uint32_t(phase_bytes) : 0u,
                           uint32_t(counters[Layout::kSentBytes + slot] - uint64_t(phase * phase_bytes)), wait);
  };
  if (rank < split.layer_blocks) {
    drain(Layout::kInputCounter, kSitePersistentInput, R * 4);
  } else if (kSkipBlocks && rank >= split.layer_blocks + split.head_blocks) {
    drain(Layout::kInputCounter, kSitePersistentSkipInput, int64_t(p.L) * R * 4);
  } else {
    const int c = split.chain_skip_rows;
    drain(Layout::kSkipCounter, kSitePersistentSkip,
          kSkipBlocks ? int64_t(split.layer_blocks * c + S - c) * 4 : int64_t(split.layer_blocks) * S * 4);
    drain(Layout::kHiddenCounter, kSitePersistentHidden, A * 4);
    if (rank == split.layer_blocks) drain(Layout::kLogitCounter, kSitePersistentLogits, A * 4);
  }
}
#endif

// kMbarrier: the hand-offs of CLUSTER (MbarrierHandoff), else PERSISTENT's (FlagHandoff).
// kRoles: CLUSTER_ROLES's layer blocks (chain and skip warps; CLUSTER's hand-offs).
// kFold: CLUSTER_FOLD's layer blocks (fold_layers). KS: streams per cluster (CLUSTER_BATCHED), 1
// for the others. kSkipBlocks: CLUSTER_SKIP_BLOCKS's skip blocks (persistent_skip_block).
template <int R, int S, int A, class W, bool kMbarrier, bool kRoles, bool kFold = false, int KS = 1,
          bool kSkipBlocks = false>
__global__ void __launch_bounds__(kPersistentThreads, 1)
    persistent_kernel(const __grid_constant__ Params p, const PersistentSplit split) {
  static_assert(!kSkipBlocks || (kMbarrier && !kRoles && !kFold && KS == 1),
                "skip blocks only with CLUSTER's hand-offs, without roles, the fold or several streams per cluster");
  auto* const status = static_cast<DeviceStatus*>(p.workspace);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // Built for an architecture without clusters; the host refuses such devices before launching.
  if (threadIdx.x == 0) atomicCAS(&status->code, kStatusOk, kStatusNoClusterArch);
#else
  using Layout = PersistentLayout<R, S, A, W>;
  using H = std::conditional_t<kMbarrier, MbarrierHandoff, FlagHandoff>;
  extern __shared__ float4 shared_vectors[];
  char* const smem = reinterpret_cast<char*>(shared_vectors);
  const cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  using Units = SkipBlocksUnits<R, S, A, W>;
  const int cluster_blocks = split.layer_blocks + split.head_blocks + (kSkipBlocks ? split.skip_blocks : 0);
  const int64_t stream0 = int64_t(blockIdx.x / cluster_blocks) * KS;
  const int live = KS == 1 ? 1 : static_cast<int>(p.batch - stream0 < KS ? p.batch - stream0 : KS);
  const Layout layout =
      kSkipBlocks ? Layout::with_skip_blocks(split, p.L, Units::kHead, Units::kSkip) : Layout(split, kFold, KS);
  const int skip_rank0 = split.layer_blocks + split.head_blocks;
  const int tid = threadIdx.x;
  if (tid < 4) {
    H::init(reinterpret_cast<uint64_t*>(smem) + tid);
    if constexpr (kMbarrier) reinterpret_cast<uint64_t*>(smem)[Layout::kSentBytes + tid] = 0;
  }

  // Each block copies its share of the weights into its shared memory, once per call.
  if (rank < split.layer_blocks) {
    const int first = rank * split.layers_base + (rank < split.layers_extra ? rank : split.layers_extra);
    const int count = split.layers_base + (rank < split.layers_extra ? 1 : 0);
    const int with_res = (first + count < p.L - 1 ? first + count : p.L - 1) - first;  // the last layer has none
    const int64_t w = sizeof(W);
    copy16(smem + layout.dilate_w, static_cast<const W*>(p.dilate_w) + int64_t(first) * 4 * R * R,
           count * 4 * R * R * w, tid, kPersistentThreads);
    if (with_res > 0) {
      copy16(smem + layout.res_w, static_cast<const W*>(p.res_w) + int64_t(first) * R * R, with_res * R * R * w, tid,
             kPersistentThreads);
      copy16(smem + layout.res_b, static_cast<const W*>(p.res_b) + int64_t(first) * R, with_res * R * w, tid,
             kPersistentThreads);
    }
    if constexpr (kSkipBlocks) {  // rows [0, c) of each layer's W_skip and b_skip
      const int c = split.chain_skip_rows;
      for (int i = 0; i < count; ++i)
        copy16(smem + layout.skip_w + int64_t(i) * c * R * w,
               static_cast<const W*>(p.skip_w) + int64_t(first + i) * S * R, int64_t(c) * R * w, tid,
               kPersistentThreads);
      W* const skip_b = reinterpret_cast<W*>(smem + layout.skip_b);
      for (int k = tid; k < count * c; k += kPersistentThreads)
        skip_b[k] = static_cast<const W*>(p.skip_b)[int64_t(first + k / c) * S + k % c];
      copy16(smem + layout.dilate_b, static_cast<const W*>(p.dilate_b) + int64_t(first) * 2 * R, count * 2 * R * w,
             tid, kPersistentThreads);
    } else {
      copy16(smem + layout.skip_w, static_cast<const W*>(p.skip_w) + int64_t(first) * S * R, count * S * R * w, tid,
             kPersistentThreads);
      copy16(smem + layout.dilate_b, static_cast<const W*>(p.dilate_b) + int64_t(first) * 2 * R, count * 2 * R * w,
             tid, kPersistentThreads);
      copy16(smem + layout.skip_b, static_cast<const W*>(p.skip_b) + int64_t(first) * S, count * S * w, tid,
             kPersistentThreads);
    }
    if constexpr (kFold) {  // F and g for every layer of the block but its first
      copy16(smem + layout.fold_w, static_cast<const W*>(p.fold_w) + int64_t(first) * 2 * R * R,
             (count - 1) * 2 * R * R * w, tid, kPersistentThreads);
      copy16(smem + layout.fold_b, static_cast<const W*>(p.fold_b) + int64_t(first) * 2 * R, (count - 1) * 2 * R * w,
             tid, kPersistentThreads);
    }
  } else if (kSkipBlocks && rank >= skip_rank0) {  // rows [r0, r0 + q) of every layer's W_skip
    const RowRange own = split_rows(rank - skip_rank0, split.skip_rows_base, split.skip_rows_extra, Units::kSkip);
    const int64_t r0 = split.chain_skip_rows + own.first;
    const int64_t q = own.count;
    const int64_t w = sizeof(W);
    for (int l = 0; l < p.L; ++l)
      copy16(smem + layout.rows_w + l * q * R * w, static_cast<const W*>(p.skip_w) + (l * S + r0) * R, q * R * w, tid,
             kPersistentThreads);
    // The layers' biases of each row, summed in layer order (in float32, once per call): one
    // number per row instead of L.
    float* const bias = reinterpret_cast<float*>(smem + layout.rows_bias);
    for (int m = tid; m < q; m += kPersistentThreads) {
      float sum = 0.f;
      for (int l = 0; l < p.L; ++l) sum += WeightsInGlobal::value(static_cast<const W*>(p.skip_b) + l * S + r0 + m);
      bias[m] = sum;
    }
  } else {
    int64_t row0 = int64_t(rank - split.layer_blocks) * split.head_rows;
    int64_t rows = split.head_rows;
    if constexpr (kSkipBlocks) {
      const RowRange own = split_rows(rank - split.layer_blocks, split.head_rows, split.head_rows_extra, Units::kHead);
      row0 = own.first;
      rows = own.count;
    }
    const int64_t w = sizeof(W);
    copy16(smem + layout.out_w, static_cast<const W*>(p.out_w) + row0 * S, rows * S * w, tid, kPersistentThreads);
    copy16(smem + layout.end_w, static_cast<const W*>(p.end_w) + row0 * A, rows * A * w, tid, kPersistentThreads);
    if constexpr (kSkipBlocks) {  // uneven rows: the biases need not start or end on 16 bytes
      for (int m = tid; m < rows; m += kPersistentThreads) {
        reinterpret_cast<W*>(smem + layout.out_b)[m] = static_cast<const W*>(p.out_b)[row0 + m];
        reinterpret_cast<W*>(smem + layout.end_b)[m] = static_cast<const W*>(p.end_b)[row0 + m];
      }
    } else {
      copy16(smem + layout.out_b, static_cast<const W*>(p.out_b) + row0, rows * w, tid, kPersistentThreads);
      copy16(smem + layout.end_b, static_cast<const W*>(p.end_b) + row0, rows * w, tid, kPersistentThreads);
    }
  }
  // Counters are zero and weights in place in every block before anyone signals anyone.
  cluster.sync();
  StopPoint stop;
  if constexpr (kSkipBlocks)
    stop = rank < split.layer_blocks
               ? persistent_layer_block<R, S, A, W, H, kRoles, kFold, KS, true>(p, split, smem, cluster, rank,
                                                                                stream0, live, status)
           : rank >= skip_rank0 ? persistent_skip_block<R, S, A, W, H>(p, split, smem, cluster, rank, status)
                                : persistent_head_block<R, S, A, W, H, KS, true>(p, split, smem, cluster, rank, stream0,
                                                                                 live, status);
  else
    stop = rank < split.layer_blocks
               ? persistent_layer_block<R, S, A, W, H, kRoles, kFold, KS, false>(p, split, smem, cluster, rank,
                                                                                 stream0, live, status)
               : persistent_head_block<R, S, A, W, H, KS, false>(p, split, smem, cluster, rank, stream0, live, status);
  // No block may exit while another can still write into its shared memory: after this barrier
  // no block sends, and CLUSTER's consumers drain the st.async already sent (drain_handoffs).
  if constexpr (kMbarrier)
    if (tid == 0) add_sent_bytes<R, S, A, W, kSkipBlocks>(p, split, smem, cluster, rank, stop, live);
  cluster.sync();
  if constexpr (kMbarrier)
    if (tid == 0) drain_handoffs<R, S, A, W, kSkipBlocks>(p, split, smem, rank, stop, live, status);
#endif
}

// The refusals both cluster planners start with (a device without thread-block clusters, a size
// whose layer fits no block: not built for the persistent kernel), and the size as they name it.
inline std::string no_clusters_reason(const DeviceFacts& device) {
  return "needs thread-block clusters (compute capability 9.0 or newer); " + device.name + " is " +
         std::to_string(device.major) + "." + std::to_string(device.minor);
}
template <int R, int S, int A>
std::string size_text() {
  return "R=" + std::to_string(R) + ", S=" + std::to_string(S) + ", A=" + std::to_string(A);
}
template <int R, int S, int A, class W>
std::string layer_too_large_reason(Variant variant) {
  return "one layer of " + size_text<R, S, A>() + " (" + std::to_string(sizeof(W) * 8) +
         "-bit weights) does not fit in one block's shared memory, so this size is not built for " +
         nvwavenet::variant_name(static_cast<int32_t>(variant));
}

// A cluster plan's last word: raises the kernel's shared-memory limit and asks the device whether
// one cluster of plan.blocks_per_group blocks with plan.shared_bytes each can be resident; `plan`
// runnable with the clusters the device holds at once, or refused with the reason.
inline Plan placed_cluster_plan(Plan plan, const void* kernel, const DeviceFacts& device,
                                const cudaFuncAttributes& attributes) {
  const int cluster_blocks = plan.blocks_per_group;
  allow_dynamic_shared(kernel, device, attributes);
  // A device that cannot make such a cluster says so through these two calls; that is a plan
  // that says no (AUTO then picks another variant), not a failure.
  const auto declined = [&](cudaError_t error, const char* what) {
    (void)cudaGetLastError();  // not sticky: clear it so that later calls do not report it
    return refuse(plan.variant, std::string(what) + " a cluster of " + std::to_string(cluster_blocks) +
                                    " blocks: " + cudaGetErrorString(error));
  };
  // Allowed, never taken back: plans are cached (launch.cu), so a cached plan of more than 8 blocks
  // may launch after a smaller cluster of the same kernel was planned (as allow_dynamic_shared's
  // limit; setting it to 0 there made that launch fail with cudaErrorInvalidClusterSize).
  cudaError_t error = cluster_blocks > 8
                          ? cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1)
                          : cudaSuccess;
  if (error != cudaSuccess) return declined(error, "the device does not allow");
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = static_cast<unsigned>(cluster_blocks);
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(cluster_blocks));
  config.blockDim = dim3(kPersistentThreads);
  config.dynamicSmemBytes = static_cast<size_t>(plan.shared_bytes);
  config.attrs = &attribute;
  config.numAttrs = 1;
  int clusters = 0;
  error = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config);
  if (error != cudaSuccess) return declined(error, "the device cannot place");
  if (clusters < 1)
    return refuse(plan.variant, "a cluster of " + std::to_string(cluster_blocks) + " blocks with " +
                                    std::to_string(plan.shared_bytes) +
                                    " bytes of shared memory each cannot be resident on " + device.name);
  plan.co_resident_groups = clusters;
  plan.runnable = true;
  return plan;
}

// PERSISTENT's, CLUSTER's, CLUSTER_ROLES's, CLUSTER_FOLD's and CLUSTER_BATCHED's planner: the same
// split and shared-memory layout (CLUSTER_ROLES: at most kRolesMaxLayers layers per block, one
// named barrier each; CLUSTER_FOLD: the fold's buffers added, so fewer layers fit a block;
// CLUSTER_BATCHED: kBatched streams per cluster, whose buffers also leave room for fewer layers;
// 0: another variant, one stream per cluster).
template <int R, int S, int A, class W, bool kMbarrier, bool kRoles, bool kFold = false, int kBatched = 0>
Plan plan_cluster_kernel(const Params& p, const DeviceFacts& device) {
  static_assert(kMbarrier || !kRoles, "the roles use CLUSTER's hand-offs");
  static_assert(!(kRoles && kFold), "the fold runs the layers its own way (fold_layers), without roles");
  constexpr int KS = kBatched == 0 ? 1 : kBatched;
  constexpr Variant kVariant = kBatched ? Variant::ClusterBatched
                               : kFold  ? Variant::ClusterFold
                               : kRoles ? Variant::ClusterRoles
                               : kMbarrier ? Variant::Cluster
                                           : Variant::Persistent;
  const std::string streams = KS == 1 ? "" : " with " + std::to_string(KS) + " streams per cluster";
  const std::string size = size_text<R, S, A>();
  if (device.major < 9) return refuse(kVariant, no_clusters_reason(device));
  if constexpr (!persistent_layer_fits<R, S, A, W>()) {
    return refuse(kVariant, layer_too_large_reason<R, S, A, W>(kVariant));
  } else {
    using Layout = PersistentLayout<R, S, A, W>;
    const void* kernel =
        reinterpret_cast<const void*>(&persistent_kernel<R, S, A, W, kMbarrier, kRoles, kFold, KS>);
    cudaFuncAttributes attributes{};
    NVWAVENET_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    const int64_t budget = device.shared_per_block_optin - int64_t(attributes.sharedSizeBytes);

    int capacity = 0;  // the most layers one block can hold
    while (capacity < p.L && (!kRoles || capacity < kRolesMaxLayers) &&
           Layout(capacity + 1, 1, A, kFold, KS).layer_end <= budget)
      ++capacity;
    if (capacity == 0)
      return refuse(kVariant,
                    "one layer of " + size + streams + " needs " +
                        std::to_string(Layout(1, 1, A, kFold, KS).layer_end) +
                        " bytes of shared memory; a block on this device has " + std::to_string(budget));
    PersistentSplit split{};
    split.layer_blocks = (p.L + capacity - 1) / capacity;
    split.layers_base = p.L / split.layer_blocks;
    split.layers_extra = p.L % split.layer_blocks;
    split.layer_capacity = split.layers_base + (split.layers_extra > 0 ? 1 : 0);
    for (int heads = 1; heads <= 8 && split.head_blocks == 0; heads *= 2) {
      if (Layout(split.layer_capacity, split.layer_blocks, A / heads, kFold, KS).head_end <= budget)
        split.head_blocks = heads;
    }
    if (split.head_blocks == 0)
      return refuse(kVariant, "the output head of " + size + streams + " does not fit in 8 blocks' shared memory");
    split.head_rows = A / split.head_blocks;
    const int cluster_blocks = split.layer_blocks + split.head_blocks;

    Plan plan;
    plan.variant = kVariant;
    plan.streams_per_group = KS;
    plan.blocks_per_group = cluster_blocks;
    plan.threads_per_block = kPersistentThreads;
    plan.grid_blocks = int64_t(cluster_blocks) * ((p.batch + KS - 1) / KS);
    plan.shared_bytes = Layout(split, kFold, KS).bytes();
    plan.workspace_bytes = kWorkspaceHeaderBytes + kPersistentTraceBytes;
    plan.layer_blocks = split.layer_blocks;
    plan.head_blocks = split.head_blocks;
    plan.max_layers_per_block = split.layer_capacity;
    if (cluster_blocks > kMaxClusterBlocks)
      return refuse(kVariant, "needs a cluster of " + std::to_string(cluster_blocks) + " blocks (" +
                                             std::to_string(p.L) + " layers at most " + std::to_string(capacity) +
                                             " per block" + streams +
                                             (kRoles && capacity == kRolesMaxLayers
                                                  ? std::string(" (one named barrier per layer)")
                                                  : std::string()) +
                                             ", plus " + std::to_string(split.head_blocks) +
                                             " head blocks); the largest cluster has " +
                                             std::to_string(kMaxClusterBlocks));

    return placed_cluster_plan(plan, kernel, device, attributes);
  }
}

// CLUSTER_SKIP_BLOCKS's planner (issue 24, design item 2; csrc/cuda/NOTES.md), for any size and
// weight type: the most layers whose chain (W_dil, W_res, biases, buffers: no W_skip) fits one block,
// then c, the most rows of each layer's W_skip that fit beside them (whole units of a warp's rows);
// rows [c, S) in the fewest skip blocks that hold them (every layer's rows, their biases summed, the
// layers' h), the head in the fewest blocks (1 to 8, uneven rows) that hold it beside the skip
// shares of layer and skip blocks. c = S needs no skip block.
template <int R, int S, int A, class W>
Plan plan_skip_blocks(const Params& p, const DeviceFacts& device) {
  constexpr Variant kVariant = Variant::ClusterSkipBlocks;
  const std::string size = size_text<R, S, A>();
  if (device.major < 9) return refuse(kVariant, no_clusters_reason(device));
  if constexpr (!persistent_layer_fits<R, S, A, W>()) {
    return refuse(kVariant, layer_too_large_reason<R, S, A, W>(kVariant));
  } else {
    using Layout = PersistentLayout<R, S, A, W>;
    using Units = SkipBlocksUnits<R, S, A, W>;
    const void* kernel =
        reinterpret_cast<const void*>(&persistent_kernel<R, S, A, W, true, false, false, 1, true>);
    cudaFuncAttributes attributes{};
    NVWAVENET_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    const int64_t budget = device.shared_per_block_optin - int64_t(attributes.sharedSizeBytes);
    const auto layout = [&](const PersistentSplit& split) {
      return Layout::with_skip_blocks(split, p.L, Units::kHead, Units::kSkip);
    };

    int capacity = 0;  // the most layers one block can hold without W_skip
    while (capacity < p.L && Layout(capacity + 1, 1, A, false, 1, 0, 0, 0, true).layer_end <= budget) ++capacity;
    if (capacity == 0)
      return refuse(kVariant, "one layer's chain (W_dil, W_res, biases, buffers) of " + size + " needs " +
                                  std::to_string(Layout(1, 1, A, false, 1, 0, 0, 0, true).layer_end) +
                                  " bytes of shared memory; a block on this device has " + std::to_string(budget));
    const int layer_blocks = (p.L + capacity - 1) / capacity;
    PersistentSplit split = skip_blocks_split<R, S, A, W>(p.L, layer_blocks, 1, 0, 0);
    int c = 0;  // rows of W_skip beside the chain, in whole units
    while (c < S && Layout(split.layer_capacity, 1, A, false, 1, c + Units::kSkip, 0, 0, true).layer_end <= budget)
      c += Units::kSkip;
    int skip_blocks = 0;
    if (c < S) {
      const int units = (S - c) / Units::kSkip;
      for (int k = 1; k <= units && skip_blocks == 0; ++k)
        if (layout(skip_blocks_split<R, S, A, W>(p.L, layer_blocks, 1, k, c)).skip_block_end <= budget) skip_blocks = k;
      if (skip_blocks == 0)
        return refuse(kVariant, "W_skip rows of " + std::to_string(p.L) + " layers of " + size +
                                    " do not fit in skip blocks: " + std::to_string(Units::kSkip) + " rows need " +
                                    std::to_string(layout(skip_blocks_split<R, S, A, W>(p.L, layer_blocks, 1, units, c))
                                                       .skip_block_end) +
                                    " bytes of shared memory; a block on this device has " + std::to_string(budget));
    }
    int head_blocks = 0;
    for (int h = 1; h <= 8 && h <= A / Units::kHead && head_blocks == 0; ++h)
      if (layout(skip_blocks_split<R, S, A, W>(p.L, layer_blocks, h, skip_blocks, c)).head_end <= budget)
        head_blocks = h;
    if (head_blocks == 0)
      return refuse(kVariant, "the output head of " + size + " does not fit in 8 blocks' shared memory beside " +
                                  std::to_string(layer_blocks + skip_blocks) + " skip shares");
    split = skip_blocks_split<R, S, A, W>(p.L, layer_blocks, head_blocks, skip_blocks, c);
    const int cluster_blocks = layer_blocks + head_blocks + skip_blocks;

    Plan plan;
    plan.variant = kVariant;
    plan.blocks_per_group = cluster_blocks;
    plan.threads_per_block = kPersistentThreads;
    plan.grid_blocks = int64_t(cluster_blocks) * p.batch;
    plan.shared_bytes = layout(split).bytes();
    plan.workspace_bytes = kWorkspaceHeaderBytes + kPersistentTraceBytes;
    plan.layer_blocks = layer_blocks;
    plan.head_blocks = head_blocks;
    plan.skip_blocks = skip_blocks;
    plan.chain_skip_rows = c;
    plan.max_layers_per_block = split.layer_capacity;
    if (cluster_blocks > kMaxClusterBlocks) {
      const auto blocks = [](int n, const char* what) {
        return std::to_string(n) + " " + what + (n == 1 ? " block" : " blocks");
      };
      return refuse(kVariant, "needs a cluster of " + std::to_string(cluster_blocks) + " blocks (" +
                                  std::to_string(p.L) + " layers at most " + std::to_string(capacity) +
                                  " per block, plus " + blocks(head_blocks, "head") +
                                  (skip_blocks == 0 ? std::string()
                                                    : " and " + blocks(skip_blocks, "skip") + " for W_skip rows " +
                                                          std::to_string(c) + " to " + std::to_string(S - 1)) +
                                  "); the largest cluster has " + std::to_string(kMaxClusterBlocks));
    }
    return placed_cluster_plan(plan, kernel, device, attributes);
  }
}

template <int R, int S, int A, class W, bool kMbarrier, bool kRoles, bool kFold = false, int KS = 1,
          bool kSkipBlocks = false>
void launch_cluster_kernel(const Params& p, const Plan& plan) {
  if constexpr (!persistent_layer_fits<R, S, A, W>()) {
    throw std::invalid_argument(std::string(nvwavenet::variant_name(static_cast<int32_t>(plan.variant))) +
                                " is not built for R=" + std::to_string(R) + ": " + plan.reason);
  } else {
    PersistentSplit split{};
    if constexpr (kSkipBlocks) {
      split = skip_blocks_split<R, S, A, W>(p.L, plan.layer_blocks, plan.head_blocks, plan.skip_blocks,
                                            plan.chain_skip_rows);
    } else {
      split.layer_blocks = plan.layer_blocks;
      split.head_blocks = plan.head_blocks;
      split.layers_base = p.L / plan.layer_blocks;
      split.layers_extra = p.L % plan.layer_blocks;
      split.layer_capacity = plan.max_layers_per_block;
      split.head_rows = A / plan.head_blocks;
    }
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(plan.blocks_per_group);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>(plan.grid_blocks));
    config.blockDim = dim3(kPersistentThreads);
    config.dynamicSmemBytes = static_cast<size_t>(plan.shared_bytes);
    config.stream = static_cast<cudaStream_t>(p.stream);
    config.attrs = &attribute;
    config.numAttrs = 1;
    NVWAVENET_CUDA_CHECK(
        cudaLaunchKernelEx(&config, persistent_kernel<R, S, A, W, kMbarrier, kRoles, kFold, KS, kSkipBlocks>, p,
                           split));
  }
}

template <int R, int S, int A, class W>
Plan Persistent<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  return plan_cluster_kernel<R, S, A, W, false, false>(p, device);
}
template <int R, int S, int A, class W>
void Persistent<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  launch_cluster_kernel<R, S, A, W, false, false>(p, plan);
}
template <int R, int S, int A, class W>
Plan Cluster<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  return plan_cluster_kernel<R, S, A, W, true, false>(p, device);
}
template <int R, int S, int A, class W>
void Cluster<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  launch_cluster_kernel<R, S, A, W, true, false>(p, plan);
}

template <int R, int S, int A, class W>
Plan ClusterRoles<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  return plan_cluster_kernel<R, S, A, W, true, true>(p, device);
}
template <int R, int S, int A, class W>
void ClusterRoles<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  launch_cluster_kernel<R, S, A, W, true, true>(p, plan);
}
template <int R, int S, int A, class W>
Plan ClusterFold<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  return plan_cluster_kernel<R, S, A, W, true, false, true>(p, device);
}
template <int R, int S, int A, class W>
void ClusterFold<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  launch_cluster_kernel<R, S, A, W, true, false, true>(p, plan);
}

template <int R, int S, int A, class W>
Plan ClusterSkipBlocks<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  return plan_skip_blocks<R, S, A, W>(p, device);
}
template <int R, int S, int A, class W>
void ClusterSkipBlocks<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  launch_cluster_kernel<R, S, A, W, true, false, false, 1, true>(p, plan);
}

// CLUSTER_BATCHED: CLUSTER's kernel with k = Params.streams_per_block streams per cluster (1, 2, 4
// or 8; k = 1 is CLUSTER's very kernel). 0: the largest k whose clusters still fill every slot
// the device has for them (ceil(batch / k) >= co-resident clusters), else 1, as TENSOR_CORE's plan
// picks its tile: below that batch, more clusters of fewer streams run side by side instead.
template <int R, int S, int A, class W>
Plan ClusterBatched<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  constexpr Variant kVariant = Variant::ClusterBatched;
  const auto with = [&](int k) {
    switch (k) {
      case 2:
        return plan_cluster_kernel<R, S, A, W, true, false, false, 2>(p, device);
      case 4:
        return plan_cluster_kernel<R, S, A, W, true, false, false, 4>(p, device);
      case 8:
        return plan_cluster_kernel<R, S, A, W, true, false, false, 8>(p, device);
      default:
        return plan_cluster_kernel<R, S, A, W, true, false, false, 1>(p, device);
    }
  };
  const int k = p.streams_per_block;
  if (k != 0) {
    if (k != 1 && k != 2 && k != 4 && k != 8)
      return refuse(kVariant, "streams_per_block must be 1, 2, 4 or 8 for CLUSTER_BATCHED (0: chosen from the "
                              "batch), got " + std::to_string(k));
    return with(k);
  }
  constexpr int kCandidates[] = {8, 4, 2};
  for (const int candidate : kCandidates) {
    const Plan plan = with(candidate);
    if (plan.runnable && (p.batch + candidate - 1) / candidate >= plan.co_resident_groups) return plan;
  }
  return with(1);
}

template <int R, int S, int A, class W>
void ClusterBatched<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  switch (plan.streams_per_group) {
    case 2:
      return launch_cluster_kernel<R, S, A, W, true, false, false, 2>(p, plan);
    case 4:
      return launch_cluster_kernel<R, S, A, W, true, false, false, 4>(p, plan);
    case 8:
      return launch_cluster_kernel<R, S, A, W, true, false, false, 8>(p, plan);
    default:
      return launch_cluster_kernel<R, S, A, W, true, false, false, 1>(p, plan);
  }
}

}  // namespace nvwavenet::gpu
