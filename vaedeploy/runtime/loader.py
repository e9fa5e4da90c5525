"""``vaedeploy.load``: a bundle directory → the runtime of its latent type on the chosen backend."""
from __future__ import annotations

import re

from ..bundle import load_bundle
from ..errors import ConfigError
from .backends import resolve
from .base import Runtime
from .latents import runtime_class


def load(bundle, backend: str = "auto", device: str = "cpu", precision: str = "fp32", verify: bool = True) -> Runtime:
    """Load a bundle directory and return a ``Runtime`` on ``backend``.

    Args:
        bundle: the directory ``vaedeploy export`` wrote.
        backend: ``auto`` (the fastest installed: onnxruntime, then torch), ``onnxruntime`` or ``torch``.
        device: ``cpu`` or ``cuda[:N]``.
        precision: ``fp32`` (default) or ``fp16`` when the bundle has half-precision graphs.
        verify: check every file's sha256 and every graph against its manifest entry (default True).
    """
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    loaded = load_bundle(bundle, verify=verify)
    return runtime_class(loaded)(loaded, resolve(backend), device, precision)
