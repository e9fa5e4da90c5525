"""Writing the explorer directory: the built page, the bundle files it decodes with, and explorer.json (the pad, the
code grid or a spatial latent file, and the bundle's operations from the runtime's table,
``vaedeploy.runtime.operations``).

The directory follows vaedeploy's one ownership rule (``vaedeploy.owned``): staged beside its target (every error
writing names the output path, not the installed file read) and swapped into place; an earlier output is replaced
only when every entry in it, folders included, is one ``vaedeploy web`` wrote, else the command refuses and names
them, so nothing a user put there is ever deleted; a failure leaves the target as it was.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .. import __version__, load, owned
from ..bundle import MANIFEST
from ..errors import InputError, VaedeployError
from ..io import read_json, read_npy
from ..runtime.operations import operations_of

GENERATOR = "vaedeploy web"
SPEC = "explorer.json"
PAGE = Path(__file__).resolve().parent / "page"
PAD_POINTS = 500  # encoded training images drawn on the pad as dots
PAD_SIGMAS = 3.0  # the pad spans ± this many standard deviations along each axis
LATENTS = "latents.npy"  # --latents, as the page fetches it


class WebError(VaedeployError, ValueError):
    """The explorer cannot be written: the message names what was expected and what came."""


class PageNotBuilt(VaedeployError, FileNotFoundError):
    """The npm build of the page is missing from this install."""


def page_files() -> list[str]:
    """The built page's files (from its build.json), each checked to exist."""
    build = PAGE / "build.json"
    hint = "run `make web` in a vaedeploy checkout (needs npm), or install a vaedeploy wheel, which ships the page"
    if not build.is_file():
        raise PageNotBuilt(f"{PAGE}: the explorer page is not built (no build.json); {hint}")
    files = json.loads(build.read_text())["files"]
    missing = [name for name in files if not (PAGE / name).is_file()]
    if missing:
        raise PageNotBuilt(f"{PAGE}: the explorer page build is incomplete (missing {missing[0]}); {hint}")
    return files


def _dataset(runtime, data: str | None):
    """The training data to encode: ``data`` when given, else what the manifest says the bundle was exported from."""
    from ..data import load_dataset, load_from_spec

    manifest_input = runtime.bundle.manifest["input"]
    if data is not None:
        dataset = load_dataset(data, preprocessing=manifest_input.get("preprocessing", "dequantize"))
    elif manifest_input.get("data"):
        dataset = load_from_spec(manifest_input["data"])
    else:
        return None
    if tuple(dataset.image_shape) != tuple(runtime.input_shape):
        shape = "×".join(map(str, dataset.image_shape))
        raise WebError(f"data {dataset.name!r} has {shape} images; the bundle {runtime.bundle.root} expects "
                       f"{'×'.join(map(str, runtime.input_shape))}")
    return dataset


