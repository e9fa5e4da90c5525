"""One module → one checked ONNX graph with a dynamic batch axis and the bundle's facts in its metadata_props.

DESIGN.md "Export lessons": the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) at opset 18 is the default;
the legacy TorchScript exporter is used only when asked (``exporter="legacy"``) and the choice is recorded in the
manifest, never taken silently. The example batch must have at least 2 rows: an example of size 0 or 1 makes the
exporter specialize the batch dimension to a constant.
"""
from __future__ import annotations

import copy
import inspect
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 18
BATCH_AXIS = "batch"
# Exporters freeze a random op to one draw (optimum #1383); noise belongs to the runtime's kernels.
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


class ExportError(RuntimeError):
    """A graph could not be exported or failed the ONNX checks."""


class HalfPrecision(nn.Module):
    """Runs a copy of ``module`` in float16 behind float32 inputs and float32 outputs.

    The interface stays float32 so every precision variant of a graph is called the same way; the casts sit at the
    graph's edges, so the whole computation in between is half precision (what TensorRT's strong typing reads).
    Integer inputs (the tokens of a VQ prior) pass unchanged.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, *inputs: Tensor):
        outputs = self.module(*(x.half() if x.is_floating_point() else x for x in inputs))
        if isinstance(outputs, Tensor):
            return outputs.float()
        return tuple(o.float() for o in outputs)


def _dynamic_shapes(module: nn.Module, n_inputs: int, batch) -> tuple:
    """The batch axis of every input, nested the way ``torch.export`` reads the signature: one entry per named
    positional parameter, and the inputs that land in ``*args`` (noise of each layer, ``HalfPrecision``) as one tuple.
    """
    shapes: list = []
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return (*shapes, tuple({0: batch} for _ in range(n_inputs - len(shapes))))
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD) and len(shapes) < n_inputs:
            shapes.append({0: batch})
    return tuple(shapes)


def _value_specs(values) -> list[dict]:
    specs = []
    for v in values:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        specs.append({"name": v.name, "shape": dims, "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "?")})
    return specs


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: str | Path,
    *,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    metadata: dict | None = None,
) -> dict:
    """Export ``module(*example)`` to ``path`` and return its manifest entry (file name, inputs, outputs, ...).

    Every input and output gets the dynamic leading axis ``batch``. ``metadata`` (JSON-able values) goes into the
    graph's ``metadata_props``. The graph passes ``onnx.checker`` (full check) and strict shape inference, and may
    hold no random operation; otherwise ``ExportError`` names the graph and what failed.
    """
    path = Path(path)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if any(t.shape[0] < 2 for t in example):
        raise ValueError(f"{path.name}: trace with an example batch of at least 2 rows (1 or 0 fixes the batch "
                         f"axis), got batch sizes {[t.shape[0] for t in example]}")
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and torchvision notices say nothing about us
        if exporter == "dynamo":
            # the exporter logs that torchvision's ops are not registered on every export; no graph of ours uses them
            logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
            batch = torch.export.Dim(BATCH_AXIS, min=1, max=2**20)
            program = torch.onnx.export(
                module, example, input_names=input_names, output_names=output_names, opset_version=opset,
                dynamo=True, dynamic_shapes=_dynamic_shapes(module, len(example), batch), verbose=False,
            )
            model = program.model_proto
        else:
            axes = {name: {0: BATCH_AXIS} for name in [*input_names, *output_names]}
            torch.onnx.export(module, example, str(path), input_names=input_names, output_names=output_names,
                              opset_version=opset, dynamo=False, dynamic_axes=axes)
            model = onnx.load(str(path))
    random_ops = sorted({n.op_type for n in model.graph.node} & RANDOM_OPS)
    if random_ops:
        raise ExportError(f"{path.name}: the graph holds random operations {random_ops}; draw noise outside the "
                          "module (the runtime passes it in)")
    del model.metadata_props[:]
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path.name}: failed the ONNX checks: {e}") from None
    onnx.save(model, str(path))
    return {
        "file": path.name,
        "inputs": _value_specs(model.graph.input),
        "outputs": _value_specs(model.graph.output),
        "dynamic_axes": {v.name: {"0": BATCH_AXIS} for v in [*model.graph.input, *model.graph.output]},
        "opset": opset,
        "exporter": exporter,
        "ir_version": model.ir_version,
    }
