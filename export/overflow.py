"""Where a graph first goes non-finite: the node whose output holds NaN or Inf while every value before it is finite.

A float16 graph that overflows (SDXL's VAE decoder in fp16: activations beyond 65504 become Inf, then NaN in the
next normalisation) gives NaN images and no hint why. Validation fails such a graph hard and names the first node
that overflows, found here by running the graph once more with every node's outputs made graph outputs, in
ONNX Runtime without graph optimisations (so the nodes are the file's own, in its topological order).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


@dataclass(frozen=True)
class Overflow:
    """The first node with a non-finite output: its name, op type, the PyTorch module it was exported from (where
the exporter recorded it), that output's name and its largest finite input magnitude (how close to the type's
range its inputs already were)."""

    node: str
    op_type: str
    module: str | None
    output: str
    largest_input: float

    def __str__(self) -> str:
        where = f" in module {self.module}" if self.module else ""
        return (f"the first node that overflows is {self.node!r} ({self.op_type}{where}, output {self.output!r}; "
                f"its inputs reach |{self.largest_input:.4g}|)")


def first_overflow(path: str | Path, feed: dict[str, np.ndarray]) -> Overflow | None:
    """The first node of the graph at ``path`` whose output is not finite on ``feed``; None when ONNX Runtime gives
    no such node (every value finite, or the non-finite values come from inside a subgraph)."""
    model = onnx.load(str(path))
    graph = model.graph
    known = {v.name for v in graph.output}
    for node in graph.node:
        graph.output.extend(onnx.ValueInfoProto(name=name) for name in node.output if name and name not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feed)))
    values.update(feed)
    for node in graph.node:
        for name in node.output:
            if name in values and _floating(values[name]) and not np.isfinite(values[name]).all():
                return Overflow(node.name, node.op_type, _module(node), name, _largest(values, node.input))
    return None


def _module(node: onnx.NodeProto) -> str | None:
    """The module path the dynamo exporter records in a node's name scopes (its last scope is the op itself), less
    the ``module.`` of export's half-precision wrapper, so fp16 and fp32 graphs name the same path."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    try:
        scopes = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        return None
    path = scopes[-2] if len(scopes) >= 2 and isinstance(scopes[-2], str) else ""
    return path.removeprefix("module.") or None


def _floating(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _largest(values: dict, names) -> float:
    finite = [np.abs(values[n][np.isfinite(values[n])]).max(initial=0.0) for n in names
              if n in values and _floating(values[n])]
    return float(max(finite, default=0.0))
