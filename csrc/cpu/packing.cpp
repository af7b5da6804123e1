#include "cpu/packing.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/half.h"
#include "params_check.h"

namespace nvwavenet::cpu {
namespace {

constexpr int64_t kAlign = 64;             // bytes: sections start on cache lines
constexpr uint32_t kMagic = 0x4E56434Bu;   // "NVCK"
constexpr uint32_t kFormat = 2;            // bump when the layout changes

struct Header {
  uint32_t magic, format;
  int64_t R, S, A, L;
  int32_t weight_dtype;
};
static_assert(sizeof(Header) <= kAlign, "the header fits its section");

// Sizes are capped so that every offset and product below fits comfortably in int64.
constexpr int64_t kMaxSize = 1 << 16;

void check_size(const char* name, int64_t value, int64_t minimum) {
  if (value < minimum || value > kMaxSize) {
    throw std::invalid_argument("params." + std::string(name) + ": expected " + std::to_string(minimum) +
                                " to " + std::to_string(kMaxSize) + ", got " + std::to_string(value));
  }
}

int64_t align(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// A Params weight array: elements in weight_dtype, read raw (matrices) or as float32 (vectors).
struct Source {
  const char* base;
  DType dtype;
  int64_t bytes;

  const char* at(int64_t i) const { return base + i * bytes; }
  float value(int64_t i) const {
    uint16_t bits;
    switch (dtype) {
      case DType::Float16: std::memcpy(&bits, at(i), 2); return half_to_float(bits);
      case DType::BFloat16: std::memcpy(&bits, at(i), 2); return bfloat16_to_float(bits);
      case DType::Float32: break;
    }
    float f;
    std::memcpy(&f, at(i), 4);
    return f;
  }
};

// Writes a blocked matrix at dst: `blocks` blocks of kBlock rows over columns [0, K).
// `index(row, k)` is the source element of packed row `row` (block * kBlock + lane) and column k,
// or -1 for padding (left zero).
template <class Index>
void pack_blocked(char* dst, const Source& src, int64_t blocks, int64_t K, Index index) {
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      for (int j = 0; j < kBlock; ++j, dst += src.bytes) {
        const int64_t i = index(b * kBlock + j, k);
        if (i >= 0) std::memcpy(dst, src.at(i), size_t(src.bytes));
      }
    }
  }
}

// float32 vector at dst: dst[i] = source element offset + i for i < n (the padding stays zero).
void pack_vector(char* dst, const Source& src, int64_t offset, int64_t n) {
  float* out = reinterpret_cast<float*>(dst);
  for (int64_t i = 0; i < n; ++i) out[i] = src.value(offset + i);
}

int64_t element_bytes(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float16:
    case DType::BFloat16: return 2;
  }
  throw std::invalid_argument("params.weight_dtype: not a DType");
}

}  // namespace

Layout::Layout(const Params& p) {
  check_size("R", p.R, 1);
  check_size("S", p.S, 1);
  check_size("A", p.A, 2);
  check_size("L", p.L, 1);
  R = p.R, S = p.S, A = p.A, L = p.L;
  Rp = padded(R), Sp = padded(S), Ap = padded(A);
  weight_dtype = p.weight_dtype;
  weight_bytes = element_bytes(p.weight_dtype);
  int64_t at = kAlign;  // after the header
  auto take = [&at](int64_t bytes) {
    const int64_t start = at;
    at += align(bytes);
    return start;
  };
  const int64_t f = sizeof(float), w = weight_bytes;
  embed_prev = take(A * Rp * f);
  embed_curr = take(A * Rp * f);
  dilate_stride = align(2 * Rp * R * w);
  dilate_prev = take(L * dilate_stride);
  dilate_curr = take(L * dilate_stride);
  dilate_b = take(L * 2 * Rp * f);
  res_stride = align(Rp * R * w);
  res_w = take((L - 1) * res_stride);
  res_b = take((L - 1) * Rp * f);
  skip_w = take(Sp * L * Rp * w);
  skip_b = take(Sp * f);
  out_w = take(Ap * Sp * w);
  out_b = take(Ap * f);
  end_w = take(Ap * Ap * w);
  end_b = take(Ap * f);
  total_bytes = at;
}

int64_t cpu_packed_bytes(const Params& p) { return Layout(p).total_bytes; }

