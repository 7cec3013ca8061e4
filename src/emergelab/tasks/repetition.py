"""In-context repetition: a language-model corpus in which a span recurs (the mini-suite's task).

Each sequence of ``L = seq_len`` tokens is background text, drawn i.i.d. from a Zipf distribution over the
vocabulary (``p(rank r) ~ 1 / r^zipf``; which token has which rank is drawn per run), except its last
``R = span`` tokens, which repeat the ``R`` tokens starting at a position ``src`` drawn uniformly from
``0 .. L - 2R`` (so the source ends before the repeat begins)::

    token index   0 ..  src .. src+R-1  ..  L-R .. L-1
    token         background (Zipf)         = tokens[src .. src+R-1]

The model is trained as a language model, on every next-token prediction (``loss_mask`` is all ``P = L-1``
positions). The capability is in-context repetition: once the repeat has begun, its next token can be
read off the earlier copy. Its source is at a random offset, so no position-only rule finds it: the model
must match content (an induction mechanism: attend to the token after an earlier occurrence of the
current one).

Outputs: output ``o = k - 1`` for ``k = 1 .. R-1`` is the repeat's ``k``-th token (token ``L-R+k``,
predicted at position ``L-R-1+k``). The repeat's first token (``k = 0``) cannot be told from the prefix and
is not an output.

Ground-truth attention is per sequence (:meth:`RepetitionTask.sample_attention_mask`): the query predicting
the repeat's ``k``-th token attends to key ``s + k`` for every ``s`` at which the whole span occurs in the
prefix (the source, and any chance repeat of all ``R`` tokens). ``attention_mask`` (``[P, P]``, what
every task has) is its support over all sequences: keys ``k .. L-2R+k`` for that query; a batch-mean
attention map is compared with it in figures.

Optima (``output_optima``): the Bayes loss, by Monte Carlo over ``OPTIMA_SAMPLES`` sequences (seeded, the
same on every machine). Given the tokens so far, every ``src`` whose first ``k`` tokens match the repeat's
first ``k`` is equally likely, so the best prediction of token ``k`` is the share of those candidates
whose token ``k`` is the target: loss ``-log(#{s consistent, tokens[s+k] = target} / #{s consistent})``.
Background positions: the Zipf entropy; the repeat's first token: the share of candidate sources holding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import require, require_float, require_int
from .base import Batch, MapView, check_draw

OPTIMA_SAMPLES = 8192  # sequences of the Monte Carlo optima (standard error ~0.005 nats at the defaults)
OPTIMA_SEED = 20240917


@dataclass(frozen=True)
class RepetitionConfig:
    """vocab: tokens (ranks of the Zipf law). seq_len: L, tokens a sequence. span: R, the repeated span's
    length (the last R tokens repeat an earlier span). zipf: the Zipf exponent of the background (0: uniform)."""

    name: ClassVar[str] = "repetition"
    vocab: int = 64
    seq_len: int = 64
    span: int = 8
    zipf: float = 1.0

    def __post_init__(self) -> None:
        require_int("task.vocab", self.vocab, 2, 1_000_000)
        require_int("task.span", self.span, 2, 100_000)
        require_int("task.seq_len", self.seq_len, 4, 100_000)
        require_float("task.zipf", self.zipf, 0.0, 10.0)
        # names both fields: either may be the one the user set
        require(self.seq_len >= 2 * self.span, "task.span", self.span,
                f"must be at most task.seq_len / 2 = {self.seq_len // 2} (the span and its repeat fit in a "
                f"sequence; or raise task.seq_len={self.seq_len})")

    def sizes(self) -> tuple[int, int]:
        return self.vocab, self.seq_len

    def build(self, generator: torch.Generator) -> "RepetitionTask":
        check_draw("RepetitionConfig.build", generator)
        return RepetitionTask(self, generator)


def zipf_probs(vocab: int, exponent: float) -> torch.Tensor:
    """``[vocab]`` float64: ``p(rank r) = r^-exponent / sum`` for ranks ``1..vocab``."""
    w = torch.arange(1, vocab + 1, dtype=torch.float64).pow(-exponent)
    return w / w.sum()


class RepetitionTask:
    """The repetition corpus of one run: which token has which Zipf rank is drawn from ``generator``."""

    output_name = "repeat token"

    def __init__(self, config: RepetitionConfig, generator: torch.Generator):
        self.config = config
        device = generator.device
        V, L, R = config.vocab, config.seq_len, config.span
        self.vocab_size, self.seq_len, self.span = V, L, R
        self.n_outputs = R - 1
        order = torch.randperm(V, generator=generator, device=device)  # order[r]: the token of rank r+1
        self.probs = torch.empty(V, dtype=torch.float64, device=device)
        self.probs[order] = zipf_probs(V, config.zipf).to(device)  # [V], by token
        self._cdf = self.probs.cumsum(0)
        P = L - 1
        positions = torch.arange(P, device=device)
        self.loss_mask = torch.ones(P, dtype=torch.bool, device=device)
        k = positions - (L - R - 1)  # which repeat token a position predicts
        self.output_index = torch.where(k >= 1, k - 1, -1)
        mask = torch.zeros(P, P, dtype=torch.bool, device=device)
        for kk in range(1, R):
            mask[L - R - 1 + kk, kk: L - 2 * R + kk + 1] = True
        self.attention_mask = mask
        self._optima: tuple[list[float], float] | None = None

    # ------------------------------------------------------------------ sampling
    def background(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, L]`` i.i.d. Zipf tokens (inverse CDF of float64 uniforms: the same on every machine)."""
        u = torch.rand(n, self.seq_len, generator=generator, device=generator.device, dtype=torch.float64)
        return torch.searchsorted(self._cdf.to(u.device), u, right=True).clamp(max=self.vocab_size - 1)

    def sample(self, n: int, generator: torch.Generator) -> "RepetitionBatch":
        check_draw("RepetitionTask.sample", generator, n)
        L, R = self.seq_len, self.span
        tokens = self.background(n, generator)
        src = torch.randint(0, L - 2 * R + 1, (n,), generator=generator, device=generator.device)
        idx = src[:, None] + torch.arange(R, device=tokens.device)
        tokens[:, L - R:] = tokens.gather(1, idx)
        return RepetitionBatch(tokens=tokens, sources=src)

    # ------------------------------------------------------------------ ground truth
    def _windows(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n, S, R]``: ``tokens[s .. s+R-1]`` for every possible source ``s = 0 .. L-2R``."""
        return tokens[:, :self.seq_len - self.span].unfold(1, self.span, 1)

    def candidates(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n, S, R]`` bool with ``S = L - 2R + 1``: ``[i, s, k]`` = source ``s`` agrees with the repeat
        of sequence ``i`` on its first ``k`` tokens (``k = 0``: every ``s``)."""
        R = self.span
        match = self._windows(tokens) == tokens[:, None, self.seq_len - R:]  # [n, S, R]
        prefix = torch.cumprod(match.to(torch.int8), dim=2).bool()  # first k+1 agree
        return torch.cat([torch.ones_like(prefix[..., :1]), prefix[..., :-1]], dim=2)

    def sample_attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n, P, P]`` bool: the ground-truth keys of each sequence (module doc): the query predicting
        repeat token ``k >= 1`` attends to ``s + k`` for every ``s`` where the whole span occurs."""
        n, L, R = tokens.shape[0], self.seq_len, self.span
        whole = (self._windows(tokens) == tokens[:, None, L - R:]).all(-1)  # [n, S]
        mask = torch.zeros(n, L - 1, L - 1, dtype=torch.bool, device=tokens.device)
        S = whole.shape[1]
        for k in range(1, R):
            mask[:, L - R - 1 + k, k: k + S] = whole
        return mask

    def bayes_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n, P]`` float64: the Bayes-optimal loss at every position of each sequence (module doc)."""
        L, R = self.seq_len, self.span
        loss = -self.probs.log().to(tokens.device)[tokens[:, 1:]]  # background: the Zipf law
        cand = self.candidates(tokens).to(torch.float64)  # [n, S, R]
        hit = (self._windows(tokens) == tokens[:, None, L - R:]).to(torch.float64)  # token s+k is the target
        share = (cand * hit).sum(1) / cand.sum(1)  # [n, R]
        loss[:, L - R - 1:] = -share.log()
        return loss

    def _compute_optima(self) -> tuple[list[float], float]:
        generator = torch.Generator().manual_seed(OPTIMA_SEED)  # on the CPU: the same on every machine
        loss = self.bayes_loss(self.sample(OPTIMA_SAMPLES, generator).tokens).mean(0)  # [P]
        L, R = self.seq_len, self.span
        return [float(x) for x in loss[L - R:]], float(loss.mean())

    def output_optima(self) -> list[float]:
        if self._optima is None:
            self._optima = self._compute_optima()
        return self._optima[0]

    def optimal_loss(self) -> float:
        if self._optima is None:
            self._optima = self._compute_optima()
        return self._optima[1]

    # ------------------------------------------------------------------ description
    def output_labels(self) -> list[str]:
        return [f"repeat token {k}" for k in range(1, self.span)]

    def describe(self) -> str:
        c = self.config
        return f"repetition V={c.vocab} L={c.seq_len} span={c.span} zipf={c.zipf:g}"

    def map_view(self) -> MapView:
        L, R = self.seq_len, self.span
        return MapView(slice(L - R, L - 1), slice(0, L - 1), f"query position {L - R}..{L - 2} (repeat token 1..{R - 1})",
                       f"key position 0..{L - 2}")


@dataclass(frozen=True)
class RepetitionBatch(Batch):
    """Tokens ``[n, L]`` and the ``sources [n]`` each repeat was copied from."""

    sources: torch.Tensor

