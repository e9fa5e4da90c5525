"""Backends: each a module with a ``Backend`` (its arrays, a runner per graph, ``close``) and a ``Runner``
subclass (``base.py``), imported only when asked for. A TensorRT backend plugs in here as one more module, one more
name in ``BACKENDS`` and the first place in ``CUDA_AUTO_ORDER``.
"""
from __future__ import annotations

import importlib
import importlib.util

from ...errors import ConfigError, MissingDependency

BACKENDS = {
    "onnxruntime": (".onnxruntime", "onnxruntime"),  # module in this package, the package it needs
    "torch": (".torch", "torch"),
}
# "auto" takes the first backend in its device's order that can run the bundle there. On the CPU ONNX Runtime is the
# fastest (docs/runtime.md). On CUDA: TensorRT once it has a backend, then torch, whose modules run inside one CUDA
# graph per bucket with the noise kernels, then onnxruntime-gpu, whose graphs cover each session alone.
AUTO_ORDER = ("onnxruntime", "torch")
CUDA_AUTO_ORDER = ("tensorrt", "torch", "onnxruntime")
WHY_ON_CUDA = {
    "tensorrt": "TensorRT engines per bucket",
    "torch": "the whole call in one CUDA graph per bucket",
    "onnxruntime": "ONNX Runtime's CUDA graph per session and bucket",
}


def installed(name: str) -> bool:
    return importlib.util.find_spec(BACKENDS[name][1]) is not None


def facts(bundle) -> dict[str, bool]:
    """What ``auto`` decides on: which backends are installed, whether onnxruntime has CUDA, whether the bundle has
    the model's weights (the torch backend rebuilds the model from them)."""
    found = {name: installed(name) for name in BACKENDS}
    cuda = False
    if found["onnxruntime"]:
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return {**found, "onnxruntime_cuda": cuda, "weights": bool(bundle.manifest.get("model"))}


def auto(device: str, known: dict[str, bool]) -> tuple[str, str]:
    """The backend ``auto`` picks on ``device`` given ``facts``, and the sentence saying why."""
    skipped = []
    if device == "cpu":
        for name in AUTO_ORDER:
            if known.get(name):
                return name, f"auto on the CPU: {name}" + (f" ({'; '.join(skipped)})" if skipped else
                                                           ", the fastest there")
            skipped.append(f"{name} is not installed")
        raise MissingDependency(f"no backend is installed; install one of {list(AUTO_ORDER)}")
    for name in CUDA_AUTO_ORDER:
        if name not in BACKENDS:
            skipped.append(f"{name} has no backend yet")
        elif not known.get(name):
            skipped.append(f"{name} is not installed")
        elif name == "torch" and not known["weights"]:
            skipped.append("torch needs the model's weights, which this bundle does not have")
        elif name == "onnxruntime" and not known["onnxruntime_cuda"]:
            skipped.append("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        else:
            return name, f"auto on CUDA: {name}, {WHY_ON_CUDA[name]} ({'; '.join(skipped)})"
    raise MissingDependency(f"no backend can run this bundle on CUDA: {'; '.join(skipped)}")


def resolve(backend: str, device: str, bundle) -> tuple[str, str]:
    """The backend that runs (``auto`` resolved for ``device``) and why: ``asked for``, or ``auto``'s sentence."""
    if backend == "auto":
        return auto("cpu" if device == "cpu" else "cuda", facts(bundle))
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    if not installed(backend):
        raise MissingDependency(f"backend {backend!r} needs the {BACKENDS[backend][1]!r} package, which is not "
                                "installed")
    return backend, "asked for"


def backend_class(name: str):
    return importlib.import_module(BACKENDS[name][0], __name__).Backend
