// Host build: __half and the conversions the kernels use, round-to-nearest-even as on the GPU.
#pragma once

#include <cstdint>

#include "../emu.h"

struct __half {
  uint16_t __x;
};
struct __half2 {
  __half x, y;
};

inline float __half2float(__half h) {
  _Float16 v;
  __builtin_memcpy(&v, &h.__x, 2);
  return static_cast<float>(v);
}
inline __half __float2half_rn(float f) {
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  __builtin_memcpy(&h.__x, &v, 2);
  return h;
}
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
