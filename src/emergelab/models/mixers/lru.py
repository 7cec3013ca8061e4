"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences"): a complex diagonal linear recurrence with exponential parametrisation and gamma
normalisation,

    lambda = exp(-exp(nu_log) + i exp(theta_log))              # [N], |lambda| < 1 by construction
    h_t    = lambda * h_{t-1} + exp(gamma_log) * (B u_t)        # B = B_re + i B_im, [N, d]
    y_t    = Re(C h_t) + D * u_t                                 # C = C_re + i C_im, [d, N]

with the paper's init (|lambda| uniform on the ring [r_min, r_max], phase uniform in [0, max_phase],
gamma = sqrt(1 - |lambda|^2), B ~ N(0, 1/(2d)), C ~ N(0, 1/N), D ~ N(0, 1)).

What plays attention's role: nothing input-dependent. The map u -> y is a fixed causal convolution,
``y_t = sum_{s<=t} K[t-s] u_s`` with matrix-valued kernel ``K[0] = Re(C diag(gamma) B) + diag(D)``,
``K[j] = Re(C diag(gamma lambda^j) B)`` (``LRUMixer.kernel``); there is no (query, key) pattern, so no
``hook_pattern``. The hooks are the state's real and imaginary parts, ``hook_state_re`` /
``hook_state_im`` ``[E, B, T, N]`` (the output is computed from them, so writing to them patches it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...config import require, require_float
from ..base import Init, constant, normal
from ..hooks import HookPoint
from ..layers import member_linear
from .common import MixerConfig, MixerModel, check_positive, diag_scan, diag_scan_naive


@dataclass(frozen=True)
class LRUConfig(MixerConfig):
    """LRU mixer: ``state_size`` complex state channels; eigenvalue ring ``[r_min, r_max]`` and phases
    ``[0, max_phase]`` at init (the paper's defaults are 0, 1, 2 pi; long-range tasks use r_min=0.9)."""

    name: ClassVar[str] = "lru"
    state_size: int = 64
    r_min: float = 0.4
    r_max: float = 0.99
    max_phase: float = 2 * math.pi

    def check(self) -> None:
        check_positive(self, "state_size")
        require_float("model.r_max", self.r_max, 0.0, 1.0, open_min=True)
        require_float("model.r_min", self.r_min, 0.0, 1.0)
        require(self.r_min < self.r_max, "model.r_min", self.r_min, f"must be below r_max={self.r_max}")
        require_float("model.max_phase", self.max_phase, 0.0, 2 * math.pi, open_min=True)

    def mixer_params(self) -> int:
        d, N = self.d_model, self.state_size
        return 3 * N + 4 * d * N + d

    def mixer_flops(self) -> int:
        d, N, T = self.d_model, self.state_size, self.context_length or 1
        return 2 * 2 * d * N * 2 + 8 * N * max(1, math.ceil(math.log2(T))) + 2 * d


def _nu_log_init(r_min: float, r_max: float) -> Init:
    def init(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return torch.log(-0.5 * torch.log(u * (r_max ** 2 - r_min ** 2) + r_min ** 2)).float()
    return init


def _theta_log_init(max_phase: float) -> Init:
    return lambda shape, generator: torch.log(max_phase * torch.rand(shape, generator=generator))


class LRUMixer(nn.Module):
    def __init__(self, n_models: int, config: LRUConfig, out_std: float):
        super().__init__()
        E, d, N = n_models, config.d_model, config.state_size
        self.config = config
        self.nu_log = nn.Parameter(torch.empty(E, N))
        self.theta_log = nn.Parameter(torch.empty(E, N))
        self.gamma_log = nn.Parameter(torch.empty(E, N))  # set from nu_log by post_init
        self.B_re = nn.Parameter(torch.empty(E, d, N))
        self.B_im = nn.Parameter(torch.empty(E, d, N))
        self.C_re = nn.Parameter(torch.empty(E, N, d))
        self.C_im = nn.Parameter(torch.empty(E, N, d))
        self.D = nn.Parameter(torch.empty(E, d))
        self.hook_state_re = HookPoint()  # [E, B, T, N], Re h_t
        self.hook_state_im = HookPoint()  # [E, B, T, N], Im h_t
        self.scan = diag_scan  # diag_scan_naive: the step-by-step reference

    def init_specs(self) -> dict[str, Init]:
        c, d, N = self.config, self.config.d_model, self.config.state_size
        return {"nu_log": _nu_log_init(c.r_min, c.r_max), "theta_log": _theta_log_init(c.max_phase),
                "gamma_log": constant(0.0), "B_re": normal(1 / math.sqrt(2 * d)),
                "B_im": normal(1 / math.sqrt(2 * d)), "C_re": normal(1 / math.sqrt(N)),
                "C_im": normal(1 / math.sqrt(N)), "D": normal(1.0)}

    @torch.no_grad()
    def post_init(self) -> None:
        """gamma = sqrt(1 - |lambda|^2), |lambda| = exp(-exp(nu_log)) (per member, from its own nu_log)."""
        self.gamma_log.copy_(0.5 * torch.log(-torch.expm1(-2 * torch.exp(self.nu_log.double()))))

    def eigenvalues(self) -> torch.Tensor:
        """lambda ``[E, N]`` complex."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, B, T, d]
        lam = self.eigenvalues()[:, None, None, :]  # [E, 1, 1, N]
        gamma = torch.exp(self.gamma_log)[:, None, None, :]
        bu = torch.complex(member_linear(x, self.B_re, None), member_linear(x, self.B_im, None)) * gamma
        h = self.scan(lam, bu)  # [E, B, T, N] complex
        h_re, h_im = self.hook_state_re(h.real), self.hook_state_im(h.imag)
        y = member_linear(h_re, self.C_re, None) - member_linear(h_im, self.C_im, None)
        return y + x * self.D[:, None, None, :]

    @torch.no_grad()
    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel ``K[j]`` ``[E, length, d_out, d_in]`` with ``y_t = sum_j K[j] u_{t-j}``."""
        lam = self.eigenvalues()  # [E, N]
        powers = lam[:, None, :] ** torch.arange(length, device=lam.device)[None, :, None]  # [E, L, N]
        g = torch.exp(self.gamma_log)[:, None, :] * powers
        B = torch.complex(self.B_re, self.B_im)  # [E, d_in, N]
        C = torch.complex(self.C_re, self.C_im)  # [E, N, d_out]
        K = torch.einsum("ein,eln,eno->eloi", B, g, C).real
        K[:, 0] += torch.diag_embed(self.D)
        return K


class LRU(MixerModel):
    """``E`` LRU models; see the module doc. Hooks: ``blocks.{l}.mixer.hook_state_re`` / ``_im``."""

    mixer_class = LRUMixer


LRUConfig.model_class = LRU
__all__ = ["LRU", "LRUConfig", "LRUMixer", "diag_scan", "diag_scan_naive"]
