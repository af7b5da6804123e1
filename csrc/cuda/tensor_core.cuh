// TENSOR_CORE: one thread block generates a tile of NB streams (NB = 8, 16, 32 or 64, chosen at
// run time) for the whole call, with every product on the tensor cores: mma.sync m16n8k16, the
// weights as the M x K operand, the tile's streams as N, float32 accumulation. Blocks never talk
// to each other, so there is no grid-wide synchronisation and no wait that could time out.
//
// Weights stream through shared memory in slabs: every product of a step (per layer the dilated
// convolution [W_prev | W_cur], the residual and the skip product; then W_out and W_end) is cut
// into slabs of whole 16-row tiles of at most kSlabBytes, and the step is the fixed sequence of
// those slabs. While the block multiplies with slab i, cp.async brings slab i + 1 (next layer's,
// or the next step's first, at the end) into the other buffer, so each weight is read from L2 once
// per block and step and serves NB streams. One barrier per slab; it also orders the activations
// one product writes before the next reads them.
//
// Numerics (modelled in tests/test_tensor_core_model.py, which checks them against SPEC section 4):
// the products read their inputs in the weights' dtype (x_l[t - d] and x_l[t], h, relu(s), z are
// rounded to it when written for the next product); x, the skip sums, the gate, the logits and
// the softmax stay float32, and the queues hold float32 x as in every other variant. float32
// weights and activations go through the 3xTF32 split on mma.m16n8k8 (TensorCoreType<float>),
// not plain TF32, which misses the float32 tolerance.
//
// Per step, per layer l (slabs of one product run back to back):
//   D  a = [W_prev | W_cur] [x_l[t-d]; x_l[t]] + b + cond; the tanh and the sigmoid row of a
//      channel are in the same slab and the same thread, so the gate is the epilogue (h -> smem).
//      At D's first slab, x_l[t] goes to the queue and the next layer's x[t - d] is loaded.
//   U  x += W_res h + b_res (l < L-1; written back as x_{l+1}[t] for D), s += W_skip h + b_skip;
//      the next layer's x[t - d] is stored at U's first slab, after D stopped reading it.
// Head: z = relu(W_out relu(s) + b_out), logits = W_end z + b_end, then each warp samples streams,
// writes the outputs and embeds the fed-back class as the next step's x_0.
//
// What bounds it (design estimates for the H100, not measured: no GPU has run this kernel yet):
// per block and step the weights cross the SM's L2 port once (~1.7 MB in fp16 for R64/S256/A256
// L20, ~15 us at ~110 GB/s per SM), and serve NB streams: at NB = 32 on 132 SMs ~280M samples/s
// by bandwidth. The products (~1.73 MFLOP per sample) at ~25% of mma.sync peak are ~150M/s. The
// ~70 barriers per step and the exposed L2 latency of the slab pipeline (two buffers) decide.
#pragma once

#include "common.cuh"
#include "host.h"
#include "persistent_layout.h"

