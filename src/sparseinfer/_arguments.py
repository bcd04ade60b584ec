"""Checks of the arguments users pass (each error names the argument at fault) and the
defaults that depend on the machine (threads)."""

from __future__ import annotations

import math
import numbers
import operator
import os
import random
import re
from typing import Iterable, Optional, Sequence, Union

from .errors import DeviceUnavailableError

# More threads than this rarely helps token generation, which is bound by memory bandwidth.
MAX_DEFAULT_THREADS = 16
# A guard against typos such as n_threads=80000, each of which would become an OS thread.
MAX_THREADS = 1024
INT32_MAX = 2**31 - 1


def require_int(name: str, value: object, *, minimum: Optional[int] = None,
                maximum: Optional[int] = INT32_MAX) -> int:
    """value as an int within [minimum, maximum] (by default what the engine's int32 sizes
    hold), or an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def require_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def token_ids(tokens: Iterable[int]) -> list[int]:
    try:
        ids = [operator.index(token) for token in tokens]
    except TypeError:
        raise TypeError("tokens must be a sequence of int token ids") from None
    for i, token in enumerate(ids):
        if not 0 <= token <= INT32_MAX:  # the engine's ids are int32; it names one beyond n_vocab
            raise ValueError(f"token id {token} (at {i}) is not a valid token id")
    return ids


_MEMORY_UNITS = {"": 2**30, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6,
                 "mb": 10**6, "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30,
                 "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_memory_size(name: str, value: Union[float, str]) -> int:
    """Bytes in `value`: a number of GiB, or a string "<number><unit>" with units B, KB/MB/
    GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024); a bare number is GiB."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if unit not in _MEMORY_UNITS:
            raise ValueError(f"{name} must be a number of GiB or a size such as '6GiB' or "
                             f"'512MiB', got {value!r}")
        amount, scale = float(match.group(1)), _MEMORY_UNITS[unit]
    else:
        amount, scale = require_real(name, value), 2**30
    if not (amount >= 0 and math.isfinite(amount * scale)):
        raise ValueError(f"{name} must be a finite size >= 0, got {value!r}")
    return int(amount * scale)


def thread_count(n_threads: Optional[int]) -> int:
    if n_threads is None:
        return default_thread_count()
    n_threads = require_int("n_threads", n_threads, minimum=1)
    if n_threads > MAX_THREADS:
        raise ValueError(f"n_threads must be at most {MAX_THREADS}, got {n_threads}")
    return n_threads


def cuda_device(device: object) -> Optional[tuple[str, int]]:
    """None for the CPU; for "cuda" / "cuda:N", the CUDA plugin's path and the device index
    (DeviceUnavailableError with CUDA's reason when there is no such device)."""
    if device in ("auto", "cpu"):
        return None
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        index_text = device[len("cuda:"):] if device.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise ValueError(f"device must be 'cuda' or 'cuda:N' with N a device index, got {device!r}")
        from ._cuda import cuda_info  # finds and loads the CUDA plugin, once

        info = cuda_info()
        if not info["available"]:
            raise DeviceUnavailableError(f"device={device!r}: {info['reason']}; use device='cpu' or 'auto'")
        index = int(index_text)
        if index >= len(info["devices"]):
            raise DeviceUnavailableError(f"device={device!r}: {info['reason']}, and there is no "
                                         f"device {index}; use device='cuda:0' or 'cpu'")
        return os.path.abspath(info["plugin"]), index
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def stop_strings(stop: Union[str, Sequence[str], None]) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, Iterable):
        stops = list(stop)
    else:
        raise TypeError(f"stop must be a str or a sequence of str, got {stop!r}")
    for s in stops:
        if not isinstance(s, str):
            raise TypeError(f"stop must be a str or a sequence of str, got an item {s!r}")
        if not s:
            raise ValueError("stop strings must not be empty")
    return stops


def resolve_seed(seed: Optional[int]) -> int:
    if seed is None:
        return random.SystemRandom().getrandbits(64)
    return require_int("seed", seed, minimum=0, maximum=2**64 - 1)


def _physical_core_count(cpus: Sequence[int]) -> Optional[int]:
    """Cores among `cpus`, counting hyper-threads once (Linux sysfs; None elsewhere)."""
    siblings = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                siblings.add(f.read().strip())
        except OSError:
            return None
    return len(siblings) or None


def default_thread_count() -> int:
    """Physical cores this process may run on, at most MAX_DEFAULT_THREADS."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows; a sandbox that refuses the call
        cpus = list(range(os.cpu_count() or 1))
    cores = _physical_core_count(cpus) or len(cpus)
    return max(1, min(cores, MAX_DEFAULT_THREADS))


# PowerInfer reads a PWRI file's neuron threshold from this variable when it is set.
SPARSE_THRESHOLD_VARIABLE = "LLAMA_SPARSE_PRED_THRESHOLD"


def sparse_threshold(value: Optional[float], path: str) -> Optional[float]:
    """The neuron threshold a model at `path` is loaded with: `value` when given, else the
    PowerInfer variable's for a PowerInfer file (magic PWRI) when it is set, else None (the
    file's own)."""
    if value is not None:
        threshold = require_real("sparse_threshold", value)
        if not math.isfinite(threshold):
            raise ValueError(f"sparse_threshold must be a finite number, got {value!r}")
        return threshold
    text = os.environ.get(SPARSE_THRESHOLD_VARIABLE, "")
    if not text or not _has_powerinfer_magic(path):
        return None
    try:
        threshold = float(text)
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        raise ValueError(f"the environment variable {SPARSE_THRESHOLD_VARIABLE}={text!r} is not a finite number")
    return threshold


def _has_powerinfer_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PWRI"
    except OSError:
        return False  # the loader names what is wrong with the file

