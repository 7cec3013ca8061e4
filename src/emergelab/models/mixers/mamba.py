"""Mamba-1 selective SSM block (Gu & Dao 2023), as in ``mamba_ssm``'s ``Mamba`` / Hugging Face's
``MambaMixer``: with ``I = expand * d`` channels, state size ``N`` and time-step rank ``R``,

    [x, z] = u W_in                                  # [T, 2I], no bias
    x      = silu(causal_depthwise_conv(x))         # kernel K, with bias
    [dt_r, B, C] = x W_x                             # [T, R + N + N], no bias
    dt     = softplus(dt_r W_dt + b_dt)              # [T, I]
    A      = -exp(A_log)                             # [I, N]
    h_t    = exp(dt_t A) * h_{t-1} + (dt_t B_t) x_t  # [I, N] per step (zero-order hold on A, Euler on B)
    y_t    = h_t C_t + D * x_t                       # [I]
    out    = (y * silu(z)) W_out                     # no bias

What plays attention's role: unrolling the scan, ``y_t[i] = sum_{s<=t} M[i, t, s] x_s[i] + D[i] x_t[i]``
with the input-dependent kernel ``M[i, t, s] = sum_n C_t[n] exp(sum_{r=s+1..t} dt_r[i] A[i, n]) dt_s[i]
B_s[n]`` (Ali et al. 2024, "The Hidden Attention of Mamba Models"): one ``[Tq, Tk]`` matrix per channel,
exposed as ``blocks.{l}.mixer.hook_pattern`` ``[E, B, I, Tq, Tk]`` on the observed path (it costs
``O(I T^2 N)`` memory; not row-stochastic, and the D skip and the silu(z) gate are outside it).
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
from .common import (MixerConfig, MixerModel, causal_conv1d, check_positive, diag_scan,
                     dt_bias_init, refuse_unobserved, stable_chunk, uniform)

CHUNK = 8  # the fast path's chunk length (selective_scan_chunked): about the fastest of 2..64 on a CPU (README)


@dataclass(frozen=True)
class MambaConfig(MixerConfig):
    """Mamba-1 mixer: ``expand * d_model`` channels, ``state_size`` N, ``conv_size`` K, ``dt_rank`` R
    (None: ceil(d_model / 16), as in Mamba); dt bias init log-uniform in [dt_min, dt_max]."""

    name: ClassVar[str] = "mamba"
    state_size: int = 16
    conv_size: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 0.001
    dt_max: float = 0.1

    def check(self) -> None:
        check_positive(self, "state_size", "conv_size", "expand")
        if self.dt_rank is not None:
            require_int("model.dt_rank", self.dt_rank, 1, 2 ** 20)
        require_float("model.dt_min", self.dt_min, 0.0, 1.0, open_min=True)
        require_float("model.dt_max", self.dt_max, self.dt_min, 10.0)

    @property
    def inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    def mixer_params(self) -> int:
        d, I, N, K, R = self.d_model, self.inner, self.state_size, self.conv_size, self.rank
        return d * 2 * I + I * K + I + I * (R + 2 * N) + R * I + I + I * N + I + I * d

    def mixer_flops(self) -> int:
        d, I, N, K, R = self.d_model, self.inner, self.state_size, self.conv_size, self.rank
        return 2 * (d * 2 * I + I * K + I * (R + 2 * N) + R * I + I * d) + 2 * 3 * I * N


def selective_scan_naive(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Reference, one step at a time: x, dt ``[E, b, T, I]``, A ``[E, I, N]``, B, C ``[E, b, T, N]``,
    D ``[E, I]`` -> y ``[E, b, T, I]`` (the equations in the module doc)."""
    E, b, T, I = x.shape
    h = x.new_zeros(E, b, I, A.shape[-1])
    ys = []
    for t in range(T):
        h = torch.exp(dt[:, :, t, :, None] * A[:, None]) * h + (dt[:, :, t, :, None] * B[:, :, t, None, :]) \
            * x[:, :, t, :, None]  # [E, b, I, N]
        ys.append(torch.einsum("ebin,ebn->ebi", h, C[:, :, t]) + D[:, None] * x[:, :, t])
    return torch.stack(ys, dim=2)


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor, scan=diag_scan) -> torch.Tensor:
    """Parallel form of :func:`selective_scan_naive` (same signature): the diagonal scan over time of
    every (channel, state) pair at once."""
    a = torch.exp(dt[..., None] * A[:, None, None])  # [E, b, T, I, N]
    bx = (dt * x)[..., None] * B[:, :, :, None, :]  # [E, b, T, I, N]
    h = scan(a.transpose(2, 3), bx.transpose(2, 3))  # [E, b, I, T, N]
    return torch.einsum("ebitn,ebtn->ebti", h, C) + D[:, None, None] * x