namespace nvwavenet::gpu {

constexpr int kTcThreads = 512;
constexpr int kTcWarps = kTcThreads / 32;
constexpr int kTcTiles[] = {64, 32, 16, 8};  // streams per block, largest first
// Elements added to every shared row (16 bytes): each 8-lane phase of ldmatrix hits 8 bank groups.
template <class W>
constexpr int kTcPad = 16 / int(sizeof(W));
constexpr int kTcStages = 4;  // slab buffers: copies run up to three slabs ahead of the products

// The thin per-precision layer: rounding to the operand type, and the mma instruction.
template <class W>
struct TensorCoreType;

template <>
struct TensorCoreType<__half> {
  __device__ __forceinline__ static __half from_float(float v) { return __float2half_rn(v); }
  __device__ __forceinline__ static uint2 four(float4 v) {
    const __half2 pairs[2] = {__floats2half2_rn(v.x, v.y), __floats2half2_rn(v.z, v.w)};
    uint2 words;
    memcpy(&words, pairs, sizeof(words));
    return words;
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k16_f16(d, a, b);
  }
};

template <>
struct TensorCoreType<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  __device__ __forceinline__ static uint2 four(float4 v) {
    const __nv_bfloat162 pairs[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
    uint2 words;
    memcpy(&words, pairs, sizeof(words));
    return words;
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ptx::mma_m16n8k16_bf16(d, a, b);
  }
};

// float32 weights: 3xTF32. Each operand x is split into hi = tf32(x) and lo = tf32(x - hi), and
// the product is lo*hi + hi*lo + hi*hi on mma.m16n8k8 (small terms first; lo*lo is below float32
// rounding), which keeps float32 accuracy where one TF32 product would not.
template <>
struct TensorCoreType<float> {
  __device__ __forceinline__ static float from_float(float v) { return v; }
  __device__ __forceinline__ static float4 four(float4 v) { return v; }
  __device__ __forceinline__ static void split(uint32_t x, uint32_t& hi, uint32_t& lo) {
    hi = ptx::cvt_rna_tf32(__uint_as_float(x));
    lo = ptx::cvt_rna_tf32(__uint_as_float(x) - __uint_as_float(hi));
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    uint32_t a_hi[4], a_lo[4], b_hi[2], b_lo[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) split(a[i], a_hi[i], a_lo[i]);
#pragma unroll
    for (int i = 0; i < 2; ++i) split(b[i], b_hi[i], b_lo[i]);
    ptx::mma_m16n8k8_tf32(d, a_lo, b_hi);
    ptx::mma_m16n8k8_tf32(d, a_hi, b_lo);
    ptx::mma_m16n8k8_tf32(d, a_hi, b_hi);
  }
};

// Which element of a 16-row, 32-byte-wide A tile (weights, row-major) lane l points ldmatrix.x4
// at, which element of an 8-row B tile (activations, [stream][k]) it points ldmatrix.x2 at, and
// where accumulator c of lane l lies in the 16 x 8 result. The fragments these give are those of
// mma.m16n8k16.row.col for 16-bit types (tests/test_tensor_core_model.py replays them) and, for
// float32 (4-byte elements, the same bytes), those of mma.m16n8k8.row.col.tf32.
template <class W>
constexpr int kTcKStep = 32 / int(sizeof(W));  // k per mma: 16 (16-bit types) or 8 (tf32)
__device__ __forceinline__ int a_fragment_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
template <class W>
__device__ __forceinline__ int a_fragment_col(int lane) { return (lane >> 4) * (kTcKStep<W> / 2); }
__device__ __forceinline__ int b_fragment_row(int lane) { return lane & 7; }
template <class W>
__device__ __forceinline__ int b_fragment_col(int lane) { return ((lane >> 3) & 1) * (kTcKStep<W> / 2); }
__device__ __forceinline__ int c_fragment_row(int lane, int c) { return (lane >> 2) + (c >> 1) * 8; }
__device__ __forceinline__ int c_fragment_col(int lane, int c) { return 2 * (lane & 3) + (c & 1); }

// Products of a step, in the order they run.
enum TcProduct : int { kTcDilate = 0, kTcResidual = 1, kTcSkip = 2, kTcOut = 3, kTcEnd = 4 };

// The slab cut of every product, all fixed at compile time. A slab holds `rows` consecutive rows
// of a product (dilated convolution: `rows` tanh rows and the same sigmoid rows, 2 x rows in all).
template <int R, int S, int A, class W>
struct TensorCoreSlabs {
  static constexpr int64_t row_bytes(int K) { return int64_t(K + kTcPad<W>) * sizeof(W); }
  static constexpr int64_t larger(int64_t a, int64_t b) { return a > b ? a : b; }
  // At least 16 KB, and one 16-row tile of every product (the dilated convolution's with its
  // sigmoid partner: 32 rows).
  static constexpr int64_t kBytes =
      larger(16384, larger(32 * row_bytes(2 * R), 16 * row_bytes(S > A ? S : A)));

