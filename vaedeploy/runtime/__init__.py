"""The runtime: ``load(bundle)`` and the ``Runtime`` it returns (see ``api.py``); torch-free on onnxruntime."""
from .api import InputError, Runtime, load

__all__ = ["InputError", "Runtime", "load"]
