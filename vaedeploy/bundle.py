"""The bundle: the directory ``vaedeploy export`` writes and the runtime loads, its schema and its checks (no torch).

Layout (docs/bundle.md)::

    manifest.json      format version, kind, input / latent / likelihood specs, graphs, sha256 of every file
    encoder.onnx       x → (mean, logvar) for Gaussian latents, x → z for deterministic ones, x → z_e for VQ
    decoder.onnx       z → likelihood parameters
    *.fp16.onnx        half-precision variants (fp16 compute, fp32 inputs and outputs), when exported; a bf16
                       variant names the fp32 file (ONNX's Conv and Gemm take no bfloat16: the backend that runs
                       bf16 lowers the fp32 graph itself) and carries its own validation
    NAME.npy           arrays a kind needs beside its graphs (``manifest["arrays"]``: a VQ codebook, ...)
    model.safetensors  the weights, with ``manifest["model"]`` the kind and config, for the torch backend
    validation.json    ONNX Runtime against PyTorch, per graph, precision and batch size
    engines/           TensorRT plans and the record of what built each (``vaedeploy build``; docs/tensorrt.md): a
                       cache keyed on its own, not listed in the manifest

The schema is defined once, here, for the writer and the reader alike: ``check_manifest`` checks every field's type
and what the latent type implies about the graphs (``LATENT_TYPES``: which roles a bundle of that type has and the
name, shape and dtype of each graph's inputs and outputs). ``load_bundle`` also checks every file's presence and
sha256, that no path leaves the bundle, and that each ONNX graph is what its manifest entry says. Every failure is a
``BundleError`` that names the file and the field.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import owned
from .errors import BundleError, ConfigError, VaedeployError
from .io import open_regular, read_json, read_npy, show

FORMAT_VERSION = 2  # 2: latent.shape, input.size, latent.downsample and latent.scaling; 1 still loads (``upgrade``)
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16")
BATCH_AXIS = "batch"  # the name of every graph's dynamic leading axis
# the names of the dynamic spatial axes: an image's, and a spatial latent's (H / downsample, W / downsample)
IMAGE_AXES = ("height", "width")
LATENT_AXES = ("latent_height", "latent_width")
LIKELIHOOD_OUTPUTS = {"gaussian": 2, "bernoulli": 1, "identity": 1}  # how many parameters each kind's decoder gives
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Every name a manifest gives (kind, graph roles, tensor, array and file names) becomes part of a path or a model
# name somewhere (a Triton repository's folders, engine files, V2 model names), so it is one plain word that can
# never be ``..`` or hold a ``/``. Export writes names like ``encoder``, ``stage2_decoder``, ``eps_0``, ``z_e`` and
# ``decoder.fp16.onnx``.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "a name of 1 to 64 letters, digits, '_', '.' or '-' that starts with a letter or '_' and has no '..'"
DTYPES = ("float32", "float16", "float64", "int64", "int32")  # what a graph's inputs and outputs may be
# The largest max_batch a bundle declares: export validates every graph on max_batch rows in one call and a
# TensorRT build makes one profile per power of two up to it, while the runtime splits any larger batch anyway, so
# beyond this a larger value buys nothing but memory (the GPU benchmarks export 16,384).
MAX_BATCH = 1 << 16
ENGINES = "engines"  # the bundle's TensorRT engine cache, the default of `vaedeploy build --cache`
ENGINE_RECORD_FORMAT = 1  # the version of the JSON record beside each plan (docs/tensorrt.md)


def engine_files(directory: str | os.PathLike, role: str, precision: str) -> tuple[Path, Path]:
    """Where an engine cache keeps the plan of one graph at one precision, and the JSON record of what built it:
    the one naming both the builder (``vaedeploy/deploy/trt_build.py``) and the TensorRT backend read."""
    return Path(directory) / f"{role}.{precision}.plan", Path(directory) / f"{role}.{precision}.json"


def older_engine_cache(directory: Path) -> set[str] | None:
    """The files an engine cache of a `vaedeploy build` from before the marker vouches for: its engine records (JSON
    of ``ENGINE_RECORD_FORMAT``) and the plans they name, its validation reports and timing caches; None when it
    has no engine record."""
    listed, records = set(), 0
    for path in directory.iterdir():
        if path.is_symlink() or not path.is_file():
            continue
        if re.fullmatch(r"timing\..+\.cache", path.name):
            listed.add(path.name)
        elif path.suffix == ".json":
            try:
                doc = read_json(path, "an engine record")
            except (OSError, VaedeployError):
                continue
            if isinstance(doc, dict) and doc.get("format") == ENGINE_RECORD_FORMAT \
                    and isinstance(doc.get("plan"), dict) and isinstance(doc["plan"].get("file"), str):
                listed |= {path.name, doc["plan"]["file"]}
                records += 1
            elif isinstance(doc, dict) and re.fullmatch(r"validation\.\w+\.json", path.name) and "checks" in doc:
                listed.add(path.name)
    return listed if records else None


ENGINE_CACHE = owned.Kind(tool="build", what="an engine cache of `vaedeploy build`", noun="engine cache",
                          error=ConfigError, legacy=older_engine_cache)

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refusing absolute names and names that leave the bundle (``..``, symlinks out)."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise BundleError(f"{root}: manifest names file {name!r}; expected a relative path inside the bundle")
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: manifest path {name!r} leaves the bundle; expected a path inside {root}")
    return path


# ---- the schema ------------------------------------------------------------------------------------------------

class _Fields:
    """Type checks of one manifest's fields; each failure names the file, the field, what was expected and what came."""

    def __init__(self, where):
        self.where = where

    def fail(self, field: str, expected: str, got) -> None:
        raise BundleError(f"{self.where}: {field}: expected {expected}, got {show(got)}")

    def obj(self, doc, field: str) -> dict:
        if not isinstance(doc, dict):
            self.fail(field, "an object", doc)
        return doc

    def key(self, doc: dict, key: str, field: str):
        if key not in doc:
            raise BundleError(f"{self.where}: {field}: missing key {key!r}")
        return doc[key]

    def integer(self, value, field: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(field, f"an integer ≥ {minimum}", value)
        return value

    def string(self, value, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, "a non-empty string", value)
        return value

    def name(self, value, field: str) -> str:
        """A name that may become part of a path (``NAME``): checked here, once, so no reader has to."""
        if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
            self.fail(field, NAME_RULE, value)
        return value

    def one_of(self, value, options, field: str):
        if not isinstance(value, str) or value not in options:
            self.fail(field, f"one of {sorted(options)}", value)
        return value

    def listed(self, value, field: str, min_length: int = 0) -> list:
        if not isinstance(value, list) or len(value) < min_length:
            self.fail(field, f"a list of at least {min_length} item(s)", value)
        return value


def tensor(name: str, dims, dtype: str = "float32") -> dict:
    """The spec of one graph input or output: the dynamic batch axis, then ``dims`` (sizes, or the names of dynamic
    axes: ``IMAGE_AXES``, ``LATENT_AXES``)."""
    return {"name": name, "shape": [BATCH_AXIS, *(d if isinstance(d, str) else int(d) for d in dims)],
            "dtype": dtype}


Signature = tuple[list[dict], list[dict]]  # (inputs, outputs) of one graph, as ``tensor`` specs


@dataclass(frozen=True)
class ImageSizes:
    """The image sizes a bundle with ``input.size`` takes: H and W multiples of ``multiple`` from ``low`` to ``high``
    (each an (H, W) pair, inclusive); ``reference`` is ``input.shape``'s (H, W), the size ``sample`` draws at by
    default."""

    low: tuple[int, int]
    high: tuple[int, int]
    multiple: int
    reference: tuple[int, int]

    @classmethod
    def of(cls, input_spec: dict) -> "ImageSizes | None":
        """The sizes of a checked manifest's ``input`` entry; None for a fixed size (no ``input.size``)."""
        size = input_spec.get("size")
        if size is None:
            return None
        return cls(tuple(size["min"]), tuple(size["max"]), int(size["multiple"]), tuple(input_spec["shape"][1:]))

    def __str__(self) -> str:
        return (f"H and W multiples of {self.multiple} from {self.low[0]}×{self.low[1]} to "
                f"{self.high[0]}×{self.high[1]}")

    def refusal(self, size) -> str | None:
        """What is wrong with an (H, W) pair, in words (``None`` when this bundle takes it)."""
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in size)):
            return f"(H, W), two integers, with {self}"
        h, w = (int(v) for v in size)
        if h % self.multiple or w % self.multiple or not (self.low[0] <= h <= self.high[0]) \
                or not (self.low[1] <= w <= self.high[1]):
            return str(self)
        return None

    def validation_sizes(self) -> list[tuple[int, int]]:
        """The sizes export validates the graphs at: the reference, both corners of the range and two non-square
        sizes (the tall and the wide extreme), each once."""
        (h0, w0), (h1, w1) = self.low, self.high
        sizes = [self.reference, self.low, self.high, (h0, w1), (h1, w0)]
        return list(dict.fromkeys(sizes))


