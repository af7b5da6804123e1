// Host build: ptx.cuh's wrappers, each given its PTX ISA semantics by the emulator (emu.cpp).
// Asynchronous operations are modelled so that a missing wait or a wrong byte count shows:
// cp.async poisons its destination and lands only at the covering cp.async.wait_group; st.async
// poisons its destination and lands, with its complete_tx, a random while later; mbarrier phases
// complete on arrivals and transaction bytes exactly as PTX defines them.
#pragma once

#include <cstdint>

#include "emu.h"

namespace nvw::emu {
// A poll of a memory flag: a scheduling point that makes no progress unless the value changed.
uint64_t poll64(const uint64_t* p, const char* what);
int32_t poll32(const int32_t* p, const char* what);
void store64(uint64_t* p, uint64_t v, const char* what);
void add64(uint64_t* p, uint64_t v, const char* what);
uint64_t globaltimer();

uint32_t cvta_shared(const void* p);
uint32_t mapa(uint32_t shared_address, int rank);
void mbarrier_init(uint32_t bar, uint32_t count);
void fence_mbarrier_init();
void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes);
bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity);
void st_async_b32(uint32_t remote_address, uint32_t bits, uint32_t remote_bar);

enum MmaKind { kMmaF16, kMmaBF16, kMmaTF32 };
void mma(MmaKind kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
void ldmatrix(int matrices, uint32_t* out, const void* row_address);
void cp_async16(void* shared, const void* global);
void cp_async_commit();
void cp_async_wait(int pending);
}  // namespace nvw::emu

namespace nvwavenet::gpu::ptx {

inline void prefetch_global_l1(const void*) {}

inline uint64_t ld_acquire_gpu(const uint64_t* p) { return ::nvw::emu::poll64(p, "ld.acquire.gpu"); }
inline void st_release_gpu(uint64_t* p, uint64_t v) { ::nvw::emu::store64(p, v, "st.release.gpu"); }
inline uint64_t ld_acquire_cluster(const uint64_t* p) { return ::nvw::emu::poll64(p, "ld.acquire.cluster"); }
inline void red_release_cluster_add(uint64_t* p, uint64_t v) { ::nvw::emu::add64(p, v, "red.release.cluster.add"); }
inline int32_t ld_relaxed_gpu(const int32_t* p) { return ::nvw::emu::poll32(p, "ld.relaxed.gpu"); }
inline uint64_t globaltimer() { return ::nvw::emu::globaltimer(); }

inline void bar_sync(int id, int threads) { ::nvw::emu::barrier(id, threads, true, true, "bar.sync"); }
inline void bar_arrive(int id, int threads) { ::nvw::emu::barrier(id, threads, false, true, "bar.arrive"); }
inline bool bar_red_and(int id, int threads, bool ok) {
  return ::nvw::emu::barrier(id, threads, true, ok, "bar.red.and");
}

inline uint32_t shared_address(const void* p) { return ::nvw::emu::cvta_shared(p); }
inline uint32_t mapa(const void* local_address, int rank) {
  return ::nvw::emu::mapa(::nvw::emu::cvta_shared(local_address), rank);
}
inline void mbarrier_init(uint64_t* bar, uint32_t count) {
  ::nvw::emu::mbarrier_init(::nvw::emu::cvta_shared(bar), count);
}
inline void fence_mbarrier_init_cluster() { ::nvw::emu::fence_mbarrier_init(); }
inline void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  ::nvw::emu::mbarrier_arrive_expect_tx(::nvw::emu::cvta_shared(bar), bytes);
}
inline bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
  return ::nvw::emu::mbarrier_try_wait_parity(::nvw::emu::cvta_shared(bar), parity);
}
inline void st_async_f32(uint32_t remote_address, float value, uint32_t remote_bar) {
  ::nvw::emu::st_async_b32(remote_address, __float_as_uint(value), remote_bar);
}

inline void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::nvw::emu::mma(::nvw::emu::kMmaF16, d, a, b);
}
inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::nvw::emu::mma(::nvw::emu::kMmaBF16, d, a, b);
}
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::nvw::emu::mma(::nvw::emu::kMmaTF32, d, a, b);
}
// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero; the low 13 bits become zero.
inline uint32_t cvt_rna_tf32(float x) {
  const uint32_t bits = __float_as_uint(x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;  // inf, NaN unchanged
  return (bits + 0x1000u) & 0xffffe000u;
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ::nvw::emu::ldmatrix(4, r, p); }
inline void ldmatrix_x2(uint32_t (&r)[2], const void* p) { ::nvw::emu::ldmatrix(2, r, p); }
inline void cp_async_cg16(void* shared, const void* global) { ::nvw::emu::cp_async16(shared, global); }
inline void cp_async_commit_group() { ::nvw::emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait_group() {
  ::nvw::emu::cp_async_wait(N);
}

}  // namespace nvwavenet::gpu::ptx
