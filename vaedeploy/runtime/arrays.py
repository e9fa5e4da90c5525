"""The array adaptor: the few array operations the runtime needs, for numpy (ONNX Runtime on the CPU) and for
torch tensors on a device (the torch backend; later CUDA and TensorRT runners). A runtime is written once against
this interface, so no runtime code branches on the backend's array type.

``take`` checks what the caller gave and converts it to the backend's arrays; the function it returns turns a result
back into the caller's type (numpy in, numpy out; a tensor in, a tensor out on the tensor's device). What it takes is
what numpy users pass: any ndarray subclass (``np.load(..., mmap_mode="r")``), any float32 dtype object (a pickled
array's is not numpy's singleton) or byte order, float16 and float64 converted to float32 (the rule for every float
input), dense torch tensors; values within a ``Values`` range (the bundle's declared input range for images, any
finite float32 for latents). ``finite`` tells whether a result holds no NaN or Inf. ``take_out``
checks a caller's preallocated ``out=``. The batch buckets (``buckets.py``) need a few more: zero-filled static
buffers, device scalars written in place (``scalar``, ``fill``: what a CUDA graph reads on replay), inference mode,
and for IOBinding the address of a buffer. This module imports no torch: ``TorchArrays`` is only built by a backend
that runs on torch tensors, and a tensor can only reach ``take`` where torch was imported already.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys

import numpy as np

from ..errors import InputError
from ..kernels import philox, vq_nearest_numpy

_FLOAT32 = np.dtype(np.float32)
_UINT32 = np.dtype(np.uint32)
_FLOATS = (np.float16, np.float32, np.float64)  # become float32 without surprise; ints, bools, longdouble are refused
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _same(x):
    return x


def shape_text(shape) -> str:
    return "×".join(str(s) for s in shape) if len(shape) else "a 0-d scalar"


def is_tensor(x) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist where torch was imported; never import it here
    return torch is not None and isinstance(x, torch.Tensor)


class Values:
    """The values an array argument may hold: finite float32 in [low, high]; ``declared`` says where the range comes
    from (None: any finite value, the rule for latents).

    ``holds`` is one pass over the values on the hot path, where the finiteness test was: any finite value is one dot
    product (NaN and Inf propagate into x·x; a huge finite x can overflow it too, so only then is every value
    compared); a range around 0 (the [0, 1] of images) is one integer maximum of the float32 bits, since
    the bits of +0 … high, read as unsigned integers, are exactly the integers up to high's bits, and every negative
    number, NaN and Inf reads as a larger one. Where that quick test fails (or for other ranges) min and max decide,
    and a NaN makes both comparisons false. The maximum is found by ``argmax``, whose call costs less than a ufunc
    reduction's set-up. Measured on the 2-core test machine (CPU time), 64 values (one 8×8 image): dot 1.0 µs, view
    and argmax 1.4 µs, ``np.maximum.reduce`` 2.5 µs, min and max 4.5 µs; numpy offers no single pass for both bounds.
    """

    def __init__(self, low: float = -FLOAT32_MAX, high: float = FLOAT32_MAX, declared: str | None = None):
        # the bounds as float32 values, so that the bit test and the comparisons agree on every float32 input
        self.low, self.high = (float(np.float32(min(max(v, -FLOAT32_MAX), FLOAT32_MAX))) for v in (low, high))
        self.declared = declared
        self._bits = int(np.float32(self.high).view(np.uint32)) if declared and self.low <= 0 <= self.high else None

    def holds(self, x: np.ndarray) -> bool:
        if self.declared is None:
            if math.isfinite(np.vdot(x, x)):
                return True
        elif self._bits is not None:
            bits = x.view(_UINT32)
            if bits.item(bits.argmax()) <= self._bits:  # argmax, not a ufunc reduction: no reduction set-up
                return True
        return bool(self.low <= x.min() and x.max() <= self.high)

    def refusal(self, x, name: str) -> InputError:
        """The sentence for values ``holds`` refused (x numpy or a torch tensor)."""
        low, high = np.float32(x.min()), np.float32(x.max())  # printed as float32: 1.0000001 is not 1
        got = "NaN" if np.isnan(low) or np.isnan(high) else f"values in [{low!s}, {high!s}]"
        if self.declared is None:
            return InputError(f"{name}: expected finite values, got {got}")
        return InputError(f"{name}: expected finite values in [{self.low:g}, {self.high:g}] ({self.declared}), got "
                          f"{got}")


FINITE = Values()


class _Checked(Values):
    """Values a caller has checked already (``check_inputs=False``): no pass over them."""

    def holds(self, x) -> bool:
        return True


CHECKED = _Checked()


def dense(x, name: str) -> None:
    """Refuse a torch tensor without values to read: sparse layouts, the meta device."""
    if x.layout != sys.modules["torch"].strided or x.is_meta:
        what = "a meta tensor (no data)" if x.is_meta else f"a {str(x.layout).removeprefix('torch.')} tensor"
        raise InputError(f"{name}: expected a dense tensor with data, got {what}")


def _float32(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as float32 of numpy's native dtype: float32 as it is, other floats converted, anything else refused."""
    if x.dtype.type not in _FLOATS:
        raise InputError(f"{name}: expected float32 values (float16/float64 are converted), got {x.dtype}")
    if x.dtype == _FLOAT32:  # float32 in another dtype object (unpickled): the same values and layout
        return x
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, refused with the values
        return x.astype(np.float32)


