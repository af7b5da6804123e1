// The CUDA engine's host interface, in plain C++ (bindings.cpp includes it without CUDA headers).
//
// Every function validates Params first and throws std::invalid_argument (Python ValueError)
// naming the field for misuse, and std::runtime_error (Python RuntimeError) for CUDA failures,
// with CUDA's message and the source file and line.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "../nvwavenet.h"
#include "status.h"

namespace nvwavenet::gpu {

// How a variant would run a configuration on a device, or why it cannot.
struct Plan {
  Variant variant = Variant::Auto;
  bool runnable = false;
  std::string reason;         // why not, when !runnable
  int streams_per_group = 1;  // streams one group of blocks generates together (batch tile)
  int blocks_per_group = 1;   // 1 (SINGLE_BLOCK), 2 (DUAL_BLOCK pair), cluster size (PERSISTENT)
  int threads_per_block = 0;
  int64_t grid_blocks = 0;         // blocks launched
  int64_t shared_bytes = 0;        // dynamic shared memory per block
  int64_t workspace_bytes = 0;     // zero-filled device scratch the call needs
  int64_t co_resident_groups = 0;  // groups the device runs at once (0 when not runnable)
  int layer_blocks = 0;            // PERSISTENT: blocks that hold layers
  int head_blocks = 0;             // PERSISTENT: blocks that hold the output head
  int max_layers_per_block = 0;    // PERSISTENT
  int skip_blocks = 0;             // CLUSTER_SKIP_BLOCKS: blocks that hold rows [chain_skip_rows, S) of W_skip
  int chain_skip_rows = 0;         // CLUSTER_SKIP_BLOCKS: rows of each layer's W_skip in the layer blocks
};

// The plan for `variant` (not Auto): validates Params, queries the device named by p.device, and
// says whether and how the variant runs. Launches nothing.
Plan plan(const Params& p, Variant variant);

// Generates p.num_samples steps for p.batch streams with `variant` (not Auto), on p.stream, and
// waits for the kernel to finish so that its status can be checked.
void generate(const Params& p, Variant variant);

// Generate's launch without the wait: validates, plans, zero-fills the workspace and launches on
// p.stream, then returns. The kernel's status block (the workspace's first bytes, status.h) is the
// caller's to read after the kernel; nothing here synchronises with the host, so a launch with
// fixed Params can be captured in a CUDA graph.
void launch_async(const Params& p, Variant variant);

// The RuntimeError text for a kernel's status block (`variant`: an nvwavenet.Impl value). Total:
// any field values, however corrupt, give a message, never an out-of-range lookup.
std::string status_message(const DeviceStatus& status, int32_t variant, int64_t timeout_ns);

// The (R, S, A) combinations PERSISTENT is compiled for (a subset of sizes.h: only sizes whose
// layers fit one block's shared memory).
std::vector<std::array<int, 3>> persistent_sizes();

// Whether `variant` runs the persistent kernel (persistent.cuh): PERSISTENT and the CLUSTER
// family, built for persistent_sizes() only, and traced under NVWAVENET_TRACE.
constexpr bool runs_persistent_kernel(Variant variant) {
  return variant == Variant::Persistent || variant == Variant::Cluster || variant == Variant::ClusterRoles ||
         variant == Variant::ClusterFold || variant == Variant::ClusterBatched ||
         variant == Variant::ClusterSkipBlocks;
}

}  // namespace nvwavenet::gpu
