"""Fused kernels of vaedeploy: reparameterized sampling and vector-quantization lookup.

The numpy ops (`reparameterize_numpy`, `standard_normal_numpy`, `uniform_numpy`, `vq_nearest_numpy`) import no torch:
the ONNX Runtime
path runs where torch does not exist. The torch entry points (`reparameterize`, `standard_normal`, `vq_nearest`)
load on first use, and Triton only loads inside them where it is installed.
"""
import importlib

from .numpy_ops import reparameterize_numpy, standard_normal_numpy, uniform_numpy, vq_nearest_numpy

_TORCH_ENTRY_POINTS = {
    "reparameterize": "sampling",
    "standard_normal": "sampling",
    "vq_nearest": "vq",
}

__all__ = ["reparameterize_numpy", "standard_normal_numpy", "uniform_numpy", "vq_nearest_numpy", *_TORCH_ENTRY_POINTS]


def __getattr__(name):
    # PEP 562: importing the package stays torch-free; the torch modules import when an entry point is first asked for.
    if name in _TORCH_ENTRY_POINTS:
        module = importlib.import_module(f".{_TORCH_ENTRY_POINTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
