"""Current transfer rates: bytes per second over the last few seconds, not since a session began
(a session idle for an hour after one burst would otherwise show a rate that is neither)."""

from __future__ import annotations

from collections import deque

RATE_WINDOW = 5.0  # seconds


class RateMeter:
    """Bytes counted into one-second buckets; ``rate(now)`` is over the last ``window`` seconds.
    Pure: the caller gives the time (trio's or monotonic), so tests need no clock."""

    def __init__(self, started: float, window: float = RATE_WINDOW):
        self.started = started
        self.window = window
        self._buckets: deque[list] = deque()  # [second, bytes], oldest first

    def add(self, nbytes: int, now: float) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += nbytes
        else:
            self._buckets.append([second, nbytes])
            self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = int(now) - int(self.window) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def rate(self, now: float) -> float:
        """Bytes per second over the window's whole seconds and this second so far (or since
        ``started``, when that is later)."""
        self._trim(now)
        span = min(self.window - 1 + (now - int(now)), now - self.started)
        return sum(b for _s, b in self._buckets) / max(span, 0.5)
