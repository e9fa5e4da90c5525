"""Reading and verifying a bundle: the directory ``vaedeploy export`` writes and the runtime loads (no torch here).

Layout (DESIGN.md "The bundle")::

    manifest.json      format version, kind, input / latent / likelihood specs, graphs, sha256 of every file
    encoder.onnx       x → (mean, logvar) for Gaussian latents, x → z for deterministic ones
    decoder.onnx       z → likelihood parameters
    *.fp16.onnx        half-precision variants (fp16 compute, fp32 inputs and outputs), when exported
    NAME.npy           arrays a kind needs beside its graphs (``manifest["arrays"]``: a VQ codebook, ...)
    model.safetensors  the weights, with ``manifest["model"]`` the kind and config, for the torch backend
    validation.json    ONNX Runtime against PyTorch, per graph, precision and batch size

``manifest["graphs"]`` maps a role (``encoder``, ``decoder``; more kinds add ``prior``, per-stage graphs, ...) to
its variants by precision, each with its file, input and output specs, opset and exporter. Loading checks the format
version, that every listed file exists inside the bundle, and its sha256; each failure names the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16")


class BundleError(ValueError):
    """A bundle cannot be used: the message names the bundle, the file and what was expected."""


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
        return tuple(self.manifest["input"]["shape"])

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
        return np.load(_inside(self.root, arrays[name]), allow_pickle=False)


def load_bundle(root: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read ``root/manifest.json`` and check the format version, every file's presence and (``verify``) sha256."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (expected the --out of `vaedeploy export`)")
    if not manifest_path.is_file():
        raise BundleError(f"{root}: missing {MANIFEST} (expected the --out of `vaedeploy export`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{manifest_path}: expected an integer format_version, got {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{root}: bundle format {version} is newer than this vaedeploy reads ({FORMAT_VERSION}); "
                          "upgrade vaedeploy")
    missing = [k for k in ("kind", "input", "latent", "graphs", "files", "max_batch") if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_path}: missing key(s) {missing}")
    for name, expected in manifest["files"].items():
        path = _inside(root, name)
        if not path.is_file():
            raise BundleError(f"{root}: missing file {name} listed in {MANIFEST}")
        if verify and sha256_file(path) != expected:
            raise BundleError(f"{root}: {name} does not match its sha256 in {MANIFEST} (expected {expected}); "
                              "the file was changed or damaged after export")
    for role, variants in manifest["graphs"].items():
        for precision, entry in variants.items():
            if entry.get("file") not in manifest["files"]:
                raise BundleError(f"{manifest_path}: the {role} {precision} graph's file {entry.get('file')!r} "
                                  "is not among the checksummed files")
    return Bundle(root, manifest)