def selective_scan_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Chunked form of :func:`selective_scan_naive` (same signature, plus ``chunk``): inside a chunk of
    ``c`` steps the states are ``h_t = exp(G_t) (h_start + cumsum_s(exp(-G_s) dt_s B_s x_s))``, ``G`` the
    chunk-local running sum of ``dt A`` (one ``cumsum`` over the chunk instead of ``c`` steps), read out
    by ``C`` at once; the state at the chunk's end enters the next (derivation: README, "Mamba, chunked").
    Every tensor is ``[E, b, c, I, N]``, never ``[E, b, T, I, N]`` at once (the parallel scan's ``log T``
    passes over those are what made it slow). The chunk is shortened where one step's decay ``dt |A|`` is
    so large that ``exp(-G)`` could overflow (:func:`common.stable_chunk`; reading that bound is one host
    sync on a GPU), so it is exact to rounding for every ``dt``.

    Example::

        E, b, T, I, N = 2, 4, 100, 8, 16
        x, dt = torch.randn(E, b, T, I), torch.rand(E, b, T, I) * 0.1
        A, D = -torch.rand(E, I, N) * 16, torch.ones(E, I)
        B, C = torch.randn(E, b, T, N), torch.randn(E, b, T, N)
        y = selective_scan_chunked(x, dt, A, B, C, D, chunk=8)   # [E, b, T, I], as selective_scan_naive
    """
    E, b, T, I = x.shape
    if T == 0:
        return D[:, None, None] * x
    max_decay = (dt.detach().amax(dim=(1, 2)) * (-A.detach()).amax(-1)).max().item()  # of one step
    c = stable_chunk(max_decay, chunk, T, x.dtype)
    if c == 1:  # one step's decay alone could underflow exp(G): chunks of one step are the recurrence
        return selective_scan_naive(x, dt, A, B, C, D)
    dtx = dt * x  # [E, b, T, I]
    A = A[:, None, None]  # [E, 1, 1, I, N]
    h = x.new_zeros(E, b, I, A.shape[-1])  # the state entering the chunk
    ys = []
    for start in range(0, T, c):
        sl = slice(start, min(start + c, T))
        G = dt[:, :, sl].cumsum(2)[..., None] * A  # [E, b, L, I, N], <= 0: sum_r dt_r A = A sum_r dt_r
        decay = torch.exp(G)  # >= exp(-40) in float32 (stable_chunk)
        u = dtx[:, :, sl, :, None] * B[:, :, sl, None, :]  # dt_s B_s x_s
        hc = decay * (torch.cumsum(u / decay, dim=2) + h[:, :, None])  # [E, b, L, I, N]
        ys.append((hc * C[:, :, sl, None, :]).sum(-1))  # [E, b, L, I]; faster than einsum's small bmm
        h = hc[:, :, -1]
    return torch.cat(ys, dim=2) + D[:, None, None] * x


def selective_kernel(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The hidden-attention matrix ``M`` ``[E, b, I, Tq, Tk]`` (module doc), zero above the diagonal:
    ``M[i, t, s] = sum_n C[t, n] exp(sum_{s < u <= t} dt[u, i] A[i, n]) B[s, n] dt[s, i]``.

    Its ``[E, b, I, Tq, Tk, N]`` decays are the cost (the observed path's: patching a Mamba runs this once
    a pass); without gradients to keep they are updated in place, one buffer instead of five (2.5x faster
    at b = 256, I = 64, T = 15, N = 16; the same values to rounding, tested against a float64 loop)."""
    T = dt.shape[2]
    cum = torch.cumsum(dt[..., None] * A[:, None, None], dim=2).transpose(2, 3)  # [E, b, I, T, N]
    diff = cum[:, :, :, :, None, :] - cum[:, :, :, None, :, :]  # [E, b, I, Tq, Tk, N], <= 0 below diag
    above = ~torch.ones(T, T, dtype=torch.bool, device=dt.device).tril()[:, :, None]
    cb = C[:, :, :, None, :] * B[:, :, None, :, :]  # [E, b, Tq, Tk, N]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (dt, A, B, C)):
        M = (torch.exp(diff.masked_fill(above, float("-inf"))) * cb[:, :, None]).sum(-1)
    else:
        M = diff.masked_fill_(above, float("-inf")).exp_().mul_(cb[:, :, None]).sum(-1)
    return M * dt.transpose(2, 3)[:, :, :, None, :]  # [E, b, I, Tq, Tk]


