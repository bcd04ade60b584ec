"""Finds, loads and asks the CUDA plugin (libsparseinfer_cuda.so / sparseinfer_cuda.dll).

The CUDA backend is a separate shared library behind a small C ABI (cpp/src/cuda/plugin_api.h),
shipped in its own distribution (`pip install "sparseinfer[cuda12]"` installs
sparseinfer-cuda12) or built into this package from source (-DSPARSEINFER_CUDA=ON). It is
loaded here with ctypes, so the native core needs no CUDA and no plugin to import, and a
missing plugin, runtime, driver or GPU is a sentence in `cuda_info()`, never a crash.

Where the plugin is looked for, first found wins:
  1. the file named by the environment variable SPARSEINFER_CUDA_PLUGIN;
  2. this package's directory (a source build with -DSPARSEINFER_CUDA=ON);
  3. the installed plugin packages, sparseinfer_cuda13 then sparseinfer_cuda12.
A plugin from a `sparseinfer_cudaNN` package links NVIDIA's runtime dynamically: before
loading it, the runtime from NVIDIA's wheel (nvidia-cuda-runtime-cu12: nvidia/cuda_runtime/;
CUDA 13's nvidia-cuda-runtime: nvidia/cu13/) is loaded by path from site-packages, as JAX,
CuPy and PyTorch do, so no LD_LIBRARY_PATH or PATH is needed.

This module uses the standard library alone (cuda/check_plugin.py loads it by path, without
the rest of the package).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys
import threading
from typing import Any, Optional

ABI_VERSION = 1  # SI_CUDA_ABI_VERSION in cpp/src/cuda/plugin_api.h
PLUGIN_PACKAGES = ("sparseinfer_cuda13", "sparseinfer_cuda12")
ENV_PLUGIN = "SPARSEINFER_CUDA_PLUGIN"
INSTALL_HINT = ("CUDA does not exist on macOS" if sys.platform == "darwin"
                else 'pip install "sparseinfer[cuda12]" adds one')

_IS_WINDOWS = sys.platform == "win32"
LIBRARY_NAME = "sparseinfer_cuda.dll" if _IS_WINDOWS else "libsparseinfer_cuda.so"

# status values of cuda_info()
NO_PLUGIN = "no-plugin"        # nothing installed: the CPU it is
LOAD_FAILED = "load-failed"    # a plugin file is there but could not be loaded
ABI_MISMATCH = "abi-mismatch"  # the plugin is from another sparseinfer release
NO_DEVICE = "no-device"        # plugin loaded; no driver, or no GPU visible
OK = "ok"                      # plugin loaded, and at least one GPU answers

_ERR_LEN = 512
_lock = threading.Lock()
_cached: Optional[dict[str, Any]] = None
_plugin: Optional[ctypes.CDLL] = None
_keep: list[Any] = []  # runtime libraries and DLL directory handles that must stay loaded


class Plugin:
    """A loaded plugin library with typed entry points (argtypes set once)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        c_int_p, c_char_p, size_t = ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_size_t
        lib.si_cuda_abi_version.restype = ctypes.c_int
        lib.si_cuda_abi_version.argtypes = []
        lib.si_cuda_build_info.restype = ctypes.c_char_p
        lib.si_cuda_build_info.argtypes = []
        lib.si_cuda_versions.restype = ctypes.c_int
        lib.si_cuda_versions.argtypes = [c_int_p, c_int_p, c_char_p, size_t]
        lib.si_cuda_device_count.restype = ctypes.c_int
        lib.si_cuda_device_count.argtypes = [c_int_p, c_char_p, size_t]
        lib.si_cuda_device_name.restype = ctypes.c_int
        lib.si_cuda_device_name.argtypes = [ctypes.c_int, c_char_p, size_t, c_char_p, size_t]
        lib.si_cuda_device_props.restype = ctypes.c_int
        lib.si_cuda_device_props.argtypes = [ctypes.c_int, c_int_p, c_int_p,
                                             ctypes.POINTER(ctypes.c_uint64), c_char_p, size_t]
        lib.si_cuda_self_test.restype = ctypes.c_int
        lib.si_cuda_self_test.argtypes = [ctypes.c_int, c_char_p, size_t]

    @staticmethod
    def _check(rc: int, err: Any) -> None:
        if rc != 0:
            raise RuntimeError(err.value.decode("utf-8", "replace") or f"CUDA error {rc}")

    def abi_version(self) -> int:
        return int(self.lib.si_cuda_abi_version())

    def build_info(self) -> str:
        return (self.lib.si_cuda_build_info() or b"").decode("utf-8", "replace")

    def versions(self) -> tuple[int, int]:
        runtime, driver, err = ctypes.c_int(0), ctypes.c_int(0), ctypes.create_string_buffer(_ERR_LEN)
        self._check(self.lib.si_cuda_versions(ctypes.byref(runtime), ctypes.byref(driver), err, _ERR_LEN), err)
        return runtime.value, driver.value

    def device_count(self) -> int:
        count, err = ctypes.c_int(0), ctypes.create_string_buffer(_ERR_LEN)
        self._check(self.lib.si_cuda_device_count(ctypes.byref(count), err, _ERR_LEN), err)
        return count.value

    def device(self, index: int) -> dict[str, Any]:
        name, err = ctypes.create_string_buffer(256), ctypes.create_string_buffer(_ERR_LEN)
        self._check(self.lib.si_cuda_device_name(index, name, 256, err, _ERR_LEN), err)
        major, minor, memory = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_uint64(0)
        self._check(self.lib.si_cuda_device_props(index, ctypes.byref(major), ctypes.byref(minor),
                                                  ctypes.byref(memory), err, _ERR_LEN), err)
        return {"index": index, "name": name.value.decode("utf-8", "replace"),
                "compute_capability": f"{major.value}.{minor.value}",
                "total_memory": int(memory.value)}

    def self_test(self, index: int) -> None:
        err = ctypes.create_string_buffer(_ERR_LEN)
        self._check(self.lib.si_cuda_self_test(index, err, _ERR_LEN), err)


