"""A GPT-style pre-LN transformer with TransformerLens hook names, stackable over seeds.

Every parameter has a leading *member* dimension ``E`` (``n_models``): ``E`` independently initialised
models (one per seed) run as one, with their matmuls batched over members. ``E = 1`` is a plain model.

Layout: tokens ``[B, T]`` for a single model (logits ``[B, T, V]``), or ``[E, B, T]`` for any ``E``
(logits ``[E, B, T, V]``). Hook points see the members stacked along the batch dimension, member-major:
``hook_pattern`` is ``[E*B, H, T, T]`` and member ``e`` owns rows ``e*B .. (e+1)*B - 1``. For ``E = 1``
that is exactly TransformerLens' ``[batch, head, query, key]``.

When neither ``hook_attn_scores`` nor ``hook_pattern`` of a layer is hooked, attention runs through
``scaled_dot_product_attention`` (the fast path); otherwise scores and pattern are materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import require, require_float, require_int
from .hooks import HookedModule, HookPoint


@dataclass(frozen=True)
class TransformerConfig:
    """layers, heads, head_dim; d_model (None: heads * head_dim); mlp_ratio (0: attention-only).
    vocab_size and context_length come from the task when left None."""

    layers: int = 1
    heads: int = 4
    head_dim: int = 16
    d_model: int | None = None
    mlp_ratio: float = 4.0
    vocab_size: int | None = None
    context_length: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        require_int("model.layers", self.layers, 1, 1024)
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
        return replace(self, vocab_size=vocab_size, context_length=context_length,
                       d_model=self.width)

    def n_params(self) -> int:
        d, m, V, T, L = self.width, self.mlp_width, self.vocab_size or 0, self.context_length or 0, self.layers
        hd = self.heads * self.head_dim
        attn = d * 3 * hd + 3 * hd + hd * d + d
        mlp = (d * m + m + m * d + d) if m else 0
        norms = 4 * d if m else 2 * d  # ln1, and ln2 only when there is an MLP
        return V * d + T * d + L * (attn + mlp + norms) + 2 * d + d * V + V

    def flops_per_token(self) -> int:
        """Forward FLOPs per token (2 per multiply-add) at full context, attention included."""
        d, m, V, T = self.width, self.mlp_width, self.vocab_size or 0, self.context_length or 0
        hd = self.heads * self.head_dim
        per_layer = 2 * (d * 3 * hd + hd * d + 2 * d * m) + 2 * 2 * T * hd  # QK^T and PV, causal ~T/2 x2
        return self.layers * per_layer + 2 * d * V


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-member affine map: x ``[E, ..., i]``, weight ``[E, i, o]``, bias ``[E, o]`` -> ``[E, ..., o]``."""
    E, out = weight.shape[0], weight.shape[-1]
    flat = x.reshape(E, -1, x.shape[-1])
    return torch.baddbmm(bias.unsqueeze(1), flat, weight).reshape(*x.shape[:-1], out)


class LayerNorm(nn.Module):
    def __init__(self, n_models: int, width: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n_models, width))
        self.b = nn.Parameter(torch.zeros(n_models, width))
        self.hook_normalized = HookPoint()  # [E, B, T, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, B, T, d]
        x = F.layer_norm(x, x.shape[-1:])
        # b + x * w in one pass (per-member affine; F.layer_norm's own affine is shared by all members)
        return self.hook_normalized(torch.addcmul(self.b[:, None, None, :], x, self.w[:, None, None, :]))