def _int64(a: np.ndarray, name: str) -> np.ndarray:
    """Integer values as int64; unsigned ones of 2**63 and more would wrap to negative numbers, so they are refused."""
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and int(a.max()) >= 2**63:
        raise InputError(f"{name}: expected integers below 2**63, got {a.dtype} values up to {int(a.max())}")
    return a.astype(np.int64, copy=False)


def _rows_refusal(x, trailing: tuple, name: str) -> InputError:
    """The sentence for an x that is not N × trailing with N ≥ 1, which callers test inline (``x.shape[1:] !=
    trailing or not x.shape[0]``: the trailing axes first, as a 0-d x has no rows to count)."""
    if tuple(x.shape[1:]) != trailing:
        return InputError(f"{name}: expected shape N×{shape_text(trailing)}, got {shape_text(x.shape)}"
                          + (" (add a batch axis)" if tuple(x.shape) == trailing else ""))
    return InputError(f"{name}: expected at least one row (N ≥ 1), got an empty batch")


def _check_out(got_shape, got_dtype, shape: tuple, dtype, name: str) -> None:
    if tuple(got_shape) != tuple(shape) or got_dtype != dtype:
        def text(d):
            return str(d).removeprefix("torch.")

        raise InputError(f"{name}: expected {shape_text(shape)} {text(dtype)} for this result, got "
                         f"{shape_text(got_shape)} {text(got_dtype)}")


