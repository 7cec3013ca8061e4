"""The Triton kernels of ``models/triton_layer_norm.py`` (imported only when a CUDA tensor needs them: importing
Triton costs start-up time a CPU worker should not pay). x, dy, y, dx ``[E, R, D]`` contiguous; w, b ``[E, D]``;
mean, rstd ``[E, R]``; dw, db partials ``[E, BLOCKS, D]`` (one row per program)."""

import triton
import triton.language as tl


@triton.jit
def forward_kernel(X, W, B, Y, MEAN, RSTD, R, D, eps,
                   BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    e = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok, col_ok = rows < R, cols < D
    ok = row_ok[:, None] & col_ok[None, :]
    flat = e.to(tl.int64) * R + rows  # [BLOCK_ROWS] row index into [E * R]
    offsets = flat[:, None] * D + cols[None, :]
    x = tl.load(X + offsets, mask=ok, other=0.0)
    mean = tl.sum(x, axis=1) / D
    centred = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / D + eps)
    w = tl.load(W + e * D + cols, mask=col_ok, other=0.0)
    b = tl.load(B + e * D + cols, mask=col_ok, other=0.0)
    tl.store(Y + offsets, centred * rstd[:, None] * w[None, :] + b[None, :], mask=ok)
    tl.store(MEAN + flat, mean, mask=row_ok)
    tl.store(RSTD + flat, rstd, mask=row_ok)


@triton.jit
def backward_kernel(X, W, MEAN, RSTD, DY, DX, DW, DB, R, D, BLOCKS,
                    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    e = tl.program_id(0)
    block = tl.program_id(1)
    rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok, col_ok = rows < R, cols < D
    ok = row_ok[:, None] & col_ok[None, :]
    flat = e.to(tl.int64) * R + rows
    offsets = flat[:, None] * D + cols[None, :]
    x = tl.load(X + offsets, mask=ok, other=0.0)
    dy = tl.load(DY + offsets, mask=ok, other=0.0)
    mean = tl.load(MEAN + flat, mask=row_ok, other=0.0)
    rstd = tl.load(RSTD + flat, mask=row_ok, other=0.0)
    w = tl.load(W + e * D + cols, mask=col_ok, other=0.0)
    xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
    wdy = w[None, :] * dy
    c1 = tl.sum(xhat * wdy, axis=1) / D
    c2 = tl.sum(wdy, axis=1) / D
    dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    tl.store(DX + offsets, dx, mask=ok)
    partial = (e.to(tl.int64) * BLOCKS + block) * D + cols  # this program's row of [E, BLOCKS, D]
    tl.store(DW + partial, tl.sum(dy * xhat, axis=0), mask=col_ok)
    tl.store(DB + partial, tl.sum(dy, axis=0), mask=col_ok)
