"""The CUDA plugin loader (src/sparseinfer/_cuda.py) on a machine without a GPU.

Each case runs in a fresh interpreter (a plugin, once loaded, stays loaded) with the plugin
found the way a user's install would have it:
- none installed: "no CUDA plugin installed", and the CPU runs;
- stand-ins built here with the C compiler (no CUDA needed) for the failure paths: no
  device, another ABI, not a plugin at all;
- the real plugin (cpp/src/cuda, every kernel) built with nvcc for one architecture
  (tests/support/cuda_build.py), laid out as the sparseinfer-cudaNN wheel and NVIDIA's
  runtime wheel lay it out in site-packages: it loads, preloads the runtime from there, and
  reports no GPU or driver (or, on a machine with a GPU, the GPUs). Skipped where nvcc is
  missing.
And, without any compiler: the loader's ctypes prototypes match plugin_api.h.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import cuda_build
from cuda_build import LIB_NAME, compiler_env

# A stand-in plugin: the ABI's entry points in plain C, answering like a machine without a
# GPU (or with another ABI version). The entry points past the device queries are stubs
# (fake_plugin_source adds one per name in plugin_api.h) that the loader binds but never calls.
FAKE_PLUGIN = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#if defined(_WIN32)
#define API __declspec(dllexport)
#else
#define API __attribute__((visibility("default")))
#endif
static int fail(char* err, size_t n) {
    if (err && n) snprintf(err, n, "cudaGetDeviceCount: cudaErrorNoDevice: no CUDA-capable device is detected");
    return 100;
}
API int si_cuda_abi_version(void) { return FAKE_ABI; }
API const char* si_cuda_build_info(void) { return "fake"; }
API int si_cuda_versions(int* r, int* d, char* err, size_t n) { *r = 12080; *d = 0; return 0; }
API int si_cuda_device_count(int* out, char* err, size_t n) { *out = 0; return fail(err, n); }
API int si_cuda_device_name(int i, char* s, size_t sn, char* err, size_t n) { return fail(err, n); }
API int si_cuda_device_props(int i, int* a, int* b, uint64_t* m, char* err, size_t n) { return fail(err, n); }
API int si_cuda_self_test(int i, char* err, size_t n) { return fail(err, n); }
"""


def fake_plugin_source() -> str:
    defined = set(re.findall(r"API \w[\w\s\*]*?\b(si_cuda_\w+)\(", FAKE_PLUGIN))
    stubs = [f"API int {name}(void) {{ return 100; }}\n"
             for name in cuda_build.abi_functions() if name not in defined]
    return FAKE_PLUGIN + "".join(stubs)


PROBE = textwrap.dedent("""
    import json, sys
    import sparseinfer
    from sparseinfer import _cuda
    if len(sys.argv) > 2:
        _cuda.PLUGIN_PACKAGES = tuple(sys.argv[2].split(","))
    info = sparseinfer.cuda_info()
    out = {"info": info}
    try:
        sparseinfer.Model(sys.argv[1], n_ctx=64, device="cuda")
        out["cuda_error"] = None
    except sparseinfer.DeviceUnavailableError as error:
        out["cuda_error"] = str(error)
    with sparseinfer.Model(sys.argv[1], n_ctx=64, device="auto") as model:
        out["text"] = model.generate("hello", max_tokens=4, temperature=0)
    print(json.dumps(out))
""")


def run_probe(model_path, *, env_extra=None, packages=None, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "SPARSEINFER_CUDA_PLUGIN"}
    env.update(env_extra or {})
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath] + [p for p in [env.get("PYTHONPATH")] if p])
    args = [sys.executable, "-c", PROBE, model_path] + ([",".join(packages)] if packages else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def in_package_plugin() -> bool:
    import sparseinfer

    return os.path.exists(os.path.join(os.path.dirname(sparseinfer.__file__), LIB_NAME))


def c_compiler():
    for name in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name.split()[0]):
            return name.split()[0]
    return None


@pytest.fixture(scope="module")
def fake_plugins(tmp_path_factory):
    cc = c_compiler()
    if cc is None or sys.platform == "win32":
        pytest.skip("no C compiler to build the stand-in plugin")
    out = tmp_path_factory.mktemp("fake")
    src = out / "fake.c"
    src.write_text(fake_plugin_source())
    libs = {}
    for abi in (_cuda_abi(), 99):
        lib = out / f"abi{abi}" / LIB_NAME
        lib.parent.mkdir()
        subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-DFAKE_ABI={abi}", "-o", str(lib), str(src)],
                       check=True, capture_output=True, timeout=120, env=compiler_env())
        libs[abi] = str(lib)
    libs["current"] = libs[_cuda_abi()]
    return libs


def _cuda_abi() -> int:
    return cuda_build.header_defines()["SI_CUDA_ABI_VERSION"]


@pytest.fixture(scope="module")
def real_plugin_site(tmp_path_factory, nvcc_plugin):
    """site-packages as the wheels lay it out: sparseinfer_cudaNN/libsparseinfer_cuda.so and
    NVIDIA's runtime under nvidia/ (a link to the toolkit's)."""
    major = nvcc_plugin.major
    site = tmp_path_factory.mktemp("site")
    package = site / f"sparseinfer_cuda{major}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(nvcc_plugin.path, package / LIB_NAME)
    wheel_dir = site / "nvidia" / ("cuda_runtime" if major == 12 else f"cu{major}") / "lib"
    if nvcc_plugin.runtime is not None:
        wheel_dir.mkdir(parents=True)
        os.symlink(nvcc_plugin.runtime, wheel_dir / f"libcudart.so.{major}")
    return str(site), major, nvcc_plugin.runtime is not None


