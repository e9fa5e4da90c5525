"""What every result carries: the machine, the versions, the bundles' hashes and the command line."""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("vaedeploy", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "tensorrt-lean-cu13",
            "triton", "tritonclient", "onnx", "onnx-tool", "numba", "openvino")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, None where it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def gpu_facts() -> dict | None:
    """The GPU of torch's current device, its driver and CUDA versions; None without CUDA (or torch)."""
    if package_version("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30)
            driver = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            driver = None
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "driver": driver, "cuda": torch.version.cuda,
            "count": torch.cuda.device_count()}


def environment(gpu: bool = False) -> dict:
    """The machine and versions a figure was measured with (``gpu``: look the GPU up, which imports torch)."""
    from ..runtime.backends.onnxruntime import physical_cores
    from ..runtime.calibrate import cpu_facts

    machine = cpu_facts()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cpu": machine["cpu"],
        "cpu_flags": machine["flags"],  # the vector, bf16 and fp16 units the backends' kernels can use
        "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_physical_cores": physical_cores(),
        "load_average_at_start": _load(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu_facts() if gpu else None,
        "versions": {name: v for name in PACKAGES if (v := package_version(name))},
    }


def bundle_sha256(root: Path) -> str:
    """The sha256 of the bundle's manifest.json, which lists the sha256 of every file: it names the whole bundle."""
    return hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()
