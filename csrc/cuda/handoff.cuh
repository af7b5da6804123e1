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
// a phase never receives bytes of the next.
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
};
#endif

}  // namespace nvwavenet::gpu
