"""Batch buckets: a call of n rows runs the smallest bucket ≥ n on static buffers, through one recording per op and
bucket.

A runtime with buckets (``load(..., buckets=...)``; on CUDA by default) keeps, for each op it has run, each bucket size
and each per-row shape (an image size, for a bundle that takes any: the key is (op, batch, H, W)), a ``Slot``: static
input buffers of the bucket's rows and a ``Recording`` of the op's ``Plan`` on them. A call copies its rows into the
first rows of the static inputs (the rows after them keep what an earlier call left: every op is row-wise, so they never
change the caller's rows), writes its seed, first row and temperature into device scalars (``noise.DeviceNoise``), runs
the recording, and copies its n rows out of the outputs, into ``out`` when the caller gave one. Calls above the largest
bucket run in slices of the largest bucket. A slot is made once: a bucket is never recorded again for an op it has.

What a recording is comes from the recorder the runtime was built with, so this module knows nothing of CUDA:

- ``cuda.CudaGraphs``: one CUDA graph per (op, bucket) capturing the whole call (encoder + reparameterize or nearest
  code, noise + decoder), every graph in one shared memory pool;
- ``DirectCalls``: the plan called directly on the static buffers, no graph: the CPU, ``cuda_graphs=False``, and
  ONNX Runtime, whose sessions record their own CUDA graph per bucket (``backends/onnxruntime.py``). The CPU tests
  run the bucket machinery through this recorder, in place of CUDA graphs.

The graphs share static buffers and one memory pool, so a runtime runs one call at a time (``Buckets.lock``), and
on CUDA a call on another stream than the previous one waits for it on the device (``cuda.StreamOrder``). Sharing a
pool between graphs that never run concurrently is safe when no graph's output is read after another graph ran:
each call copies its outputs out before it releases the lock (docs/runtime.md).
"""
from __future__ import annotations

import numbers
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError
from .arrays import shape_text
from .noise import DeviceNoise, Noise


def bucket_sizes(buckets, max_batch: int) -> tuple[int, ...]:
    """The bucket sizes of ``buckets`` (None: 1, 2, 4, … up to ``max_batch``, and ``max_batch`` itself), checked."""
    if buckets is None:
        sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
        return tuple(sorted({*sizes, max_batch}))
    try:
        sizes = sorted(set(buckets))
    except TypeError:
        raise ConfigError(f"buckets must be batch sizes (positive integers), got {buckets!r}") from None
    if not sizes or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 1 <= s <= max_batch
                        for s in sizes):
        raise ConfigError(f"buckets must be batch sizes from 1 to the bundle's max_batch {max_batch}, got "
                          f"{list(buckets)!r}")
    return tuple(int(s) for s in sizes)


@dataclass(frozen=True)
class Plan:
    """What one op runs on the rows of one slice: ``rows(*inputs[, noise][, temperature]) -> tuple of outputs``.

    ``inputs`` are each input's trailing shape and dtype at the reference size (for the static buffers of ``warmup``);
    ``noise`` and ``temperature`` say whether the op draws noise and takes a temperature; ``sized`` whether ``rows``
    also takes the latent shape of one row (a sample at any image size), last. ``rows`` must depend on nothing but its
    arguments and the runtime's fixed state: a recording replays what it did once. ``recordable`` is False for an op
    that reads results on the host as it runs (the VQ prior's autoregressive loop): it always runs directly.
    """

    rows: Callable
    inputs: tuple = ()
    noise: bool = False
    temperature: bool = False
    recordable: bool = True
    sized: bool = False

    def extra(self, temperature, shape) -> tuple:
        """The arguments ``rows`` takes after its inputs and noise: the temperature and the latent shape, where it
        takes them."""
        return ((temperature,) if self.temperature else ()) + ((shape,) if self.sized else ())


@dataclass
class Recording:
    """A plan's call on a slot's static buffers, ready to run again: ``run()`` returns the outputs."""

    run: Callable[[], tuple]
    seconds: float = 0.0  # the time recording took (warm-up and capture)
    graph: object = None  # the CUDA graph, where there is one


class DirectCalls:
    """Records nothing: a recording calls the plan directly on the static buffers. What runs on the CPU, with
    ``cuda_graphs=False``, and around ONNX Runtime's own graphs; the CPU tests run every other part of the buckets
    through it.

    Args:
        warmup_runs: calls made when a slot is recorded (ONNX Runtime captures its CUDA graph on its third run of a
            bucket, so warming up three times at load leaves every graph captured).
    """

    graphs = False
    name = "direct calls"
    made = "made"  # the repr counts the slots "made" (a CUDA-graph recorder's are "captured")

    def __init__(self, warmup_runs: int = 0):
        self.warmup_runs = warmup_runs
        self.pool_bytes = None

    def record(self, call: Callable[[], tuple], what: str) -> Recording:
        start = time.perf_counter()
        for _ in range(self.warmup_runs):
            call()
        return Recording(call, time.perf_counter() - start)


class HostOrder:
    """The CPU's (and numpy's) stream order: calls run one after another on the host."""

    def begin(self) -> None:
        pass


@dataclass
class Slot:
    """One (op, bucket): the static inputs of ``size`` rows and the recording of the op's plan on them."""

    size: int
    inputs: tuple
    recording: Recording
    runs: int = 0
    shapes: tuple = ()  # the per-row shape of each input (and a sized plan's latent shape)


