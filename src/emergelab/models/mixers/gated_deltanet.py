"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024), as in flash-linear-attention's ``GatedDeltaNet``
layer and Qwen3-Next's linear attention: per head, with key dim ``Dk`` and value dim ``Dv``,

    q, k, v = silu(short_conv(x W_q)), silu(short_conv(x W_k)), silu(short_conv(x W_v))
    q, k    = q / |q|, k / |k|                                 # L2 norm (eps 1e-6 inside the sqrt)
    beta_t  = sigmoid(x_t W_b)                                  # writing strength, [H]
    g_t     = -exp(A_log) * softplus(x_t W_a + dt_bias)         # log decay alpha_t = exp(g_t) <= 1
    S_t     = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T   # [Dk, Dv]
    o_t     = S_t^T q_t / sqrt(Dk)
    out     = (rms_norm(o) * w_norm * silu(x W_g)) W_o           # per-head gated RMS norm, no biases

What plays attention's role: the output is linear in the values, ``o_t = sum_{s<=t} M[t, s] v_s`` with
``M = (Q K^T / sqrt(Dk) * Gamma) (I + diag(beta) L)^{-1} diag(beta)``, ``Gamma[t, s] = exp(G_t - G_s)``
(``G`` the running sum of ``g``) and ``L`` the strictly lower part of ``K K^T * Gamma`` (README). It is
input-dependent, lower-triangular and signed (not row-stochastic), exposed on the observed path as
``blocks.{l}.mixer.hook_pattern`` ``[E, B, H, Tq, Tk]``; the output norm and gate act after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...config import require_float, require_int
from ..base import Init, normal, ones
from ..hooks import HookPoint
from ..layers import member_linear
from .common import (MixerConfig, MixerModel, causal_conv1d, check_positive, dt_bias_init, refuse_unobserved,
                     rms_norm, uniform)


@dataclass(frozen=True)
class GatedDeltaNetConfig(MixerConfig):
    """Gated DeltaNet mixer: ``heads`` of key dim ``head_dim`` and value dim ``expand_v * head_dim``;
    short convolutions of ``conv_size`` (0: none, silu only, as FLA's ``use_short_conv=False``)."""

    name: ClassVar[str] = "gated_deltanet"
    heads: int = 4
    head_dim: int = 16
    expand_v: int = 2
    conv_size: int = 4
    norm_eps: float = 1e-5

    def check(self) -> None:
        check_positive(self, "heads", "head_dim", "expand_v")
        require_int("model.conv_size", self.conv_size, 0, 64)
        require_float("model.norm_eps", self.norm_eps, 0.0, 1.0, open_min=True)

    @property
    def value_dim(self) -> int:
        return self.expand_v * self.head_dim

    def mixer_params(self) -> int:
        d, H, Dk, Dv, K = self.d_model, self.heads, self.head_dim, self.value_dim, self.conv_size
        proj = d * (2 * H * Dk + 2 * H * Dv + 2 * H) + H * Dv * d
        return proj + 2 * H + K * (2 * H * Dk + H * Dv) + Dv

    def mixer_flops(self) -> int:
        d, H, Dk, Dv, K = self.d_model, self.heads, self.head_dim, self.value_dim, self.conv_size
        proj = d * (2 * H * Dk + 2 * H * Dv + 2 * H) + H * Dv * d
        return 2 * (proj + K * (2 * H * Dk + H * Dv) + 3 * H * Dk * Dv)  # state update + readout per token


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


# ---------------------------------------------------------------------------------------------- kernels
# Layout of the kernels (as FLA's and Hugging Face's): q, k [N, T, H, Dk], v [N, T, H, Dv], g, beta
# [N, T, H], q and k already L2-normalised; -> o [N, T, H, Dv]. (N = members * batch.)

def gated_delta_rule_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor) -> torch.Tensor:
    """Reference, one step at a time: ``S = exp(g) S; u = beta (v - S^T k); S += k u^T; o = S^T q / sqrt(Dk)``."""
    N, T, H, Dk = k.shape
    S = v.new_zeros(N, H, Dk, v.shape[-1])
    out = []
    for t in range(T):
        S = S * torch.exp(g[:, t])[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("nhkv,nhk->nhv", S, k[:, t]))  # [N, H, Dv]
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        out.append(torch.einsum("nhkv,nhk->nhv", S, q[:, t]) / math.sqrt(Dk))
    return torch.stack(out, dim=1)


