"""Pre-training token streams: data a model trains on before its task (``train.pretrain``).

Pre-pretraining on formal languages (Dyck; Papadimitriou and Jurafsky 2023, Hu et al. 2025) or on neural
cellular automata (NCA; Lee et al. 2025) before language data is reported to make in-context capabilities
such as repetition emerge earlier. A stream writes its tokens into the main task's vocabulary (ids
``0 .. vocab-1``) with the main task's sequence length ``L``, so the same model and embedding train on it
and then on the task. It has no outputs, no loss mask and no ground truth: the training loop trains plain
next-token prediction on every position of it.

Every stream: ``sample(n, generator) -> tokens [n, L]`` int64 on the generator's device, a function of the
generator's state alone (the same tokens in any seed group, after any resume).

``dyck`` (:class:`DyckStream`): k-Dyck, ``k = brackets`` bracket types; opener of type ``i`` is token ``i``,
its closer token ``k + i``. Each sequence is one random walk of the nesting depth: at depth 0 it opens, when
the depth equals the tokens left it closes (so an even-length sequence ends balanced; an odd one leaves one
bracket open), otherwise it opens with probability ``p_open``. An opener's type is uniform over ``k``; a
closer closes the innermost open bracket. Default: ``k = vocab // 2`` (every id a bracket, save the last id
of an odd vocabulary), ``p_open = 0.5``.

``nca`` (:class:`NCAStream`): a 1-D neural cellular automaton. A state is ``width`` cells over ``states``
values (token = value); every sequence draws its own rule, a random 2-layer MLP from the one-hot window of
cells ``(i-1, i, i+1)`` (periodic) to logits over the next value of cell ``i``::

    h = relu(onehot(window) @ w1 + b1)      w1 [3 * states, hidden], b1 [hidden]: N(0, 1)
    logits = h @ w2 + b2                     w2 [hidden, states] N(0, 1/hidden), b2 [states] N(0, 1)
    next = sample(softmax(logits / temperature))   (temperature 0: argmax)

The first state is uniform; states ``x0 x1 x2 ..`` are concatenated and the last one cut to ``L`` tokens. The
model must infer each sequence's rule in context (the ``cellular-automata`` task's demand, with a smooth
stochastic rule instead of a lookup table). Choices of ours (Lee et al. use 2-D grids of 10 states and
gzip-filtered rules): ``states = min(vocab, 10)``, ``width = round(sqrt(L))`` (as many cells as states in
time), ``hidden = 16``, ``temperature = 0.5``. Sampling is by inverse CDF of float64 uniforms on float64
probabilities, so the dynamics do not hang on float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ConfigError, require, require_float, require_int

PRETRAINING = ("none", "dyck", "nca")  # train.pretrain


@dataclass(frozen=True)
class DyckStream:
    """k-Dyck sequences of ``seq_len`` tokens over ids ``0 .. 2 * brackets - 1`` (module doc)."""

    vocab: int
    seq_len: int
    brackets: int
    p_open: float = 0.5

    def __post_init__(self) -> None:
        require_int("dyck.brackets", self.brackets, 1)
        require(2 * self.brackets <= self.vocab, "dyck.brackets", self.brackets,
                f"2 * brackets must fit the task's vocabulary of {self.vocab}")
        require_int("dyck.seq_len", self.seq_len, 2)
        require_float("dyck.p_open", self.p_open, 0.0, 1.0)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, L]`` int64: ``n`` Dyck sequences (openers ``0..k-1``, closers ``k..2k-1``)."""
        device, L, k = generator.device, self.seq_len, self.brackets
        u = torch.rand(n, L, generator=generator, device=device, dtype=torch.float64)
        kinds = torch.randint(0, k, (n, L), generator=generator, device=device)
        rows = torch.arange(n, device=device)
        stack = torch.zeros(n, L, dtype=torch.int64, device=device)  # open bracket types, innermost at depth-1
        depth = torch.zeros(n, dtype=torch.int64, device=device)
        tokens = torch.empty(n, L, dtype=torch.int64, device=device)
        for t in range(L):
            must_close = depth >= L - t  # closing every open bracket takes the tokens left
            opens = (depth == 0) | (~must_close & (u[:, t] < self.p_open))
            top = stack[rows, (depth - 1).clamp(min=0)]
            tokens[:, t] = torch.where(opens, kinds[:, t], k + top)
            stack[rows, depth] = torch.where(opens, kinds[:, t], stack[rows, depth])  # depth <= t < L
            depth = depth + torch.where(opens, 1, -1)
        return tokens


