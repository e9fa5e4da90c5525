"""Triton's random stream in numpy: Philox4x32-10 and Box–Muller exactly as `triton/language/random.py` has them.

This is what lets the CPU (torch or numpy, even without torch) draw the same noise as the GPU kernel for the same
seed and offset. Counters, keys and the conversions below follow `tl.randint4x`, `tl.philox`,
`tl.uint_to_uniform_float`, `tl.pair_uniform_to_normal` and `tl.randn` line by line:

- the offset (64-bit) is the counter: c0 = its low 32 bits, c1 = its high 32 bits, c2 = c3 = 0;
- the seed (64-bit) is the key: k0 = its low 32 bits, k1 = its high 32 bits;
- `randint` is c0 after 10 rounds; `randn` takes c0 and c1 to uniforms in [0, 1) and keeps the cosine branch of
  Box–Muller, all in float32.

`randint` matches Triton bit for bit; `randn` to a few ulp (the GPU's log/sqrt/cos are not numpy's). Imports numpy
only (numba where installed, lazily).

The runtime's hot path draws whole streams (``normals``, ``reparameterize``, ``uniforms``: runs of consecutive
counters, one run per row). Where numba is installed these and ``randn`` run compiled (``philox_numba.py``), so
every normal of one install comes from one loop: the words and uniforms are the same bits as numpy's, the normals
are within a few ulp of numpy's (the C library's float32 log and cos, not numpy's SIMD ones, whose own last bits
differ between AVX2, AVX-512 and plain builds). ``VAEDEPLOY_NUMBA=0`` in the environment keeps to numpy.
"""
from __future__ import annotations

import os

import numpy as np

from .limits import LOGVAR_MAX, LOGVAR_MIN, STREAM_LIMIT

N_ROUNDS = 10
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# One round on the stacked words A = (c0, c2), B = (c1, c3): A' = hi(M·(c2, c0)) ^ B ^ (k0, k1), B' = lo(M·(c2, c0))
# with M = (ROUND_B, ROUND_A): five array operations a round instead of a dozen, and no uint32 overflow to silence
# (all words are held in uint64, the keys' wrap-around is the mask).
_MULTIPLIERS = np.array([0xCD9E8D57, 0xD2511F53], dtype=np.uint64)
_KEY_STEPS = np.arange(N_ROUNDS, dtype=np.uint64)[:, None] * np.array([0x9E3779B9, 0xBB67AE85], dtype=np.uint64)
_SCALE = np.float32(4.6566127342e-10)
_FLOOR = np.float32(1.0e-7)
_TWO_PI = np.float32(6.283185307179586)
_MINUS_TWO = np.float32(-2.0)


def philox4x32(c0, c1, c2, c3, k0, k1, n_rounds: int = N_ROUNDS):
    """`tl.philox_impl` for uint32 counters (arrays) and keys (scalars, or arrays that broadcast against the
    counters: one key per element, the per-row streams of a batch): returns the four output words as uint32."""
    words = [np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3)]
    keys = np.stack(np.broadcast_arrays(np.asarray(k0, dtype=np.uint64), np.asarray(k1, dtype=np.uint64)))
    shape = np.broadcast_shapes(*(w.shape for w in words), keys.shape[1:])
    words_a = np.stack([np.broadcast_to(words[0], shape), np.broadcast_to(words[2], shape)])
    words_b = np.stack([np.broadcast_to(words[1], shape), np.broadcast_to(words[3], shape)])
    # keys stay as small as given (one per row, or one for all), right-aligned against the words as numpy broadcasts
    keys = keys.reshape(2, *(1,) * (len(shape) - keys.ndim + 1), *keys.shape[1:])
    round_keys = (keys[None] + _KEY_STEPS[:n_rounds].reshape(n_rounds, 2, *(1,) * len(shape))) & _LOW32
    multipliers, product = _MULTIPLIERS.reshape(2, *(1,) * len(shape)), np.empty_like(words_a)
    for r in range(n_rounds):
        np.multiply(multipliers, words_a[::-1], out=product)
        np.right_shift(product, _SHIFT32, out=words_a)
        words_a ^= words_b
        words_a ^= round_keys[r]
        np.bitwise_and(product, _LOW32, out=words_b)
    return tuple(w.astype(np.uint32) for w in (words_a[0], words_b[0], words_a[1], words_b[1]))


def check_seed(seed):
    """A seed as uint64: an int or an integer array (one seed per element), each in [0, STREAM_LIMIT)."""
    if np.ndim(seed) == 0:
        seed = int(seed)
        if not 0 <= seed < STREAM_LIMIT:
            raise ValueError(f"seed must be in [0, 2**63) (an int64 the kernel can load), got {seed}")
        return np.uint64(seed)
    seed = np.asarray(seed)
    if seed.dtype.kind not in "iu" or (seed.size and (seed.min() < 0 or int(seed.max()) >= STREAM_LIMIT)):
        raise ValueError(f"seeds must be integers in [0, 2**63), got {seed.dtype} values")
    return seed.astype(np.uint64)


def check_start(start: int, n: int) -> int:
    """The first counter of a run of n, so that every counter start … start + n − 1 fits an int64."""
    if start < 0 or start + n > STREAM_LIMIT:
        raise ValueError(f"offset must be in [0, 2**63 - n] so every counter fits an int64, got {start} for n={n}")
    return start


def check_starts(starts, width: int) -> np.ndarray:
    """Per-row first counters (integers), each followed by ``width`` counters that fit an int64, as int64."""
    starts = np.asarray(starts)
    if starts.dtype.kind not in "iu" or (starts.size and (starts.min() < 0
                                                          or int(starts.max()) > STREAM_LIMIT - width)):
        raise ValueError(f"offsets must be integers in [0, 2**63 - {width}] so every counter fits an int64")
    return starts.astype(np.int64)


