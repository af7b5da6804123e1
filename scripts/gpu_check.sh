#!/usr/bin/env bash
# The one command for a GPU machine (no network needed, PyTorch preinstalled):
#
#     bash scripts/gpu_check.sh
#
# Builds nvwavenet in place, runs the CUDA tests (CLUSTER, CLUSTER_ROLES, CLUSTER_FOLD and TENSOR_CORE, never run on a GPU
# before, first: their failures are the news; then every variant), times nvwavenet (Impl.AUTO)
# beside NV-WaveNet's own nv_wavenet_perf at the same sizes in this lease (R64/S256/A256 L20
# max_dilation 512, batch 1/8/64/256, float16 and float32: scripts/nv_wavenet_compare.py; the ratio
# table goes into $LOGS/RESULTS.md, a copy of benchmarks/RESULTS.md with that GPU's section
# rewritten from $LOGS/nv_wavenet_compare.json; before the sanitizers, as issue 24's "done when"
# needs that table; at most 200 s), compute-sanitizer memcheck and
# racecheck on one small case per variant (one run per variant, so one failure hides no other),
# times the variants old and new side by side at batch 1 to 4096 in float32 and float16 with
# samples/s per watt (scripts/cuda_timing.py) and writes the measured table AUTO follows
# ($LOGS/autotune_table.json: copy it to nvwavenet/autotune_table.json and commit it; only variants
# whose CUDA tests passed here are in its `passed` list), rebuilds with NVWAVENET_TRACE=1 and prints
# the %globaltimer trace of one step of PERSISTENT, CLUSTER, CLUSTER_ROLES, CLUSTER_FOLD,
# CLUSTER_BATCHED with 4 streams per cluster and CLUSTER_SKIP_BLOCKS in float32 and float16
# (trace.log: each hop, layer block, skip block and
# the head), restores the untraced build, runs benchmarks/throughput.py --quick when it exists and
# time is left, and prints one summary. Steps run in that order of importance. Full logs go to
# $OUT (the device tool's output folder) when set, else ./gpu_check_out. Exit status: 0 when every
# step passed. Meant to finish in about 8 minutes on one H100 with 16 CPU cores; every step has a
# time limit, and all of them together stay within GPU_CHECK_BUDGET seconds (default 540), so the
# summary is always printed within a 10-minute call.
#
# nv_wavenet_perf is built on the development machine, not here: `bash scripts/build_nv_wavenet_perf.sh`
# (nvcc, no GPU; it writes build/nv-wavenet/nv_wavenet_perf, an ignored path, CUDA runtime linked
# statically), and the device call carries it: run(command="bash scripts/gpu_check.sh",
# carry=["build/nv-wavenet"]). Where the binary is missing, this script builds it first with the
# same script (nvcc is on the GPU machine too), which costs minutes of the budget. NV_WAVENET_PERF
# names another binary. Back home, commit the table with
# `python scripts/nv_wavenet_compare.py write-results <files_at>/nv_wavenet_compare.json`.
set -u -o pipefail
cd "$(dirname "$0")/.."
LOGS="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$LOGS"
export NVWAVENET_BUILD_JOBS="${NVWAVENET_BUILD_JOBS:-$(nproc)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import the in-place build
# The interpreter that holds PyTorch: `python`, or `python3` where only that is on the PATH.
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
BUDGET="${GPU_CHECK_BUDGET:-540}"
ROWS=()
FAILED=0

# Whether GPU_CHECK_SKIP (space-separated glob patterns of step names) leaves step $1 out: for a
# second call on the same warm machine, e.g. GPU_CHECK_SKIP="tests* vs-nv-wavenet results-*" to
# spend it on the sanitizers, the timing table and the trace (never skip `build`: the rest needs it).
skip_requested() {
  local pattern found=1
  set -f
  for pattern in ${GPU_CHECK_SKIP:-}; do
    # shellcheck disable=SC2254
    case $1 in $pattern) found=0 ;; esac
  done
  set +f
  return $found
}

# run_step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in $LOGS/NAME.log, for at
# most LIMIT_SECONDS or what is left of the budget.
run_step() {
  local name=$1 limit=$2
  shift 2
  if skip_requested "$name"; then
    ROWS+=("$(printf '%-22s %-16s %5ds  %s' "$name" "SKIPPED" 0 "GPU_CHECK_SKIP")")
    return 1
  fi
  local start=$SECONDS status left=$((BUDGET - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    ROWS+=("$(printf '%-22s %-16s %5ds  %s' "$name" "SKIPPED" 0 "out of time budget")")
    FAILED=1
    return 1
  fi
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  case $rc in
    0) status=PASS ;;
    124 | 137) status="TIMEOUT(${limit}s)" ;;
    *) status="FAIL(rc=$rc)" ;;
  esac
  [ $rc -eq 0 ] || FAILED=1
  ROWS+=("$(printf '%-22s %-16s %5ds  %s' "$name" "$status" $((SECONDS - start)) "$(tail -n 1 "$LOGS/$name.log" | cut -c1-90)")")
  return $rc
}