@dataclass(frozen=True)
class NCARules:
    """The rules of ``n`` sequences: ``w1 [n, 3S, H]``, ``b1 [n, H]``, ``w2 [n, H, S]``, ``b2 [n, S]``
    (float64), plus the first states ``initial [n, W]`` and the sampling uniforms ``noise [n, T-1, W]``."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    initial: torch.Tensor
    noise: torch.Tensor


@dataclass(frozen=True)
class NCAStream:
    """1-D neural cellular automaton trajectories of ``seq_len`` tokens over ids ``0 .. states-1`` (module
    doc): ``width`` cells a state, a random MLP rule with ``hidden`` units per sequence."""

    vocab: int
    seq_len: int
    states: int
    width: int
    hidden: int = 16
    temperature: float = 0.5

    def __post_init__(self) -> None:
        require_int("nca.states", self.states, 2)
        require(self.states <= self.vocab, "nca.states", self.states,
                f"must fit the task's vocabulary of {self.vocab}")
        require_int("nca.width", self.width, 2)
        require(self.seq_len >= 2 * self.width, "nca.seq_len", self.seq_len,
                f"must hold at least two states of width {self.width}")
        require_int("nca.hidden", self.hidden, 1)
        require_float("nca.temperature", self.temperature, 0.0, 100.0)

    @property
    def trajectory_length(self) -> int:
        """T: states drawn per sequence (the last one cut to fit ``seq_len``)."""
        return -(-self.seq_len // self.width)

    def draw(self, n: int, generator: torch.Generator) -> NCARules:
        """Everything random about ``n`` sequences, in a fixed order (what :meth:`sample` consumes)."""
        device, S, H, W = generator.device, self.states, self.hidden, self.width

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, device=device, dtype=torch.float64)

        w1, b1 = normal(n, 3 * S, H), normal(n, H)
        w2, b2 = normal(n, H, S) / math.sqrt(H), normal(n, S)
        initial = torch.randint(0, S, (n, W), generator=generator, device=device)
        noise = torch.rand(n, self.trajectory_length - 1, W, generator=generator, device=device,
                           dtype=torch.float64)
        return NCARules(w1, b1, w2, b2, initial, noise)

    def next_state(self, rules: NCARules, state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``[n, W]``: one update of every cell of ``state [n, W]`` under each sequence's rule, sampled with
        ``noise [n, W]`` uniforms."""
        S = self.states
        left, right = state.roll(1, dims=1), state.roll(-1, dims=1)  # periodic: cells i-1 and i+1
        rows = torch.arange(state.shape[0], device=state.device)[:, None]
        # onehot(window) @ w1 is the sum of the three rows of w1 the window selects
        h = (rules.w1[rows, left] + rules.w1[rows, S + state] + rules.w1[rows, 2 * S + right]
             + rules.b1[:, None]).relu()  # [n, W, H]
        logits = torch.bmm(h, rules.w2) + rules.b2[:, None]  # [n, W, S]
        return sample_states(logits, noise, self.temperature)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, L]`` int64: ``n`` trajectories, states concatenated and cut to ``L`` tokens."""
        rules = self.draw(n, generator)
        states = [rules.initial]
        for t in range(self.trajectory_length - 1):
            states.append(self.next_state(rules, states[-1], rules.noise[:, t]))
        return torch.cat(states, dim=1)[:, :self.seq_len]


def sample_states(logits: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[...]`` int64: the value drawn from ``softmax(logits [..., S] / temperature)`` by inverse CDF of
    ``noise [...]`` (temperature 0: the argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
    return torch.searchsorted(cdf, noise.unsqueeze(-1).contiguous(), right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


Stream = DyckStream | NCAStream


def pretraining_stream(name: str, vocab: int, seq_len: int) -> Stream:
    """The stream ``train.pretrain = name`` for a task of ``vocab`` tokens and ``seq_len`` positions, with
    the defaults of the module doc; a ConfigError naming ``train.pretrain`` if it does not fit the task."""
    require(name in PRETRAINING and name != "none", "train.pretrain", name,
            f"a stream must be one of {', '.join(PRETRAINING[1:])}")
    try:
        if name == "dyck":
            return DyckStream(vocab, seq_len, brackets=vocab // 2)
        return NCAStream(vocab, seq_len, states=min(vocab, 10), width=max(2, round(math.sqrt(seq_len))))
    except ConfigError as error:
        raise ConfigError(f"train.pretrain={name!r} does not fit the task ({vocab} tokens, {seq_len} positions): "
                          f"{error}") from None