def _version_text(v: int) -> Optional[str]:
    """12080 -> '12.8' (CUDA's encoding: 1000 * major + 10 * minor)."""
    return f"{v // 1000}.{(v % 1000) // 10}" if v > 0 else None


def _site_dirs() -> list[str]:
    dirs: list[str] = []
    for entry in sys.path:
        if entry and os.path.isdir(entry) and entry not in dirs:
            dirs.append(entry)
    return dirs


def find_plugin() -> tuple[Optional[str], Optional[int], str]:
    """(path, CUDA major it links, where from); path None when no plugin is installed.
    The major is known for the plugin packages and None otherwise."""
    explicit = os.environ.get(ENV_PLUGIN)
    if explicit:
        return explicit, None, f"${ENV_PLUGIN}"
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)
    if os.path.isfile(here):
        return here, None, "built into sparseinfer"
    for package in PLUGIN_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            path = os.path.join(location, LIBRARY_NAME)
            if os.path.isfile(path):
                return path, int(package.rsplit("cuda", 1)[1]), package.replace("_", "-")
    return None, None, ""


def find_runtime(major: int) -> Optional[str]:
    """NVIDIA's CUDA runtime library of this major version, from its PyPI wheel in
    site-packages (nvidia-cuda-runtime-cu12, or CUDA 13's nvidia-cuda-runtime)."""
    if _IS_WINDOWS:
        patterns = [os.path.join("nvidia", "cuda_runtime", "bin", f"cudart64_{major}*.dll"),
                    os.path.join("nvidia", f"cu{major}", "bin", "*", f"cudart64_{major}*.dll"),
                    os.path.join("nvidia", f"cu{major}", "bin", f"cudart64_{major}*.dll")]
    else:
        patterns = [os.path.join("nvidia", "cuda_runtime", "lib", f"libcudart.so.{major}"),
                    os.path.join("nvidia", f"cu{major}", "lib", f"libcudart.so.{major}")]
    for site in _site_dirs():
        for pattern in patterns:
            found = sorted(glob.glob(os.path.join(site, pattern)))
            if found:
                return found[0]
    return None


def _load_runtime(path: str) -> None:
    if _IS_WINDOWS:
        _keep.append(os.add_dll_directory(os.path.dirname(path)))
        _keep.append(ctypes.WinDLL(path))
    else:
        # Global, so that the plugin's DT_NEEDED libcudart.so.N resolves to this copy.
        _keep.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))


def _load_library(path: str) -> ctypes.CDLL:
    if _IS_WINDOWS:
        cuda_path = os.environ.get("CUDA_PATH")  # a toolkit's runtime, for source builds
        if cuda_path and os.path.isdir(os.path.join(cuda_path, "bin")):
            _keep.append(os.add_dll_directory(os.path.join(cuda_path, "bin")))
    # Windows: the default search of a DLL loaded by path covers its own folder and the
    # add_dll_directory() folders, and reuses a cudart64_NN.dll already loaded.
    return ctypes.CDLL(os.path.abspath(path))


