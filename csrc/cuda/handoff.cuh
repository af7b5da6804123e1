// How the blocks of one cluster hand data to each other (persistent.cuh is written once over
// these two policies):
//
// FlagHandoff (PERSISTENT): the producer's threads store into the consumer's shared memory
// through DSMEM, meet at a barrier, and one thread adds to a counter there with
// red.release.cluster; the consumer polls the counter with ld.acquire.cluster. On sm_90 the
// release compiles to MEMBAR.ALL.GPU and the acquire loop to an L1 invalidate (CCTL.IVALL) per
// poll (SASS review, issue 17), ~0.6-1.2 us per hand-off (estimate).
//
// MbarrierHandoff (CLUSTER): every element is an st.async into the consumer's shared memory that
// completes a transaction on the consumer's mbarrier (complete_tx::bytes); the consumer's thread 0
// announces the bytes it expects this phase (arrive.expect_tx) and waits on the phase parity with
// a bounded mbarrier.try_wait. No fence, no producer barrier, no counter store: the data carries
// its own completion. A producer may run ahead of the consumer's expect_tx: the transaction count
// goes negative (PTX allows -(2^20-1)) and the phase cannot complete before the consumer's own
// arrival. Buffers are single, as with flags: a producer writes phase k+1 only after a chain of
// hand-offs that starts after the consumer finished with phase k (persistent.cuh's header), so
// a phase never receives bytes of the next. When a wait gives up (timeout or abort), st.async
// issued before the producers saw the abort may still be in flight; each block drains its open
// phases before it exits (MbarrierHandoff::drain, persistent.cuh's drain_handoffs).
#pragma once

#include <cooperative_groups.h>

#include "common.cuh"

namespace nvwavenet::gpu {

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
namespace cg = cooperative_groups;

struct FlagHandoff {
  static constexpr bool kProducerSignals = true;  // the producer must meet its threads and signal

  __device__ __forceinline__ static void init(uint64_t* slot) { *slot = 0; }

  __device__ __forceinline__ static void put(const cg::cluster_group& cluster, float* local_address, int rank,
                                             uint64_t*, float value) {
    *cluster.map_shared_rank(local_address, rank) = value;
  }

  __device__ __forceinline__ static void signal(const cg::cluster_group& cluster, uint64_t* local_slot, int rank) {
    add_release_cluster(cluster.map_shared_rank(local_slot, rank), 1);
  }

  // Thread 0 only. `phase` counts this slot's waits from 0; the counter must reach `signals`
  // (the producers signal once per phase each).
  __device__ __forceinline__ static bool wait(uint64_t* slot, int64_t, uint64_t signals, uint32_t,
                                              const WaitContext& ctx) {
    uint64_t seen;
    return bounded_wait([&] { return load_acquire_cluster(slot); }, signals, ctx, seen);
  }
};

struct MbarrierHandoff {
  static constexpr bool kProducerSignals = false;

  // One arrival per phase (the consumer's thread 0); the fence makes the initialised barrier
  // visible to the other blocks' st.async before the cluster barrier that follows.
  __device__ __forceinline__ static void init(uint64_t* slot) {
    ptx::mbarrier_init(slot, 1);
    ptx::fence_mbarrier_init_cluster();
  }

  __device__ __forceinline__ static void put(const cg::cluster_group&, float* local_address, int rank,
                                             uint64_t* local_slot, float value) {
    ptx::st_async_f32(ptx::mapa(local_address, rank), value, ptx::mapa(local_slot, rank));
  }

  __device__ __forceinline__ static void signal(const cg::cluster_group&, uint64_t*, int) {}

  __device__ __forceinline__ static bool wait(uint64_t* slot, int64_t phase, uint64_t, uint32_t bytes,
                                              const WaitContext& ctx) {
    ptx::mbarrier_arrive_expect_tx(slot, bytes);
    const uint32_t parity = static_cast<uint32_t>(phase & 1);
    uint64_t seen;  // phases completed, for the timeout report
    return bounded_wait(
        [&]() -> uint64_t { return uint64_t(phase) + (ptx::mbarrier_try_wait_parity(slot, parity) ? 1 : 0); },
        uint64_t(phase) + 1, ctx, seen);
  }

  // Thread 0, after the final cluster barrier (no block sends any more), before its block exits:
  // completes the open phase `phase` of this slot, into which `in_flight` bytes were sent (landed
  // or not) and for which this block announced `announced` bytes (0: its wait never got there),
  // so that no st.async can land after the block's shared memory is gone. A phase that no one
  // announced and no one sent to is empty. Bytes announced that no producer will send are
  // completed here (complete_tx); bytes sent that no one announced are announced. The wait ignores
  // the abort (it is raised whenever this matters) and only gives up after the spin timeout, but
  // at least kDrainTimeoutNs: the bytes still in flight land whatever limit the caller set on
  // waits for other blocks (1 ns in the timeout tests, with which a drain that gave up after 256
  // polls let a block exit with st.async in flight into it: scripts/cuda_host_matrix.py --aborts).
  // The protocol model (tests/test_cluster_protocol.py) says giving up cannot happen.
  static constexpr int64_t kDrainTimeoutNs = 1000000000;
  __device__ __forceinline__ static void drain(uint64_t* slot, int64_t phase, uint32_t announced, uint32_t in_flight,
                                               const WaitContext& ctx) {
    if (announced == 0 && in_flight == 0) return;
    if (announced == 0) {
      ptx::mbarrier_arrive_expect_tx(slot, in_flight);
    } else if (announced > in_flight) {
      ptx::mbarrier_complete_tx(slot, announced - in_flight);
    }
    const uint32_t parity = static_cast<uint32_t>(phase & 1);
    const int64_t limit = ctx.timeout_ns > kDrainTimeoutNs ? ctx.timeout_ns : kDrainTimeoutNs;
    const uint64_t start = global_timer_ns();
    for (uint32_t spin = 1; !ptx::mbarrier_try_wait_parity(slot, parity); ++spin) {
      if ((spin & 255u) == 0 && static_cast<int64_t>(global_timer_ns() - start) > limit) {
        report_timeout(ctx, uint64_t(phase), uint64_t(phase) + 1);
        return;
      }
    }
  }
};
#endif

}  // namespace nvwavenet::gpu
