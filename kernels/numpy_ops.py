"""The ops in plain numpy, for the ONNX Runtime path of the product, where torch may not even import.

Same semantics as the torch references and the Triton kernels: the same seed and offset draw the same noise
(element i of the flattened, row-major array uses Philox counter offset + i), logvar is clamped to [-30, 20], the
nearest code is the lowest index among equal squared distances. Math in float32 (float64 for float64 input).

Per-row streams: ``seed`` and ``offset`` may also be integer arrays with one value per row (``shape[0]``); row r
then draws counters offset[r] + j for its j-th element under key seed[r]. With ``offset = o + r·row_size`` and one
seed this is exactly the single stream, which is what lets a server batch requests of different seeds together.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import philox
from .limits import LOGVAR_MAX, LOGVAR_MIN

_FLOATS = frozenset((np.float16, np.float32, np.float64))


def _check_float(name: str, x: np.ndarray) -> None:
    if x.dtype.type not in _FLOATS:
        raise TypeError(f"{name} must be float16, float32 or float64, got {x.dtype}")


def _index(name: str, value) -> int:
    """An integer seed or offset as an int: ints, numpy integers and 0-d integer arrays; a float or a bool would be
    truncated or mistaken for a number, so it is refused."""
    if type(value) is int:
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer (an int, a numpy integer or a 0-d integer array), got "
                        f"{type(value).__name__} {value!r}") from None


def _streams(shape, seed, offset) -> tuple:
    """(shape, element count, seed, start) of a draw: one stream of counters from ``offset`` under ``seed`` (ints),
    or one run per row (see the module doc; int64 arrays of one seed and start per row)."""
    if type(shape) is not tuple:  # an array's .shape (the hot path) is a tuple of ints already
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
    n = math.prod(shape)
    # one stream for ints and 0-d arrays (the device scalars a bucketed call writes); ints short-circuit np.ndim
    if (type(seed) is int or np.ndim(seed) == 0) and (type(offset) is int or np.ndim(offset) == 0):
        seed, offset = _index("seed", seed), _index("offset", offset)
        return shape, n, int(philox.check_seed(seed)), philox.check_start(offset, n)
    rows = shape[0] if shape else 1
    width = n // rows if rows else 0
    seed = np.broadcast_to(np.asarray(seed), (rows,))
    offset = philox.check_starts(np.broadcast_to(np.asarray(offset), (rows,)), width)
    return shape, n, philox.check_seed(seed).astype(np.int64), offset


def standard_normal_numpy(shape, seed, offset=0, dtype=np.float32) -> np.ndarray:
    """Standard normals shaped `shape`; element i (row-major) is `tl.randn(seed, offset + i)`, or with per-row
    ``seed``/``offset`` arrays element j of row r is `tl.randn(seed[r], offset[r] + j)`."""
    shape, n, seed, start = _streams(shape, seed, offset)
    if n == 0:
        return np.zeros(shape, dtype)
    eps = philox.normals(seed, start, n).reshape(shape)
    return eps if dtype is np.float32 else eps.astype(dtype, copy=False)


def uniform_numpy(shape, seed, offset=0) -> np.ndarray:
    """float32 uniforms in [0, 1) from the same streams: `tl.rand`'s conversion of `tl.randint(seed, counter)`."""
    shape, n, seed, start = _streams(shape, seed, offset)
    if n == 0:
        return np.zeros(shape, np.float32)
    return philox.uniforms(seed, start, n).reshape(shape)


def reparameterize_numpy(mean, logvar, seed, offset=0, return_eps: bool = False):
    """z = mean + exp(clamp(logvar, -30, 20) / 2) · eps with eps = `standard_normal_numpy(mean.shape, seed, offset)`
    (one stream, or per-row ``seed``/``offset`` arrays).

    Returns z in the input dtype, and the float32 eps too when `return_eps`.
    """
    mean, logvar = np.asarray(mean), np.asarray(logvar)
    _check_float("mean", mean)
    _check_float("logvar", logvar)
    if mean.shape != logvar.shape or mean.dtype != logvar.dtype:
        raise ValueError(
            f"mean and logvar must have the same shape and dtype, got {mean.shape} {mean.dtype} "
            f"and {logvar.shape} {logvar.dtype}"
        )
    if mean.dtype.type is np.float64 or mean.size == 0:  # float64 math on float32 noise
        eps = standard_normal_numpy(mean.shape, seed, offset)
        std = np.exp(np.clip(logvar, LOGVAR_MIN, LOGVAR_MAX) * 0.5)
        z = mean + std * eps
    else:  # float32 math (float16 inputs too), one pass where numba is installed
        shape, n, seed, start = _streams(mean.shape, seed, offset)
        flat_mean = np.ascontiguousarray(mean, dtype=np.float32).ravel()
        flat_logvar = np.ascontiguousarray(logvar, dtype=np.float32).ravel()
        z, eps = philox.reparameterize(seed, start, flat_mean, flat_logvar, return_eps)
        z = z.reshape(shape) if mean.dtype.type is np.float32 else z.reshape(shape).astype(mean.dtype)
        eps = eps.reshape(shape) if return_eps else None
    return (z, eps) if return_eps else z


def vq_nearest_numpy(z, codebook, return_distance: bool = False, chunk_rows: int = 4096):
    """Nearest codebook row of each row of z (N×D) in squared Euclidean distance; ties go to the lowest index.

    Distances are ‖z‖² + ‖e‖² − 2 z·e in float32 (float64 for float64 input), clamped at 0, computed `chunk_rows`
    rows at a time so memory stays O(chunk_rows·K). Returns int64 indices, the gathered rows and, when asked, the
    squared distances.
    """
    z, codebook = np.asarray(z), np.asarray(codebook)
    _check_float("z", z)
    _check_float("codebook", codebook)
    if z.ndim != 2 or codebook.ndim != 2:
        raise ValueError(f"z must be N×D and codebook K×D (2-D), got shapes {z.shape} and {codebook.shape}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z and codebook must share D, got z D={z.shape[1]} and codebook D={codebook.shape[1]}")
    if z.dtype != codebook.dtype:
        raise TypeError(f"z and codebook must have the same dtype, got {z.dtype} and {codebook.dtype}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook must have at least one row, got K=0")
    compute = np.float64 if z.dtype == np.float64 else np.float32
    e = codebook.astype(compute)
    e_sq = np.einsum("kd,kd->k", e, e)
    index = np.empty(z.shape[0], dtype=np.int64)
    distance = np.empty(z.shape[0], dtype=compute)
    for start in range(0, z.shape[0], chunk_rows):
        x = z[start : start + chunk_rows].astype(compute)
        d = np.einsum("nd,nd->n", x, x)[:, None] + e_sq[None, :] - 2 * (x @ e.T)
        np.maximum(d, 0, out=d)
        # np.argmin returns the first minimum, which is the lowest-index tie rule
        index[start : start + chunk_rows] = np.argmin(d, axis=1)
        distance[start : start + chunk_rows] = np.take_along_axis(d, index[start : start + chunk_rows, None], 1)[:, 0]
    rows = codebook[index]
    return (index, rows, distance) if return_distance else (index, rows)
