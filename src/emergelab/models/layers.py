"""Parts every residual sequence model shares: per-member linear maps, layer norm, the MLP, the block,
and the stack (embedding -> blocks -> final norm -> unembedding). Only the sequence mixer differs.

Every tensor carries the member dimension first: activations ``[E, B, T, d]``, weights ``[E, in, out]``.
A model is a :class:`ResidualModel` subclass that says which mixer each layer gets
(``make_mixer(layer) -> (attribute name, module)``); the block calls it as ``mixer(x, **inputs)``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import native, onednn, triton_layer_norm
from .base import Init, Positions, SequenceModel, normal, ones, select_positions, zeros
from .hooks import HookPoint
from .threads import torch_threads


class RowSoftmax(torch.autograd.Function):
    """Softmax over the last dimension from elementwise ops and last-dim sums, forward and backward.

    Same values as ``torch.softmax`` up to rounding, but every row is computed alike whatever the batch
    size or the thread count: ``torch.softmax``'s CPU backward groups rows into thread-sized chunks, so
    there a row's bits depend on the threads (and through the batch, on the other members). Forward
    ``p = exp(s - max) / sum``; backward ``p * (g - sum(g * p))``. ``tests/test_determinism.py``."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor) -> torch.Tensor:
        e = (scores - scores.amax(-1, keepdim=True)).exp_()
        p = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        return p * (grad - (grad * p).sum(-1, keepdim=True))


