"""ONNX export of vaedeploy models (and the user's own modules) into validated bundles.

The exporters import torch; they load on first use (PEP 562), so ``import vaedeploy.export`` costs nothing where
only the bundle's validation rules are wanted.
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
