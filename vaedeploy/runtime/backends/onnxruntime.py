"""ONNX Runtime backend: numpy in, numpy out, set up for low latency; imports no torch.

Sessions run with every graph optimization on (ORT_ENABLE_ALL), sequential execution and one intra-op thread per
physical core: at the small batches a VAE is served at, more threads only add synchronization. Input and output
names are resolved once, so a call is one ``session.run``.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from ...errors import ConfigError, MissingDependency
from ..arrays import NumpyArrays
from .base import Runner


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores, processor = set(), None
    try:
        physical = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                processor = int(value)
            elif key == "physical id":
                physical = value
            elif key == "core id" and processor in allowed:
                cores.add((physical, value))
    except (OSError, ValueError):
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    return options


def providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependency(f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); this "
                                    f"onnxruntime has {ort.get_available_providers()}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


class OnnxRuntimeRunner(Runner):
    """One graph in an ``InferenceSession``, created on ``activate``."""

    backend = "onnxruntime"

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str] | None = None,
                 threads: int | None = None):
        super().__init__(bundle, role, precision, device, outputs)
        self.providers, self.threads = providers(device), threads
        self.session = None

    def activate_impl(self) -> None:
        self.session = ort.InferenceSession(str(self.graph["path"]), session_options(self.threads),
                                            providers=self.providers)
        # InferenceSession.run re-checks the feed's names in Python on every call (about a microsecond, 10% of a
        # batch-1 call); the runtime has checked the input already, so it calls the compiled session directly
        # where this onnxruntime exposes it, with the same (outputs, feed, run_options) signature.
        self._run = getattr(self.session, "_sess", self.session).run
        self._first = self.input_names[0] if len(self.input_names) == 1 else None

    def deactivate_impl(self) -> None:
        self.session = self._run = None

    def run_impl(self, inputs: tuple) -> list:
        if self._first is not None:  # the hot path of every one-input graph: one dict literal
            return self._run(self.output_names, {self._first: inputs[0]}, None)
        return self._run(self.output_names, dict(zip(self.input_names, inputs)), None)


class Backend:
    """What a runtime asks of a backend: its arrays, a runner per graph, and ``close``."""

    name = "onnxruntime"

    def __init__(self, bundle, precision: str, device: str):
        providers(device)  # refuse a device this onnxruntime cannot serve before any session is made
        self.bundle, self.precision, self.device = bundle, precision, device
        self.arrays = NumpyArrays()

    def runner(self, role: str, outputs: list[str] | None = None) -> OnnxRuntimeRunner:
        return OnnxRuntimeRunner(self.bundle, role, self.precision, self.device, outputs)

    def close(self) -> None:
        pass
