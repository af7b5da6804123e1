// The CPU side of conditioning.h, on the engine's matrix kernels (Kernels::gemm: 8 output rows
// per vector, each row's products added in order of its inputs whatever the tile shape) and its
// thread pool. Threads split the (stream, frame) items and, when there are fewer items than
// threads, the output rows of each item; never the inputs of one output.
#include <algorithm>
#include <cstdint>
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
// Output rows of one item computed at once: their products for a frame's hop (H vectors of
// this many floats) stay in the L2 cache until they are transposed into the output.
constexpr int64_t kRowBlocksPerPass = 32;

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
  const int64_t up_rows = padded(C * H), rows = padded(p.rows), blocks = rows / kBlock;
  const int threads =
      int(std::max<int64_t>(1, p.num_threads > 0 ? p.num_threads : std::min<int64_t>(default_threads(), 1 << 10)));

  // Upsampling: one product per item over its window, newest frame first, into `hops`
  // [item][r * C + d]; each thread's items in one call, so the upsampling matrix is read once.
  std::vector<float> inputs(size_t(n_items * K_up)), hops(size_t(n_items * up_rows));
  const int up_threads = int(std::min<int64_t>(threads, n_items));
  ThreadPool::instance().run(up_threads, [&](int t) {
    const int64_t i0 = n_items * t / up_threads, i1 = n_items * (t + 1) / up_threads;
    for (int64_t i = i0; i < i1; ++i) {
      const Item item = items[size_t(i)];
      const float* window = p.frames + item.stream * p.frames_stride_batch;
      float* x = inputs.data() + i * K_up;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t j = 0; j < taps; ++j) {
          x[c * taps + j] = window[c * p.frames_stride_channel + (item.frame + p.context - j) * p.frames_stride_time];
        }
      }
      std::copy(p.up_b, p.up_b + up_rows, hops.data() + i * up_rows);
    }
    if (i1 > i0) {
      k.gemm[0](p.up_w, K_up, 0, up_rows / kBlock, inputs.data() + i0 * K_up, K_up, i1 - i0,
                hops.data() + i0 * up_rows, up_rows);
    }
  });

  // The projection: H vectors of C per item. Units are (item, part of the rows), parts only as
  // many as it takes to give every thread work.
  const int64_t parts = std::min<int64_t>(blocks, (threads + n_items - 1) / n_items);
  const int64_t units = n_items * parts;
  const int proj_threads = int(std::min<int64_t>(threads, units));
  const int64_t pass_rows = std::min(blocks, kRowBlocksPerPass) * kBlock;
  std::vector<std::vector<float>> scratch(size_t(proj_threads), std::vector<float>(size_t(H * pass_rows)));
  ThreadPool::instance().run(proj_threads, [&](int t) {
    float* y = scratch[size_t(t)].data();
    for (int64_t u = units * t / proj_threads; u < units * (t + 1) / proj_threads; ++u) {
      const int64_t i = u / parts, part = u % parts;
      const Item item = items[size_t(i)];
      const float* x = hops.data() + i * up_rows;
      float* out = p.out + item.stream * p.out_stride_batch + item.frame * H;
      const int64_t part_end = blocks * (part + 1) / parts;
      for (int64_t b0 = blocks * part / parts; b0 < part_end; b0 += kRowBlocksPerPass) {
        const int64_t b1 = std::min(part_end, b0 + kRowBlocksPerPass), width = (b1 - b0) * kBlock;
        for (int64_t r = 0; r < H; ++r) std::copy(p.proj_b + b0 * kBlock, p.proj_b + b1 * kBlock, y + r * width);
        k.gemm[0](p.proj_w, C, b0, b1, x, C, H, y, width);
        // [sample][row] to the output's [row][sample].
        for (int64_t o = b0 * kBlock; o < std::min(b1 * kBlock, p.rows); ++o) {
          const float* column = y + (o - b0 * kBlock);
          float* row = out + o * p.out_stride_row;
          for (int64_t r = 0; r < H; ++r) row[r] = column[r * width];
        }
      }
    }
  });
}

}  // namespace nvwavenet::cpu
