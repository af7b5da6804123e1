// The CPU side of conditioning.h, on the engine's thread pool. The upsampling goes through the
// engine's matrix kernel (Kernels::gemm: 8 output rows per vector, each row's products added in
// order of its inputs whatever the tile shape); the projection, nine tenths of the work, through
// its own kernel below, vectorised over the samples of a hop so that it writes the output's
// time-contiguous rows directly. Threads split the (stream, frame) items and, when there are
// fewer items than threads, the output rows of each item; never the inputs of one output.
//
// Every output is bias, then one fused multiply-add per input in input order (a single rounding
// each, whether a vector lane or __builtin_fmaf computes it), so the instruction set and the tile
// that compute it do not change it.
#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NVWAVENET_CONDITIONING_AVX512 1
#endif
#include <stdexcept>
#include <string>
#include <vector>

#include "conditioning.h"
#include "cpu/engine.h"
#include "cpu/kernels.h"
#include "cpu/threads.h"

namespace nvwavenet::cpu {
namespace {

constexpr int64_t kBlock = 8;
// Output rows of the projection per tile: 4 rows x 4 vectors of samples, 16 accumulators.
constexpr int64_t kTileRows = 4;

int64_t padded(int64_t rows) { return (rows + kBlock - 1) / kBlock * kBlock; }

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// The instruction set "auto" picks for the engine (engine.cpp): every one of them adds each
// row's products in the same order, so they give the same conditioning on this CPU.
const Kernels& kernels() {
  static const Kernels& chosen = avx512_kernels() != nullptr ? *avx512_kernels()
                                 : avx2_kernels() != nullptr ? *avx2_kernels()
                                                             : generic_kernels();
  return chosen;
}

struct Item {
  int64_t stream, frame;
};

// out[i * ldo + r] = bias[i] + sum over d < C, in order, of w[i * C + d] * x[d * H + r], for rows
// i < rows and samples r < H: the portable kernel, and every instruction set's edge.
void project_scalar(const float* w, const float* bias, int64_t rows, int64_t C, const float* x, int64_t H,
                    int64_t r0, int64_t r1, float* out, int64_t ldo) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t r = r0; r < r1; ++r) {
      float acc = bias[i];
      for (int64_t d = 0; d < C; ++d) acc = __builtin_fmaf(w[i * C + d], x[d * H + r], acc);
      out[i * ldo + r] = acc;
    }
  }
}

#ifdef NVWAVENET_CONDITIONING_AVX512
#define NVWAVENET_AVX512 __attribute__((target("avx512f")))