def counters(offset: int, n: int) -> np.ndarray:
    """The 64-bit Philox counters of `n` consecutive elements starting at `offset`: offset, offset + 1, ..."""
    return np.arange(n, dtype=np.uint64) + np.uint64(check_start(int(offset), n))


def randint4x(seed, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """`tl.randint4x(seed, offsets)` for int64 offsets: four uint32 arrays shaped like `offsets`. ``seed`` is an int
    or an array that broadcasts against ``offsets`` (each element then uses its own key)."""
    seed = check_seed(seed)
    offsets = np.asarray(offsets, dtype=np.uint64)
    zero = np.zeros_like(offsets)
    return philox4x32(offsets & _LOW32, offsets >> _SHIFT32, zero, zero, seed & _LOW32, seed >> _SHIFT32)


def randint(seed: int, offsets: np.ndarray) -> np.ndarray:
    """`tl.randint(seed, offsets)`: the first Philox word, as uint32 (Triton returns the same bits typed int32)."""
    return randint4x(seed, offsets)[0]


def uint_to_uniform_float(x: np.ndarray) -> np.ndarray:
    """`tl.uint_to_uniform_float` for 32-bit words: fold the sign away (x ^ (x >> 31) is Triton's -x - 1 for
    negative x), then scale into [0, 1) in float32."""
    x = x.view(np.int32)
    return (x ^ (x >> 31)).astype(np.float32) * _SCALE


def randn(seed: int, offsets: np.ndarray) -> np.ndarray:
    """`tl.randn(seed, offsets)`: float32 standard normals, Box–Muller on the first two Philox words (compiled where
    numba is installed: the C library's log and cos then, a few ulp from numpy's; see the module doc)."""
    compiled = _compiled()
    if compiled is None:
        return _randn_numpy(seed, offsets)
    offsets = np.asarray(offsets, dtype=np.uint64)
    seeds = np.broadcast_to(check_seed(seed), offsets.shape)
    out = np.empty(offsets.shape, np.float32)
    compiled.normal_at(np.ascontiguousarray(seeds).ravel(), np.ascontiguousarray(offsets).ravel(), out.ravel())
    return out


def _randn_numpy(seed, offsets: np.ndarray) -> np.ndarray:
    i1, i2, _, _ = randint4x(seed, offsets)
    u1 = np.maximum(_FLOOR, uint_to_uniform_float(i1))
    theta = _TWO_PI * uint_to_uniform_float(i2)
    return np.sqrt(_MINUS_TWO * np.log(u1)) * np.cos(theta)


# ---- streams: the runtime's hot path -------------------------------------------------------------------------

def _compiled():
    """``philox_numba`` where numba is installed (and ``VAEDEPLOY_NUMBA`` is not 0), else None; imported once."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = False
        if os.environ.get("VAEDEPLOY_NUMBA", "1") != "0":
            try:
                from . import philox_numba
            except ImportError:
                pass
            else:
                _COMPILED = philox_numba if philox_numba.POSITION_INDEPENDENT else False
    return _COMPILED or None


_COMPILED = None
_NONE = np.empty(0, np.float32)


def _keys_and_counters(seed, start, n: int) -> tuple:
    """Keys and 64-bit counters of a draw (see ``normals``), shaped for ``randint4x``."""
    if isinstance(seed, int):
        return seed, np.arange(n, dtype=np.uint64) + np.uint64(start)
    width = n // len(seed)
    return seed.astype(np.uint64)[:, None], start.astype(np.uint64)[:, None] + np.arange(width, dtype=np.uint64)


def normals(seed, start, n: int) -> np.ndarray:
    """n float32 standard normals, `tl.randn` of each counter, flattened.

    The counters are one stream (int ``seed`` and ``start``: start, start + 1, ...) or one run per row (int64 arrays
    of one seed and start per row, each row n / rows elements); both already checked by the caller.
    """
    compiled = _compiled()
    if compiled is not None:
        out = np.empty(n, np.float32)
        (compiled.normal_stream if isinstance(seed, int) else compiled.normal_rows)(seed, start, out)
        return out
    return _randn_numpy(*_keys_and_counters(seed, start, n)).reshape(-1)


def reparameterize(seed, start, mean: np.ndarray, logvar: np.ndarray, keep_eps: bool = False) -> tuple:
    """(z, eps or None): z = mean + exp(clamp(logvar, -30, 20)/2)·eps for flattened float32 ``mean`` and
    ``logvar``, eps the normals of the counters (laid out as for ``normals``)."""
    compiled = _compiled()
    if compiled is None:
        eps = normals(seed, start, mean.size)
        return mean + np.exp(np.clip(logvar, LOGVAR_MIN, LOGVAR_MAX) * np.float32(0.5)) * eps, eps
    z = np.empty_like(mean)
    eps = np.empty_like(mean) if keep_eps else _NONE
    (compiled.reparameterize_stream if isinstance(seed, int) else compiled.reparameterize_rows)(
        seed, start, mean, logvar, z, eps)
    return z, eps if keep_eps else None


def uniforms(seed, start, n: int) -> np.ndarray:
    """`tl.rand`'s float32 uniforms of n elements, the counters laid out as for ``normals``."""
    compiled = _compiled()
    if compiled is not None:
        out = np.empty(n, np.float32)
        (compiled.uniform_stream if isinstance(seed, int) else compiled.uniform_rows)(seed, start, out)
        return out
    return uint_to_uniform_float(randint(*_keys_and_counters(seed, start, n))).reshape(-1)