summary() {
  echo
  echo "== nvwavenet gpu_check: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)," \
    "torch $("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>/dev/null), $(date -u +%F)"
  printf '%-22s %-16s %6s  %s\n' step status time "last line of the log ($LOGS)"
  printf '%s\n' "${ROWS[@]}"
  if [ -f "$LOGS/timing.log" ]; then
    echo
    cat "$LOGS/timing.log"
  fi
  if [ -f "$LOGS/results-nv-wavenet.log" ]; then
    echo
    cat "$LOGS/results-nv-wavenet.log"
  fi
}

nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1
if ! run_step build 180 "$PYTHON" setup.py build_ext --inplace; then
  summary
  exit 1
fi
"$PYTHON" -c 'import nvwavenet; print(nvwavenet.build_info())' >"$LOGS/build_info.txt" 2>&1
# (-k CLUSTER also selects CLUSTER_FOLD)
run_step tests-new 90 "$PYTHON" -m pytest -q -rs -x -m cuda tests/test_cuda.py -k "CLUSTER or TENSOR_CORE"
run_step tests 210 "$PYTHON" -m pytest -q -rs -m cuda tests/test_cuda.py --junitxml="$LOGS/cuda_tests.xml"
NV_WAVENET_PERF="${NV_WAVENET_PERF:-build/nv-wavenet/nv_wavenet_perf}"
[ -x "$NV_WAVENET_PERF" ] || run_step build-nv-wavenet 300 bash scripts/build_nv_wavenet_perf.sh
if [ -x "$NV_WAVENET_PERF" ]; then
  run_step vs-nv-wavenet 200 "$PYTHON" scripts/nv_wavenet_compare.py measure --perf "$NV_WAVENET_PERF" \
    --out "$LOGS/nv_wavenet_compare.json" --budget 190
  # Whatever was measured, even by a step cut short, goes into the table.
  if [ -f "$LOGS/nv_wavenet_compare.json" ]; then
    cp benchmarks/RESULTS.md "$LOGS/RESULTS.md"
    run_step results-nv-wavenet 20 "$PYTHON" scripts/nv_wavenet_compare.py write-results \
      "$LOGS/nv_wavenet_compare.json" --results "$LOGS/RESULTS.md"
  fi
fi
for tool in memcheck racecheck; do
  if [ -z "$SANITIZER" ]; then
    ROWS+=("$(printf '%-22s %-16s %5ds  %s' "$tool" "MISSING" 0 "compute-sanitizer not found")")
    FAILED=1
    continue
  fi
  for variant in SINGLE_BLOCK DUAL_BLOCK PERSISTENT CLUSTER TENSOR_CORE CLUSTER_ROLES CLUSTER_FOLD CLUSTER_BATCHED \
    CLUSTER_SKIP_BLOCKS; do
    run_step "$tool-$variant" 25 env NVWAVENET_SPIN_TIMEOUT_MS=600000 \
      "$SANITIZER" --tool "$tool" --error-exitcode 99 "$PYTHON" scripts/cuda_sanitize_case.py "$variant"
  done
done
# A second call skipping the tests names the first call's JUnit XML (copied into the tree from the
# files that came back) in GPU_CHECK_PASSED_FROM; else the table lists no variant as passed.
run_step timing 120 "$PYTHON" scripts/cuda_timing.py --write-table "$LOGS/autotune_table.json" \
  --passed-from "${GPU_CHECK_PASSED_FROM:-$LOGS/cuda_tests.xml}"
# The trace build prints one line per block and call; run the target once per variant, then put
# the untraced module back.
if run_step build-trace 120 env NVWAVENET_TRACE=1 "$PYTHON" setup.py build_ext --inplace; then
  run_step trace 30 "$PYTHON" -c '
import torch
from nvwavenet import Impl, NVWaveNet, autotune
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args
net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, 20, 512), dtype=torch.float16)
cond = random_cond_input(64, 1, 20, 256, device="cuda")
for variant in (Impl.PERSISTENT, Impl.CLUSTER, Impl.CLUSTER_ROLES, Impl.CLUSTER_FOLD):
    net.infer(cond, variant)
# CLUSTER_BATCHED with 4 streams in one cluster (its plan would give each stream its own).
autotune.streams_per_block = lambda name, batch, sms: 4 if name == "CLUSTER_BATCHED" else 0
net.infer(random_cond_input(64, 4, 20, 256, device="cuda"), Impl.CLUSTER_BATCHED)
# CLUSTER_SKIP_BLOCKS at its reason to be, float32 (10 layer, 3 head, 3 skip blocks), and float16.
net32 = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, 20, 512), dtype=torch.float32)
net32.infer(cond, Impl.CLUSTER_SKIP_BLOCKS)
net.infer(cond, Impl.CLUSTER_SKIP_BLOCKS)
print("trace: see the nvwavenet trace lines above")'
  run_step build-untraced 120 env NVWAVENET_TRACE=0 "$PYTHON" setup.py build_ext --inplace
fi
if [ -f benchmarks/throughput.py ]; then
  run_step benchmark 150 "$PYTHON" benchmarks/throughput.py --quick
fi
summary
exit $FAILED