// project_scalar's sums for kTileRows rows and V vectors of 16 samples from r0 (masked past H).
// Written out by hand: with loops over arrays of accumulators GCC kept them on the stack. V < 4
// for a hop's last slab, so that no vector past H runs its multiply-adds on nothing (a 300-sample
// hop's last slab is 44 samples: three vectors, not four).
template <int V>
NVWAVENET_AVX512 void project_tile(const float* w, const float* bias, int64_t C, const float* x, int64_t H,
                                   int64_t r0, float* out, int64_t ldo) {
  static_assert(kTileRows == 4 && V >= 1 && V <= 4, "the tile below is written for 4 rows and 1 to 4 vectors");
  auto mask_at = [&](int64_t v) { return __mmask16((1u << std::clamp<int64_t>(H - r0 - 16 * v, 0, 16)) - 1u); };
  const __mmask16 m0 = mask_at(0), m1 = mask_at(1), m2 = mask_at(2), m3 = mask_at(3);
  __m512 a00 = _mm512_set1_ps(bias[0]), a01 = a00, a02 = a00, a03 = a00;
  __m512 a10 = _mm512_set1_ps(bias[1]), a11 = a10, a12 = a10, a13 = a10;
  __m512 a20 = _mm512_set1_ps(bias[2]), a21 = a20, a22 = a20, a23 = a20;
  __m512 a30 = _mm512_set1_ps(bias[3]), a31 = a30, a32 = a30, a33 = a30;
  const __m512 zero = _mm512_setzero_ps();
  const float* xr = x + r0;
  for (int64_t d = 0; d < C; ++d, xr += H) {
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, xr);
    const __m512 x1 = V > 1 ? _mm512_maskz_loadu_ps(m1, xr + 16) : zero;
    const __m512 x2 = V > 2 ? _mm512_maskz_loadu_ps(m2, xr + 32) : zero;
    const __m512 x3 = V > 3 ? _mm512_maskz_loadu_ps(m3, xr + 48) : zero;
    __m512 wi = _mm512_set1_ps(w[d]);
    a00 = _mm512_fmadd_ps(wi, x0, a00);
    if constexpr (V > 1) a01 = _mm512_fmadd_ps(wi, x1, a01);
    if constexpr (V > 2) a02 = _mm512_fmadd_ps(wi, x2, a02);
    if constexpr (V > 3) a03 = _mm512_fmadd_ps(wi, x3, a03);
    wi = _mm512_set1_ps(w[C + d]);
    a10 = _mm512_fmadd_ps(wi, x0, a10);
    if constexpr (V > 1) a11 = _mm512_fmadd_ps(wi, x1, a11);
    if constexpr (V > 2) a12 = _mm512_fmadd_ps(wi, x2, a12);
    if constexpr (V > 3) a13 = _mm512_fmadd_ps(wi, x3, a13);
    wi = _mm512_set1_ps(w[2 * C + d]);
    a20 = _mm512_fmadd_ps(wi, x0, a20);
    if constexpr (V > 1) a21 = _mm512_fmadd_ps(wi, x1, a21);
    if constexpr (V > 2) a22 = _mm512_fmadd_ps(wi, x2, a22);
    if constexpr (V > 3) a23 = _mm512_fmadd_ps(wi, x3, a23);
    wi = _mm512_set1_ps(w[3 * C + d]);
    a30 = _mm512_fmadd_ps(wi, x0, a30);
    if constexpr (V > 1) a31 = _mm512_fmadd_ps(wi, x1, a31);
    if constexpr (V > 2) a32 = _mm512_fmadd_ps(wi, x2, a32);
    if constexpr (V > 3) a33 = _mm512_fmadd_ps(wi, x3, a33);
  }
  const __m512 rows[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
  const __mmask16 masks[4] = {m0, m1, m2, m3};
  for (int i = 0; i < 4; ++i) {
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(out + i * ldo + r0 + 16 * v, masks[v], rows[i][v]);
  }
}

// Tiles sweep every row for one 64-sample slab before the next, so the slab of x (C x 64 floats)
// stays in L1 while the weights stream from L2.
NVWAVENET_AVX512 void project_avx512(const float* w, const float* bias, int64_t rows, int64_t C, const float* x,
                                     int64_t H, float* out, int64_t ldo) {
  const int64_t whole = rows / kTileRows * kTileRows;
  for (int64_t r0 = 0; r0 < H; r0 += 64) {
    const int64_t vectors = std::min<int64_t>((H - r0 + 15) / 16, 4);
    for (int64_t i = 0; i < whole; i += kTileRows) {
      const float *wi = w + i * C, *bi = bias + i;
      float* oi = out + i * ldo;
      switch (vectors) {
        case 4: project_tile<4>(wi, bi, C, x, H, r0, oi, ldo); break;
        case 3: project_tile<3>(wi, bi, C, x, H, r0, oi, ldo); break;
        case 2: project_tile<2>(wi, bi, C, x, H, r0, oi, ldo); break;
        default: project_tile<1>(wi, bi, C, x, H, r0, oi, ldo); break;
      }
    }
  }
  project_scalar(w + whole * C, bias + whole, rows - whole, C, x, H, 0, H, out + whole * ldo, ldo);
}
#endif

using Project = void (*)(const float*, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t);

void project_portable(const float* w, const float* bias, int64_t rows, int64_t C, const float* x, int64_t H,
                      float* out, int64_t ldo) {
  project_scalar(w, bias, rows, C, x, H, 0, H, out, ldo);
}

Project projection() {
#ifdef NVWAVENET_CONDITIONING_AVX512
  if (__builtin_cpu_supports("avx512f")) return &project_avx512;
#endif
  return &project_portable;
}

}  // namespace

