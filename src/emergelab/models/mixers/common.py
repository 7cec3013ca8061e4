"""What every alternative sequence mixer shares: the config base, the model class, init helpers, the
per-member causal depthwise convolution and the diagonal linear scan (recurrent reference + parallel form).

Layout as everywhere in ``models``: activations ``[E, B, T, ...]``, every parameter ``[E, ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...config import require_choice, require_float, require_int
from ..base import Init
from ..layers import POSITIONS, ResidualModel


def uniform(bound: float) -> Init:
    """Draw ``U(-bound, bound)`` (from the member's generator)."""
    return lambda shape, generator: (torch.rand(shape, generator=generator) * 2 - 1) * bound


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class MixerConfig:
    """Fields every mixer model has; a subclass adds its mixer's fields, ``check()``, ``mixer_params()``,
    ``mixer_flops()`` and ``model_class``. vocab_size and context_length come from the task. ``positions``:
    learned absolute position embeddings (the default) or none, as for the transformer: a recurrent mixer
    tells positions apart by itself, so without them nothing ties a weight to a position (an MLP-Mixer's
    token-mixing matrix still does)."""

    name: ClassVar[str] = ""
    layers: int = 1
    d_model: int = 64
    mlp_ratio: float = 4.0
    init_std: float = 0.02
    vocab_size: int | None = None
    context_length: int | None = None
    positions: str = "learned"

    def __post_init__(self) -> None:
        require_int("model.layers", self.layers, 1, 1024)
        require_choice("model.positions", self.positions, POSITIONS)
        require_int("model.d_model", self.d_model, 1, 2 ** 20)
        require_float("model.mlp_ratio", self.mlp_ratio, 0.0, 1024.0)
        require_float("model.init_std", self.init_std, 0.0, 10.0, open_min=True)
        if self.vocab_size is not None:
            require_int("model.vocab_size", self.vocab_size, 1, 2 ** 24)
        if self.context_length is not None:
            require_int("model.context_length", self.context_length, 1, 2 ** 20)
        self.check()

    def check(self) -> None:  # the mixer's own fields
        pass

    @property
    def width(self) -> int:
        return self.d_model

    @property
    def mlp_width(self) -> int:
        return int(round(self.mlp_ratio * self.width))

    def resolved(self, vocab_size: int, context_length: int) -> "MixerConfig":
        """This config with the task's vocabulary and context length filled in."""
        return replace(self, vocab_size=vocab_size, context_length=context_length)

    def mixer_params(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def mixer_flops(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def n_params(self) -> int:
        """Parameters of one member (exactly the module's count, tested)."""
        d, m, V, T, L = self.width, self.mlp_width, self.vocab_size or 0, self.context_length or 0, self.layers
        mlp = (d * m + m + m * d + d) if m else 0
        norms = 4 * d if m else 2 * d  # ln1, and ln2 only when there is an MLP
        positions = T * d if self.positions == "learned" else 0
        return V * d + positions + L * (self.mixer_params() + mlp + norms) + 2 * d + d * V + V

    def flops_per_token(self) -> int:
        """Forward FLOPs per token (2 per multiply-add) at full context, mixer included (its fast form)."""
        d, m, V = self.width, self.mlp_width, self.vocab_size or 0
        return self.layers * (self.mixer_flops() + 2 * 2 * d * m) + 2 * d * V

    def build(self, n_models: int = 1, seeds: list[int] | None = None) -> "MixerModel":
        return self.model_class(self, n_models, seeds)

    model_class: ClassVar[type] = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- model
class MixerModel(ResidualModel):
    """A residual stack whose mixer (attribute ``mixer``, hooks ``blocks.{l}.mixer.*``) is
    ``mixer_class(n_models, config, out_std)``. Mixers with a ``materialize`` flag switch to their
    observed path (effective mixing matrix materialised, ``hook_pattern`` fires) inside ``observing()``;
    a mixer with ``post_init(e)`` sets values derived from its other parameters after the random init."""

    mixer_class: ClassVar[type] = None  # type: ignore[assignment]

    def make_mixer(self, layer: int) -> tuple[str, nn.Module]:
        return "mixer", self.mixer_class(self.n_models, self.config, self.out_std)

    @torch.no_grad()
    def init_weights(self, seeds: list[int]) -> None:
        super().init_weights(seeds)
        for block in self.blocks:
            if hasattr(block.mixer, "post_init"):
                block.mixer.post_init()


def refuse_unobserved(mixer: nn.Module, *names: str) -> None:
    """The fast path does not compute these hook points: hooking them there is an error, not silence."""
    for name in names:
        if getattr(mixer, name).has_hooks():
            raise RuntimeError(f"{name} is not computed on the fast path: use model.run_with_hooks / "
                               "run_with_cache, or `with model.observing():`")


# ---------------------------------------------------------------------------------------------- kernels
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-member causal depthwise convolution.

    x ``[E, B, T, C]``, weight ``[E, C, K]``, bias ``[E, C]`` or None -> ``[E, B, T, C]`` with
    ``y[t, c] = bias[c] + sum_j weight[c, j] * x[t - K + 1 + j, c]`` (zeros before the start), i.e.
    ``nn.Conv1d(C, C, K, groups=C, padding=K - 1)(x)[..., :T]`` as in Mamba and short convolutions."""
    E, B, T, C = x.shape
    K = weight.shape[-1]
    xt = x.permute(1, 0, 3, 2).reshape(B, E * C, T)  # [B, E*C, T]
    y = F.conv1d(F.pad(xt, (K - 1, 0)), weight.reshape(E * C, 1, K),
                 None if bias is None else bias.reshape(E * C), groups=E * C)  # [B, E*C, T]
    return y.reshape(B, E, C, T).permute(1, 0, 3, 2).contiguous()


def diag_scan_naive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference: ``h_t = a_t * h_{t-1} + b_t``, ``h_{-1} = 0``, one step at a time.

    a, b ``[..., T, N]`` (real or complex; a broadcastable to b) -> h ``[..., T, N]``."""
    a = a.expand_as(b)
    h = torch.zeros_like(b[..., 0, :])
    out = []
    for t in range(b.shape[-2]):
        h = a[..., t, :] * h + b[..., t, :]
        out.append(h)
    return torch.stack(out, dim=-2)


def diag_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Parallel form of :func:`diag_scan_naive` (same signature): Hillis-Steele scan of the pairs
    ``(a_t, b_t)`` under ``(a, b) o (a', b') = (a a', a' b + b')``, ``ceil(log2 T)`` elementwise steps
    of ``[..., T, N]`` each (derivation: README, "diagonal scan")."""
    a = a.expand_as(b)
    T, step = b.shape[-2], 1
    while step < T:
        # after this step, b[t] = sum over the last 2*step inputs up to t, a[t] = product of their decays
        b = torch.cat([b[..., :step, :], b[..., step:, :] + a[..., step:, :] * b[..., :-step, :]], dim=-2)
        if 2 * step < T:
            a = torch.cat([a[..., :step, :], a[..., step:, :] * a[..., :-step, :]], dim=-2)
        step *= 2
    return b


def stable_chunk(max_decay: float, chunk: int, length: int, dtype: torch.dtype) -> int:
    """The chunk length for a chunked scan that writes ``exp(G_t - G_s)`` as ``exp(G_t) * exp(-G_s)``
    (``G`` a chunk-local running sum of log decays, ``<= 0``): at most ``chunk`` (and ``length``), and
    short enough that a chunk's total log decay stays within ``X = 0.45 log(max float)`` (40 in float32,
    319 in float64), so neither factor overflows or underflows and the product is exact to rounding.
    ``max_decay`` bounds one step's ``-log decay``; huge decays shorten the chunks (down to 1, where the
    caller runs its recurrence), never the accuracy."""
    c = max(1, min(chunk, length))
    limit = 0.45 * math.log(torch.finfo(dtype).max)
    if max_decay > 0 and max_decay * c > limit:
        c = max(1, int(limit // max_decay))
    return c


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the last dim; weight broadcastable to x (``[E, 1, 1, 1, D]`` for per-member)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def inv_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y (y > 0)."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias_init(dt_min: float, dt_max: float, floor: float) -> Init:
    """Mamba's time-step bias: ``softplus(bias) = dt``, ``dt`` log-uniform in ``[dt_min, dt_max]``."""
    def init(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(shape, generator=generator)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
        return inv_softplus(dt)
    return init


def check_positive(config: Any, *fields: str) -> None:
    for f in fields:
        require_int(f"model.{f}", getattr(config, f), 1, 2 ** 20)
