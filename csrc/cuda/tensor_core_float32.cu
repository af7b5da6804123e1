// TensorCore for float32 weights: only the plan, which refuses them with the reason (the 3xTF32
// kernel is not built), so that dispatch covers every precision.
#include "../sizes.h"
#include "tensor_core.cuh"

namespace nvwavenet::gpu {
#define NVWAVENET_INSTANTIATE(R, S, A) template struct TensorCore<R, S, A, float>;
NVWAVENET_FOR_EACH_SIZE(NVWAVENET_INSTANTIATE)
#undef NVWAVENET_INSTANTIATE
}  // namespace nvwavenet::gpu
