"""Triton's random stream in numpy: Philox4x32-10 and Box–Muller exactly as `triton/language/random.py` has them.

This is what lets the CPU (torch or numpy, even without torch) draw the same noise as the GPU kernel for the same
seed and offset. Counters, keys and the conversions below follow `tl.randint4x`, `tl.philox`,
`tl.uint_to_uniform_float`, `tl.pair_uniform_to_normal` and `tl.randn` line by line:

- the offset (64-bit) is the counter: c0 = its low 32 bits, c1 = its high 32 bits, c2 = c3 = 0;
- the seed (64-bit) is the key: k0 = its low 32 bits, k1 = its high 32 bits;
- `randint` is c0 after 10 rounds; `randn` takes c0 and c1 to uniforms in [0, 1) and keeps the cosine branch of
  Box–Muller, all in float32.

`randint` matches Triton bit for bit; `randn` to a few ulp (the GPU's log/sqrt/cos are not numpy's). Imports numpy only.
"""
from __future__ import annotations

import numpy as np

N_ROUNDS = 10
_KEY_A, _KEY_B = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_ROUND_A, _ROUND_B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _mul_hi_lo(a: np.uint64, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A 32×32-bit product fits in 64 bits, so one uint64 multiply gives both umulhi and the wrapped low word.
    p = a * x.astype(np.uint64)
    return (p >> _SHIFT32).astype(np.uint32), (p & _LOW32).astype(np.uint32)


def philox4x32(c0, c1, c2, c3, k0, k1, n_rounds: int = N_ROUNDS):
    """`tl.philox_impl` for uint32 counters (arrays) and keys (scalars, or arrays that broadcast against the
    counters: one key per element, the per-row streams of a batch): returns the four output words."""
    k0, k1 = np.asarray(k0, dtype=np.uint32), np.asarray(k1, dtype=np.uint32)
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        # uint32 addition wraps, as in the kernel; numpy only needs to be told not to warn about it
        with np.errstate(over="ignore"):
            k0, k1 = k0 + _KEY_A, k1 + _KEY_B
    return c0, c1, c2, c3


def _check_seed(seed):
    """A seed as uint64: an int or an integer array (one seed per element), each in [0, 2**63)."""
    if np.ndim(seed) == 0:
        seed = int(seed)
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63) (an int64 the kernel can load), got {seed}")
        return np.uint64(seed)
    seed = np.asarray(seed)
    if seed.dtype.kind not in "iu" or (seed.size and (seed.min() < 0 or int(seed.max()) >= 2**63)):
        raise ValueError(f"seeds must be integers in [0, 2**63), got {seed.dtype} values")
    return seed.astype(np.uint64)


def counters(offset: int, n: int) -> np.ndarray:
    """The 64-bit Philox counters of `n` consecutive elements starting at `offset`: offset, offset + 1, ..."""
    offset = int(offset)
    if offset < 0 or offset + n > 2**63:
        raise ValueError(f"offset must be in [0, 2**63 - n) so every counter fits an int64, got {offset} for n={n}")
    return np.arange(n, dtype=np.uint64) + np.uint64(offset)


def randint4x(seed, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """`tl.randint4x(seed, offsets)` for int64 offsets: four uint32 arrays shaped like `offsets`. ``seed`` is an int
    or an array that broadcasts against ``offsets`` (each element then uses its own key)."""
    seed = _check_seed(seed)
    offsets = np.asarray(offsets, dtype=np.uint64)
    c0 = (offsets & _LOW32).astype(np.uint32)
    c1 = (offsets >> _SHIFT32).astype(np.uint32)
    zero = np.zeros_like(c0)
    return philox4x32(c0, c1, zero, zero.copy(), seed & _LOW32, seed >> _SHIFT32)


def randint(seed: int, offsets: np.ndarray) -> np.ndarray:
    """`tl.randint(seed, offsets)`: the first Philox word, as uint32 (Triton returns the same bits typed int32)."""
    return randint4x(seed, offsets)[0]


def uint_to_uniform_float(x: np.ndarray) -> np.ndarray:
    """`tl.uint_to_uniform_float` for 32-bit words: fold the sign away, then scale into [0, 1) in float32."""
    x = x.view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


def randn(seed: int, offsets: np.ndarray) -> np.ndarray:
    """`tl.randn(seed, offsets)`: float32 standard normals, Box–Muller on the first two Philox words."""
    i1, i2, _, _ = randint4x(seed, offsets)
    u1 = np.maximum(np.float32(1.0e-7), uint_to_uniform_float(i1))
    u2 = uint_to_uniform_float(i2)
    theta = np.float32(6.283185307179586) * u2
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    return r * np.cos(theta)