def _check_size(m: dict, f: _Fields) -> ImageSizes | None:
    """``input.size`` (optional): ``{"min": [H, W], "max": [H, W], "multiple": m}``, the range ``input.shape``'s
    reference H, W lies in."""
    size, shape = m["input"].get("size"), m["input"]["shape"]
    if size is None:
        return None
    size = f.obj(size, "input.size")
    if len(shape) != 3:
        f.fail("input.shape", "[C, H, W] where input.size makes H and W dynamic", shape)
    multiple = f.integer(f.key(size, "multiple", "input.size"), "input.size.multiple")
    bounds = []
    for key in ("min", "max"):
        pair = f.listed(f.key(size, key, "input.size"), f"input.size.{key}", 2)
        if len(pair) != 2 or any(f.integer(v, f"input.size.{key}") % multiple for v in pair):
            f.fail(f"input.size.{key}", f"[H, W], multiples of input.size.multiple ({multiple})", pair)
        bounds.append(pair)
    for i, axis in enumerate(("an H", "a W")):
        if not bounds[0][i] <= shape[1 + i] <= bounds[1][i] or shape[1 + i] % multiple:
            f.fail("input.shape", f"{axis} that input.size takes ({bounds[0][i]} to {bounds[1][i]}, a multiple of "
                   f"{multiple})", shape)
    return ImageSizes.of(m["input"])


