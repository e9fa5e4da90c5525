"""The measurement loop: every case interleaved in rounds, each in windows until perf_analyzer's rule holds.

A case is one thing to time (a backend × op × batch × concurrency, or a server model × batch × concurrency). Each
round gives every unfinished case one window, the order rotating from round to round, so a busy moment on a shared
machine hits all cases alike; blocks of calls rather than single alternating calls, because thread pools (ONNX
Runtime's, OpenMP's) spin for a while after a call and would steal the next case's cores. A case is done when it is
stable (``stats.is_stable``), after ``max_windows`` windows (then "unstable", as perf_analyzer gives up after 10
trials), or when the budget ends (then "unstable" too, with the windows it has).

Serial latency is the default: one caller, each call waits for the last. With concurrency C, C threads call in a
closed loop (perf_analyzer's concurrency mode), and the throughput is what they do together.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .stats import Window, figures, is_stable

# a case's call: call(i) does the i-th call and returns (host latency s, device s or None, enqueue s or None)
TimedCall = Callable[[int], tuple]


def host_timed(call: Callable[[int], object]) -> TimedCall:
    """A call timed by the host clock around it (the CPU; a GPU case wraps its own, see ``gpu.py``)."""
    def timed(i: int) -> tuple:
        start = time.perf_counter()
        call(i)
        return time.perf_counter() - start, None, None

    return timed


@dataclass
class Case:
    """One row to measure: ``key`` names it (backend, op, batch, …), ``timed(i)`` does call i, ``items`` per call."""

    key: dict
    timed: TimedCall
    items: int
    concurrency: int = 1
    windows: list[Window] = field(default_factory=list)
    status: str = "pending"  # then "stable", "unstable" (max windows) or "budget" (time ran out)
    calls: itertools.count = field(default_factory=itertools.count)

    def result(self, count: int) -> dict:
        """The row: the key, the figures of the last ``count`` windows, how many windows it took, and whether the
        stability rule held."""
        return {**self.key, "concurrency": self.concurrency, "windows": len(self.windows),
                "stable": self.status == "stable", "status": self.status, **figures(self.windows[-count:])}


@dataclass
class Settings:
    """How long and how carefully to measure.

    Args:
        budget_s: the wall time of the whole loop, warm-ups included; cases not done by then are marked "budget".
        window_s: the length of a window (each also has at least ``min_calls`` calls per caller).
        warmup_s: untimed calls before a case's first window.
        tolerance: the stability rule's tolerance (0.10: within 10%).
        stable_windows: how many last windows the rule and the figures use (perf_analyzer: 3).
        max_windows: windows after which a case is given up as unstable (perf_analyzer: 10).
        min_calls: the fewest calls in a window.
    """

    budget_s: float = 60.0
    window_s: float = 0.2
    warmup_s: float = 0.1
    tolerance: float = 0.10
    stable_windows: int = 3
    max_windows: int = 10
    min_calls: int = 5

    @classmethod
    def fitted(cls, cases: int, budget_s: float, **given) -> "Settings":
        """Settings whose window lets every case get ``stable_windows`` + 1 windows (one of warm-up) in the
        budget, between 20 ms and perf_analyzer's 5 s."""
        settings = cls(budget_s=budget_s, **given)
        if "window_s" not in given:
            settings.window_s = min(5.0, max(0.02, budget_s / max(1, cases) / (settings.stable_windows + 1.5)))
        if "warmup_s" not in given:
            settings.warmup_s = settings.window_s / 2
        return settings


def _serial(case: Case, seconds: float, min_calls: int) -> Window:
    window = Window([], 0.0, 0)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        try:
            host, device, enqueue = case.timed(next(case.calls))
        except Exception as e:  # a server's error answer: counted, the case goes on (perf_analyzer counts them too)
            window.errors += 1
            window.first_error = window.first_error or f"{type(e).__name__}: {e}"
        else:
            window.latencies.append(host)
            window.items += case.items
            if device is not None:
                window.device.append(device)
            if enqueue is not None:
                window.enqueue.append(enqueue)
        done = len(window.latencies) + window.errors
        if done >= min_calls and time.perf_counter() >= deadline:
            break
        if window.errors and done >= min_calls and not window.latencies:
            break  # every call fails: no use waiting for the window to end
    window.elapsed = time.perf_counter() - start
    return window


def _concurrent(case: Case, seconds: float, min_calls: int) -> Window:
    """C callers in a closed loop for ``seconds``, each timing its own calls; merged into one window."""
    parts: list[Window] = []
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda: parts.append(_serial(case, seconds, min_calls)), daemon=True)
               for _ in range(case.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Window([t for p in parts for t in p.latencies], time.perf_counter() - start, sum(p.items for p in parts),
                  [t for p in parts for t in p.device], [t for p in parts for t in p.enqueue],
                  sum(p.errors for p in parts), next((p.first_error for p in parts if p.first_error), None))


def window(case: Case, seconds: float, min_calls: int) -> Window:
    """One timed window of a case."""
    return (_serial if case.concurrency == 1 else _concurrent)(case, seconds, min_calls)


def measure(cases: list[Case], settings: Settings, progress: Callable[[Case], None] | None = None) -> list[dict]:
    """Run every case to its end (stable, unstable or out of budget) and return one row per case, in order.

    ``progress(case)`` is called after each window (the progress display).
    """
    started = time.perf_counter()
    deadline = started + settings.budget_s
    for round_index in itertools.count():
        active = [c for c in cases if c.status == "pending"]
        if not active:
            break
        shift = round_index % len(active)
        for case in active[shift:] + active[:shift]:
            if time.perf_counter() >= deadline and case.windows:
                case.status = "budget"
                continue
            if not case.windows:
                window(case, settings.warmup_s, 1)  # untimed: first calls, caches, thread pools, JIT
            case.windows.append(window(case, settings.window_s, settings.min_calls))
            if is_stable(case.windows, settings.stable_windows, settings.tolerance):
                case.status = "stable"
            elif len(case.windows) >= settings.max_windows:
                case.status = "unstable"
            if progress:
                progress(case)
    return [case.result(settings.stable_windows) for case in cases]
