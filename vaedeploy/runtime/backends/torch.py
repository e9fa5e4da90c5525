"""PyTorch runner: rebuilds the model from the bundle's weights and config; torch tensors in and out.

The only part of the runtime that imports torch and the model classes. fp16 runs the modules in half precision
behind float32 inputs and outputs, like the bundle's fp16 graphs.
"""
from __future__ import annotations

import copy

import torch

from ...bundle import BundleError
from ...io import load_tensors
from ...models import build_model

NATIVE = "torch"
_MODELS: dict = {}  # (weights sha256, device) → model, so the encoder and decoder runners share one copy


def _model(bundle, device: str):
    doc = bundle.manifest.get("model")
    if not doc:
        raise BundleError(f"{bundle.root}: the torch backend needs the model's weights and config, and this "
                          "bundle has none (exported from plain modules); use backend='onnxruntime'")
    key = (bundle.manifest["files"][doc["weights"]], device)
    if key not in _MODELS:
        model = build_model(doc["kind"], doc["config"])
        model.load_state_dict(load_tensors(bundle.path(doc["weights"])))
        _MODELS[key] = model.eval().to(device)
    return _MODELS[key]


class Runner:
    native = NATIVE

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str]):
        graph = bundle.graph(role, precision)
        module = _model(bundle, device)
        self.half = precision == "fp16"
        if self.half:
            # a half copy of the whole model, not of the one module: a module may read weights that another one
            # registers (the tied BiVAE decoder, the BIVA encoder's top-down path); the float32 model stays shared
            module = copy.deepcopy(module).half()
        for name in graph.get("module", role).split("."):  # the module the graph was exported from
            module = getattr(module, name)
        self.module = module
        names = [o["name"] for o in graph["outputs"]]
        self.indices = [names.index(o) for o in outputs]
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, *inputs):
        out = self.module(*(x.half() if self.half and x.is_floating_point() else x for x in inputs))
        out = (out,) if isinstance(out, torch.Tensor) else out
        return [out[i].float() for i in self.indices]
