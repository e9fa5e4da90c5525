"""Nearest codebook entry for each row of z (vector quantization), fused: no N×K distance matrix ever exists.

Each program takes BLOCK_N rows of z and walks the codebook BLOCK_K codes at a time, keeping a running minimum and
its index: d(n, k) = ‖z_n‖² + ‖e_k‖² − 2 z_n·e_k, with ‖e‖² computed once per call by the launcher.

Choices, the same in the kernel, the torch reference and `numpy_ops.vq_nearest_numpy`:
- ties go to the lowest index (strict `<` across tiles, leftmost `tl.min` index inside a tile, first `argmin`);
- distances are clamped at 0 (cancellation can make them slightly negative) and are what `return_distance` returns;
- float16/bfloat16 inputs are cast to float32 before the dot. Their values are exact in float32 and even in tf32,
  so the products are exact; a bf16 dot would round the result tile instead, and flips argmins on offset data;
- fp32 dots use IEEE precision by default: tf32 flips argmins when the codes share a large common offset (about 3% of
  rows in one simulation). `precision="tf32"` is the explicit opt-in; CPU (and the reference) always compute IEEE;
- codes past K in the last tile get +inf, so they never win.
The Triton path takes D up to 512 (one tile of D padded to a power of two, at least 16 for the tensor-core dot);
wider codebooks and float64 go to the reference on every device.
"""
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the entry point falls back to the reference
    triton = None

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)
PRECISIONS = ("ieee", "tf32")
MAX_KERNEL_D = 512