def gated_delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Chunked form of :func:`gated_delta_rule_naive` (same signature, plus ``chunk``): within a chunk
    the pseudo-values ``u`` come from one unit-lower-triangular solve (the WY form), between chunks the
    ``[Dk, Dv]`` state is carried (README, "gated delta rule, chunked")."""
    N, T, H, Dk = k.shape
    pad = (-T) % chunk
    q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    g, beta = F.pad(g, (0, 0, 0, pad)), F.pad(beta, (0, 0, 0, pad))
    n = (T + pad) // chunk
    # [N, H, n, c, D] and [N, H, n, c]
    q, k, v = (t.reshape(N, n, chunk, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))
    g, beta = (t.reshape(N, n, chunk, H).permute(0, 3, 1, 2) for t in (g, beta))
    G = g.cumsum(-1)  # [N, H, n, c], log decay since the chunk's start, inclusive
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    gamma = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")))  # [.., c, c]
    L = (k @ k.transpose(-1, -2) * gamma).tril(-1)  # strictly lower
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    A = eye + beta[..., None] * L  # unit lower-triangular
    U0 = torch.linalg.solve_triangular(A, beta[..., None] * v, upper=False, unitriangular=True)  # [.., c, Dv]
    Wk = torch.linalg.solve_triangular(A, (beta * G.exp())[..., None] * k, upper=False, unitriangular=True)
    P = q @ k.transpose(-1, -2) * gamma / math.sqrt(Dk)  # [N, H, n, c, c], lower-triangular
    S = v.new_zeros(N, H, Dk, v.shape[-1])
    out = []
    for i in range(n):
        u = U0[:, :, i] - Wk[:, :, i] @ S  # [N, H, c, Dv]
        out.append((q[:, :, i] * G[:, :, i, :, None].exp()) @ S / math.sqrt(Dk) + P[:, :, i] @ u)
        decay_to_end = torch.exp(G[:, :, i, -1:] - G[:, :, i])  # [N, H, c]
        S = S * G[:, :, i, -1].exp()[..., None, None] + (k[:, :, i] * decay_to_end[..., None]).transpose(-1, -2) @ u
    o = torch.stack(out, dim=2)  # [N, H, n, c, Dv]
    return o.reshape(N, H, n * chunk, -1)[:, :, :T].transpose(1, 2)


def gated_delta_rule_matrix(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The effective mixing matrix ``M`` ``[N, H, Tq, Tk]`` with ``o_t = sum_s M[t, s] v_s`` (module doc)."""
    N, T, H, Dk = k.shape
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [N, H, T, Dk]
    G = g.transpose(1, 2).cumsum(-1)  # [N, H, T]
    beta = beta.transpose(1, 2)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    gamma = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")))
    A = torch.eye(T, dtype=q.dtype, device=q.device) + beta[..., None] * (k @ k.transpose(-1, -2) * gamma).tril(-1)
    Tinv_beta = torch.linalg.solve_triangular(A, torch.diag_embed(beta), upper=False, unitriangular=True)
    return (q @ k.transpose(-1, -2) * gamma / math.sqrt(Dk)) @ Tinv_beta


