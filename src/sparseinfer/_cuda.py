"""Finds, loads and asks the CUDA plugin (libsparseinfer_cuda.so / sparseinfer_cuda.dll).

The CUDA backend is a separate shared library behind a small C ABI (cpp/src/cuda_abi/plugin_api.h),
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

Once loaded, Plugin binds every entry point of the ABI (PROTOTYPES), and Context wraps a
device context of the plugin (its stream, device buffers, kernel calls) for the tests
(tests/gpu/test_cuda_kernels.py). The engine's GPU forward pass (cpp/src/gpu) gets the found
library's path from Model(device="cuda") and opens it itself (dlopen returns the copy loaded
here, with NVIDIA's runtime already in place). SPARSEINFER_CUDA_PLUGIN is also how the tests
point everything at the CPU emulator's build (tests/gpu/test_gpu_forward.py).

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

ABI_VERSION = 5  # SI_CUDA_ABI_VERSION in cpp/src/cuda_abi/plugin_api.h
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


# ggml's ids of the weight types the plugin's kernels read (SI_CUDA_TYPE_* in plugin_api.h).
WEIGHT_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8}

# si_cuda_rope's layouts (SI_CUDA_ROPE_* in plugin_api.h): which values of a head turn together.
ROPE_ADJACENT_PAIRS = 0
ROPE_HALVES = 1

# si_cuda_activate's activations (SI_CUDA_ACTIVATION_* in plugin_api.h).
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "relu": 2}

# Statuses of the plugin's own (CUDA's error codes are positive).
ERROR_ARGUMENT = -2
ERROR_INDEX = -3

_int, _i64, _u64, _size = ctypes.c_int, ctypes.c_int64, ctypes.c_uint64, ctypes.c_size_t
_ptr, _str = ctypes.c_void_p, ctypes.c_char_p
_int_p = ctypes.POINTER(ctypes.c_int)
_ERR = [_str, _size]  # every fallible entry point ends with (char* err, size_t err_len)

# The C ABI (plugin_api.h): name -> (restype, argtypes). Device addresses and host buffers
# pass as void pointers (int addresses, or ctypes objects).
PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "si_cuda_abi_version": (_int, []),
    "si_cuda_build_info": (_str, []),
    "si_cuda_versions": (_int, [_int_p, _int_p] + _ERR),
    "si_cuda_device_count": (_int, [_int_p] + _ERR),
    "si_cuda_device_name": (_int, [_int, _str, _size] + _ERR),
    "si_cuda_device_props": (_int, [_int, _int_p, _int_p, ctypes.POINTER(_u64)] + _ERR),
    "si_cuda_self_test": (_int, [_int] + _ERR),
    # contexts and device memory
    "si_cuda_context_create": (_int, [_int, ctypes.POINTER(_ptr)] + _ERR),
    "si_cuda_context_destroy": (None, [_ptr]),
    "si_cuda_synchronize": (_int, [_ptr] + _ERR),
    "si_cuda_memory_info": (_int, [_ptr, ctypes.POINTER(_u64), ctypes.POINTER(_u64)] + _ERR),
    "si_cuda_alloc": (_int, [_ptr, _size, ctypes.POINTER(_ptr)] + _ERR),
    "si_cuda_free": (_int, [_ptr, _ptr] + _ERR),
    "si_cuda_upload": (_int, [_ptr, _ptr, _ptr, _size] + _ERR),
    "si_cuda_copy": (_int, [_ptr, _ptr, _ptr, _size] + _ERR),
    "si_cuda_download": (_int, [_ptr, _ptr, _ptr, _size] + _ERR),
    "si_cuda_memset": (_int, [_ptr, _ptr, _int, _size] + _ERR),
    # ctx, type, w, rows, cols, x, n_tokens, y
    "si_cuda_matmul": (_int, [_ptr, _int, _ptr, _i64, _i64, _ptr, _i64, _ptr] + _ERR),
    # ctx, type, w, rows, cols, row_ids, count, max_count, x, n_tokens, y
    "si_cuda_matmul_rows": (_int, [_ptr, _int, _ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr, _i64, _ptr] + _ERR),
    # ctx, x, weight, n_rows, n, eps, out
    "si_cuda_rms_norm": (_int, [_ptr, _ptr, _ptr, _i64, _i64, ctypes.c_float, _ptr] + _ERR),
    # ctx, x, weight, bias, n_rows, n, eps, out
    "si_cuda_layer_norm": (_int, [_ptr, _ptr, _ptr, _ptr, _i64, _i64, ctypes.c_float, _ptr] + _ERR),
    # ctx, y, bias, n_rows, n
    "si_cuda_add_bias": (_int, [_ptr, _ptr, _ptr, _i64, _i64] + _ERR),
    # ctx, x, n_tokens, n_heads, head_dim, rope_dim, positions, inverse_frequencies, magnitude, layout
    "si_cuda_rope": (_int, [_ptr, _ptr, _i64, _i64, _i64, _i64, _ptr, _ptr, ctypes.c_double, _int] + _ERR),
    # ctx, q, k, v, k_cache, v_cache, n_ctx, n_past, n_tokens, n_head, n_head_kv, head_dim, scale,
    # window, out
    "si_cuda_attention": (_int, [_ptr] + [_ptr] * 5 + [_i64] * 6 + [ctypes.c_float, _i64, _ptr] + _ERR),
    # ctx, y, x, n, scale
    "si_cuda_add": (_int, [_ptr, _ptr, _ptr, _i64, ctypes.c_float] + _ERR),
    # ctx, activation, x, factor, n
    "si_cuda_activate": (_int, [_ptr, _int, _ptr, _ptr, _i64] + _ERR),
    # ctx, fc1_type, fc1, rank, n_embd, fc2_type, fc2, n_ff, x, n_tokens, hidden, scores
    "si_cuda_ffn_predict": (_int, [_ptr, _int, _ptr, _i64, _i64, _int, _ptr, _i64, _ptr, _i64, _ptr, _ptr] + _ERR),
    # ctx, scores, n_tokens, n_ff, threshold, candidates, n_candidates, rows, count, mask
    "si_cuda_ffn_select": (_int, [_ptr, _ptr, _i64, _i64, ctypes.c_float, _ptr, _i64, _ptr, _ptr, _ptr, _ptr] + _ERR),
    # ctx, gate_type, gate, relu_bias, up_type, up, n_rows, n_embd, rows, count, max_count, mask, x,
    # n_tokens, relu_up, h
    "si_cuda_ffn_gate_up": (_int, [_ptr, _int, _ptr, _ptr, _int, _ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr, _ptr,
                                   _i64, _int, _ptr] + _ERR),
    # ctx, down_type, down_t, n_rows, n_embd, rows, count, max_count, h, n_tokens, y
    "si_cuda_ffn_down": (_int, [_ptr, _int, _ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr, _i64, _ptr] + _ERR),
}


class CudaError(RuntimeError):
    """A plugin call failed: `status` is CUDA's error code or ERROR_ARGUMENT / ERROR_INDEX."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _buffer_address(data: Any, writable: bool) -> tuple[Any, int]:
    """(a ctypes object keeping the memory alive, its size) for a buffer-protocol object."""
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("the host buffer must be C-contiguous")
    view = view.cast("B")
    if view.readonly:
        if writable:
            raise ValueError("the host buffer is read-only")
        return ctypes.c_char_p(view.tobytes()), view.nbytes
    return (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes


class Plugin:
    """A loaded plugin library with typed entry points (PROTOTYPES, set once)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        for name, (restype, argtypes) in PROTOTYPES.items():
            function = getattr(lib, name)  # AttributeError: the plugin lacks an entry point
            function.restype, function.argtypes = restype, argtypes

    @staticmethod
    def _check(rc: int, err: Any) -> None:
        if rc != 0:
            raise CudaError(err.value.decode("utf-8", "replace") or f"CUDA error {rc}", rc)

    def call(self, name: str, *args: Any) -> None:
        """Calls a fallible entry point with (err, err_len) appended; raises CudaError."""
        err = ctypes.create_string_buffer(_ERR_LEN)
        self._check(getattr(self.lib, name)(*args, err, _ERR_LEN), err)

    def abi_version(self) -> int:
        return int(self.lib.si_cuda_abi_version())

    def build_info(self) -> str:
        return (self.lib.si_cuda_build_info() or b"").decode("utf-8", "replace")

    def versions(self) -> tuple[int, int]:
        runtime, driver = ctypes.c_int(0), ctypes.c_int(0)
        self.call("si_cuda_versions", ctypes.byref(runtime), ctypes.byref(driver))
        return runtime.value, driver.value

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self.call("si_cuda_device_count", ctypes.byref(count))
        return count.value

    def device(self, index: int) -> dict[str, Any]:
        name = ctypes.create_string_buffer(256)
        self.call("si_cuda_device_name", index, name, 256)
        major, minor, memory = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_uint64(0)
        self.call("si_cuda_device_props", index, ctypes.byref(major), ctypes.byref(minor),
                  ctypes.byref(memory))
        return {"index": index, "name": name.value.decode("utf-8", "replace"),
                "compute_capability": f"{major.value}.{minor.value}",
                "total_memory": int(memory.value)}

    def self_test(self, index: int) -> None:
        self.call("si_cuda_self_test", index)

    def context(self, device: int = 0) -> "Context":
        return Context(self, device)


class Context:
    """A plugin context (a device and its stream) with device memory helpers. Kernels are run
    with run(name, *args): the context goes first and (err, err_len) last, as in the C ABI.
    Device addresses are ints. Use it as a context manager or call close()."""

    def __init__(self, plugin: Plugin, device: int = 0) -> None:
        self.plugin = plugin
        handle = ctypes.c_void_p()
        plugin.call("si_cuda_context_create", device, ctypes.byref(handle))
        self.handle: Optional[int] = handle.value
        self._buffers: set[int] = set()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Frees the buffers still allocated through this object, then the context."""
        if self.handle is None:
            return
        for address in list(self._buffers):
            self.free(address)
        self.plugin.lib.si_cuda_context_destroy(self.handle)
        self.handle = None

    def run(self, name: str, *args: Any) -> None:
        self.plugin.call(name, self.handle, *args)

    def synchronize(self) -> None:
        self.run("si_cuda_synchronize")

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of the device."""
        free, total = ctypes.c_uint64(0), ctypes.c_uint64(0)
        self.run("si_cuda_memory_info", ctypes.byref(free), ctypes.byref(total))
        return int(free.value), int(total.value)

    def alloc(self, nbytes: int) -> int:
        address = ctypes.c_void_p()
        self.run("si_cuda_alloc", nbytes, ctypes.byref(address))
        if address.value:
            self._buffers.add(address.value)
        return address.value or 0

    def free(self, address: int) -> None:
        self._buffers.discard(address)
        self.run("si_cuda_free", address)

    def upload(self, address: int, data: Any) -> None:
        """Copies a host buffer (bytes, array.array, a NumPy array...) to a device address."""
        source, nbytes = _buffer_address(data, writable=False)
        self.run("si_cuda_upload", address, source, nbytes)

    def to_device(self, data: Any) -> int:
        """A new device buffer holding a copy of the host buffer."""
        nbytes = memoryview(data).nbytes
        address = self.alloc(nbytes)
        if nbytes:
            self.upload(address, data)
        return address

    def download(self, address: int, out: Any) -> None:
        """Fills a writable host buffer from a device address (after the queued work)."""
        target, nbytes = _buffer_address(out, writable=True)
        self.run("si_cuda_download", target, address, nbytes)

    def memset(self, address: int, value: int, nbytes: int) -> None:
        self.run("si_cuda_memset", address, value, nbytes)


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
