"""A GPT-style pre-LN transformer with TransformerLens hook names, stackable over seeds.

Every parameter has a leading member dimension ``E``; see ``models.base`` for the contract and
``models.hooks`` for the hook layout (a single model's hooks have TransformerLens' shapes).

Three attention implementations, chosen explicitly (like nanoGPT's ``self.flash``), never by whether a
hook is attached (``Attention.implementation``):

* **materialised** (the reference): ``softmax(q k^T / sqrt(D) + bias) v`` with batched matmuls and
  :func:`row_softmax`; q, k, v, scores, pattern and z exist and are hookable. Always inside
  ``model.observing()`` (which ``run_with_cache`` and ``run_with_hooks`` use). With gradients off on a
  CPU (the training probes, ``run_with_cache`` under ``torch.no_grad()``) the same hook points come from
  ``fast_attention.observed_attention``: the blocked path's products and softmax, its rounding;
* **blocked** (the CPU training default): ``fast_attention.causal_attention``, one autograd function with
  fast GEMM layouts and the native softmax at one thread; nothing inside it is hookable. Used on a CPU
  unless ``Attention.blocked = False`` or the attention bias wants a gradient;
* **fused**: ``scaled_dot_product_attention`` (the default on CUDA, ``model.use_fused_attention(True)``
  elsewhere); scores and pattern are never formed. On CUDA with heads of at most
  ``MATH_SDPA_MAX_HEAD_DIM`` dimensions, :func:`bmm_attention` instead (two batched products and
  ``torch.softmax``; ``Attention.small_heads = "sdpa-math"``: SDPA's math backend): the memory-efficient
  kernel pads a head to at least 32 dimensions, and at our sizes the plain batched products are faster
  (benchmarks/README.md, "GPU") and, free of atomics, deterministic.

Hooking an activation that the chosen implementation does not form is an error naming the fix, never a
silent switch. On a CPU, materialised and blocked give each seed bits that do not depend on the other
members, the batch size or the thread count (``tests/test_determinism.py``); all three agree to float
rounding (``tests/test_model.py``, ``tests/test_fast_attention.py``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import require_choice, require_float, require_int
from .base import Init, Positions, normal, zeros
from .hooks import HookPoint
from .fast_attention import causal_attention, observed_attention
from .layers import POSITIONS, ResidualModel, member_linear, row_softmax


MATH_SDPA_MAX_HEAD_DIM = 16  # on CUDA, smaller heads take SDPA's math backend (module doc)


@dataclass(frozen=True)
class TransformerConfig:
    """layers, heads, head_dim; d_model (None: heads * head_dim); mlp_ratio (0: attention-only);
    positions: learned (absolute position embeddings, the default) or none (no positional encoding, "NoPE":
    causal attention alone tells positions apart, and nothing ties a weight to a position, so a model can
    run at positions it never trained on, which length generalisation needs).
    vocab_size and context_length come from the task (leave them None)."""

    name: ClassVar[str] = "transformer"
    model_class: ClassVar[type]  # Transformer, set below
    layers: int = 1
    heads: int = 4
    head_dim: int = 16
    d_model: int | None = None
    mlp_ratio: float = 4.0
    vocab_size: int | None = None
    context_length: int | None = None
    init_std: float = 0.02
    positions: str = "learned"

    def __post_init__(self) -> None:
        require_int("model.layers", self.layers, 1, 1024)
        require_choice("model.positions", self.positions, POSITIONS)
        require_int("model.heads", self.heads, 1, 4096)
        require_int("model.head_dim", self.head_dim, 1, 65536)
        if self.d_model is not None:
            require_int("model.d_model", self.d_model, 1, 2 ** 20)
        require_float("model.mlp_ratio", self.mlp_ratio, 0.0, 1024.0)
        if self.vocab_size is not None:
            require_int("model.vocab_size", self.vocab_size, 1, 2 ** 24)
        if self.context_length is not None:
            require_int("model.context_length", self.context_length, 1, 2 ** 20)
        require_float("model.init_std", self.init_std, 0.0, 10.0, open_min=True)

    @property
    def width(self) -> int:
        return self.d_model if self.d_model is not None else self.heads * self.head_dim

    @property
    def mlp_width(self) -> int:
        return int(round(self.mlp_ratio * self.width))

    def resolved(self, vocab_size: int, context_length: int) -> "TransformerConfig":
        """This config with the task's vocabulary and context length filled in."""
        return replace(self, vocab_size=vocab_size, context_length=context_length, d_model=self.width)

    def n_params(self) -> int:
        d, m, V, T, L = self.width, self.mlp_width, self.vocab_size or 0, self.context_length or 0, self.layers
        hd = self.heads * self.head_dim
        attn = d * 3 * hd + 3 * hd + hd * d + d
        mlp = (d * m + m + m * d + d) if m else 0
        norms = 4 * d if m else 2 * d  # ln1, and ln2 only when there is an MLP
        positions = T * d if self.positions == "learned" else 0
        return V * d + positions + L * (attn + mlp + norms) + 2 * d + d * V + V

    def flops_per_token(self) -> int:
        """Forward FLOPs per token (2 per multiply-add) at full context, attention included."""
        d, m, V, T = self.width, self.mlp_width, self.vocab_size or 0, self.context_length or 0
        hd = self.heads * self.head_dim
        per_layer = 2 * (d * 3 * hd + hd * d + 2 * d * m) + 2 * 2 * T * hd  # QK^T and PV, causal ~T/2 x2
        return self.layers * per_layer + 2 * d * V

    def build(self, n_models: int = 1, seeds: list[int] | None = None) -> "Transformer":
        return Transformer(self, n_models, seeds)


