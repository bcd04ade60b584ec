"""What makes a speed figure worth reporting, shared by the benchmarks.

A decode step reads every weight it uses from memory, so its speed is only meaningful on a
quiet machine, with the weights in the page cache, next to the memory's streaming rate:
- `Quiet` samples how busy the CPUs are (/proc/stat; the load average elsewhere) before the
  run and between rounds, waits a while for the machine to calm down, and otherwise refuses
  to measure or, if asked, marks the result unreliable. A load average read at the end of a
  run includes the benchmark's own threads, so it cannot say whether the machine was quiet.
- `make_resident` reads a file through the page cache and `residency` says what share of it
  is there (mincore): a memory-mapped file can be dropped between runs, and a decode that
  reads from disk is not a decode speed.
- `read_bandwidth` is the machine's streaming read rate (the engine's own probe), measured in
  the same run as the engines.
- Engines are alternated in rounds (A, B, C, A, B, C, ...), so drift hits each alike; `spread`
  gives the best and the median of each engine's rounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import statistics
import sys
import time
from typing import Callable, Optional


def cpu_busy_fraction(seconds: float = 1.0) -> Optional[float]:
    """Share of all CPUs' time spent busy over the next `seconds` (None without /proc/stat)."""

    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


class Quiet:
    """Checks that the machine is quiet before the benchmark and between its rounds.

    busy_limit: the share of all CPUs' time that counts as quiet (default 0.10: on two CPUs,
    a fifth of one core). wait: seconds to wait for a busy machine before giving up.
    allow_busy: measure anyway, without waiting, and mark the result unreliable.
    """

    def __init__(self, busy_limit: float = 0.10, wait: float = 60.0, allow_busy: bool = False,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
        self.busy_limit, self.allow_busy, self.log = busy_limit, allow_busy, log
        self.wait = 0.0 if allow_busy else wait
        self.checks: list[dict] = []

    def _busy(self) -> float:
        busy = cpu_busy_fraction()
        if busy is None:  # no /proc/stat (macOS, Windows): the load average per CPU
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            busy = load / (os.cpu_count() or 1)
        return busy

    def check(self, when: str) -> bool:
        """Waits up to `wait` seconds for a quiet second; records and returns whether it came.
        Exits the program when the machine stays busy, unless allow_busy."""
        start = time.monotonic()
        busy = self._busy()
        while busy > self.busy_limit and time.monotonic() - start < self.wait:
            busy = self._busy()
        quiet = busy <= self.busy_limit
        record = dict(when=when, busy=round(busy, 4), quiet=quiet,
                      load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        self.checks.append(record)
        if not quiet:
            msg = (f"the machine is busy {when}: {busy:.0%} of the CPUs' time was in use (limit "
                   f"{self.busy_limit:.0%})" + (f" after waiting {self.wait:.0f} s" if self.wait else ""))
            if not self.allow_busy:
                sys.exit(f"{msg}; stop what is running, or pass --allow-busy to measure anyway "
                         "(the results are then marked unreliable)")
            self.log(f"warning: {msg}; the results will be marked unreliable")
        return quiet

    @property
    def all_quiet(self) -> bool:
        return all(c["quiet"] for c in self.checks)

    def summary(self) -> dict:
        """What goes into a result file: every check, and whether all of them were quiet."""
        return dict(busy_limit=self.busy_limit, all_quiet=self.all_quiet, checks=self.checks)


def residency(path: str) -> Optional[float]:
    """Share of the file's pages in the page cache (mincore; None where unavailable)."""
    size = os.path.getsize(path)
    if size == 0 or not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = ctypes.create_string_buffer(pages)
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return sum(b & 1 for b in vec.raw) / pages
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)


def make_resident(path: str) -> Optional[float]:
    """Reads the whole file, so its pages are in the page cache; returns residency() after."""
    with open(path, "rb", buffering=0) as f:
        while f.read(16 << 20):
            pass
    return residency(path)


def read_bandwidth(threads: int, size: int = 1 << 30) -> float:
    """The machine's streaming read rate for this many threads, in bytes per second."""
    from sparseinfer import _core

    return _core.memory_read_bandwidth(size, threads, 3)


def spread(values: list[float]) -> dict:
    """Best (highest), median and every value of one engine's rounds."""
    return dict(best=max(values), median=statistics.median(values), rounds=list(values))
