// SINGLE_BLOCK: one thread block generates a tile of BT streams (BT = 1, 2, 4 or 8) for the whole call;
// the time loop runs inside the kernel and blocks never talk to each other.
//
// Per step, per layer l, two phases separated by barriers (2L + 3 barriers per step):
//   D  a = [W_prev | W_cur] [x_l[t-d]; x_l[t]] + b + cond   one product with K = 2R, the tanh and
//      sigmoid rows paired in the same lanes so the gate is its epilogue; x_l[t] goes to the queue.
//   U  x_{l+1} = x_l + W_res h + b_res and s += W_skip h + b_skip (both read h, same phase);
//      the next layer's queue entry and bias + conditioning, loaded into registers during D,
//      are stored to shared memory, so their global-memory latency overlaps D's product.
// Then the head: z = relu(W_out relu(s) + b_out), logits = W_end z + b_end, and one warp per stream
// samples, writes its outputs and embeds the fed-back class for the next step.
//
// Weights are read from global memory every step (they stay in L2: fp16 R64/S256/A256 L20 is
// ~1.7 MB), 16-byte loads coalesced across a row's lanes, with the next layer's weights prefetched
// into L1 during the current one (prefetch_l1); everything else lives in shared memory.
//
// What bounds it (design estimates for the H100, not measurements):
// - one stream (BT = 1): the step reads every weight once through one SM, so it is bound by one
//   SM's L2 read bandwidth (~64 B/clock, ~110 GB/s): ~1.7 MB/step -> ~15 us -> ~65k samples/s in
//   fp16, half that in fp32; the barriers add ~(2L + 3) x 0.1 us. The latency variants
//   (DUAL_BLOCK, PERSISTENT) exist to beat this.
// - many streams (BT = 8, one block per 8 streams, as many blocks as the batch needs): each weight
//   load serves 8 streams, so the aggregate bound is the whole L2 bandwidth (~5.5 TB/s over
//   ~1.7 MB / 8 per stream-step, ~25M samples/s) or the FMA issue rate (the weights are widened
//   to float32 FMAs: 0.85M FMAs per sample over ~30 TFMA/s, ~35M samples/s), whichever is lower;
//   this is the variant meant for the >= 10M samples/s many-stream target.
#pragma once

#include <type_traits>

#include "common.cuh"
#include "host.h"

namespace nvwavenet::gpu {

constexpr int kSingleThreads = 512;

// Shared memory of one block, in floats; every region a multiple of 4 floats (16 bytes).
template <int R, int S, int A, int BT>
struct SingleBlockSmem {
  static constexpr int kInput = 0;                  // [BT][2R]: x_l[t - d_l] | x_l[t]
  static constexpr int kPre = kInput + BT * 2 * R;  // [BT][2R]: dilation bias + conditioning
  static constexpr int kGated = kPre + BT * 2 * R;  // [BT][R]: h
  static constexpr int kSkip = kGated + BT * R;     // [BT][S]: s
  static constexpr int kHidden = kSkip + BT * S;    // [BT][A]: z
  static constexpr int kLogits = kHidden + BT * A;  // [BT][A]
  static constexpr int kFloats = kLogits + BT * A;
  static constexpr int64_t kBytes = int64_t(kFloats) * 4;
};

// A layer's inputs that come from global memory: its queue entry x_l[t - d_l] and its dilation
// bias plus conditioning. Loaded into registers one phase ahead, stored to shared memory a phase
// later. Element e of the tile belongs to thread e % NT for both the queue read and, one layer
// later, the queue write of the same slot (write_back), so the old entry is read before it is
// overwritten by the very thread that overwrites it.
template <int R, int BT, int NT>
struct LayerPrefetch {
  static constexpr int kQueue = (BT * R + NT - 1) / NT;
  static constexpr int kPre = (BT * 2 * R + NT - 1) / NT;
  float queue[kQueue];
  float pre[kPre];

