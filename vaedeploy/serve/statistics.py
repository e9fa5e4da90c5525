"""Triton's statistics extension: per model, the counts and cumulative nanoseconds that ``GET
/v2/models[/{name}[/versions/1]]/stats`` and gRPC's ModelStatistics answer with, in Triton's shapes (its
``ModelStatistics`` message, or the same as JSON), so perf_analyzer shows the server-side split of a request's time.

Each duration is timed where the server spends it:

- ``success``, ``fail``: a request from its arrival at a front end (its body read) to its response written; every
  request that named a served model and did not succeed is a failure (refused, rejected, cancelled or failed).
- ``queue``: from queueing the request to the start of the first execution of its rows.
- ``compute_input``: the request's own decoding and checks, plus its batches' stacking of the requests' rows.
- ``compute_infer``: its batches' runtime calls.
- ``compute_output``: its batches' splitting of the outputs (and their NaN check), plus its own response encoding.

A request's compute durations are those of the batches it ran in (as Triton counts them: every request in a batch is
charged the whole batch's time), so per request queue + compute ≤ success. ``batch_stats`` has, per batch size (rows),
the executions of that size and their compute durations; ``inference_count`` counts rows, ``execution_count``
batches. Updated from the event loop and the model's instance threads, hence the lock.
"""
from __future__ import annotations

import threading
import time

PHASES = ("compute_input", "compute_infer", "compute_output")


def _duration() -> dict:
    return {"count": 0, "ns": 0}


class ModelStatistics:
    """The statistics of one served model (its ``name``, version 1)."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._last_inference_ms = 0
        self._inferences = self._executions = 0
        self._requests = {key: _duration() for key in ("success", "fail", "queue", *PHASES, "cache_hit",
                                                          "cache_miss")}
        self._batches: dict[int, dict] = {}

    def executed(self, rows: int, phases_ns: tuple[int, int, int]) -> None:
        """One execution of ``rows`` rows, with the nanoseconds of its ``PHASES``."""
        with self._lock:
            self._last_inference_ms = time.time_ns() // 1_000_000
            self._inferences += rows
            self._executions += 1
            batch = self._batches.setdefault(rows, {phase: _duration() for phase in PHASES})
            for phase, ns in zip(PHASES, phases_ns):
                batch[phase]["count"] += 1
                batch[phase]["ns"] += ns

    def succeeded(self, total_ns: int, queue_ns: int, phases_ns: tuple[int, int, int]) -> None:
        """One request answered, with its durations (``PHASES`` as charged to it)."""
        with self._lock:
            for key, ns in zip(("success", "queue", *PHASES), (total_ns, queue_ns, *phases_ns)):
                self._requests[key]["count"] += 1
                self._requests[key]["ns"] += ns

    def failed(self, total_ns: int) -> None:
        with self._lock:
            self._requests["fail"]["count"] += 1
            self._requests["fail"]["ns"] += total_ns

    def as_json(self) -> dict:
        """Triton's ``ModelStatistics``, as its HTTP endpoint writes it (gRPC's message has the same fields)."""
        with self._lock:
            return {"name": self.name, "version": "1", "last_inference": self._last_inference_ms,
                    "inference_count": self._inferences, "execution_count": self._executions,
                    "inference_stats": {key: dict(d) for key, d in self._requests.items()},
                    "batch_stats": [{"batch_size": rows, **{p: dict(d) for p, d in phases.items()}}
                                    for rows, phases in sorted(self._batches.items())],
                    "memory_usage": [], "response_stats": {}}