def test_loader_prototypes_match_the_header():
    """Every entry point of plugin_api.h has a ctypes prototype with as many arguments (the
    fallible ones end with err, err_len) and the same void-ness; the loader's ABI version,
    weight type ids and statuses are the header's."""
    from sparseinfer import _cuda

    declared = cuda_build.abi_functions()
    assert set(_cuda.PROTOTYPES) == set(declared)
    for name, (returns_void, n_params, reports_errors) in declared.items():
        restype, argtypes = _cuda.PROTOTYPES[name]
        assert len(argtypes) == n_params, name
        assert (restype is None) == returns_void, name
        assert (argtypes[-2:] == [ctypes.c_char_p, ctypes.c_size_t]) == reports_errors, name
    defines = cuda_build.header_defines()
    assert _cuda.ABI_VERSION == defines["SI_CUDA_ABI_VERSION"]
    assert _cuda.WEIGHT_TYPES == {k[len("SI_CUDA_TYPE_"):]: v for k, v in defines.items()
                                  if k.startswith("SI_CUDA_TYPE_")}
    assert (_cuda.ERROR_ARGUMENT, _cuda.ERROR_INDEX) == (defines["SI_CUDA_ERROR_ARGUMENT"],
                                                         defines["SI_CUDA_ERROR_INDEX"])
    assert (_cuda.ROPE_ADJACENT_PAIRS, _cuda.ROPE_HALVES) == (defines["SI_CUDA_ROPE_ADJACENT_PAIRS"],
                                                              defines["SI_CUDA_ROPE_HALVES"])


def test_no_plugin_is_a_clean_cpu_fallback(tiny_llama_path):
    if in_package_plugin():
        pytest.skip("this sparseinfer was built with its own CUDA plugin")
    out = run_probe(tiny_llama_path, packages=["sparseinfer_cuda_none_such"])
    info = out["info"]
    assert info["status"] == "no-plugin" and not info["available"]
    assert info["reason"].startswith("no CUDA plugin installed")
    assert "no CUDA plugin installed" in out["cuda_error"]
    assert isinstance(out["text"], str)


def test_no_device(tiny_llama_path, fake_plugins):
    out = run_probe(tiny_llama_path, env_extra={"SPARSEINFER_CUDA_PLUGIN": fake_plugins["current"]})
    info = out["info"]
    assert info["status"] == "no-device" and not info["available"], info
    assert info["reason"].startswith("CUDA plugin present but no GPU or driver"), info["reason"]
    assert "cudaErrorNoDevice" in info["reason"]
    assert info["runtime_version"] == "12.8" and info["driver_version"] is None
    assert "no GPU or driver" in out["cuda_error"]
    assert isinstance(out["text"], str)


def test_abi_mismatch(tiny_llama_path, fake_plugins):
    out = run_probe(tiny_llama_path, env_extra={"SPARSEINFER_CUDA_PLUGIN": fake_plugins[99]})
    assert out["info"]["status"] == "abi-mismatch"
    assert "ABI 99" in out["info"]["reason"] and "ABI 99" in out["cuda_error"]


def test_not_a_library(tiny_llama_path, tmp_path):
    bogus = tmp_path / LIB_NAME
    bogus.write_bytes(b"this is not a shared library")
    out = run_probe(tiny_llama_path, env_extra={"SPARSEINFER_CUDA_PLUGIN": str(bogus)})
    assert out["info"]["status"] == "load-failed"
    assert "could not be loaded" in out["info"]["reason"]
    assert isinstance(out["text"], str)


def test_real_plugin_from_site_packages(tiny_llama_path, real_plugin_site):
    if in_package_plugin():  # found first, before any plugin package
        pytest.skip("this sparseinfer was built with its own CUDA plugin")
    site, major, have_runtime = real_plugin_site
    out = run_probe(tiny_llama_path, pythonpath=site, packages=[f"sparseinfer_cuda{major}"])
    info = out["info"]
    assert info["source"] == f"sparseinfer-cuda{major}", info
    assert info["plugin"] == os.path.join(site, f"sparseinfer_cuda{major}", LIB_NAME)
    if have_runtime:  # preloaded from the wheel layout, not found by the system's search
        assert info["runtime"] is not None and info["runtime"].startswith(site), info
    assert info["build"].startswith(f"cuda {major}") and "archs 75" in info["build"]
    assert info["runtime_version"].startswith(f"{major}.")
    if info["status"] == "ok":  # a machine with a GPU: the model loads onto it
        assert info["available"] and info["devices"]
        assert out["cuda_error"] is None, out["cuda_error"]
    else:
        assert info["status"] == "no-device", info
        assert info["reason"].startswith("CUDA plugin present but no GPU or driver"), info["reason"]
        assert "no GPU or driver" in out["cuda_error"]
    assert isinstance(out["text"], str)


def test_cli_reports_cuda(tiny_llama_path, fake_plugins):
    env = dict(os.environ, SPARSEINFER_CUDA_PLUGIN=fake_plugins["current"])
    proc = subprocess.run([sys.executable, "-m", "sparseinfer", "info", "--system"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "isa:" in proc.stdout
    cuda_line = next(line for line in proc.stdout.splitlines() if line.startswith("cuda:"))
    assert "no GPU or driver" in cuda_line and "the CPU is used" in cuda_line
