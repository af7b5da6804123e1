#!/usr/bin/env bash
# The GPU benchmarks in one device call, after scripts/gpu_check.sh has passed on that machine:
#
#     bash scripts/gpu_benchmarks.sh
#
# Builds in place if needed, then runs benchmarks/throughput.py, benchmarks/naive_vs_fast.py and
# benchmarks/streaming.py on the GPU, each under its own time limit, so that together they finish
# inside one 10-minute call. Each script rewrites only its own GPU section of
# benchmarks/RESULTS.md; the updated RESULTS.md, the CSVs and PNGs and one log come back in $OUT
# (the device tool returns at most 8 files), to be merged into the repository's RESULTS.md.
# GPU timings are steady, so rows are timed over 0.1 s instead of the CPU's 0.5 s: the full
# throughput grid (4 configurations x 9 batch sizes x 6 engines + 3 baselines, 324 rows) then
# fits. (On the 2-core CPU, 144 rows of 0.2 s took 164 s in all.) Streaming gets the most
# headroom: its 10-minute memory run is one-second chunks of audio, 600 calls.
# DEVICE=cpu runs the same on the CPU (a check of this script, not a replacement for the CPU runs).
set -u -o pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
LOGS="${OUT:-$PWD/gpu_benchmarks_out}"
LOG="$LOGS/benchmarks.log"
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The interpreter that holds PyTorch: `python`, or `python3` where only that is on the PATH.
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export NVWAVENET_BUILD_JOBS="${NVWAVENET_BUILD_JOBS:-$(nproc)}"
FAILED=0

# step LIMIT_SECONDS COMMAND...: runs COMMAND, its output appended to the log, for at most LIMIT.
step() {
  local limit=$1 start=$SECONDS
  shift
  echo "== $* (limit ${limit}s)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== rc=$rc after $((SECONDS - start))s" | tee -a "$LOG"
  [ $rc -eq 0 ] || FAILED=1
}

: >"$LOG"
"$PYTHON" -c 'import nvwavenet._C' 2>/dev/null || step 180 "$PYTHON" setup.py build_ext --inplace
step 330 "$PYTHON" benchmarks/throughput.py --device "$DEVICE" --seconds 0.1
step 60 "$PYTHON" benchmarks/naive_vs_fast.py --device "$DEVICE" --max-depth 12 --seconds 0.1
step 180 "$PYTHON" benchmarks/streaming.py --device "$DEVICE" --dtype float16
cp benchmarks/RESULTS.md "$LOGS/"
cp benchmarks/out/*-"$DEVICE".csv benchmarks/out/*-"$DEVICE".png "$LOGS/" 2>/dev/null
tail -n 40 "$LOG"
exit $FAILED
