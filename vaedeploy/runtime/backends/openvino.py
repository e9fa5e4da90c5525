"""OpenVINO backend: the bundle's ONNX graphs compiled by OpenVINO for the CPU; numpy in, numpy out, no torch.

``pip install 'vaedeploy[openvino]'``. Each graph is compiled once (``Core.compile_model``) with
``INFERENCE_PRECISION_HINT`` from the runtime's precision (``fp32`` → f32, ``fp16`` → f16, ``bf16`` → bf16 on the fp32
graph: OpenVINO lowers the arithmetic itself, on AMX or AVX-512-BF16 units where the CPU has them), the latency
performance hint, one stream and one thread per physical core; ``openvino_config`` adds or replaces any of OpenVINO's
CPU properties (``PERFORMANCE_HINT``, ``NUM_STREAMS``, ``INFERENCE_NUM_THREADS``, …). Where a CPU has no unit for the
asked precision OpenVINO runs f32 instead; ``Backend.executes`` reads back what each graph runs at, and
``describe()`` says it. Noise, batch splitting and buckets stay the runtime's: a runner is one graph, one call.
"""
from __future__ import annotations

import threading

import openvino as ov

from ...errors import BundleError, ConfigError
from ..arrays import NumpyArrays
from .base import Runner
from .onnxruntime import physical_cores

HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}  # the runtime's precision → INFERENCE_PRECISION_HINT


def compile_config(precision: str, config: dict | None = None) -> dict:
    """The properties every graph is compiled with: the precision's hint, low latency, then the caller's own."""
    if config is not None and not (isinstance(config, dict) and all(isinstance(k, str) for k in config)):
        raise ConfigError(f"openvino_config: expected a dict of OpenVINO CPU properties by name (e.g. "
                          f"{{'NUM_STREAMS': '2'}}), got {config!r}")
    return {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(physical_cores()), **{k: str(v) for k, v in (config or {}).items()}}


class OpenVinoRunner(Runner):
    """One graph compiled for the CPU, called through one infer request (a lock keeps calls from two threads apart:
    an infer request is not reentrant)."""

    backend = "openvino"

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str] | None, core: ov.Core,
                 config: dict):
        super().__init__(bundle, role, precision, device, outputs)
        self.core, self.config = core, config
        self.compiled = self.request = None
        self._lock = threading.Lock()

    def activate_impl(self) -> None:
        try:
            self.compiled = self.core.compile_model(str(self.graph["path"]), "CPU", self.config)
        except RuntimeError as e:  # OpenVINO reports a bad file and a bad property alike
            raise BundleError(f"{self.graph['path']}: OpenVINO cannot compile this {self.role} graph with "
                              f"{self.config} ({str(e).strip().splitlines()[0]}); expected the ONNX file "
                              "`vaedeploy export` wrote and CPU properties OpenVINO knows") from None
        self.request = self.compiled.create_infer_request()
        self._ports = [self.compiled.output(name) for name in self.output_names]

    def executes(self) -> str:
        """The precision OpenVINO runs this graph at on this CPU (f32 where the CPU has no unit for the hint)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def deactivate_impl(self) -> None:
        self.compiled = self.request = None

    def run_impl(self, inputs: tuple) -> list:
        with self._lock:
            # share_inputs: no copy in; share_outputs then a copy of the chosen outputs only (the request's buffers are
            # reused by the next call; decode's log-variance is never copied)
            self.request.infer(inputs, share_inputs=True, share_outputs=True)
            return [self.request.get_tensor(port).data.copy() for port in self._ports]


class Backend:
    """A bundle's graphs on OpenVINO's CPU plugin (``load(..., backend="openvino", openvino_config=...)``).

    Args:
        buckets: the runtime's batch buckets, if any (a runner takes any batch: nothing changes here).
        cuda_graphs: must be False (the CPU only).
        openvino_config: OpenVINO CPU properties that add to or replace ``compile_config``'s.
    """

    name = "openvino"
    capturable = False
    warmup_runs = 0

    def __init__(self, bundle, precision: str, device: str, buckets: tuple[int, ...] | None = None,
                 cuda_graphs: bool = False, openvino_config: dict | None = None):
        if device != "cpu":
            raise ConfigError(f"backend 'openvino' runs on the CPU here: load the bundle with device='cpu', got "
                              f"{device!r}")
        self.bundle, self.precision, self.device = bundle, precision, device
        self.config = compile_config(precision, openvino_config)
        self.arrays = NumpyArrays()
        self.core = ov.Core()
        known = set(self.core.get_property("CPU", "SUPPORTED_PROPERTIES"))
        if unknown := sorted(set(self.config) - known):
            raise ConfigError(f"openvino_config: expected OpenVINO CPU properties (among {sorted(known)}), got "
                              f"{unknown}")
        self._runners: list[OpenVinoRunner] = []

    def runner(self, role: str, outputs: list[str] | None = None) -> OpenVinoRunner:
        runner = OpenVinoRunner(self.bundle, role, self.precision, self.device, outputs, self.core, self.config)
        self._runners.append(runner)
        return runner

    def executes(self) -> dict[str, str]:
        """role → the precision OpenVINO runs each active graph at here."""
        return {r.role: r.executes() for r in self._runners if r.is_active}

    def close(self) -> None:
        self._runners = []
