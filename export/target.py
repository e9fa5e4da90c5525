"""Where a bundle is written: what export may replace, its temporary directory, the swap, and what killed exports
left behind. Export writes only what it owns: it never deletes a folder or file that is not a bundle it wrote.

A target may be absent, an empty directory, or a bundle: a directory whose ``manifest.json`` lists its files, and
nothing else but the engine cache ``vaedeploy build`` writes there (``engines/``, holding only plans, their records,
timing caches and the temporary files of an interrupted write: it goes with the old bundle, whose graphs its plans
were built from). A bundle whose manifest is damaged is replaced only with ``force``, and only if every entry has a
name a bundle's files have. A run directory, a regular file, a symbolic link, or a bundle holding files of the
user's is refused with a sentence, ``force`` or not.

The new bundle is built in ``.NAME.export-PID-TOKEN.tmp`` beside the target and swapped in (``io.replace_directory``);
the old one then sits at that temporary name until it is deleted. A killed export leaves such a directory behind;
the next export to the same target deletes those whose process is gone and whose files are all bundle files.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path

from vaedeploy.bundle import ENGINES, MANIFEST
from vaedeploy.errors import BundleError
from vaedeploy.runs import CONFIG

# the names a bundle's files have: graphs, arrays, the weights and the reports
_BUNDLE_FILE = re.compile(r"[\w.-]+\.(onnx|npy)|model\.safetensors|validation\.json|manifest\.json")
# the names in a bundle's engines/ (export/trt_build.py): plans, their JSON records and the validation report, the
# timing cache, and atomic_write_bytes's temporary file of a write that was interrupted
_ENGINE_FILE = re.compile(r"[\w.-]+\.(plan|json|cache)|\.[\w.-]+\.tmp")
FAILED_SUFFIX = ".failed"
_IN_USE: set[Path] = set()  # this process's temporary directories of exports still running


def _regular(path: Path, names: re.Pattern) -> bool:
    return path.is_file() and not path.is_symlink() and bool(names.fullmatch(path.name))


def _engine_cache(path: Path) -> bool:
    """``path`` is the engines/ folder of a bundle as ``vaedeploy build`` writes it: a real folder of its files only."""
    return path.name == ENGINES and path.is_dir() and not path.is_symlink() and \
        all(_regular(p, _ENGINE_FILE) for p in path.iterdir())


def _bundle_like(directory: Path) -> bool:
    """Every entry of ``directory`` is a regular file with a name a bundle's files have, or its engine cache."""
    return all(_regular(p, _BUNDLE_FILE) or _engine_cache(p) for p in directory.iterdir())


def _listed_files(directory: Path) -> set[str] | None:
    """The names the directory's manifest lists (with the manifest itself), or None when it has no readable one."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return {MANIFEST, *manifest["files"]}


def check_target(out: Path, *, force: bool = False) -> None:
    """Refuse, with a sentence, to write a bundle at ``out`` when that would delete what export did not write."""
    refuse = "choose another --out (export never deletes what it did not write)"
    if out.is_symlink():
        raise BundleError(f"{out}: is a symbolic link; {refuse}")
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(f"{out}: exists and is a file, not a bundle directory; {refuse}")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if (out / CONFIG).is_file():
        raise BundleError(f"{out}: is a training run (it has {CONFIG}); write the bundle elsewhere, e.g. "
                          f"--out {out.parent / (out.name + '_bundle')}")
    listed = _listed_files(out)
    if listed is None:
        if not (out / MANIFEST).is_file():
            raise BundleError(f"{out}: exists and is not a vaedeploy bundle (no {MANIFEST}); {refuse}")
        if not force:
            raise BundleError(f"{out}: its {MANIFEST} cannot be read, so it may not be a bundle vaedeploy wrote; "
                              "pass --force to replace it anyway")
        if not _bundle_like(out):
            raise BundleError(f"{out}: holds files that are not bundle files; {refuse}")
        return
    foreign = [name for name in entries if name not in listed and not _engine_cache(out / name)]
    if foreign:
        raise BundleError(f"{out}: holds files that are not part of its bundle ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); move them out first or {refuse}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_dir(out: Path) -> Path:
    """A new, empty temporary directory beside ``out`` for this export (mode as the user's umask gives)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.export-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    umask = os.umask(0)
    os.umask(umask)
    path.mkdir(mode=0o777 & ~umask)
    _IN_USE.add(path)
    return path


def release(path: Path) -> None:
    """This export is done with ``path`` (deleted, or left for the next export to clean)."""
    _IN_USE.discard(path)


def clean_leftovers(out: Path) -> list[Path]:
    """Delete the temporary directories that killed or failed exports to ``out`` left: their process is gone (or is
    this one, done with them) and every file in them is a bundle file."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.export-(\d+)-[0-9a-f]+\.tmp")
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        pid = int(match[1]) if match else None
        done = pid == os.getpid() and path not in _IN_USE or pid != os.getpid() and pid is not None and not _alive(pid)
        if match and done and path.is_dir() and not path.is_symlink() and _bundle_like(path):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def failed_dir(out: Path) -> Path | None:
    """Where a bundle that failed validation goes (``OUT.failed``), or None when something not ours is there."""
    failed = out.with_name(out.name + FAILED_SUFFIX)
    if failed.is_symlink() or (failed.exists() and not (failed.is_dir() and _bundle_like(failed))):
        return None
    return failed
