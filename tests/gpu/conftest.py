"""The CUDA plugin builds the GPU tests load, from this checkout's sources
(tests/support/cuda_build.py): each a skip, with the reason, where this machine cannot build
it."""

import pytest

import cuda_build


@pytest.fixture(scope="session")
def nvcc_plugin() -> cuda_build.Built:
    """The plugin built with nvcc; skips without nvcc (or off Linux)."""
    try:
        return cuda_build.build_plugin()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def emulated_plugin() -> str:
    """The plugin built for the CPU emulator (a library path); skips without a C++ compiler
    (or off Linux)."""
    try:
        return cuda_build.build_emulated_plugin()
    except FileNotFoundError as error:
        pytest.skip(str(error))
