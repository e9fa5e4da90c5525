"""Reparameterized sampling z = mean + exp(logvar / 2) · eps in one pass, the noise made inside the kernel.

Noise convention, shared by the Triton kernel, the torch reference and `numpy_ops`: element i of the row-major
flattened tensor gets eps_i = `tl.randn(seed, offset + i)` (Philox4x32-10, 64-bit counter offset + i, key = seed).
Drawing n elements therefore uses counters [offset, offset + n); the next independent draw starts at offset + n.
seed and offset are Python ints or int64 one-element tensors on the data's device: a CUDA graph that captured the call
reads them from memory on replay, so updating the tensors in place draws fresh noise without re-capture.

logvar is clamped to [-30, 20] before the exp (std in [3e-7, 2.2e4], no overflow in fp16/bf16 outputs). Math is in
float32 for float16, bfloat16 and float32 inputs; z comes back in the input dtype, eps (when asked) in float32.
Gradients: d mean = dz; d logvar = dz · eps · std / 2 where -30 <= logvar <= 20 and 0 where the clamp is active
(torch.clamp's rule, so the reference and the kernel agree). The backward kernel regenerates eps from the seed and
offset instead of saving it: one tensor less to keep alive between forward and backward.

Per-row streams: seed and offset may also be numpy integer arrays with one value per row (row r draws counters
offset[r] + j under key seed[r], as `numpy_ops` defines them); those go to the reference on every device, the
kernels taking one stream per launch.

Dispatch: CUDA tensors go to Triton; CPU tensors (and float64, and installs without Triton) go to the torch
reference, which draws the same noise with the numpy Philox in `philox.py`.
"""
import operator
import os

import numpy as np
import torch

from .limits import LOGVAR_MAX, LOGVAR_MIN, STREAM_LIMIT
from .numpy_ops import standard_normal_numpy

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the entry points fall back to the reference
    triton = None

BLOCK_SIZE = 1024
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)

