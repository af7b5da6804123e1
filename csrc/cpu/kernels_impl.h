// The kernel templates behind the Kernels table (kernels.h), written once over an 8-wide float
// vector policy `I`:
//
//   using V = ...;                        8 floats
//   zero(), set1(f), load(p), store(p, v) (unaligned)
//   widen(p): 8 weights as floats, from float, Half or BFloat16 p
//   add, sub, mul, div, min, max, fmadd(a, b, c) = a * b + c
//   floor(v), pow2(n) = 2^n for integral n in [-126, 127]
//   transpose(r): r[8] as an 8 x 8 matrix, in place
//
// Each kernels_<isa>.cpp defines its policy and NVWAVENET_KERNEL (the function attributes that
// compile a function for its instruction set), then includes this file. Everything here has
// internal linkage, so the AVX2 instantiations can never be picked by the linker for the generic
// path (the usual hazard of compiling one file with wider instruction-set flags).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"

#ifndef NVWAVENET_KERNEL
#error "define NVWAVENET_KERNEL before including cpu/kernels_impl.h"
#endif

namespace nvwavenet::cpu {
namespace {

// Weight elements stored in 16 bits (packing.h), told apart by type.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// One register tile: RB blocks of 8 rows times NB streams, RB * NB accumulators kept in
// registers across the whole k loop. Each step loads RB weight vectors once and uses each NB
// times, so the weights, which dominate the bytes, are read once per tile.
template <class I, class WT, int RB, int NB>
NVWAVENET_KERNEL void tile(const WT* W, int64_t K, const float* X, int64_t ldx, float* Y, int64_t ldy) {
  using V = typename I::V;
  const int64_t block_stride = K * 8;
  V acc[NB][RB];
  for (int n = 0; n < NB; ++n) {
    for (int r = 0; r < RB; ++r) acc[n][r] = I::load(Y + n * ldy + r * 8);
  }
  const WT* w = W;
  for (int64_t k = 0; k < K; ++k, w += 8) {
    V x[NB];
    for (int n = 0; n < NB; ++n) x[n] = I::set1(X[n * ldx + k]);
    // One weight vector live at a time: 16-bit weights widened all at once spilled an
    // accumulator to the stack (8 blocks x 1 stream), which cost bfloat16 half its speed.
    for (int r = 0; r < RB; ++r) {
      const V wr = I::widen(w + r * block_stride);
      for (int n = 0; n < NB; ++n) acc[n][r] = I::fmadd(wr, x[n], acc[n][r]);
    }
  }
  for (int n = 0; n < NB; ++n) {
    for (int r = 0; r < RB; ++r) I::store(Y + n * ldy + r * 8, acc[n][r]);
  }
}

template <class WT>
using TileFn = void (*)(const WT*, int64_t, const float*, int64_t, float*, int64_t);

// Tile shapes: a single stream takes up to 8 blocks (8 independent multiply-add chains hide
// the FMA latency, 64 rows per pass over the input vector); several streams take up to 4 blocks
// times 3 streams: 12 accumulators, about all that the 16 vector registers of AVX2 hold next to
// the weights. (Measured at batch 16 on Zen 5: 4 x 3 beat 4 x 2, 3 x 4 and 2 x 6 by 5-20%.)
constexpr int kMaxBlocksOneStream = 8;
constexpr int kMaxBlocks = 4;
constexpr int kMaxStreams = 3;

// The tile of rb blocks (1 .. MaxRB) by NB streams.
template <class I, class WT, int NB, int MaxRB, int RB = 1>
constexpr TileFn<WT> tile_for(int rb) {
  if constexpr (RB == MaxRB) {
    return &tile<I, WT, RB, NB>;
  } else {
    return rb == RB ? &tile<I, WT, RB, NB> : tile_for<I, WT, NB, MaxRB, RB + 1>(rb);
  }
}

// The tile of rb blocks (1 .. kMaxBlocks) by nb streams (1 .. kMaxStreams).
template <class I, class WT, int NB = 1>
constexpr TileFn<WT> tile_for_streams(int rb, int nb) {
  if constexpr (NB == kMaxStreams) {
    return tile_for<I, WT, NB, kMaxBlocks>(rb);
  } else {
    return nb == NB ? tile_for<I, WT, NB, kMaxBlocks>(rb) : tile_for_streams<I, WT, NB + 1>(rb, nb);
  }
}

template <class I, class WT>
NVWAVENET_KERNEL void gemm(const void* W, int64_t K, int64_t b0, int64_t b1, const float* X, int64_t ldx, int64_t N,
                           float* Y, int64_t ldy) {
  const int max_blocks = N == 1 ? kMaxBlocksOneStream : kMaxBlocks;
  for (int64_t b = b0; b < b1;) {
    const int rb = int(std::min<int64_t>(b1 - b, max_blocks));
    const WT* Wb = static_cast<const WT*>(W) + b * K * 8;
    float* Yb = Y + (b - b0) * 8;
    if (N == 1) {
      tile_for<I, WT, 1, kMaxBlocksOneStream>(rb)(Wb, K, X, ldx, Yb, ldy);
    } else {
      for (int64_t n = 0; n < N; n += kMaxStreams) {
        const int nb = int(std::min<int64_t>(N - n, kMaxStreams));
        tile_for_streams<I, WT>(rb, nb)(Wb, K, X + n * ldx, ldx, Yb + n * ldy, ldy);
      }
    }
    b += rb;
  }
}

// Kernels::Stage: two 8 x 8 transposes, so that the conditioning is read a cache line (16 float32
// steps) at a time and the stage written a whole vector at a time.
template <class I, class CT>
NVWAVENET_KERNEL void stage(const void* src, int64_t row_stride, const float* bias, float* dst, int64_t dst_step) {
  using V = typename I::V;
  const CT* rows = static_cast<const CT*>(src);
  const V b = I::load(bias);
  for (int half = 0; half < 2; ++half) {
    V r[8];
    for (int j = 0; j < 8; ++j) r[j] = I::widen(rows + j * row_stride + 8 * half);
    I::transpose(r);
    for (int s = 0; s < 8; ++s) I::store(dst + (8 * half + s) * dst_step, I::add(b, r[s]));
  }
}

// exp(x) to about 1 ulp, Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial
// for exp(r), and 2^n built in the exponent bits. Inputs are clamped to where the result is a
// normal float, so tanh and sigmoid built on it saturate cleanly instead of producing inf / NaN.
template <class I>
NVWAVENET_KERNEL typename I::V exp(typename I::V x) {
  using V = typename I::V;
  x = I::min(I::max(x, I::set1(-87.3365478515625f)), I::set1(88.3762626647949f));
  const V n = I::floor(I::fmadd(x, I::set1(1.44269504088896341f), I::set1(0.5f)));
  x = I::sub(x, I::mul(n, I::set1(0.693359375f)));
  x = I::sub(x, I::mul(n, I::set1(-2.12194440e-4f)));
  V y = I::set1(1.9875691500e-4f);
  y = I::fmadd(y, x, I::set1(1.3981999507e-3f));
  y = I::fmadd(y, x, I::set1(8.3334519073e-3f));
  y = I::fmadd(y, x, I::set1(4.1665795894e-2f));
  y = I::fmadd(y, x, I::set1(1.6666665459e-1f));
  y = I::fmadd(y, x, I::set1(5.0000001201e-1f));
  y = I::fmadd(y, I::mul(x, x), I::add(x, I::set1(1.0f)));
  return I::mul(y, I::pow2(n));
}

// tanh(x) = 1 - 2 / (1 + exp(2x)): the absolute error stays near float epsilon everywhere,
// which is what the products downstream see.
template <class I>
NVWAVENET_KERNEL typename I::V tanh(typename I::V x) {
  const typename I::V one = I::set1(1.0f);
  return I::sub(one, I::div(I::set1(2.0f), I::add(one, exp<I>(I::add(x, x)))));
}

template <class I>
NVWAVENET_KERNEL typename I::V sigmoid(typename I::V x) {
  const typename I::V one = I::set1(1.0f);
  return I::div(one, I::add(one, exp<I>(I::sub(I::zero(), x))));
}

template <class I>
NVWAVENET_KERNEL void gate(const float* a, int64_t chunks, float* h) {
  for (int64_t c = 0; c < chunks; ++c) {
    I::store(h + 8 * c, I::mul(tanh<I>(I::load(a + 16 * c)), sigmoid<I>(I::load(a + 16 * c + 8))));
  }
}

template <class I>
NVWAVENET_KERNEL void tanh_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) I::store(x + i, tanh<I>(I::load(x + i)));
}

