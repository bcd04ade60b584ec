"""Builds the CUDA plugin (cpp/src/cuda) with nvcc for the tests, once per test run.

Every .cu file of the plugin is compiled (in parallel, one nvcc per file) for one GPU
architecture, sm_75: real code for Turing and PTX that newer GPUs compile at load, so the
one build runs on any GPU that CUDA 13 supports and stays quick (the release builds five
architectures: cpp/src/cuda/architectures.cmake). The runtime is linked as a shared library,
as the sparseinfer-cudaNN wheels link it; runtime_library() finds the toolkit's copy.

Used by test_cuda_plugin.py (the loader) and test_cuda_kernels.py (the kernels); standard
library only. build_emulated_plugin() builds the same sources for the CPU emulator in
tests/support/cuda_emulator (test_cuda_emulated.py).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from paths import ROOT, SUPPORT, TESTS

ENGINE_SOURCES = os.path.join(ROOT, "cpp", "src")  # the include root of cuda_abi/plugin_api.h
CUDA_SOURCES = os.path.join(ENGINE_SOURCES, "cuda")
ABI_SOURCES = os.path.join(ENGINE_SOURCES, "cuda_abi")
PLUGIN_HEADER = os.path.join(ABI_SOURCES, "plugin_api.h")
LIB_NAME = "sparseinfer_cuda.dll" if sys.platform == "win32" else "libsparseinfer_cuda.so"
ARCH = "75"


def compiler_env() -> dict:
    """The environment for a compiler run: without a sanitizer runtime that the test run may
    preload (tools/run_sanitized_tests.sh), which crashes nvcc."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def find_nvcc() -> Optional[str]:
    candidates = [shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def nvcc_major(nvcc: str) -> int:
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60,
                             env=compiler_env()).stdout
    return int(re.search(r"release (\d+)\.", version).group(1))


def runtime_library(nvcc: str, major: int) -> Optional[str]:
    """The toolkit's libcudart.so.<major>, or None."""
    toolkit = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for lib_dir in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                    os.path.join("targets", "sbsa-linux", "lib")):
        candidate = os.path.join(toolkit, lib_dir, f"libcudart.so.{major}")
        if os.path.exists(candidate):
            return candidate
    return None


def cuda_sources() -> list[str]:
    return sorted(os.path.join(CUDA_SOURCES, name) for name in os.listdir(CUDA_SOURCES)
                  if name.endswith(".cu"))


def abi_functions() -> dict[str, tuple[bool, int, bool]]:
    """The entry points plugin_api.h declares: name -> (returns void, number of parameters,
    ends with the (char* err, size_t err_len) pair)."""
    with open(PLUGIN_HEADER, encoding="utf-8") as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    out = {}
    for m in re.finditer(r"SI_CUDA_API\s+([\w\s\*]+?)\s*\b(si_cuda_\w+)\s*\(([^)]*)\)", text):
        params = m.group(3).strip()
        n = 0 if params in ("", "void") else params.count(",") + 1
        reports_errors = re.search(r"char\*\s*err,\s*size_t\s+err_len$", params) is not None
        out[m.group(2)] = (m.group(1).strip() == "void", n, reports_errors)
    return out


def header_defines() -> dict[str, int]:
    """The integer #defines of plugin_api.h (SI_CUDA_ABI_VERSION, SI_CUDA_TYPE_*, ...)."""
    with open(PLUGIN_HEADER, encoding="utf-8") as f:
        text = f.read()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"#define\s+(SI_CUDA_\w+)\s+\(?(-?\d+)\)?", text)}


def compile_and_link(compile_command, sources: list[str], link_command: list[str], out_dir: str) -> list[str]:
    """Compiles each source to out_dir/<its name>.o, several at once (compile_command(source,
    obj) is the command), then runs link_command with the objects appended. Returns the
    messages of what failed: none when the library was built."""

    def compile_one(source: str) -> tuple[str, subprocess.CompletedProcess]:
        obj = os.path.join(out_dir, os.path.basename(source) + ".o")
        return obj, subprocess.run(compile_command(source, obj), capture_output=True, text=True, timeout=600,
                                   env=compiler_env())

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(compile_one, sources))
    errors = [f"{obj}:\n{proc.stderr}" for obj, proc in results if proc.returncode != 0]
    if not errors:
        proc = subprocess.run(link_command + [obj for obj, _ in results], capture_output=True, text=True,
                              timeout=600, env=compiler_env())
        if proc.returncode != 0:
            errors.append(f"link:\n{proc.stderr}")
    return errors


@dataclass
class Built:
    path: str                # the plugin library
    major: int               # the toolkit's CUDA major version
    runtime: Optional[str]   # the toolkit's libcudart.so.<major>, when found


_built: Optional[Built] = None
_failure: Optional[str] = None


