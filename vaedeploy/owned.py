"""One ownership rule for every directory a vaedeploy command writes (a bundle, a Triton repository, a web page, an
engine cache): what it may replace, how it writes, and what a failure leaves.

**The marker.** Every such directory holds ``MARKER``, a JSON file naming the format (``FORMAT``, ``VERSION``), the
command that wrote it (``tool``) and every entry it wrote (``entries``: paths relative to the directory, ``/`` after
a folder). It is the only proof of ownership: the shape of someone's JSON, or a name like ``*.onnx``, proves
nothing. Outputs of older versions carry no marker; each command reads its own older marker (``Kind.legacy``: a
bundle's valid manifest, a web page's explorer.json, a repository's ``.vaedeploy-triton-repo.json``), and that
alone.

**The rule.** A target is accepted when it is absent, an empty directory, or a directory carrying the marker of the
same command; then every entry found in it must be one the marker lists (a folder inside that carries a marker of
its own, as a bundle's ``engines/``, counts as listed when its own entries are), else the command refuses with a
sentence listing the entries that would be lost. Entries the user added are never kept and never deleted: the
command stops and says which they are. A symbolic link as the target is refused outright (replacing it would
replace the link, not the folder it names, and a failure could leave the link renamed).

**The write.** ``Staging`` is a new hidden directory beside the target, ``.NAME.TOOL-PID-TOKEN.tmp``, whose first
file is the marker (``complete: false``: everything in it is this run's); every path written into it must resolve
inside it. ``commit`` writes the final marker, checks the target again and swaps the two in one step
(``io.replace_directory``); any failure before the swap deletes the staging directory and leaves the target exactly
as it was. The old directory, swapped out to a hidden name, is then deleted marker last (so a half-deleted one is
still known as ours); if that fails the command has still succeeded, and the next run to the same target deletes
it, as it deletes the staging directories of runs that were killed.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import VaedeployError
from .io import read_json, replace_directory, write_json

MARKER = ".vaedeploy-owned.json"
FORMAT = "vaedeploy-owned"
VERSION = 1
_SHOWN = 5  # entries named in a refusal
_IN_USE: set[Path] = set()  # this process's staging directories still being written


@dataclass(frozen=True)
class Kind:
    """What one command writes: its name in the marker (``tool``), what its messages call the output (``what``,
    with its article, and the bare ``noun``), its error class, the entries an output of an older version lists in
    its own marker (``legacy``: None when the directory is not one), and the tools whose marked folders may sit
    inside its output (``nested``: a bundle's engine cache)."""

    tool: str
    what: str
    noun: str
    error: type[VaedeployError]
    legacy: Callable[[Path], set[str] | None] = field(default=lambda directory: None)
    nested: tuple[str, ...] = ()


def read_marker(directory: Path) -> dict | None:
    """The marker of ``directory`` when it has a valid one, else None."""
    path = directory / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = read_json(path, "vaedeploy's ownership marker")
    except VaedeployError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("version"), int) \
            or not isinstance(doc.get("tool"), str) or not isinstance(doc.get("entries"), list) \
            or not all(isinstance(e, str) for e in doc["entries"]):
        return None
    return doc


def _entries(root: Path) -> dict[str, Path]:
    """Every entry under ``root`` by its relative name (``/`` after a folder; a symbolic link is never followed and
    never matches a name vaedeploy writes)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[f"{relative} (a symbolic link)"] = path
            else:
                found[relative + "/" if name in dirs else relative] = path
    return found


def _leftover_of_write(name: str, listed: set[str]) -> bool:
    """``name`` is the temporary file of an interrupted ``io.atomic_write_bytes`` of a listed file."""
    folder, _, base = name.rpartition("/")
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", base)
    return bool(match) and f"{folder}/{match[1]}".lstrip("/") in listed


def listed_entries(directory: Path, kind: Kind) -> set[str] | None:
    """The entries ``directory`` says are ``kind``'s (its marker, or ``kind``'s older marker), the marker itself
    included; None when it carries no such proof."""
    marker = read_marker(directory)
    if marker is None:
        return kind.legacy(directory)
    return {MARKER, *marker["entries"]} if marker["tool"] == kind.tool else None


def foreign_entries(directory: Path, listed: set[str], kind: Kind) -> list[str]:
    """The entries under ``directory`` that ``listed`` does not name, sorted; a folder carrying a complete marker
    of one of ``kind.nested``'s tools is checked against that marker instead."""
    found = _entries(directory)
    nested = {name: marker for name in found if name.endswith("/") and (marker := read_marker(found[name]))
              and marker["tool"] in kind.nested and marker.get("complete", True)}
    foreign = []
    for name in sorted(found):
        if any(prefix in nested for prefix in _prefixes(name)):
            continue  # judged with the marked folder it is in
        if name in nested:
            inner = {MARKER, *nested[name]["entries"]}
            foreign += [name + entry for entry in foreign_entries(found[name], inner, kind)]
        elif name not in listed and not _leftover_of_write(name, listed):
            foreign.append(name)
    return foreign


