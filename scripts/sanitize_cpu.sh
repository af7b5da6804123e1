#!/usr/bin/env bash
# The CPU engine under AddressSanitizer and UndefinedBehaviorSanitizer:
#
#     bash scripts/sanitize_cpu.sh [PYTEST ARGS...]
#
# Copies the working tree (tracked and untracked, not ignored files) to build/sanitize/src, builds
# nvwavenet._C there with NVWAVENET_SANITIZE=address,undefined (CPU engine only), and runs the CPU
# engine's tests, the streaming tests and the fuzz suite (tests/test_fuzz.py, whose child
# processes inherit the sanitizer) against that build, with the sanitizer runtime preloaded into
# Python. Any finding aborts the process that made it, so the run fails on it. The build never
# touches the checkout's own nvwavenet/_C*.so. Needs the Python environment that `pip install
# ".[test]"` made (PyTorch, pytest, hypothesis); the build tools (pybind11, cmake, ninja) are
# installed into it when missing. Extra arguments go to pytest (e.g. -k infer).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
WORK="$PWD/build/sanitize"
SANITIZE="${NVWAVENET_SANITIZE:-address,undefined}"

if ! "$PYTHON" -c "import pybind11, cmake, ninja" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet pybind11 cmake ninja
fi

rm -rf "$WORK/src"
mkdir -p "$WORK/src"
# --ignore-failed-read: a tracked file deleted in the working tree is left out.
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src"

echo "sanitize: building nvwavenet._C with -fsanitize=$SANITIZE"
(cd "$WORK/src" && NVWAVENET_CUDA=0 NVWAVENET_SANITIZE="$SANITIZE" \
  "$PYTHON" setup.py --quiet build_ext --inplace --build-temp "$WORK/build" >"$WORK/build.log" 2>&1) \
  || { tail -n 40 "$WORK/build.log"; echo "sanitize: the build failed (log: $WORK/build.log)" >&2; exit 1; }

# A Python host was not linked with the sanitizer runtime: it must be loaded first, and libstdc++
# right after it, or ASan finds no __cxa_throw to intercept and aborts at the first C++ exception
# ("real___cxa_throw != 0"). Leaks are not checked (CPython and PyTorch keep allocations alive
# until exit by design).
export LD_PRELOAD="$(${CXX:-c++} -print-file-name=libasan.so):$(${CXX:-c++} -print-file-name=libstdc++.so)${LD_PRELOAD:+:$LD_PRELOAD}"
# Reports go to files: pytest captures stderr, and a process that aborts never shows it. A huge
# allocation returns null, as it does without ASan, so that the tests of sizes refused after a
# failed allocation see PyTorch's own error instead of an abort.
rm -rf "$WORK/reports" && mkdir -p "$WORK/reports"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1:log_path=$WORK/reports/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/reports/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"

cd "$WORK/src"
built="$("$PYTHON" -c 'import nvwavenet._C as c; print(c.__file__)')"
case "$built" in
  "$WORK/src/"*) ;;
  *) echo "sanitize: Python imported $built, not the sanitized build under $WORK/src" >&2; exit 1 ;;
esac
start=$(date +%s)
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cpu_engine.py tests/test_streaming.py tests/test_fuzz.py "$@" \
  || status=$?
# A report with an error fails the run; one with warnings only (a huge allocation that returned
# null, as allocator_may_return_null asks) is shown.
for report in "$WORK"/reports/*; do
  [ -e "$report" ] || continue
  echo "sanitize: report $report"
  cat "$report"
  if grep -q -e "ERROR: " -e "runtime error: " "$report"; then status=1; fi
done
[ "$status" -eq 0 ] || { echo "sanitize: FAILED (exit status $status)" >&2; exit "$status"; }
echo "sanitize: passed in $(( $(date +%s) - start )) s under -fsanitize=$SANITIZE"