def _check_memory(shape: tuple, itemsize: int) -> None:
    """Refuse a result larger than the machine's memory before allocating it (an allocation that large may
    succeed on paper and then take the machine down as it is filled)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    needed = math.prod(shape) * itemsize
    if needed > memory:
        raise InputError(f"the result of {shape[0]} rows needs {needed / 2**30:.1f} GiB, more than this machine's "
                         f"{memory / 2**30:.1f} GiB; ask for fewer rows per call (offset= continues a stream)")


def _stream(seed, start) -> tuple:
    """One stream as ints (a bucketed call's 0-d device scalars are read at each call), or per-row int64 arrays."""
    if type(seed) is int or isinstance(seed, np.ndarray) and seed.ndim:
        return seed, start
    return int(seed), int(start)


class NumpyArrays:
    """numpy arrays on the CPU: what ONNX Runtime's CPU provider takes and gives."""

    device = "cpu"

    def take(self, x, trailing: tuple, name: str, values: Values = FINITE):
        """``x`` (N × trailing floats in ``values``, N ≥ 1) as a C-contiguous float32 array, and the way back.

        The hot path (a float32 numpy array) costs a few microseconds: an identity type and dtype check, a tuple
        compare, and one pass over the values (``Values.holds``).
        """
        if type(x) is np.ndarray and x.dtype is _FLOAT32:
            back = _same
        elif isinstance(x, np.ndarray):
            if isinstance(x, np.ma.MaskedArray):
                raise InputError(f"{name}: expected a plain array, got a masked array (its masked values are not "
                                 "data: fill them first, x.filled(value))")
            x, back = _float32(np.asarray(x), name), _same  # a memmap or other subclass, as the array it views
        elif is_tensor(x):
            dense(x, name)
            if not x.is_floating_point():
                raise InputError(f"{name}: expected a floating-point tensor (float32), got {x.dtype}")
            device, torch = x.device, sys.modules["torch"]
            x = x.detach().to("cpu", torch.float32).numpy()
            back = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        else:
            raise InputError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
        if x.shape[1:] != trailing or not x.shape[0]:
            raise _rows_refusal(x, trailing, name)
        if not values.holds(x):
            raise values.refusal(x, name)
        return (x if x.flags.c_contiguous else np.ascontiguousarray(x)), back

    def take_integers(self, x, name: str):
        """Integer ``x`` as an int64 numpy array, and the way back to the caller's type."""
        if is_tensor(x):
            dense(x, name)
            device, torch = x.device, sys.modules["torch"]
            return _int64(x.detach().cpu().numpy(), name), lambda a: torch.from_numpy(a).to(device)
        return _int64(np.asarray(x), name), _same

    def finite(self, a: np.ndarray) -> bool:
        """Whether a result holds no NaN or Inf: one dot product (0.9 µs at 64 values, 4 µs at 65,536 on the 2-core
        test machine), every value compared only when that overflows."""
        flat = a.ravel()
        return math.isfinite(flat.dot(flat)) or bool(np.isfinite(flat).all())

    def from_numpy(self, a: np.ndarray):
        return a

    def to_numpy(self, a) -> np.ndarray:
        return a

    def output(self, a):
        """A result made without a caller's input (``sample``): numpy on the CPU."""
        return a

    def empty(self, shape: tuple, like):
        _check_memory(shape, like.dtype.itemsize)
        return np.empty(shape, like.dtype)

    def new(self, shape: tuple, dtype: str):
        """An empty array of a graph's declared dtype (``float32``, ``int64``): an IOBinding's output buffer."""
        return np.empty(shape, np.dtype(dtype))

    def zeros(self, shape: tuple, like=None):
        return np.zeros(shape, _FLOAT32 if like is None else like.dtype)

    def scalar(self, value, dtype: str):
        """A 0-d array the caller writes with ``fill`` (for numpy, the kernels read it like a Python number)."""
        return np.array(value, np.dtype(dtype))

    def fill(self, a, value) -> None:
        a[...] = value

    def inference(self):
        return contextlib.nullcontext()

    def data_ptr(self, a) -> int:
        return a.ctypes.data

    def take_out(self, out, shape: tuple, like, name: str = "out"):
        """The caller's ``out=`` if it is a numpy array of exactly the result's shape and dtype, else an InputError."""
        if not isinstance(out, np.ndarray):
            raise InputError(f"{name}: expected a numpy array (the results of this runtime are numpy), got "
                             f"{type(out).__name__}")
        _check_out(out.shape, out.dtype, shape, like.dtype, name)
        return out

    def cat(self, arrays: list, axis: int):
        return np.concatenate(arrays, axis)

    def columns(self, a, start: int, stop: int):
        return np.ascontiguousarray(a[:, start:stop])

    def channels_first(self, a):
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))

    def channels_last(self, a):
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))

    def sigmoid(self, a):
        return np.exp(-np.logaddexp(np.float32(0), -a))

    def exp(self, a):
        return np.exp(a)

    # seed and start come from ``Noise.stream``, which checked them once for the whole call: the Philox streams are
    # called directly, not through the kernels' public functions, which check again for their own callers
    def normal(self, shape: tuple, seed, start):
        n = math.prod(shape)  # not np.prod, which makes an array of the tuple first (4 µs)
        return philox.normals(*_stream(seed, start), n).reshape(shape) if n else np.zeros(shape, np.float32)

    def reparameterize(self, mean, logvar, seed, start):
        if not mean.size:
            return np.zeros(mean.shape, np.float32)
        z, _ = philox.reparameterize(*_stream(seed, start), np.ascontiguousarray(mean, np.float32).ravel(),
                                     np.ascontiguousarray(logvar, np.float32).ravel())
        return z.reshape(mean.shape)

    def nearest(self, rows, codebook):
        return vq_nearest_numpy(rows, codebook)


