"""``vaedeploy.load``: a bundle directory → the runtime of its latent type on the chosen backend and device."""
from __future__ import annotations

import re

from ..bundle import load_bundle
from ..errors import ConfigError
from .backends import resolve
from .base import Runtime
from .calibrate import choose
from .latents import runtime_class

WARMUPS = ("lazy", "all")


def load(bundle, backend: str = "auto", device: str = "cpu", precision: str = "fp32", verify: bool = True, *,
         buckets=None, cuda_graphs: bool | None = None, warmup: str = "lazy", engines=None,
         session_config: dict[str, str] | None = None, openvino_config: dict | None = None) -> Runtime:
    """Load a bundle directory and return a ``Runtime`` on ``backend``.

    Args:
        bundle: the directory ``vaedeploy export`` wrote.
        backend: ``auto``, ``onnxruntime``, ``torch``, ``openvino`` (CPU) or ``tensorrt``. ``auto`` takes, on the CPU,
            the backend measured fastest on this bundle (``calibrate.py``: a short timing of the installed ones at
            load, cached in the bundle's calibration/ folder); on CUDA, TensorRT where ``vaedeploy build`` made
            engines for this GPU and TensorRT, then torch (one CUDA graph per bucket around the whole call), then
            onnxruntime-gpu;
            ``Runtime.backend_reason`` and ``describe()`` say why.
        device: ``cpu`` or ``cuda[:N]``; CUDA is checked here, so a machine without it fails at load, not in a call.
        precision: ``fp32`` (default), ``fp16`` when the bundle has half-precision graphs, ``bf16`` where it was
            validated in bfloat16 (openvino and torch lower the fp32 graph; onnxruntime refuses it); ``auto`` with
            ``backend="auto"`` on the CPU: the fastest measured of fp32 and each lower precision the bundle was
            validated for at a PSNR of 40 dB or more on every graph output (asking for it is the permission to
            lower the precision).
        verify: check every file's sha256 and every graph against its manifest entry (default True); a graph
            onnxruntime runs is checked as its session read it, so each graph file is read once for its sha256 and
            once more, by its session or (a graph no session runs) by the check.
        buckets: batch bucket sizes; a call of n rows runs the smallest bucket ≥ n on static buffers (default on
            CUDA: 1, 2, 4, … up to the bundle's max_batch; on the CPU none unless given, where they only pad).
        cuda_graphs: record each bucket's call once as a CUDA graph and replay it (default True on CUDA; False runs
            the backend eagerly, the comparison).
        warmup: ``lazy`` records a bucket on its first call; ``all`` records every op and bucket now, largest
            first, and ``describe()`` has each capture's time.
        engines: the TensorRT engine cache (``vaedeploy build --cache``; default: the bundle's ``engines/``).
        session_config: ONNX Runtime session config entries for every session (``SessionOptions.
            add_session_config_entry``), e.g. ``{"session.intra_op.allow_spinning": "0"}`` as ``vaedeploy serve``
            passes; used when onnxruntime is the backend that runs, ignored by the others (they have no sessions).
        openvino_config: OpenVINO CPU properties for every compiled graph (``PERFORMANCE_HINT``, ``NUM_STREAMS``,
            ``INFERENCE_NUM_THREADS``, …) over the backend's own; used when openvino runs, ignored by the others.
    """
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if warmup not in WARMUPS:
        raise ConfigError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
    if device != "cpu":
        from .cuda import require_cuda

        require_cuda(device)
    loaded = load_bundle(bundle, verify=verify, graphs=False)  # the graphs are checked below, each file read once
    if backend == "auto" and device == "cpu":
        name, precision, reason = choose(loaded, precision)[:3]
    elif precision == "auto":
        raise ConfigError(f"precision 'auto' is measured with backend 'auto' on the CPU; name one of fp32, fp16, bf16 "
                          f"for backend {backend!r} on {device!r}")
    else:
        name, reason = resolve(backend, device, loaded, precision, engines, buckets)
    if verify and name != "onnxruntime":  # this backend runs no ONNX file itself: they are read for the check alone
        loaded.check_graphs()
    if engines is not None and backend not in ("auto", "tensorrt"):
        raise ConfigError(f"engines= is the TensorRT backend's engine cache; backend {backend!r} takes none")
    options = {"engines": engines} if name == "tensorrt" else {}
    if session_config and name == "onnxruntime":
        options["session_config"] = session_config
    if openvino_config and name == "openvino":
        options["openvino_config"] = openvino_config
    runtime = runtime_class(loaded)(loaded, name, device, precision, backend_reason=reason, buckets=buckets,
                                    cuda_graphs=cuda_graphs, backend_options=options)
    try:
        if verify and name == "onnxruntime":  # each graph as the session that runs it read it; the rest from file
            loaded.check_graphs({(r.role, r.precision): r.signature() for r in runtime.runners.values()})
        if warmup == "all":
            runtime.warmup()
    except BaseException:
        runtime.close()
        raise
    return runtime
