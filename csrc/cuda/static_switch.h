// Turning the run-time precision and (R, S, A) into template arguments, in one place, in the
// spirit of flash-attention's static_switch.h. The size list is sizes.h's, so what is dispatched
// is exactly what was built.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "../nvwavenet.h"
#include "../sizes.h"

namespace nvwavenet::gpu {

template <int R_, int S_, int A_>
struct SizeTag {
  static constexpr int R = R_, S = S_, A = A_;
};

template <class W>
struct TypeTag {
  using type = W;
};

std::string built_sizes_list();  // "(32, 128, 256), (64, 128, 256), ..." for messages

// Calls f(SizeTag<R, S, A>{}, TypeTag<W>{}) for the built size equal to (p.R, p.S, p.A) and the
// weight type p.weight_dtype; std::invalid_argument (ValueError) naming what was built otherwise.
template <class F>
decltype(auto) dispatch_size_and_type(const Params& p, F&& f) {
  const auto with_type = [&](auto type) -> decltype(auto) {
#define NVWAVENET_SIZE_CASE(r, s, a) \
  if (p.R == r && p.S == s && p.A == a) return f(SizeTag<r, s, a>{}, type);
    NVWAVENET_FOR_EACH_SIZE(NVWAVENET_SIZE_CASE)
#undef NVWAVENET_SIZE_CASE
    throw std::invalid_argument("(R, S, A) = (" + std::to_string(p.R) + ", " + std::to_string(p.S) + ", " +
                                std::to_string(p.A) + ") has no CUDA kernels; built: " + built_sizes_list());
  };
  switch (p.weight_dtype) {
    case DType::Float32:
      return with_type(TypeTag<float>{});
    case DType::Float16:
      return with_type(TypeTag<__half>{});
    case DType::BFloat16:
      return with_type(TypeTag<__nv_bfloat16>{});
  }
  throw std::invalid_argument("weight_dtype: expected float32, float16 or bfloat16, got code " +
                              std::to_string(static_cast<int>(p.weight_dtype)));
}

}  // namespace nvwavenet::gpu