class Attention(nn.Module):
    """Causal multi-head attention for ``E`` members. ``materialize`` forces the materialised path
    (set by ``observing()``); ``fused``: None = SDPA on CUDA only, True / False = always / never."""

    HOOKED: ClassVar[tuple[str, ...]] = ("q", "k", "v", "attn_scores", "pattern", "z")
    small_heads: ClassVar[str] = "bmm"  # fused on CUDA, heads <= MATH_SDPA_MAX_HEAD_DIM: "bmm" or "sdpa-math"

    def __init__(self, n_models: int, config: TransformerConfig, out_std: float):
        super().__init__()
        d, H, D = config.width, config.heads, config.head_dim
        self.heads, self.head_dim = H, D
        self.materialize = False
        self.fused: bool | None = None
        self.blocked = True  # CPU training uses fast_attention (False: the reference path below)
        self.W_QKV = nn.Parameter(torch.empty(n_models, d, 3 * H * D))
        self.b_QKV = nn.Parameter(torch.zeros(n_models, 3 * H * D))
        self.W_O = nn.Parameter(torch.empty(n_models, H * D, d))
        self.b_O = nn.Parameter(torch.zeros(n_models, d))
        self.hook_q = HookPoint()  # [E, B, T, H, D]
        self.hook_k = HookPoint()  # [E, B, T, H, D]
        self.hook_v = HookPoint()  # [E, B, T, H, D]
        self.hook_attn_scores = HookPoint()  # [E, B, H, Tq, Tk], pre-softmax, bias added, -inf above diagonal
        self.hook_pattern = HookPoint()  # [E, B, H, Tq, Tk], softmax of the scores
        self.hook_z = HookPoint()  # [E, B, T, H, D], pattern @ v
        self._std = (config.init_std, out_std)

    def init_specs(self) -> dict[str, Init]:
        std, out_std = self._std
        return {"W_QKV": normal(std), "b_QKV": zeros, "W_O": normal(out_std), "b_O": zeros}

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[E, B, T, d]``; attn_bias ``[H, T, T]`` or ``[E, H, T, T]`` added to the scores, or None."""
        E, B, T, _ = x.shape
        H, D = self.heads, self.head_dim
        qkv = member_linear(x, self.W_QKV, self.b_QKV).reshape(E, B, T, 3, H, D)
        implementation = self.implementation(x, attn_bias)
        unformed = {"blocked": ("q", "k", "v", "attn_scores", "pattern", "z"),
                    "fused": ("attn_scores", "pattern"), "materialised": ()}[implementation]
        hooked = [name for name in unformed if getattr(self, f"hook_{name}").has_hooks()]
        if hooked:
            raise RuntimeError(f"hook_{hooked[0]} is not formed by {implementation} attention: use "
                               "model.run_with_hooks / run_with_cache, or `with model.observing():`")
        if implementation == "blocked":
            z = causal_attention(qkv, None if attn_bias is None else attn_bias[..., :T, :T])  # [E, B, T, H, D]
            return member_linear(z.view(E, B, T, H * D), self.W_O, self.b_O)
        if implementation == "materialised" and not torch.is_grad_enabled() and x.device.type == "cpu":
            z = observed_attention(qkv, None if attn_bias is None else attn_bias[..., :T, :T],
                                   lambda name, t: getattr(self, f"hook_{name}")(t),
                                   {n for n in self.HOOKED if getattr(self, f"hook_{n}").has_hooks()})
            return member_linear(z.reshape(E, B, T, H * D), self.W_O, self.b_O)
        q, k, v = qkv.unbind(3)  # views; backward is one stack (three selects would each zero-fill qkv)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # [E, B, T, H, D]
        q, k, v = (t.reshape(E * B, T, H, D).transpose(1, 2) for t in (q, k, v))  # [E*B, H, T, D]
        bias = None
        if attn_bias is not None:
            bias = attn_bias[..., :T, :T]
            bias = bias.unsqueeze(1) if bias.dim() == 4 else bias.expand(E, 1, H, T, T)
            bias = bias.expand(E, B, H, T, T).reshape(E * B, H, T, T)
        if implementation == "materialised":
            z = self._attend_observed(q, k, v, bias, E)
        elif x.is_cuda and D <= MATH_SDPA_MAX_HEAD_DIM and self.small_heads == "bmm":
            z = bmm_attention(q, k, v, bias)
        else:
            small = x.is_cuda and D <= MATH_SDPA_MAX_HEAD_DIM
            with sdpa_kernel(SDPBackend.MATH) if small else contextlib.nullcontext():
                if bias is None:
                    z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                else:
                    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                    z = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal, float("-inf")))
        z = self.hook_z(z.transpose(1, 2).reshape(E, B, T, H, D))  # [E, B, T, H, D]
        return member_linear(z.reshape(E, B, T, H * D), self.W_O, self.b_O)

    def implementation(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> str:
        """``"materialised"``, ``"blocked"`` or ``"fused"`` (module doc), from the settings, the device and
        whether the bias wants a gradient; never from the hooks attached."""
        if self.materialize:
            return "materialised"
        if self.fused if self.fused is not None else x.is_cuda:
            return "fused"
        if self.blocked and x.device.type == "cpu" and not (attn_bias is not None and attn_bias.requires_grad):
            return "blocked"
        return "materialised"

    def _attend_observed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                         E: int) -> torch.Tensor:
        """The materialised attention: scores and pattern exist and are hookable."""
        EB, H, T, _ = q.shape
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [E*B, H, T, T]
        if bias is not None:
            scores = scores + bias
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf")).view(E, EB // E, H, T, T)
        pattern = self.hook_pattern(row_softmax(self.hook_attn_scores(scores)))  # [E, B, H, T, T]
        return pattern.reshape(EB, H, T, T) @ v  # [E*B, H, T, D]


def bmm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal attention ``softmax(q k^T / sqrt(D) + bias + causal) v`` as two batched products and one
    ``torch.softmax``: q, k, v ``[N, H, T, D]``, bias ``[N, H, T, T]`` or None -> ``[N, H, T, D]``.

    The fused path for small heads on CUDA (``Attention.small_heads = "bmm"``): SDPA's math backend computes
    the same with more passes over the ``[N, H, T, T]`` scores (it scales q and k separately, adds the mask
    in its own pass and checks for fully masked rows), and its memory-efficient kernel pads a head to 32
    dimensions (benchmarks/README.md, "GPU"). The mask rides in the first product (``baddbmm``'s added
    input); ``torch.softmax`` on CUDA computes each row alone and without atomics, so a rerun gives the same
    bits. The reference it is tested against: :meth:`Attention._attend_observed` (``tests/test_gpu_kernels.py``)."""
    N, H, T, D = q.shape
    added = torch.full((T, T), float("-inf"), device=q.device, dtype=q.dtype).triu(1)  # [T, T] causal mask
    if bias is not None:
        added = (bias + added).reshape(N * H, T, T)
    scores = torch.baddbmm(added, q.reshape(N * H, T, D), k.reshape(N * H, T, D).transpose(1, 2),
                           alpha=1.0 / math.sqrt(D))  # [N*H, T, T]
    return torch.bmm(torch.softmax(scores, dim=-1), v.reshape(N * H, T, D)).view(N, H, T, D)


