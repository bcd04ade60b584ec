"""Packaging invariants that are cheap to check from the source tree (no build, no network).

Skipped where the source tree is not there (cibuildwheel copies only tests/ next to the
installed wheel).
"""

from __future__ import annotations

import os
import re

import pytest

from paths import ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")

if not os.path.exists(os.path.join(ROOT, "pyproject.toml")):
    pytest.skip("no source tree next to the tests", allow_module_level=True)


def load(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return tomllib.load(f)


def test_cuda_plugin_version_matches_the_core_and_the_extra():
    core, cuda = load("pyproject.toml"), load("cuda/pyproject.toml")
    assert cuda["project"]["version"] == core["project"]["version"]
    (requirement,) = core["project"]["optional-dependencies"]["cuda12"]
    assert requirement.startswith(f"{cuda['project']['name']}=={cuda['project']['version']};")
    assert any(d.startswith("nvidia-cuda-runtime-cu12") for d in cuda["project"]["dependencies"])
    assert cuda["tool"]["scikit-build"]["wheel"]["py-api"] == "py3"


def test_cuda_wheel_repair_keeps_nvidia_libraries_out():
    repair = load("cuda/pyproject.toml")["tool"]["cibuildwheel"]["linux"]["repair-wheel-command"]
    assert "--exclude libcuda.so.1" in repair and "--exclude 'libcudart.so.*'" in repair


def test_loader_and_header_agree_on_the_abi():
    with open(os.path.join(ROOT, "cpp", "src", "cuda_abi", "plugin_api.h")) as f:
        header = f.read()
    abi = int(re.search(r"#define SI_CUDA_ABI_VERSION (\d+)", header).group(1))
    from sparseinfer import _cuda

    assert _cuda.ABI_VERSION == abi
    for function in re.findall(r"SI_CUDA_API \w[\w\s\*]*?\b(si_cuda_\w+)\(", header):
        assert function in open(_cuda.__file__).read(), function


def test_wheel_matrix():
    cibw = load("pyproject.toml")["tool"]["cibuildwheel"]
    assert cibw["build"].split() == [f"cp3{v}-*" for v in range(9, 15)]
    for pattern in ("*t-*", "*-win32", "*-macosx_universal2"):
        assert pattern in cibw["skip"].split()
    assert "pp" not in cibw["build"]  # no PyPy
    assert cibw["manylinux-x86_64-image"] == cibw["manylinux-aarch64-image"] == "manylinux_2_28"


def test_no_native_tuning_in_the_build():
    for path in ("CMakeLists.txt", "cpp/src/cuda/CMakeLists.txt", "cuda/CMakeLists.txt"):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        assert "-march=native" not in text and "-mtune=native" not in text, path
