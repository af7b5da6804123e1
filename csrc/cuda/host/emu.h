// The host build of csrc/cuda (tests/test_cuda_host.py): what CUDA C++ gives device code, for g++.
// Force-included (-include) before every kernel source of the host build, with csrc/cuda/host/include
// ahead on the include path (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h, cooperative_groups.h).
//
// Each CUDA thread is a fiber with its own small stack; the fibers of a block run on one OS
// thread, one at a time, switched only inside the primitives below (barriers, warp collectives,
// polls of memory flags, the PTX wrappers of ptx_host.h), and the blocks of a launch hand one
// baton between their OS threads, so exactly one CUDA thread runs at any moment. `__shared__`
// is thread_local: each block's OS thread has its own copy of every shared variable, and
// `extern __shared__` arrays name the one dynamic shared-memory buffer (emu.cpp). The scheduler,
// the runtime API and the PTX semantics live in emu.cpp.
#pragma once

#ifndef NVWAVENET_HOST_BUILD
#error "emu.h is the host build's device layer; build with -DNVWAVENET_HOST_BUILD"
#endif

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__  // (glibc spells its own attribute __noinline__, so the macro must stay empty)
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ thread_local
#define __restrict__ __restrict

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  uint32_t x, y;
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

namespace nvw::emu {

// The running CUDA thread's index (emu.cpp keeps it per fiber).
const dim3& thread_index();

// Block barrier `id` over `count` threads (bar.sync / bar.arrive / bar.red.and); returns the AND
// of the arrivals' predicates when waiting.
bool barrier(int id, int count, bool wait, bool predicate, const char* what);
int block_threads();

// A warp-synchronous exchange of 32-bit values: shfl.sync in its modes.
enum ShuffleMode { kShflIdx, kShflUp, kShflDown, kShflXor };
uint32_t shuffle(uint32_t mask, uint32_t value, int operand, int width, ShuffleMode mode);
void syncwarp(uint32_t mask);

// Atomics and fences on global memory: a scheduling point each (another thread may run first).
void atomic_point(const void* address, const char* what);

}  // namespace nvw::emu

#define threadIdx (::nvw::emu::thread_index())
// Per block, so per OS thread (set by emu.cpp when the block starts).
extern thread_local dim3 blockIdx, blockDim, gridDim;

inline void __syncthreads() { ::nvw::emu::barrier(0, ::nvw::emu::block_threads(), true, true, "__syncthreads"); }
inline int __syncthreads_and(int predicate) {
  return ::nvw::emu::barrier(0, ::nvw::emu::block_threads(), true, predicate != 0, "__syncthreads_and") ? 1 : 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::nvw::emu::syncwarp(mask); }
inline void __threadfence() { ::nvw::emu::atomic_point(nullptr, "__threadfence"); }

template <class T>
inline T nvw_shuffle(unsigned mask, T value, int operand, int width, ::nvw::emu::ShuffleMode mode) {
  static_assert(sizeof(T) == 4, "the kernels shuffle 32-bit values");
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits = ::nvw::emu::shuffle(mask, bits, operand, width, mode);
  std::memcpy(&value, &bits, 4);
  return value;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return nvw_shuffle(mask, v, src, width, ::nvw::emu::kShflIdx);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return nvw_shuffle(mask, v, int(delta), width, ::nvw::emu::kShflUp);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return nvw_shuffle(mask, v, int(delta), width, ::nvw::emu::kShflDown);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return nvw_shuffle(mask, v, lane_mask, width, ::nvw::emu::kShflXor);
}

// CUDA's overloads (int, unsigned, unsigned long long), so that enum arguments convert as on the GPU.
#define NVW_ATOMICS(T)                                        \
  inline T atomicCAS(T* address, T compare, T value) {        \
    ::nvw::emu::atomic_point(address, "atomicCAS");           \
    const T old = *address;                                   \
    if (old == compare) *address = value;                     \
    return old;                                               \
  }                                                           \
  inline T atomicExch(T* address, T value) {                  \
    ::nvw::emu::atomic_point(address, "atomicExch");          \
    const T old = *address;                                   \
    *address = value;                                         \
    return old;                                               \
  }                                                           \
  inline T atomicAdd(T* address, T value) {                   \
    ::nvw::emu::atomic_point(address, "atomicAdd");           \
    const T old = *address;                                   \
    *address = old + value;                                   \
    return old;                                               \
  }
NVW_ATOMICS(int)
NVW_ATOMICS(unsigned)
NVW_ATOMICS(unsigned long long)
#undef NVW_ATOMICS

// Cache-operator loads and stores: plain accesses (one thread runs at a time; see NOTES.md for
// what that hides).
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline void __stcg(T* p, T v) {
  *p = v;
}

inline float __uint_as_float(uint32_t v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t v;
  std::memcpy(&v, &f, 4);
  return v;
}
// The fast-math intrinsics at their float accuracy (the GPU's are approximations within a few
// ulp; the tolerances of SPEC section 4 are far coarser).
inline float __expf(float x) { return std::exp(x); }
inline float __frcp_rn(float x) { return 1.f / x; }
