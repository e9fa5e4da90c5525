"""Backends: each a module with a ``Backend`` (its arrays, a runner per graph, ``close``) and a ``Runner``
subclass (``base.py``), imported only when asked for.
"""
from __future__ import annotations

import importlib
import importlib.util

from ...errors import ConfigError, MissingDependency

BACKENDS = {
    "onnxruntime": (".onnxruntime", ("onnxruntime",)),  # module in this package, the packages it can run on
    "torch": (".torch", ("torch",)),
    "openvino": (".openvino", ("openvino",)),  # the CPU only: pip install 'vaedeploy[openvino]'
    "tensorrt": (".tensorrt", ("tensorrt", "tensorrt_rtx")),  # TensorRT 10 or 11, or TensorRT for RTX
}
# "auto" on the CPU is measured, not guessed: ``runtime/calibrate.py`` times the installed backends of CPU_ORDER on
# the bundle's decoder and keeps the fastest (the first, the torch-free core, unless another is clearly faster). On
# CUDA it takes, in order: TensorRT where the bundle has engines built for this GPU and TensorRT, then torch, whose
# modules run inside one CUDA graph per bucket with the noise kernels, then onnxruntime-gpu, whose graphs cover each
# session alone.
CPU_ORDER = ("onnxruntime", "openvino", "torch")
AUTO_ORDER = ("onnxruntime", "torch")  # what `vaedeploy bench` measures when no backend is named
CUDA_AUTO_ORDER = ("tensorrt", "torch", "onnxruntime")
# ONNX Runtime's intra-op threads spin after each run by default, waiting for the next one: right for one caller
# timing calls back to back, wrong for a server (vaedeploy serve, a Triton repository's Python-backend graphs), whose
# event loop, other models and clients need those cores between batches (docs/serving.md has the measurements).
# Sessions run sequentially, so there is no inter-op pool to set.
SERVER_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}
WHY_ON_CUDA = {
    "tensorrt": "TensorRT engines per bucket",
    "torch": "the whole call in one CUDA graph per bucket",
    "onnxruntime": "ONNX Runtime's CUDA graph per session and bucket",
}


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(package) is not None for package in BACKENDS[name][1])


def facts(bundle) -> dict[str, bool]:
    """What ``auto`` decides on: which backends are installed, whether onnxruntime has CUDA, whether the bundle has
    the model's weights (the torch backend rebuilds the model from them)."""
    found = {name: installed(name) for name in BACKENDS}
    cuda = False
    if found["onnxruntime"]:
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return {**found, "onnxruntime_cuda": cuda, "weights": bool(bundle.manifest.get("model"))}


def auto(device: str, known: dict) -> tuple[str, str]:
    """The backend ``auto`` picks on CUDA given ``facts`` (with ``tensorrt_engines``: whether TensorRT has engines to
    run here, and the sentence saying so), and the sentence saying why. (On the CPU ``resolve`` measures instead.)"""
    skipped = []
    engines, engines_why = known.get("tensorrt_engines", (False, "its engines were not checked"))
    for name in CUDA_AUTO_ORDER:
        if not known.get(name):
            skipped.append(f"{name} is not installed")
        elif name == "tensorrt" and not engines:
            skipped.append(f"tensorrt has no engine to run here ({engines_why})")
        elif name == "torch" and not known["weights"]:
            skipped.append("torch needs the model's weights, which this bundle does not have")
        elif name == "onnxruntime" and not known["onnxruntime_cuda"]:
            skipped.append("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        else:
            why = [engines_why] if name == "tensorrt" else skipped
            return name, f"auto on CUDA: {name}, {WHY_ON_CUDA[name]}" + (f" ({'; '.join(why)})" if why else "")
    raise MissingDependency(f"no backend can run this bundle on CUDA: {'; '.join(skipped)}")


def resolve(backend: str, device: str, bundle, precision: str = "fp32", engines=None,
            buckets=None) -> tuple[str, str]:
    """The backend that runs (``auto`` resolved for ``device``) and why: ``asked for``, or ``auto``'s sentence.

    ``auto`` on the CPU is not resolved here but measured (``calibrate.choose``, which ``load`` calls).
    ``auto`` on CUDA takes TensorRT only where every graph has an engine for this GPU and TensorRT in ``engines``
    (default: the bundle's engines/) reaching the runtime's largest bucket (``buckets``); it never builds one."""
    if backend == "auto":
        if device == "cpu":
            raise ConfigError("backend 'auto' on the CPU is measured on the bundle: resolve it with "
                              "runtime.calibrate.choose")
        known = facts(bundle)
        if device != "cpu" and known["tensorrt"]:
            from .tensorrt import usable

            known["tensorrt_engines"] = usable(bundle, precision, device, engines, buckets)
        return auto("cuda", known)
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    if not installed(backend):
        packages = " or ".join(repr(p) for p in BACKENDS[backend][1])
        extra = {"tensorrt": "trt", "openvino": "openvino"}.get(backend)
        raise MissingDependency(f"backend {backend!r} needs the {packages} package, which is not installed"
                                + (f": pip install 'vaedeploy[{extra}]'" if extra else ""))
    if backend == "tensorrt" and device == "cpu":
        raise ConfigError("backend 'tensorrt' runs on NVIDIA GPUs: load the bundle with device='cuda'")
    if backend == "openvino" and device != "cpu":
        raise ConfigError(f"backend 'openvino' runs on the CPU here: load the bundle with device='cpu', got {device!r}")
    return backend, "asked for"


def backend_class(name: str):
    return importlib.import_module(BACKENDS[name][0], __name__).Backend
