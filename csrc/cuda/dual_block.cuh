// DUAL_BLOCK: two cooperating blocks per stream, synchronised through flags in global memory.
//
//   residual block (even blockIdx)      head block (odd blockIdx)
//   warps 0-14: the layer chain         all warps: skip sums, output head, sampling
//   warp 15:    publisher
//
// Per step t of a stream, the residual warps wait until the head block has finished the previous
// step (its sample is the fed-back class they embed), then run the chain: for each layer,
// a = pre_l + W_cur,l x_l[t], h_l = gate(a) (into shared memory), x_{l+1} = x_l + W_res,l h_l + b.
// pre_l = W_prev,l x_l[t - d_l] + b_l + cond_l[t] for every layer was computed beforehand
// (precompute_layers), while the head block was busy with the previous step's head, so only the
// x_l[t]-dependent half of the dilated convolution is on the chain.
// The publisher warp meets the chain at the barrier after each h_l, copies it to the pair's mailbox
// in global memory and releases the layer counter; it absorbs the cost of the device-scope fence
// while the chain runs the residual product and the next layer (~4 us per layer measured on an
// H200 for fp32 DUAL: 11,607 samples/s over 20 layers), so the chain only meets it at the barrier. The head block consumes h_l as soon as each is
// published (s += W_skip,l h_l + b_skip,l), so the skip products overlap the chain; after the last
// layer it runs the head, samples, writes the outputs and releases the sample counter.
//
// Buffers are single: the residual block writes step t+1's h only after seeing the head block
// finish step t, which needed every h of step t published and read.
//
// Co-residency: both blocks of a pair spin on each other, so the grid is launched cooperatively
// (every block resident, or the launch fails) with at most as many pairs as fit at once; pairs
// loop over streams when the batch is larger. Every wait is bounded (Params::spin_timeout_ns).
//
// Weights come from global memory (L2); each chain layer prefetches the next layer's W_dil and
// W_res into L1, and the head block the next layer's W_skip, so loads on the chain wait on L1.
//
// What bounds it (design estimates for the H100, not measurements): per step the residual block
// reads W_prev, W_cur and W_res (~0.8 MB in fp16 for R64/S256/A256 L20) and the head block W_skip,
// W_out and W_end (~0.9 MB), each through its own SM's L2 bandwidth (~110 GB/s). The chain
// (W_cur, W_res: ~0.5 MB) and the head (W_out, W_end: 0.25 MB) are on the critical path, the rest
// overlaps: ~6-8 us per step, ~120k samples/s in fp16 and ~60-80k in fp32 for one stream, plus
// one flag round trip through L2 per step (~1 us). It halves SINGLE_BLOCK's bytes per SM;
// PERSISTENT goes further by keeping weights on chip.
#pragma once

#include "common.cuh"
#include "host.h"