def _prefixes(name: str) -> list[str]:
    parts = name.rstrip("/").split("/")
    return ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]


def _refuse(kind: Kind, out: Path, why: str, advice: str = "choose another --out") -> VaedeployError:
    return kind.error(f"{out}: {why}; expected an absent or empty directory, or an earlier output of `vaedeploy "
                      f"{kind.tool}`: {advice} (vaedeploy never deletes what it did not write)")


def named(names: list[str]) -> str:
    """Names for a sentence: the first few, and how many more."""
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_target(out: Path, kind: Kind) -> None:
    """Refuse, with a sentence, a target ``kind``'s command may not replace (the rule in this module's docstring)."""
    if out.is_symlink():
        raise _refuse(kind, out, "is a symbolic link (vaedeploy neither replaces a link nor writes through one)")
    if not out.exists():
        return
    if not out.is_dir():
        raise _refuse(kind, out, f"exists and is a file, not a {kind.noun} directory")
    if not any(out.iterdir()):
        return
    listed = listed_entries(out, kind)
    if listed is None:
        marker = read_marker(out)
        made_by = f", its {MARKER} says `vaedeploy {marker['tool']}` wrote it" if marker else ""
        raise _refuse(kind, out, f"exists and is not {kind.what} (it holds "
                                 f"{named(sorted(set(_entries(out)) - {MARKER}))}{made_by})")
    if foreign := foreign_entries(out, listed, kind):
        raise _refuse(kind, out, f"holds files that are not part of its {kind.noun} ({named(foreign)}), which a "
                                 "rewrite would lose", "move them out first or choose another --out")


def _marker_doc(kind: Kind, entries: list[str], complete: bool, details: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "tool": kind.tool, "vaedeploy_version": __version__,
            "complete": complete, **details, "entries": entries}


def temporary_name(out: Path, tool: str) -> Path:
    return out.parent / f".{out.name}.{tool}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def claim(directory: Path, kind: Kind, names: list[str], details: dict | None = None) -> None:
    """Add ``names`` to the marker of ``directory``, a folder ``kind``'s command fills file by file (an engine
    cache) rather than replaces, before they are written: so a run killed halfway leaves only listed files. The
    folder must pass ``check_target``; an empty or new one gets its marker here, an older one without a marker gets
    one listing what its older marker vouched for."""
    check_target(directory, kind)
    listed = listed_entries(directory, kind) if directory.is_dir() and any(directory.iterdir()) else set()
    entries = sorted((listed - {MARKER}) | set(names))
    if (directory / MARKER).is_file() and listed >= {*names}:
        return
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / MARKER, _marker_doc(kind, entries, True, details or {}))


_LAST = ("manifest.json", "explorer.json", ".vaedeploy-triton-repo.json")  # the older markers, deleted last too


def delete_owned(path: Path) -> None:
    """Delete a directory of ours that a swap or a killed run left at a temporary name: its marker (or older marker)
    last, so a deletion that stops halfway still leaves it known as ours."""
    last = [p for p in (path / MARKER, *(path / name for name in _LAST)) if p.is_file()]
    for entry in path.iterdir():
        if entry in last:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in last:
        entry.unlink()
    path.rmdir()


def _owned_whole(directory: Path, kind: Kind) -> bool:
    """``directory`` carries ``kind``'s marker (or older marker) and nothing it does not list."""
    listed = listed_entries(directory, kind)
    return listed is not None and not foreign_entries(directory, listed, kind)


