"""xLSTM's mLSTM: the matrix-memory cell with exponential input gate, sigmoid forget gate and the max
stabiliser (Beck et al. 2024), per head with key/value dim ``D``:

    i~_t = x_t w_i + b_i,   log f_t = logsigmoid(x_t w_f + b_f)             # scalar gates per head
    m_t  = max(log f_t + m_{t-1}, i~_t)                                      # stabiliser, m_{-1} = -inf
    C_t  = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i~_t - m_t) k_t v_t^T / sqrt(D)
    n_t  = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(i~_t - m_t) k_t / sqrt(D)
    h_t  = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)
    out  = (layer_norm_per_head(h) * w_norm * sigmoid(x W_og)) W_o            # no biases but the gates'

(xLSTM's reference recurrence starts from m_{-1} = 0, which changes the ``exp(-m)`` floor of the
normaliser only; with m_{-1} = -inf the recurrence equals the parallel form exactly, as mlstm_kernels'
parallel kernel.) The mLSTM's q, k, v come from the mixer input directly; xLSTM's block around the cell
(up-projection, conv, learnable skip) is replaced by our residual stack and MLP.

What plays attention's role: ``h_t = sum_{s<=t} P[t, s] v_s`` with ``P[t, s] = (q_t . k_s / sqrt(D))
exp(F_t - F_s + i~_s - m_t) / (max(|sum_s ...|, exp(-m_t)) + eps)`` (F the running sum of log f): the
parallel form's normalised decay-weighted score matrix, input-dependent and signed (rows need not sum to
one), exposed as ``blocks.{l}.mixer.hook_pattern`` ``[E, B, H, Tq, Tk]`` on the observed path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Init, normal, ones
from ..hooks import HookPoint
from ..layers import member_linear
from .common import MixerConfig, MixerModel, check_positive, refuse_unobserved

EPS = 1e-6
CHUNK = 64  # the fast path's chunk length (mlstm_chunkwise)


@dataclass(frozen=True)
class MLSTMConfig(MixerConfig):
    """mLSTM mixer: ``heads`` heads of dim ``head_dim`` (q, k and v)."""

    name: ClassVar[str] = "mlstm"
    heads: int = 4
    head_dim: int = 16

    def check(self) -> None:
        check_positive(self, "heads", "head_dim")

    def mixer_params(self) -> int:
        d, HD, H = self.d_model, self.heads * self.head_dim, self.heads
        return 4 * d * HD + 2 * d * H + 2 * H + HD + HD * d

    def mixer_flops(self) -> int:
        d, HD, H, T = self.d_model, self.heads * self.head_dim, self.heads, self.context_length or 0
        c = min(T, CHUNK)
        # chunkwise form: QK^T and SV inside a chunk (causal: c/2 keys a query), state read and update
        return 2 * (4 * d * HD + 2 * d * H + HD * d) + 2 * 2 * (c // 2 + 1) * HD + 2 * 2 * HD * self.head_dim


# Kernel layout (mlstm_kernels'): q, k [N, H, T, D], v [N, H, T, Dv], i_pre, f_pre [N, H, T] -> h [N, H, T, Dv].

def mlstm_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                    f_pre: torch.Tensor) -> torch.Tensor:
    """Reference, one step at a time (the equations in the module doc)."""
    N, H, T, D = q.shape
    k = k / math.sqrt(D)
    log_f = F.logsigmoid(f_pre)
    C = q.new_zeros(N, H, D, v.shape[-1])
    n = q.new_zeros(N, H, D)
    m = None
    out = []
    for t in range(T):
        i_t = i_pre[:, :, t]
        if m is None:  # m_{-1} = -inf: the (zero) initial state gets weight 0
            m_new, f_act = i_t, torch.zeros_like(i_t)
        else:
            m_new = torch.maximum(log_f[:, :, t] + m, i_t)
            f_act = torch.exp(log_f[:, :, t] + m - m_new)
        i_act = torch.exp(i_t - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = f_act[..., None] * n + i_act[..., None] * k[:, :, t]
        m = m_new
        num = torch.einsum("nhkv,nhk->nhv", C, q[:, :, t])
        den = torch.maximum((n * q[:, :, t]).sum(-1).abs(), torch.exp(-m)) + EPS
        out.append(num / den[..., None])
    return torch.stack(out, dim=2)


def mlstm_pattern(q: torch.Tensor, k: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor) -> torch.Tensor:
    """The normalised matrix ``P`` ``[N, H, Tq, Tk]`` of the parallel form (module doc)."""
    T, D = q.shape[-2], q.shape[-1]
    F_cum = F.logsigmoid(f_pre).cumsum(-1)  # [N, H, T]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    log_D = (F_cum[..., :, None] - F_cum[..., None, :]).masked_fill(~causal, float("-inf")) + i_pre[..., None, :]
    m = log_D.max(-1, keepdim=True).values  # [N, H, T, 1]
    C = (q @ k.transpose(-1, -2)) / math.sqrt(D) * torch.exp(log_D - m)
    normaliser = torch.maximum(C.sum(-1, keepdim=True).abs(), torch.exp(-m)) + EPS
    return C / normaliser


def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                   f_pre: torch.Tensor) -> torch.Tensor:
    """Parallel form of :func:`mlstm_recurrent` (same signature): ``P @ v``."""
    return mlstm_pattern(q, k, i_pre, f_pre) @ v


def mlstm_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor,
                    f_pre: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Chunkwise-parallel form of :func:`mlstm_recurrent` (same signature, plus ``chunk``): the parallel
    form inside chunks of ``chunk`` positions, the recurrent state ``(C, n, m)`` carried across chunk
    boundaries (derivation: README, "mLSTM, chunkwise"). ``O(T c D + T D^2)`` time and ``O(T c)`` memory
    per head, against the parallel form's ``O(T^2 D)`` and ``O(T^2)``; equal to the recurrence, the
    normaliser's ``exp(-m_t)`` floor included.

    Example::

        q, k, v = (torch.randn(2, 4, 300, 16) for _ in range(3))   # [N, H, T, D]
        i_pre, f_pre = torch.randn(2, 4, 300), torch.randn(2, 4, 300) + 3
        h = mlstm_chunkwise(q, k, v, i_pre, f_pre, chunk=64)      # [N, H, T, D], as mlstm_recurrent
    """
    N, H, T, D = q.shape
    if T == 0:
        return v.new_zeros(N, H, 0, v.shape[-1])
    c = min(chunk, T)
    k = k / math.sqrt(D)
    log_f = F.logsigmoid(f_pre)  # [N, H, T]
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    C = q.new_zeros(N, H, D, v.shape[-1])  # state after the previous chunk, stabilised by m_prev
    n = q.new_zeros(N, H, D)
    m_prev = q.new_full((N, H), float("-inf"))  # m_{-1} = -inf: the zero initial state weighs nothing
    out = []
    for start in range(0, T, c):
        sl = slice(start, min(start + c, T))
        L = sl.stop - start
        qc, kc, vc, ic = q[:, :, sl], k[:, :, sl], v[:, :, sl], i_pre[:, :, sl]  # [N, H, L, .]
        b = log_f[:, :, sl].cumsum(-1)  # [N, H, L]: F_t - F_{start-1}
        # 1. m_t = max(b_t + m_prev, max_{s<=t} (b_t - b_s + i_s)) = b_t + max(m_prev, cummax_s(i_s - b_s))
        m = b + torch.maximum(m_prev[..., None], torch.cummax(ic - b, dim=-1).values)  # [N, H, L]
        # 2. intra-chunk weights exp(b_t - b_s + i_s - m_t) (<= 1), zero above the diagonal
        log_w = (b[..., :, None] - b[..., None, :] + ic[..., None, :] - m[..., :, None])
        w = torch.exp(log_w.masked_fill(~causal[:L, :L], float("-inf")))  # [N, H, Lq, Lk]
        S = (qc @ kc.transpose(-1, -2)) * w  # [N, H, Lq, Lk]
        # 3. the carried state, decayed to t: exp(b_t + m_prev - m_t) (<= 1; 0 in the first chunk)
        carry = torch.exp(b + m_prev[..., None] - m)  # [N, H, L]
        num = S @ vc + carry[..., None] * (qc @ C)  # [N, H, L, Dv]
        dot = S.sum(-1) + carry * (qc @ n[..., None])[..., 0]  # [N, H, L]: n_t . q_t
        den = torch.maximum(dot.abs(), torch.exp(-m)) + EPS
        out.append(num / den[..., None])
        # 4. the state after this chunk, stabilised by its last m
        last = (b[..., -1:] - b + ic - m[..., -1:])  # [N, H, L]: log weight of s at the chunk's end
        decay = torch.exp(b[..., -1] + m_prev - m[..., -1])  # [N, H]
        wk = kc * torch.exp(last)[..., None]  # [N, H, L, D]
        C = decay[..., None, None] * C + wk.transpose(-1, -2) @ vc
        n = decay[..., None] * n + wk.sum(-2)
        m_prev = m[..., -1]
    return torch.cat(out, dim=2)


