"""ONNX export of vaedeploy models (and the user's own modules) into validated bundles, and a Triton model repository.

The exporters import torch; they load on first use (PEP 562), so ``vaedeploy.export.triton_repo``, which writes a
repository from a bundle, runs where only the runtime is installed.
"""
import importlib

_ENTRY_POINTS = {
    "export_bundle": "bundle_writer", "export_run": "bundle_writer", "write_bundle": "bundle_writer",
    "ExportError": "onnx_export", "export_graph": "onnx_export", "ValidationError": "validate",
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f".{_ENTRY_POINTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