def row_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension whose bits do not depend on batch size or threads."""
    return RowSoftmax.apply(scores)


NARROW_OUTPUTS = range(2, 16)  # a CPU map to this many outputs takes NarrowMemberLinear


class NarrowMemberLinear(torch.autograd.Function):
    """:func:`member_linear` to few outputs (``o`` in ``NARROW_OUTPUTS``, 2-15) on a CPU, e.g. the unembedding of a
    2-token vocabulary. MKL runs ``x [N, i] @ W [i, o]`` with ``o = 2`` at a few GFLOP/s, and the weight
    gradient ``x^T g`` likewise; the same products transposed, ``W^T x^T`` and ``g^T x``, run 2-6x faster
    below 16 outputs and slower above (measured at N = 3968, i = 64: benchmarks/README.md). Same math,
    its own rounding; each member's bits do not depend on the others, which ``baddbmm`` does not keep for
    1, 5-7, 9-11 and 13-15 outputs (docs/determinism.md). With fewer members than threads it runs at one
    thread (a lone member's forward at two threads had other bits than at one).

    x ``[E, N, i]``, weight ``[E, i, o]``, bias ``[E, o]`` or None -> ``[E, N, o]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        wt, xt = weight.transpose(1, 2), x.transpose(1, 2)
        with torch_threads(_one_if_few_members(weight)):
            yt = torch.bmm(wt, xt) if bias is None else torch.baddbmm(bias.unsqueeze(2), wt, xt)  # [E, o, N]
        return yt.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        with torch_threads(_one_if_few_members(weight)):
            dx = torch.bmm(grad, weight.transpose(1, 2)) if ctx.needs_input_grad[0] else None
            dw = torch.bmm(grad.transpose(1, 2), x).transpose(1, 2).contiguous() if ctx.needs_input_grad[1] else None
        db = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _one_if_few_members(weight: torch.Tensor) -> int:
    """1 (thread) where the members ``weight.shape[0]`` are fewer than torch's threads, else 0 (unchanged):
    for :func:`~emergelab.models.threads.torch_threads`. With fewer members than threads MKL splits a
    product's other dimensions across threads, and a lone member's bits then differ from one thread's
    (:class:`FewMembersLinear`; at two threads MKL's narrow products varied here too)."""
    return 1 if weight.shape[0] < torch.get_num_threads() else 0


class OneFeatureMemberLinear(torch.autograd.Function):
    """:func:`member_linear` from one input feature or to one output (``i = 1`` or ``o = 1``) on a CPU, e.g.
    Mamba's rank-1 step-size projection at ``d_model <= 16``. A product with a single column (``baddbmm``'s
    forward to one output, the input gradient ``g W^T`` from one input) gives a member other bits in an
    ensemble than alone (MKL, torch 2.13; docs/determinism.md); here that product is an elementwise multiply
    and a sum over the last dimension, whose bits depend on each row alone; the weight gradient is a product
    summed over the rows (a one-row ``bmm`` to 33 columns also varied), whose bits depend on the member alone.

    x ``[E, N, i]``, weight ``[E, i, o]`` with ``i = 1`` or ``o = 1``, bias ``[E, o]`` or None -> ``[E, N, o]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if weight.shape[1] == 1:  # one input: an outer product
            y = x * weight  # [E, N, 1] * [E, 1, o]
        else:  # one output: a dot product per row
            y = (x * weight.transpose(1, 2)).sum(-1, keepdim=True)  # [E, N, i] * [E, 1, i] -> [E, N, 1]
        return y if bias is None else y + bias.unsqueeze(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        one_input = weight.shape[1] == 1
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (grad * weight).sum(-1, keepdim=True) if one_input else grad * weight.transpose(1, 2)
        if ctx.needs_input_grad[1]:  # a sum over the rows of a product (a one-row bmm to 33 columns varied too)
            dw = (x * grad).sum(1, keepdim=True) if one_input else (grad * x).sum(1).unsqueeze(-1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(1)
        return dx, dw, db


class OneDnnMemberLinear(torch.autograd.Function):
    """:func:`member_linear` through oneDNN (``models/onednn.py``) on a CPU: one product per member, forward
    ``x W + b``, backward ``g W^T`` and ``x^T g`` (as ``(g^T x)^T`` when the map narrows, so that the smaller
    of ``x`` and ``g`` is the one transposed in memory). About twice MKL's rate where MKL runs AVX2 on an
    AVX-512 core (AMD); each member's bits depend on its own tensors alone, and did not depend on the thread
    count at any shape tested (``tests/test_model.py``).

    x ``[E, N, i]``, weight ``[E, i, o]``, bias ``[E, o]`` or None -> ``[E, N, o]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        # a loop over members: torch's oneDNN op takes one weight (no batched form), and a map takes this path
        # only at >= onednn.MIN_MACS a member, so a call's ~15 us of overhead is a few percent of its product
        return _members([onednn.linear(x[e], weight[e].t(), None if bias is None else bias[e])
                         for e in range(weight.shape[0])])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        E, i, o = weight.shape
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _members([onednn.linear(grad[e], weight[e]) for e in range(E)])
        if ctx.needs_input_grad[1]:
            if i <= o:
                dw = _members([onednn.linear(x[e].t(), grad[e].t()) for e in range(E)])
            else:
                dw = _members([onednn.linear(grad[e].t(), x[e].t()) for e in range(E)]).transpose(1, 2).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(1)
        return dx, dw, db


class FewMembersLinear(torch.autograd.Function):
    """:func:`member_linear`'s ``baddbmm`` on a CPU when the threads outnumber the members (a lone seed at two
    threads): the same products as ``baddbmm``'s autograd, but the weight gradient ``x^T g`` at one thread.
    MKL splits that product's sum over the rows across threads when there are fewer members than threads
    (seen on an Intel Xeon, not on this project's AMD EPYC: ``benchmarks/onednn_bits.py --kernel
    member_linear``), which gave a lone member's weight gradient at two threads other bits than at one, or in
    an ensemble. Bit for bit ``baddbmm``'s autograd at one thread (``tests/test_model.py``).

    x ``[E, N, i]``, weight ``[E, i, o]``, bias ``[E, o]`` or None -> ``[E, N, o]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = grad.bmm(weight.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            with torch_threads(_one_if_few_members(weight)):
                dw = x.transpose(1, 2).bmm(grad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(1)
        return dx, dw, db


def _members(results: list[torch.Tensor]) -> torch.Tensor:
    """Per-member results ``[...]`` -> ``[E, ...]``: one member's as a view (no copy), else stacked."""
    return results[0].unsqueeze(0) if len(results) == 1 else torch.stack(results)


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`member_linear` of ``x`` ``[E, N, i]`` by ``weight`` ``[E, i, o]`` takes
    :class:`OneDnnMemberLinear`: float32 on a CPU, large enough (``onednn.MIN_FEATURES``, ``onednn.MIN_MACS``),
    and oneDNN usable here. The choice depends on the shapes alone, never on the ensemble's size."""
    _, rows, inputs = x.shape
    outputs = weight.shape[-1]
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and min(inputs, outputs) >= onednn.MIN_FEATURES and rows * inputs * outputs >= onednn.MIN_MACS
            and onednn.available())


