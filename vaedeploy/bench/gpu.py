"""The GPU side of a benchmark, through torch's CUDA API (imported only for ``--device cuda``).

- Host latency: perf_counter around the call until its work is done (an event after it, synchronized); enqueue
  time: perf_counter around the call alone (what it costs the host to launch the work, as trtexec reports it);
  device time: CUDA events recorded on the current stream before and after the call.
- The launch floor: the host time of one small kernel launch, and of one CUDA-graph launch, each the mean of a long
  loop of launches (what a call of k launches cannot undercut).
- Rates: a matrix product in the graph's precision (fp32 without TF32, torch's default, or fp16) and copies of
  4 MiB, 64 MiB and 1 GiB, timed with events.

Not yet measured on a GPU: no GPU was available where this was written; tests/bench covers what the CPU can.
"""
from __future__ import annotations

import time

from ..errors import ConfigError
from .loop import TimedCall

COPY_SIZES = (1 << 22, 1 << 26, 1 << 30)  # 4 MiB, 64 MiB, 1 GiB


def _torch():
    import torch

    return torch


def require_cuda(device: str) -> None:
    """Refuse ``--device cuda`` in one sentence where there is no CUDA device."""
    try:
        torch = _torch()
    except ImportError:
        raise ConfigError(f"--device {device}: timing on a GPU needs torch with CUDA; torch is not installed") \
            from None
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device here (torch.cuda.is_available() is False)")


def device_timed(call, device: str) -> TimedCall:
    """``call`` timed three ways: host latency to completion, device time (CUDA events), enqueue time."""
    torch = _torch()
    stream = torch.cuda.current_stream(torch.device(device))
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(i: int) -> tuple:
        start_event.record(stream)
        start = time.perf_counter()
        call(i)
        enqueued = time.perf_counter()
        end_event.record(stream)
        end_event.synchronize()
        done = time.perf_counter()
        return done - start, start_event.elapsed_time(end_event) / 1e3, enqueued - start

    return timed


def synchronized(call, device: str) -> TimedCall:
    """Host latency to completion for concurrent callers (events on a shared stream would mix their calls)."""
    torch = _torch()
    stream = torch.cuda.current_stream(torch.device(device))

    def timed(i: int) -> tuple:
        start = time.perf_counter()
        call(i)
        stream.synchronize()
        return time.perf_counter() - start, None, None

    return timed


def _event_seconds(run, repeats: int) -> float:
    torch = _torch()
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def measure_rates(device: str, precision: str) -> dict:
    """The GPU's matrix-product rate, copy rates and launch times (see the module doc)."""
    torch = _torch()
    dev = torch.device(device)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    size = 8192
    a, b = (torch.randn(size, size, device=dev, dtype=dtype) for _ in range(2))
    matmul = 2 * size**3 / _event_seconds(lambda: a @ b, 10)
    copies = []
    for nbytes in COPY_SIZES:
        source = torch.ones(nbytes // 4, device=dev)
        target = torch.empty_like(source)
        seconds = _event_seconds(lambda source=source, target=target: target.copy_(source), 20)
        copies.append({"bytes": nbytes, "bytes_per_s": 2 * nbytes / seconds})
    x = torch.zeros(1, device=dev)
    launches = 2000

    def loop(step) -> float:
        step()
        torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(launches):
            step()
        torch.cuda.synchronize(dev)
        return (time.perf_counter() - start) / launches

    kernel = loop(lambda: x.add_(1))
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        x.add_(1)  # warm-up on a side stream before capture, as PyTorch's CUDA-graph notes ask
    torch.cuda.current_stream(dev).wait_stream(side)
    with torch.cuda.graph(graph):
        x.add_(1)
    return {"device": torch.cuda.get_device_name(dev),
            "matmul": {"dtype": str(dtype).replace("torch.", ""), "size": size, "flops_per_s": matmul,
                       "tf32": bool(torch.backends.cuda.matmul.allow_tf32)},
            "copy": copies, "launch": {"kernel_s": kernel, "graph_s": loop(graph.replay)}}
