// The (R, S, A) combinations the CUDA kernels are instantiated for. One list, read by the
// kernel dispatch and by build_info(), so what is reported is what was built.
#pragma once

#define NVWAVENET_FOR_EACH_SIZE(X) \
  X(32, 128, 256)                  \
  X(64, 128, 256)                  \
  X(64, 256, 256)                  \
  X(128, 256, 256)                 \
  X(256, 256, 256)