class Transformer(ResidualModel):
    """``E = n_models`` GPT-style transformers sharing one forward pass.

    Example::

        cfg = TransformerConfig(layers=1, heads=4, head_dim=8, vocab_size=2, context_length=15)
        model = Transformer(cfg)                         # one model, seed 0
        tokens = torch.randint(0, 2, (5, 15))            # [batch, position]
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        cache["blocks.0.attn.hook_pattern"].shape      # [batch, head, query, key]
    """

    accepts_attn_bias: ClassVar[bool] = True

    def make_mixer(self, layer: int) -> tuple[str, nn.Module]:
        return "attn", Attention(self.n_models, self.config, self.out_std)

    def layer_inputs(self, layer: int, inputs: dict[str, Any]) -> dict[str, Any]:
        """attn_bias ``[layers, heads, query, key]`` or ``[E, layers, heads, query, key]`` -> this layer's."""
        bias = inputs.get("attn_bias")
        if bias is None:
            return {}
        return {"attn_bias": bias[layer] if bias.dim() == 4 else bias[:, layer]}

    def forward(self, tokens: torch.Tensor, attn_bias: torch.Tensor | None = None,
                positions: Positions | None = None) -> torch.Tensor:
        """tokens ``[B, T]`` (E = 1) or ``[E, B, T]`` -> logits ``[B, T, V]`` or ``[E, B, T, V]``.

        attn_bias: added to every layer's attention scores before the softmax, per head: ``[layers,
        heads, query, key]`` or ``[E, layers, heads, query, key]`` (sliced to T), or None.
        positions: only these positions' logits (``SequenceModel.forward``).
        """
        if attn_bias is not None:
            self.check_attn_bias(attn_bias, tokens)
        return super().forward(tokens, positions=positions, attn_bias=attn_bias)

    def check_attn_bias(self, bias: torch.Tensor, tokens: torch.Tensor) -> None:
        """A clear error for a bias no layer could add to its ``[E, B, H, T, T]`` scores (shapes only)."""
        cfg = self.config
        if not isinstance(bias, torch.Tensor) or not bias.dtype.is_floating_point:
            raise TypeError(f"attn_bias must be a float tensor, got "
                            f"{bias.dtype if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        T = tokens.shape[-1] if isinstance(tokens, torch.Tensor) and tokens.dim() else 0
        lead = (cfg.layers, cfg.heads)
        shape = tuple(bias.shape)
        fits = (bias.dim() in (4, 5) and shape[-4:-2] == lead and shape[-2] >= T and shape[-1] >= T
                and (bias.dim() == 4 or shape[0] in (1, self.n_models)))
        if not fits:
            raise ValueError(f"attn_bias of shape {shape} does not fit: expected [layers={cfg.layers}, "
                             f"heads={cfg.heads}, query>={T}, key>={T}] or [E={self.n_models}, layers, heads, "
                             f"query, key]")

    def use_fused_attention(self, fused: bool | None) -> None:
        """SDPA in every layer (True), the materialised attention (False), or SDPA on CUDA only (None)."""
        for block in self.blocks:
            block.attn.fused = fused


TransformerConfig.model_class = Transformer  # the class it builds (ExperimentConfig reads its capabilities)