void condition_cpu(const CondParams& p) {
  require(p.batch >= 0 && p.max_frames >= 0, "conditioning: negative batch or frame count");
  require(p.channels > 0 && p.hop > 0 && p.rows > 0 && p.context >= 0, "conditioning: sizes must be positive");
  std::vector<Item> items;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t count = p.counts != nullptr ? p.counts[b] : p.max_frames;
    require(count >= 0 && count <= p.max_frames, "counts: expected values in [0, " + std::to_string(p.max_frames) +
                                                     "], got " + std::to_string(count));
    for (int64_t q = 0; q < count; ++q) items.push_back({b, q});
  }
  if (items.empty()) return;
  require(p.frames != nullptr && p.up_w != nullptr && p.up_b != nullptr && p.proj_w != nullptr &&
              p.proj_b != nullptr && p.out != nullptr,
          "conditioning: a pointer is missing");
  const Kernels& k = kernels();
  const int64_t n_items = int64_t(items.size());
  const int64_t C = p.channels, H = p.hop, taps = p.context + 1, K_up = C * taps;
  const int64_t up_rows = padded(C * H);
  const int threads =
      int(std::max<int64_t>(1, p.num_threads > 0 ? p.num_threads : std::min<int64_t>(default_threads(), 1 << 10)));

  // Buffers kept by the calling thread from call to call: fresh ones of this size (megabytes)
  // cost a page fault per page on every call. Reached through pointers: in the pool's threads
  // the names would be those threads' own.
  thread_local std::vector<float> kept_inputs, kept_hops;
  kept_inputs.resize(std::max(kept_inputs.size(), size_t(n_items * K_up)));
  kept_hops.resize(std::max(kept_hops.size(), size_t(n_items * up_rows)));
  float* const inputs = kept_inputs.data();
  float* const hops = kept_hops.data();
  // Upsampling: one product per item over its window, into `hops` [item][d * H + r]; each
  // thread's items in one call, so the upsampling matrix is read once.
  const int up_threads = int(std::min<int64_t>(threads, n_items));
  ThreadPool::instance().run(up_threads, [&](int t) {
    const int64_t i0 = n_items * t / up_threads, i1 = n_items * (t + 1) / up_threads;
    for (int64_t i = i0; i < i1; ++i) {
      const Item item = items[size_t(i)];
      const float* window = p.frames + item.stream * p.frames_stride_batch;
      float* x = inputs + i * K_up;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t j = 0; j < taps; ++j) {
          x[c * taps + j] = window[c * p.frames_stride_channel + (item.frame + p.context - j) * p.frames_stride_time];
        }
      }
      std::copy(p.up_b, p.up_b + up_rows, hops + i * up_rows);
    }
    if (i1 > i0) {
      k.gemm[0](p.up_w, K_up, 0, up_rows / kBlock, inputs + i0 * K_up, K_up, i1 - i0,
                hops + i0 * up_rows, up_rows);
    }
  });

  // The projection, straight into the output. Units are (item, part of the rows), parts only as
  // many as it takes to give every thread work.
  const Project project = projection();
  const int64_t parts = std::min<int64_t>((p.rows + kTileRows - 1) / kTileRows, (threads + n_items - 1) / n_items);
  const int64_t units = n_items * parts;
  const int proj_threads = int(std::min<int64_t>(threads, units));
  ThreadPool::instance().run(proj_threads, [&](int t) {
    for (int64_t u = units * t / proj_threads; u < units * (t + 1) / proj_threads; ++u) {
      const int64_t i = u / parts, part = u % parts;
      const Item item = items[size_t(i)];
      // Part boundaries on whole tiles: only the last rows take the scalar kernel.
      const int64_t tiles = (p.rows + kTileRows - 1) / kTileRows;
      const int64_t o0 = tiles * part / parts * kTileRows, o1 = std::min(p.rows, tiles * (part + 1) / parts * kTileRows);
      project(p.proj_w + o0 * C, p.proj_b + o0, o1 - o0, C, hops + i * up_rows, H,
              p.out + item.stream * p.out_stride_batch + o0 * p.out_stride_row + item.frame * H, p.out_stride_row);
    }
  });
}

}  // namespace nvwavenet::cpu