def _f_bias_init(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.linspace(3.0, 6.0, shape[-1]).expand(shape).clone()  # xLSTM: forget gates start open


class MLSTMMixer(nn.Module):

    probe_pattern: ClassVar[bool] = True  # cheap enough to form at every training probe (train.measure.MixerPatternScores)
    def __init__(self, n_models: int, config: MLSTMConfig, out_std: float):
        super().__init__()
        E, d, H, D = n_models, config.d_model, config.heads, config.head_dim
        self.config, self.out_std = config, out_std
        self.materialize = False
        self.W_q = nn.Parameter(torch.empty(E, d, H * D))
        self.W_k = nn.Parameter(torch.empty(E, d, H * D))
        self.W_v = nn.Parameter(torch.empty(E, d, H * D))
        self.W_i = nn.Parameter(torch.empty(E, d, H))
        self.b_i = nn.Parameter(torch.empty(E, H))
        self.W_f = nn.Parameter(torch.empty(E, d, H))
        self.b_f = nn.Parameter(torch.empty(E, H))
        self.W_og = nn.Parameter(torch.empty(E, d, H * D))
        self.norm_w = nn.Parameter(torch.empty(E, H * D))
        self.W_o = nn.Parameter(torch.empty(E, H * D, d))
        self.hook_q = HookPoint()  # [E, B, H, T, D]
        self.hook_k = HookPoint()  # [E, B, H, T, D]
        self.hook_v = HookPoint()  # [E, B, H, T, D]
        self.hook_igate = HookPoint()  # [E, B, H, T], input gate pre-activation
        self.hook_fgate = HookPoint()  # [E, B, H, T], forget gate pre-activation
        self.hook_pattern = HookPoint()  # [E, B, H, Tq, Tk], P (observed path)
        self.hook_h = HookPoint()  # [E, B, H, T, D], cell output before the norm

    def init_specs(self) -> dict[str, Init]:
        std = self.config.init_std
        return {"W_q": normal(std), "W_k": normal(std), "W_v": normal(std), "W_i": normal(std),
                "b_i": normal(0.1), "W_f": normal(std), "b_f": _f_bias_init, "W_og": normal(std),
                "norm_w": ones, "W_o": normal(self.out_std)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [E, B, T, d]
        E, B, T, _ = x.shape
        H, D = self.config.heads, self.config.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:  # [E, B, T, H*D] -> [E, B, H, T, D]
            return t.reshape(E, B, T, H, D).transpose(2, 3)

        q, k, v = (heads(member_linear(x, w, None)) for w in (self.W_q, self.W_k, self.W_v))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        i_pre = self.hook_igate(member_linear(x, self.W_i, self.b_i).transpose(2, 3))  # [E, B, H, T]
        f_pre = self.hook_fgate(member_linear(x, self.W_f, self.b_f).transpose(2, 3))
        flat = [t.reshape(E * B, *t.shape[2:]) for t in (q, k, v, i_pre, f_pre)]
        if self.materialize:
            P = self.hook_pattern(mlstm_pattern(flat[0], flat[1], flat[3], flat[4]).view(E, B, H, T, T))
            h = P @ v
        else:
            refuse_unobserved(self, "hook_pattern")
            h = mlstm_chunkwise(*flat).view(E, B, H, T, D)  # faster than mlstm_parallel at every T >= 64
        h = F.layer_norm(self.hook_h(h), (D,)).transpose(2, 3).reshape(E, B, T, H * D)
        h = h * self.norm_w[:, None, None] * torch.sigmoid(member_linear(x, self.W_og, None))
        return member_linear(h, self.W_o, None)


class MLSTM(MixerModel):
    """``E`` mLSTM models; see the module doc. Hooks: ``blocks.{l}.mixer.hook_{q,k,v,igate,fgate,pattern,h}``."""

    mixer_class = MLSTMMixer


MLSTMConfig.model_class = MLSTM
