// The (R, S, A) combinations the CUDA kernels are instantiated for. One list, read by the
// kernel dispatch and by build_info(), so what is reported is what was built.
#pragma once

// A build may list fewer sizes by defining the macro first (the host build of the kernels,
// csrc/cuda/host, keeps R32 and R64 to compile quickly).
#ifndef NVWAVENET_FOR_EACH_SIZE
#define NVWAVENET_FOR_EACH_SIZE(X) \
  X(32, 128, 256)                  \
  X(64, 128, 256)                  \
  X(64, 256, 256)                  \
  X(128, 256, 256)                 \
  X(256, 256, 256)
#endif
