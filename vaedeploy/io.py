"""Files that users load: JSON and safetensors only (never pickle), every one written atomically.

A file is written to a temporary name in its own directory and renamed over the target, so a crash leaves either
the old file or the new one, never half of one. Errors name the file: an ``OSError`` keeps its errno and gets the
path as its filename (a full or read-only disk reads "cannot write PATH: No space left on device"), and a file that
cannot be parsed is a ``FileFormatError``.

Every file a user hands in is read through ``open_regular`` (a FIFO, a device or a directory is refused before it
can block or never end) and, for JSON, ``read_json``: bounded in size, UTF-8, any parse failure one sentence naming
the file. The caller then checks the document against the schema of its format (``bundle.check_manifest``,
``bench.output.check``) and names the field that is wrong.
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from tokenize import TokenError
from typing import Any, BinaryIO

import numpy as np

from .errors import FileFormatError, VaedeployError


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


MAX_JSON_BYTES = 64 << 20  # manifests, run configs and bench results are kilobytes: a file this big is none of them

_FILE_TYPES = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def show(value, limit: int = 80) -> str:
    """A value of a document as an error message shows it: its JSON, cut to ``limit`` characters."""
    try:
        text = json.dumps(value) if isinstance(value, (dict, list, str, bool, int, float, type(None))) else repr(value)
    except RecursionError:  # a value nested about as deep as the parser follows: its type says enough
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def open_regular(path: str | os.PathLike, what: str, error: type[VaedeployError] = FileFormatError) -> BinaryIO:
    """``path`` opened for reading in binary, refused with ``error`` when it is not a regular file: a FIFO would
    block the reader until someone writes to it and a device may never end. Opened without blocking and checked on
    the open descriptor, so what is checked is what is read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (expected {what})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: is {_FILE_TYPES.get(stat.S_IFMT(mode), 'not a regular file')}, not a file "
                    f"(expected {what})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int, error: type[VaedeployError] = FileFormatError
               ) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (read no further, so a file that grows is caught too)."""
    with open_regular(path, what, error) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{path}: larger than the {max_bytes:,} bytes read of {what}; expected a smaller file")
    return data


def read_json(path: str | os.PathLike, what: str = "a JSON file", max_bytes: int = MAX_JSON_BYTES,
              error: type[VaedeployError] = FileFormatError) -> Any:
    """The parsed document of a UTF-8 JSON file of at most ``max_bytes``; ``what`` says what the file should be,
    for the error messages, each a sentence of class ``error``. The caller checks the document against its schema.
    """
    data = read_bytes(path, what, max_bytes, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); expected {what}") \
            from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); expected {what}") \
            from None
    except RecursionError:
        raise error(f"{path}: JSON nested deeper than the parser follows; expected {what}") from None
    except ValueError as e:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise error(f"{path}: not JSON this reader accepts ({e}); expected {what}") from None


MAX_ARRAY_BYTES = 4 << 30  # the most one .npy array (a data file's images, a bundle's codebook) may declare: data sets
# this toolkit trains on are megabytes (MNIST's 70,000 images are 55 MB as bytes); a header or a zip member claiming
# more is refused before anything is allocated, whatever the file itself weighs
_MAX_NPY_HEADER = 1 << 16  # a .npy header is a few hundred bytes; numpy itself refuses one over 10,000
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npy(f: BinaryIO, where: str, available: int, error: type[VaedeployError] = FileFormatError) -> np.ndarray:
    """The array of the .npy stream ``f`` (a file, or a member of a .npz), checked before it is read: a plain
    numeric or boolean dtype (never an object array, which would be a pickle), at most ``MAX_ARRAY_BYTES``, and no
    more than the ``available`` bytes the stream holds after its start. Errors are sentences of class ``error``
    naming ``where``."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADERS:
            raise ValueError(f"format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
        shape, fortran, dtype = _NPY_HEADERS[version](f)
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, TokenError) as e:  # the header is a Python literal
        raise error(f"{where}: not a .npy array ({e})") from None
    if any(d < 0 for d in shape):
        raise error(f"{where}: not a .npy array (its header declares the shape {shape})")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise error(f"{where}: holds an array of dtype {dtype}; expected a numeric array (integers, floats or "
                    "booleans: an object array would be a pickle, which is never loaded)")
    size = math.prod(shape) * dtype.itemsize
    # an empty array's other dims count too: numpy refuses to allocate a shape whose nonzero dims overflow
    extent = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if extent > MAX_ARRAY_BYTES:
        raise error(f"{where}: declares a {'×'.join(map(str, shape))} {dtype} array "
                    f"{'of' if size else 'whose nonzero dims span'} {extent:,} bytes; expected at most "
                    f"{MAX_ARRAY_BYTES:,} bytes (vaedeploy.io.MAX_ARRAY_BYTES)")
    held = available - (f.tell() - start)
    if size > held:
        raise error(f"{where}: declares {size:,} bytes of array data but holds {held:,}; the file is truncated")
    array = np.empty(shape, dtype, order="F" if fortran else "C")
    buffer = memoryview(array.reshape(-1, order="A").view(np.uint8))  # the array's own memory: read in place
    filled = 0
    while filled < size and (n := f.readinto(buffer[filled:])):
        filled += n
    if filled < size:
        raise error(f"{where}: ended after {filled:,} of its {size:,} bytes of array data; the file is truncated")
    return array


def read_npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                    error: type[VaedeployError] = FileFormatError) -> np.ndarray:
    """One array of a .npz, its inflated size bounded by what the zip declares before anything is inflated (the
    zip reader never gives more than that size, so a member that inflates further is cut off and refused)."""
    if info.file_size > MAX_ARRAY_BYTES + _MAX_NPY_HEADER:
        raise error(f"{where}: inflates to {info.file_size:,} bytes ({info.compress_size:,} compressed); expected "
                    f"at most {MAX_ARRAY_BYTES:,} bytes of array (vaedeploy.io.MAX_ARRAY_BYTES)")
    with archive.open(info) as member:
        return read_npy(member, where, info.file_size, error)


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of torch tensors as safetensors, atomically."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata))


def load_tensors(path: str | os.PathLike) -> dict:
    """The tensors of a safetensors file; a damaged or foreign file is a ``FileFormatError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    open_regular(path, "a safetensors file").close()  # a directory, FIFO or device: a sentence, not a hang
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
