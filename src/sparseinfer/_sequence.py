"""One sequence of a Model: its native session, the lock that gives one call at a time the
use of it, the tokens its KV cache holds (for prefix reuse), cancel, Ctrl-C, and fork()."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import weakref
from typing import Any, Iterator, Optional

from . import _core
from .errors import DeviceUnavailableError

@dataclasses.dataclass
class CallStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # of the prompt, whose KV entries the previous calls left
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0


# Objects that mend themselves in a child made by fork(): each one's _after_fork_in_child()
# runs there (os.register_at_fork at the end of this module).
fork_aware: "weakref.WeakSet[Any]" = weakref.WeakSet()
# The parent's native sessions and GPU weights, in a forked child: never used or freed there.
orphaned_by_fork: list[Any] = []


def _after_fork_in_child() -> None:
    for obj in list(fork_aware):
        obj._after_fork_in_child()


def interruptible(work, cancel) -> Any:
    """work() (native code that releases the GIL) run so that Ctrl-C stops it at once.

    Python runs signal handlers in the main thread only, and not while that thread is inside
    native code: a long prompt evaluated there would hold Ctrl-C back until it was done. So
    work() runs in a helper thread while the main thread waits, with a SIGINT handler that
    calls cancel() (the work stops within a layer); once the work has ended, the interrupt is
    raised as KeyboardInterrupt. The handler raises nothing itself, so the main thread never
    leaves while the helper still uses the session. Where SIGINT is not Python's default
    (ignored, or an application's own handler), work() runs here, as before.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return work()
    outcome: dict[str, Any] = {}
    done = threading.Event()
    interrupted = False

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error
        finally:
            done.set()

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        threading.Thread(target=run, name="sparseinfer-eval", daemon=True).start()
        done.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


class Sequence:
    """One native session (KV cache, scratch, thread pool) and what lets one call at a time
    use it safely from any thread: the current call's id, cancellation, per-call stats."""

    def __init__(self, model: _core.Model, *, n_ctx: int, n_threads: int, sparse: bool,
                 owner: str, device: Optional[_core.DeviceModel] = None) -> None:
        self.native: Optional[_core.Session] = _core.Session(
            model, n_ctx, n_threads, sparse=sparse, device=device)
        self.model, self.sparse, self.device = model, sparse, device  # for a new session after fork()
        self.n_ctx, self.n_threads, self.owner = n_ctx, n_threads, owner
        self.forked = False  # in a child made by fork(), until the native session is made anew
        fork_aware.add(self)
        self.lock = threading.Lock()  # held by one native step (an eval, a sample) at a time
        self.call_lock = threading.Lock()  # orders call starts against cancel()
        self.call_id = 0  # bumped by every call that resets the session
        self.last_stats = CallStats()
        self.last_layers: list[float] = []  # active fractions as stats() last read them
        # The tokens whose keys and values the native session holds, positions 0..n_past-1
        # (changed only under self.lock): a prompt that starts with some of them evaluates
        # only the rest. The engine computes a token the same, bit for bit, whichever
        # evaluation it came in (batch invariance, cpp/src/cpu/kernels.h), so reusing them
        # changes no result.
        self.cached: list[int] = []
        self.closed = False

    def check_open(self, *, during_call: bool = False) -> None:
        if self.closed:
            raise ValueError(f"{self.owner} was closed during the call" if during_call
                             else f"{self.owner} is closed")

    def _after_fork_in_child(self) -> None:
        # Only the forking thread lives on in the child: a lock another thread held stays
        # held, and the native session's worker threads are gone (a call would wait for them
        # forever, and so would freeing it: it is kept, unused, in orphaned_by_fork).
        self.lock = threading.Lock()
        self.call_lock = threading.Lock()
        if self.native is not None:
            orphaned_by_fork.append(self.native)
            self.forked = True

    def renew_after_fork(self) -> None:
        """In a child made by fork(): a new native session (with its own threads) in place of
        the parent's; the context starts empty, and a stream begun before the fork ends."""
        if self.device is not None:
            raise DeviceUnavailableError(
                f"{self.owner} has its weights on a GPU, which CUDA does not let a process made "
                f"by fork() use; open the Model in the child, or start the child with "
                f"multiprocessing's 'spawn' or 'forkserver' method")
        self.native = _core.Session(self.model, self.n_ctx, self.n_threads, sparse=self.sparse)
        self.cached = []
        self.call_id += 1
        self.forked = False

    def start_call(self, *, prompt_tokens: int) -> tuple[int, CallStats]:
        """Claims the session for a new call: a stream still open ends at its next step."""
        self.check_open()
        with self.lock:
            if self.forked:
                self.renew_after_fork()
            self.check_open()
            with self.call_lock:
                self.call_id += 1
                self.native.clear_cancel()
                self.native.reset_stats()
                self.last_stats = CallStats(prompt_tokens=prompt_tokens)
                self.last_layers = []
                return self.call_id, self.last_stats

    @contextlib.contextmanager
    def exclusive(self, call_id: int) -> Iterator[_core.Session]:
        """The native session, for one step of the call `call_id`, used by no other thread."""
        with self.lock:
            self.check_open(during_call=True)
            if self.forked:
                self.renew_after_fork()
            if call_id != self.call_id:
                raise RuntimeError("this generation was ended by a later call on the same "
                                   "session (a session runs one sequence at a time; use "
                                   "Model.session() for one per thread)")
            yield self.native

    def reuse_prefix(self, session: _core.Session, ids: list[int]) -> int:
        """Keeps the longest run of cached tokens that `ids` starts with, all of `ids` but
        its last token at most (that one is evaluated for its logits), and forgets the rest
        of the cache. Returns how many tokens were kept."""
        limit = min(len(self.cached), len(ids) - 1)
        kept = 0
        while kept < limit and self.cached[kept] == ids[kept]:
            kept += 1
        session.truncate(kept)
        del self.cached[kept:]
        return kept

    def eval(self, session: _core.Session, ids: list[int], *, all_logits: bool = False) -> None:
        """session.eval(ids), keeping `cached` in step with what the cache then holds (an
        evaluation that fails or is cancelled keeps the batches it finished). Ctrl-C cancels
        a batch of several tokens at once (interruptible)."""
        try:
            if len(ids) > 1:
                interruptible(lambda: session.eval(ids, all_logits=all_logits), self.cancel)
            else:  # one token takes one step's time: Ctrl-C comes before the next
                session.eval(ids, all_logits=all_logits)
        finally:
            self.cached.extend(ids)
            del self.cached[session.n_past:]

    def cancel_requested(self) -> bool:
        native = self.native
        return native is not None and native.cancel_requested

    def cancel(self) -> None:
        # No self.lock: the eval to stop holds it. The native flag stops that eval at its
        # next layer and stays set until the next call starts.
        with self.call_lock:
            native = self.native
            if native is not None:
                native.request_cancel()

    def close(self) -> None:
        self.closed = True  # first: a call that the cancel below stops then reports why
        self.cancel()  # a long prompt in another thread stops within a layer
        with self.lock:
            self.native = None  # frees the KV cache (and, with the last one, the mapping)
            self.model = self.device = None


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)