# ---------------------------------------------------------------------------------------------- module
def _a_log_init(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.log(torch.rand(shape, generator=generator) * 16)  # A ~ U(0, 16), as FLA


class GatedDeltaNetMixer(nn.Module):

    probe_pattern: ClassVar[bool] = True  # cheap enough to form at every training probe (train.measure.MixerPatternScores)
    def __init__(self, n_models: int, config: GatedDeltaNetConfig, out_std: float):
        super().__init__()
        E, d, H, Dk, Dv, K = (n_models, config.d_model, config.heads, config.head_dim, config.value_dim,
                              config.conv_size)
        self.config, self.out_std = config, out_std
        self.materialize = False
        self.chunk = 16
        self.W_q = nn.Parameter(torch.empty(E, d, H * Dk))
        self.W_k = nn.Parameter(torch.empty(E, d, H * Dk))
        self.W_v = nn.Parameter(torch.empty(E, d, H * Dv))
        self.W_a = nn.Parameter(torch.empty(E, d, H))
        self.W_b = nn.Parameter(torch.empty(E, d, H))
        self.W_g = nn.Parameter(torch.empty(E, d, H * Dv))
        self.A_log = nn.Parameter(torch.empty(E, H))
        self.dt_bias = nn.Parameter(torch.empty(E, H))
        if K:
            self.conv_q = nn.Parameter(torch.empty(E, H * Dk, K))
            self.conv_k = nn.Parameter(torch.empty(E, H * Dk, K))
            self.conv_v = nn.Parameter(torch.empty(E, H * Dv, K))
        self.norm_w = nn.Parameter(torch.empty(E, Dv))
        self.W_o = nn.Parameter(torch.empty(E, H * Dv, d))
        self.hook_q = HookPoint()  # [E, B, T, H, Dk], L2-normalised
        self.hook_k = HookPoint()  # [E, B, T, H, Dk], L2-normalised
        self.hook_v = HookPoint()  # [E, B, T, H, Dv]
        self.hook_beta = HookPoint()  # [E, B, T, H]
        self.hook_g = HookPoint()  # [E, B, T, H], log decay
        self.hook_pattern = HookPoint()  # [E, B, H, Tq, Tk], M (observed path)
        self.hook_o = HookPoint()  # [E, B, T, H, Dv], before the gated norm

    def init_specs(self) -> dict[str, Init]:
        c, std = self.config, self.config.init_std
        specs = {name: normal(std) for name in ("W_q", "W_k", "W_v", "W_a", "W_b", "W_g")}
        specs.update(A_log=_a_log_init, dt_bias=dt_bias_init(0.001, 0.1, 1e-4), norm_w=ones, W_o=normal(self.out_std))
        if c.conv_size:
            specs.update({name: uniform(1 / math.sqrt(c.conv_size)) for name in ("conv_q", "conv_k", "conv_v")})
        return specs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, B, T, d]
        E, B, T, _ = x.shape
        H, Dk, Dv = self.config.heads, self.config.head_dim, self.config.value_dim
        q, k, v = (member_linear(x, w, None) for w in (self.W_q, self.W_k, self.W_v))
        if self.config.conv_size:
            q, k, v = (causal_conv1d(t, w) for t, w in ((q, self.conv_q), (k, self.conv_k), (v, self.conv_v)))
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = self.hook_q(l2norm(q.reshape(E, B, T, H, Dk)))
        k = self.hook_k(l2norm(k.reshape(E, B, T, H, Dk)))
        v = self.hook_v(v.reshape(E, B, T, H, Dv))
        beta = self.hook_beta(torch.sigmoid(member_linear(x, self.W_b, None)))  # [E, B, T, H]
        g = -torch.exp(self.A_log)[:, None, None] * F.softplus(member_linear(x, self.W_a, None)
                                                               + self.dt_bias[:, None, None])
        g = self.hook_g(g)  # [E, B, T, H]
        flat = [t.reshape(E * B, T, *t.shape[3:]) for t in (q, k, v, g, beta)]
        if self.materialize:
            M = self.hook_pattern(gated_delta_rule_matrix(flat[0], flat[1], flat[3], flat[4]).view(E, B, H, T, T))
            o = torch.einsum("ebhts,ebshv->ebthv", M, v)
        else:
            refuse_unobserved(self, "hook_pattern")
            o = gated_delta_rule_chunk(*flat, chunk=self.chunk).view(E, B, T, H, Dv)
        o = self.hook_o(o)
        gate = F.silu(member_linear(x, self.W_g, None)).view(E, B, T, H, Dv)
        o = rms_norm(o, self.norm_w[:, None, None, None, :], self.config.norm_eps) * gate
        return member_linear(o.reshape(E, B, T, H * Dv), self.W_o, None)


class GatedDeltaNet(MixerModel):
    """``E`` Gated DeltaNet models; see the module doc. Hooks: ``blocks.{l}.mixer.hook_{q,k,v,beta,g,pattern,o}``."""

    mixer_class = GatedDeltaNetMixer


GatedDeltaNetConfig.model_class = GatedDeltaNet
