"""The compiled path of the numpy Philox (``philox.py``), used where numba is installed (``vaedeploy[fast]``).

One loop per call does what the numpy path does in about sixty array operations: the Philox4x32-10 words of every
counter, `tl.randn`'s float32 Box–Muller after them and, for ``reparameterize``, z = mean + exp(clamp(logvar)/2)·eps.
At batch 1 that is a microsecond instead of a dozen numpy calls (docs/benchmarks.md).

What is the same and what is not: the Philox words and the uniforms are bit-identical to the numpy path (and to
Triton and Random123); the float32 log, cos and exp are the C library's here and numpy's own SIMD ones there, so the
normals of the two paths agree to a few ulp (as the GPU's do), not bit for bit. Each path gives the same bits for an
element wherever it sits in a call, so rows split over calls draw what one call draws. Without ``fastmath`` numba
fuses no multiply-add into an FMA.

A draw is one stream (``*_stream``: counters start, start + 1, ... under one key) or one run of counters per row
(``*_rows``: row r from ``starts[r]`` under key ``seeds[r]``). Each kernel writes into arrays its caller made.
"""
from __future__ import annotations

import numba
import numpy as np

from .limits import LOGVAR_MAX, LOGVAR_MIN

_LOW = np.uint64(0xFFFFFFFF)
_HIGH = np.uint64(32)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_KEY_A, _KEY_B = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_SCALE = np.float32(4.6566127342e-10)
_FLOOR = np.float32(1.0e-7)
_TWO_PI = np.float32(6.283185307179586)
_MINUS_TWO = np.float32(-2.0)
_HALF = np.float32(0.5)
_LOGVAR_MIN, _LOGVAR_MAX = np.float32(LOGVAR_MIN), np.float32(LOGVAR_MAX)

# Intel's SVML, where numba finds it, would vectorize log/cos/exp with other last bits than the scalar calls of a
# loop's remainder, so an element's value would depend on where it sits in a call: philox.py then keeps to numpy.
POSITION_INDEPENDENT = not getattr(numba.config, "USING_SVML", False)

_jit = numba.njit(cache=True, nogil=True)
_inline = numba.njit(inline="always")


@_inline
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


@_inline
def _uniform(word):
    """`tl.uint_to_uniform_float`: fold the sign away (x ^ (x >> 31) is ~x for negative x), scale into [0, 1)."""
    x = np.int32(word)
    return np.float32(x ^ (x >> np.int32(31))) * _SCALE


@_inline
def _normal(counter, seed):
    """`tl.randn`: the cosine branch of Box–Muller on the first two words, in float32."""
    w0, w1 = _words(counter, seed)
    u1 = max(_FLOOR, _uniform(w0))
    theta = _TWO_PI * _uniform(w1)
    return np.sqrt(_MINUS_TWO * np.log(u1)) * np.cos(theta)


@_inline
def _reparameterized(mean, logvar, eps):
    if logvar < _LOGVAR_MIN:  # comparisons keep a NaN a NaN, as np.clip does
        logvar = _LOGVAR_MIN
    elif logvar > _LOGVAR_MAX:
        logvar = _LOGVAR_MAX
    return mean + np.exp(logvar * _HALF) * eps


@_jit
def normal_at(seeds, counters, out):
    """`tl.randn(seeds[i], counters[i])` for every i (``philox.randn`` with any counters)."""
    for i in range(out.size):
        out[i] = _normal(np.uint64(counters[i]), np.uint64(seeds[i]))


# A stream is one run of counters; a row draw is one run per row. Each ``_*_run`` fills ``count`` elements from
# ``at`` with the run of counters start, start + 1, ... under ``seed``, so both kinds of draw share one loop body.
@_inline
def _normal_run(seed, start, out, at, count):
    for j in range(count):
        out[at + j] = _normal(start + np.uint64(j), seed)


@_inline
def _reparameterize_run(seed, start, mean, logvar, z, eps, at, count):
    for j in range(count):
        i = at + j
        e = _normal(start + np.uint64(j), seed)
        z[i] = _reparameterized(mean[i], logvar[i], e)
        if eps.size:
            eps[i] = e


@_inline
def _uniform_run(seed, start, out, at, count):
    for j in range(count):
        out[at + j] = _uniform(_words(start + np.uint64(j), seed)[0])


@_jit
def normal_stream(seed, start, out):
    _normal_run(np.uint64(seed), np.uint64(start), out, 0, out.size)


@_jit
def normal_rows(seeds, starts, out):
    width = out.size // seeds.size
    for r in range(seeds.size):
        _normal_run(np.uint64(seeds[r]), np.uint64(starts[r]), out, r * width, width)


@_jit
def reparameterize_stream(seed, start, mean, logvar, z, eps):
    """z = mean + exp(clamp(logvar, -30, 20)/2)·eps (flattened float32 arrays); eps kept where it has room."""
    _reparameterize_run(np.uint64(seed), np.uint64(start), mean, logvar, z, eps, 0, z.size)


@_jit
def reparameterize_rows(seeds, starts, mean, logvar, z, eps):
    width = z.size // seeds.size
    for r in range(seeds.size):
        _reparameterize_run(np.uint64(seeds[r]), np.uint64(starts[r]), mean, logvar, z, eps, r * width, width)


@_jit
def uniform_stream(seed, start, out):
    """`tl.rand`'s uniforms: the first word of each counter into [0, 1)."""
    _uniform_run(np.uint64(seed), np.uint64(start), out, 0, out.size)


@_jit
def uniform_rows(seeds, starts, out):
    width = out.size // seeds.size
    for r in range(seeds.size):
        _uniform_run(np.uint64(seeds[r]), np.uint64(starts[r]), out, r * width, width)
