"""The CUDA kernels' logic on machines without a GPU: the plugin's sources built for the CPU
emulator in tests/cuda_emulator, then test_cuda_kernels.py run against that library in a
child process (an emulator abort, e.g. a deadlocked barrier, fails this test instead of
ending the run). What the emulator cannot check (memory ordering, launch limits, alignment,
speed) is left to test_cuda_kernels.py on a GPU."""

import os
import re
import subprocess
import sys

import pytest

import cuda_build

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="the child needs the uninstrumented engine (the kernels have no ASan build)")
def test_kernels_pass_on_the_cpu_emulator(tmp_path):
    try:
        lib = cuda_build.build_emulated_plugin(str(tmp_path))
    except FileNotFoundError as error:
        pytest.skip(str(error))
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["SPARSEINFER_TEST_EMULATED_CUDA_PLUGIN"] = lib
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(HERE, "test_cuda_kernels.py")],
        capture_output=True, text=True, timeout=1200, env=env, cwd=HERE)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    # Every kernel test ran (only the no-device case skips): the run had something to check.
    assert passed and int(passed.group(1)) >= 150, summary
