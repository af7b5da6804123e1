// The CPU engine's inner loops, one table per instruction set.
//
// The engine (engine.cpp) is written once and calls these through a table chosen at run time:
// kernels_generic.cpp builds them for any x86-64 (or any CPU at all), kernels_avx2.cpp for
// AVX2 + FMA. Both instantiate the same templates (kernels_impl.h); only the 8-wide vector type
// underneath differs. kernels_avx512.cpp swaps in 16-wide matrix products for AVX-512.
#pragma once

#include <cstdint>

#include "nvwavenet.h"

namespace nvwavenet::cpu {

struct Kernels {
  const char* name;  // as reported by build_info()["cpu_isa"]

  // For blocks b in [b0, b1) of a blocked matrix W with K columns (packing.h), and streams n < N:
  //   Y[n * ldy + 8 * (b - b0) + j] += sum over k < K of W[(b * K + k) * 8 + j] * X[n * ldx + k]
  // with the products added in order of k, whatever the tile shape, so a row's result does not
  // depend on how rows and streams are grouped. One variant per weight precision, indexed by
  // DType (float16 and bfloat16 weights are widened to float32 in registers).
  using Gemm = void (*)(const void* W, int64_t K, int64_t b0, int64_t b1, const float* X, int64_t ldx, int64_t N,
                        float* Y, int64_t ldy);
  Gemm gemm[3];

  // The conditioning of 8 rows for 16 steps, the common case of the engine's staging: row j's
  // steps are contiguous at src + j * row_stride (elements of the DType), and
  //   dst[s * dst_step + j] = bias[j] + float(row j, step s)  for s < 16, j < 8.
  // One variant per conditioning precision, indexed by DType.
  using Stage = void (*)(const void* src, int64_t row_stride, const float* bias, float* dst, int64_t dst_step);
  Stage stage[3];

  // The gated activation over pre-activations in gate order (packing.h):
  //   h[8c + j] = tanh(a[16c + j]) * sigmoid(a[16c + 8 + j])  for c < chunks, j < 8.
  void (*gate)(const float* a, int64_t chunks, float* h);

  // x[i] = tanh(x[i]) for i < n, n a multiple of 8.
  void (*tanh)(float* x, int64_t n);

  // e[i] = exp(x[i] - shift) for i < n; returns their sum.
  float (*exp_sum)(const float* x, int64_t n, float shift, float* e);
};

const Kernels& generic_kernels();

// nullptr where this CPU lacks AVX2, FMA or F16C (every AVX2 CPU has the last), or the variant
// was not compiled (a non-x86 build).
const Kernels* avx2_kernels();

// The AVX2 table with AVX-512 matrix products; nullptr where the CPU lacks AVX-512F (or AVX2),
// or the variant was not compiled.
const Kernels* avx512_kernels();

}  // namespace nvwavenet::cpu
