"""Which noise each row of a call draws: the reproducibility promise, in one place (docs/runtime.md).

The noise of ``encode`` and ``sample`` is Philox4x32-10 (``vaedeploy.kernels``), defined by a seed and a row index,
not by a framework RNG: row t of the stream of seed s, in a latent of d values, is the d standard normals at
counters t·d … t·d + d − 1 of key s. A call's row r uses row ``offset + r`` of ``seed``; with per-row seeds and
offsets (arrays of N values) row r uses row ``offset[r]`` of ``seed[r]``. So

- the same seed and rows give the same z on every call and however the batch is split (the runtime splits at
  ``max_batch``; ``encode(x[:5], seed=7)`` and ``encode(x[5:], seed=7, offset=5)`` together are ``encode(x, seed=7)``);
- a server that joins requests into one batch gives each request exactly the noise its own call would have drawn,
  by passing every row's seed and offset.
Identical on one backend; across backends equal to about 1e-6 (the graphs' float error and libm's last bits).

A recorded call (a CUDA graph of one batch bucket, ``buckets.py``) draws through ``DeviceNoise``: the seed and the
first row live in device scalars that the call writes before each replay, and the kernels load them from memory, so
one graph draws the noise of every (seed, offset) exactly as the call without a graph does. Per-row seeds and
offsets need one stream per row, which the kernels do not take in one launch: those calls run outside the graph.
"""
from __future__ import annotations

import secrets

import numpy as np

from ..errors import InputError
from ..kernels.limits import STREAM_LIMIT
from .arrays import dense, is_tensor


def _integers(value, n: int, name: str, low: int, high: int):
    """An int, or an array of n ints, each in [low, high); else an ``InputError`` naming the argument. numpy integer
    scalars (int64, uint64 of any value) and 0-d integer arrays or tensors count as ints."""
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected an integer or {n} integers, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if not low <= int(value) < high:
            raise InputError(f"{name}: expected an integer in [{low}, 2**63), got {value!r}")
        return int(value)
    if is_tensor(value):
        dense(value, name)
        value = value.detach().cpu()
    array = np.asarray(value)
    if array.ndim == 0 and array.dtype.kind in "iu":
        return _integers(array.item(), n, name, low, high)
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError(f"{name}: expected an integer or {n} integers (one per row), got "
                         f"{array.dtype} values shaped {list(array.shape)}")
    if n and (array.min() < low or int(array.max()) >= high):
        raise InputError(f"{name}: expected integers in [{low}, 2**63), got values in [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


class Noise:
    """The rows of noise streams a call of N rows draws: ``seed`` and first row ``offset``, each shared or per row.

    It slices like the call's arrays (``noise[rows]`` is the noise of those rows), so a split batch hands every
    slice its own rows' noise.
    """

    __slots__ = ("seed", "offset", "rows")

    def __init__(self, seed, offset, rows: int):
        self.seed, self.offset, self.rows = seed, offset, rows

    def __len__(self) -> int:
        return self.rows

    @property
    def is_one_stream(self) -> bool:
        """Whether every row draws from one seed's stream at consecutive rows (what a recorded call can draw)."""
        return isinstance(self.seed, int) and isinstance(self.offset, int)

    @classmethod
    def of(cls, seed, offset, n: int) -> "Noise":
        """Check a call's ``seed`` (None: a fresh random one) and ``offset`` for N rows."""
        if type(seed) is int and type(offset) is int and 0 <= seed < STREAM_LIMIT and 0 <= offset < STREAM_LIMIT:
            return cls(seed, offset, n)  # the common call: 1.2 µs less than _integers
        seed = secrets.randbits(63) if seed is None else _integers(seed, n, "seed", 0, STREAM_LIMIT)
        offset = _integers(offset, n, "offset", 0, STREAM_LIMIT)
        if isinstance(offset, int) and not isinstance(seed, int):  # per-row seeds: row r is still row offset + r
            offset = offset + np.arange(n, dtype=np.int64)
        return cls(seed, offset, n)

    def __getitem__(self, rows: slice) -> "Noise":
        start, stop, _ = rows.indices(self.rows)
        seed = self.seed if isinstance(self.seed, int) else self.seed[start:stop]
        offset = self.offset + start if isinstance(self.offset, int) else self.offset[start:stop]
        return Noise(seed, offset, stop - start)

    def stream(self, width: int, base: int = 0) -> tuple:
        """(seed, offset) for the kernels, which count elements: one stream when seed and offset are shared, else
        per-row arrays (row r starts at element base + offset[r]·width of seed[r])."""
        if isinstance(self.seed, int) and isinstance(self.offset, int):
            start = base + self.offset * width
            if start >= STREAM_LIMIT:
                raise InputError(f"offset: row {self.offset} of a {width}-wide stream is past 2**63 counters")
            return self.seed, start
        offset = np.asarray(self.offset, dtype=np.int64)
        if offset.size and int(offset.max()) >= (STREAM_LIMIT - base) // max(width, 1):
            raise InputError(f"offset: row {int(offset.max())} of a {width}-wide stream is past 2**63 counters")
        return np.broadcast_to(np.asarray(self.seed, dtype=np.int64), offset.shape), base + offset * width


class DeviceNoise:
    """The noise of a recorded call: one seed's stream from row ``row``, both held in 0-d integer arrays of the
    backend (device tensors on CUDA) that ``write`` fills before each call.

    ``rows(n)`` is what the recorded call draws through: it has the ``len`` and ``stream`` of a ``Noise`` of n rows,
    and its ``stream`` gives the kernels those arrays, the element offset ``row · width + base`` computed on the
    device, so a CUDA graph that captured the call reads the values written before its replay. The host checks what
    ``Noise.stream`` checks (no counter past 2**63) for every stream the recorded calls draw.
    """

    def __init__(self, arrays):
        self.arrays = arrays
        self.seed, self.row = arrays.scalar(0, "int64"), arrays.scalar(0, "int64")
        self._written: tuple[int, int] | None = None  # what the arrays hold now, so unchanged values are not rewritten
        self._noise: Noise | None = None
        self._streams: set[tuple[int, int]] = set()  # (width, base) of every stream drawn so far

    def write(self, noise: Noise) -> None:
        """Make the arrays hold ``noise``'s seed and first row (one stream; per-row noise never comes here)."""
        for width, base in self._streams:
            noise.stream(width, base)  # raises the InputError of a stream past 2**63 counters
        if self._written != (noise.seed, noise.offset):
            self.arrays.fill(self.seed, noise.seed)
            self.arrays.fill(self.row, noise.offset)
            self._written = (noise.seed, noise.offset)
        self._noise = noise

    def rows(self, n: int) -> "DeviceRows":
        return DeviceRows(self, n)

    def _stream(self, width: int, base: int) -> tuple:
        self._streams.add((width, base))
        if self._noise is not None:
            self._noise.stream(width, base)
        return self.seed, self.row * width + base


class DeviceRows:
    """n rows of a ``DeviceNoise``: what a recorded call of a bucket of n rows takes in place of its ``Noise``."""

    __slots__ = ("noise", "n")

    def __init__(self, noise: DeviceNoise, n: int):
        self.noise, self.n = noise, n

    def __len__(self) -> int:
        return self.n

    def stream(self, width: int, base: int = 0) -> tuple:
        """(seed, element offset) as arrays the kernels load: row r of the call draws row ``row + r`` of the seed."""
        return self.noise._stream(width, base)