if triton is not None:
    _LV_MIN = tl.constexpr(LOGVAR_MIN)
    _LV_MAX = tl.constexpr(LOGVAR_MAX)

    @triton.jit
    def _noise(seed, offset, idx, SEED_IS_PTR: tl.constexpr, OFFSET_IS_PTR: tl.constexpr):
        # Loaded from device memory when given as tensors: what a CUDA graph replay re-reads.
        if SEED_IS_PTR:
            seed = tl.load(seed)
        if OFFSET_IS_PTR:
            offset = tl.load(offset)
        return tl.randn(seed, offset.to(tl.int64) + idx)

    # seed and offset change every call; specializing on their value (==1, divisible by 16) would only recompile.
    @triton.jit(do_not_specialize=["seed", "offset"])
    def _reparameterize_fwd_kernel(
        mean_ptr, logvar_ptr, z_ptr, eps_ptr, seed, offset, n,
        SEED_IS_PTR: tl.constexpr, OFFSET_IS_PTR: tl.constexpr, WRITE_EPS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # int64 from the program id on: tensors past 2**31 elements must not wrap, nor their Philox counters.
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n
        mean = tl.load(mean_ptr + idx, mask=mask).to(tl.float32)
        logvar = tl.load(logvar_ptr + idx, mask=mask).to(tl.float32)
        eps = _noise(seed, offset, idx, SEED_IS_PTR, OFFSET_IS_PTR)
        std = tl.exp(0.5 * tl.clamp(logvar, _LV_MIN, _LV_MAX))
        tl.store(z_ptr + idx, (mean + std * eps).to(z_ptr.dtype.element_ty), mask=mask)
        if WRITE_EPS:
            tl.store(eps_ptr + idx, eps, mask=mask)

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _reparameterize_bwd_kernel(
        dz_ptr, logvar_ptr, dlogvar_ptr, seed, offset, n,
        SEED_IS_PTR: tl.constexpr, OFFSET_IS_PTR: tl.constexpr, BLOCK: tl.constexpr,
    ):
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < n
        dz = tl.load(dz_ptr + idx, mask=mask).to(tl.float32)
        logvar = tl.load(logvar_ptr + idx, mask=mask).to(tl.float32)
        eps = _noise(seed, offset, idx, SEED_IS_PTR, OFFSET_IS_PTR)
        std = tl.exp(0.5 * tl.clamp(logvar, _LV_MIN, _LV_MAX))
        inside = (logvar >= _LV_MIN) & (logvar <= _LV_MAX)
        dlogvar = tl.where(inside, 0.5 * dz * eps * std, 0.0)
        tl.store(dlogvar_ptr + idx, dlogvar.to(dlogvar_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["seed", "offset"])
    def _standard_normal_kernel(
        out_ptr, seed, offset, n, SEED_IS_PTR: tl.constexpr, OFFSET_IS_PTR: tl.constexpr, BLOCK: tl.constexpr
    ):
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        eps = _noise(seed, offset, idx, SEED_IS_PTR, OFFSET_IS_PTR)
        tl.store(out_ptr + idx, eps.to(out_ptr.dtype.element_ty), mask=idx < n)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks shared by every path, so bad input fails the same way on CPU and GPU.


def _check_moments(mean, logvar) -> None:
    if not isinstance(mean, torch.Tensor) or not isinstance(logvar, torch.Tensor):
        raise TypeError(f"mean and logvar must be torch tensors, got {type(mean).__name__} and {type(logvar).__name__}")
    if mean.dtype not in REFERENCE_DTYPES:
        raise TypeError(f"mean must be float16, bfloat16, float32 or float64, got {mean.dtype}")
    if mean.shape != logvar.shape or mean.dtype != logvar.dtype or mean.device != logvar.device:
        raise ValueError(
            "mean and logvar must have the same shape, dtype and device, got "
            f"{tuple(mean.shape)} {mean.dtype} {mean.device} and {tuple(logvar.shape)} {logvar.dtype} {logvar.device}"
        )


def _check_int(name: str, value, n: int) -> None:
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64 or value.numel() != 1:
            raise TypeError(f"{name} tensor must hold one int64, got {value.dtype} with {value.numel()} elements")
        return
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an int64 tensor, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or an int64 tensor, got {type(value).__name__}") from None
    # Both are loaded as int64 in the kernel and every counter offset + i must stay an int64.
    limit = STREAM_LIMIT - n if name == "offset" else STREAM_LIMIT - 1
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in [0, {limit}], got {value}")


def _as_int(value) -> int:
    return int(value.item()) if isinstance(value, torch.Tensor) else operator.index(value)


def _per_row(*values) -> bool:
    """Whether a seed or offset is given per row (a numpy integer array), which the reference alone takes."""
    return any(isinstance(v, np.ndarray) and v.ndim == 1 for v in values)


def _shape(shape) -> tuple:
    return (operator.index(shape),) if not isinstance(shape, (tuple, list, torch.Size)) else tuple(shape)


# ----------------------------------------------------------------------------------------------------------------
# Triton launchers.


def _kernel_args(name: str, value, device: torch.device):
    """A seed or offset as the kernel takes it: (argument, whether it is a pointer to load from)."""
    if isinstance(value, torch.Tensor):
        if value.device != device:
            raise ValueError(f"{name} tensor must be on the data's device {device}, got {value.device}")
        return value, True
    return operator.index(value), False


def _check_triton(device: torch.device, dtype: torch.dtype, block_size: int) -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed; use the reference (the entry points do so on their own)")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for CPU ones), got {device}")
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"the Triton kernel takes float16, bfloat16 or float32, got {dtype}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")


def _launch_forward(mean, logvar, seed, offset, write_eps, block_size):
    n = mean.numel()
    z = torch.empty_like(mean)
    eps = torch.empty(mean.shape, dtype=torch.float32, device=mean.device) if write_eps else None
    if n:
        seed_arg, seed_ptr = _kernel_args("seed", seed, mean.device)
        offset_arg, offset_ptr = _kernel_args("offset", offset, mean.device)
        _reparameterize_fwd_kernel[(triton.cdiv(n, block_size),)](
            mean, logvar, z, eps if write_eps else z, seed_arg, offset_arg, n,
            SEED_IS_PTR=seed_ptr, OFFSET_IS_PTR=offset_ptr, WRITE_EPS=write_eps, BLOCK=block_size,
        )
    return z, eps


class _Reparameterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean, logvar, seed, offset, return_eps, block_size):
        z, eps = _launch_forward(mean, logvar, seed, offset, return_eps, block_size)
        ctx.save_for_backward(logvar)
        # A caller may advance seed/offset tensors in place right after the forward; the backward must regenerate the
        # noise of the forward, so it keeps its own copy (a one-element device copy, fine inside a CUDA graph).
        if ctx.needs_input_grad[1]:
            ctx.seed = seed.clone() if isinstance(seed, torch.Tensor) else seed
            ctx.offset = offset.clone() if isinstance(offset, torch.Tensor) else offset
        ctx.block_size = block_size
        if eps is not None:
            ctx.mark_non_differentiable(eps)
        return z, eps

    @staticmethod
    def backward(ctx, dz, _deps):
        if not ctx.needs_input_grad[1]:
            return dz, None, None, None, None, None
        (logvar,) = ctx.saved_tensors
        dz = dz.contiguous()
        dlogvar = torch.empty_like(logvar)
        n = logvar.numel()
        if n:
            seed_arg, seed_ptr = _kernel_args("seed", ctx.seed, logvar.device)
            offset_arg, offset_ptr = _kernel_args("offset", ctx.offset, logvar.device)
            _reparameterize_bwd_kernel[(triton.cdiv(n, ctx.block_size),)](
                dz, logvar, dlogvar, seed_arg, offset_arg, n,
                SEED_IS_PTR=seed_ptr, OFFSET_IS_PTR=offset_ptr, BLOCK=ctx.block_size,
            )
        return dz, dlogvar, None, None, None, None


