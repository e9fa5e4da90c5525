"""ONNX Runtime runner: numpy in, numpy out, set up for low latency; imports no torch.

Sessions run with every graph optimization on (ORT_ENABLE_ALL), sequential execution and one intra-op thread per
physical core: at the small batches a VAE is served at, more threads only add synchronization. Input and output
names are resolved once, so a call is one ``session.run``.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

NATIVE = "numpy"


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
            raise RuntimeError(f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime "
                               f"has {ort.get_available_providers()}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


class Runner:
    """One graph of a bundle in an ``InferenceSession``; ``runner(*inputs)`` (in the graph's input order) returns
    the chosen outputs as numpy arrays."""

    native = NATIVE

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str]):
        graph = bundle.graph(role, precision)
        self.session = ort.InferenceSession(str(graph["path"]), session_options(), providers=providers(device))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]
        known = [o.name for o in self.session.get_outputs()]
        if unknown := [o for o in outputs if o not in known]:
            raise ValueError(f"{graph['file']} has outputs {known}; asked for {unknown}")
        self.outputs = list(outputs)
        # InferenceSession.run re-checks the feed's names in Python on every call (about a microsecond, 10% of a
        # batch-1 call); the runtime has checked the input already, so it calls the compiled session directly
        # where this onnxruntime exposes it, with the same (outputs, feed, run_options) signature.
        self._run = getattr(self.session, "_sess", self.session).run

    def __call__(self, *inputs):
        if len(inputs) == 1:  # the hot path of every one-input graph: no zip, one dict literal
            return self._run(self.outputs, {self.input_name: inputs[0]}, None)
        return self._run(self.outputs, dict(zip(self.input_names, inputs)), None)
