// Explicit instantiations of ClusterSkipBlocks for float16 weights, every size in sizes.h (one file per
// variant and precision, so the build compiles them in parallel).
#include "../sizes.h"
#include "persistent.cuh"

namespace nvwavenet::gpu {
#define NVWAVENET_INSTANTIATE(R, S, A) template struct ClusterSkipBlocks<R, S, A, __half>;
NVWAVENET_FOR_EACH_SIZE(NVWAVENET_INSTANTIATE)
#undef NVWAVENET_INSTANTIATE
}  // namespace nvwavenet::gpu