if triton is not None:

    @triton.jit
    def _vq_nearest_kernel(
        z_ptr, e_ptr, e_sq_ptr, index_ptr, rows_ptr, dist_ptr, N, K, D,
        WRITE_DIST: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        row_mask = rows < N
        col_mask = cols < D
        # Columns past D load as 0, adding nothing to dots and norms; the z tile stays in registers for the whole walk.
        z_mask = row_mask[:, None] & col_mask[None, :]
        z = tl.load(z_ptr + rows[:, None] * D + cols[None, :], mask=z_mask, other=0.0).to(tl.float32)
        z_sq = tl.sum(z * z, axis=1)
        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_index = tl.zeros((BLOCK_N,), tl.int64)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            code_mask = codes < K
            e_mask = code_mask[:, None] & col_mask[None, :]
            e = tl.load(e_ptr + codes[:, None] * D + cols[None, :], mask=e_mask, other=0.0).to(tl.float32)
            e_sq = tl.load(e_sq_ptr + codes, mask=code_mask, other=0.0)
            dot = tl.dot(z, tl.trans(e), input_precision=PRECISION)
            dist = tl.maximum(z_sq[:, None] + e_sq[None, :] - 2.0 * dot, 0.0)
            dist = tl.where(code_mask[None, :], dist, float("inf"))
            tile_best, tile_index = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
            # strict: an equal distance in a later tile keeps the earlier, lower index
            better = tile_best < best
            best = tl.where(better, tile_best, best)
            best_index = tl.where(better, k0 + tile_index.to(tl.int64), best_index)
        tl.store(index_ptr + rows, best_index, mask=row_mask)
        if WRITE_DIST:
            tl.store(dist_ptr + rows, best, mask=row_mask)
        # The gather reads the codebook in its own dtype, so the returned rows are bit-exact copies.
        gathered = tl.load(e_ptr + best_index[:, None] * D + cols[None, :], mask=z_mask)
        tl.store(rows_ptr + rows[:, None] * D + cols[None, :], gathered, mask=z_mask)


def _check_inputs(z, codebook, precision) -> None:
    if not isinstance(z, torch.Tensor) or not isinstance(codebook, torch.Tensor):
        raise TypeError(f"z and codebook must be torch tensors, got {type(z).__name__} and {type(codebook).__name__}")
    if z.dtype not in REFERENCE_DTYPES:
        raise TypeError(f"z must be float16, bfloat16, float32 or float64, got {z.dtype}")
    if z.dtype != codebook.dtype or z.device != codebook.device:
        raise TypeError(
            f"z and codebook must share dtype and device, got {z.dtype} {z.device} and {codebook.dtype} "
            f"{codebook.device}"
        )
    if z.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"z must be N×D and codebook K×D (2-D), got shapes {tuple(z.shape)} and "
                         f"{tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z and codebook must share D, got z D={z.shape[1]} and codebook D={codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook must have at least one row, got K=0")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def vq_nearest_triton(z, codebook, return_distance=False, precision="ieee", *, block_n=None, block_k=None):
    """The Triton kernel itself; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    _check_inputs(z, codebook, precision)
    if triton is None:
        raise RuntimeError("Triton is not installed; use the reference (the entry point does so on its own)")
    if z.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for CPU ones), got {z.device}")
    if z.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the Triton kernel takes float16, bfloat16 or float32, got {z.dtype}")
    (n, d), k = z.shape, codebook.shape[0]
    if d > MAX_KERNEL_D:
        raise ValueError(f"the Triton kernel takes D <= {MAX_KERNEL_D} (one register tile), got D={d}")
    # tl.dot needs every tile dimension >= 16 on the GPU; D is padded to a power of two for tl.arange.
    block_d = max(16, triton.next_power_of_2(d))
    default_block = 64 if block_d <= 128 else 32  # keep the z and codebook tiles within registers for wide D
    block_n, block_k = block_n or default_block, block_k or default_block
    if min(block_n, block_k) < 16 or block_n & (block_n - 1) or block_k & (block_k - 1):
        raise ValueError(f"block_n and block_k must be powers of two >= 16, got {block_n} and {block_k}")
    z, codebook = z.contiguous(), codebook.contiguous()
    e_sq = codebook.float().pow(2).sum(1)
    index = torch.empty(n, dtype=torch.int64, device=z.device)
    rows = torch.empty_like(z)
    dist = torch.empty(n, dtype=torch.float32, device=z.device) if return_distance else None
    if n:
        _vq_nearest_kernel[(triton.cdiv(n, block_n),)](
            z, codebook, e_sq, index, rows, dist if return_distance else e_sq, n, k, d,
            WRITE_DIST=return_distance, PRECISION=precision, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
            num_warps=4 if block_d <= 128 else 8,
        )
    return (index, rows, dist) if return_distance else (index, rows)


def vq_nearest_reference(z, codebook, return_distance=False, precision="ieee", *, chunk_rows=4096):
    """Torch reference: the same formula, clamp and tie rule, `chunk_rows` rows at a time (memory O(chunk_rows·K)).

    Computes in float32 (float64 for float64) with torch's matmul, IEEE on CPU; `precision` is checked, not used.
    """
    _check_inputs(z, codebook, precision)
    compute = torch.float64 if z.dtype == torch.float64 else torch.float32
    e = codebook.to(compute)
    e_sq = e.pow(2).sum(1)
    index = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    dist = torch.empty(z.shape[0], dtype=compute, device=z.device)
    for start in range(0, z.shape[0], chunk_rows):
        x = z[start : start + chunk_rows].to(compute)
        d = (x.pow(2).sum(1, keepdim=True) + e_sq - 2 * (x @ e.T)).clamp_(min=0)
        # torch.argmin returns the first of equal minima: the lowest-index tie rule
        index[start : start + chunk_rows] = d.argmin(1)
        dist[start : start + chunk_rows] = d.gather(1, index[start : start + chunk_rows, None])[:, 0]
    rows = codebook[index]
    return (index, rows, dist) if return_distance else (index, rows)


def vq_nearest(z, codebook, return_distance=False, precision="ieee"):
    """Nearest row of `codebook` (K×D) for each row of `z` (N×D) in squared Euclidean distance; see the module doc.

    Returns (int64 indices, gathered codebook rows) and, when `return_distance`, the squared distances in float32
    (float64 for float64 input).
    """
    _check_inputs(z, codebook, precision)
    if z.is_cuda and triton is not None and z.dtype in KERNEL_DTYPES and z.shape[1] <= MAX_KERNEL_D:
        return vq_nearest_triton(z, codebook, return_distance, precision)
    return vq_nearest_reference(z, codebook, return_distance, precision)
