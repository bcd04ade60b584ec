"""Cutting generated text at stop strings while it streams."""

from __future__ import annotations

from typing import Sequence


class StopStringFilter:
    """Passes text through until the first stop string, which is cut off with what follows.

    While streaming, text that could be the beginning of a stop string is held back until
    the next piece shows whether the stop string completes, so a stop string split across
    tokens is never half emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Returns the text that is safe to emit now; sets `stopped` once a stop string appears."""
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        self._pending += piece
        hits = [i for i in (self._pending.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            text, self._pending = self._pending[: min(hits)], ""
            return text
        keep = len(self._pending) - self._partial_match_length()
        text, self._pending = self._pending[:keep], self._pending[keep:]
        return text

    def flush(self) -> str:
        """At the end of generation: what was held back never became a stop string."""
        text, self._pending = self._pending, ""
        return text

    def _partial_match_length(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