def _a_log_init(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.log(torch.arange(1, shape[-1] + 1, dtype=torch.float32)).expand(shape).clone()  # A = -1..-N


class MambaMixer(nn.Module):

    probe_pattern: ClassVar[bool] = False  # too costly to form at every probe: measured on demand with run_with_cache
    def __init__(self, n_models: int, config: MambaConfig, out_std: float):
        super().__init__()
        E, d, I, N, K, R = n_models, config.d_model, config.inner, config.state_size, config.conv_size, config.rank
        self.config, self.out_std = config, out_std
        self.materialize = False
        self.W_in = nn.Parameter(torch.empty(E, d, 2 * I))
        self.conv_w = nn.Parameter(torch.empty(E, I, K))
        self.conv_b = nn.Parameter(torch.empty(E, I))
        self.W_x = nn.Parameter(torch.empty(E, I, R + 2 * N))
        self.W_dt = nn.Parameter(torch.empty(E, R, I))
        self.b_dt = nn.Parameter(torch.empty(E, I))
        self.A_log = nn.Parameter(torch.empty(E, I, N))
        self.D = nn.Parameter(torch.empty(E, I))
        self.W_out = nn.Parameter(torch.empty(E, I, d))
        self.hook_x = HookPoint()  # [E, B, T, I], after conv and silu
        self.hook_dt = HookPoint()  # [E, B, T, I], after softplus
        self.hook_B = HookPoint()  # [E, B, T, N]
        self.hook_C = HookPoint()  # [E, B, T, N]
        self.hook_pattern = HookPoint()  # [E, B, I, Tq, Tk], the hidden-attention matrix M (observed path)
        self.hook_y = HookPoint()  # [E, B, T, I], scan output incl. D skip, before the gate

    def init_specs(self) -> dict[str, Init]:
        c = self.config
        return {"W_in": normal(c.init_std), "conv_w": uniform(1 / math.sqrt(c.conv_size)),
                "conv_b": uniform(1 / math.sqrt(c.conv_size)), "W_x": normal(c.init_std),
                "W_dt": uniform(c.rank ** -0.5), "b_dt": dt_bias_init(c.dt_min, c.dt_max, 1e-4),
                "A_log": _a_log_init, "D": ones, "W_out": normal(self.out_std)}

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # u: [E, B, T, d]
        I, N, R = self.config.inner, self.config.state_size, self.config.rank
        x, z = member_linear(u, self.W_in, None).split([I, I], dim=-1)  # [E, B, T, I] each
        x = self.hook_x(F.silu(causal_conv1d(x, self.conv_w, self.conv_b)))
        dt, B, C = member_linear(x, self.W_x, None).split([R, N, N], dim=-1)
        dt = self.hook_dt(F.softplus(member_linear(dt, self.W_dt, self.b_dt)))  # [E, B, T, I]
        B, C = self.hook_B(B), self.hook_C(C)  # [E, B, T, N]
        A = -torch.exp(self.A_log)  # [E, I, N]
        if self.materialize:
            M = self.hook_pattern(selective_kernel(dt, A, B, C))  # [E, B, I, Tq, Tk]
            y = torch.einsum("ebits,ebsi->ebti", M, x) + self.D[:, None, None] * x
        else:
            refuse_unobserved(self, "hook_pattern")
            y = selective_scan_chunked(x, dt, A, B, C, self.D)
        y = self.hook_y(y)
        return member_linear(y * F.silu(z), self.W_out, None)


class Mamba(MixerModel):
    """``E`` Mamba-1 models; see the module doc. Hooks: ``blocks.{l}.mixer.hook_{x,dt,B,C,pattern,y}``."""

    mixer_class = MambaMixer
    capturable = False  # the chunked scan reads its decay bound back from the GPU (selective_scan_chunked)


MambaConfig.model_class = Mamba
