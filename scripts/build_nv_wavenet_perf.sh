#!/usr/bin/env bash
# Builds NV-WaveNet's own timing tool, nv_wavenet_perf, from the sources vendored in
# third_party/nv-wavenet (NVIDIA/nv-wavenet at 03f6957, BSD-3, LICENSE.TXT there), for the
# H100/H200, so that scripts/gpu_check.sh can time it beside nvwavenet in the same lease:
#
#     bash scripts/build_nv_wavenet_perf.sh [OUT_DIR]     # default build/nv-wavenet
#
# Copies the sources to OUT_DIR/src, applies third_party/nv-wavenet/patches/*.patch there (the
# CUDA 13 fix; the vendored files stay as NVIDIA ships them) and compiles with NV-WaveNet's own
# Makefile flags for its perf target, but for sm_90 and optimised: -arch=sm_90 -O3 --use_fast_math
# -maxrregcount 128 (its Makefile adds -g -std=c++11 for sm_70). Needs nvcc (no GPU); the runtime
# is linked statically, so the binary runs on any machine whose driver supports this nvcc's CUDA.
# Prints the binary's path. NVCC selects the compiler (default: nvcc on the PATH).
# Cost (measured 2026-12-06 on the 2-core development machine, nvcc 13.0.88, load average 7-8 from
# other builds, `/usr/bin/time -v bash scripts/build_nv_wavenet_perf.sh`): 236 s of CPU (one
# translation unit: 190 kernels, every size and mode nv_wavenet_perf instantiates), 14 min 52 s
# wall; a 7.6 MB binary. Too slow for CI, so no test compiles it.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=third_party/nv-wavenet
OUT_DIR="${1:-build/nv-wavenet}"
NVCC="${NVCC:-nvcc}"
command -v "$NVCC" >/dev/null || { echo "build_nv_wavenet_perf.sh: $NVCC not found" >&2; exit 2; }
rm -rf "$OUT_DIR/src"
mkdir -p "$OUT_DIR/src"
cp "$SRC"/*.cu "$SRC"/*.cuh "$OUT_DIR/src/"
for p in "$SRC"/patches/*.patch; do
  patch --quiet --forward -d "$OUT_DIR/src" -p1 <"$p"
done
"$NVCC" -arch=sm_90 -O3 --use_fast_math -maxrregcount 128 -o "$OUT_DIR/nv_wavenet_perf" "$OUT_DIR/src/nv_wavenet_perf.cu"
echo "$OUT_DIR/nv_wavenet_perf"
