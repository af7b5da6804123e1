// The AVX-512 matrix products. Everything but the products (gate, tanh, softmax sums) is a small
// share of a step and comes from the AVX2 table.
//
// The packed matrices keep their 8-row blocks (packing.h), so weights packed once serve every
// instruction set. One 16-float register holds two neighbouring blocks at the same k (lanes 0-7
// block b, lanes 8-15 block b + 1, each loaded from its own stream): every row still adds its
// products in order of k, so the results equal the AVX2 kernel's bit for bit (kernels.h), and
// twice the rows go through each multiply-add instruction. That pays where the products are
// bound by arithmetic: several streams at once.
#include "cpu/kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <algorithm>
#include <iterator>
#include <type_traits>

#define NVWAVENET_KERNEL __attribute__((target("avx512f,avx2,fma,f16c")))
#include "cpu/kernels_impl.h"

namespace nvwavenet::cpu {
namespace {

// Blocks b and b + 1 at the same k: `p` points at block b's 8 weights, `stride` elements on.
NVWAVENET_KERNEL __m512 widen_pair(const float* p, int64_t stride) {
  const __m512d low = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(p)));
  return _mm512_castpd_ps(_mm512_insertf64x4(low, _mm256_castps_pd(_mm256_loadu_ps(p + stride)), 1));
}

NVWAVENET_KERNEL __m256i load_pair_16bit(const void* p, const void* q) {
  const __m256i low = _mm256_castsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  return _mm256_inserti128_si256(low, _mm_loadu_si128(static_cast<const __m128i*>(q)), 1);
}

NVWAVENET_KERNEL __m512 widen_pair(const Half* p, int64_t stride) {
  return _mm512_cvtph_ps(load_pair_16bit(p, p + stride));
}

NVWAVENET_KERNEL __m512 widen_pair(const BFloat16* p, int64_t stride) {
  const __m512i wide = _mm512_cvtepu16_epi32(load_pair_16bit(p, p + stride));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// RP pairs of blocks (16 rows each) times NB streams, the accumulators in registers across the
// whole k loop, as in kernels_impl.h's tile.
template <class WT, int RP, int NB>
NVWAVENET_KERNEL void pair_tile(const WT* W, int64_t K, const float* X, int64_t ldx, float* Y, int64_t ldy) {
  const int64_t block_stride = K * 8;
  __m512 acc[NB][RP];
  for (int n = 0; n < NB; ++n) {
    for (int r = 0; r < RP; ++r) acc[n][r] = _mm512_loadu_ps(Y + n * ldy + r * 16);
  }
  const WT* w = W;
  for (int64_t k = 0; k < K; ++k, w += 8) {
    __m512 x[NB];
    for (int n = 0; n < NB; ++n) x[n] = _mm512_set1_ps(X[n * ldx + k]);
    for (int r = 0; r < RP; ++r) {
      const __m512 wr = widen_pair(w + 2 * r * block_stride, block_stride);
      for (int n = 0; n < NB; ++n) acc[n][r] = _mm512_fmadd_ps(wr, x[n], acc[n][r]);
    }
  }
  for (int n = 0; n < NB; ++n) {
    for (int r = 0; r < RP; ++r) _mm512_storeu_ps(Y + n * ldy + r * 16, acc[n][r]);
  }
}

// Tile shapes: up to 4 pairs of blocks times 4 streams, 16 of the 32 registers as accumulators.
// (Measured on Zen 5 at R64 L=20, batch 4 and 16: 4 x 6 no faster, 3 x 6 within the noise,
// 2 x 8 20-40% slower.)
constexpr int kMaxPairs = 4;
constexpr int kMaxPairStreams = 4;

template <class WT, int NB, int MaxRP, int RP = 1>
constexpr TileFn<WT> pair_tile_for(int rp) {
  if constexpr (RP == MaxRP) {
    return &pair_tile<WT, RP, NB>;
  } else {
    return rp == RP ? &pair_tile<WT, RP, NB> : pair_tile_for<WT, NB, MaxRP, RP + 1>(rp);
  }
}

template <class WT, int NB = 1>
constexpr TileFn<WT> pair_tile_for_streams(int rp, int nb) {
  if constexpr (NB == kMaxPairStreams) {
    return pair_tile_for<WT, NB, kMaxPairs>(rp);
  } else {
    return nb == NB ? pair_tile_for<WT, NB, kMaxPairs>(rp) : pair_tile_for_streams<WT, NB + 1>(rp, nb);
  }
}

template <class WT>
constexpr int dtype_index() {
  if constexpr (std::is_same_v<WT, float>) return int(DType::Float32);
  if constexpr (std::is_same_v<WT, Half>) return int(DType::Float16);
  return int(DType::BFloat16);
}

// The AVX2 products, indexed by DType; filled once, with the AVX-512 table, before any product
// runs, so the products below need no lookup per call.
Kernels::Gemm avx2_gemm[3];

// Kernels::Gemm: pairs of blocks here, an odd last block through the AVX2 kernel (which adds in
// the same order, so where the boundary falls changes nothing). A single stream goes to the AVX2
// kernel whole: it is bound by memory bandwidth, and the AVX2 tile's 8 weight streams measured
// 10-15% faster than 8 or 16 here (R64 L=20, float32 and float16 weights).
template <class WT>
NVWAVENET_KERNEL void pair_gemm(const void* W, int64_t K, int64_t b0, int64_t b1, const float* X, int64_t ldx,
                                int64_t N, float* Y, int64_t ldy) {
  const Kernels::Gemm avx2 = avx2_gemm[dtype_index<WT>()];
  if (N == 1) return avx2(W, K, b0, b1, X, ldx, N, Y, ldy);
  int64_t b = b0;
  for (; b + 2 <= b1;) {
    const int rp = int(std::min<int64_t>((b1 - b) / 2, kMaxPairs));
    const WT* Wb = static_cast<const WT*>(W) + b * K * 8;
    float* Yb = Y + (b - b0) * 8;
    for (int64_t n = 0; n < N; n += kMaxPairStreams) {
      const int nb = int(std::min<int64_t>(N - n, kMaxPairStreams));
      pair_tile_for_streams<WT>(rp, nb)(Wb, K, X + n * ldx, ldx, Yb + n * ldy, ldy);
    }
    b += 2 * rp;
  }
  if (b < b1) avx2(W, K, b, b1, X, ldx, N, Y + (b - b0) * 8, ldy);
}

}  // namespace

const Kernels* avx512_kernels() {
  // AVX-512F implies AVX2, FMA and F16C on every CPU that has it; the AVX2 table is checked anyway.
  static const bool supported = __builtin_cpu_supports("avx512f") && avx2_kernels() != nullptr;
  if (!supported) return nullptr;
  static const Kernels kernels = [] {
    Kernels table = *avx2_kernels();
    std::copy(std::begin(table.gemm), std::end(table.gemm), avx2_gemm);
    table.name = "avx512";
    table.gemm[int(DType::Float32)] = &pair_gemm<float>;
    table.gemm[int(DType::Float16)] = &pair_gemm<Half>;
    table.gemm[int(DType::BFloat16)] = &pair_gemm<BFloat16>;
    return table;
  }();
  return &kernels;
}

}  // namespace nvwavenet::cpu

#else

namespace nvwavenet::cpu {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace nvwavenet::cpu

#endif
