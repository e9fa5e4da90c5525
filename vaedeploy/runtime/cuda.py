"""CUDA for the runtime: the device check at ``load``, the CUDA-graph recorder of the batch buckets, stream order.

Written against PyTorch's documented CUDA-graph API (``docs/source/notes/cuda.rst``: warm up on a side stream,
capture with ``torch.cuda.graph``, static inputs and outputs, ``replay()``; graphs that never run concurrently may
share one memory pool, ``torch.cuda.graph_pool_handle()``, captured largest first). **Not yet run on a GPU**: the
machines this was written on have none; the ``gpu``-marked tests in ``tests/runtime/test_gpu.py`` are what checks it.

torch is imported inside the functions: this module belongs to the runtime, whose ONNX Runtime path on the CPU never
imports torch.
"""
from __future__ import annotations

import importlib.util
import time

from ..errors import ConfigError, MissingDependency
from .buckets import Recording

WARMUP_CALLS = 3  # calls on the side stream before a capture, as the PyTorch notes do: kernels compiled, cuBLAS and
# cuDNN handles made, the caching allocator grown, none of which may happen inside a capture


def require_cuda(device: str) -> None:
    """Refuse ``device`` (``cuda`` or ``cuda:N``) at load, with one sentence, where this machine cannot run it."""
    if importlib.util.find_spec("torch") is None:
        raise MissingDependency(f"device {device!r} needs torch (its CUDA tensors and the Triton kernels); install "
                                "vaedeploy[train] with a CUDA build of torch")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no CUDA device that torch can use "
                          f"(torch.cuda.is_available() is False; torch {torch.__version__}, built for CUDA "
                          f"{torch.version.cuda or 'none'})")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


class CudaGraphs:
    """Records a slot's call as one CUDA graph: warm-up on a side stream, then capture into the memory pool that
    every graph of the runtime shares; ``run`` replays it on the caller's current stream.

    The pool is safe to share because the runtime replays one graph at a time (``Buckets.lock``) and copies each
    graph's outputs out before the next one runs; the static inputs and the noise scalars live outside the pool.
    """

    graphs = True
    name = "CUDA graphs"
    made = "captured"

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.device)  # every warm-up and capture: one pool is best shared on one stream
        self.pool_bytes = 0  # what the captures grew the caching allocator's reservation by, summed

    def record(self, call, what: str) -> Recording:
        """Warm ``call`` up, capture it, and return its replay; ``what`` names it in the error of a failed capture."""
        try:
            return self._record(call)
        except RuntimeError as e:  # torch reports a CUDA call refused during capture as a RuntimeError
            raise ConfigError(f"{what} could not be captured as a CUDA graph ({str(e).splitlines()[0]}); load the "
                              "bundle with cuda_graphs=False to run it without graphs") from e

    def _record(self, call) -> Recording:
        torch = self.torch
        start = time.perf_counter()
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream()
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                for _ in range(WARMUP_CALLS):
                    call()
            current.wait_stream(self.stream)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # as torch.cuda.graph does on entry; first here, so what follows measures the pool
            reserved = torch.cuda.memory_reserved()
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA work (a server's other requests) does not invalidate this capture
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                outputs = call()
            current.wait_stream(self.stream)
            self.pool_bytes += torch.cuda.memory_reserved() - reserved

        def replay() -> tuple:
            graph.replay()
            return outputs

        return Recording(replay, time.perf_counter() - start, graph)


class StreamOrder:
    """Orders one runtime's calls across streams: a call on another stream than the previous call's waits for it on
    the device (``wait_stream``: no host synchronization), since all its calls share static buffers and one pool."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.last = None

    def begin(self) -> None:
        current = self.torch.cuda.current_stream(self.device)
        if self.last is not None and current != self.last:
            current.wait_stream(self.last)
        self.last = current


class SessionStream:
    """The stream ONNX Runtime's CUDA sessions run on (``user_compute_stream``), ordered with the caller's current
    stream around every run: the session waits for what the caller enqueued (its inputs), the caller for the session."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    @property
    def handle(self) -> str:
        return str(self.stream.cuda_stream)

    def before(self) -> None:
        self.stream.wait_stream(self.torch.cuda.current_stream(self.device))

    def after(self) -> None:
        self.torch.cuda.current_stream(self.device).wait_stream(self.stream)
