"""Backends: each a module with a ``Backend`` (its arrays, a runner per graph, ``close``) and a ``Runner``
subclass (``base.py``), imported only when asked for. A TensorRT backend plugs in here as one more module and one
more name in ``AUTO_ORDER``.
"""
from __future__ import annotations

import importlib
import importlib.util

from ...errors import ConfigError, MissingDependency

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
        raise MissingDependency(f"no backend is installed; install one of {list(AUTO_ORDER)}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    if not installed(backend):
        raise MissingDependency(f"backend {backend!r} needs the {BACKENDS[backend][1]!r} package, which is not "
                                "installed")
    return backend


def backend_class(name: str):
    return importlib.import_module(BACKENDS[name][0], __name__).Backend