class TorchArrays:
    """torch tensors on one device: what the torch backend, the kernels on CUDA and ONNX Runtime's IOBinding on CUDA
    take and give."""

    def __init__(self, device: str):
        import torch

        from .. import kernels

        self.torch, self.kernels, self.device = torch, kernels, torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # the current device, named as tensors name it
            self.device = torch.device("cuda", torch.cuda.current_device())

    def take(self, x, trailing: tuple, name: str, values: Values = FINITE):
        torch = self.torch
        if isinstance(x, np.ndarray):
            x, _ = NumpyArrays().take(x, trailing, name, values)
            return torch.from_numpy(x).to(self.device), self.to_numpy
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
        dense(x, name)
        if not x.is_floating_point():
            raise InputError(f"{name}: expected a floating-point tensor (float32), got {x.dtype}")
        if x.shape[1:] != trailing or not x.shape[0]:
            raise _rows_refusal(x, trailing, name)
        # A CUDA tensor's values are not read by the host: that would synchronize every call. NaN or Inf in one come
        # back as NaN in the result, as from PyTorch's own modules; numpy arrays and CPU tensors are checked.
        if x.device.type == "cpu":
            low, high = torch.aminmax(x.detach().float())  # NaN in x makes both NaN, and both comparisons false
            if not (values.low <= low <= values.high and values.low <= high <= values.high):
                raise values.refusal(x, name)
        device = x.device
        return x.detach().to(self.device, torch.float32), lambda t: t.to(device)

    def take_integers(self, x, name: str):
        if isinstance(x, self.torch.Tensor):
            dense(x, name)
            device = x.device
            return _int64(x.detach().cpu().numpy(), name), lambda t: t.to(device)
        return _int64(np.asarray(x), name), self.to_numpy

    def from_numpy(self, a: np.ndarray):
        return self.torch.from_numpy(a).to(self.device)

    def to_numpy(self, t) -> np.ndarray:
        return t.cpu().numpy()

    def output(self, t):
        """A result made without a caller's input (``sample``): numpy on the CPU, a tensor on an accelerator."""
        return self.to_numpy(t) if self.device.type == "cpu" else t

    def finite(self, t) -> bool:
        """Whether a result holds no NaN or Inf; always True on an accelerator, whose values the host does not read
        (that would synchronize every call)."""
        return t.device.type != "cpu" or bool(self.torch.isfinite(t).all())

    def empty(self, shape: tuple, like):
        if self.device.type == "cpu":
            _check_memory(shape, like.element_size())
        return self.torch.empty(shape, dtype=like.dtype, device=self.device)

    def new(self, shape: tuple, dtype: str):
        return self.torch.empty(shape, dtype=getattr(self.torch, dtype), device=self.device)

    def zeros(self, shape: tuple, like=None):
        return self.torch.zeros(shape, dtype=self.torch.float32 if like is None else like.dtype, device=self.device)

    def scalar(self, value, dtype: str):
        """A 0-d tensor on the device: the Triton kernels load it from memory, so a graph replay reads its value."""
        return self.torch.tensor(value, dtype=getattr(self.torch, dtype), device=self.device)

    def fill(self, t, value) -> None:
        t.fill_(value)  # on CUDA a kernel with the value as its argument: no host-to-device copy, no synchronization

    def inference(self):
        return self.torch.inference_mode()

    def data_ptr(self, t) -> int:
        return t.data_ptr()

    def take_out(self, out, shape: tuple, like, name: str = "out"):
        """The caller's ``out=`` if it is a tensor on this runtime's device of exactly the result's shape and dtype."""
        if not isinstance(out, self.torch.Tensor) or out.device != self.device:
            where = type(out).__name__ if not isinstance(out, self.torch.Tensor) else f"a tensor on {out.device}"
            raise InputError(f"{name}: expected a tensor on {self.device}, got {where}")
        _check_out(out.shape, out.dtype, shape, like.dtype, name)
        return out

    def cat(self, tensors: list, axis: int):
        return self.torch.cat(tensors, axis)

    def columns(self, t, start: int, stop: int):
        return t[:, start:stop].contiguous()

    def channels_first(self, t):
        return t.permute(0, 3, 1, 2).contiguous()

    def channels_last(self, t):
        return t.permute(0, 2, 3, 1).contiguous()

    def sigmoid(self, t):
        return self.torch.sigmoid(t)

    def exp(self, t):
        return self.torch.exp(t)

    def normal(self, shape: tuple, seed, offset):
        return self.kernels.standard_normal(shape, seed, offset, device=self.device)

    def reparameterize(self, mean, logvar, seed, offset):
        return self.kernels.reparameterize(mean, logvar, seed, offset)

    def nearest(self, rows, codebook):
        return self.kernels.vq_nearest(rows.contiguous(), codebook)
