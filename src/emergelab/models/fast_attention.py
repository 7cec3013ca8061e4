"""The CPU training step's causal attention as one ``autograd.Function``: fewer, cheaper passes than the
reference (``transformer.Attention._attend_observed`` under autograd), same math, its own rounding.

Why: at the paper's sizes (T = 15-31, head_dim D = 8) attention is a third of a CPU training step and
almost none of it is arithmetic (``benchmarks/README.md``, "Where a step's time goes"). Measured at
E * B * H = 2048 problems of 31 x 31 x 8, 1 thread, the reference spends its time in

* GEMM layouts: MKL runs a ``[T, D] @ [D, T]`` or ``[D, T] @ [T, T]`` product (output rows of T) about
  twice as fast as ``[T, T] @ [T, D]`` (rows of 8), and the reference's ``q @ k^T`` on a contiguous k^T
  is 4x slower than on k^T as a transposed view. Here every product is the fast form: z, dq, dk and dv
  come out transposed (``[D, T]``) and one copy per direction restores the ``[E, B, T, 3, H, D]`` layout;
* the softmax from elementwise ops and row reductions over 31 elements (``row_softmax``: 10 passes);
  here ``torch.softmax`` forward (one vectorised pass per row; its bits do not depend on the batch or the
  threads, checked in ``tests/test_fast_attention.py``) and its native backward run at one thread
  (at two threads its CPU kernel splits rows differently and a row's bits change);
* ``masked_fill`` (one broadcast pass, 10x an add): here the causal mask (and the attention bias) is one
  additive ``[E, H, T, T]`` tensor.

The rounding differs from the reference's (other GEMM kernels, the native softmax): outputs and
gradients agree to float tolerance (``tests/test_fast_attention.py``), and a seed's bits do not depend
on E, the group order or the threads (``tests/test_determinism.py``). Only for what training needs: no
hooks on q, k, v, scores, pattern or z, and an attention bias without gradient; ``Attention`` uses the
reference path otherwise (and under ``observing()``, so probes and caches see the reference).

Where this machine has the C kernels (``models/native.py``) and the heads and sequences fit them (head size
8-32 in steps of 8, T <= 128, no bias), both the training step (:class:`NativeCausalAttention`) and the
no-gradient observed form (:func:`observed_attention` -> ``_observed_native``) go one step further: one
fused kernel per direction, each (sequence, head) problem computed whole; the torch forms above stay as the
fallback and the reference they are tested against.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import native
from .threads import torch_threads


def padded_length(T: int) -> int:
    """Key length the scores are padded to: a multiple of 16 floats (one AVX-512 vector). The CPU
    softmax and row reductions run their rows in whole vectors; a row of 15 or 31 leaves a scalar tail
    that costs more than the rest (measured: softmax over [1024, 15, 15] 4.0 ms, over [2048, 16, 16] 0.7 ms)."""
    return -(-T // 16) * 16


def _padded_qkv(qkv: torch.Tensor, Tp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[3, E*B*H, Tp, D]`` with zero key rows ``T..Tp-1``, and ``rows``, its ``[3, E, B, H, T, D]``
    view that q, k, v are copied into (from qkv ``[E, B, T, 3, H, D]``, by the caller)."""
    E, B, T, _, H, D = qkv.shape
    x = qkv.new_empty(3, E * B * H, Tp, D)
    x[:, :, T:].zero_()
    return x, x.view(3, E, B, H, Tp, D)[:, :, :, :, :T]


