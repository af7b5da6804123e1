// The AVX2 + FMA kernels (and F16C for float16 weights). Only the functions below, and the
// templates they instantiate, are compiled for these extensions, through the target attribute;
// the module as a whole stays baseline x86-64, and engine.cpp calls these only after checking the
// CPU at run time.
#include "cpu/kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#define NVWAVENET_KERNEL __attribute__((target("avx2,fma,f16c")))
#include "cpu/kernels_impl.h"

namespace nvwavenet::cpu {
namespace {

struct Avx2 {
  using V = __m256;
  NVWAVENET_KERNEL static V zero() { return _mm256_setzero_ps(); }
  NVWAVENET_KERNEL static V set1(float f) { return _mm256_set1_ps(f); }
  NVWAVENET_KERNEL static V load(const float* p) { return _mm256_loadu_ps(p); }
  NVWAVENET_KERNEL static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  NVWAVENET_KERNEL static V widen(const float* p) { return _mm256_loadu_ps(p); }
  NVWAVENET_KERNEL static V widen(const Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  NVWAVENET_KERNEL static V widen(const BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  NVWAVENET_KERNEL static V add(V a, V b) { return _mm256_add_ps(a, b); }
  NVWAVENET_KERNEL static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  NVWAVENET_KERNEL static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  NVWAVENET_KERNEL static V div(V a, V b) { return _mm256_div_ps(a, b); }
  NVWAVENET_KERNEL static V min(V a, V b) { return _mm256_min_ps(a, b); }
  NVWAVENET_KERNEL static V max(V a, V b) { return _mm256_max_ps(a, b); }
  NVWAVENET_KERNEL static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  NVWAVENET_KERNEL static V floor(V a) { return _mm256_floor_ps(a); }
  NVWAVENET_KERNEL static void transpose(V r[8]) {
    V t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  NVWAVENET_KERNEL static V pow2(V n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  }
};

}  // namespace

const Kernels* avx2_kernels() {
  static const Kernels kernels = make_kernels<Avx2>("avx2+fma");
  static const bool supported =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return supported ? &kernels : nullptr;
}

}  // namespace nvwavenet::cpu

#else

namespace nvwavenet::cpu {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace nvwavenet::cpu

#endif