def member_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Per-member affine map: x ``[E, ..., i]``, weight ``[E, i, o]``, bias ``[E, o]`` -> ``[E, ..., o]``.
    (On a CPU with ``o`` in ``NARROW_OUTPUTS``: :class:`NarrowMemberLinear`; with ``i`` or ``o`` 1:
    :class:`OneFeatureMemberLinear`; large enough maps (:func:`onednn_applies`): :class:`OneDnnMemberLinear`;
    fewer members than threads, with gradients: :class:`FewMembersLinear`. Elsewhere, and as the reference
    those are tested against, ``baddbmm``.)"""
    E, out = weight.shape[0], weight.shape[-1]
    flat = x.reshape(E, -1, x.shape[-1])
    if (out == 1 or weight.shape[1] == 1) and flat.device.type == "cpu":
        y = OneFeatureMemberLinear.apply(flat, weight, bias)
    elif out in NARROW_OUTPUTS and flat.device.type == "cpu":
        y = NarrowMemberLinear.apply(flat, weight, bias)
    elif onednn_applies(flat, weight):
        y = OneDnnMemberLinear.apply(flat, weight, bias)
    elif flat.device.type == "cpu" and E < torch.get_num_threads() and torch.is_grad_enabled():
        y = FewMembersLinear.apply(flat, weight, bias)
    else:
        y = torch.bmm(flat, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, weight)
    return y.reshape(*x.shape[:-1], out)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) whose product takes :func:`member_linear`'s
    kernels: on a CPU, oneDNN for a large float32 map (about twice MKL's rate where MKL runs AVX2 on an
    AVX-512 core), else what ``nn.Linear`` would compute up to rounding. For single models written with
    ``nn.Linear``, e.g. ``lm/neox.py``'s Pythia. x ``[..., in]`` -> ``[..., out]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.unsqueeze(0)
        return member_linear(x.unsqueeze(0), self.weight.t().unsqueeze(0), bias)[0]


LAYER_NORM_EPS = 1e-5  # F.layer_norm's default


class NativeLayerNorm(torch.autograd.Function):
    """:class:`LayerNorm`'s normalisation and per-member affine map as one C kernel per direction
    (``layer_norm.c``, loaded by ``models/native.py``): one pass over a row forward, one backward with the
    weight and bias gradients summed in the same pass, where the torch form (``F.layer_norm`` + ``addcmul``,
    and their backward: a ``mul`` and a ``sum`` per gradient) makes five to seven. Same math, its own rounding;
    a row's bits depend on that row alone, a member's weight gradients on its own rows alone.
    ``tests/test_native_layers.py``.

    x ``[E, ..., d]`` (float32 on a CPU, ``d`` a multiple of 8), w, b ``[E, d]`` -> ``[E, ..., d]``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
        E, d = w.shape
        R = x.numel() // (E * d)
        y = torch.empty_like(x)
        mean, rstd = x.new_empty(E, R), x.new_empty(E, R)
        native.kernels().layer_norm_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(),
                                            rstd.data_ptr(), E, R, d, LAYER_NORM_EPS)
        ctx.save_for_backward(x, w, mean, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, w, mean, rstd = ctx.saved_tensors
        E, d = w.shape
        dy = dy.contiguous()
        dx, dw, db = torch.empty_like(x), torch.empty_like(w), torch.empty_like(w)
        native.kernels().layer_norm_backward(x.data_ptr(), w.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                             dy.data_ptr(), dx.data_ptr(), dw.data_ptr(), db.data_ptr(), E,
                                             x.numel() // (E * d), d)
        return dx, dw, db


def native_layer_norm_applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether :class:`NativeLayerNorm` takes ``x`` with weights ``w`` ``[E, d]``: both float32 on a CPU, one
    member of ``x`` per row of ``w``, width a multiple of 8 within the kernel's limit, and the kernels compiled
    on this machine (else the torch form, which broadcasts or fails as it always did)."""
    d = x.shape[-1]
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 or d % 8 \
            or x.shape[0] != w.shape[0]:
        return False
    lib = native.kernels()
    return lib is not None and d <= lib.layer_norm_max_width


class NativeGelu(torch.autograd.Function):
    """``F.gelu`` (exact form) as one C kernel per direction (``gelu.c``): the forward also keeps the
    derivative (one ``exp`` serves the erf and the density), so the backward is one multiply where torch's
    recomputes both. Same math; its erf is the approximation torch's vectorised CPU erf uses. Elementwise:
    an element's bits depend on its value alone. ``tests/test_native_layers.py``.

    x (float32 on a CPU, any shape) -> same shape."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        dydx = torch.empty_like(x) if ctx.needs_input_grad[0] else None  # probes need no derivative
        native.kernels().gelu_forward(x.data_ptr(), y.data_ptr(), 0 if dydx is None else dydx.data_ptr(),
                                      x.numel())
        ctx.save_for_backward(dydx)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> torch.Tensor:
        (dydx,) = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(dy)
        native.kernels().gelu_backward(dy.data_ptr(), dydx.data_ptr(), dx.data_ptr(), dy.numel())
        return dx


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU: :class:`NativeGelu` for float32 on a CPU where the kernels are built, else ``F.gelu``."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and native.kernels() is not None:
        return NativeGelu.apply(x)
    return F.gelu(x)


class LayerNorm(nn.Module):
    """Per-member layer norm ``[E, B, T, d]`` -> same: the C kernels on a CPU (:class:`NativeLayerNorm`), the
    Triton kernels on CUDA where Triton is installed (``models/triton_layer_norm.py``; ``use_triton = False``
    on the class or an instance turns them off), else :meth:`reference`."""

    use_triton: ClassVar[bool] = True

    def __init__(self, n_models: int, width: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n_models, width))
        self.b = nn.Parameter(torch.zeros(n_models, width))
        self.hook_normalized = HookPoint()  # [E, B, T, d]

    def init_specs(self) -> dict[str, Init]:
        return {"w": ones, "b": zeros}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, B, T, d]
        if native_layer_norm_applies(x, self.w):
            return self.hook_normalized(NativeLayerNorm.apply(x, self.w, self.b))
        if self.use_triton and triton_layer_norm.applies(x, self.w):
            return self.hook_normalized(triton_layer_norm.layer_norm(x, self.w, self.b, LAYER_NORM_EPS))
        return self.hook_normalized(self.reference(x))

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The torch form (and the reference :class:`NativeLayerNorm` is tested against)."""
        x = F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)
        # b + x * w in one pass (per-member affine; F.layer_norm's own affine is shared by all members)
        return torch.addcmul(self.b[:, None, None, :], x, self.w[:, None, None, :])


class MLP(nn.Module):
    def __init__(self, n_models: int, width: int, hidden: int, init_std: float, out_std: float):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(n_models, width, hidden))
        self.b_in = nn.Parameter(torch.zeros(n_models, hidden))
        self.W_out = nn.Parameter(torch.empty(n_models, hidden, width))
        self.b_out = nn.Parameter(torch.zeros(n_models, width))
        self.hook_pre = HookPoint()  # [E, B, T, m]
        self.hook_post = HookPoint()  # [E, B, T, m]
        self._std = (init_std, out_std)

    def init_specs(self) -> dict[str, Init]:
        std, out_std = self._std
        return {"W_in": normal(std), "b_in": zeros, "W_out": normal(out_std), "b_out": zeros}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hook_post(gelu(self.hook_pre(member_linear(x, self.W_in, self.b_in))))
        return member_linear(h, self.W_out, self.b_out)


class Block(nn.Module):
    """Pre-LN residual block: ``x + mixer(ln1(x))``, then ``x + mlp(ln2(x))`` when the MLP is not empty.

    The mixer lives at attribute ``mixer_name`` (``attn`` for attention, so hook names read
    ``blocks.0.attn.hook_pattern``) and its output at ``hook_{mixer_name}_out``."""

    def __init__(self, n_models: int, width: int, mixer_name: str, mixer: nn.Module, mlp: MLP | None):
        super().__init__()
        self.mixer_name = mixer_name
        self.ln1 = LayerNorm(n_models, width)
        setattr(self, mixer_name, mixer)
        self.hook_resid_pre = HookPoint()  # [E, B, T, d]
        setattr(self, f"hook_{mixer_name}_out", HookPoint())  # [E, B, T, d]
        self.hook_resid_mid = HookPoint()  # [E, B, T, d]
        self.mlp = None
        if mlp is not None:  # a model without MLP declares no MLP hooks: every declared hook fires
            self.ln2 = LayerNorm(n_models, width)
            self.mlp = mlp
            self.hook_mlp_out = HookPoint()  # [E, B, T, d]
        self.hook_resid_post = HookPoint()  # [E, B, T, d]

    def forward(self, x: torch.Tensor, positions: Positions | None = None, **inputs: Any) -> torch.Tensor:
        """x ``[E, B, T, d]`` -> ``[E, B, T, d]``, or ``[E, B, T', d]`` at ``positions`` only: the mixer sees
        every position, the MLP (and ``hook_mlp_*``, ``hook_resid_post``) the selected ones."""
        mixer = getattr(self, self.mixer_name)
        mixer_out = getattr(self, f"hook_{self.mixer_name}_out")
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + mixer_out(mixer(self.ln1(x), **inputs)))
        if positions is not None:
            x = select_positions(x, positions, dim=2)
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


POSITIONS = ("learned", "none")  # a ResidualModel config's ``positions``: learned absolute embeddings, or none


class ResidualModel(SequenceModel):
    """Token and learned absolute position embeddings, ``layers`` blocks, final layer norm, unembedding.

    The config needs ``layers``, ``width``, ``mlp_width``, ``init_std``, ``vocab_size``,
    ``context_length``; a ``positions`` field (:data:`POSITIONS`) of ``"none"`` leaves the position
    embedding out (no ``W_pos``). Init follows GPT-2: ``N(0, init_std)``, residual-output projections (the
    mixer's output map and ``W_out``) scaled by ``1/sqrt(2 layers)`` (``self.out_std``), norms 1, biases 0.
    Subclasses implement ``make_mixer(layer) -> (name, module)``.
    """

    def __init__(self, config: Any, n_models: int = 1, seeds: list[int] | None = None):
        super().__init__(config, n_models)
        E, d, std = n_models, config.width, config.init_std
        self.out_std = std / math.sqrt(2 * config.layers)
        self.W_E = nn.Parameter(torch.empty(E, config.vocab_size, d))
        self.learned_positions = getattr(config, "positions", "learned") == "learned"
        if self.learned_positions:
            self.W_pos = nn.Parameter(torch.empty(E, config.context_length, d))
        self.hook_embed = HookPoint()  # [E, B, T, d]
        self.hook_pos_embed = HookPoint()  # [E, B, T, d] (the same positions for every sequence)
        blocks = []
        for layer in range(config.layers):
            name, mixer = self.make_mixer(layer)
            mlp = MLP(E, d, config.mlp_width, std, self.out_std) if config.mlp_width else None
            blocks.append(Block(E, d, name, mixer, mlp))
        self.blocks = nn.ModuleList(blocks)
        self.ln_final = LayerNorm(E, d)
        self.W_U = nn.Parameter(torch.empty(E, d, config.vocab_size))
        self.b_U = nn.Parameter(torch.zeros(E, config.vocab_size))
        self.finish_init(seeds)

    def make_mixer(self, layer: int) -> tuple[str, nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def init_specs(self) -> dict[str, Init]:
        std = self.config.init_std
        specs = {"W_E": normal(std), "W_U": normal(std), "b_U": zeros}
        return {**specs, "W_pos": normal(std)} if self.learned_positions else specs

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[E, B, T]`` -> ``[E, B, T, d]``, token plus position embedding."""
        E, B, T = tokens.shape
        V = self.config.vocab_size
        # member e's token t is row e*V + t of W_E viewed [E*V, d]: one embedding lookup for all members
        # (its backward is a dense scatter-add, much cheaper than advanced indexing's index_put)
        rows = tokens + torch.arange(0, E * V, V, device=tokens.device)[:, None, None]
        x = self.hook_embed(F.embedding(rows, self.W_E.view(E * V, -1)))  # [E, B, T, d]
        if not self.learned_positions:
            return x
        return x + self.hook_pos_embed(self.W_pos[:, None, :T].expand(E, B, T, -1))

    selects_positions = True  # the last block drops unwanted positions after its mixer

    def forward_members(self, tokens: torch.Tensor, positions: Positions | None = None, **inputs: Any) -> torch.Tensor:
        """tokens ``[E, B, T]`` -> logits ``[E, B, T, V]``, or ``[E, B, T', V]`` at ``positions``: no later
        position reads a position's residual after the last mixer, so the last MLP, the final norm and the
        unembedding run on the wanted positions alone (reverse addition: 18 of 51 rows)."""
        x = self.embed(tokens)
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            x = block(x, positions=positions if layer == last else None, **self.layer_inputs(layer, inputs))
        return member_linear(self.ln_final(x), self.W_U, self.b_U)  # [E, B, T, V]

    @contextmanager
    def observing(self) -> Iterator[None]:
        """Every mixer with a ``materialize`` flag takes its reference path in the scope (the transformer's
        attention materialises scores and pattern; a mixer forms its effective mixing matrix)."""
        mixers = [m for m in (getattr(b, b.mixer_name) for b in self.blocks) if hasattr(m, "materialize")]
        before = [m.materialize for m in mixers]
        for m in mixers:
            m.materialize = True
        try:
            yield
        finally:
            for m, b in zip(mixers, before):
                m.materialize = b

    def layer_inputs(self, layer: int, inputs: dict[str, Any]) -> dict[str, Any]:
        """What layer ``layer``'s mixer receives from ``forward``'s keyword inputs (default: nothing)."""
        return {}