  static constexpr int pow2_floor(int64_t v) {
    int p = 1;
    while (2 * int64_t(p) <= v) p *= 2;
    return p;
  }
  // Rows per slab for a product of M rows and K columns (`paired`: each row brings its partner).
  static constexpr int rows(int M, int K, bool paired) {
    const int fit = pow2_floor(kBytes / (row_bytes(K) * (paired ? 2 : 1)));
    return fit < M ? fit : M;
  }
  static constexpr int kDilateRows = rows(R, 2 * R, true);
  static constexpr int kResidualRows = rows(R, R, false);
  static constexpr int kSkipRows = rows(S, R, false);
  static constexpr int kOutRows = rows(A, S, false);
  static constexpr int kEndRows = rows(A, A, false);
  static_assert(kDilateRows >= 16 && kResidualRows >= 16 && kSkipRows >= 16 && kOutRows >= 16 && kEndRows >= 16,
                "a slab holds at least one 16-row tile");
  static_assert(R % kDilateRows == 0 && R % kResidualRows == 0 && S % kSkipRows == 0 && A % kOutRows == 0 &&
                    A % kEndRows == 0,
                "slabs cut every product evenly");
  __host__ __device__ static constexpr int count(int product) {
    return product == kTcDilate     ? R / kDilateRows
           : product == kTcResidual ? R / kResidualRows
           : product == kTcSkip     ? S / kSkipRows
           : product == kTcOut      ? A / kOutRows
                                    : A / kEndRows;
  }
};

// A position in the step's slab sequence.
struct TcSlab {
  int layer;
  int product;
  int index;
};

template <class Slabs>
__device__ __forceinline__ TcSlab following_slab(TcSlab s, int L) {
  if (s.index + 1 < Slabs::count(s.product)) return {s.layer, s.product, s.index + 1};
  switch (s.product) {
    case kTcDilate:
      return {s.layer, s.layer + 1 < L ? kTcResidual : kTcSkip, 0};
    case kTcResidual:
      return {s.layer, kTcSkip, 0};
    case kTcSkip:
      return s.layer + 1 < L ? TcSlab{s.layer + 1, kTcDilate, 0} : TcSlab{0, kTcOut, 0};
    case kTcOut:
      return {0, kTcEnd, 0};
    default:
      return {0, kTcDilate, 0};  // the next step's first slab
  }
}

// Copies `rows` rows of K elements into shared rows of K + kTcPad<W>; row(r) is the global row.
template <int K, class W, class RowOf>
__device__ __forceinline__ void copy_slab(W* dst, int rows, RowOf row, int tid) {
  constexpr int kChunks = K * int(sizeof(W)) / 16;
  constexpr int kPer = 16 / int(sizeof(W));
  for (int c = tid; c < rows * kChunks; c += kTcThreads) {
    const int r = c / kChunks;
    const int j = c % kChunks;
    ptx::cp_async_cg16(dst + r * (K + kTcPad<W>) + j * kPer, row(r) + j * kPer);
  }
}

// Out of line: inlined at each of its six call sites, its copy loops cost the kernel's main loop
// registers (ptxas spilled ~380 bytes with it inlined, ~110 without).
template <int R, int S, int A, class W>
__device__ __noinline__ void issue_slab(const Params& p, TcSlab s, W* dst, int tid) {
  using Slabs = TensorCoreSlabs<R, S, A, W>;
  switch (s.product) {
    case kTcDilate: {
      constexpr int h = Slabs::kDilateRows;
      const W* base = static_cast<const W*>(p.dilate_w) + int64_t(s.layer) * 4 * R * R;
      copy_slab<2 * R>(dst, 2 * h, [&](int r) {
        return base + int64_t(r < h ? s.index * h + r : R + s.index * h + r - h) * 2 * R;
      }, tid);
      break;
    }
    case kTcResidual: {
      const W* base = static_cast<const W*>(p.res_w) + int64_t(s.layer) * R * R;
      copy_slab<R>(dst, Slabs::kResidualRows,
                   [&](int r) { return base + int64_t(s.index * Slabs::kResidualRows + r) * R; }, tid);
      break;
    }
    case kTcSkip: {
      const W* base = static_cast<const W*>(p.skip_w) + int64_t(s.layer) * S * R;
      copy_slab<R>(dst, Slabs::kSkipRows, [&](int r) { return base + int64_t(s.index * Slabs::kSkipRows + r) * R; },
                   tid);
      break;
    }
    case kTcOut: {
      const W* base = static_cast<const W*>(p.out_w);
      copy_slab<S>(dst, Slabs::kOutRows, [&](int r) { return base + int64_t(s.index * Slabs::kOutRows + r) * S; },
                   tid);
      break;
    }
    default: {
      const W* base = static_cast<const W*>(p.end_w);
      copy_slab<A>(dst, Slabs::kEndRows, [&](int r) { return base + int64_t(s.index * Slabs::kEndRows + r) * A; },
                   tid);
      break;
    }
  }
  ptx::cp_async_commit_group();
}

// One slab's product for the tile: out[m][n] = sum_k slab[m][k] act[n][k] for the slab's `rows`
// rows (NP = 2: and their partners `rows` further down the slab) and the tile's nb streams.
// Work unit: one 16-row tile (with its partner) x one 8-stream tile; warps take units in turn.
// early(m, n, v[NP]) runs before the unit's k loop (global loads whose latency the loop hides),
// epi(m, n, acc[NP], early[NP]) once per (row, stream); m counts from the slab's first row.
template <int K, int NP, class W, class Early, class Epilogue>
__device__ __forceinline__ void slab_product(const W* slab, int rows, const W* act, int nb, int warp, int lane,
                                             Early&& early, Epilogue&& epi) {
  constexpr int kLd = K + kTcPad<W>;
  const int m_tiles = rows / 16;
  const int units = m_tiles * (nb / 8);
  const W* a_lane = slab + a_fragment_row(lane) * kLd + a_fragment_col<W>(lane);
  for (int u = warp; u < units; u += kTcWarps) {
    const int m0 = (u % m_tiles) * 16;
    const int n0 = (u / m_tiles) * 8;
    float pre[4][NP];
#pragma unroll
    for (int c = 0; c < 4; ++c) early(m0 + c_fragment_row(lane, c), n0 + c_fragment_col(lane, c), pre[c]);
    float acc[NP][4];
#pragma unroll
    for (int q = 0; q < NP; ++q)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[q][c] = 0.f;
    const W* b_lane = act + (n0 + b_fragment_row(lane)) * kLd + b_fragment_col<W>(lane);
#pragma unroll 2
    for (int k0 = 0; k0 < K; k0 += kTcKStep<W>) {
      uint32_t b[2];
      ptx::ldmatrix_x2(b, b_lane + k0);
#pragma unroll
      for (int q = 0; q < NP; ++q) {
        uint32_t a[4];
        ptx::ldmatrix_x4(a, a_lane + (q * rows + m0) * kLd + k0);
        TensorCoreType<W>::mma(acc[q], a, b);
      }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float v[NP];
#pragma unroll
      for (int q = 0; q < NP; ++q) v[q] = acc[q][c];
      epi(m0 + c_fragment_row(lane, c), n0 + c_fragment_col(lane, c), v, pre[c]);
    }
  }
}

// Shared memory of one block for a tile of nb streams, in bytes from the start; every region a
// multiple of 16 bytes. Activations that feed a product are in W, rows padded by kTcPad<W>.
template <int R, int S, int A, class W>
struct TensorCoreSmem {
  static constexpr int kSumWidth = S > A ? S : A;  // the skip sums, later the logits
  int64_t weights = 0, x = 0, sums = 0, input = 0, gated = 0, relu_skip = 0, hidden = 0, history = 0, bytes = 0;