namespace nvwavenet::gpu {

constexpr int kDualThreads = 512;
constexpr int kDualChainThreads = kDualThreads - 32;  // the last warp publishes
constexpr int kDualChainBarrier = 1;                  // named barrier of the chain warps
constexpr int kDualPublishBarrier = 2;                // chain warps + publisher: h_l is ready

// Start of each pair's area in the workspace (after the status header), 64 bytes, then the
// mailbox float[L][R] of published gated activations.
struct DualFlags {
  uint64_t layers_published;  // (step, layer) entries of this pair's mailbox made visible so far
  uint64_t steps_sampled;     // steps whose head the head block has finished
  int32_t fed_back;           // the class fed back at the last sampled step
  int32_t unused[11];
};
static_assert(sizeof(DualFlags) == 64, "the mailbox follows the flags at 64 bytes");

__host__ __device__ inline int64_t dual_pair_bytes(int layers, int R) {
  return round_up(int64_t(sizeof(DualFlags)) + int64_t(layers) * R * 4, 128);
}

template <int R, int S, int A>
inline int64_t dual_shared_bytes(int layers) {
  const int64_t residual = (int64_t(R) + int64_t(layers) * 2 * R + int64_t(layers) * R) * 4;  // x, pre, h
  const int64_t head = (int64_t(S) + 2 * int64_t(A)) * 4;                                     // s, z, logits
  return residual > head ? residual : head;
}

// The publisher warp of the residual block: makes the chain's h_l visible to the head block.
// The chain hands each h_l over at the named barrier kDualPublishBarrier, which the chain warps
// need anyway before the residual product reads h_l: a barrier both orders the hand-off and is
// what compute-sanitizer's racecheck understands (a flag polled in shared memory is not). The
// publisher meets the chain there once per (stream, step, layer); a chain that gave up at the
// start of a step arrives there once more, after raising chain_gave_up.
template <int R>
__device__ void dual_publisher(const Params& p, const float* gated, DualFlags* flags, float* mailbox,
                               const int32_t* chain_gave_up, int64_t pair, int64_t pairs) {
  const int lane = threadIdx.x & 31;
  const int L = p.L;
  const int64_t streams = (p.batch - pair + pairs - 1) / pairs;
  const uint64_t total = uint64_t(streams) * uint64_t(p.num_samples) * uint64_t(L);
  for (uint64_t entry = 0; entry < total; ++entry) {
    group_barrier(kDualPublishBarrier, kDualThreads);
    if (*chain_gave_up) return;
    // The chain cannot start the next step before the head block has consumed this one, so the
    // row stays intact while it is copied.
    const int l = static_cast<int>(entry % L);
    for (int k = 4 * lane; k < R; k += 128)
      __stcg(reinterpret_cast<float4*>(mailbox + l * R + k), *reinterpret_cast<const float4*>(gated + l * R + k));
    __syncwarp();
    if (lane == 0) store_release_gpu(&flags->layers_published, entry + 1);
  }
}

template <int R, int S, int A, class W>
__device__ void dual_residual_block(const Params& p, float* smem, DualFlags* flags, float* mailbox,
                                    DeviceStatus* status, int64_t pair, int64_t pairs) {
  constexpr int NT = kDualChainThreads;
  const int L = p.L;
  float* const x = smem;                          // [R]: x_l[t]
  float* const pre = x + R;                       // [L][2R]
  float* const gated = pre + int64_t(L) * 2 * R;  // [L][R]: h_l, read by the publisher
  __shared__ int32_t chain_gave_up;
  const int tid = threadIdx.x;
  if (tid == 0) chain_gave_up = 0;
  __syncthreads();
  if (tid >= NT) {
    dual_publisher<R>(p, gated, flags, mailbox, &chain_gave_up, pair, pairs);
    return;
  }

  const W* const dilate_w = static_cast<const W*>(p.dilate_w);
  const W* const dilate_b = static_cast<const W*>(p.dilate_b);
  const W* const res_w = static_cast<const W*>(p.res_w);
  const W* const res_b = static_cast<const W*>(p.res_b);
  const int64_t T = p.num_samples;
  const int64_t rows = queue_rows(L, p.max_dilation);
  WaitContext wait{status, p.spin_timeout_ns, kSiteDualSampleFlag, 0};
  uint64_t step = 0;  // steps this pair has run, over all its streams
  bool ok = true;
  for (int64_t stream = pair; stream < p.batch && ok; stream += pairs) {
    int y_prev2 = p.history[stream_row(p, stream) * 2];
    int y_prev1 = p.history[stream_row(p, stream) * 2 + 1];
    precompute_layers<W, R, NT, WeightsInGlobal>(p, dilate_w, dilate_b, 0, L, stream, rows, 0, pre, tid);
    for (int64_t t = 0; t < T; ++t, ++step) {
      // The head block has finished the previous step: the mailbox is free again and, within a
      // stream, the class it fed back is known.
      bool ready = true;
      if (tid == 0 && step > 0) {
        wait.step = t;
        uint64_t seen;
        ready = bounded_wait([&] { return load_acquire_gpu(&flags->steps_sampled); }, step, wait, seen);
      }
      if (!group_all(kDualChainBarrier, NT, ready)) {
        ok = false;
        break;
      }
      if (t > 0) {
        const int fed = __ldcg(&flags->fed_back);
        y_prev2 = y_prev1;
        y_prev1 = fed;
      }
      for (int k = tid; k < R; k += NT) x[k] = embed<W, R>(p, y_prev2, y_prev1, k);
      group_barrier(kDualChainBarrier, NT);

      int64_t offset = 0;
      int dilation = 1;
      for (int l = 0; l < L; ++l) {
        // x_l[t] into its queue slot (the precompute already read the old entry).
        const int64_t slot = queue_slot(p, stream, rows, offset, dilation, t);
        for (int k = tid; k < R; k += NT) p.queues[slot * R + k] = x[k];
        const float* layer_pre = pre + int64_t(l) * 2 * R;
        float* layer_gated = gated + int64_t(l) * R;
        if (l + 1 < L) {  // the next layer's chain weights into L1 (dilate rows hold both taps)
          prefetch_l1<int64_t(4) * R * R * sizeof(W)>(dilate_w + int64_t(l + 1) * 4 * R * R, tid, NT);
          if (l + 1 < L - 1) prefetch_l1<int64_t(R) * R * sizeof(W)>(res_w + int64_t(l + 1) * R * R, tid, NT);
        }
        matvec<W, R, 1, 2, NT, WeightsInGlobal, InputFromThisBlock>(
            dilate_w + int64_t(l) * 4 * R * R + R, 2 * R, R, R, x, 0, tid, NoTransform{},
            [&](int m, int, const float (&v)[2]) {
              layer_gated[m] = gate(v[0] + layer_pre[m], v[1] + layer_pre[R + m]);
            });
        group_barrier(kDualPublishBarrier, kDualThreads);
        if (l < L - 1) {
          matvec<W, R, 1, 1, NT, WeightsInGlobal, InputFromThisBlock>(
              res_w + int64_t(l) * R * R, R, 0, R, layer_gated, 0, tid, NoTransform{},
              [&](int m, int, const float (&v)[1]) {
                x[m] += v[0] + WeightsInGlobal::value(res_b + int64_t(l) * R + m);
              });
          group_barrier(kDualChainBarrier, NT);
        }
        offset += dilation;
        dilation = next_dilation(dilation, p.max_dilation);
      }
      // Next step's W_prev terms, while the head block works on this step's head.
      if (t + 1 < T)
        precompute_layers<W, R, NT, WeightsInGlobal>(p, dilate_w, dilate_b, 0, L, stream, rows, t + 1, pre, tid);
      group_barrier(kDualChainBarrier, NT);
    }
  }
  if (!ok) {  // release the publisher, which waits for this step's first layer
    if (tid == 0) chain_gave_up = 1;
    group_arrive(kDualPublishBarrier, kDualThreads);
  }
}

template <int R, int S, int A, class W>
__device__ void dual_head_block(const Params& p, float* smem, DualFlags* flags, const float* mailbox,
                                DeviceStatus* status, int64_t pair, int64_t pairs) {
  constexpr int NT = kDualThreads;
  float* const skip = smem;          // [S]
  float* const hidden = skip + S;    // [A]
  float* const logits = hidden + A;  // [A]
  // Layers published, as seen by thread 0 and handed to the block; two slots because a slow
  // thread may still read one while thread 0 fills the next.
  __shared__ uint64_t available[2];
  const W* const skip_w = static_cast<const W*>(p.skip_w);
  const W* const skip_b = static_cast<const W*>(p.skip_b);
  const W* const out_w = static_cast<const W*>(p.out_w);
  const W* const out_b = static_cast<const W*>(p.out_b);
  const W* const end_w = static_cast<const W*>(p.end_w);
  const W* const end_b = static_cast<const W*>(p.end_b);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int L = p.L;
  const int64_t T = p.num_samples;
  WaitContext wait{status, p.spin_timeout_ns, kSiteDualLayerFlag, 0};
  uint64_t step = 0;
  int handoff = 0;
  bool ok = true;
  for (int64_t stream = pair; stream < p.batch && ok; stream += pairs) {
    int y_prev2 = p.history[stream_row(p, stream) * 2];  // tracked by warp 0, which writes the state back
    int y_prev1 = p.history[stream_row(p, stream) * 2 + 1];
    for (int64_t t = 0; t < T; ++t, ++step) {
      float u = 0.f;
      int teacher = 0;
      if (warp == 0) {
        u = load_selector(p, stream, t);
        teacher = fed_back_class(p, stream, t, 0);
      }
      for (int k = tid; k < S; k += NT) skip[k] = 0.f;
      int done = 0;
      while (done < L) {
        if (tid == 0) {
          wait.step = t;
          uint64_t seen;
          const bool got =
              bounded_wait([&] { return load_acquire_gpu(&flags->layers_published); }, step * L + done + 1, wait, seen);
          const uint64_t upto = seen - step * L;
          available[handoff & 1] = got ? (upto < uint64_t(L) ? upto : uint64_t(L)) : 0;
        }
        __syncthreads();
        const int upto = static_cast<int>(available[handoff & 1]);
        ++handoff;
        if (upto == 0) {
          ok = false;
          break;
        }
        for (int l = done; l < upto; ++l) {
          matvec<W, R, 1, 1, NT, WeightsInGlobal, InputFromOtherBlock>(
              skip_w + int64_t(l) * S * R, R, 0, S, mailbox + int64_t(l) * R, 0, tid, NoTransform{},
              [&](int m, int, const float (&v)[1]) {
                skip[m] += v[0] + WeightsInGlobal::value(skip_b + int64_t(l) * S + m);
              });
        }
        done = upto;
        if (done < L) prefetch_l1<int64_t(S) * R * sizeof(W)>(skip_w + int64_t(done) * S * R, tid, NT);
      }
      if (!ok) break;
      __syncthreads();
      matvec<W, S, 1, 1, NT, WeightsInGlobal, InputFromThisBlock>(
          out_w, S, 0, A, skip, 0, tid, ReluTransform{},
          [&](int m, int, const float (&v)[1]) { hidden[m] = fmaxf(v[0] + WeightsInGlobal::value(out_b + m), 0.f); });
      __syncthreads();
      matvec<W, A, 1, 1, NT, WeightsInGlobal, InputFromThisBlock>(
          end_w, A, 0, A, hidden, 0, tid, NoTransform{},
          [&](int m, int, const float (&v)[1]) { logits[m] = v[0] + WeightsInGlobal::value(end_b + m); });
      __syncthreads();
      if (warp == 0) {
        const int drawn = warp_sample<A>(logits, u, lane);
        write_step_outputs<A>(p, stream, t, drawn, logits, lane);
        const int fed = p.teacher ? teacher : drawn;
        y_prev2 = y_prev1;
        y_prev1 = fed;
        if (lane == 0) {
          flags->fed_back = fed;
          store_release_gpu(&flags->steps_sampled, step + 1);
        }
      }
      // No barrier here: the next step's first writes to shared memory (s, then z and logits)
      // come after barriers that warp 0 also has to reach.
    }
    if (ok && warp == 0 && lane < 2) p.history[stream_row(p, stream) * 2 + lane] = lane == 0 ? y_prev2 : y_prev1;
  }
}

template <int R, int S, int A, class W>
__global__ void __launch_bounds__(kDualThreads, 1) dual_block_kernel(const __grid_constant__ Params p) {
  extern __shared__ float4 shared_vectors[];
  float* const smem = reinterpret_cast<float*>(shared_vectors);
  auto* const status = static_cast<DeviceStatus*>(p.workspace);
  const int64_t pair = blockIdx.x >> 1;
  const int64_t pairs = gridDim.x >> 1;
  char* const area = static_cast<char*>(p.workspace) + kWorkspaceHeaderBytes + pair * dual_pair_bytes(p.L, R);
  auto* const flags = reinterpret_cast<DualFlags*>(area);
  float* const mailbox = reinterpret_cast<float*>(area + sizeof(DualFlags));
  if ((blockIdx.x & 1) == 0)
    dual_residual_block<R, S, A, W>(p, smem, flags, mailbox, status, pair, pairs);
  else
    dual_head_block<R, S, A, W>(p, smem, flags, mailbox, status, pair, pairs);
}

template <int R, int S, int A, class W>
Plan DualBlock<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  Plan plan;
  plan.variant = Variant::DualBlock;
  plan.streams_per_group = 1;
  plan.blocks_per_group = 2;
  plan.threads_per_block = kDualThreads;
  plan.shared_bytes = dual_shared_bytes<R, S, A>(p.L);
  if (!device.cooperative_launch)
    return refuse(Variant::DualBlock,
                  "the device does not support cooperative launches, which DUAL_BLOCK needs "
                  "to guarantee that both blocks of a pair are resident");
  const void* kernel = reinterpret_cast<const void*>(&dual_block_kernel<R, S, A, W>);
  cudaFuncAttributes attributes{};
  NVWAVENET_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (plan.shared_bytes + int64_t(attributes.sharedSizeBytes) > device.shared_per_block_optin)
    return refuse(Variant::DualBlock, "L=" + std::to_string(p.L) + " layers of R=" + std::to_string(R) +
                                          " channels need " + std::to_string(plan.shared_bytes) +
                                          " bytes of shared memory per block; the device allows " +
                                          std::to_string(device.shared_per_block_optin));
  allow_dynamic_shared(kernel, device, attributes);
  int per_sm = 0;
  NVWAVENET_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kDualThreads,
                                                                     static_cast<size_t>(plan.shared_bytes)));
  const int64_t max_pairs = int64_t(per_sm) * device.multiprocessors / 2;
  if (max_pairs < 1) return refuse(Variant::DualBlock, "not even one pair of blocks can be resident on this device");
  const int64_t pairs = p.batch < max_pairs ? p.batch : max_pairs;
  plan.grid_blocks = 2 * pairs;
  plan.co_resident_groups = max_pairs;
  plan.workspace_bytes = kWorkspaceHeaderBytes + pairs * dual_pair_bytes(p.L, R);
  plan.runnable = true;
  return plan;
}

template <int R, int S, int A, class W>
void DualBlock<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  Params arg = p;
  void* args[] = {&arg};
  NVWAVENET_CUDA_CHECK(cudaLaunchCooperativeKernel(
      dual_block_kernel<R, S, A, W>, dim3(static_cast<unsigned>(plan.grid_blocks)),
      dim3(kDualThreads), args, static_cast<size_t>(plan.shared_bytes), static_cast<cudaStream_t>(p.stream)));
}

}  // namespace nvwavenet::gpu