def _pad(runtime, dataset) -> dict:
    """The pad: z = center + a·span₀·axis₀ + b·span₁·axis₁ for pad coordinates (a, b) in [-1, 1]²."""
    d = runtime.latent_dim
    if dataset is None:
        if d > 2 or runtime.latent_type != "gaussian":
            raise WebError(f"{runtime.bundle.root}: the pad over a {d}-dimensional {runtime.latent_type} latent needs "
                           "the encoded training data; expected --data (digits, mnist5k or a .npy/.npz), since the "
                           "bundle's manifest does not say which data it was exported from")
        return {"center": [0.0] * d, "axes": np.eye(d)[:2].tolist(), "span": [PAD_SIGMAS] * min(d, 2),
                "points": [], "source": f"the latent coordinates, ±{PAD_SIGMAS:g} standard deviations of the prior"}
    # the posterior means (an autoencoder's codes; every layer's mean for hierarchical latents)
    means = runtime.encode_params(dataset.evaluation_inputs("train"))[0].astype(np.float64)
    center = means.mean(0)
    if d > 2:
        variances, vectors = np.linalg.eigh(np.cov(means - center, rowvar=False))
        order = np.argsort(variances)[::-1][:2]
        axes = vectors[:, order].T
        axes *= np.sign(axes[np.arange(2), np.abs(axes).argmax(1)])[:, None]  # one sign, whatever LAPACK gave
        sigma = np.sqrt(np.maximum(variances[order], 0))
        share = float(variances[order].sum() / variances.sum()) if variances.sum() > 0 else 0.0
        source = (f"the two principal directions of {len(means)} encoded training images of {dataset.name} "
                  f"({share:.0%} of their variance), ±{PAD_SIGMAS:g} standard deviations along each")
    else:
        axes, sigma = np.eye(d), means.std(0, ddof=1)
        source = (f"the latent coordinates around the mean of {len(means)} encoded training images of "
                  f"{dataset.name}, ±{PAD_SIGMAS:g} standard deviations along each")
    span = PAD_SIGMAS * np.where(sigma > 0, sigma, 1.0)  # a collapsed direction still gets a usable pad
    coordinates = ((means[:PAD_POINTS] - center) @ axes.T) / span
    labels = dataset.train.labels
    points = [[round(float(a), 4) for a in row] + [0.0] * (2 - len(row))
              + [None if labels is None else int(labels[i])] for i, row in enumerate(coordinates)]
    return {"center": center.tolist(), "axes": axes.tolist(), "span": span.tolist(), "points": points,
            "source": source}


def spatial(runtime) -> bool:
    """Whether the page shows the bundle's latent as a c×h×w image (a drop zone and sizes) rather than a pad or a
    code grid: a VQ latent is one without a prior (diffusers' VQModel: its z_q decoded at any size), since a code grid
    is what its prior samples."""
    return len(runtime.latent_shape) == 3 and (runtime.latent_type != "vq" or "prior" not in runtime.bundle.latent)


def read_latents(runtime, path) -> np.ndarray:
    """The one latent in the .npy at ``path`` as 1×c×h×w float32 (the file holds c×h×w or 1×c×h×w floats at a size
    the bundle takes), in ``decode``'s space; a ``WebError`` in the page's own words otherwise."""
    if not spatial(runtime):
        raise WebError(f"--latents: expected a bundle with spatial latents (c×h×w), got a {runtime.latent_type} "
                       f"latent of shape {tuple(runtime.latent_shape)} in {runtime.bundle.root}")
    try:
        with open(path, "rb") as f:  # the house's checked reader: never a pickle, a damaged header is a sentence
            z = read_npy(f, str(path), Path(path).stat().st_size, error=WebError)
    except OSError as e:
        raise WebError(f"{path}: expected a readable .npy file of one latent, got {e.strerror or e}") from None
    came = f"{z.dtype} {tuple(z.shape)}"
    z = z[0] if z.ndim == 4 and len(z) == 1 else z
    c, f = runtime.latent_shape[0], runtime.downsample
    try:
        taken = z.ndim == 3 and z.shape[0] == c and np.issubdtype(z.dtype, np.floating) \
            and runtime.latent_shape_at((int(z.shape[1]) * f, int(z.shape[2]) * f)) is not None
    except InputError:
        taken = False
    if not taken:
        sizes = runtime.sizes or f"{'×'.join(map(str, runtime.input_shape[1:]))}, the one image size of this bundle"
        raise WebError(f"{path}: expected a float32 latent of shape (1, {c}, h, w) or ({c}, h, w) with "
                       f"(h·{f}, w·{f}) one of this bundle's sizes ({sizes}), got {came}")
    z = z.astype(np.float32)
    if not np.isfinite(z).all():
        raise WebError(f"{path}: expected finite latent values, got NaN or Inf")
    return z[None]


