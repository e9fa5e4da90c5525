"""What export may replace at its --out: vaedeploy's one ownership rule (``vaedeploy.owned``) with a bundle's own
cases. Export writes only what it owns: it never deletes a folder or file that is not a bundle it wrote.

A target may be absent, an empty directory, or a bundle: a directory carrying vaedeploy's marker
(``owned.MARKER``, written by export since this rule) or, for a bundle of an older version, a ``manifest.json``
that is a valid vaedeploy manifest (its ``format_version`` and ``check_manifest``) — the manifest's format field is
then vaedeploy's marker; a manifest that merely has a ``files`` object proves nothing. Every entry must be one the
marker (or that manifest) lists, or the engine cache ``vaedeploy build`` wrote inside (``engines/``, with its own
marker, or as an older build left it: ``bundle.older_engine_cache``); else export refuses, listing them.

A bundle of an older version whose manifest cannot be read (no marker to prove it ours) is replaced only with
``force``, and only if vaedeploy can tell it wrote every file in it from the file itself (the manifest, and ONNX
graphs whose metadata names vaedeploy); export lists the others and refuses. A run directory, a regular file or a
symbolic link is refused, ``force`` or not.
"""
from __future__ import annotations

from pathlib import Path

from vaedeploy import owned
from vaedeploy.bundle import ENGINES, MANIFEST, check_manifest, older_engine_cache
from vaedeploy.errors import BundleError, VaedeployError
from vaedeploy.io import read_json
from vaedeploy.runs import CONFIG

FAILED_SUFFIX = ".failed"


def _manifest(directory: Path):
    """The parsed manifest.json of ``directory`` (any JSON value), or None when there is none or it is not JSON."""
    path = directory / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return read_json(path, "a bundle's manifest")
    except VaedeployError:
        return None


def older_bundle(directory: Path) -> set[str] | None:
    """The entries a bundle written before the marker vouches for (its manifest's files, their folders, its engine
    cache), or None when its manifest is not a valid vaedeploy manifest."""
    manifest = _manifest(directory)
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        return None
    try:
        check_manifest(manifest, directory / MANIFEST)
    except BundleError:
        return None
    listed = {MANIFEST}
    for name in manifest["files"]:
        parts = name.split("/")
        listed |= {"/".join(parts[:i]) + "/" for i in range(1, len(parts))} | {name}
    engines = directory / ENGINES
    if engines.is_dir() and not engines.is_symlink() and owned.read_marker(engines) is None \
            and (cache := older_engine_cache(engines)) is not None:
        listed |= {f"{ENGINES}/"} | {f"{ENGINES}/{name}" for name in cache}
    return listed


BUNDLE = owned.Kind(tool="export", what="a vaedeploy bundle", noun="bundle", error=BundleError, legacy=older_bundle,
                    nested=("build", "calibrate"))  # its engine cache, and auto's calibration folder


def _damaged(out: Path) -> bool:
    """``out`` has no marker and a manifest.json that is not JSON, or names a format version but fails the schema."""
    if owned.read_marker(out) is not None or not (out / MANIFEST).is_file():
        return False
    manifest = _manifest(out)
    return manifest is None or isinstance(manifest, dict) and "format_version" in manifest \
        and older_bundle(out) is None


def _written_by_vaedeploy(path: Path) -> bool:
    """What ``force`` may replace: the damaged manifest itself, and ONNX graphs whose metadata export wrote."""
    if path.name == MANIFEST:
        return True
    if path.suffix != ".onnx" or path.is_symlink() or not path.is_file():
        return False
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any file that onnx cannot parse is simply not one we can vouch for
        return False
    return any(prop.key == "vaedeploy_version" for prop in model.metadata_props)


def check_target(out: Path, *, force: bool = False) -> None:
    """Refuse, with a sentence, to write a bundle at ``out`` when that would delete what export did not write."""
    if out.is_dir() and not out.is_symlink() and (out / CONFIG).is_file():
        raise BundleError(f"{out}: is a training run (it has {CONFIG}); write the bundle elsewhere, e.g. "
                          f"--out {out.parent / (out.name + '_bundle')}")
    if not _damaged(out):
        owned.check_target(out, BUNDLE)
        return
    if not force:
        raise BundleError(f"{out}: its {MANIFEST} cannot be read and it carries no {owned.MARKER}, so it may not be "
                          "a bundle vaedeploy wrote; pass --force to replace it anyway")
    unproven = sorted(p.name for p in out.iterdir() if not _written_by_vaedeploy(p))
    if unproven:
        raise BundleError(f"{out}: --force replaces a damaged bundle only when vaedeploy can tell it wrote every file "
                          f"in it, and it cannot for {owned.named(unproven)}, which would be lost; move them out "
                          "first or choose another --out (vaedeploy never deletes what it did not write)")


def failed_dir(out: Path) -> Path | None:
    """Where a bundle that failed validation goes (``OUT.failed``), or None when something not ours is there."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    try:
        owned.check_target(failed, BUNDLE)
    except BundleError:
        return None
    return failed
