"""Tiled encode and decode: an input larger than a tile goes through a graph tile by tile, the tiles overlapping and
blended linearly across the overlap, with the scheme of diffusers' ``AutoencoderKL.tiled_decode`` and
``_tiled_encode`` (``tile_overlap_factor`` 0.25, ``blend_v`` then ``blend_h``, then each tile cropped), so a bundle's
tiled results are comparable with what diffusers' ``enable_tiling()`` gives (tests/runtime/test_tiles.py compares
them with diffusers' own model).

The scheme, along each axis, for tiles of ``t`` input rows (latent rows for decode, pixels for encode) whose outputs
have ``T = t·scale`` rows:

- tiles start every ``int(t·(1 − overlap))`` input rows, from 0 while the start is inside the input (the last tiles
  may be cut short by the input's edge);
- the first ``e = int(T·overlap)`` output rows of a tile are blended with the last ``e`` of the tile above, row y
  weighing the tile itself by y/e and the tile above by 1 − y/e; then likewise its first columns with the tile to its
  left. Each neighbour is taken *as already blended*, since diffusers blends in place;
- each tile keeps its first ``T − e`` rows and columns, placed at its start × scale.

The tile must make the overlap a whole number of rows on both sides (``t·overlap`` and ``T·overlap`` integers), which
also makes ``T − e`` equal to the stride × scale, so the kept parts tile the output exactly.

Memory is bounded by the tile, not the image: tiles run one at a time, and what a later tile needs of earlier ones is
the bottom ``e`` rows of each tile of the row above and the right ``e`` columns of the tile to its left. Beside the
input and the result, a call holds one tile, its outputs and these strips (about one row of tiles' overlap), never
every tile (diffusers keeps every decoded tile until it concatenates them).

``tile`` as the runtime takes it (``decode(z, tile=...)``, ``encode(x, tile=...)``), always in image pixels:
``None`` never tiles; ``(th, tw)`` tiles an image larger than th × tw in either dimension (diffusers' rule: an image
within one tile runs whole); ``"auto"`` is ``(AUTO_TILE, AUTO_TILE)`` capped at the largest size the graphs take.

numpy arrays or torch tensors, through the runtime's array adaptor (``arrays.py``); no torch import here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import InputError

OVERLAP = 0.25  # diffusers' tile_overlap_factor
AUTO_TILE = 512  # pixels: the sample_size of Stable Diffusion's VAE, the tile diffusers' enable_tiling() uses for it


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``tile`` input rows × columns whose outputs are ``scale`` times larger (decode: the downsample
    factor; encode: its inverse), overlapping by ``overlap`` of a tile."""

    tile: tuple[int, int]
    scale: Fraction
    overlap: float = OVERLAP

    def __post_init__(self):
        object.__setattr__(self, "scale", Fraction(self.scale))
        for t in self.tile:
            out = t * self.scale
            if out.denominator != 1 or (t * self.overlap) % 1 or (out * Fraction(self.overlap)) % 1 \
                    or int(min(t, out) * self.overlap) < 1:
                raise InputError(f"tile: expected sides whose overlap of {self.overlap:g} is a whole number of rows "
                                  f"of both input and output (scale {self.scale}), got {self.tile[0]}×{self.tile[1]}")

    @property
    def stride(self) -> tuple[int, int]:
        """Input rows (columns) between tile starts."""
        return tuple(int(t * (1 - self.overlap)) for t in self.tile)

    @property
    def blend(self) -> tuple[int, int]:
        """Output rows (columns) blended with the neighbour above (to the left)."""
        return tuple(int(t * self.scale * Fraction(self.overlap)) for t in self.tile)

    @property
    def keep(self) -> tuple[int, int]:
        """Output rows (columns) each tile contributes: its output less the blend; equal to stride × scale."""
        return tuple(int(t * self.scale) - e for t, e in zip(self.tile, self.blend))

    def starts(self, size: int, axis: int) -> range:
        return range(0, size, self.stride[axis])


