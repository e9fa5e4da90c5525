"""ONNX export of vaedeploy models (and the user's own modules) into validated bundles; imports torch."""
from .bundle_writer import export_bundle, export_run, write_bundle
from .onnx_export import ExportError, export_graph
from .validate import ValidationError

__all__ = ["ExportError", "ValidationError", "export_bundle", "export_graph", "export_run", "write_bundle"]
