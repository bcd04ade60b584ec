"""The CUDA kernels' logic on machines without a GPU: the plugin's sources built for the CPU
emulator in tests/support/cuda_emulator, then test_cuda_kernels.py run against that library
in a child process (an emulator abort, e.g. a deadlocked barrier, fails this test instead of
ending the run). What the emulator cannot check (memory ordering, launch limits, alignment,
speed) is left to test_cuda_kernels.py on a GPU."""

import os

import pytest

import cuda_build


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="the child needs the uninstrumented engine (the kernels have no ASan build)")
def test_kernels_pass_on_the_cpu_emulator(emulated_plugin):
    # Every kernel test runs there (only the no-device case skips): the run checks something.
    kernel_tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_cuda_kernels.py")
    cuda_build.run_tests_in_child(kernel_tests, {"SPARSEINFER_TEST_EMULATED_CUDA_PLUGIN": emulated_plugin},
                                  min_passed=150)
