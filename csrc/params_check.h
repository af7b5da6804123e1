// Checks of the Params fields that every engine reads, so the engines agree on what a valid call
// is and name a bad field the same way. Each engine then adds its own limits (built sizes,
// alignment, thread counts). Failures throw std::invalid_argument, which pybind11 turns into a
// ValueError naming the field.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "nvwavenet.h"

namespace nvwavenet {

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// Calls fn(pointer, name) for every weight array the network reads. One layer has no residual
// weights: its residual output would never be used.
template <typename Fn>
void for_each_weight(const Params& p, Fn&& fn) {
  fn(p.embed_prev, "embed_prev");
  fn(p.embed_curr, "embed_curr");
  fn(p.dilate_w, "dilate_w");
  fn(p.dilate_b, "dilate_b");
  if (p.L > 1) {
    fn(p.res_w, "res_w");
    fn(p.res_b, "res_b");
  }
  fn(p.skip_w, "skip_w");
  fn(p.skip_b, "skip_b");
  fn(p.out_w, "out_w");
  fn(p.out_b, "out_b");
  fn(p.end_w, "end_w");
  fn(p.end_b, "end_b");
}

// Calls fn(pointer, name) for the folded weights that CLUSTER_FOLD reads besides for_each_weight's
// (none for one layer: there is no next layer to fold into).
template <typename Fn>
void for_each_fold_weight(const Params& p, Fn&& fn) {
  if (p.L > 1) {
    fn(p.fold_w, "fold_w");
    fn(p.fold_b, "fold_b");
  }
}

// `memory` says where the engine expects the pointer to point: "host" or "device".
inline void require_pointer(const void* pointer, const char* name, const char* memory) {
  require(pointer != nullptr, std::string(name) + ": expected a " + memory + " pointer, got null");
}

// An array the engines read as `bytes`-sized values must start on a multiple of `bytes`: a tensor
// over a byte buffer need not, and on x86 the misaligned access works but is undefined behaviour
// (UBSan found one: a generation state loaded from a safetensors file with an unpadded header).
inline void require_aligned(const void* pointer, int64_t bytes, const char* name) {
  require(reinterpret_cast<uintptr_t>(pointer) % uint64_t(bytes) == 0,
          std::string(name) + ": expected an address aligned to " + std::to_string(bytes) + " bytes");
}

// A stream's steps before the call: queue slots are indexed with position + t, and past INT64_MAX
// that is undefined behaviour.
inline void check_position(int64_t position, int64_t num_samples, const char* name) {
  require(position >= 0, std::string(name) + ": expected >= 0, got " + std::to_string(position));
  require(num_samples <= INT64_MAX - position, std::string(name) + ": " + std::to_string(position) + " + " +
                                                   std::to_string(num_samples) + " samples would overflow int64");
}

// Rows of the state pool (Params::pool_rows, 0: batch).
inline int64_t pool_rows(const Params& p) { return p.pool_rows > 0 ? p.pool_rows : p.batch; }

// The shape of the call and the pointers it reads and writes. Conditioning, selectors and
// samples are read only when there is a sample to generate.
inline void check_call(const Params& p, const char* memory) {
  require(p.max_dilation >= 1 && (p.max_dilation & (p.max_dilation - 1)) == 0,
          "max_dilation: expected a power of two, got " + std::to_string(p.max_dilation));
  require(p.batch >= 1, "batch: expected at least 1 stream, got " + std::to_string(p.batch));
  require(p.num_samples >= 0, "num_samples: expected >= 0, got " + std::to_string(p.num_samples));
  check_position(p.position, p.num_samples, "position");
  for_each_weight(p, [memory](const void* pointer, const char* name) { require_pointer(pointer, name, memory); });
  require_pointer(p.queues, "queues", memory);
  require_pointer(p.history, "history", memory);
  require_aligned(p.queues, sizeof(float), "queues");
  require_aligned(p.history, sizeof(int32_t), "history");
  if (p.slots != nullptr) require_aligned(p.slots, sizeof(int32_t), "slots");
  if (p.positions != nullptr) require_aligned(p.positions, sizeof(int64_t), "positions");
  if (p.steps != nullptr) require_aligned(p.steps, sizeof(int64_t), "steps");
  require(p.pool_rows >= 0, "pool_rows: expected >= 0 (0: batch), got " + std::to_string(p.pool_rows));
  const int64_t rows = pool_rows(p);
  if (p.slots == nullptr) {
    require(rows >= p.batch, "pool_rows: expected at least batch = " + std::to_string(p.batch) +
                                 " rows without slots, got " + std::to_string(rows));
  } else if (std::string(memory) == "host") {
    // O(batch log batch): a sorted copy shows a repeated row next to its twin.
    std::vector<int32_t> sorted(p.slots, p.slots + p.batch);
    std::sort(sorted.begin(), sorted.end());
    require(sorted.front() >= 0 && sorted.back() < rows,
            "slots: expected pool rows in [0, " + std::to_string(rows) + "), got " +
                std::to_string(sorted.front() < 0 ? sorted.front() : sorted.back()));
    const auto twin = std::adjacent_find(sorted.begin(), sorted.end());
    require(twin == sorted.end(), "slots: expected distinct pool rows, got row " +
                                      (twin == sorted.end() ? std::string() : std::to_string(*twin)) + " twice");
  }
  if (p.positions != nullptr && std::string(memory) == "host") {
    for (int64_t b = 0; b < p.batch; ++b) check_position(p.positions[b], p.num_samples, "positions");
  }
  if (p.steps != nullptr && std::string(memory) == "host") {
    for (int64_t b = 0; b < p.batch; ++b) {
      require(p.steps[b] >= 0 && p.steps[b] <= p.num_samples, "steps: expected values in [0, num_samples = " +
                                                                   std::to_string(p.num_samples) + "], got " +
                                                                   std::to_string(p.steps[b]));
    }
  }
  if (p.num_samples > 0) {
    require_pointer(p.cond, "cond", memory);
    require_pointer(p.selectors, "selectors", memory);
    require_pointer(p.samples, "samples", memory);
    require_aligned(p.cond, p.cond_dtype == DType::Float32 ? 4 : 2, "cond");
    require_aligned(p.selectors, sizeof(float), "selectors");
    require_aligned(p.samples, sizeof(int32_t), "samples");
    if (p.teacher != nullptr) require_aligned(p.teacher, sizeof(int32_t), "teacher");
    if (p.logits != nullptr) require_aligned(p.logits, sizeof(float), "logits");
  }
}

}  // namespace nvwavenet