  template <class W>
  __device__ __forceinline__ void load(const Params& p, int64_t stream0, int valid, int64_t rows, int layer,
                                       int64_t offset, int dilation, int64_t t, int tid) {
    const W* bias = static_cast<const W*>(p.dilate_b) + int64_t(layer) * 2 * R;
#pragma unroll
    for (int i = 0; i < kQueue; ++i) {
      const int e = tid + i * NT;
      const int b = e / R;
      queue[i] = (e < BT * R && b < valid) ? p.queues[queue_slot(p, stream0 + b, rows, offset, dilation, t) * R + e % R]
                                           : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int e = tid + i * NT;
      const int b = e / (2 * R);
      const int c = e % (2 * R);
      pre[i] = (e < BT * 2 * R && b < valid) ? load_cond(p, stream0 + b, layer, c, t) + WeightsInGlobal::value(bias + c)
                                             : 0.f;
    }
  }

  __device__ __forceinline__ void store(float* input, float* pre_smem, int tid) const {
#pragma unroll
    for (int i = 0; i < kQueue; ++i) {
      const int e = tid + i * NT;
      if (e < BT * R) input[(e / R) * 2 * R + e % R] = queue[i];
    }
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int e = tid + i * NT;
      if (e < BT * 2 * R) pre_smem[e] = pre[i];
    }
  }

  // x_l[t] (the second half of each input row) into the layer's queue slot.
  __device__ __forceinline__ void write_back(const Params& p, int64_t stream0, int valid, int64_t rows, int64_t offset,
                                             int dilation, int64_t t, const float* input, int tid) const {
#pragma unroll
    for (int i = 0; i < kQueue; ++i) {
      const int e = tid + i * NT;
      const int b = e / R;
      if (e < BT * R && b < valid)
        p.queues[queue_slot(p, stream0 + b, rows, offset, dilation, t) * R + e % R] = input[b * 2 * R + R + e % R];
    }
  }
};

