"""The runtime: ``load(bundle)`` and the ``Runtime`` it returns; torch-free on onnxruntime.

``base.py`` holds what every latent type shares, ``latents.py`` one runtime per latent type, ``arrays.py`` the
numpy / torch adaptor, ``noise.py`` which noise each row draws, ``backends/`` the runners.
"""
from ..errors import InputError
from .base import Runtime
from .loader import load

__all__ = ["InputError", "Runtime", "load"]
