#!/usr/bin/env bash
# Everything a machine with an NVIDIA GPU can check that this project's CI cannot, in one
# go (for a session lent a GPU: the `device` tool runs it in a copy of the working tree):
#   1. the CUDA kernels against NumPy, the engine's GPU forward pass and the hot/cold split
#      against the references, and the plugin loader (tests/gpu/test_cuda_kernels.py,
#      test_gpu_forward.py, test_cuda_plugin.py: they build the plugin with nvcc themselves);
#   2. benchmarks/bench_gpu.py on the shapes in GPU_BENCH_SHAPES (default minicpm-s-1b;
#      relu-llama-7b builds a 3.8 GB model first) and the weight types in GPU_BENCH_TYPES
#      (default Q4_0), results saved to benchmarks/results/ (and copied to $OUT when that is
#      set, as the device tool does). The benchmark runs even when a test failed.
#   tools/gpu_checks.sh                # both
#   tools/gpu_checks.sh tests          # only the tests
#   tools/gpu_checks.sh bench          # only the benchmark
# A machine that reaches no package registry (the device tool's) runs the package from
# wheels with its own python3:
#   GPU_WHEELS=DIR GPU_PLUGIN=FILE tools/gpu_checks.sh
# DIR holds the sparseinfer wheel built for that Python and the test dependencies it lacks;
# FILE is the CUDA plugin the benchmark loads (SPARSEINFER_CUDA_PLUGIN), built for the GPU.
# Both can be built on another machine with a Python of the GPU machine's version (the device
# tool's has 3.12): `pip wheel --no-build-isolation --no-deps -w DIR .` for the package, and
# `CUDAARCHS=90 pip wheel ... -Ccmake.define.SPARSEINFER_CUDA=ON .` for a wheel whose
# sparseinfer/libsparseinfer_cuda.so is FILE (take it out with unzip). A package without a
# plugin of its own lets test_cuda_plugin.py load a plugin package on the GPU too (the loader
# takes a package's own plugin first, and the test skips then).
# Needs nvcc (CUDA's usual install folder or PATH) and a GPU; says so and stops otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
command -v nvcc >/dev/null || { echo "gpu_checks: no nvcc" >&2; exit 2; }
nvidia-smi -L || { echo "gpu_checks: no GPU answers" >&2; exit 2; }

bench_env=()
if [ -n "${GPU_WHEELS:-}" ]; then
    site=/tmp/sparseinfer-site
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$GPU_WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    py=python3
    [ -n "${GPU_PLUGIN:-}" ] && bench_env=(env "SPARSEINFER_CUDA_PLUGIN=$(realpath "$GPU_PLUGIN")")
else
    venv=${GPU_VENV:-/tmp/sparseinfer-gpu-venv}
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q scikit-build-core pybind11
    # The plugin built into the package (-DSPARSEINFER_CUDA=ON); the tests build their own too.
    "$venv/bin/pip" install -q --no-build-isolation -Cbuild-dir=build/gpu \
        -Ccmake.define.SPARSEINFER_CUDA=ON ".[test]"
    py="$venv/bin/python"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
"${bench_env[@]}" "$py" -m sparseinfer info --system || true

status=0
if [ "${1:-}" != "bench" ]; then
    # The emulator's run of the GPU forward tests is CI's (as is test_cuda_emulated.py).
    "$py" -m pytest -q -rs --durations=10 tests/gpu/test_cuda_kernels.py tests/gpu/test_gpu_forward.py \
        tests/gpu/test_cuda_plugin.py --deselect tests/gpu/test_gpu_forward.py::test_gpu_forward_on_the_cpu_emulator \
        || status=$?
fi
if [ "${1:-}" != "tests" ]; then
    for shape in ${GPU_BENCH_SHAPES:-minicpm-s-1b}; do
        for type in ${GPU_BENCH_TYPES:-Q4_0}; do
            "${bench_env[@]}" "$py" benchmarks/bench_gpu.py --shape "$shape" --type "$type" \
                --budgets 0.5GiB 2GiB -t "$(nproc)" --save || status=$?
        done
    done
    if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu-*.json "$OUT"/ 2>/dev/null || true; fi
fi
exit $status