def reparameterize_triton(mean, logvar, seed, offset=0, return_eps=False, *, block_size=BLOCK_SIZE):
    """The Triton kernel itself, differentiable; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    _check_moments(mean, logvar)
    _check_int("seed", seed, mean.numel())
    _check_int("offset", offset, mean.numel())
    _check_triton(mean.device, mean.dtype, block_size)
    z, eps = _Reparameterize.apply(mean.contiguous(), logvar.contiguous(), seed, offset, return_eps, block_size)
    return (z, eps) if return_eps else z


def standard_normal_triton(shape, seed, offset=0, *, device="cuda", dtype=torch.float32, block_size=BLOCK_SIZE):
    """Standard normals from the Triton kernel; element i (row-major) is `tl.randn(seed, offset + i)`."""
    shape, device = _shape(shape), torch.device(device)
    out = torch.empty(shape, dtype=dtype, device=device)
    _check_int("seed", seed, out.numel())
    _check_int("offset", offset, out.numel())
    _check_triton(out.device, dtype, block_size)
    if out.numel():
        seed_arg, seed_ptr = _kernel_args("seed", seed, out.device)
        offset_arg, offset_ptr = _kernel_args("offset", offset, out.device)
        _standard_normal_kernel[(triton.cdiv(out.numel(), block_size),)](
            out, seed_arg, offset_arg, out.numel(), SEED_IS_PTR=seed_ptr, OFFSET_IS_PTR=offset_ptr, BLOCK=block_size
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Torch reference: the oracle of the tests and what CPU users run. The noise comes from the numpy Philox.


def standard_normal_reference(shape, seed, offset=0, *, device="cpu", dtype=torch.float32):
    shape = _shape(shape)
    if not _per_row(seed, offset):  # per-row arrays are checked by the numpy op
        n = int(torch.Size(shape).numel())
        _check_int("seed", seed, n)
        _check_int("offset", offset, n)
        seed, offset = _as_int(seed), _as_int(offset)
    eps = torch.from_numpy(standard_normal_numpy(shape, seed, offset))
    return eps.to(device=device, dtype=dtype)


def reparameterize_reference(mean, logvar, seed, offset=0, return_eps=False):
    _check_moments(mean, logvar)
    eps = standard_normal_reference(mean.shape, seed, offset, device=mean.device)
    compute = torch.float64 if mean.dtype == torch.float64 else torch.float32
    std = torch.exp(0.5 * logvar.to(compute).clamp(LOGVAR_MIN, LOGVAR_MAX))
    z = (mean.to(compute) + std * eps.to(compute)).to(mean.dtype)
    return (z, eps) if return_eps else z


# ----------------------------------------------------------------------------------------------------------------
# Entry points.


def reparameterize(mean, logvar, seed, offset=0, return_eps=False):
    """z = mean + exp(clamp(logvar, -30, 20) / 2) · eps, eps_i = `tl.randn(seed, offset + i)`; see the module doc.

    Returns z (input dtype), or (z, eps) with eps in float32 when `return_eps`. Differentiable in mean and logvar.
    """
    _check_moments(mean, logvar)
    if mean.is_cuda and triton is not None and mean.dtype in KERNEL_DTYPES and not _per_row(seed, offset):
        return reparameterize_triton(mean, logvar, seed, offset, return_eps)
    return reparameterize_reference(mean, logvar, seed, offset, return_eps)


def standard_normal(shape, seed, offset=0, *, device="cpu", dtype=torch.float32):
    """Standard normals of `shape`, element i (row-major) = `tl.randn(seed, offset + i)`: reparameterize's noise."""
    device = torch.device(device)
    if device.type == "cuda" and triton is not None and dtype in KERNEL_DTYPES and not _per_row(seed, offset):
        return standard_normal_triton(shape, seed, offset, device=device, dtype=dtype)
    return standard_normal_reference(shape, seed, offset, device=device, dtype=dtype)
