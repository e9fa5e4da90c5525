"""PyTorch backend: the model rebuilt from the bundle's weights and config; torch tensors in and out.

The model is a vaedeploy kind, or for a bundle imported from diffusers (kind ``diffusers.CLASS``) diffusers' own
class built from the stored config, with diffusers imported only then (``models/diffusers.py``).

The only part of the runtime that imports torch and the model classes. The model is built once per runtime (the
runners of its graphs share it) and freed by ``close``. fp16 and bf16 build it in that precision behind float32
inputs and outputs, like the bundle's fp16 graphs and its validated bf16 variant.
"""
from __future__ import annotations

import torch

from ...errors import BundleError, ConfigError
from ...io import load_tensors
from ...models import build_model
from ...models.diffusers import KIND_PREFIX, rebuild
from ..arrays import TorchArrays
from .base import Runner

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the runtime's precision → torch's


class TorchRunner(Runner):
    """The module of one graph (``graph["module"]``, an attribute path in the model) under inference mode."""

    backend = "torch"

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str] | None, model):
        super().__init__(bundle, role, precision, device, outputs)
        self._model = model  # the backend's loader of the shared model
        names = [spec["name"] for spec in self.graph["outputs"]]
        self.indices = [names.index(o) for o in self.output_names]
        self.dtype = DTYPES[precision]
        self.module = None

    def activate_impl(self) -> None:
        module = self._model()
        path = self.graph.get("module", self.role)  # the module the graph was exported from
        try:
            for name in path.split("."):
                module = getattr(module, name)
        except (AttributeError, TypeError):  # not a string, or no such module
            raise BundleError(f"{self.graph['path'].parent / 'manifest.json'}: graphs.{self.role}.{self.precision}."
                              f"module: expected the path of a module of the bundle's model, got {path!r}") from None
        self.module = module

    def deactivate_impl(self) -> None:
        self.module = None

    @torch.inference_mode()
    def run_impl(self, inputs: tuple) -> list:
        out = self.module(*(x.to(self.dtype) if x.is_floating_point() else x for x in inputs))
        out = (out,) if isinstance(out, torch.Tensor) else out
        return [out[i].float() for i in self.indices]


class Backend:
    """The model's modules on one device. They run inside the runtime's CUDA graphs (``capturable``: a module's
    forward is expected to make no host synchronization; a capture that meets one fails with a sentence), so the
    batch buckets capture the whole call around them, and ``buckets`` and ``cuda_graphs`` ask nothing of the backend
    itself."""

    name = "torch"
    capturable = True
    warmup_runs = 0

    def __init__(self, bundle, precision: str, device: str, buckets: tuple[int, ...] | None = None,
                 cuda_graphs: bool = False):
        self.doc = bundle.manifest.get("model")
        if not self.doc:
            raise BundleError(f"{bundle.root}: the torch backend needs the model's weights and config, and this "
                              "bundle has none (exported from plain modules); use backend='onnxruntime'")
        self.bundle, self.precision, self.device = bundle, precision, device
        self.arrays = TorchArrays(device)
        self._built = None

    def model(self) -> torch.nn.Module:
        """The bundle's model on the device in the runtime's precision, built on first use: a vaedeploy kind from
        the registry, or an imported diffusers autoencoder rebuilt with diffusers (``models/diffusers.py``)."""
        if self._built is None:
            kind, config = self.doc["kind"], self.doc["config"]
            path = self.bundle.path(self.doc["weights"])
            try:
                if kind.startswith(KIND_PREFIX):
                    model = rebuild(kind, config, load_tensors(path))
                else:
                    model = build_model(kind, config)
                    model.load_state_dict(load_tensors(path))
            except ConfigError as e:
                raise BundleError(f"{self.bundle.root / 'manifest.json'}: model: {e}") from None
            except RuntimeError as e:
                raise BundleError(f"{path}: does not fit the {kind} model of manifest.json "
                                  f"({str(e).splitlines()[0]})") from None
            self._built = model.eval().to(self.device, DTYPES[self.precision])
        return self._built

    def runner(self, role: str, outputs: list[str] | None = None) -> TorchRunner:
        return TorchRunner(self.bundle, role, self.precision, self.device, outputs, self.model)

    def close(self) -> None:
        self._built = None
