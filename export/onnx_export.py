"""One module → one checked ONNX graph with a dynamic batch axis and the bundle's facts in its metadata_props.

A model that takes any image size (``models.spec.SpatialSize``) has its spatial axes exported dynamic as well: an
image's H and W as ``multiple`` × a symbol, a latent's as ``multiple / downsample`` × the same symbol (what
``torch.export`` needs to see that a stride-f network divides them exactly), then named ``bundle.IMAGE_AXES`` and
``bundle.LATENT_AXES`` on the graph's inputs and outputs, the names the manifest's entries hold.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) at opset 18 is the default;
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

from vaedeploy.bundle import BATCH_AXIS, IMAGE_AXES, LATENT_AXES
from vaedeploy.errors import ConfigError, VaedeployError
from vaedeploy.models.spec import SpatialSize

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 18


def opset_range(exporter: str) -> tuple[int, int]:
    """The ONNX opsets this torch's exporter writes: the dynamo exporter's implementations start at 18 (it converts
    anything lower, which may fail); the legacy TorchScript exporter has its own ceiling."""
    from torch.onnx import _constants

    if exporter == "dynamo":
        return 18, _constants.ONNX_MAX_OPSET
    return _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def check_opset(exporter: str, opset) -> None:
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    low, high = opset_range(exporter)
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ConfigError(f"opset: the {exporter} exporter writes opsets {low} to {high}, got {opset!r}")
# Exporters freeze a random op to one draw (optimum #1383); noise belongs to the runtime's kernels.
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


class ExportError(VaedeployError, RuntimeError):
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


AXES = {"image": IMAGE_AXES, "latent": LATENT_AXES}  # the names of a spatial tensor's last two axes


def _dynamic_shapes(module: nn.Module, axes: list[dict]) -> tuple:
    """Each input's dynamic axes (``axes``, one dict per input), nested the way ``torch.export`` reads the
    signature: one entry per named positional parameter, and the inputs that land in ``*args`` (noise of each
    layer, ``HalfPrecision``) as one tuple."""
    shapes: list = []
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return (*shapes, tuple(axes[len(shapes):]))
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD) and len(shapes) < len(axes):
            shapes.append(axes[len(shapes)])
    return tuple(shapes)


def _input_axes(input_names: list[str], spatial: dict[str, str], size: SpatialSize | None) -> list[dict]:
    """``torch.export`` dims of each input: the batch, and where ``spatial`` names the input, H and W as a step times
    one symbol per direction (the image's step is ``size.multiple``, a latent's ``multiple / downsample``)."""
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=2**20)
    units = None
    if size is not None:
        units = [torch.export.Dim(f"{axis}_units", min=low // size.multiple, max=high // size.multiple)
                 for axis, low, high in zip(IMAGE_AXES, size.low, size.high)]
    axes = []
    for name in input_names:
        if name not in spatial or units is None:
            axes.append({0: batch})
            continue
        step = size.multiple if spatial[name] == "image" else size.multiple // size.downsample
        axes.append({0: batch, **{i: unit if step == 1 else step * unit for i, unit in zip((2, 3), units)}})
    return axes


def _name_axes(graph: onnx.GraphProto, spatial: dict[str, str]) -> None:
    """Name the spatial axes of the graph's inputs and outputs as the manifest does (``AXES``), whatever the
    exporter called its symbols."""
    for value in (*graph.input, *graph.output):
        if value.name in spatial:
            dims = value.type.tensor_type.shape.dim
            for i, name in zip((2, 3), AXES[spatial[value.name]]):
                dims[i].dim_param = name


def _name_outputs(graph: onnx.GraphProto, names: list[str]) -> None:
    """Give the graph's outputs ``names``. An inner value that already has one of the names (the dynamo exporter
    names a node after its op: a module that calls ``Tensor.mean`` holds a value "mean") is renamed first, so the
    graph stays in single static assignment form."""
    if len(names) != len(graph.output):
        raise ExportError(f"the module returns {len(graph.output)} output(s), {len(names)} name(s) were given: "
                          f"{names}")
    wanted = {o.name: n for o, n in zip(graph.output, names) if o.name != n}
    used = {v for node in graph.node for v in (*node.input, *node.output)} | {i.name for i in graph.input} \
        | {t.name for t in graph.initializer}
    inner = {n for n in wanted.values() if n in used} - set(wanted)
    fresh = {n: f"{n}__inner" for n in inner}
    while used & set(fresh.values()):
        fresh = {n: f"{f}_" for n, f in fresh.items()}
    renames = {**fresh, **wanted}
    if {i.name for i in graph.input} & set(renames) or {t.name for t in graph.initializer} & set(renames):
        raise ExportError(f"an output of the module is one of its inputs or weights, unchanged; outputs {names}")
    for node in graph.node:
        node.input[:] = [renames.get(v, v) for v in node.input]
        node.output[:] = [renames.get(v, v) for v in node.output]
    for value in (*graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _value_specs(values) -> list[dict]:
    specs = []
    for v in values:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        specs.append({"name": v.name, "shape": dims, "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "?")})
    return specs


def _export(module, example, input_names, output_names, path: Path, exporter: str, opset: int,
            spatial: dict[str, str], size: SpatialSize | None) -> onnx.ModelProto:
    """The ONNX model of ``module(*example)`` with a dynamic batch axis (and spatial axes where ``spatial`` and
    ``size`` say) and the given input and output names."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and torchvision notices say nothing about us
        if exporter == "dynamo":
            # the exporter logs that torchvision's ops are not registered on every export; no graph of ours uses them
            logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
            axes = _input_axes(input_names, spatial, size)
            program = torch.onnx.export(
                module, example, input_names=input_names, opset_version=opset,
                dynamo=True, dynamic_shapes=_dynamic_shapes(module, axes), verbose=False,
            )
            model = program.model_proto
            _name_outputs(model.graph, list(output_names))
        else:
            axes = {name: {0: BATCH_AXIS, **(dict(zip((2, 3), AXES[spatial[name]])) if name in spatial else {})}
                    for name in [*input_names, *output_names]}
            torch.onnx.export(module, example, str(path), input_names=input_names, output_names=output_names,
                              opset_version=opset, dynamo=False, dynamic_axes=axes)
            model = onnx.load(str(path))
    return model


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
    spatial: dict[str, str] | None = None,
    size: SpatialSize | None = None,
) -> dict:
    """Export ``module(*example)`` to ``path`` and return its manifest entry (file name, inputs, outputs, ...).

    Every input and output gets the dynamic leading axis ``batch``; with ``size``, those ``spatial`` names
    (``GraphSpec.spatial``) get dynamic H and W axes too. ``metadata`` (JSON-able values) goes into the
    graph's ``metadata_props``. The graph passes ``onnx.checker`` (full check) and strict shape inference, and may
    hold no random operation; otherwise ``ExportError`` names the graph and what failed.
    """
    path = Path(path)
    check_opset(exporter, opset)
    if any(t.shape[0] < 2 for t in example):
        raise ConfigError(f"{path.name}: trace with an example batch of at least 2 rows (1 or 0 fixes the batch "
                          f"axis), got batch sizes {[t.shape[0] for t in example]}")
    module = module.eval()
    try:
        spatial = spatial if size is not None else {}
        model = _export(module, example, input_names, output_names, path, exporter, opset, spatial, size)
    except VaedeployError:
        raise
    except Exception as e:  # the exporters raise many types (torch._dynamo, torch.export, onnxscript) for one cause
        raise ExportError(f"{path.name}: torch.onnx ({exporter} exporter, opset {opset}) could not export the module: "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    random_ops = sorted({n.op_type for n in model.graph.node} & RANDOM_OPS)
    if random_ops:
        raise ExportError(f"{path.name}: the graph holds random operations {random_ops}; draw noise outside the "
                          "module (the runtime passes it in)")
    _name_axes(model.graph, spatial)
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
        "dynamic_axes": {v.name: {"0": BATCH_AXIS, **({str(i): a for i, a in zip((2, 3), AXES[spatial[v.name]])}
                                                      if v.name in spatial else {})}
                         for v in [*model.graph.input, *model.graph.output]},
        "opset": _opset(model),  # what the graph declares, which is what a runtime reads
        "exporter": exporter,
        "ir_version": model.ir_version,
    }
