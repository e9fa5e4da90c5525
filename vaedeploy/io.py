"""Files that users load: JSON and safetensors only (never pickle), every one written atomically.

A file is written to a temporary name in its own directory and renamed over the target, so a crash leaves either
the old file or the new one, never half of one. Errors name the file: an ``OSError`` keeps its errno and gets the
path as its filename (a full or read-only disk reads "cannot write PATH: No space left on device"), and a file that
cannot be parsed is a ``FileFormatError``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import FileFormatError


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp creates 0600; the file should look like any other the user writes
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        message = f"cannot write {path}: {e.strerror or e}"
        raise (type(e)(e.errno, message) if e.errno is not None else OSError(message)) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "a JSON file") -> Any:
    """The parsed document; ``what`` says what the file should be, for the error messages."""
    path = Path(path)
    if path.is_dir():
        raise FileFormatError(f"{path}: is a directory (expected {what})")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (expected {what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FileFormatError(f"{path}: not valid JSON (expected {what}; {type(e).__name__}: {e})") from None


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of torch tensors as safetensors, atomically."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata))


def load_tensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file; a damaged or foreign file is a ``FileFormatError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected a safetensors file)")
    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as e:
        raise FileFormatError(f"{path}: not a readable safetensors file ({e}); the file is damaged or was not "
                              "written by vaedeploy") from None


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux's renameat2(RENAME_EXCHANGE); False where the OS or file system
    lacks it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_cwd = -100
    if libc.renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: not supported here
        return False
    raise OSError(errno, f"cannot swap {a} and {b}: {os.strerror(errno)}")


def replace_directory(new: Path, target: Path, backup: Path) -> Path | None:
    """Put the directory ``new`` at ``target``; return where the directory that was at ``target`` now is (None if
    there was none). The caller deletes it once it no longer needs it.

    A reader of ``target`` sees the old directory or the new one, never none, where the OS swaps two paths in one
    step (Linux's RENAME_EXCHANGE). Elsewhere the old directory is first renamed to ``backup`` and put back if the
    new one cannot take its place, so it is never lost, but for that moment ``target`` is missing.
    """
    if not target.exists():
        os.rename(new, target)
        return None
    if _exchange(new, target):
        return new
    os.rename(target, backup)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(backup, target)
        raise
    return backup
