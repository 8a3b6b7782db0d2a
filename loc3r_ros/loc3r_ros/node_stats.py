"""Running statistics the node reports: input rate, callback latency percentiles, memory."""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import numpy as np


class RateWindow:
    """Events per second over the last `window_s` seconds (monotonic clock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        """Record one event."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Events per second in the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return len(self._times) / self.window_s

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()


class LatencyWindow:
    """The last `size` durations (seconds), with percentiles; O(1) per record."""

    def __init__(self, size: int = 2000) -> None:
        self._values = np.zeros(size)
        self._count = 0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """Add one duration."""
        with self._lock:
            self._values[self._count % len(self._values)] = seconds
            self._count += 1

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the recorded durations, seconds (0 when empty)."""
        with self._lock:
            n = min(self._count, len(self._values))
            return float(np.percentile(self._values[:n], q)) if n else 0.0

    def __len__(self) -> int:
        return min(self._count, len(self._values))


def resident_memory_bytes(pid: int | None = None) -> int:
    """Current resident set size of this process or `pid` (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
