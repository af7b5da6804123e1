// The portable kernels: 8 floats in a plain array. The compiler turns the lane loops into
// whatever vector instructions the baseline target has (SSE2 on x86-64), so this runs on any CPU.
#include <cmath>
#include <cstring>
#include <utility>

#include "cpu/half.h"

#define NVWAVENET_KERNEL
#include "cpu/kernels_impl.h"

namespace nvwavenet::cpu {
namespace {

struct Generic {
  struct V {
    float v[8];
  };

  template <class F>
  static V map(F f) {
    V out;
    for (int j = 0; j < 8; ++j) out.v[j] = f(j);
    return out;
  }

  static V zero() { return set1(0.0f); }
  static V set1(float f) { return map([f](int) { return f; }); }
  static V load(const float* p) {
    V out;
    std::memcpy(out.v, p, sizeof out.v);
    return out;
  }
  static void store(float* p, const V& a) { std::memcpy(p, a.v, sizeof a.v); }
  static V widen(const float* p) { return load(p); }
  static V widen(const Half* p) { return map([p](int j) { return half_to_float(p[j].bits); }); }
  static V widen(const BFloat16* p) { return map([p](int j) { return bfloat16_to_float(p[j].bits); }); }
  static V add(const V& a, const V& b) { return map([&](int j) { return a.v[j] + b.v[j]; }); }
  static V sub(const V& a, const V& b) { return map([&](int j) { return a.v[j] - b.v[j]; }); }
  static V mul(const V& a, const V& b) { return map([&](int j) { return a.v[j] * b.v[j]; }); }
  static V div(const V& a, const V& b) { return map([&](int j) { return a.v[j] / b.v[j]; }); }
  static V min(const V& a, const V& b) { return map([&](int j) { return std::min(a.v[j], b.v[j]); }); }
  static V max(const V& a, const V& b) { return map([&](int j) { return std::max(a.v[j], b.v[j]); }); }
  static V fmadd(const V& a, const V& b, const V& c) {
    return map([&](int j) { return a.v[j] * b.v[j] + c.v[j]; });
  }
  static V floor(const V& a) { return map([&](int j) { return std::floor(a.v[j]); }); }
  static void transpose(V r[8]) {
    for (int i = 0; i < 8; ++i) {
      for (int j = i + 1; j < 8; ++j) std::swap(r[i].v[j], r[j].v[i]);
    }
  }
  static V pow2(const V& n) {
    return map([&](int j) {
      const int32_t bits = (int32_t(n.v[j]) + 127) << 23;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    });
  }
};

}  // namespace

const Kernels& generic_kernels() {
  static const Kernels kernels = make_kernels<Generic>("generic");
  return kernels;
}

}  // namespace nvwavenet::cpu
