"""Backends: runners with one small interface (Polygraphy style), each imported only when it is asked for.

A runner is built from ``(bundle, role, precision, device)`` and called with one input array (or tensor) of a graph;
it returns the outputs named by ``outputs`` at construction, in that order. ``NATIVE`` says what it takes and
returns: ``numpy`` arrays (onnxruntime on the CPU) or ``torch`` tensors. A TensorRT runner plugs in here as one more
module and one more name in ``AUTO_ORDER``.
"""
from __future__ import annotations

import importlib
import importlib.util

BACKENDS = {
    "onnxruntime": (".onnxruntime", "onnxruntime"),  # module in this package, the package it needs
    "torch": (".torch", "torch"),
}
# "auto" takes the first backend whose package is installed: ONNX Runtime is the fastest present on the CPU.
AUTO_ORDER = ("onnxruntime", "torch")


def installed(name: str) -> bool:
    return importlib.util.find_spec(BACKENDS[name][1]) is not None


def resolve(backend: str) -> str:
    if backend == "auto":
        for name in AUTO_ORDER:
            if installed(name):
                return name
        raise RuntimeError(f"no backend is installed; install one of {list(AUTO_ORDER)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    if not installed(backend):
        raise RuntimeError(f"backend {backend!r} needs the {BACKENDS[backend][1]!r} package, which is not installed")
    return backend


def runner_class(name: str):
    module = importlib.import_module(BACKENDS[name][0], __name__)
    return module.Runner
