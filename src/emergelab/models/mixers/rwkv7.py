"""RWKV-7 "Goose" time mixing (Peng et al. 2025; BlinkDL's ``RWKV_Tmix_x070``), with our shared MLP in
place of RWKV's channel mixing. Per head of size ``N`` (``heads * N = d_model``):

    xx_t   = x_{t-1} - x_t                                   # token shift (x_{-1} = 0)
    x*_t   = x_t + xx_t * mu_*   for * in r, w, k, v, a, g    # per-channel mixing coefficients
    r, k, v = x_r W_r, x_k W_k, x_v W_v
    log w  = -exp(-0.5) * sigmoid(w0 + tanh(x_w W1) W2)      # decay w in (exp(-0.607), 1)
    v      = v + (v_first - v) * sigmoid(v0 + x_v V1 V2)     # value residual to layer 0's v (layers > 0)
    a      = sigmoid(a0 + x_a A1 A2)                          # in-context learning rate
    g      = sigmoid(x_g G1) G2                               # output gate
    kk     = normalize(k * k_k) per head;  k = k * (1 + (a - 1) * k_a)
    S_t    = S_{t-1} (diag(w_t) - kk_t (kk_t * a_t)^T) + v_t k_t^T      # [N_v, N_k] per head
    y_t    = S_t r_t
    out    = (group_norm_per_head(y) + (r . k . r_k)_head v) * g) W_o

(``-exp(-0.5) * sigmoid(z)`` equals BlinkDL's ``-exp(-softplus(-z) - 0.5)``.) Deviation from BlinkDL's
init: his layer-dependent schedules and zero LoRA factors are replaced by ``N(0, init_std)`` draws,
mixing coefficients 0.5, ``k_k = 0.85``, ``k_a = 1``, ``r_k = -0.04``.

What plays attention's role: unrolling, ``y_t = sum_{s<=t} P[t, s] v_s`` with the scalar weight
``P[t, s] = k_s^T G_{s+1} ... G_t r_t``, ``G_u = diag(w_u) - kk_u (kk_u a_u)^T`` (input-dependent, signed):
``blocks.{l}.mixer.hook_pattern`` ``[E, B, H, Tq, Tk]`` on the observed path; the group norm, the
``r . k`` bonus and the gate act after it.

The fast form is the chunked DPLR form (``rwkv7_chunked``, chunks of ``CHUNK`` steps: a triangular solve
inside a chunk, the state carried between chunks); the reference is the recurrence (``rwkv7_recurrent``);
``rwkv7_pattern`` is the observed path's form. All three are tested against flash-linear-attention's
``dplr_recurrence`` (``fla/ops/generalized_delta_rule/dplr/naive.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...config import require
from ..base import Init, constant, normal, ones, zeros
from ..hooks import HookPoint
from ..layers import member_linear
from .common import MixerConfig, MixerModel, check_positive, refuse_unobserved, stable_chunk

MAX_DECAY = math.exp(-0.5)  # the model's -log w = exp(-0.5) sigmoid(.) never exceeds it
CHUNK = 32  # the fast path's chunk length (rwkv7_chunked): the fastest of 8..64 on a CPU at T >= 256 (README)


@dataclass(frozen=True)
class RWKV7Config(MixerConfig):
    """RWKV-7 mixer: ``heads`` heads of size ``d_model / heads``; ``low_rank`` is the rank of the decay,
    learning-rate, value-residual and gate LoRAs."""

    name: ClassVar[str] = "rwkv7"
    heads: int = 4
    low_rank: int = 8

    def check(self) -> None:
        check_positive(self, "heads", "low_rank")
        require(self.d_model % self.heads == 0, "model.heads", self.heads, f"must divide d_model={self.d_model}")

    def mixer_params(self) -> int:  # a layer > 0 (layer 0 has no value-residual LoRA)
        C, R = self.d_model, self.low_rank
        return 6 * C + 3 * C + 8 * C * R + 3 * C + 4 * C * C + 2 * C

    def n_params(self) -> int:
        C, R = self.d_model, self.low_rank
        return super().n_params() - (C + 2 * C * R)  # layer 0: no v0, V1, V2

    def mixer_flops(self) -> int:
        C, R, N, T = self.d_model, self.low_rank, self.d_model // self.heads, self.context_length or 0
        c = min(T, CHUNK)
        # chunked form, per token and head: nine [c, N] x [N, c]-like products (scores, solves, their
        # readouts) and four [N, N] state reads/updates
        return 2 * (4 * C * C + 8 * C * R) + 2 * (9 * c * C + 4 * C * N)


# Kernel layout: r, k, v, a, b, log_w [M, T, H, N] -> y [M, T, H, N]; transition G_t = diag(w_t) + a_t b_t^T.

def rwkv7_recurrent(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor, a: torch.Tensor,
                    b: torch.Tensor) -> torch.Tensor:
    """``S_t = S_{t-1} (diag(exp(log_w_t)) + a_t b_t^T) + v_t k_t^T``, ``y_t = S_t r_t``, one step at a time."""
    M, T, H, N = r.shape
    S = r.new_zeros(M, H, N, N)  # [value, key]
    out = []
    for t in range(T):
        sa = torch.einsum("mhvk,mhk->mhv", S, a[:, t])
        S = S * torch.exp(log_w[:, t])[:, :, None, :] + sa[..., None] * b[:, t, :, None, :] \
            + v[:, t, :, :, None] * k[:, t, :, None, :]
        out.append(torch.einsum("mhvk,mhk->mhv", S, r[:, t]))
    return torch.stack(out, dim=1)


def rwkv7_chunked(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_w: torch.Tensor, a: torch.Tensor,
                  b: torch.Tensor, chunk: int = CHUNK, max_decay: float | None = None) -> torch.Tensor:
    """Chunked form of :func:`rwkv7_recurrent` (same signature, plus ``chunk``). Inside a chunk the
    transition's rank-one part reads the state through pseudo-values ``nu_t = S_{t-1} a_t``, which makes
    the chunk a gated linear attention with two (value, key) pairs per step, ``(v_t, k_t)`` and
    ``(nu_t, b_t)``; the ``nu`` of a whole chunk come from one unit-lower-triangular solve, and the
    ``[N, N]`` state is carried across chunks (derivation: README, "RWKV-7, chunked"). The chunk is
    shortened where the decays are so strong that ``exp(-g)`` could overflow (:func:`common.stable_chunk`;
    RWKV-7's own ``log w >= -0.607`` never does at ``chunk <= 64``). ``max_decay``: a known bound on
    ``-log_w`` (the model passes ``MAX_DECAY`` unless a hook may have changed ``log_w``); None reads it
    from ``log_w``, one host sync on a GPU.

    Example::

        M, T, H, N = 8, 100, 4, 16
        r, k, v = (torch.randn(M, T, H, N) for _ in range(3))
        log_w = -torch.rand(M, T, H, N) * 0.6
        kk = F.normalize(torch.randn(M, T, H, N), dim=-1)
        y = rwkv7_chunked(r, k, v, log_w, -kk, kk * 0.5, chunk=16)   # [M, T, H, N], as rwkv7_recurrent
    """
    M, T, H, N = r.shape
    if T == 0:
        return v.clone()
    if max_decay is None:
        max_decay = -log_w.detach().min().item()
    c = stable_chunk(max_decay, chunk, T, r.dtype)
    if c == 1:  # one step's decay alone could overflow exp(-g): chunks of one step are the recurrence
        return rwkv7_recurrent(r, k, v, log_w, a, b)
    pad = (-T) % c  # padded steps: decay 1, no input, never read
    n = (T + pad) // c
    # [M, H, n, c, N]
    r, k, v, log_w, a, b = (F.pad(t, (0, 0, 0, 0, 0, pad)).reshape(M, n, c, H, N).permute(0, 3, 1, 2, 4)
                            for t in (r, k, v, log_w, a, b))
    g = log_w.cumsum(3)  # log decay since the chunk's start, inclusive; >= -40 in float32 (stable_chunk)
    r_d, a_d = r * g.exp(), a * (g - log_w).exp()  # times the decay from the chunk's start to t (a: to t-1)
    k_u, b_u = k * (-g).exp(), b * (-g).exp()  # divided by it to s: (x_d * y_u) = the decay from s to t
    strict = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=r.device).tril()
    zero = r.new_zeros(())
    A_ab = torch.where(strict, a_d @ b_u.transpose(-1, -2), zero)  # [M, H, n, c, c]
    A_ak = torch.where(strict, a_d @ k_u.transpose(-1, -2), zero)
    A_rb = torch.where(causal, r_d @ b_u.transpose(-1, -2), zero)
    A_rk = torch.where(causal, r_d @ k_u.transpose(-1, -2), zero)
    T_ab = torch.eye(c, dtype=r.dtype, device=r.device) - A_ab  # unit lower-triangular
    # nu = U0 + W S^T (S^T = the key-major state entering the chunk)
    U0 = torch.linalg.solve_triangular(T_ab, A_ak @ v, upper=False, unitriangular=True)  # [M, H, n, c, N]
    W = torch.linalg.solve_triangular(T_ab, a_d, upper=False, unitriangular=True)  # [M, H, n, c, N]
    Y0 = A_rb @ U0 + A_rk @ v  # the outputs had the chunk started from a zero state
    R = r_d + A_rb @ W  # how the entering state reaches the outputs: y = Y0 + R S^T
    to_end = (g[:, :, :, -1:] - g).exp()  # [M, H, n, c, N]: decay from s to the chunk's end
    b_e, k_e, last = b * to_end, k * to_end, g[:, :, :, -1].exp()  # last: [M, H, n, N]
    S = r.new_zeros(M, H, N, N)  # [key, value]
    out = []
    for i in range(n):
        out.append(Y0[:, :, i] + R[:, :, i] @ S)
        nu = U0[:, :, i] + W[:, :, i] @ S  # [M, H, c, N]
        S = last[:, :, i, :, None] * S + b_e[:, :, i].transpose(-1, -2) @ nu + k_e[:, :, i].transpose(-1, -2) @ v[:, :, i]
    y = torch.stack(out, dim=2)  # [M, H, n, c, N]
    return y.reshape(M, H, n * c, N)[:, :, :T].transpose(1, 2)


def rwkv7_pattern(r: torch.Tensor, k: torch.Tensor, log_w: torch.Tensor, a: torch.Tensor,
                  b: torch.Tensor) -> torch.Tensor:
    """``P`` ``[M, H, Tq, Tk]`` with ``y_t = sum_s P[t, s] v_s``: the keys carried forward through the
    transitions, ``p_s <- p_s G_t``, read by ``r_t``."""
    M, T, H, N = r.shape
    rows, carried = [], r.new_zeros(M, H, 0, N)  # [M, H, s, N]: k_s^T G_{s+1} ... G_t
    for t in range(T):
        carried = carried * torch.exp(log_w[:, t])[:, :, None, :] \
            + (carried @ a[:, t, :, :, None]) * b[:, t, :, None, :]
        carried = torch.cat([carried, k[:, t, :, None, :]], dim=2)
        row = (carried @ r[:, t, :, :, None])[..., 0]  # [M, H, t+1]
        rows.append(F.pad(row, (0, T - t - 1)))
    return torch.stack(rows, dim=2)


class RWKV7TimeMix(nn.Module):

    probe_pattern: ClassVar[bool] = False  # too costly to form at every probe: measured on demand with run_with_cache
    def __init__(self, n_models: int, config: RWKV7Config, out_std: float, layer: int):
        super().__init__()
        E, C, R = n_models, config.d_model, config.low_rank
        self.config, self.out_std, self.layer = config, out_std, layer
        self.materialize = False
        self.mu = nn.Parameter(torch.empty(E, 6, C))  # token-shift mixing for r, w, k, v, a, g
        self.W_r = nn.Parameter(torch.empty(E, C, C))
        self.W_k = nn.Parameter(torch.empty(E, C, C))
        self.W_v = nn.Parameter(torch.empty(E, C, C))
        self.W_o = nn.Parameter(torch.empty(E, C, C))
        self.w0, self.W1, self.W2 = (nn.Parameter(torch.empty(E, *s)) for s in ((C,), (C, R), (R, C)))
        self.a0, self.A1, self.A2 = (nn.Parameter(torch.empty(E, *s)) for s in ((C,), (C, R), (R, C)))
        self.G1, self.G2 = (nn.Parameter(torch.empty(E, *s)) for s in ((C, R), (R, C)))
        if layer > 0:
            self.v0, self.V1, self.V2 = (nn.Parameter(torch.empty(E, *s)) for s in ((C,), (C, R), (R, C)))
        self.k_k = nn.Parameter(torch.empty(E, C))
        self.k_a = nn.Parameter(torch.empty(E, C))
        self.r_k = nn.Parameter(torch.empty(E, C))
        self.ln_w = nn.Parameter(torch.empty(E, C))
        self.ln_b = nn.Parameter(torch.empty(E, C))
        self.hook_r = HookPoint()  # [E, B, T, H, N]
        self.hook_k = HookPoint()  # [E, B, T, H, N], after the learning-rate rescale
        self.hook_v = HookPoint()  # [E, B, T, H, N], after the value residual
        self.hook_log_w = HookPoint()  # [E, B, T, H, N], log decay
        self.hook_a = HookPoint()  # [E, B, T, H, N], in-context learning rate
        self.hook_pattern = HookPoint()  # [E, B, H, Tq, Tk], P (observed path)
        self.hook_y = HookPoint()  # [E, B, T, H, N], S_t r_t before the group norm

    def init_specs(self) -> dict[str, Init]:
        std = self.config.init_std
        specs = {name: normal(std) for name, _ in self.named_parameters(recurse=False)}
        specs.update(mu=constant(0.5), W_o=normal(self.out_std), w0=constant(-1.0), a0=zeros,
                     k_k=constant(0.85), k_a=ones, r_k=constant(-0.04), ln_w=ones, ln_b=zeros)
        if self.layer > 0:
            specs["v0"] = ones
        return specs

    def forward(self, x: torch.Tensor, shared: dict[str, Any]) -> torch.Tensor:  # x: [E, B, T, C]
        E, B, T, C = x.shape
        H = self.config.heads
        N = C // H
        xx = F.pad(x, (0, 0, 1, -1)) - x  # x_{t-1} - x_t
        xr, xw, xk, xv, xa, xg = (x + xx * self.mu[:, i, None, None, :] for i in range(6))
        r = member_linear(xr, self.W_r, None)
        k = member_linear(xk, self.W_k, None)
        v = member_linear(xv, self.W_v, None)
        lora = lambda z, W1, W2, act=None: member_linear(  # noqa: E731
            member_linear(z, W1, None) if act is None else act(member_linear(z, W1, None)), W2, None)
        log_w = -MAX_DECAY * torch.sigmoid(self.w0[:, None, None] + lora(xw, self.W1, self.W2, torch.tanh))
        if self.layer == 0:
            shared["v_first"] = v
        else:
            v = v + (shared["v_first"] - v) * torch.sigmoid(self.v0[:, None, None] + lora(xv, self.V1, self.V2))
        a = torch.sigmoid(self.a0[:, None, None] + lora(xa, self.A1, self.A2))
        g = lora(xg, self.G1, self.G2, torch.sigmoid)
        kk = F.normalize((k * self.k_k[:, None, None]).view(E, B, T, H, N), dim=-1)
        k = k * (1 + (a - 1) * self.k_a[:, None, None])
        heads = lambda t: t.reshape(E, B, T, H, N)  # noqa: E731
        r, k, v = self.hook_r(heads(r)), self.hook_k(heads(k)), self.hook_v(heads(v))
        log_w, a = self.hook_log_w(heads(log_w)), self.hook_a(heads(a))
        flat = lambda t: t.reshape(E * B, T, H, N)  # noqa: E731
        if self.materialize:
            P = rwkv7_pattern(flat(r), flat(k), flat(log_w), flat(-kk), flat(kk * a)).view(E, B, H, T, T)
            y = torch.einsum("ebhts,ebshn->ebthn", self.hook_pattern(P), v)
        else:
            refuse_unobserved(self, "hook_pattern")
            bound = None if self.hook_log_w.has_hooks() else MAX_DECAY  # a hook may set any log w
            y = rwkv7_chunked(flat(r), flat(k), flat(v), flat(log_w), flat(-kk), flat(kk * a),
                              max_decay=bound).view(E, B, T, H, N)
        y = self.hook_y(y)
        y = F.group_norm(y.reshape(E * B * T, C), H, eps=64e-5).view(E, B, T, C)  # per-head norm, affine below
        y = y * self.ln_w[:, None, None] + self.ln_b[:, None, None]
        bonus = (r * k * self.r_k.view(E, 1, 1, H, N)).sum(-1, keepdim=True) * v  # [E, B, T, H, N]
        return member_linear((y + bonus.reshape(E, B, T, C)) * g, self.W_o, None)


class RWKV7(MixerModel):
    """``E`` RWKV-7 models; see the module doc. Layer 0's values reach every later layer (value residual)
    through a per-forward ``shared`` dict. Hooks: ``blocks.{l}.mixer.hook_{r,k,v,log_w,a,pattern,y}``."""

    def make_mixer(self, layer: int) -> tuple[str, nn.Module]:
        return "mixer", RWKV7TimeMix(self.n_models, self.config, self.out_std, layer)

    def forward_members(self, tokens: torch.Tensor, **inputs: Any) -> torch.Tensor:
        return super().forward_members(tokens, shared={}, **inputs)

    def layer_inputs(self, layer: int, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"shared": inputs["shared"]}


RWKV7Config.model_class = RWKV7