def _latent_shape(m: dict, f: _Fields, spatial: bool) -> list[int]:
    """``latent.shape``: ``[d]``, or ``[c, h, w]`` where ``spatial``; a spatial shape follows the image through
    ``latent.downsample`` (h = H / downsample at the reference size, and any size's H a multiple of it)."""
    shape = f.listed(f.key(m["latent"], "shape", "latent"), "latent.shape", 1)
    if len(shape) not in ((1, 3) if spatial else (1,)):
        f.fail("latent.shape", "[d] or [c, h, w]" if spatial else "[d]", shape)
    shape = [f.integer(s, "latent.shape") for s in shape]
    sizes = ImageSizes.of(m["input"])
    if len(shape) == 1:
        if sizes is not None:
            f.fail("input.size", "none: a vector latent fixes the image size", m["input"]["size"])
        return shape
    factor = f.integer(f.key(m["latent"], "downsample", "latent"), "latent.downsample")
    image = m["input"]["shape"]
    if len(image) != 3 or [image[1], image[2]] != [shape[1] * factor, shape[2] * factor]:
        f.fail("latent.shape", f"[c, H / {factor}, W / {factor}] of the input shape {image}", shape)
    if sizes is not None and sizes.multiple % factor:
        f.fail("input.size.multiple", f"a multiple of latent.downsample ({factor})", sizes.multiple)
    return shape


