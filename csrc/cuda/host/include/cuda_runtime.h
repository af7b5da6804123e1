// Host build: the CUDA runtime API that launch.cu and the launchers call, answered by an emulated
// sm_90 device (emu.cpp: 132 multiprocessors, 227 KB opt-in shared memory per block, clusters of
// up to 8 blocks, 16 with the non-portable attribute). Launches run the kernel on the CPU,
// synchronously; plans the GPU would refuse fail here with the same error codes.
#pragma once

#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../emu.h"

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorInvalidClusterSize = 912,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice,
  cudaMemcpyDeviceToHost,
  cudaMemcpyDeviceToDevice,
  cudaMemcpyDefault
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributeNonPortableClusterSizeAllowed = 12,
};
enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension = 4 };

struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct cudaDeviceProp {
  char name[256];
  int major, minor;
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
  int cooperativeLaunch;
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int maxThreadsPerBlock;
  int maxDynamicSharedSizeBytes;
};
struct cudaLaunchAttributeValue {
  struct {
    unsigned x, y, z;
  } clusterDim;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};

const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* kernel);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel, int threads,
                                                          size_t dynamic_shared);
cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* kernel, const cudaLaunchConfig_t* config);
cudaError_t cudaMemsetAsync(void* destination, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

template <class... A>
cudaError_t cudaFuncSetAttribute(void (*kernel)(A...), cudaFuncAttribute attribute, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}

namespace nvw::emu {

// One launch: the grid, how its blocks must be co-resident (each cluster, or the whole grid for a
// cooperative launch), and the body every CUDA thread runs.
struct LaunchRequest {
  const void* kernel;
  dim3 grid, block;
  size_t dynamic_shared;
  unsigned cluster;  // blocks per cluster, 1 without clusters
  bool cooperative;
};
cudaError_t launch(const LaunchRequest& request, std::function<void()> body);

// Blocks per cluster that a launch configuration asks for (1 without the attribute).
inline unsigned cluster_blocks_of(const cudaLaunchConfig_t& config) {
  unsigned blocks = 1;
  for (unsigned i = 0; i < config.numAttrs; ++i)
    if (config.attrs[i].id == cudaLaunchAttributeClusterDimension) {
      const auto& d = config.attrs[i].val.clusterDim;
      blocks = d.x * d.y * d.z;
    }
  return blocks;
}

template <class... A, class Tuple>
cudaError_t launch_with(void (*kernel)(A...), LaunchRequest request, Tuple arguments) {
  request.kernel = reinterpret_cast<const void*>(kernel);
  return launch(request, [kernel, arguments]() { std::apply(kernel, arguments); });
}

template <class... A, std::size_t... I>
std::tuple<std::decay_t<A>...> unpack(void** args, std::index_sequence<I...>) {
  return std::tuple<std::decay_t<A>...>(*static_cast<std::decay_t<A>*>(args[I])...);
}

}  // namespace nvw::emu

template <class... A>
cudaError_t cudaLaunchKernel(void (*kernel)(A...), dim3 grid, dim3 block, void** args, size_t shared = 0,
                             cudaStream_t = nullptr) {
  return nvw::emu::launch_with(kernel, {nullptr, grid, block, shared, 1, false},
                               nvw::emu::unpack<A...>(args, std::index_sequence_for<A...>{}));
}
template <class... A>
cudaError_t cudaLaunchCooperativeKernel(void (*kernel)(A...), dim3 grid, dim3 block, void** args, size_t shared = 0,
                                        cudaStream_t = nullptr) {
  return nvw::emu::launch_with(kernel, {nullptr, grid, block, shared, 1, true},
                               nvw::emu::unpack<A...>(args, std::index_sequence_for<A...>{}));
}
template <class... E, class... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(E...), A&&... args) {
  const nvw::emu::LaunchRequest request{nullptr, config->gridDim, config->blockDim, config->dynamicSmemBytes,
                                        nvw::emu::cluster_blocks_of(*config), false};
  return nvw::emu::launch_with(kernel, request, std::tuple<std::decay_t<E>...>(std::forward<A>(args)...));
}
