// Finding NaN in the conditioning before a CPU call, on the engine's own threads.
//
// A NaN makes its stream's output garbage, and silently: the vectorised tanh and sigmoid clamp
// their inputs, which turns NaN into a finite activation, so the logits do not even show it. The
// Python API therefore refuses such conditioning before anything runs (no state changes). Done
// with PyTorch (one `max` over the tensor) it woke PyTorch's OpenMP threads, whose spinning after
// the operation then took the cores from the engine: streaming at batch 64 in chunks of 50
// samples lost 25-40% of its speed on the 2-core development machine. This scan reads the tensor
// once on the pool the engine runs on next; it costs what reading the tensor costs (about 7% of a
// long call at batch 64 there, 12% in chunks of 50, nothing measurable at batch 1).
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/engine.h"
#include "cpu/threads.h"

namespace nvwavenet::cpu {
namespace {

// NaN by its bits (an exponent of all ones and a non-zero mantissa), which no compiler flag can
// optimise away as it may `v != v`.
template <class Bits, Bits kAbsMask, Bits kInfinity>
struct NanBits {
  static bool is_nan(Bits bits) { return Bits(bits & kAbsMask) > kInfinity; }
};
using Float32Nan = NanBits<uint32_t, 0x7fffffffu, 0x7f800000u>;
using Float16Nan = NanBits<uint16_t, 0x7fff, 0x7c00>;
using BFloat16Nan = NanBits<uint16_t, 0x7fff, 0x7f80>;

// The first of `steps` elements `stride` apart that is NaN, or `steps`. Contiguous rows are
// checked up to 64 elements at a time with a branch-free loop the compiler vectorises; the
// position is looked for only in a block that holds one.
template <class Bits, class Nan>
int64_t first_nan(const Bits* row, int64_t stride, int64_t steps) {
  constexpr int64_t kBlock = 64;
  if (stride != 1) {
    for (int64_t t = 0; t < steps; ++t) {
      if (Nan::is_nan(row[t * stride])) return t;
    }
    return steps;
  }
  for (int64_t t = 0; t < steps; t += kBlock) {
    const int64_t n = std::min(kBlock, steps - t);
    unsigned hit = 0;
    for (int64_t i = 0; i < n; ++i) hit |= unsigned(Nan::is_nan(row[t + i]));
    if (hit == 0) continue;
    for (int64_t i = 0; i < n; ++i) {
      if (Nan::is_nan(row[t + i])) return t + i;
    }
  }
  return steps;
}

// Rows (stream, layer, channel) [begin, end) in that order; the earliest NaN as {step, stream}.
// The row's indices advance by carrying, not by dividing: with short calls (a streaming chunk of
// 50 steps is 50 elements a row) three divisions a row took as long as reading it.
template <class Bits, class Nan>
std::pair<int64_t, int64_t> scan_rows(const Params& p, int64_t begin, int64_t end) {
  const int64_t channels = 2 * int64_t(p.R);
  const auto* base = static_cast<const Bits*>(p.cond);
  std::pair<int64_t, int64_t> earliest{p.num_samples, -1};
  int64_t b = begin / (int64_t(p.L) * channels), l = begin / channels % p.L, c = begin % channels;
  for (int64_t row = begin; row < end; ++row) {
    const Bits* first = base + b * p.cond_stride_batch + l * p.cond_stride_layer + c * p.cond_stride_channel;
    // Only a NaN earlier than the one found so far matters.
    const int64_t t = first_nan<Bits, Nan>(first, p.cond_stride_time, earliest.first);
    if (t < earliest.first) earliest = {t, b};
    if (++c == channels) {
      c = 0;
      if (++l == p.L) l = 0, ++b;
    }
  }
  return earliest;
}

}  // namespace

std::pair<int64_t, int64_t> find_nan_cond(const Params& p) {
  const int64_t rows = int64_t(p.batch) * p.L * 2 * int64_t(p.R);
  if (rows == 0 || p.num_samples == 0) return {-1, -1};
  const int threads = int(std::clamp<int64_t>(p.num_threads > 0 ? p.num_threads : default_threads(), 1, rows));
  std::vector<std::pair<int64_t, int64_t>> found(static_cast<size_t>(threads));
  ThreadPool::instance().run(threads, [&](int i) {
    const int64_t begin = rows * i / threads, end = rows * (i + 1) / threads;
    switch (p.cond_dtype) {
      case DType::Float32: found[size_t(i)] = scan_rows<uint32_t, Float32Nan>(p, begin, end); break;
      case DType::Float16: found[size_t(i)] = scan_rows<uint16_t, Float16Nan>(p, begin, end); break;
      case DType::BFloat16: found[size_t(i)] = scan_rows<uint16_t, BFloat16Nan>(p, begin, end); break;
    }
  });
  // The earliest step, and at that step the first stream (the parts are in stream order).
  std::pair<int64_t, int64_t> earliest{p.num_samples, -1};
  for (const auto& part : found) {
    if (part.first < earliest.first) earliest = part;
  }
  if (earliest.second < 0) return {-1, -1};
  return {earliest.second, earliest.first};  // {stream, step}
}

}  // namespace nvwavenet::cpu