template <int R, int S, int A, class W, int BT>
__global__ void __launch_bounds__(kSingleThreads, 1) single_block_kernel(const __grid_constant__ Params p) {
  constexpr int NT = kSingleThreads;
  static_assert(NT / 32 >= BT, "one sampling warp per stream of the tile");
  using Smem = SingleBlockSmem<R, S, A, BT>;
  extern __shared__ float4 shared_vectors[];
  float* const smem = reinterpret_cast<float*>(shared_vectors);
  float* const input = smem + Smem::kInput;
  float* const pre = smem + Smem::kPre;
  float* const gated = smem + Smem::kGated;
  float* const skip = smem + Smem::kSkip;
  float* const hidden = smem + Smem::kHidden;
  float* const logits = smem + Smem::kLogits;
  __shared__ int history[BT][2];  // y_{t-2}, y_{t-1} of each stream

  const W* const dilate_w = static_cast<const W*>(p.dilate_w);
  const W* const res_w = static_cast<const W*>(p.res_w);
  const W* const res_b = static_cast<const W*>(p.res_b);
  const W* const skip_w = static_cast<const W*>(p.skip_w);
  const W* const skip_b = static_cast<const W*>(p.skip_b);
  const W* const out_w = static_cast<const W*>(p.out_w);
  const W* const out_b = static_cast<const W*>(p.out_b);
  const W* const end_w = static_cast<const W*>(p.end_w);
  const W* const end_b = static_cast<const W*>(p.end_b);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t stream0 = int64_t(blockIdx.x) * BT;
  const int valid = static_cast<int>(p.batch - stream0 < BT ? p.batch - stream0 : BT);
  const int L = p.L;
  const int64_t T = p.num_samples;
  const int64_t rows = queue_rows(L, p.max_dilation);

  if (tid < 2 * BT) {
    const int b = tid >> 1;
    history[b][tid & 1] = b < valid ? p.history[stream_row(p, stream0 + b) * 2 + (tid & 1)] : A / 2;
  }
  for (int e = tid; e < BT * S; e += NT) skip[e] = 0.f;
  __syncthreads();
  for (int e = tid; e < BT * R; e += NT) {
    const int b = e / R;
    input[b * 2 * R + R + e % R] = embed<W, R>(p, history[b][0], history[b][1], e % R);
  }
  LayerPrefetch<R, BT, NT> next;
  next.template load<W>(p, stream0, valid, rows, 0, 0, 1, 0, tid);
  next.store(input, pre, tid);
  __syncthreads();

  for (int64_t t = 0; t < T; ++t) {
    // The sampling warps fetch this step's u_t and teacher class now; they are used at the end.
    float u = 0.f;
    int teacher = 0;
    if (warp < valid) {
      u = load_selector(p, stream0 + warp, t);
      teacher = fed_back_class(p, stream0 + warp, t, 0);
    }

    int64_t offset = 0;
    int dilation = 1;
    for (int l = 0; l < L; ++l) {
      const bool last_layer = l == L - 1;
      const bool prefetch = !last_layer || t + 1 < T;
      const int following = next_dilation(dilation, p.max_dilation);
      // Phase D. The write-back comes first: with one layer of dilation 1, the prefetch below
      // reads the very slot it writes.
      next.write_back(p, stream0, valid, rows, offset, dilation, t, input, tid);
      if (prefetch) {
        if (last_layer)
          next.template load<W>(p, stream0, valid, rows, 0, 0, 1, t + 1, tid);
        else
          next.template load<W>(p, stream0, valid, rows, l + 1, offset + dilation, following, t, tid);
      }
      if (!last_layer) {
        prefetch_l1<int64_t(4) * R * R * sizeof(W)>(dilate_w + int64_t(l + 1) * 4 * R * R, tid, NT);
        prefetch_l1<int64_t(S) * R * sizeof(W)>(skip_w + int64_t(l + 1) * S * R, tid, NT);
        if (l + 1 < L - 1) prefetch_l1<int64_t(R) * R * sizeof(W)>(res_w + int64_t(l + 1) * R * R, tid, NT);
      } else {
        prefetch_l1<int64_t(A) * S * sizeof(W)>(out_w, tid, NT);
      }
      matvec<W, 2 * R, BT, 2, NT, WeightsInGlobal, InputFromThisBlock>(
          dilate_w + int64_t(l) * 4 * R * R, 2 * R, R, R, input, 2 * R, tid, NoTransform{},
          [&](int m, int b, const float (&v)[2]) {
            gated[b * R + m] = gate(v[0] + pre[b * 2 * R + m], v[1] + pre[b * 2 * R + R + m]);
          });
      __syncthreads();
      // Phase U.
      if (!last_layer) {
        matvec<W, R, BT, 1, NT, WeightsInGlobal, InputFromThisBlock>(
            res_w + int64_t(l) * R * R, R, 0, R, gated, R, tid, NoTransform{}, [&](int m, int b, const float (&v)[1]) {
              input[b * 2 * R + R + m] += v[0] + WeightsInGlobal::value(res_b + int64_t(l) * R + m);
            });
      }
      matvec<W, R, BT, 1, NT, WeightsInGlobal, InputFromThisBlock>(
          skip_w + int64_t(l) * S * R, R, 0, S, gated, R, tid, NoTransform{}, [&](int m, int b, const float (&v)[1]) {
            skip[b * S + m] += v[0] + WeightsInGlobal::value(skip_b + int64_t(l) * S + m);
          });
      if (prefetch) next.store(input, pre, tid);
      __syncthreads();
      offset += dilation;
      dilation = following;
    }

    // The output head.
    prefetch_l1<int64_t(4) * R * R * sizeof(W)>(dilate_w, tid, NT);  // the next step's first layer
    matvec<W, S, BT, 1, NT, WeightsInGlobal, InputFromThisBlock>(
        out_w, S, 0, A, skip, S, tid, ReluTransform{}, [&](int m, int b, const float (&v)[1]) {
          hidden[b * A + m] = fmaxf(v[0] + WeightsInGlobal::value(out_b + m), 0.f);
        });
    prefetch_l1<int64_t(A) * A * sizeof(W)>(end_w, tid, NT);
    __syncthreads();
    matvec<W, A, BT, 1, NT, WeightsInGlobal, InputFromThisBlock>(
        end_w, A, 0, A, hidden, A, tid, NoTransform{},
        [&](int m, int b, const float (&v)[1]) { logits[b * A + m] = v[0] + WeightsInGlobal::value(end_b + m); });
    for (int e = tid; e < BT * S; e += NT) skip[e] = 0.f;  // s was last read by the W_out phase
    __syncthreads();
    if (warp < valid) {
      const int b = warp;
      const int64_t stream = stream0 + b;
      const int drawn = warp_sample<A>(logits + b * A, u, lane);
      write_step_outputs<A>(p, stream, t, drawn, logits + b * A, lane);
      const int fed = p.teacher ? teacher : drawn;
      const int y_prev1 = history[b][1];
      __syncwarp();
      if (lane == 0) {
        history[b][0] = y_prev1;
        history[b][1] = fed;
      }
      if (t + 1 < T) {
        for (int k = lane; k < R; k += 32) input[b * 2 * R + R + k] = embed<W, R>(p, y_prev1, fed, k);
      }
    }
    __syncthreads();
  }

  if (tid < 2 * BT && (tid >> 1) < valid)
    p.history[stream_row(p, stream0 + (tid >> 1)) * 2 + (tid & 1)] = history[tid >> 1][tid & 1];
}

