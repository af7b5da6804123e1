// The CUDA engine's host side: checks Params, plans and launches the chosen variant, and turns
// CUDA errors and kernel status reports into exceptions. Kernels are compiled in the per-variant,
// per-precision .cu files; this file only dispatches to their launchers.
#include <cuda_runtime.h>

#include <array>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "../params_check.h"
#include "../sizes.h"
#include "api.h"
#include "host.h"
#include "persistent_layout.h"
#include "static_switch.h"
#include "status.h"

namespace nvwavenet::gpu {

void throw_cuda_error(cudaError_t error, const char* expression, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) +
                           ") from " + expression + " at " + file + ":" + std::to_string(line));
}

std::string built_sizes_list() {
  std::string text;
#define NVWAVENET_LIST_SIZE(r, s, a) text += (text.empty() ? "" : ", ") + std::string("(" #r ", " #s ", " #a ")");
  NVWAVENET_FOR_EACH_SIZE(NVWAVENET_LIST_SIZE)
#undef NVWAVENET_LIST_SIZE
  return text;
}

std::vector<std::array<int, 3>> persistent_sizes() {
  std::vector<std::array<int, 3>> sizes;
  // A size is built for PERSISTENT when one layer fits one block in every precision built.
#define NVWAVENET_PERSISTENT_SIZE(r, s, a)                                                   \
  if (persistent_layer_fits<r, s, a, float>() && persistent_layer_fits<r, s, a, __half>() && \
      persistent_layer_fits<r, s, a, __nv_bfloat16>())                                       \
    sizes.push_back({r, s, a});
  NVWAVENET_FOR_EACH_SIZE(NVWAVENET_PERSISTENT_SIZE)
#undef NVWAVENET_PERSISTENT_SIZE
  return sizes;
}

DeviceFacts device_facts(int device) {
  // Queried once per device: cudaGetDeviceProperties is slow enough to notice per call.
  static std::mutex mutex;
  static std::vector<DeviceFacts> known;
  static std::vector<bool> filled;
  const std::lock_guard<std::mutex> lock(mutex);
  if (device >= 0 && device < static_cast<int>(filled.size()) && filled[device]) return known[device];
  int count = 0;
  NVWAVENET_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    throw std::invalid_argument("device: expected a CUDA device index in [0, " + std::to_string(count) + "), got " +
                                std::to_string(device));
  cudaDeviceProp properties{};
  NVWAVENET_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  DeviceFacts facts;
  facts.name = properties.name;
  facts.major = properties.major;
  facts.minor = properties.minor;
  facts.multiprocessors = properties.multiProcessorCount;
  facts.shared_per_block_optin = static_cast<int64_t>(properties.sharedMemPerBlockOptin);
  facts.cooperative_launch = properties.cooperativeLaunch != 0;
  if (static_cast<int>(known.size()) < count) {
    known.resize(count);
    filled.resize(count, false);
  }
  known[device] = facts;
  filled[device] = true;
  return facts;
}

Plan resident_plan(Plan plan, const void* kernel, const DeviceFacts& device) {
  NVWAVENET_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.shared_bytes)));
  int per_sm = 0;
  NVWAVENET_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, plan.threads_per_block,
                                                                     static_cast<size_t>(plan.shared_bytes)));
  if (per_sm < 1)
    return refuse(plan.variant, "a block of " + std::to_string(plan.threads_per_block) + " threads with " +
                                    std::to_string(plan.shared_bytes) +
                                    " bytes of shared memory cannot be resident on this device");
  plan.co_resident_groups = int64_t(per_sm) * device.multiprocessors;
  plan.runnable = true;
  return plan;
}