class Buckets:
    """The batch buckets of one runtime: its slots, its device noise and temperature, and the lock of its calls.

    Args:
        arrays: the backend's array adaptor (``arrays.py``).
        sizes: the bucket sizes, ascending (``bucket_sizes``).
        recorder: how a slot's call is recorded (``DirectCalls`` or ``cuda.CudaGraphs``).
        order: how a call waits for the previous one's device work (``HostOrder`` or ``cuda.StreamOrder``).
    """

    def __init__(self, arrays, sizes: tuple[int, ...], recorder, order=None):
        self.arrays, self.sizes, self.recorder = arrays, sizes, recorder
        self.order = order or HostOrder()
        self.lock = threading.Lock()
        self.slots: dict[tuple[str, int, tuple], Slot] = {}  # (op, bucket, per-row shapes) → its slot
        self.noise = DeviceNoise(arrays)
        self.temperature = arrays.scalar(1.0, "float32")
        self._temperature = 1.0  # what ``temperature`` holds, so an unchanged one is not written again

    def bucket(self, n: int) -> int:
        """The smallest bucket of at least n rows (n is at most the largest bucket)."""
        for size in self.sizes:
            if size >= n:
                return size
        raise ValueError(f"{n} rows are above the largest bucket {self.sizes[-1]}; the caller splits them")

    def call(self, op: str, plan: Plan, inputs: tuple, noise: Noise | None, temperature, out=None,
             shape=None) -> tuple:
        """``plan`` over every row of ``inputs`` (and ``noise``, at latent ``shape`` for a sized plan): slices of at
        most the largest bucket, each through the slot of its bucket and shapes; the outputs gathered into arrays of
        all the rows (the first into ``out`` when given)."""
        n = len(inputs[0]) if inputs else len(noise)
        with self.lock:
            self.order.begin()
            results = None
            for start in range(0, n, self.sizes[-1]):
                stop = min(n, start + self.sizes[-1])
                slot = self._slot(op, plan, inputs, self.bucket(stop - start), shape)
                outputs = self._run(slot, plan, [a[start:stop] for a in inputs],
                                    noise[start:stop] if plan.noise else None, temperature)
                if results is None:
                    results = [self._result(out if i == 0 else None, n, o) for i, o in enumerate(outputs)]
                for whole, part in zip(results, outputs):
                    whole[start:stop] = part[:stop - start]
        return tuple(results)

    def warm(self, op: str, plan: Plan, shape=None) -> None:
        """Record ``plan`` for every bucket now at the reference size (``plan.inputs``; ``shape`` for a sized plan),
        the largest first (the shared pool then grows once, to the largest)."""
        with self.lock:
            self.order.begin()
            for size in reversed(self.sizes):
                self._slot(op, plan, [self.arrays.new((1, *dims), dtype) for dims, dtype in plan.inputs], size, shape)

    def _slot(self, op: str, plan: Plan, inputs, size: int, shape=None) -> Slot:
        shapes = tuple(tuple(a.shape[1:]) for a in inputs) + ((tuple(shape),) if plan.sized else ())
        slot = self.slots.get((op, size, shapes))
        if slot is None:
            statics = tuple(self.arrays.zeros((size, *a.shape[1:]), a) for a in inputs)
            extra = ((self.noise.rows(size),) if plan.noise else ()) + plan.extra(self.temperature, shape)

            def call():
                with self.arrays.inference():
                    return plan.rows(*statics, *extra)

            what = f"{op} at bucket {size}" + (f" (rows of {' and '.join(map(shape_text, shapes))})" if shapes else "")
            slot = self.slots[(op, size, shapes)] = Slot(size, statics, self.recorder.record(call, what), shapes=shapes)
        return slot

    def _result(self, out, n: int, like):
        shape = (n, *like.shape[1:])
        return self.arrays.empty(shape, like) if out is None else self.arrays.take_out(out, shape, like)

    def _run(self, slot: Slot, plan: Plan, rows: list, noise: Noise | None, temperature) -> tuple:
        for static, part in zip(slot.inputs, rows):
            static[:len(part)] = part
        if noise is not None:
            self.noise.write(noise)
        if plan.temperature and temperature != self._temperature:
            self.arrays.fill(self.temperature, temperature)
            self._temperature = temperature
        slot.runs += 1
        return slot.recording.run()

    def describe(self) -> dict:
        """Which (op, bucket) pairs are recorded, how long their recordings took (at every shape together), how often
        they ran, at which per-row shapes, and the memory held."""
        ops: dict[str, dict] = {}
        static_bytes = 0
        for (op, size, _), slot in sorted(self.slots.items()):
            entry = ops.setdefault(op, {}).setdefault(size, {"recorded_seconds": 0.0, "runs": 0, "shapes": []})
            entry["recorded_seconds"] = round(entry["recorded_seconds"] + slot.recording.seconds, 6)
            entry["runs"] += slot.runs
            entry["shapes"].append([list(s) for s in slot.shapes])
            static_bytes += sum(a.nbytes for a in slot.inputs)
        return {"sizes": list(self.sizes), "recorded": ops, "static_input_bytes": static_bytes,
                "graph_pool_bytes": self.recorder.pool_bytes}