def _check_scaling(latent: dict, f: _Fields) -> None:
    """``latent.scaling`` (optional): ``{"scaling_factor": s > 0, "shift_factor": t}``, diffusers' two numbers."""
    if "scaling" not in latent:
        return
    scaling = f.obj(latent["scaling"], "latent.scaling")
    factor = f.key(scaling, "scaling_factor", "latent.scaling")
    shift = f.key(scaling, "shift_factor", "latent.scaling")
    for field, value, positive in (("scaling_factor", factor, True), ("shift_factor", shift, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (positive and value <= 0):
            f.fail(f"latent.scaling.{field}", "a finite number" + (" > 0" if positive else ""), value)


def _image(m: dict) -> list:
    """An image tensor's dims after the batch: ``input.shape``, its H and W named where ``input.size`` makes them
    dynamic."""
    shape = m["input"]["shape"]
    return [shape[0], *IMAGE_AXES] if "size" in m["input"] else list(shape)


def _latent(m: dict, shape: list[int]) -> list:
    """A latent tensor's dims after the batch: ``shape``, its h and w named where the image's are dynamic."""
    return [shape[0], *LATENT_AXES] if len(shape) == 3 and "size" in m["input"] else list(shape)


def _gaussian(m: dict, f: _Fields, image: Callable) -> dict[str, Signature]:
    latent = m["latent"]
    z = _latent(m, _latent_shape(m, f, spatial=True))
    _check_scaling(latent, f)
    graphs = {"encoder": ([tensor("x", _image(m))], [tensor("mean", z), tensor("logvar", z)]),
              "decoder": ([tensor("z", z)], image())}
    if "prior" in latent:  # a learned prior over z: a two-stage VAE's stage-2 decoder u → (mean, log γ)
        prior = f.obj(latent["prior"], "latent.prior")
        if f.key(prior, "type", "latent.prior") != "two_stage":
            f.fail("latent.prior.type", "'two_stage'", prior["type"])
        if len(z) != 1:
            f.fail("latent.prior", "none: a two-stage prior is over vector latents", prior)
        u = f.integer(f.key(prior, "dim", "latent.prior"), "latent.prior.dim")
        graphs[f.name(f.key(prior, "graph", "latent.prior"), "latent.prior.graph")] = (
            [tensor("u", [u])], [tensor("mean", z), tensor("log_gamma", z)])
    return graphs


def _deterministic(m: dict, f: _Fields, image: Callable) -> dict[str, Signature]:
    z = _latent(m, _latent_shape(m, f, spatial=True))
    _check_scaling(m["latent"], f)
    return {"encoder": ([tensor("x", _image(m))], [tensor("z", z)]),
            "decoder": ([tensor("z", z)], image())}


def _fixed_size(m: dict, f: _Fields) -> None:
    """Latent types whose graphs hold the image's size (a prior over a fixed number of codes or layers of fixed
    width) take no ``input.size``."""
    if "size" in m["input"]:
        f.fail("input.size", f"none: a {m['latent']['type']} latent fixes the image size", m["input"]["size"])


def _vq(m: dict, f: _Fields, image: Callable) -> dict[str, Signature]:
    """A VQ latent: a D-vector per position of an h×w grid and a codebook of K rows (``latent.codebook``). With an
    autoregressive ``prior`` (vaedeploy's ``vqvae``) the grid is fixed and the bundle samples; without one (a VQGAN,
    diffusers' ``VQModel``) the grid follows the image through ``latent.downsample``, at any size ``input.size``
    declares, and the bundle has no ``sample``."""
    latent = m["latent"]
    codes = f.integer(f.key(latent, "num_codes", "latent"), "latent.num_codes", minimum=2)
    f.one_of(f.key(latent, "codebook", "latent"), m.get("arrays", {}), "latent.codebook")
    if "prior" not in latent:
        shape = _latent_shape(m, f, spatial=True)
        if len(shape) != 3:
            f.fail("latent.shape", "[D, h, w]", shape)
        z = _latent(m, shape)
        return {"encoder": ([tensor("x", _image(m))], [tensor("z_e", z)]), "decoder": ([tensor("z_q", z)], image())}
    _fixed_size(m, f)
    shape = f.listed(f.key(latent, "shape", "latent"), "latent.shape", 3)
    if len(shape) != 3:
        f.fail("latent.shape", "[D, h, w]", shape)
    d, h, w = (f.integer(s, "latent.shape") for s in shape)
    prior = f.obj(latent["prior"], "latent.prior")
    if f.key(prior, "type", "latent.prior") != "autoregressive":
        f.fail("latent.prior.type", "'autoregressive'", prior["type"])
    length = f.integer(f.key(prior, "length", "latent.prior"), "latent.prior.length")
    if length != h * w:
        f.fail("latent.prior.length", f"the latent's {h}×{w} = {h * w} positions", length)
    start = f.integer(f.key(prior, "start_token", "latent.prior"), "latent.prior.start_token", minimum=0)
    if start > codes:
        f.fail("latent.prior.start_token", f"a token in [0, {codes}]", start)
    return {"encoder": ([tensor("x", m["input"]["shape"])], [tensor("z_e", [d, h, w])]),
            "decoder": ([tensor("z_q", [d, h, w])], image()),
            f.name(f.key(prior, "graph", "latent.prior"), "latent.prior.graph"): (
                [tensor("tokens", [length], "int64")], [tensor("logits", [length, codes])])}


def _hierarchical(m: dict, f: _Fields, image: Callable) -> dict[str, Signature]:
    latent = m["latent"]
    _fixed_size(m, f)
    layers = f.listed(f.key(latent, "layers", "latent"), "latent.layers", 2)
    dims, names = [], {}
    for i, layer in enumerate(layers):
        layer = f.obj(layer, f"latent.layers[{i}]")
        dims.append(f.integer(f.key(layer, "dim", f"latent.layers[{i}]"), f"latent.layers[{i}].dim"))
        for k in ("noise", "z", "mean", "logvar"):
            names.setdefault(k, []).append(f.name(f.key(layer, k, f"latent.layers[{i}]"), f"latent.layers[{i}].{k}"))
    if _latent_shape(m, f, spatial=False) != [sum(dims)]:
        f.fail("latent.shape", f"[the sum of the layers' sizes], [{sum(dims)}]", latent["shape"])
    roles = f.obj(f.key(latent, "graphs", "latent"), "latent.graphs")
    encode, decode, sample = (f.name(f.key(roles, k, "latent.graphs"), f"latent.graphs.{k}")
                              for k in ("encode", "decode", "sample"))
    if encode != "encoder":
        f.fail("latent.graphs.encode", "'encoder'", encode)
    noise = [tensor(n, [d]) for n, d in zip(names["noise"], dims)]
    return {encode: ([tensor("x", m["input"]["shape"]), *noise],
                     [tensor(n, [d]) for k in ("z", "mean", "logvar") for n, d in zip(names[k], dims)]),
            decode: ([tensor("z", [sum(dims)])], image()),
            sample: (noise, image())}


# The latent types a bundle can declare, each with the graphs it implies; the runtime picks its class by this name.
LATENT_TYPES: dict[str, Callable[[dict, _Fields, Callable], dict[str, Signature]]] = {
    "gaussian": _gaussian, "deterministic": _deterministic, "vq": _vq, "hierarchical": _hierarchical,
}


def _check_graph_entry(entry, field: str, f: _Fields) -> None:
    entry = f.obj(entry, field)
    f.string(f.key(entry, "file", field), f"{field}.file")
    for side in ("inputs", "outputs"):
        specs = f.listed(f.key(entry, side, field), f"{field}.{side}", 1)
        for i, spec in enumerate(specs):
            where = f"{field}.{side}[{i}]"
            spec = f.obj(spec, where)
            f.name(f.key(spec, "name", where), f"{where}.name")
            shape = f.listed(f.key(spec, "shape", where), f"{where}.shape", 1)
            if not all(isinstance(s, (int, str)) and not isinstance(s, bool) for s in shape):
                f.fail(f"{where}.shape", "a list of sizes (integers) and axis names", shape)
            f.one_of(f.key(spec, "dtype", where), DTYPES, f"{where}.dtype")


def _same_signature(entry: dict, expected: Signature) -> str | None:
    """Where a graph entry (or a graph read from its file) differs from ``expected``, in words; None when it agrees.

    The batch axis may have any name; every other size must match."""
    for side, specs in zip(("inputs", "outputs"), expected):
        got = entry[side]
        if [s["name"] for s in got] != [s["name"] for s in specs]:
            return f"{side} named {[s['name'] for s in got]}, expected {[s['name'] for s in specs]}"
        for g, e in zip(got, specs):
            if len(g["shape"]) != len(e["shape"]) or not isinstance(g["shape"][0], str) \
                    or list(g["shape"][1:]) != list(e["shape"][1:]):
                return f"{side[:-1]} {g['name']!r} shaped {g['shape']}, expected {e['shape']}"
            if g["dtype"] != e["dtype"]:
                return f"{side[:-1]} {g['name']!r} of dtype {g['dtype']}, expected {e['dtype']}"
    return None


def _upgrade(m: dict, f: _Fields) -> dict:
    """A format-1 manifest in format 2's form, in memory (the file is not touched): ``latent.dim`` (with a VQ
    latent's ``grid``) becomes ``latent.shape``. Format 1 had no ``input.size``, ``latent.downsample`` or
    ``latent.scaling``: every format-1 bundle has a fixed image size and unscaled latents."""
    latent = dict(f.obj(f.key(m, "latent", "the manifest"), "latent"))
    shape = [f.integer(f.key(latent, "dim", "latent"), "latent.dim")]
    if latent.get("type") == "vq":
        grid = f.listed(f.key(latent, "grid", "latent"), "latent.grid", 2)
        if len(grid) != 2:
            f.fail("latent.grid", "[h, w]", grid)
        shape += [f.integer(g, "latent.grid") for g in grid]
        del latent["grid"]
    del latent["dim"]
    latent["shape"] = shape
    return {**m, "format_version": FORMAT_VERSION, "latent": latent}


def check_manifest(manifest, where) -> dict:
    """Check a manifest document against the schema and return it in the current format's form (a format-1
    manifest upgraded in memory, ``_upgrade``); raise ``BundleError`` naming ``where`` and the field.

    The writer calls this before a bundle is written and ``load_bundle`` before one is used, so both agree on
    what a bundle is.
    """
    f = _Fields(where)
    m = f.obj(manifest, "the manifest")
    version = f.key(m, "format_version", "the manifest")
    f.integer(version, "format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format {version} is newer than this vaedeploy reads ({FORMAT_VERSION}); "
                          "upgrade vaedeploy")
    if version == 1:
        m = _upgrade(m, f)
    for key in ("kind", "input", "latent", "likelihood", "graphs", "files", "max_batch", "validation"):
        f.key(m, key, "the manifest")
    f.name(m["kind"], "kind")
    if f.integer(m["max_batch"], "max_batch") > MAX_BATCH:
        f.fail("max_batch", f"at most {MAX_BATCH} (the runtime splits larger batches)", m["max_batch"])
    shape = f.listed(f.key(f.obj(m["input"], "input"), "shape", "input"), "input.shape", 1)
    for s in shape:
        f.integer(s, "input.shape")
    _check_size(m, f)
    files = f.obj(m["files"], "files")
    for name, digest in files.items():
        f.name(name, "files")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            f.fail(f"files[{name!r}]", "a sha256 hex digest", digest)
    for name, file in f.obj(m.get("arrays", {}), "arrays").items():
        f.one_of(file, files, f"arrays.{f.name(name, 'arrays')}")
    if m.get("model") is not None:
        model = f.obj(m["model"], "model")
        f.name(f.key(model, "kind", "model"), "model.kind")
        f.obj(f.key(model, "config", "model"), "model.config")
        f.one_of(f.key(model, "weights", "model"), files, "model.weights")
    if f.key(f.obj(m["validation"], "validation"), "passed", "validation") is not True:
        f.fail("validation.passed", "true (a bundle is written only when its graphs match PyTorch)",
               m["validation"]["passed"])

    likelihood = f.obj(m["likelihood"], "likelihood")
    kind = f.one_of(f.key(likelihood, "kind", "likelihood"), LIKELIHOOD_OUTPUTS, "likelihood.kind")
    outputs = f.listed(f.key(likelihood, "outputs", "likelihood"), "likelihood.outputs", 1)
    if len(outputs) != LIKELIHOOD_OUTPUTS[kind]:
        f.fail("likelihood.outputs", f"{LIKELIHOOD_OUTPUTS[kind]} name(s) for a {kind} likelihood", outputs)
    for name in outputs:
        f.name(name, "likelihood.outputs")

    def image() -> list[dict]:  # a decoder's outputs: every likelihood parameter shaped like the input
        return [tensor(name, _image(m)) for name in outputs]

    latent_type = f.one_of(f.key(f.obj(m["latent"], "latent"), "type", "latent"), LATENT_TYPES, "latent.type")
    expected = LATENT_TYPES[latent_type](m, f, image)

    graphs = f.obj(m["graphs"], "graphs")
    for role in expected:
        if role not in graphs:
            raise BundleError(f"{where}: graphs: a {latent_type} bundle needs a {role!r} graph; it has "
                              f"{sorted(graphs)}")
    for role, variants in graphs.items():
        variants = f.obj(variants, f"graphs.{f.name(role, 'graphs')}")
        if "fp32" not in variants or not set(variants) <= set(PRECISIONS):
            f.fail(f"graphs.{role}", f"variants among {list(PRECISIONS)}, fp32 always", sorted(variants))
        for precision, entry in variants.items():
            field = f"graphs.{role}.{precision}"
            _check_graph_entry(entry, field, f)
            f.one_of(entry["file"], files, f"{field}.file")
            if role in expected and (difference := _same_signature(entry, expected[role])):
                raise BundleError(f"{where}: {field}: the graph has {difference} (from the {latent_type} latent "
                                  f"shaped {m['latent'].get('shape')} and inputs {_image(m)})")
    return m


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32"}


def graph_signature(session) -> dict:
    """The inputs and outputs (name, shape, dtype) of the graph an ONNX Runtime session holds: the runtime's
    onnxruntime runners check each graph with the session they run it in, so no file is read for the check alone."""

    def specs(values) -> list[dict]:
        return [{"name": v.name, "shape": [s if s is not None else "?" for s in v.shape],
                 "dtype": _ORT_DTYPES.get(v.type, v.type)} for v in values]

    return {"inputs": specs(session.get_inputs()), "outputs": specs(session.get_outputs())}


def read_graph_signature(path: Path) -> dict:
    """The inputs and outputs (name, shape, dtype) of an ONNX file, read by ONNX Runtime with no optimization."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's parse errors have no common base class
        raise BundleError(f"{path}: not an ONNX graph ONNX Runtime can load ({str(e).splitlines()[0]})") from None
    return graph_signature(session)


# ---- the bundle ------------------------------------------------------------------------------------------------

@dataclass
class Bundle:
    """A verified bundle: its directory and manifest, with helpers to find its graphs."""

    root: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def latent(self) -> dict:
        return self.manifest["latent"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One image's shape at the reference size (``input.shape``)."""
        return tuple(self.manifest["input"]["shape"])

    @property
    def sizes(self) -> ImageSizes | None:
        """The image sizes the graphs take (``input.size``); None where the size is fixed."""
        return ImageSizes.of(self.manifest["input"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One latent's shape at the reference size (``latent.shape``): (d,) or (c, h, w)."""
        return tuple(self.latent["shape"])

    @property
    def downsample(self) -> int | None:
        """H / h of a spatial latent (``latent.downsample``, a VQ grid without a prior's too); None for vector
        latents and a prior's fixed VQ grid."""
        return self.latent.get("downsample")

    @property
    def max_batch(self) -> int:
        return int(self.manifest["max_batch"])

    def graph(self, role: str, precision: str = "fp32") -> dict:
        """The manifest entry of one graph; its ``path`` key is added, resolved inside the bundle."""
        variants = self.manifest["graphs"].get(role)
        if variants is None:
            raise BundleError(f"{self.root}: no {role!r} graph; this bundle has {sorted(self.manifest['graphs'])}")
        if precision not in variants:
            raise BundleError(f"{self.root}: the {role} graph has no {precision!r} variant; it has {sorted(variants)}")
        entry = dict(variants[precision])
        entry["path"] = _inside(self.root, entry["file"])
        return entry

    def path(self, name: str) -> Path:
        return _inside(self.root, name)

    def array(self, name: str) -> np.ndarray:
        """An array the kind stores beside its graphs (``manifest["arrays"]``, e.g. a VQ codebook); never pickled."""
        arrays = self.manifest.get("arrays", {})
        if name not in arrays:
            raise BundleError(f"{self.root}: no array {name!r}; this bundle has {sorted(arrays)}")
        path = _inside(self.root, arrays[name])
        with open_regular(path, "a .npy array", BundleError) as f:
            return read_npy(f, str(path), os.fstat(f.fileno()).st_size, BundleError)

    def check_graph(self, role: str, precision: str, signature: dict) -> None:
        """Refuse a graph whose inputs and outputs as read from its file (``signature``) are not its manifest
        entry's, naming the file and the entry."""
        entry = self.manifest["graphs"][role][precision]
        if difference := _same_signature(signature, (entry["inputs"], entry["outputs"])):
            raise BundleError(f"{self.root / entry['file']}: the graph has {difference}, which is what {MANIFEST} "
                              f"says of graphs.{role}.{precision}")

    def check_graphs(self, read: dict | None = None) -> None:
        """Check every graph of every precision against its manifest entry, in the manifest's order; ``read``: the
        signatures already read, by (role, precision) (the runtime's sessions), the rest read with ONNX Runtime."""
        for role, variants in self.manifest["graphs"].items():
            for precision, entry in variants.items():
                signature = (read or {}).get((role, precision))
                if signature is None:
                    signature = read_graph_signature(_inside(self.root, entry["file"]))
                self.check_graph(role, precision, signature)


def read_manifest(root: str | os.PathLike) -> dict:
    """The parsed ``manifest.json`` of ``root`` (any JSON value; ``check_manifest`` says whether it is one)."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (expected the --out of `vaedeploy export`)")
    if not manifest_path.exists():
        raise BundleError(f"{root}: missing {MANIFEST} (expected the --out of `vaedeploy export`)")
    return read_json(manifest_path, "a bundle manifest", error=BundleError)


def load_bundle(root: str | os.PathLike, verify: bool = True, graphs: bool = True) -> Bundle:
    """Read ``root/manifest.json``, check it against the schema and every listed file's presence; with ``verify``
    (the default) also every file's sha256 and, with ``graphs`` too, that each ONNX graph has the inputs and outputs
    its entry says (``vaedeploy.load`` passes ``graphs=False`` and checks them once its sessions have read them, so
    that no graph is read twice)."""
    root = Path(root)
    manifest = check_manifest(read_manifest(root), root / MANIFEST)
    for name, expected in manifest["files"].items():
        path = _inside(root, name)
        if not path.is_file():
            raise BundleError(f"{root}: missing file {name} listed in {MANIFEST}")
        if verify and sha256_file(path) != expected:
            raise BundleError(f"{root}: {name} does not match its sha256 in {MANIFEST} (expected {expected}); "
                              "the file was changed or damaged after export")
    bundle = Bundle(root, manifest)
    if verify and graphs:
        bundle.check_graphs()
    return bundle