namespace {

const char* variant_name(Variant variant) {
  const char* name = nvwavenet::variant_name(static_cast<int32_t>(variant));
  return name != nullptr ? name : "an unknown variant";
}

// "SINGLE_BLOCK, DUAL_BLOCK, ..." for messages.
std::string variant_names() {
  std::string text;
#define NVWAVENET_LIST_VARIANT(enumerator, value, name) text += (text.empty() ? "" : ", ") + std::string(name);
  NVWAVENET_FOR_EACH_VARIANT(NVWAVENET_LIST_VARIANT)
#undef NVWAVENET_LIST_VARIANT
  return text;
}

void require_aligned(const void* pointer, const char* name) {
  require(reinterpret_cast<std::uintptr_t>(pointer) % 16 == 0,
          std::string(name) + ": the CUDA kernels read it 16 bytes at a time, so it must be 16-byte aligned");
}

// Everything the kernels rely on that Params can get wrong. The network sizes come first, so an
// unbuilt size is reported as such before anything about pointers. Planning happens before the
// workspace exists (the plan says how large it must be), so only a launch requires it.
void validate(const Params& p, Variant variant, bool launching) {
  require(variant != Variant::Auto && nvwavenet::variant_name(static_cast<int32_t>(variant)) != nullptr,
          "variant: expected one of " + variant_names() + ", got " + variant_name(variant) +
              (variant == Variant::Auto ? " (AUTO is resolved in Python, nvwavenet.autotune)" : ""));
  // Whether (R, S, A) and the weight type were built: the dispatch's own check, which raises naming them.
  dispatch_size_and_type(p, [](auto, auto) {});
  require(p.L >= 1 && p.L <= 64, "L: the CUDA kernels support 1 to 64 layers, got " + std::to_string(p.L));
  require(
      p.max_dilation >= 1 && p.max_dilation <= 1024 && (p.max_dilation & (p.max_dilation - 1)) == 0,
      "max_dilation: the CUDA kernels support a power of two from 1 to 1024, got " + std::to_string(p.max_dilation));
  require(p.cond_dtype == DType::Float32 || p.cond_dtype == DType::Float16,
          "cond_dtype: the CUDA kernels read float32 or float16 conditioning");
  require(p.spin_timeout_ns > 0, "spin_timeout_ns: expected > 0, got " + std::to_string(p.spin_timeout_ns));
  check_call(p, "device");
  require(p.steps == nullptr, "steps: the CUDA kernels run every stream for num_samples steps (pass null)");
  for_each_weight(p, [](const void* pointer, const char* name) { require_aligned(pointer, name); });
  if (variant == Variant::ClusterFold) {
    for_each_fold_weight(p, [](const void* pointer, const char* name) {
      require_pointer(pointer, name, "device");
      require_aligned(pointer, name);
    });
  }
  require_aligned(p.queues, "queues");
  if (launching) {
    require_pointer(p.workspace, "workspace", "device");
    require_aligned(p.workspace, "workspace");
  }
}

// Calls f(TypeTag<V>{}), V the class of `variant` for p's size and weight type: the class template
// named by the variant's enumerator in NVWAVENET_FOR_EACH_VARIANT (host.h declares them). AUTO
// names no class of its own and throws `auto_error`.
template <class F>
decltype(auto) dispatch_variant(const Params& p, Variant variant, const char* auto_error, F&& f) {
  return dispatch_size_and_type(p, [&](auto size, auto type) -> decltype(auto) {
    using Size = decltype(size);
    using W = typename decltype(type)::type;
    switch (variant) {
#define NVWAVENET_VARIANT_CASE(enumerator, value, name) \
  case Variant::enumerator:                             \
    return f(TypeTag<enumerator<Size::R, Size::S, Size::A, W>>{});
      NVWAVENET_FOR_EACH_VARIANT(NVWAVENET_VARIANT_CASE)
#undef NVWAVENET_VARIANT_CASE
      case Variant::Auto:
        break;
    }
    throw std::invalid_argument(auto_error);
  });
}

Plan plan_on(const Params& p, Variant variant, const DeviceFacts& device) {
  return dispatch_variant(p, variant, "variant: AUTO has no plan of its own",
                          [&](auto impl) { return decltype(impl)::type::plan(p, device); });
}

// Planning queries the device (function attributes, occupancy): ~10-100 us that a short
// streaming call should not pay again. A plan depends on the device, the variant, the compiled
// kernel (sizes, weight type) and the Params fields the planners read (L, batch, tile).
Plan cached_plan(const Params& p, Variant variant, const DeviceFacts& device) {
  using Key = std::array<int64_t, 9>;
  static std::mutex mutex;
  static std::map<Key, Plan> plans;
  const Key key{p.device, int64_t(variant), p.R, p.S, p.A, int64_t(p.weight_dtype), p.L, p.batch, p.streams_per_block};
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto found = plans.find(key);
    if (found != plans.end()) return found->second;
  }
  Plan made = plan_on(p, variant, device);
  const std::lock_guard<std::mutex> lock(mutex);
  if (plans.size() >= 4096) plans.clear();  // bounded, whatever mix of batches and depths a process runs
  plans.emplace(key, made);
  return made;
}

void launch(const Params& p, const Plan& plan) {
  dispatch_variant(p, plan.variant, "variant: AUTO cannot be launched",
                   [&](auto impl) { decltype(impl)::type::launch(p, plan); });
}

#ifdef NVWAVENET_TRACE
// One line per block of stream 0's cluster: its %globaltimer stamps in step T / 2, in ns after the
// earliest stamp of the step (persistent.cuh, trace_event, names the events).
void print_trace(const Params& p, const Plan& plan, Variant variant) {
  std::vector<uint64_t> stamps(kPersistentTraceBytes / 8);
  NVWAVENET_CUDA_CHECK(cudaMemcpy(stamps.data(), static_cast<char*>(p.workspace) + kWorkspaceHeaderBytes,
                                  kPersistentTraceBytes, cudaMemcpyDeviceToHost));
  uint64_t first = UINT64_MAX;
  for (const uint64_t stamp : stamps)
    if (stamp != 0 && stamp < first) first = stamp;
  for (int rank = 0; rank < plan.blocks_per_group; ++rank) {
    std::string line = std::string("nvwavenet trace ") + variant_name(variant) + " step " +
                       std::to_string(p.num_samples / 2) +
                       (rank < plan.layer_blocks                       ? " layer block "
                        : rank < plan.layer_blocks + plan.head_blocks ? " head block "
                                                                       : " skip block ") +
                       std::to_string(rank) + ":";
    for (int event = 0; event < kTraceEvents; ++event) {
      const uint64_t stamp = stamps[rank * kTraceEvents + event];
      if (stamp != 0) line += " " + std::to_string(event) + "@" + std::to_string(stamp - first);
    }
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}
#endif

}  // namespace

