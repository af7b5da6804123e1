#include "cpu/packing.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace nvwavenet::cpu {
namespace {

constexpr int64_t kAlignFloats = 16;  // 64 bytes: sections start on cache lines
constexpr uint32_t kMagic = 0x4E56434Bu;   // "NVCK"
constexpr uint32_t kFormat = 1;            // bump when the layout changes

struct Header {
  uint32_t magic, format;
  int64_t R, S, A, L;
};
static_assert(sizeof(Header) <= kAlignFloats * sizeof(float), "the header fits its section");

// Sizes are capped so that every offset and product below fits comfortably in int64.
constexpr int64_t kMaxSize = 1 << 16;

void check_size(const char* name, int64_t value, int64_t minimum) {
  if (value < minimum || value > kMaxSize) {
    throw std::invalid_argument("params." + std::string(name) + ": expected " + std::to_string(minimum) +
                                " to " + std::to_string(kMaxSize) + ", got " + std::to_string(value));
  }
}

int64_t align(int64_t floats) { return (floats + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

void check_pointer(const void* pointer, const char* name) {
  if (pointer == nullptr) throw std::invalid_argument(std::string("params.") + name + ": null pointer");
}

// Writes a blocked matrix: `blocks` blocks of kBlock rows over columns [0, K). `source(row, k)`
// is the weight of packed row `row` (block * kBlock + lane) and column k.
template <class Source>
float* pack_blocked(float* dst, int64_t blocks, int64_t K, Source source) {
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      for (int j = 0; j < kBlock; ++j) *dst++ = source(b * kBlock + j, k);
    }
  }
  return dst;
}

}  // namespace

Layout::Layout(const Params& p) {
  check_size("R", p.R, 1);
  check_size("S", p.S, 1);
  check_size("A", p.A, 2);
  check_size("L", p.L, 1);
  R = p.R, S = p.S, A = p.A, L = p.L;
  Rp = padded(R), Sp = padded(S), Ap = padded(A);
  int64_t at = kAlignFloats;  // after the header
  auto take = [&at](int64_t floats) {
    const int64_t start = at;
    at += align(floats);
    return start;
  };
  embed_prev = take(A * Rp);
  embed_curr = take(A * Rp);
  dilate_stride = align(2 * Rp * R);
  dilate_prev = take(L * dilate_stride);
  dilate_curr = take(L * dilate_stride);
  dilate_b = take(L * 2 * Rp);
  res_stride = align(Rp * R);
  res_w = take((L - 1) * res_stride);
  res_b = take((L - 1) * Rp);
  skip_w = take(Sp * L * Rp);
  skip_b = take(Sp);
  out_w = take(Ap * Sp);
  out_b = take(Ap);
  end_w = take(Ap * Ap);
  end_b = take(Ap);
  total_floats = at;
}

int64_t cpu_packed_bytes(const Params& p) { return Layout(p).total_floats * int64_t(sizeof(float)); }

