"""The peak memory of a case: how much the process's peak resident set grows during one call, in a process of its own.

A fresh process per case loads the bundle as the case does, makes one call of the op at batch 1 and the bundle's
smallest size (what the first call of any size sets up once: lazy imports, the sessions' plans), makes the case's
input pools, reads its resident set (``VmRSS``), resets its peak (writing 5 to ``/proc/self/clear_refs``, Linux's
way to restart ``VmHWM``), makes the case's first call and reads the peak (``VmHWM``): the growth is what a call of
that op, batch, size and tiling needs the first time, ONNX Runtime's arena included (an arena keeps what it grew, so
a later call of the same shape in the same process shows almost none, and a case measured after a larger one in one
process would show none at all: hence a process per case). RSS rather than tracemalloc, since the graphs' buffers
are native allocations that tracemalloc never sees. Linux only: elsewhere the figure is None. Host memory only: a
GPU's is not counted.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..errors import VaedeployError

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
TIMEOUT_S = 600
PROBE = "vaedeploy.bench.probe"  # the module a case's process runs


def status_bytes(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise VaedeployError(f"{STATUS}: expected a {field} line, found none")


def available() -> bool:
    """Whether this system can restart the peak resident set (Linux's clear_refs)."""
    return STATUS.exists() and CLEAR_REFS.exists()


def peak_growth(path: Path, variant: dict, device: str, precision: str, op: str, batch: int, size,
                tile) -> int | None:
    """Bytes the peak resident set grows by during the first call of the case, in a process of its own (None where
    the system cannot tell)."""
    if not available():
        return None
    spec = {"path": str(path), "variant": variant, "device": device, "precision": precision, "op": op, "batch": batch,
            "size": None if size is None else list(size), "tile": list(tile) if isinstance(tile, tuple) else tile}
    done = subprocess.run([sys.executable, "-m", PROBE, json.dumps(spec)], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if done.returncode:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise VaedeployError(f"the peak memory of {op} at batch {batch}: expected its process to finish, got {why}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["growth"])
