"""What every benchmark script shares: the machine's name and versions, timing with percentiles, JSON rows.

Modelled on trtexec / perf_analyzer: warm-up, many timed calls, p50/p90/p95/p99, mean and coefficient of variation.
Each script runs every provider it compares in one process, so ratios are taken on the same machine and moment.
"""
from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

from vaedeploy.bench import stats
from vaedeploy.io import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """The machine and the versions a figure was measured with; stored in every JSON row (the facts of `vaedeploy
    bench`'s environment, from the same functions)."""
    from vaedeploy.bench.environment import gpu_facts, package_version
    from vaedeploy.runtime.calibrate import cpu_facts

    machine = cpu_facts()
    return {
        "cpu": machine["cpu"],
        "cpu_flags": machine["flags"],
        "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: v for name in ("vaedeploy", "numpy", "torch", "onnxruntime", "onnx", "triton", "tensorrt")
                     if (v := package_version(name))},
        "gpu": gpu_facts(),  # name, compute capability, memory, driver, CUDA; None without CUDA
    }


def summarize(seconds: Sequence[float]) -> dict:
    """Latency figures in milliseconds from per-call wall times in seconds, by the one definition of the bench tool
    (``vaedeploy.bench.stats``: nearest-rank percentiles, values that were really observed)."""
    return {"n": len(seconds), **stats.summarize(seconds, percentiles=(20, 50, 80, 90, 95, 99))}


def time_interleaved(
    calls: dict[str, Callable[[object], object]],
    inputs: dict[str, Sequence[object]],
    *,
    block: int = 50,
    warmup: int = 10,
    iters: int = 200,
    min_seconds: float = 0.0,
) -> dict[str, dict]:
    """Time several providers of the same work in rounds: ``block`` calls of each provider per round, the order
    rotating from round to round, until each has ``iters`` calls and ``min_seconds`` have passed.

    On a machine shared with other work, a slow moment then hits every provider alike, so their ratios stay fair.
    Blocks rather than single alternating calls: thread pools (ONNX Runtime's, OpenMP's) spin for a while after a
    call, and would steal the cores of the next provider. ``inputs[name]`` are rotated so no single buffer stays hot
    in cache.
    Returns name → ``summarize`` figures.
    """
    names = list(calls)
    for name in names:
        for i in range(warmup):
            calls[name](inputs[name][i % len(inputs[name])])
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    done, rounds = 0, 0
    while done < iters or time.perf_counter() - started < min_seconds:
        for k in range(len(names)):
            name = names[(rounds + k) % len(names)]
            call, xs, out = calls[name], inputs[name], times[name]
            for i in range(done, done + block):
                x = xs[i % len(xs)]
                t0 = time.perf_counter()
                call(x)
                out.append(time.perf_counter() - t0)
        done += block
        rounds += 1
    return {name: summarize(t) for name, t in times.items()}


def write_rows(name: str, rows: list[dict], *, meta: dict | None = None, path: Path | None = None) -> Path:
    """Write `benchmarks/results/<name>.json` (or ``path``) atomically: the machine, when, and one row per
    measurement."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **(meta or {}),
        "rows": rows,
    }
    write_json(path, doc)
    return path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