void pack_cpu_weights(const Params& p, void* dst, int64_t dst_bytes) {
  const Layout lay(p);
  if (p.weight_dtype != DType::Float32) {
    throw std::invalid_argument("params.weight_dtype: the CPU engine packs float32 weights");
  }
  check_pointer(p.embed_prev, "embed_prev");
  check_pointer(p.embed_curr, "embed_curr");
  check_pointer(p.dilate_w, "dilate_w");
  check_pointer(p.dilate_b, "dilate_b");
  if (p.L > 1) {
    check_pointer(p.res_w, "res_w");
    check_pointer(p.res_b, "res_b");
  }
  check_pointer(p.skip_w, "skip_w");
  check_pointer(p.skip_b, "skip_b");
  check_pointer(p.out_w, "out_w");
  check_pointer(p.out_b, "out_b");
  check_pointer(p.end_w, "end_w");
  check_pointer(p.end_b, "end_b");
  check_pointer(dst, "cpu_weights");
  if (dst_bytes != lay.total_floats * int64_t(sizeof(float))) {
    throw std::invalid_argument("cpu_weights: expected a buffer of " +
                                std::to_string(lay.total_floats * sizeof(float)) + " bytes, got " +
                                std::to_string(dst_bytes));
  }
  if (reinterpret_cast<std::uintptr_t>(dst) % 64 != 0) {
    throw std::invalid_argument("cpu_weights: expected a 64-byte aligned buffer");
  }

  const int64_t R = lay.R, S = lay.S, A = lay.A, L = lay.L, Rp = lay.Rp, Sp = lay.Sp, Ap = lay.Ap;
  float* out = static_cast<float*>(dst);
  std::memset(out, 0, size_t(lay.total_floats) * sizeof(float));
  const Header header{kMagic, kFormat, R, S, A, L};
  std::memcpy(out, &header, sizeof header);

  const auto* embed_prev = static_cast<const float*>(p.embed_prev);
  const auto* embed_curr = static_cast<const float*>(p.embed_curr);
  for (int64_t a = 0; a < A; ++a) {
    std::memcpy(out + lay.embed_prev + a * Rp, embed_prev + a * R, size_t(R) * sizeof(float));
    std::memcpy(out + lay.embed_curr + a * Rp, embed_curr + a * R, size_t(R) * sizeof(float));
  }

  // Gate order: packed row 16c + j is tanh row 8c + j, packed row 16c + 8 + j sigmoid row
  // R + 8c + j; -1 for the padding past R.
  auto gate_row = [R](int64_t packed_row) -> int64_t {
    const int64_t chunk = packed_row / (2 * kBlock), lane = packed_row % kBlock;
    const int64_t channel = chunk * kBlock + lane;
    if (channel >= R) return -1;
    return (packed_row / kBlock) % 2 == 0 ? channel : R + channel;
  };
  const auto* dilate_w = static_cast<const float*>(p.dilate_w);
  const auto* dilate_b = static_cast<const float*>(p.dilate_b);
  for (int64_t l = 0; l < L; ++l) {
    const float* w = dilate_w + l * 2 * R * 2 * R;  // [2R][2R]: columns [0, R) past, [R, 2R) current
    for (int tap = 0; tap < 2; ++tap) {
      float* dst_matrix = out + (tap == 0 ? lay.dilate_prev : lay.dilate_curr) + l * lay.dilate_stride;
      pack_blocked(dst_matrix, 2 * Rp / kBlock, R, [&](int64_t row, int64_t k) {
        const int64_t source = gate_row(row);
        return source < 0 ? 0.0f : w[source * 2 * R + tap * R + k];
      });
    }
    for (int64_t row = 0; row < 2 * Rp; ++row) {
      const int64_t source = gate_row(row);
      if (source >= 0) out[lay.dilate_b + l * 2 * Rp + row] = dilate_b[l * 2 * R + source];
    }
  }

  const auto* res_w = static_cast<const float*>(p.res_w);
  const auto* res_b = static_cast<const float*>(p.res_b);
  for (int64_t l = 0; l + 1 < L; ++l) {
    pack_blocked(out + lay.res_w + l * lay.res_stride, Rp / kBlock, R, [&](int64_t row, int64_t k) {
      return row < R ? res_w[(l * R + row) * R + k] : 0.0f;
    });
    std::memcpy(out + lay.res_b + l * Rp, res_b + l * R, size_t(R) * sizeof(float));
  }

  const auto* skip_w = static_cast<const float*>(p.skip_w);
  const auto* skip_b = static_cast<const float*>(p.skip_b);
  pack_blocked(out + lay.skip_w, Sp / kBlock, L * Rp, [&](int64_t row, int64_t k) {
    const int64_t l = k / Rp, r = k % Rp;
    return row < S && r < R ? skip_w[(l * S + row) * R + r] : 0.0f;
  });
  for (int64_t s = 0; s < S; ++s) {
    float sum = 0.0f;
    for (int64_t l = 0; l < L; ++l) sum += skip_b[l * S + s];
    out[lay.skip_b + s] = sum;
  }

  const auto* out_w = static_cast<const float*>(p.out_w);
  pack_blocked(out + lay.out_w, Ap / kBlock, Sp, [&](int64_t row, int64_t k) {
    return row < A && k < S ? out_w[row * S + k] : 0.0f;
  });
  std::memcpy(out + lay.out_b, p.out_b, size_t(A) * sizeof(float));
  const auto* end_w = static_cast<const float*>(p.end_w);
  pack_blocked(out + lay.end_w, Ap / kBlock, Ap, [&](int64_t row, int64_t k) {
    return row < A && k < A ? end_w[row * A + k] : 0.0f;
  });
  std::memcpy(out + lay.end_b, p.end_b, size_t(A) * sizeof(float));
}

const float* checked_packed_weights(const Params& p, const Layout& layout) {
  if (p.cpu_weights == nullptr) {
    throw std::invalid_argument("params.cpu_weights: null; fill it with pack_cpu_weights() first");
  }
  if (p.cpu_weights_bytes != layout.total_floats * int64_t(sizeof(float))) {
    throw std::invalid_argument("params.cpu_weights_bytes: expected " +
                                std::to_string(layout.total_floats * sizeof(float)) + " for these sizes, got " +
                                std::to_string(p.cpu_weights_bytes));
  }
  Header header;
  std::memcpy(&header, p.cpu_weights, sizeof header);
  if (header.magic != kMagic || header.format != kFormat) {
    throw std::invalid_argument("params.cpu_weights: not a buffer filled by pack_cpu_weights()");
  }
  if (header.R != layout.R || header.S != layout.S || header.A != layout.A || header.L != layout.L) {
    throw std::invalid_argument(
        "params.cpu_weights: packed for R=" + std::to_string(header.R) + " S=" + std::to_string(header.S) +
        " A=" + std::to_string(header.A) + " L=" + std::to_string(header.L) + ", but params has R=" +
        std::to_string(layout.R) + " S=" + std::to_string(layout.S) + " A=" + std::to_string(layout.A) +
        " L=" + std::to_string(layout.L));
  }
  return static_cast<const float*>(p.cpu_weights);
}

}  // namespace nvwavenet::cpu
