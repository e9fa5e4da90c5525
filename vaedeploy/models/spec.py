"""What a kind exports, said by the model itself: one ``GraphSpec`` per graph and an ``ExportSpec`` for the bundle.

After optimum's ``OnnxConfig``: each exported part names its role, the module traced, its inputs and outputs (every
one with the dynamic batch axis), the inputs it is validated on and, where it needs one, its own tolerance. Export
(``vaedeploy.export``) reads these and never a kind's name; the manifest's ``latent`` entry (a type of
``vaedeploy.bundle.LATENT_TYPES``) is what the runtime needs to serve the bundle.

Validation inputs have ``max_batch`` rows: real data cycled up to that many, their real encodings, and N(0, I)
draws, so a graph is checked where it will run and where sampling takes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

NORMAL_SEED = 0


@dataclass
class GraphSpec:
    """One graph to export and validate.

    Args:
        role: its name in the manifest (``encoder``, ``decoder``, ``prior``, ``stage2_decoder``, ...).
        module: the float32 module traced; it must treat every row of a batch on its own.
        input_names, output_names: the graph's names, in the module's order.
        input_sets: label (``data``, ``encodings``, ``normal``) → one array per input, ``max_batch`` rows each;
            validation at batch size b uses the first b rows.
        module_path: attribute path of the module inside the model (``stage2.decoder``), what the torch backend
            runs; default the role.
        tolerances: precision → ``{"max_abs", "rel_l2"}`` where this graph needs its own; default export's.
        spatial: for a model that takes any image size (``ExportSpec.size``), tensor name → ``"image"`` or
            ``"latent"`` for every input and output whose last two axes follow the image's H, W (H, W or H / f,
            W / f): those axes are exported dynamic and named ``bundle.IMAGE_AXES`` or ``bundle.LATENT_AXES``.
        at_size: (H, W) → one array per input, a few rows at that image size: what validation runs the graph on at
            each size besides the reference one.
    """

    role: str
    module: nn.Module
    input_names: list[str]
    input_sets: dict[str, list[np.ndarray]]
    output_names: list[str]
    module_path: str = ""
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    spatial: dict[str, str] = field(default_factory=dict)
    at_size: Callable[[int, int], list[np.ndarray]] | None = None


@dataclass(frozen=True)
class SpatialSize:
    """The image sizes a fully convolutional model's graphs take: H and W multiples of ``multiple`` from ``low`` to
    ``high`` ((H, W) pairs, inclusive), latents ``downsample`` times smaller (``multiple`` is a multiple of it)."""

    low: tuple[int, int]
    high: tuple[int, int]
    multiple: int
    downsample: int

    def manifest(self) -> dict:
        """The manifest's ``input.size``."""
        return {"min": list(self.low), "max": list(self.high), "multiple": self.multiple}


@dataclass
class ExportSpec:
    """Everything a bundle holds of one model: the manifest's ``latent`` and ``likelihood`` entries, its graphs and
    the arrays beside them (``name.npy``, e.g. a VQ codebook); ``size`` where the graphs take any image size in a
    range (None: the data's size only); ``checks`` of the model's own (an imported model's round trip)."""

    latent: dict
    likelihood: dict
    graphs: list[GraphSpec]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    size: SpatialSize | None = None
    # checks of this model beyond per-output errors, run like a latent type's (``export.validate.LATENT_CHECKS``):
    # (spec, files, root, max_batch) → {"name", "passed", "failures", ...}, kept in the report's ``extra``
    checks: tuple[Callable, ...] = ()


def validation_rows(x: np.ndarray, n: int) -> np.ndarray:
    """The first n rows of x as float32, cycling through x when it has fewer (real data repeated up to max batch)."""
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])).astype(np.float32))


def normal_draws(shape, seed: int = NORMAL_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def encoder_decoder_spec(encoder: nn.Module, decoder: nn.Module, latent: dict, likelihood: dict, data: np.ndarray,
                         max_batch: int, extra_graphs: tuple[GraphSpec, ...] = (),
                         size: SpatialSize | None = None) -> ExportSpec:
    """The spec of a Gaussian or deterministic model: ``encoder`` x → (mean, logvar) or z, ``decoder`` z → the
    likelihood's outputs, validated on real data, its encodings and N(0, I) latents (plus ``extra_graphs``). With
    ``size`` (spatial latents [c, h, w] of fully convolutional modules) the graphs take any image size in that range:
    the image and latent axes are dynamic, and each other size is validated on the data tiled to it and on N(0, I)
    latents of that size."""
    outputs = {"gaussian": ["mean", "logvar"], "deterministic": ["z"]}[latent["type"]]
    x = validation_rows(data, max_batch)
    with torch.no_grad():
        code = encoder(torch.from_numpy(x))
    code = code if isinstance(code, torch.Tensor) else code[0]
    images = list(likelihood["outputs"])
    encoder_sizes, decoder_sizes = {}, {}  # GraphSpec's spatial and at_size where the graphs take any size
    if size is not None:
        c, f = latent["shape"][0], size.downsample
        encoder_sizes = {"spatial": {"x": "image", **{o: "latent" for o in outputs}},
                         "at_size": lambda h, w: [tiled_rows(data, h, w)]}
        decoder_sizes = {"spatial": {"z": "latent", **{o: "image" for o in images}},
                         "at_size": lambda h, w: [normal_draws((2, c, h // f, w // f))]}
    graphs = [
        GraphSpec("encoder", encoder, ["x"], {"data": [x]}, outputs, **encoder_sizes),
        GraphSpec("decoder", decoder, ["z"], {"encodings": [validation_rows(code.numpy(), max_batch)],
                                             "normal": [normal_draws((max_batch, *latent["shape"]))]},
                  images, **decoder_sizes),
        *extra_graphs,
    ]
    return ExportSpec(latent, likelihood, graphs, size=size)


def tiled_rows(images: np.ndarray, h: int, w: int, n: int = 2) -> np.ndarray:
    """The first n images (cycled) repeated periodically to h × w: real content at any size, for validation."""
    rows = validation_rows(images, n)
    reps = (1, 1, -(-h // rows.shape[2]), -(-w // rows.shape[3]))
    return np.ascontiguousarray(np.tile(rows, reps)[:, :, :h, :w])