def choose(tile, size: tuple[int, int], largest: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The tile (image pixels) a call with ``tile=`` runs for an image of ``size`` (H, W), or None to run it whole.

    ``largest``: the largest image the graphs take, which caps ``"auto"``'s tile.
    """
    if tile is None:
        return None
    if isinstance(tile, str) and tile == "auto":
        tile = (AUTO_TILE, AUTO_TILE) if largest is None else tuple(min(AUTO_TILE, side) for side in largest)
    elif not (isinstance(tile, (tuple, list)) and len(tile) == 2
              and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t > 0 for t in tile)):
        raise InputError(f"tile: expected None, 'auto' or (height, width) in pixels, two positive integers, got "
                         f"{tile!r}")
    tile = (int(tile[0]), int(tile[1]))
    return tile if size[0] > tile[0] or size[1] > tile[1] else None


def tiled(run: Callable, x, tiling: Tiling, arrays) -> tuple:
    """``run`` (a batch of N × C × h × w tiles → a tuple of N × C' × h·scale × w·scale arrays) over ``x`` (N × C × H ×
    W) tile by tile, each of its outputs blended as the module docstring says; returns the blended outputs."""
    n, _, height, width = x.shape
    out_size = (_scaled(height, tiling.scale), _scaled(width, tiling.scale))
    outputs, above = None, {}
    for i, top in enumerate(tiling.starts(height, 0)):
        left_strips, below = None, {}
        for j, left in enumerate(tiling.starts(width, 1)):
            window = x[:, :, top:top + tiling.tile[0], left:left + tiling.tile[1]]
            parts = _run_tile(run, _copy(arrays, window), tiling.scale)
            if outputs is None:
                outputs = [arrays.empty((n, p.shape[1], *out_size), p) for p in parts]
            for k, part in enumerate(parts):
                if i:
                    _blend(above[j][k], part, tiling.blend[0], 2, arrays)
                if j:
                    _blend(left_strips[k], part, tiling.blend[1], 3, arrays)
                _place(outputs[k], part, (i * tiling.keep[0], j * tiling.keep[1]), tiling.keep)
            below[j] = [_copy(arrays, p[:, :, -tiling.blend[0]:, :]) for p in parts]
            left_strips = [_copy(arrays, p[:, :, :, -tiling.blend[1]:]) for p in parts]
        above = below
    return tuple(outputs)


def _scaled(size: int, scale: Fraction) -> int:
    out = size * scale
    if out.denominator != 1:
        raise InputError(f"tiles: expected a size that is a multiple of {scale.denominator}, got {size}")
    return int(out)


def _run_tile(run: Callable, window, scale: Fraction) -> tuple:
    """``run``'s outputs for one tile, each checked to be the tile's size × scale (else the tiles would not meet)."""
    parts = tuple(run(window))
    expected = tuple(_scaled(s, scale) for s in window.shape[2:])
    for part in parts:
        if tuple(part.shape[2:]) != expected:
            raise InputError(f"tiles: expected a {window.shape[2]}×{window.shape[3]} tile to give "
                             f"{expected[0]}×{expected[1]} outputs (scale {scale}), got "
                             f"{part.shape[2]}×{part.shape[3]}")
    return parts


def _copy(arrays, view):
    """``view`` as a contiguous array of its own (a graph takes contiguous input; a strip must not keep its whole
    tile alive)."""
    copy = arrays.empty(tuple(view.shape), view)
    copy[...] = view
    return copy


def _blend(before, part, extent: int, axis: int, arrays) -> None:
    """diffusers' ``blend_v`` (axis 2) or ``blend_h`` (axis 3) in place on ``part``: its first ``e`` rows (columns)
    become ``before``'s last ``e`` × (1 − y/e) + its own × y/e, where ``e`` is the extent, or less where either
    is shorter. The weights are diffusers' Python floats rounded to float32, as torch rounds them."""
    e = min(before.shape[axis], part.shape[axis], extent)
    ramp = np.arange(e) / e  # float64, as y / blend_extent in diffusers
    own, other = (arrays.from_numpy(w.astype(np.float32).reshape((e, 1) if axis == 2 else (e,)))
                  for w in (ramp, 1 - ramp))
    head, tail = ((slice(None),) * axis + (span,) for span in (slice(0, e), slice(-e, None)))
    part[head] = before[tail] * other + part[head] * own


def _place(output, part, at: tuple[int, int], keep: tuple[int, int]) -> None:
    """The kept top-left of ``part`` (at most ``keep`` rows and columns: less at the input's far edges) into
    ``output`` at ``at``."""
    rows, columns = min(keep[0], part.shape[2]), min(keep[1], part.shape[3])
    output[:, :, at[0]:at[0] + rows, at[1]:at[1] + columns] = part[:, :, :rows, :columns]