class Attention(nn.Module):
    def __init__(self, n_models: int, config: TransformerConfig):
        super().__init__()
        d, H, D = config.width, config.heads, config.head_dim
        self.heads, self.head_dim = H, D
        self.W_QKV = nn.Parameter(torch.empty(n_models, d, 3 * H * D))
        self.b_QKV = nn.Parameter(torch.zeros(n_models, 3 * H * D))
        self.W_O = nn.Parameter(torch.empty(n_models, H * D, d))
        self.b_O = nn.Parameter(torch.zeros(n_models, d))
        self.hook_q = HookPoint()  # [E*B, T, H, D]
        self.hook_k = HookPoint()  # [E*B, T, H, D]
        self.hook_v = HookPoint()  # [E*B, T, H, D]
        self.hook_attn_scores = HookPoint()  # [E*B, H, Tq, Tk], pre-softmax, bias added, -inf above diagonal
        self.hook_pattern = HookPoint()  # [E*B, H, Tq, Tk], softmax of the scores
        self.hook_z = HookPoint()  # [E*B, T, H, D], pattern @ v

    def observed(self) -> bool:
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x ``[E, B, T, d]``; bias ``[H, T, T]`` or ``[E, H, T, T]`` added to the scores, or None."""
        E, B, T, _ = x.shape
        H, D = self.heads, self.head_dim
        qkv = _linear(x, self.W_QKV, self.b_QKV).reshape(E * B, T, 3, H, D)
        q, k, v = qkv.unbind(2)  # views; backward is one stack (three selects would each zero-fill qkv)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # [E*B, T, H, D]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [E*B, H, T, D]
        if bias is not None:
            bias = bias[..., :T, :T]
            bias = bias.unsqueeze(1) if bias.dim() == 4 else bias.expand(E, 1, H, T, T)
            bias = bias.expand(E, B, H, T, T).reshape(E * B, H, T, T)
        if self.observed():
            z = self._attend_observed(q, k, v, bias)
        elif bias is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = bias.masked_fill(~causal, float("-inf"))
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        z = self.hook_z(z.transpose(1, 2))  # [E*B, T, H, D]
        return _linear(z.reshape(E, B, T, H * D), self.W_O, self.b_O)

    def _attend_observed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
        """The reference attention: scores and pattern are materialised and hookable."""
        T = q.shape[-2]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [E*B, H, T, T]
        if bias is not None:
            scores = scores + bias
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        return pattern @ v  # [E*B, H, T, D]


class MLP(nn.Module):
    def __init__(self, n_models: int, config: TransformerConfig):
        super().__init__()
        d, m = config.width, config.mlp_width
        self.W_in = nn.Parameter(torch.empty(n_models, d, m))
        self.b_in = nn.Parameter(torch.zeros(n_models, m))
        self.W_out = nn.Parameter(torch.empty(n_models, m, d))
        self.b_out = nn.Parameter(torch.zeros(n_models, d))
        self.hook_pre = HookPoint()  # [E, B, T, m]
        self.hook_post = HookPoint()  # [E, B, T, m]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hook_post(F.gelu(self.hook_pre(_linear(x, self.W_in, self.b_in))))
        return _linear(h, self.W_out, self.b_out)


class Block(nn.Module):
    def __init__(self, n_models: int, config: TransformerConfig):
        super().__init__()
        self.ln1 = LayerNorm(n_models, config.width)
        self.attn = Attention(n_models, config)
        self.hook_resid_pre = HookPoint()  # [E, B, T, d]
        self.hook_attn_out = HookPoint()  # [E, B, T, d]
        self.hook_resid_mid = HookPoint()  # [E, B, T, d]
        self.mlp = None
        if config.mlp_width:  # attention-only models declare no MLP hooks: every declared hook fires
            self.ln2 = LayerNorm(n_models, config.width)
            self.mlp = MLP(n_models, config)
            self.hook_mlp_out = HookPoint()  # [E, B, T, d]
        self.hook_resid_post = HookPoint()  # [E, B, T, d]

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), bias)))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class Transformer(HookedModule):
    """``E = n_models`` GPT-style transformers sharing one forward pass.

    Example::

        cfg = TransformerConfig(layers=1, heads=4, head_dim=8, vocab_size=2, context_length=15)
        model = Transformer(cfg)                         # one model, seed 0
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        cache["blocks.0.attn.hook_pattern"].shape      # [batch, head, query, key]
    """

    def __init__(self, config: TransformerConfig, n_models: int = 1, seeds: list[int] | None = None):
        super().__init__()
        require(config.vocab_size is not None and config.context_length is not None, "model.vocab_size",
                config.vocab_size, "vocab_size and context_length must be set (config.resolved(...))")
        self.config = config
        self.n_models = E = n_models
        d = config.width
        self.W_E = nn.Parameter(torch.empty(E, config.vocab_size, d))
        self.W_pos = nn.Parameter(torch.empty(E, config.context_length, d))
        self.hook_embed = HookPoint()  # [E, B, T, d]
        self.hook_pos_embed = HookPoint()  # [E, 1, T, d]
        self.blocks = nn.ModuleList(Block(E, config) for _ in range(config.layers))
        self.ln_final = LayerNorm(E, d)
        self.W_U = nn.Parameter(torch.empty(E, d, config.vocab_size))
        self.b_U = nn.Parameter(torch.zeros(E, config.vocab_size))
        self.setup_hooks()
        self.init_weights(seeds if seeds is not None else list(range(E)))

    @torch.no_grad()
    def init_weights(self, seeds: list[int]) -> None:
        """Initialise member ``e`` from ``seeds[e]`` alone (on the CPU, so every device agrees):
        member ``e`` of an ensemble equals a single model built with ``seeds=[seeds[e]]``."""
        if len(seeds) != self.n_models:
            raise ValueError(f"init_weights needs {self.n_models} seeds, got {len(seeds)}")
        std, L = self.config.init_std, self.config.layers
        for e, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(int(seed))
            for name, param in self.named_parameters():
                if name.endswith((".w",)):
                    param[e] = 1.0
                elif name.startswith("W_") or ".W_" in name:
                    # GPT-2: residual-output projections scaled down with depth
                    scale = 1 / math.sqrt(2 * L) if name.endswith(("W_O", "W_out")) else 1.0
                    draw = torch.randn(param.shape[1:], generator=generator) * (std * scale)
                    param[e] = draw.to(param.device)
                else:
                    param[e] = 0.0

    def forward(self, tokens: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """tokens ``[B, T]`` (E = 1) or ``[E, B, T]`` -> logits ``[B, T, V]`` or ``[E, B, T, V]``.

        attn_bias: added to every layer's attention scores before the softmax, per head: ``[layers,
        heads, query, key]`` or ``[E, layers, heads, query, key]`` (sliced to T), or None.
        """
        single = tokens.dim() == 2
        if single:
            if self.n_models != 1:
                raise ValueError(f"tokens [B, T] need a single model; this one has {self.n_models}: pass [E, B, T]")
            tokens = tokens.unsqueeze(0)
        E, B, T = tokens.shape
        if E != self.n_models:
            raise ValueError(f"tokens have {E} members, the model has {self.n_models}")
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length {self.config.context_length}")
        # member e's token t is row e*V + t of W_E viewed [E*V, d]: one embedding lookup for all members
        # (its backward is a dense scatter-add, much cheaper than advanced indexing's index_put)
        rows = tokens + torch.arange(0, E * self.config.vocab_size, self.config.vocab_size,
                                     device=tokens.device)[:, None, None]
        x = self.hook_embed(F.embedding(rows, self.W_E.view(E * self.config.vocab_size, -1)))  # [E, B, T, d]
        x = x + self.hook_pos_embed(self.W_pos[:, None, :T])
        for layer, block in enumerate(self.blocks):
            bias = None
            if attn_bias is not None:
                bias = attn_bias[layer] if attn_bias.dim() == 4 else attn_bias[:, layer]
            x = block(x, bias)
        logits = _linear(self.ln_final(x), self.W_U, self.b_U)  # [E, B, T, V]
        return logits[0] if single else logits

    def member(self, index: int) -> "Transformer":
        """A new single model holding a copy of member ``index`` (the ensemble is untouched)."""
        single = Transformer(self.config, n_models=1, seeds=[0]).to(self.W_E.device, self.W_E.dtype)
        single.load_state_dict({k: v[index:index + 1].clone() for k, v in self.state_dict().items()})
        return single

    def member_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s parameters without the member dimension (what a checkpoint stores)."""
        return {k: v[index].detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_member_state_dicts(cls, config: TransformerConfig,
                                states: list[dict[str, torch.Tensor]]) -> "Transformer":
        """Stack single-model state dicts (as saved by :meth:`member_state_dict`) into one ensemble."""
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        model = cls(config, n_models=len(states), seeds=[0] * len(states))
        model = model.to(stacked["W_E"].device, stacked["W_E"].dtype)  # load keeps the params' dtype
        model.load_state_dict(stacked)
        return model
