"""The statistics of a benchmark: percentiles of per-call latencies, and perf_analyzer's stability rule.

Percentiles are nearest-rank (a value that was really observed, as perf_analyzer reports them). A measurement is a
sequence of windows; it is **stable** when each of the last ``count`` windows' throughput and p50 latency lies within
``tolerance`` of their mean over those windows (perf_analyzer's `inference_profiler` with its defaults: 3 windows,
10%). The figures of a case are those of its last ``count`` windows taken together.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100] of values sorted ascending."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


def summarize(seconds: Sequence[float], prefix: str = "", percentiles: Sequence[int] = PERCENTILES) -> dict:
    """``{prefix}p50_ms`` … ``{prefix}p99_ms`` (or the ``percentiles`` asked for), ``{prefix}mean_ms`` and
    ``{prefix}cv`` (standard deviation over the mean) of per-call times given in seconds."""
    ms = sorted(s * 1e3 for s in seconds)
    mean = statistics.fmean(ms)
    figures = {f"{prefix}p{q}_ms": percentile(ms, q) for q in percentiles}
    figures[f"{prefix}mean_ms"] = mean
    figures[f"{prefix}cv"] = statistics.pstdev(ms) / mean if mean > 0 else 0.0
    return figures


@dataclass
class Window:
    """One timed window of a case: every call's host latency (seconds), and the device time and enqueue time of
    each call where the case measures them (GPU), the items done and the window's wall time."""

    latencies: list[float]
    elapsed: float
    items: int
    device: list[float] = field(default_factory=list)
    enqueue: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    @property
    def throughput(self) -> float:
        """Items per second over the window's wall time."""
        return self.items / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def p50(self) -> float:
        return percentile(sorted(self.latencies), 50) if self.latencies else math.inf


def _within(values: list[float], tolerance: float) -> bool:
    mean = statistics.fmean(values)
    return mean > 0 and all(abs(v - mean) <= tolerance * mean for v in values)


def is_stable(windows: Sequence[Window], count: int = 3, tolerance: float = 0.10) -> bool:
    """perf_analyzer's rule: the last ``count`` windows' throughputs, and their p50 latencies, each within
    ``tolerance`` of their mean."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    if any(not w.latencies for w in last):
        return False
    return _within([w.throughput for w in last], tolerance) and _within([w.p50 for w in last], tolerance)


def figures(windows: Sequence[Window]) -> dict:
    """The row figures of windows taken together: latency percentiles, mean and CV (host, and device / enqueue
    where measured), calls, items/s, errors."""
    latencies = [t for w in windows for t in w.latencies]
    elapsed, items = sum(w.elapsed for w in windows), sum(w.items for w in windows)
    row = {"calls": len(latencies), "items_per_s": items / elapsed if elapsed > 0 else 0.0,
           "errors": sum(w.errors for w in windows)}
    if latencies:
        row.update(summarize(latencies))
    for name in ("device", "enqueue"):
        values = [t for w in windows for t in getattr(w, name)]
        if values:
            row.update(summarize(values, prefix=f"{name}_"))
    error = next((w.first_error for w in windows if w.first_error), None)
    if error:
        row["first_error"] = error
    return row
