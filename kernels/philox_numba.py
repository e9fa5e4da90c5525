"""The compiled path of the numpy Philox (``philox.py``), used when numba is installed (``vaedeploy[fast]``).

One loop per call computes what the numpy path computes in about fifty array operations: the Philox4x32-10 words
of every counter and the exact float32 steps after them (the sign fold, the scaling into [0, 1), the 1e-7 floor,
2π·u2, and for ``reparameterize`` clamp(logvar)/2 and mean + std·eps). The three transcendental steps (log, cos,
exp) stay numpy's own ufuncs, called between these kernels by ``philox.py`` and ``numpy_ops.py``: every other step
is a correctly rounded IEEE operation, so the results are bit-identical to the numpy path, with or without numba.
Without ``fastmath`` numba contracts no multiply-add into an FMA, which would round differently.

A draw is one stream (``*_stream``: counters start, start + 1, ... under one key) or one run of counters per row
(``*_rows``: row r from ``starts[r]`` under key ``seeds[r]``). Each kernel writes into arrays its caller made.
"""
from __future__ import annotations

import numba
import numpy as np

_LOW = np.uint64(0xFFFFFFFF)
_HIGH = np.uint64(32)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_KEY_A, _KEY_B = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_SCALE = np.float32(4.6566127342e-10)
_FLOOR = np.float32(1.0e-7)
_TWO_PI = np.float32(6.283185307179586)
_MINUS_TWO = np.float32(-2.0)
_HALF = np.float32(0.5)
_LOGVAR_MIN, _LOGVAR_MAX = np.float32(-30.0), np.float32(20.0)

_jit = numba.njit(cache=True, nogil=True)


@numba.njit(inline="always")
def _words(counter, seed):
    """The first two output words of Philox4x32-10 for a 64-bit counter and key (c2 = c3 = 0), as `tl.philox`."""
    c0, c1 = np.uint32(counter & _LOW), np.uint32(counter >> _HIGH)
    c2, c3 = np.uint32(0), np.uint32(0)
    k0, k1 = np.uint32(seed & _LOW), np.uint32(seed >> _HIGH)
    for _ in range(10):
        product_b = _ROUND_B * np.uint64(c2)
        product_a = _ROUND_A * np.uint64(c0)
        c0 = np.uint32(product_b >> _HIGH) ^ c1 ^ k0
        c1 = np.uint32(product_b & _LOW)
        c2 = np.uint32(product_a >> _HIGH) ^ c3 ^ k1
        c3 = np.uint32(product_a & _LOW)
        k0 = np.uint32(k0 + _KEY_A)
        k1 = np.uint32(k1 + _KEY_B)
    return c0, c1


@numba.njit(inline="always")
def _uniform(word):
    """`tl.uint_to_uniform_float`: fold the sign away (x ^ (x >> 31) is ~x for negative x), scale into [0, 1)."""
    x = np.int32(word)
    return np.float32(x ^ (x >> np.int32(31))) * _SCALE


@numba.njit(inline="always")
def _fill(out, i, counter, seed):
    w0, w1 = _words(counter, seed)
    out[0, i] = max(_FLOOR, _uniform(w0))
    out[1, i] = _TWO_PI * _uniform(w1)


@numba.njit(inline="always")
def _half_clamp(logvar, out):
    for i in range(logvar.size):
        v = logvar[i]  # comparisons keep a NaN a NaN, as np.clip does
        if v < _LOGVAR_MIN:
            v = _LOGVAR_MIN
        elif v > _LOGVAR_MAX:
            v = _LOGVAR_MAX
        out[2, i] = v * _HALF


@_jit
def box_muller_stream(seed, start, logvar, out):
    """out[0] = max(1e-7, u1), out[1] = 2π·u2 at counters start, start + 1, ... under key ``seed``; out[2] =
    clamp(logvar, -30, 20)/2 when ``logvar`` has elements (the flattened logvar of ``reparameterize``)."""
    seed, start = np.uint64(seed), np.uint64(start)
    for i in range(out.shape[1]):
        _fill(out, i, start + np.uint64(i), seed)
    _half_clamp(logvar, out)


@_jit
def box_muller_rows(seeds, starts, logvar, out):
    """As ``box_muller_stream`` with one run of counters per row: row r from ``starts[r]`` under ``seeds[r]``."""
    width = out.shape[1] // seeds.shape[0]
    for r in range(seeds.shape[0]):
        seed, start = np.uint64(seeds[r]), np.uint64(starts[r])
        for j in range(width):
            _fill(out, r * width + j, start + np.uint64(j), seed)
    _half_clamp(logvar, out)


@_jit
def uniform_stream(seed, start, out):
    """`tl.rand`'s uniforms: the first word of each counter into [0, 1)."""
    seed, start = np.uint64(seed), np.uint64(start)
    for i in range(out.size):
        out[i] = _uniform(_words(start + np.uint64(i), seed)[0])


@_jit
def uniform_rows(seeds, starts, out):
    width = out.size // seeds.shape[0]
    for r in range(seeds.shape[0]):
        seed, start = np.uint64(seeds[r]), np.uint64(starts[r])
        for j in range(width):
            out[r * width + j] = _uniform(_words(start + np.uint64(j), seed)[0])


@_jit
def normals(parts, out):
    """eps = sqrt(-2·log u1)·cos θ from parts = (log u1, cos θ), numpy's log and cos."""
    for i in range(out.size):
        out[i] = np.sqrt(_MINUS_TWO * parts[0, i]) * parts[1, i]


@_jit
def reparameterize(mean, parts, z):
    """z = mean + std·eps from parts = (log u1, cos θ, exp(clamp(logvar)/2)); eps is left in parts[0]."""
    for i in range(z.size):
        eps = np.sqrt(_MINUS_TWO * parts[0, i]) * parts[1, i]
        parts[0, i] = eps
        z[i] = mean[i] + parts[2, i] * eps
