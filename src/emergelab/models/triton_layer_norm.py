"""The per-member layer norm as one Triton kernel per direction, for float32 on CUDA.

Why: torch's CUDA layer norm gives each row a thread block; our rows are short (64 floats in the demo
model) and many (``E x B x T``, 127 000 at 64 seeds of the S = 16 linear map), so most of each block idles
and the three layer norms of the demo model took ~0.9 ms of a ~6 ms step on an H100, plus the per-member
affine map (``addcmul``) and its backward (a ``mul`` and a ``sum`` per gradient): benchmarks/README.md,
"GPU". Here a program normalises ``BLOCK_ROWS`` rows of one member at once and applies that member's
weight and bias in the same pass; the backward computes the input gradient and each program's partial
weight and bias gradients in one pass, and the partials are summed per member by ``torch.sum`` (no atomics:
a rerun gives the same bits, and a member's gradients depend on its own rows alone). Measured on an H200:
the graphed step of that run 5.35 -> 4.27 ms with it (benchmarks/README.md, "GPU", fix 4).

Same math as :meth:`models.layers.LayerNorm.reference` (``F.layer_norm`` then ``b + x * w``), its own
rounding. ``tests/test_gpu_kernels.py`` compares them on CUDA and, without a GPU, under Triton's
interpreter (``TRITON_INTERPRET=1``).

Triton is optional: without it (``import triton`` fails) :func:`applies` is False and the torch form runs.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import torch

MAX_WIDTH = 1024  # one row is held in registers: wider rows take the torch form


@functools.cache
def kernels() -> ModuleType | None:
    """``models/triton_layer_norm_kernels.py``, imported on first use; None without Triton."""
    try:
        from . import triton_layer_norm_kernels
    except ImportError:  # Triton is optional (CUDA installs of PyTorch usually bring it)
        return None
    return triton_layer_norm_kernels


def available() -> bool:
    """Whether Triton could be imported."""
    return kernels() is not None


def applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether :class:`TritonLayerNorm` takes ``x [E, ..., d]`` with weights ``w [E, d]``: Triton present,
    both float32 on one CUDA device, one member of ``x`` per row of ``w``, ``d <= MAX_WIDTH``."""
    return (x.is_cuda and kernels() is not None and x.dtype == torch.float32 and w.dtype == torch.float32
            and x.device == w.device and x.dim() >= 2 and x.shape[0] == w.shape[0]
            and x.shape[-1] == w.shape[-1] and x.shape[-1] <= MAX_WIDTH)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _tiles(R: int, D: int) -> tuple[int, int, int]:
    """(rows per program, padded width, warps): about 4096 elements a program."""
    block_d = _next_power_of_2(D)
    block_rows = max(1, min(4096 // block_d, _next_power_of_2(R)))
    return block_rows, block_d, 4 if block_rows * block_d >= 2048 else 2


class TritonLayerNorm(torch.autograd.Function):
    """x ``[E, ..., d]``, w, b ``[E, d]`` -> ``[E, ..., d]``: ``b + w * (x - mean) / sqrt(var + eps)`` per row,
    each member with its own ``w``, ``b`` (see the module doc)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
        E, D = w.shape
        R = x.numel() // (E * D)
        y = torch.empty_like(x)
        mean, rstd = x.new_empty(E, R), x.new_empty(E, R)
        block_rows, block_d, warps = _tiles(R, D)
        grid = (E, -(-R // block_rows))
        kernels().forward_kernel[grid](x, w, b, y, mean, rstd, R, D, eps, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
                                       num_warps=warps)
        ctx.save_for_backward(x, w, mean, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, w, mean, rstd = ctx.saved_tensors
        E, D = w.shape
        R = x.numel() // (E * D)
        dy = dy.contiguous()
        block_rows, block_d, warps = _tiles(R, D)
        blocks = -(-R // block_rows)
        dx = torch.empty_like(x)
        dw_partial, db_partial = x.new_empty(E, blocks, D), x.new_empty(E, blocks, D)
        kernels().backward_kernel[(E, blocks)](x, w, mean, rstd, dy, dx, dw_partial, db_partial, R, D, blocks,
                                               BLOCK_ROWS=block_rows, BLOCK_D=block_d, num_warps=warps)
        return dx, dw_partial.sum(1), db_partial.sum(1), None


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """:class:`TritonLayerNorm` (call only where :func:`applies`)."""
    return TritonLayerNorm.apply(x, w, b, eps)