void pack_cpu_weights(const Params& p, void* dst, int64_t dst_bytes) {
  const Layout lay(p);
  for_each_weight(p, [](const void* pointer, const char* name) { require_pointer(pointer, name, "host"); });
  require_pointer(dst, "cpu_weights", "host");
  if (dst_bytes != lay.total_bytes) {
    throw std::invalid_argument("cpu_weights: expected a buffer of " + std::to_string(lay.total_bytes) +
                                " bytes, got " + std::to_string(dst_bytes));
  }
  if (reinterpret_cast<std::uintptr_t>(dst) % kAlign != 0) {
    throw std::invalid_argument("cpu_weights: expected a 64-byte aligned buffer");
  }

  const int64_t R = lay.R, S = lay.S, A = lay.A, L = lay.L, Rp = lay.Rp, Sp = lay.Sp, Ap = lay.Ap;
  char* out = static_cast<char*>(dst);
  std::memset(out, 0, size_t(lay.total_bytes));
  const Header header{kMagic, kFormat, R, S, A, L, int32_t(lay.weight_dtype)};
  std::memcpy(out, &header, sizeof header);
  auto source = [&p, &lay](const void* base) { return Source{static_cast<const char*>(base), p.weight_dtype, lay.weight_bytes}; };
  const int64_t f = sizeof(float);

  for (int64_t a = 0; a < A; ++a) {
    pack_vector(out + lay.embed_prev + a * Rp * f, source(p.embed_prev), a * R, R);
    pack_vector(out + lay.embed_curr + a * Rp * f, source(p.embed_curr), a * R, R);
  }

  // Gate order: packed row 16c + j is tanh row 8c + j, packed row 16c + 8 + j sigmoid row
  // R + 8c + j; -1 for the padding past R.
  auto gate_row = [R](int64_t packed_row) -> int64_t {
    const int64_t chunk = packed_row / (2 * kBlock), lane = packed_row % kBlock;
    const int64_t channel = chunk * kBlock + lane;
    if (channel >= R) return -1;
    return (packed_row / kBlock) % 2 == 0 ? channel : R + channel;
  };
  for (int64_t l = 0; l < L; ++l) {
    for (int tap = 0; tap < 2; ++tap) {  // [L][2R][2R]: columns [0, R) past, [R, 2R) current
      char* matrix = out + (tap == 0 ? lay.dilate_prev : lay.dilate_curr) + l * lay.dilate_stride;
      pack_blocked(matrix, source(p.dilate_w), 2 * Rp / kBlock, R, [&](int64_t row, int64_t k) -> int64_t {
        const int64_t from = gate_row(row);
        return from < 0 ? -1 : (l * 2 * R + from) * 2 * R + tap * R + k;
      });
    }
    float* bias = reinterpret_cast<float*>(out + lay.dilate_b) + l * 2 * Rp;
    for (int64_t row = 0; row < 2 * Rp; ++row) {
      const int64_t from = gate_row(row);
      if (from >= 0) bias[row] = source(p.dilate_b).value(l * 2 * R + from);
    }
  }

  for (int64_t l = 0; l + 1 < L; ++l) {
    pack_blocked(out + lay.res_w + l * lay.res_stride, source(p.res_w), Rp / kBlock, R,
                 [&](int64_t row, int64_t k) -> int64_t { return row < R ? (l * R + row) * R + k : -1; });
    pack_vector(out + lay.res_b + l * Rp * f, source(p.res_b), l * R, R);
  }

  pack_blocked(out + lay.skip_w, source(p.skip_w), Sp / kBlock, L * Rp, [&](int64_t row, int64_t k) -> int64_t {
    const int64_t l = k / Rp, r = k % Rp;
    return row < S && r < R ? (l * S + row) * R + r : -1;
  });
  float* skip_b = reinterpret_cast<float*>(out + lay.skip_b);
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t l = 0; l < L; ++l) skip_b[s] += source(p.skip_b).value(l * S + s);
  }

  pack_blocked(out + lay.out_w, source(p.out_w), Ap / kBlock, Sp,
               [&](int64_t row, int64_t k) -> int64_t { return row < A && k < S ? row * S + k : -1; });
  pack_vector(out + lay.out_b, source(p.out_b), 0, A);
  pack_blocked(out + lay.end_w, source(p.end_w), Ap / kBlock, Ap,
               [&](int64_t row, int64_t k) -> int64_t { return row < A && k < A ? row * A + k : -1; });
  pack_vector(out + lay.end_b, source(p.end_b), 0, A);
}

const char* checked_packed_weights(const Params& p, const Layout& layout) {
  if (p.cpu_weights == nullptr) {
    throw std::invalid_argument("params.cpu_weights: null; fill it with pack_cpu_weights() first");
  }
  if (p.cpu_weights_bytes != layout.total_bytes) {
    throw std::invalid_argument("params.cpu_weights_bytes: expected " + std::to_string(layout.total_bytes) +
                                " for these sizes, got " + std::to_string(p.cpu_weights_bytes));
  }
  Header header;
  std::memcpy(&header, p.cpu_weights, sizeof header);
  if (header.magic != kMagic || header.format != kFormat) {
    throw std::invalid_argument("params.cpu_weights: not a buffer filled by pack_cpu_weights()");
  }
  if (header.R != layout.R || header.S != layout.S || header.A != layout.A || header.L != layout.L ||
      header.weight_dtype != int32_t(layout.weight_dtype)) {
    throw std::invalid_argument(
        "params.cpu_weights: packed for R=" + std::to_string(header.R) + " S=" + std::to_string(header.S) +
        " A=" + std::to_string(header.A) + " L=" + std::to_string(header.L) + " weight_dtype=" +
        std::to_string(header.weight_dtype) + ", but params has R=" + std::to_string(layout.R) +
        " S=" + std::to_string(layout.S) + " A=" + std::to_string(layout.A) + " L=" + std::to_string(layout.L) +
        " weight_dtype=" + std::to_string(int32_t(layout.weight_dtype)));
  }
  return static_cast<const char*>(p.cpu_weights);
}

}  // namespace nvwavenet::cpu