def clean_leftovers(out: Path, kind: Kind) -> list[Path]:
    """Delete what runs of ``kind``'s command to ``out`` left beside it, when their process is gone (or is this
    one, done with them): staging directories (their marker says not complete: everything in them is their run's),
    and old outputs swapped out but not deleted, whole ones of ours only, and only while ``out`` exists (a swap
    without RENAME_EXCHANGE killed between its two renames leaves the old output there and nothing at ``out``)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{re.escape(kind.tool)}-(\d+)-[0-9a-f]+\.tmp")
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if not match or path in _IN_USE or path.is_symlink() or not path.is_dir():
            continue
        if int(match[1]) != os.getpid() and _alive(int(match[1])):
            continue
        marker = read_marker(path)
        staging = marker is not None and marker["tool"] == kind.tool and marker.get("complete") is False
        if not staging and not (out.exists() and _owned_whole(path, kind)):
            continue
        try:
            delete_owned(path)
        except OSError:
            continue  # in nobody's way; the next run tries again
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staging:
    """The new contents of ``out``, written into a hidden directory beside it and swapped in by ``commit``.

    Use it as a context manager: leaving the block without a commit (an exception) deletes the staging directory
    and leaves ``out`` as it was. ``details`` are facts recorded in the marker beside the entries; ``check`` is the
    check of ``out`` made before the work and again just before the swap (default ``check_target``; export adds
    its own cases to it).
    """

    def __init__(self, out: Path, kind: Kind, details: dict | None = None,
                 check: Callable[[Path], None] | None = None):
        self.out, self.kind, self.details = Path(out), kind, details or {}
        self.check = check or (lambda target: check_target(target, kind))
        self.check(self.out)
        clean_leftovers(self.out, kind)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.root = temporary_name(self.out, kind.tool)
        umask = os.umask(0)
        os.umask(umask)
        self.root.mkdir(mode=0o777 & ~umask)  # as any directory the user makes
        self.committed = False
        _IN_USE.add(self.root)
        try:
            write_json(self.root / MARKER, _marker_doc(kind, [], False, self.details))  # first: the folder is ours
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the staging directory unless it was committed (a failed delete is cleaned by the next run)."""
        if not self.committed:
            shutil.rmtree(self.root, ignore_errors=True)
        _IN_USE.discard(self.root)

    def path(self, name: str) -> Path:
        """Where ``name`` (relative, ``/``-separated) goes; refuses, with a sentence, a name that would leave the
        output directory, whatever made it (a model name, a role, a graph file from a manifest)."""
        path = self.root / name
        if os.path.isabs(name) or not path.resolve().is_relative_to(self.root.resolve()) or \
                path.resolve() == self.root.resolve():
            raise self.kind.error(f"{self.out}: the path {name!r} would be written outside the output directory; "
                                  "expected a name inside it (no '..', no absolute path, no link out)")
        return path

    def mkdir(self, name: str) -> Path:
        path = self.path(name)
        with _naming(self.out / name):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        with _naming(self.out / name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return path

    def copy(self, name: str, source: Path) -> Path:
        """Copy ``source`` to ``name``; an error reading names the source, an error writing the output path (a full
        disk names the output being written, not the installed file read)."""
        path = self.path(name)
        try:
            with open(source, "rb"):
                pass
        except OSError as e:
            raise OSError(e.errno, f"cannot read {source}: {e.strerror or e}") from None
        with _naming(self.out / name):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)
        return path

    def commit(self, to: Path | None = None) -> Path:
        """Write the final marker and swap the staging directory in at ``to`` (default ``out``); return ``to``."""
        to = self.out if to is None else Path(to)
        entries = sorted(set(_entries(self.root)) - {MARKER})
        write_json(self.root / MARKER, _marker_doc(self.kind, entries, True, self.details))
        check = self.check if to == self.out else functools.partial(check_target, kind=self.kind)
        check(to)  # again: the target may have changed while this run wrote
        old = replace_directory(self.root, to, temporary_name(to, self.kind.tool))
        self.committed = True
        _IN_USE.discard(self.root)
        if old is not None:
            try:
                delete_owned(old)  # ours: checked just before the swap
            except OSError:
                pass  # the new output is in place; the next run to this target deletes the rest (clean_leftovers)
        return to




@contextlib.contextmanager
def _naming(path: Path):
    """Re-raise an ``OSError`` as one naming ``path``, the output being written (a full disk says which one; the
    path is where the file will be, not its staging name)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
