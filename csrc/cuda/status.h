// What a CUDA kernel reports back to the host, in the first bytes of Params::workspace.
//
// Plain C++ shared by device and host code. Kernels never trap or hang: a spin-wait that runs
// past Params::spin_timeout_ns records where it stopped here, raises `abort` so that every other
// block's waits give up too, and the kernel returns; the host reads this block after the launch
// and raises a RuntimeError that says which wait gave up.
#pragma once

#include <cstdint>

namespace nvwavenet::gpu {

enum StatusCode : int32_t {
  kStatusOk = 0,
  kStatusTimeout = 1,        // a bounded spin-wait ran out of time
  kStatusNoClusterArch = 2,  // a cluster kernel ran from code compiled for an architecture below sm_90
};

// Which wait gave up (the host turns it into words).
enum WaitSite : int32_t {
  kSiteNone = 0,
  kSiteDualSampleFlag = 1,    // DUAL_BLOCK residual block waiting for the head block's sample
  kSiteDualLayerFlag = 2,     // DUAL_BLOCK head block waiting for a layer's gated activations
  kSiteDualPublisher = 3,     // retired (the publisher now meets the chain at a named barrier); kept
                              // so that the other values keep their meaning
  kSitePersistentInput = 4,   // PERSISTENT layer block waiting for its input x
  kSitePersistentSkip = 5,    // PERSISTENT head block waiting for the skip partial sums
  kSitePersistentHidden = 6,  // PERSISTENT head block waiting for the hidden vector z slices
  kSitePersistentLogits = 7,  // PERSISTENT sampling block waiting for the logit slices
  kSitePersistentSkipInput = 8,  // CLUSTER_SKIP_BLOCKS skip block waiting for the layers' gated activations
};

struct DeviceStatus {
  int32_t code;       // StatusCode; the first failing thread writes it (atomicCAS)
  int32_t abort;      // non-zero once any block failed: every wait gives up when it sees it
  int32_t site;       // WaitSite of the first failure
  int32_t block;      // blockIdx.x of the first failure
  int64_t step;       // generation step (0-based within the call) of the first failure
  uint64_t observed;  // flag value seen last
  uint64_t expected;  // flag value waited for
};

// The status block sits at the start of the workspace; variant data follow at this offset.
constexpr int64_t kWorkspaceHeaderBytes = 256;
static_assert(sizeof(DeviceStatus) <= kWorkspaceHeaderBytes, "status block overflows its header");

}  // namespace nvwavenet::gpu