  __host__ __device__ constexpr explicit TensorCoreSmem(int nb) {
    const int64_t sizes[] = {
        kTcStages * TensorCoreSlabs<R, S, A, W>::kBytes,  // the slab ring
        int64_t(nb) * R * 4,                             // float32 x_l[t]
        int64_t(nb) * kSumWidth * 4,                     // float32 s, then the logits
        int64_t(nb) * (2 * R + kTcPad<W>) * int64_t(sizeof(W)),  // [x_l[t - d] | x_l[t]]
        int64_t(nb) * (R + kTcPad<W>) * int64_t(sizeof(W)),      // h
        int64_t(nb) * (S + kTcPad<W>) * int64_t(sizeof(W)),      // relu(s)
        int64_t(nb) * (A + kTcPad<W>) * int64_t(sizeof(W)),      // z
        int64_t(nb) * 2 * 4};                                 // y_{t-2}, y_{t-1}
    int64_t* const starts[] = {&weights, &x, &sums, &input, &gated, &relu_skip, &hidden, &history};
    for (int i = 0; i < 8; ++i) {
      *starts[i] = bytes;
      bytes += (sizes[i] + 15) / 16 * 16;
    }
  }
};

// The largest tile whose shared memory an sm_90 block can have: the kernel's registers are sized
// for it, and no plan asks for more.
template <int R, int S, int A, class W>
__host__ __device__ constexpr int tensor_core_max_tile() {
  for (const int tile : kTcTiles)
    if (TensorCoreSmem<R, S, A, W>(tile).bytes <= kSm90SharedPerBlock) return tile;
  return 0;
}

template <int R, int S, int A, class W>
__global__ void __launch_bounds__(kTcThreads, 1) tensor_core_kernel(const __grid_constant__ Params p) {
  using Type = TensorCoreType<W>;
  using Slabs = TensorCoreSlabs<R, S, A, W>;
  constexpr int kSumWidth = TensorCoreSmem<R, S, A, W>::kSumWidth;
  constexpr int kMaxTile = tensor_core_max_tile<R, S, A, W>();
  static_assert(kMaxTile >= 8, "at least a tile of 8 streams fits shared memory");
  constexpr int kPast = (kMaxTile * R / 4 + kTcThreads - 1) / kTcThreads;  // 4-channel pieces of x[t - d]
  const int nb = p.streams_per_block;
  const TensorCoreSmem<R, S, A, W> layout(nb);
  extern __shared__ float4 shared_vectors[];
  char* const base = reinterpret_cast<char*>(shared_vectors);
  W* const weights = reinterpret_cast<W*>(base + layout.weights);  // kTcStages slab buffers
  constexpr int kSlabElements = int(Slabs::kBytes / sizeof(W));
  float* const x = reinterpret_cast<float*>(base + layout.x);
  float* const sums = reinterpret_cast<float*>(base + layout.sums);
  W* const input = reinterpret_cast<W*>(base + layout.input);
  W* const gated = reinterpret_cast<W*>(base + layout.gated);
  W* const relu_skip = reinterpret_cast<W*>(base + layout.relu_skip);
  W* const hidden = reinterpret_cast<W*>(base + layout.hidden);
  int* const history = reinterpret_cast<int*>(base + layout.history);

  const W* const dilate_b = static_cast<const W*>(p.dilate_b);
  const W* const res_b = static_cast<const W*>(p.res_b);
  const W* const skip_b = static_cast<const W*>(p.skip_b);
  const W* const out_b = static_cast<const W*>(p.out_b);
  const W* const end_b = static_cast<const W*>(p.end_b);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t stream0 = int64_t(blockIdx.x) * nb;
  const int valid = static_cast<int>(p.batch - stream0 < nb ? p.batch - stream0 : nb);
  const int L = p.L;
  const int64_t T = p.num_samples;
  const int64_t rows = queue_rows(L, p.max_dilation);
  constexpr int kIn = 2 * R + kTcPad<W>;

  // x[t - d] of one layer for the tile, 4 channels at a time: piece e = tid + i * kTcThreads is
  // stream 4e / R, channels 4e % R + 0..3, the same thread for the queue read and, a layer later,
  // the queue write of the same slot (so with one layer of dilation 1 the write comes first in
  // program order). Held as operands (rounded now, as they would be when stored): half the registers.
  decltype(Type::four(float4{})) past[kPast];
  const auto load_past = [&](int64_t offset, int dilation, int64_t t) {
#pragma unroll
    for (int i = 0; i < kPast; ++i) {
      const int e = 4 * (tid + i * kTcThreads);
      const int b = e / R;
      const float4 v = b < valid ? *reinterpret_cast<const float4*>(
                                       p.queues + queue_slot(p, stream0 + b, rows, offset, dilation, t) * R + e % R)
                                 : make_float4(0.f, 0.f, 0.f, 0.f);
      past[i] = Type::four(v);
    }
  };
  const auto store_past = [&]() {
#pragma unroll
    for (int i = 0; i < kPast; ++i) {
      const int e = 4 * (tid + i * kTcThreads);
      if (e < nb * R) *reinterpret_cast<decltype(Type::four(float4{}))*>(input + (e / R) * kIn + e % R) = past[i];
    }
  };
  const auto write_back = [&](int64_t offset, int dilation, int64_t t) {
#pragma unroll
    for (int i = 0; i < kPast; ++i) {
      const int e = 4 * (tid + i * kTcThreads);
      const int b = e / R;
      if (b < valid)
        *reinterpret_cast<float4*>(p.queues + queue_slot(p, stream0 + b, rows, offset, dilation, t) * R + e % R) =
            *reinterpret_cast<const float4*>(x + b * R + e % R);
    }
  };
  const auto set_x = [&](int b, int k, float v) {
    x[b * R + k] = v;
    input[b * kIn + R + k] = Type::from_float(v);
  };

  for (int e = tid; e < 2 * nb; e += kTcThreads)
    history[e] = e / 2 < valid ? p.history[stream_row(p, stream0 + e / 2) * 2 + (e & 1)] : A / 2;
  // The slab copies form a ring: slab i of the call goes to buffer i % kTcStages. `ahead` is the
  // last slab whose copy was issued, kTcStages - 2 slabs after the one being multiplied.
  TcSlab ahead{0, kTcDilate, 0};
  issue_slab<R, S, A, W>(p, ahead, weights, tid);
  for (int i = 1; i < kTcStages - 1; ++i) {
    ahead = following_slab<Slabs>(ahead, L);
    issue_slab<R, S, A, W>(p, ahead, weights + i * kSlabElements, tid);
  }
  load_past(0, 1, 0);
  __syncthreads();
  for (int e = tid; e < nb * R; e += kTcThreads) set_x(e / R, e % R, embed<W, R>(p, history[2 * (e / R)], history[2 * (e / R) + 1], e % R));
  store_past();

  int current = 0;  // buffer of the slab being multiplied
  // Waits for the current slab's copy (the oldest in flight), then reuses the buffer of the
  // previous slab, whose readers have all passed the barrier, for the copy kTcStages - 1 ahead.
  const auto next_slab = [&]() -> const W* {
    ptx::cp_async_wait_group<kTcStages - 2>();
    __syncthreads();
    ahead = following_slab<Slabs>(ahead, L);
    issue_slab<R, S, A, W>(p, ahead, weights + (current + kTcStages - 1) % kTcStages * kSlabElements, tid);
    return weights + current * kSlabElements;
  };
  const auto advance = [&]() { current = (current + 1) % kTcStages; };

  for (int64_t t = 0; t < T; ++t) {
    int64_t offset = 0;
    int dilation = 1;
    for (int l = 0; l < L; ++l) {
      const bool last_layer = l == L - 1;
      const bool more = !last_layer || t + 1 < T;  // another layer's x[t - d] to fetch
      const int following = next_dilation(dilation, p.max_dilation);
      const W* const bias = dilate_b + int64_t(l) * 2 * R;
      for (int i = 0; i < Slabs::count(kTcDilate); ++i) {
        const W* const w = next_slab();
        if (i == 0) {
          write_back(offset, dilation, t);
          if (more) {
            if (last_layer)
              load_past(0, 1, t + 1);
            else
              load_past(offset + dilation, following, t);
          }
        }
        const int first = i * Slabs::kDilateRows;
        slab_product<2 * R, 2>(
            w, Slabs::kDilateRows, input, nb, warp, lane,
            [&](int m, int n, float (&v)[2]) {
              const bool live = n < valid;
              v[0] = live ? load_cond(p, stream0 + n, l, first + m, t) + WeightsInGlobal::value(bias + first + m) : 0.f;
              v[1] = live ? load_cond(p, stream0 + n, l, R + first + m, t) + WeightsInGlobal::value(bias + R + first + m)
                          : 0.f;
            },
            [&](int m, int n, const float (&v)[2], const float (&pre)[2]) {
              gated[n * (R + kTcPad<W>) + first + m] = Type::from_float(gate(v[0] + pre[0], v[1] + pre[1]));
            });
        advance();
      }
      if (!last_layer) {
        for (int i = 0; i < Slabs::count(kTcResidual); ++i) {
          const W* const w = next_slab();
          if (i == 0) store_past();
          const int first = i * Slabs::kResidualRows;
          const W* const b = res_b + int64_t(l) * R + first;
          slab_product<R, 1>(
              w, Slabs::kResidualRows, gated, nb, warp, lane,
              [&](int m, int, float (&v)[1]) { v[0] = WeightsInGlobal::value(b + m); },
              [&](int m, int n, const float (&v)[1], const float (&pre)[1]) {
                set_x(n, first + m, x[n * R + first + m] + (v[0] + pre[0]));
              });
          advance();
        }
      }
      for (int i = 0; i < Slabs::count(kTcSkip); ++i) {
        const W* const w = next_slab();
        if (i == 0 && last_layer && more) store_past();
        const int first = i * Slabs::kSkipRows;
        const W* const b = skip_b + int64_t(l) * S + first;
        slab_product<R, 1>(
            w, Slabs::kSkipRows, gated, nb, warp, lane, [&](int m, int, float (&v)[1]) { v[0] = WeightsInGlobal::value(b + m); },
            [&](int m, int n, const float (&v)[1], const float (&pre)[1]) {
              float& s = sums[n * kSumWidth + first + m];
              s = (l == 0 ? 0.f : s) + (v[0] + pre[0]);  // the first layer starts the sum: no zeroing pass
              if (last_layer) relu_skip[n * (S + kTcPad<W>) + first + m] = Type::from_float(fmaxf(s, 0.f));
            });
        advance();
      }
      offset += dilation;
      dilation = following;
    }

    for (int i = 0; i < Slabs::count(kTcOut); ++i) {
      const W* const w = next_slab();
      const int first = i * Slabs::kOutRows;
      slab_product<S, 1>(
          w, Slabs::kOutRows, relu_skip, nb, warp, lane,
          [&](int m, int, float (&v)[1]) { v[0] = WeightsInGlobal::value(out_b + first + m); },
          [&](int m, int n, const float (&v)[1], const float (&pre)[1]) {
            hidden[n * (A + kTcPad<W>) + first + m] = Type::from_float(fmaxf(v[0] + pre[0], 0.f));
          });
      advance();
    }
    for (int i = 0; i < Slabs::count(kTcEnd); ++i) {
      const W* const w = next_slab();
      const int first = i * Slabs::kEndRows;
      slab_product<A, 1>(
          w, Slabs::kEndRows, hidden, nb, warp, lane,
          [&](int m, int, float (&v)[1]) { v[0] = WeightsInGlobal::value(end_b + first + m); },
          [&](int m, int n, const float (&v)[1], const float (&pre)[1]) {
            sums[n * kSumWidth + first + m] = v[0] + pre[0];  // the skip sums were last read above
          });
      advance();
    }
    __syncthreads();
    for (int b = warp; b < nb; b += kTcWarps) {
      if (b >= valid) {  // the empty end of a partial tile: x_0 again, so its x stays bounded
        for (int k = lane; k < R; k += 32) set_x(b, k, embed<W, R>(p, A / 2, A / 2, k));
        continue;
      }
      const int64_t stream = stream0 + b;
      const float* logits = sums + b * kSumWidth;
      const int drawn = warp_sample<A>(logits, load_selector(p, stream, t), lane);
      write_step_outputs<A>(p, stream, t, drawn, logits, lane);
      const int fed = fed_back_class(p, stream, t, drawn);
      const int y_prev1 = history[2 * b + 1];
      __syncwarp();
      if (lane == 0) {
        history[2 * b] = y_prev1;
        history[2 * b + 1] = fed;
      }
      if (t + 1 < T) {
        for (int k = lane; k < R; k += 32) set_x(b, k, embed<W, R>(p, y_prev1, fed, k));
      }
    }
  }
  ptx::cp_async_wait_group<0>();  // the next step's first slabs, copied for nothing
  __syncthreads();
  for (int e = tid; e < 2 * valid; e += kTcThreads) p.history[stream_row(p, stream0 + e / 2) * 2 + (e & 1)] = history[e];
}

template <int R, int S, int A, class W>
Plan TensorCore<R, S, A, W>::plan(const Params& p, const DeviceFacts& device) {
  if constexpr (tensor_core_max_tile<R, S, A, W>() == 0) {
    return refuse(Variant::TensorCore,
                  "not built for this size and weight type: its slab ring and a tile of 8 streams need " +
                      std::to_string(TensorCoreSmem<R, S, A, W>(8).bytes) +
                      " bytes of shared memory, more than an sm_90 block has; use float16 or bfloat16 weights");
  } else {
    // The kernel's registers hold the next layer's x[t - d] for at most the largest tile sm_90 fits.
    const auto fits = [&](int tile) {
      return tile <= tensor_core_max_tile<R, S, A, W>() &&
             TensorCoreSmem<R, S, A, W>(tile).bytes <= device.shared_per_block_optin;
    };
    int tile = p.streams_per_block;
    if (tile != 0) {
      if (tile != 8 && tile != 16 && tile != 32 && tile != 64)
        return refuse(Variant::TensorCore, "streams_per_block must be 8, 16, 32 or 64 for TENSOR_CORE (0: chosen "
                                           "from the batch), got " + std::to_string(tile));
    } else {
      // The largest tile that still gives every multiprocessor a block, else the smallest tile.
      for (const int candidate : kTcTiles) {
        if (fits(candidate) && (p.batch + candidate - 1) / candidate >= device.multiprocessors) {
          tile = candidate;
          break;
        }
      }
      if (tile == 0) tile = kTcTiles[3];
    }
    Plan plan;
    plan.variant = Variant::TensorCore;
    plan.streams_per_group = tile;
    plan.blocks_per_group = 1;
    plan.threads_per_block = kTcThreads;
    plan.grid_blocks = (p.batch + tile - 1) / tile;
    plan.shared_bytes = TensorCoreSmem<R, S, A, W>(tile).bytes;
    plan.workspace_bytes = kWorkspaceHeaderBytes;
    if (!fits(tile))
      return refuse(Variant::TensorCore, "a tile of " + std::to_string(tile) + " streams needs " +
                                             std::to_string(plan.shared_bytes) +
                                             " bytes of shared memory per block (the most built for this size is " +
                                             std::to_string(tensor_core_max_tile<R, S, A, W>()) +
                                             " streams); the device allows " +
                                             std::to_string(device.shared_per_block_optin));
    if (device.major < 8)
      return refuse(Variant::TensorCore, "needs compute capability 8.0 or newer (mma.sync on bfloat16, cp.async)");
    return resident_plan(plan, reinterpret_cast<const void*>(&tensor_core_kernel<R, S, A, W>), device);
  }
}

template <int R, int S, int A, class W>
void TensorCore<R, S, A, W>::launch(const Params& p, const Plan& plan) {
  if constexpr (tensor_core_max_tile<R, S, A, W>() == 0) {
    throw std::invalid_argument("implementation: TENSOR_CORE is not built for this size and weight type");
  } else {
    // The kernel reads its tile from Params, so it must be the plan's.
    Params tiled = p;
    tiled.streams_per_block = plan.streams_per_group;
    void* args[] = {&tiled};
    NVWAVENET_CUDA_CHECK(cudaLaunchKernel(tensor_core_kernel<R, S, A, W>, dim3(static_cast<unsigned>(plan.grid_blocks)),
                                          dim3(kTcThreads), args, static_cast<size_t>(plan.shared_bytes),
                                          static_cast<cudaStream_t>(p.stream)));
  }
}

}  // namespace nvwavenet::gpu
