// Host-side helpers for the CUDA sources: checked CUDA calls, device facts, and the launcher
// declarations that launch.cu dispatches to (their definitions and explicit instantiations live
// in the per-variant, per-precision .cu files, so each compiles in parallel).
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "api.h"

namespace nvwavenet::gpu {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* expression, const char* file, int line);

// Every CUDA runtime call goes through this: a failure becomes a std::runtime_error that carries
// CUDA's name and message, the call, and where it was made.
#define NVWAVENET_CUDA_CHECK(expression)                                                     \
  do {                                                                                       \
    const cudaError_t nvwavenet_error_ = (expression);                                       \
    if (nvwavenet_error_ != cudaSuccess)                                                     \
      ::nvwavenet::gpu::throw_cuda_error(nvwavenet_error_, #expression, __FILE__, __LINE__); \
  } while (0)

// What the planners need to know about the device.
struct DeviceFacts {
  std::string name;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  int64_t shared_per_block_optin = 0;  // the most dynamic + static shared memory one block may use
  bool cooperative_launch = false;
};

DeviceFacts device_facts(int device);

// Lets `kernel` use as much dynamic shared memory as the device allows, whatever this call's L:
// plans are cached (launch.cu), so a plan made for a large L may launch after one for a small L
// was made, and the limit must not depend on which came last.
inline void allow_dynamic_shared(const void* kernel, const DeviceFacts& device, const cudaFuncAttributes& attributes) {
  NVWAVENET_CUDA_CHECK(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(device.shared_per_block_optin - static_cast<int64_t>(attributes.sharedSizeBytes))));
}

// One per variant; R, S, A, W fixed at compile time. plan() never launches; launch() runs the
// plan made for the same Params.
template <int R, int S, int A, class W>
struct SingleBlock {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

template <int R, int S, int A, class W>
struct DualBlock {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

template <int R, int S, int A, class W>
struct Persistent {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

// PERSISTENT's kernel with st.async/mbarrier hand-offs (handoff.cuh); opt-in, never run on a GPU yet.
template <int R, int S, int A, class W>
struct Cluster {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

// CLUSTER's kernel generating Params.streams_per_block streams per cluster; opt-in, never run on a GPU yet.
template <int R, int S, int A, class W>
struct ClusterBatched {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

// CLUSTER with warp-specialised chain and skip roles in its layer blocks (persistent.cuh);
// opt-in, never run on a GPU yet.
template <int R, int S, int A, class W>
struct ClusterRoles {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

// CLUSTER with the W_cur(l+1) W_res(l) fold inside each layer block (Params::fold_w); opt-in,
// never run on a GPU yet.
template <int R, int S, int A, class W>
struct ClusterFold {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

// CLUSTER with part of W_skip in skip blocks of its own, so that float32 layers fit two per block
// (persistent.cuh, persistent_skip_block); opt-in, never run on a GPU yet.
template <int R, int S, int A, class W>
struct ClusterSkipBlocks {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

template <int R, int S, int A, class W>
struct TensorCore {
  static Plan plan(const Params& p, const DeviceFacts& device);
  static void launch(const Params& p, const Plan& plan);
};

// For variants with one block per group: raises `kernel`'s dynamic shared-memory limit to
// plan.shared_bytes and returns `plan` runnable with how many blocks the device holds at once, or
// refused when not even one fits on a multiprocessor.
Plan resident_plan(Plan plan, const void* kernel, const DeviceFacts& device);

// A plan that says no, with the reason.
inline Plan refuse(Variant variant, std::string reason) {
  Plan plan;
  plan.variant = variant;
  plan.runnable = false;
  plan.reason = std::move(reason);
  return plan;
}

__host__ __device__ inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

}  // namespace nvwavenet::gpu