def probe() -> dict[str, Any]:
    """Finds and loads the plugin and asks it for devices; never raises. See cuda_info()."""
    global _plugin
    info: dict[str, Any] = {
        "available": False, "status": NO_PLUGIN, "reason": "", "plugin": None, "source": None,
        "runtime": None, "build": None, "runtime_version": None, "driver_version": None,
        "devices": [],
    }
    path, major, source = find_plugin()
    if path is None:
        info["reason"] = f"no CUDA plugin installed ({INSTALL_HINT})"
        return info
    info["plugin"], info["source"] = path, source
    try:
        runtime = find_runtime(major) if major is not None else None
        if runtime is not None:
            _load_runtime(runtime)
            info["runtime"] = runtime
        lib = _load_library(path)
    except OSError as error:
        hint = ""
        if major is not None and info["runtime"] is None:
            wheel = "nvidia-cuda-runtime-cu12" if major == 12 else f"nvidia-cuda-runtime (CUDA {major})"
            hint = f"; NVIDIA's CUDA {major} runtime was not found in site-packages (pip install {wheel})"
        info["status"] = LOAD_FAILED
        info["reason"] = f"CUDA plugin {path} ({source}) could not be loaded: {error}{hint}"
        return info
    try:
        abi_function = lib.si_cuda_abi_version
    except AttributeError:
        info["status"] = LOAD_FAILED
        info["reason"] = f"{path} ({source}) is not a sparseinfer CUDA plugin"
        return info
    abi_function.restype, abi_function.argtypes = ctypes.c_int, []
    abi = int(abi_function())
    if abi != ABI_VERSION:
        info["status"] = ABI_MISMATCH
        info["reason"] = (f"CUDA plugin {path} ({source}) speaks ABI {abi} and this sparseinfer "
                          f"speaks {ABI_VERSION}: install matching releases")
        return info
    try:
        plugin = Plugin(lib)
    except AttributeError as error:
        info["status"] = LOAD_FAILED
        info["reason"] = f"CUDA plugin {path} ({source}) lacks an entry point: {error}"
        return info
    info["build"] = plugin.build_info()
    try:
        runtime_version, driver_version = plugin.versions()
        info["runtime_version"] = _version_text(runtime_version)
        info["driver_version"] = _version_text(driver_version)
        count = plugin.device_count()
    except RuntimeError as error:
        info["status"] = NO_DEVICE
        driver = "no NVIDIA driver" if info["driver_version"] is None else f"driver CUDA {info['driver_version']}"
        info["reason"] = f"CUDA plugin present but no GPU or driver ({driver}: {error})"
        return info
    if count == 0:
        info["status"] = NO_DEVICE
        info["reason"] = "CUDA plugin present but no GPU or driver (no CUDA device visible)"
        return info
    devices = []
    for index in range(count):
        try:
            devices.append(plugin.device(index))
        except RuntimeError as error:
            devices.append({"index": index, "error": str(error)})
    info["devices"] = devices
    info["status"], info["available"] = OK, True
    names = ", ".join(d.get("name", "?") for d in devices)
    info["reason"] = f"{count} CUDA device(s): {names}"
    _plugin = plugin
    return info


def cuda_info(refresh: bool = False) -> dict[str, Any]:
    """What sparseinfer found of CUDA on this machine, as a dict (a copy):

    - ``available`` (bool): a plugin loaded and at least one GPU answered;
    - ``status``: "ok", "no-plugin", "load-failed", "abi-mismatch" or "no-device";
    - ``reason``: one sentence for people, e.g. "no CUDA plugin installed (...)" or
      "CUDA plugin present but no GPU or driver (...)";
    - ``plugin``, ``source``: the library's path and where it came from;
    - ``runtime``: NVIDIA's runtime library loaded from site-packages, if one was;
    - ``build``: what the plugin was compiled with (CUDA version, GPU architectures);
    - ``runtime_version``, ``driver_version``: "12.8"-style strings, or None;
    - ``devices``: a list of {index, name, compute_capability, total_memory}.

    The plugin is looked for and loaded once per process; refresh=True looks again (a
    library once loaded stays loaded)."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = probe()
        return {k: (list(v) if isinstance(v, list) else v) for k, v in _cached.items()}


def plugin() -> Optional[Plugin]:
    """The loaded plugin when a GPU is available, else None (for the CUDA backend)."""
    cuda_info()
    return _plugin