def _scores(x: torch.Tensor, mask_bias: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``q k^T / sqrt(D) + mask_bias`` ``[N, T, Tp]`` from the packed ``x`` (``shape``: qkv's)."""
    E, B, T, _, H, D = shape
    Tp = x.shape[2]
    s = torch.bmm(x[0, :, :T], x[1].transpose(1, 2))  # [N, T, Tp]
    s5 = s.view(E, B, H, T, Tp)
    s5.div_(math.sqrt(D))
    s5.add_(mask_bias[:, None] if mask_bias.dim() == 4 else mask_bias)
    return s


def _z(x: torch.Tensor, p: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``p v`` as z ``[E, B, T, H, D]``, computed transposed (``[N, D, T]``, the fast GEMM layout)."""
    E, B, T, _, H, D = shape
    zt = torch.bmm(x[2].transpose(1, 2), p.transpose(1, 2))  # z^T [N, D, T]
    return zt.view(E, B, H, D, T).permute(0, 1, 4, 2, 3).contiguous()


class CausalAttention(torch.autograd.Function):
    """z = softmax(q k^T / sqrt(D) + mask_bias) v per member, sequence and head.

    qkv ``[E, B, T, 3, H, D]``, mask_bias ``[E, H, T, Tp]`` or ``[T, Tp]`` (``Tp = padded_length(T)``; -inf
    above the diagonal and in the padding, plus any attention bias; no gradient) -> z ``[E, B, T, H, D]``.
    k and v get ``Tp - T`` zero rows, so the scores are ``[T, Tp]`` with masked (zero-probability) padding
    columns; padding adds only exact zeros to the products."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x, rows = _padded_qkv(qkv, mask_bias.shape[-1])
        rows.copy_(qkv.permute(3, 0, 1, 4, 2, 5))
        s = _scores(x, mask_bias, qkv.shape)
        p = torch.softmax(s, -1)
        ctx.save_for_backward(x, p)
        return _z(x, p, qkv.shape)

    @staticmethod
    def backward(ctx: Any, dz: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, p = ctx.saved_tensors
        E, B, T, H, D = dz.shape
        N, Tp = x.shape[1], x.shape[2]
        q, k, v = x[0, :, :T], x[1], x[2]
        g = dz.permute(0, 1, 3, 2, 4).reshape(N, T, D)
        dp = torch.bmm(g, v.transpose(1, 2))  # [N, T, Tp]
        dkv = dz.new_empty(2, N, D, Tp)  # dk^T, dv^T (padding columns dropped below)
        torch.bmm(g.transpose(1, 2), p, out=dkv[1])
        with torch_threads(1):  # the native softmax backward's rows are thread-independent only at 1
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
        ds.div_(math.sqrt(D))
        dqt = torch.bmm(k.transpose(1, 2), ds.transpose(1, 2))  # [N, D, T]
        torch.bmm(q.transpose(1, 2), ds, out=dkv[0])
        dqkv = dz.new_empty(E, B, T, 3, H, D)
        dqkv[:, :, :, 0].copy_(dqt.view(E, B, H, D, T).permute(0, 1, 4, 2, 3))
        dqkv[:, :, :, 1:].copy_(dkv.view(2, E, B, H, D, Tp)[..., :T].permute(1, 2, 5, 0, 3, 4))
        return dqkv, None


def observed_attention(qkv: torch.Tensor, bias: torch.Tensor | None, hook: Any, hooked: set[str]) -> torch.Tensor:
    """The materialised attention's no-gradient form: every hook point of the reference
    (``transformer.Attention._attend_observed``) fires with the same shape and meaning, and what a hook
    returns or changes in place is what the attention goes on with; but the products and the softmax are the
    training step's (module doc), ~2.4x faster than the reference at a probe's size (benchmarks/README.md).
    For gradients off only (``Attention`` chooses it so).

    qkv ``[E, B, T, 3, H, D]``; bias ``[E, H, T, T]``, ``[H, T, T]`` or None; ``hook(name, tensor)`` runs
    hook point ``hook_{name}`` and returns its output; ``hooked``: the names whose hook points have hooks
    (the others are formed only as the computation needs them). -> z ``[E, B, T, H, D]``. Hooks see ``q``,
    ``k``, ``v`` (views of qkv, as in the reference), ``z`` ``[E, B, T, H, D]`` and ``attn_scores``, ``pattern``
    ``[E, B, H, T, T]`` (contiguous)."""
    E, B, T, _, H, D = qkv.shape
    if native_applies(qkv, bias):
        return _observed_native(qkv, hook, hooked)
    mask_bias = causal_mask_bias(E, H, T, bias, qkv.device, qkv.dtype)
    Tp = mask_bias.shape[-1]
    x, rows = _padded_qkv(qkv, Tp)
    if hooked & {"q", "k", "v"}:
        for i, name in enumerate(("q", "k", "v")):
            rows[i].copy_(hook(name, qkv[:, :, :, i]).permute(0, 1, 3, 2, 4))
    else:
        rows.copy_(qkv.permute(3, 0, 1, 4, 2, 5))
    s = _scores(x, mask_bias, qkv.shape)
    if "attn_scores" in hooked:
        s5 = s.view(E, B, H, T, Tp)
        s5[..., :T] = hook("attn_scores", s5[..., :T].contiguous())
    p = torch.softmax(s, -1)  # the padding columns (-inf) come out exact zeros
    if "pattern" in hooked:
        p5 = p.view(E, B, H, T, Tp)
        p5[..., :T] = hook("pattern", p5[..., :T].contiguous())
    return hook("z", _z(x, p, qkv.shape))


def _observed_native(qkv: torch.Tensor, hook: Any, hooked: set[str]) -> torch.Tensor:
    """:func:`observed_attention` through the C kernel (no attention bias): the fused forward when no hook
    wants q, k, v or the scores, else its split steps (q k^T; softmax and p v; p v alone after a pattern
    hook) run on what the hooks left. The steps are the fused forward's own code, so a hook that returns
    (or leaves) the values it was given changes no bit of the output, and the path taken never depends on
    which hooks are attached (docs/architecture.md). A hook's in-place edit is seen through torch's version
    counter (any in-place torch op on the tensor or a view of it)."""
    E, B, T, _, H, D = qkv.shape
    lib = native.kernels()
    dtype = qkv.dtype

    def as_kernel_input(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        # what a hook returned, in the layout the kernel reads (a wrong size fails here, as in the reference)
        return t.to(dtype).reshape(shape).contiguous()

    if hooked & {"q", "k", "v"}:
        qkv = torch.stack([as_kernel_input(hook(name, qkv[:, :, :, i]), (E, B, T, H, D))
                           for i, name in enumerate(("q", "k", "v"))], dim=3)
    qkv = qkv.contiguous()
    if "attn_scores" in hooked:
        scores = qkv.new_empty(E, B, H, T, T)
        lib.scores(qkv.data_ptr(), scores.data_ptr(), E * B, T, H, D, 1 / math.sqrt(D))
        scores = as_kernel_input(hook("attn_scores", scores), (E, B, H, T, T))
        z, pattern = qkv.new_empty(E, B, T, H, D), qkv.new_empty(E, B, H, T, T)
        lib.softmax_pv(scores.data_ptr(), qkv.data_ptr(), pattern.data_ptr(), z.data_ptr(), E * B, T, H, D)
    else:
        z, pattern = native_forward(qkv, padded=False)
    if "pattern" in hooked:
        version = pattern._version
        seen = hook("pattern", pattern)
        if seen is not pattern or pattern._version != version:
            seen = as_kernel_input(seen, (E, B, H, T, T))
            lib.softmax_pv(0, qkv.data_ptr(), seen.data_ptr(), z.data_ptr(), E * B, T, H, D)
    return hook("z", z)


def causal_mask_bias(E: int, H: int, T: int, bias: torch.Tensor | None, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """``[T, Tp]`` (no bias) or ``[E, H, T, Tp]``: the attention bias, -inf above the diagonal and in the
    padding columns."""
    Tp = padded_length(T)
    masked = ~torch.ones(T, Tp, dtype=torch.bool, device=device).tril()
    out = torch.zeros(T, Tp, device=device, dtype=dtype) if bias is None else \
        torch.nn.functional.pad(bias.expand(E, H, T, T).to(dtype), (0, Tp - T))
    return out.masked_fill_(masked, float("-inf"))


class NativeCausalAttention(torch.autograd.Function):
    """:class:`CausalAttention` without an attention bias, as one fused C kernel per direction
    (``causal_attention.c``, loaded by ``models/native.py``): each (sequence, head) problem is computed whole
    in registers and L1, reading q, k, v straight from qkv and writing z and dqkv in place, so the layout
    copies, the padded GEMMs and the separate softmax passes of the torch form are gone (forward + backward
    1.8-1.9x faster at the paper's sizes: benchmarks/README.md, "C kernels"). Same math, its own rounding
    (its exp is Cephes' polynomial, ~1 ulp); a problem's bits depend on its own inputs only.
    ``tests/test_native_attention.py``.

    qkv ``[E, B, T, 3, H, D]`` (contiguous float32 on a CPU; D a multiple of 8 up to the kernel's limit) ->
    z ``[E, B, T, H, D]``. Saves qkv and the pattern ``[E*B, H, T, 8*ceil(T/8)]`` for the backward."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor) -> torch.Tensor:
        z, p = native_forward(qkv)
        ctx.save_for_backward(qkv, p)
        return z

    @staticmethod
    def backward(ctx: Any, dz: torch.Tensor) -> torch.Tensor:
        qkv, p = ctx.saved_tensors
        E, B, T, _, H, D = qkv.shape
        dz = dz.contiguous()
        dqkv = torch.empty_like(qkv)
        native.kernels().backward(qkv.data_ptr(), p.data_ptr(), dz.data_ptr(), dqkv.data_ptr(), E * B, T, H, D,
                                  1 / math.sqrt(D))
        return dqkv


def native_forward(qkv: torch.Tensor, padded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The C kernel's forward: qkv ``[E, B, T, 3, H, D]`` (contiguous, :func:`native_applies`) -> z
    ``[E, B, T, H, D]`` and the pattern ``p`` (row i: columns 0..i, zeros after), ``[E*B, H, T, 8*ceil(T/8)]``
    as the backward reads it (``padded``) or ``[E, B, H, T, T]`` as hooks see it."""
    E, B, T, _, H, D = qkv.shape
    z = qkv.new_empty(E, B, T, H, D)
    ps = -(-T // 8) * 8 if padded else T
    p = qkv.new_empty(E * B, H, T, ps) if padded else qkv.new_empty(E, B, H, T, T)
    if native.kernels().forward(qkv.data_ptr(), z.data_ptr(), p.data_ptr(), E * B, T, H, D, 1 / math.sqrt(D), ps):
        raise ValueError(f"causal attention kernel: shape {tuple(qkv.shape)} out of its range")
    return z, p


def native_applies(qkv: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :class:`NativeCausalAttention` takes this attention: CPU float32, no bias, head size a
    multiple of 8 and sequence within the kernel's limits, and the kernel compiled on this machine."""
    T, D = qkv.shape[2], qkv.shape[-1]
    if bias is not None or qkv.device.type != "cpu" or qkv.dtype != torch.float32 or D % 8:
        return False
    lib = native.kernels()
    return lib is not None and D <= lib.d_max and T <= lib.t_max


def causal_attention(qkv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """qkv ``[E, B, T, 3, H, D]``, bias ``[E, H, T, T]``, ``[H, T, T]`` or None (no gradient) -> z
    ``[E, B, T, H, D]``: the causal attention of the training step (see the module doc); the fused C kernel
    where :func:`native_applies`."""
    E, B, T, _, H, D = qkv.shape
    if bias is not None and bias.requires_grad:
        raise ValueError("causal_attention: the attention bias must not require a gradient")
    if native_applies(qkv, bias):
        return NativeCausalAttention.apply(qkv.contiguous())
    return CausalAttention.apply(qkv, causal_mask_bias(E, H, T, bias, qkv.device, qkv.dtype))