template <class I>
NVWAVENET_KERNEL float exp_sum(const float* x, int64_t n, float shift, float* e) {
  using V = typename I::V;
  const V offset = I::set1(shift);
  V sum = I::zero();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const V v = exp<I>(I::sub(I::load(x + i), offset));
    I::store(e + i, v);
    sum = I::add(sum, v);
  }
  float lanes[8];
  I::store(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  if (i < n) {  // the tail, through a padded copy: shift - shift = 0 in the unused lanes
    float tail[8];
    std::fill(tail, tail + 8, shift);
    std::copy(x + i, x + n, tail);
    I::store(tail, exp<I>(I::sub(I::load(tail), offset)));
    for (int64_t j = 0; i + j < n; ++j) {
      e[i + j] = tail[j];
      total += tail[j];
    }
  }
  return total;
}

template <class I>
Kernels make_kernels(const char* name) {
  // In DType order: Float32, Float16, BFloat16.
  return Kernels{name,
                 {&gemm<I, float>, &gemm<I, Half>, &gemm<I, BFloat16>},
                 {&stage<I, float>, &stage<I, Half>, &stage<I, BFloat16>},
                 &gate<I>,
                 &tanh_inplace<I>,
                 &exp_sum<I>};
}

}  // namespace
}  // namespace nvwavenet::cpu