def explorer_spec(runtime, dataset=None, latents: np.ndarray | None = None) -> dict:
    """What the page needs beyond the manifest: the bundle's operations (the runtime's table, which the page offers
    from) and the pad (vector latents), the first code grid (VQ) or, for a spatial latent, the name of the
    ``latents`` file to decode first (when given)."""
    spec = {"generator": GENERATOR, "vaedeploy_version": __version__, "bundle": str(runtime.bundle.root),
            "data": None if dataset is None else dataset.spec(),
            "operations": [op.as_dict() for op in operations_of(runtime).values()]}
    if spatial(runtime):
        spec["latents"] = None if latents is None else LATENTS
    elif runtime.latent_type == "vq":
        if dataset is None:
            spec["codes"] = [0] * int(np.prod(runtime.grid))
        else:  # the codes of the first training image, so the grid starts on something recognisable
            spec["codes"] = runtime.encode(dataset.evaluation_inputs("train")[:1])[0].reshape(-1).tolist()
    else:
        spec["pad"] = _pad(runtime, dataset)
    return spec


def _bundle_files(bundle) -> list[str]:
    """The bundle files the page fetches: the manifest, every fp32 graph and every array."""
    manifest = bundle.manifest
    graphs = [variants["fp32"]["file"] for variants in manifest["graphs"].values() if "fp32" in variants]
    return [MANIFEST, *sorted(set(graphs)), *sorted(manifest.get("arrays", {}).values())]


def older_site(directory: Path) -> set[str] | None:
    """The entries a page written before vaedeploy's marker vouches for: the files its explorer.json lists (with
    their folders); None when it has no explorer.json of ``GENERATOR``."""
    try:
        spec = read_json(directory / SPEC, "the explorer page's spec")
        files = spec["files"] if spec.get("generator") == GENERATOR else None
    except (VaedeployError, OSError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    listed = set()
    for name in files:
        parts = name.split("/")
        listed |= {"/".join(parts[:i]) + "/" for i in range(1, len(parts))} | {name}
    return listed


SITE = owned.Kind(tool="web", what="a previous `vaedeploy web` output", noun="page", error=WebError,
                  legacy=older_site)


def _stage(staging: owned.Staging, runtime, spec: dict, latents: np.ndarray | None) -> None:
    """The whole output into ``staging``: the page, the bundle files it fetches, the latents, explorer.json."""
    written = []
    for name in page_files():
        staging.copy(name, PAGE / name)
        written.append(name)
    for name in _bundle_files(runtime.bundle):
        staging.copy(f"bundle/{name}", runtime.bundle.path(name))
        written.append(f"bundle/{name}")
    if latents is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(latents, "<f4"), allow_pickle=False)
        staging.write_bytes(LATENTS, buffer.getvalue())
        written.append(LATENTS)
    spec = dict(spec, files=sorted([*written, SPEC]))
    staging.write_bytes(SPEC, (json.dumps(spec) + "\n").encode())


def write_site(bundle, out, data: str | None = None, latents=None) -> Path:
    """Write the explorer for ``bundle`` into ``out`` and return ``out``.

    Args:
        bundle: a bundle directory (``vaedeploy export``'s --out); it is verified as ``vaedeploy.load`` does.
        out: the directory to write: new, empty, or a previous output of this function holding nothing else
            (replaced; anything else is refused, naming what would be lost).
        data: the training data whose encodings give the pad's axes: a built-in name (digits, mnist5k) or a
            .npy/.npz path; default the data named in the bundle's manifest, if any. Needed for latents of more
            than two dimensions and for deterministic ones; a spatial latent needs none.
        latents: a .npy of one spatial latent (c×h×w or 1×c×h×w, in ``decode``'s space, at a size the bundle
            takes), written beside the page as latents.npy and decoded when the page opens.
    """
    out = Path(out)
    page_files()  # fail before any work when the page is not built
    owned.check_target(out, SITE)
    runtime = load(bundle, backend="onnxruntime")
    z = None if latents is None else read_latents(runtime, latents)
    spec = explorer_spec(runtime, None if spatial(runtime) else _dataset(runtime, data), z)
    with owned.Staging(out, SITE) as staging:
        _stage(staging, runtime, spec, z)
        staging.commit()
    return out