def build_plugin() -> Built:
    """The plugin built from the current sources (once per process; later calls return the
    same library). Raises RuntimeError with nvcc's messages when the build fails, and
    FileNotFoundError when there is no nvcc (callers skip then)."""
    global _built, _failure
    if _built is not None:
        return _built
    if _failure is not None:
        raise RuntimeError(_failure)
    nvcc = find_nvcc()
    if nvcc is None or sys.platform != "linux":
        raise FileNotFoundError("nvcc not found, or not Linux (the tests build the CUDA plugin only "
                                "where a CUDA toolkit is, on Linux)")
    major = nvcc_major(nvcc)
    out_dir = tempfile.mkdtemp(prefix="sparseinfer-cuda-test-")
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    common = ["-O2", "-std=c++17", f"-arch=sm_{ARCH}", "-cudart", "shared"]
    lib = os.path.join(out_dir, LIB_NAME)
    errors = compile_and_link(
        lambda source, obj: [nvcc, *common, "-Xcompiler", "-fPIC,-fvisibility=hidden",
                             f'-DSI_CUDA_ARCHS="{ARCH}"', f"-I{ENGINE_SOURCES}", "-c", source, "-o", obj],
        cuda_sources(), [nvcc, *common, "-shared", "-o", lib], out_dir)
    if errors:
        _failure = "building the CUDA plugin failed:\n" + "\n".join(errors)
        raise RuntimeError(_failure)
    _built = Built(lib, major, runtime_library(nvcc, major))
    return _built


EMULATOR = os.path.join(SUPPORT, "cuda_emulator")


_emulated: Optional[str] = None


def build_emulated_plugin() -> str:
    """The plugin's sources built with the C++ compiler against the CPU emulator, as a shared
    library (once per process; later calls return the same library). Raises
    FileNotFoundError where it cannot be built (no C++ compiler, or not Linux: the
    emulator's fibers are glibc's ucontext) and RuntimeError with the compiler's messages
    when the build fails."""
    global _emulated
    if _emulated is not None:
        return _emulated
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None or not sys.platform.startswith("linux"):
        raise FileNotFoundError("the CUDA emulator needs Linux and a C++ compiler")
    out_dir = tempfile.mkdtemp(prefix="sparseinfer-cuda-emulated-")
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    translated = os.path.join(out_dir, "src")
    subprocess.run([sys.executable, os.path.join(EMULATOR, "translate.py"), CUDA_SOURCES, translated],
                   check=True, timeout=120)
    sources = sorted(os.path.join(translated, n) for n in os.listdir(translated) if n.endswith(".cpp"))
    lib = os.path.join(out_dir, LIB_NAME)
    errors = compile_and_link(
        lambda source, obj: [cxx, "-std=c++17", "-O1", "-fPIC", "-Wno-unknown-pragmas", f"-I{EMULATOR}",
                             f"-I{translated}", f"-I{ENGINE_SOURCES}", "-c", source, "-o", obj],
        sources + [os.path.join(EMULATOR, "emulator.cpp")], [cxx, "-shared", "-o", lib], out_dir)
    if errors:
        raise RuntimeError("building the emulated CUDA plugin failed:\n" + "\n".join(errors))
    _emulated = lib
    return lib


def run_tests_in_child(test_path: str, env_extra: dict, min_passed: int) -> None:
    """Runs a test file in a fresh interpreter (without a sanitizer preload) with env_extra
    set; fails unless it passes with at least min_passed tests run, so that a child in which
    everything skipped does not count as a pass."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_path],
        capture_output=True, text=True, timeout=1200, env=env, cwd=TESTS)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= min_passed, summary


def build_stub_plugin(out_dir: str, abi_version: int) -> str:
    """A stand-in plugin built with the C compiler (no CUDA): every entry point of
    plugin_api.h with its declared signature, si_cuda_abi_version() answering abi_version and
    every fallible call failing as CUDA does without a GPU ("no CUDA-capable device is
    detected", status 100). For the loader's failure paths. Raises FileNotFoundError where
    there is no C compiler or not Linux."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if cc is None or not sys.platform.startswith("linux"):
        raise FileNotFoundError("the stand-in plugin needs Linux and a C compiler")
    with open(PLUGIN_HEADER, encoding="utf-8") as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    lines = ['#include <stdio.h>', '#include "plugin_api.h"']
    for m in re.finditer(r"SI_CUDA_API\s+([\w\s\*]+?)\s*\b(si_cuda_\w+)\s*\(([^)]*)\)", text):
        result, name, params = m.group(1).strip(), m.group(2), " ".join(m.group(3).split())
        if name == "si_cuda_abi_version":
            body = f"return {int(abi_version)};"
        elif name == "si_cuda_build_info":
            body = 'return "stand-in";'
        elif result == "void":
            body = ""
        else:
            body = ('if (err && err_len) snprintf(err, err_len, "cudaErrorNoDevice: no CUDA-capable '
                    'device is detected"); return 100;')
        names = re.findall(r"(\w+)\s*(?:,|$)", params)
        unused = "".join(f"(void){n}; " for n in names if n not in ("void",))
        lines.append(f"{result} {name}({params}) {{ {unused}{body} }}")
    src = os.path.join(out_dir, f"stub_abi{abi_version}.c")
    with open(src, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    lib_dir = os.path.join(out_dir, f"stub_abi{abi_version}")
    os.makedirs(lib_dir, exist_ok=True)
    lib = os.path.join(lib_dir, LIB_NAME)
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-I{ABI_SOURCES}", "-o", lib, src],
                          capture_output=True, text=True, timeout=120, env=compiler_env())
    if proc.returncode != 0:
        raise RuntimeError("building the stand-in plugin failed:\n" + proc.stderr)
    return lib