std::string status_message(const DeviceStatus& status, int32_t variant, int64_t timeout_ns) {
  // Every field comes from the GPU (or, in tests, from anywhere): nothing here indexes with one,
  // and a value outside its enum is printed as the number it is.
  static const char* const kSites[] = {
      "an unnamed wait",
      "the residual block waiting for the head block's sample",
      "the head block waiting for a layer's activations",
      "the publisher warp waiting for the residual warps",
      "a layer block waiting for its input",
      "a head block waiting for the skip sums",
      "a head block waiting for the hidden vector",
      "the sampling block waiting for the logits",
      "a skip block waiting for the layers' gated activations",
  };
  constexpr int32_t kKnownSites = static_cast<int32_t>(sizeof(kSites) / sizeof(kSites[0]));
  const std::string site = status.site >= 0 && status.site < kKnownSites
                               ? std::string(kSites[status.site])
                               : "an unknown wait (site " + std::to_string(status.site) + ")";
  const char* name = nvwavenet::variant_name(variant);
  std::string text = std::string("nvwavenet ") + (name != nullptr ? name : "variant " + std::to_string(variant)) +
                     " kernel stopped: ";
  if (status.code == kStatusTimeout) {
    text += "block " + std::to_string(status.block) + ", " + site + " at step " + std::to_string(status.step) +
            ", waited more than " + std::to_string(timeout_ns / 1000000) + " ms (flag " +
            std::to_string(status.observed) + ", needed " + std::to_string(status.expected) +
            "). The outputs and the generation state are incomplete. A kernel bug, or a GPU too busy to keep the "
            "cooperating blocks running; if the GPU is shared, raise the limit with NVWAVENET_SPIN_TIMEOUT_MS.";
  } else if (status.code == kStatusNoClusterArch) {
    text += "this build has no sm_90 code for the cluster kernel; rebuild with NVWAVENET_CUDA_ARCHS including 90.";
  } else {
    text += "unknown status code " + std::to_string(status.code) + ".";
  }
  return text;
}

Plan plan(const Params& p, Variant variant) {
  validate(p, variant, false);
  NVWAVENET_CUDA_CHECK(cudaSetDevice(p.device));
  return cached_plan(p, variant, device_facts(p.device));
}

// Validates, plans, zero-fills the workspace and launches on p.stream (nothing for 0 samples);
// waits for nothing.
static Plan launch_checked(const Params& p, Variant variant) {
  validate(p, variant, true);
  if (p.num_samples == 0) return Plan{};
  NVWAVENET_CUDA_CHECK(cudaSetDevice(p.device));
  const DeviceFacts device = device_facts(p.device);
  const Plan chosen = cached_plan(p, variant, device);
  if (!chosen.runnable)
    throw std::invalid_argument(std::string("implementation: ") + variant_name(variant) +
                                " cannot run this configuration on " + device.name + ": " + chosen.reason);
  if (p.workspace_bytes < chosen.workspace_bytes)
    throw std::invalid_argument("workspace_bytes: " + std::string(variant_name(variant)) + " needs " +
                                std::to_string(chosen.workspace_bytes) + " bytes of workspace, got " +
                                std::to_string(p.workspace_bytes));
  const auto stream = static_cast<cudaStream_t>(p.stream);
  NVWAVENET_CUDA_CHECK(cudaMemsetAsync(p.workspace, 0, static_cast<size_t>(chosen.workspace_bytes), stream));
  launch(p, chosen);
  return chosen;
}

void launch_async(const Params& p, Variant variant) { launch_checked(p, variant); }

void generate(const Params& p, Variant variant) {
  const Plan chosen = launch_checked(p, variant);
  if (p.num_samples == 0) return;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  // The kernel reports waits that gave up in the workspace's status block; reading it back means
  // waiting for the kernel, which also surfaces any fault it hit.
  DeviceStatus status{};
  NVWAVENET_CUDA_CHECK(cudaMemcpyAsync(&status, p.workspace, sizeof(status), cudaMemcpyDeviceToHost, stream));
  NVWAVENET_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (status.code != kStatusOk)
    throw std::runtime_error(status_message(status, static_cast<int32_t>(variant), p.spin_timeout_ns));
#ifdef NVWAVENET_TRACE
  if (runs_persistent_kernel(variant)) print_trace(p, chosen, variant);
#endif
}

}  // namespace nvwavenet::gpu