// Calls f(std::integral_constant<int, BT>{}) for a built tile (1, 2, 4 or 8 streams per block).
template <class F>
decltype(auto) with_single_block_tile(int tile, F&& f) {
  switch (tile) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

template <int R, int S, int A, class W>
Plan SingleBlock<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  // Which tile suits a batch is a tuning decision, made in Python (nvwavenet/autotune.py).
  const int tile = p.streams_per_block == 0 ? 1 : p.streams_per_block;
  if (tile != 1 && tile != 2 && tile != 4 && tile != 8)
    return refuse(Variant::SingleBlock, "streams_per_block must be 1, 2, 4 or 8 (the tiles built; 0 means 1), got " +
                                            std::to_string(p.streams_per_block));
  Plan plan;
  plan.variant = Variant::SingleBlock;
  plan.streams_per_group = tile;
  plan.blocks_per_group = 1;
  plan.threads_per_block = kSingleThreads;
  plan.grid_blocks = (p.batch + tile - 1) / tile;
  plan.shared_bytes = with_single_block_tile(tile, [](auto bt) { return SingleBlockSmem<R, S, A, bt()>::kBytes; });
  plan.workspace_bytes = kWorkspaceHeaderBytes;
  if (plan.shared_bytes > device.shared_per_block_optin)
    return refuse(Variant::SingleBlock, "needs " + std::to_string(plan.shared_bytes) +
                                            " bytes of shared memory per block; the device allows " +
                                            std::to_string(device.shared_per_block_optin));
  return resident_plan(plan,
                       with_single_block_tile(tile, [](auto bt) {
                         return reinterpret_cast<const void*>(&single_block_kernel<R, S, A, W, bt()>);
                       }),
                       device);
}

template <int R, int S, int A, class W>
void SingleBlock<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  const dim3 grid(static_cast<unsigned>(plan.grid_blocks));
  const auto stream = static_cast<cudaStream_t>(p.stream);
  Params arg = p;
  void* args[] = {&arg};
  with_single_block_tile(plan.streams_per_group, [&](auto bt) {
    NVWAVENET_CUDA_CHECK(cudaLaunchKernel(single_block_kernel<R, S, A, W, bt()>, grid, dim3(kSingleThreads), args,
                                          static_cast<size_t>(plan.shared_bytes), stream));
  });
}

}  // namespace nvwavenet::gpu
