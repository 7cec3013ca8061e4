"""Causal MLP-Mixer token mixing: each channel group (``heads``) mixes positions with its own learned
lower-triangular ``[T, T]`` matrix, ``y[t] = sum_{s <= t} W[t, s] x[s] + b[t]``; the shared MLP does the
channel mixing. No hidden token-mixing layer, so the effective token-mixing matrix *is* ``tril(W)``,
input-independent, exposed as ``blocks.{l}.mixer.hook_pattern`` ``[E, B, H, Tq, Tk]`` (the same for
every sequence; not row-stochastic, so not under the ``attn`` name). Sequences shorter than the context
use ``W[:T, :T]``, which is the same map restricted to a prefix because ``W`` is lower-triangular.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...config import require
from ..base import Init, normal, zeros
from ..hooks import HookPoint
from .common import MixerConfig, MixerModel, check_positive, refuse_unobserved


def token_mix_naive(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Reference, one output position at a time: x ``[E, B, T, H, c]``, weight ``[E, H, T, T]``
    (only ``s <= t`` read), bias ``[E, H, T]`` -> ``[E, B, T, H, c]``."""
    T = x.shape[2]
    out = []
    for t in range(T):
        w = weight[:, :, t, : t + 1]  # [E, H, t+1]
        out.append(torch.einsum("ehs,ebshc->ebhc", w, x[:, :, : t + 1]) + bias[:, None, :, t, None])
    return torch.stack(out, dim=2)


def token_mix(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fast form of :func:`token_mix_naive` (same signature): one masked batched matmul."""
    T = x.shape[2]
    w = weight[:, :, :T, :T].tril()  # [E, H, T, T]
    return torch.einsum("ehts,ebshc->ebthc", w, x) + bias[:, None, :, :T].transpose(2, 3)[..., None]


@dataclass(frozen=True)
class MLPMixerConfig(MixerConfig):
    """MLP-Mixer with causal token mixing; ``heads`` channel groups, each with its own ``[T, T]`` matrix
    (``heads * T^2`` parameters a layer: it grows with the context)."""

    name: ClassVar[str] = "mlp_mixer"
    heads: int = 4

    def check(self) -> None:
        check_positive(self, "heads")
        require(self.d_model % self.heads == 0, "model.heads", self.heads, f"must divide d_model={self.d_model}")

    def mixer_params(self) -> int:
        T = self.context_length or 0
        return self.heads * T * T + self.heads * T

    def mixer_flops(self) -> int:
        return 2 * (self.context_length or 0) * self.d_model // 2  # causal: ~T/2 positions per channel


class CausalTokenMixing(nn.Module):

    probe_pattern: ClassVar[bool] = True  # cheap enough to form at every training probe (train.measure.MixerPatternScores)
    def __init__(self, n_models: int, config: MLPMixerConfig, out_std: float):
        super().__init__()
        T, H = config.context_length, config.heads
        self.heads = H
        self.materialize = False
        self.W_tok = nn.Parameter(torch.empty(n_models, H, T, T))  # [E, H, Tq, Tk], read below the diagonal
        self.b_tok = nn.Parameter(torch.zeros(n_models, H, T))  # [E, H, Tq]
        self.hook_pattern = HookPoint()  # [E, B, H, Tq, Tk], tril(W_tok), the same for every sequence
        self._std = config.init_std

    def init_specs(self) -> dict[str, Init]:
        return {"W_tok": normal(self._std), "b_tok": zeros}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, B, T, d]
        E, B, T, d = x.shape
        xh = x.reshape(E, B, T, self.heads, d // self.heads)  # [E, B, T, H, c]
        if not self.materialize:
            refuse_unobserved(self, "hook_pattern")
            return token_mix(xh, self.W_tok, self.b_tok).reshape(E, B, T, d)
        pattern = self.W_tok[:, None, :, :T, :T].tril().expand(E, B, self.heads, T, T)
        pattern = self.hook_pattern(pattern)  # [E, B, H, Tq, Tk]
        y = torch.einsum("ebhts,ebshc->ebthc", pattern, xh) + self.b_tok[:, None, :, :T].transpose(2, 3)[..., None]
        return y.reshape(E, B, T, d)


class MLPMixer(MixerModel):
    """``E`` causal MLP-Mixers; see the module doc. Hooks: ``blocks.{l}.mixer.hook_pattern``."""

    mixer_class = CausalTokenMixing


MLPMixerConfig.model_class = MLPMixer
